//! `lima-guest-agent`: the one process the host talks to inside the guest.
//!
//! It runs either as the guest's init (PID 1, our own initramfs image: it
//! mounts the pseudo filesystems, loads kernel modules, reaps orphans and
//! powers the VM off) or as an ordinary service on a distro image. Either way
//! it listens on vsock port [`lima_proto::AGENT_VSOCK_PORT`], accepts only the
//! host (CID 2), and serves one purpose per connection (see `lima_proto::wire`).
mod binfmt;
mod datadisk;
mod disks;
mod exec;
mod features;
mod files;
mod forward;
mod init;
mod layer;
mod modules;
mod ports;
mod root;
mod server;
mod services;
mod share;
mod sys;
mod tools;
mod users;

use std::sync::Arc;

fn main() {
    let pid1 = std::process::id() == 1;
    if !pid1 && std::env::args().nth(1).as_deref() == Some("tool") {
        std::process::exit(tools::main(std::env::args().skip(2).collect()));
    }
    if pid1 {
        // Before anything else: /proc, /dev and friends, so logging and the
        // runtime below have what they need.
        init::early_setup();
        // Every thread made from here on inherits it; commands get 0 back
        // (see `exec`).
        // SAFETY: plain syscall on the calling thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, exec::AGENT_NICE) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIMA_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();

    if pid1 {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("lima-guest-agent: fatal: {info}; powering off");
            init::power_off();
        }));
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lima-guest-agent: cannot start the async runtime: {e}");
            if pid1 {
                init::power_off();
            }
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(pid1));
    if let Err(e) = result {
        tracing::error!("agent stopped: {e:#}");
        if pid1 {
            init::power_off();
        }
        std::process::exit(1);
    }
}

async fn run(pid1: bool) -> anyhow::Result<()> {
    let params = init::KernelParams::read();
    if pid1 {
        init::late_setup(&params).await;
    }
    let reaper = Arc::new(exec::Reaper::start()?);
    let watcher = ports::start_watcher().await;
    tracing::info!("socket watcher: {}", watcher.status);
    let info = lima_proto::AgentInfo {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid1,
        watcher: watcher.status.to_string(),
    };
    if pid1 {
        services::Services::new(reaper.clone()).serve();
    }
    let ports = ports::PortTable::start(&watcher);
    tracing::info!("port watcher: {}", ports.mode_text());
    let ctx = server::Context {
        reaper,
        ports,
        allowed: forward::AllowedSockets::default(),
    };
    let server::ShutdownRequested = server::serve(info, ctx).await?;
    // The host asked us to stop.
    if pid1 {
        init::stop_everything_and_power_off().await;
    } else {
        ask_init_to_power_off();
    }
    Ok(())
}

/// As a service on a distro image: the guest's own init stops its services,
/// syncs and unmounts the disks, then powers off.
fn ask_init_to_power_off() {
    for (program, args) in [
        ("systemctl", &["poweroff", "--no-block"][..]),
        ("poweroff", &[][..]),
    ] {
        match std::process::Command::new(program).args(args).status() {
            Ok(st) if st.success() => return,
            Ok(st) => tracing::warn!("{program} {args:?}: {st}"),
            Err(e) => tracing::warn!("{program}: {e}"),
        }
    }
    tracing::error!("could not ask the guest's init to power off");
}
