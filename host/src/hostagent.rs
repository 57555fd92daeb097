//! The per-instance host agent (`limactl hostagent NAME`, started detached by
//! `limactl start`): launches the VM through its driver, waits for the guest
//! agent, reports lifecycle events, and on SIGTERM/SIGINT shuts the VM down
//! cleanly: guest agent first, then QMP, then kill.
//!
//! It holds `ha.lock` for its whole life, which is what "running" means to
//! every other command. Its children die with it (PR_SET_PDEATHSIG), so even a
//! SIGKILL leaves no QEMU behind.
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::client;
use crate::driver::{self, Launch, RunningVm};
use crate::events::{emit, Event};
use crate::image;
use crate::instance::{self, Instance, InstanceError};

/// How long the guest agent gets to power the VM off before QMP `quit`.
const GUEST_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
const QMP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HostAgentError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("instance `{0}` already has a host agent")]
    Locked(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs the host agent until the VM is gone.
pub async fn run(inst: Instance) -> Result<(), HostAgentError> {
    let lock_file = std::fs::File::create(inst.path(instance::HA_LOCK)).map_err(|source| {
        InstanceError::Io {
            what: "cannot create",
            path: inst.path(instance::HA_LOCK),
            source,
        }
    })?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| HostAgentError::Locked(inst.name.clone()))?;
    let _ = std::fs::write(
        inst.path(instance::HA_PID),
        format!("{}\n", std::process::id()),
    );
    let events = inst.path(instance::HA_EVENTS);
    let result = supervise(&inst).await;
    if let Err(e) = &result {
        emit(
            &events,
            Event::Failed {
                reason: e.to_string(),
            },
        );
    }
    inst.remove_runtime_files();
    emit(&events, Event::Stopped);
    result
}

async fn supervise(inst: &Instance) -> Result<(), HostAgentError> {
    let events = inst.path(instance::HA_EVENTS);
    let started = Instant::now();
    let config = inst.config()?;
    let image = image::resolve(&config.image).map_err(|e| HostAgentError::Failed(e.to_string()))?;
    let driver =
        driver::for_vm_type(&config.vm_type).map_err(|e| HostAgentError::Failed(e.to_string()))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| HostAgentError::Failed(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| HostAgentError::Failed(e.to_string()))?;

    let mut vm = driver
        .start(Launch {
            instance: inst,
            config: &config,
            image: &image,
        })
        .await
        .map_err(|e| HostAgentError::Failed(error_chain(&e)))?;
    let spec = vm.transport();
    let _ = std::fs::write(
        inst.path(instance::TRANSPORT),
        serde_json::to_vec(&spec).unwrap_or_default(),
    );
    let transport_name = match &spec {
        crate::vsock::TransportSpec::Hybrid { .. } => "vhost-user (vhost-device-vsock)",
        crate::vsock::TransportSpec::Kernel { .. } => "vhost-vsock (kernel)",
    };
    emit(
        &events,
        Event::Booting {
            accel: vm.accel().to_string(),
            transport: transport_name.into(),
        },
    );
    let transport = spec.open();
    let serial = inst.path(instance::SERIAL_LOG);
    let hybrid = matches!(spec, crate::vsock::TransportSpec::Hybrid { .. });

    // Wait for the guest agent, the VM's end, or a stop request.
    let info = tokio::select! {
        info = wait_ready(transport.as_ref(), hybrid.then_some(serial.as_path())) => info,
        why = vm.wait() => {
            return Err(HostAgentError::Failed(format!(
                "the VM stopped before the guest agent answered ({why}); see the serial console log {}",
                serial.display()
            )));
        }
        _ = term.recv() => { shutdown(vm.as_mut(), transport.as_ref(), &events, false).await; return Ok(()); }
        _ = int.recv() => { shutdown(vm.as_mut(), transport.as_ref(), &events, false).await; return Ok(()); }
    };
    if let Err(e) = crate::shares::mount_all(
        &config.mounts,
        transport.as_ref(),
        &crate::shares_vsockfs::ShareDevices::of(inst),
    )
    .await
    {
        shutdown(vm.as_mut(), transport.as_ref(), &events, true).await;
        return Err(HostAgentError::Failed(e));
    }
    let boot_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        "guest agent ready after {boot_ms} ms: kernel {}, watcher {}",
        info.kernel_release,
        info.watcher
    );
    let rules = crate::portfwd::resolve(&config.port_forwards, &inst.dir)
        .map_err(|(i, m)| HostAgentError::Failed(format!("portForwards[{i}]: {m}")))?;
    let unix_paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let forwarding = tokio::spawn(crate::forwarder::run(
        std::sync::Arc::from(spec.open()),
        rules,
        inst.dir.clone(),
        unix_paths.clone(),
    ));
    emit(
        &events,
        Event::Running {
            kernel_release: info.kernel_release,
            watcher: info.watcher,
            boot_ms,
        },
    );

    tokio::select! {
        why = vm.wait() => {
            tracing::info!("VM ended: {why}");
        }
        _ = term.recv() => shutdown(vm.as_mut(), transport.as_ref(), &events, true).await,
        _ = int.recv() => shutdown(vm.as_mut(), transport.as_ref(), &events, true).await,
    }
    forwarding.abort();
    for p in unix_paths.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Polls the guest agent until it answers a ping.
/// What the guest agent prints on the console once it listens on vsock.
const READY_MARKER: &[u8] = b"agent ready on vsock port";

/// Waits until the guest console shows the agent listening. Connecting
/// earlier is not harmless with `vhost-device-vsock`: a connection made
/// while the guest's vsock device is still coming up occasionally hangs,
/// and from then on every later connection hangs too (seen here a few times
/// in a hundred boots, more often the faster the guest boots).
async fn wait_for_console_marker(serial: &std::path::Path) {
    let mut seen = 0usize;
    loop {
        if let Ok(text) = std::fs::read(serial) {
            // Only the new part, plus enough overlap for a split marker.
            let from = seen.saturating_sub(READY_MARKER.len());
            if text
                .get(from..)
                .is_some_and(|t| t.windows(READY_MARKER.len()).any(|w| w == READY_MARKER))
            {
                return;
            }
            seen = text.len();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the agent's console line when `serial` is given (our images
/// print it), then polls the guest agent until it answers a ping.
pub(crate) async fn wait_ready(
    transport: &dyn crate::vsock::Transport,
    serial: Option<&std::path::Path>,
) -> lima_proto::AgentInfo {
    if let Some(serial) = serial {
        wait_for_console_marker(serial).await;
    }
    // Each attempt gets longer after one times out: on a starved host (many
    // emulated VMs on few cores) one hello+ping can take seconds, and a fixed
    // limit would abandon every attempt just before its answer.
    let mut limit = Duration::from_secs(3);
    loop {
        match tokio::time::timeout(limit, client::ping(transport)).await {
            Ok(Ok(info)) => return info,
            Ok(Err(e)) => tracing::trace!("guest agent not ready: {e}"),
            Err(_) => {
                tracing::debug!("guest agent ping timed out after {limit:?}");
                limit = (limit * 2).min(Duration::from_secs(60));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Guest agent power-off, then QMP quit, then kill.
async fn shutdown(
    vm: &mut dyn RunningVm,
    transport: &dyn crate::vsock::Transport,
    events: &std::path::Path,
    agent_up: bool,
) {
    emit(events, Event::Stopping);
    if agent_up {
        let asked = tokio::time::timeout(
            Duration::from_secs(5),
            client::control(transport, lima_proto::ControlRequest::Shutdown),
        )
        .await;
        match asked {
            Ok(Ok(_)) => {
                if tokio::time::timeout(GUEST_SHUTDOWN_GRACE, vm.wait())
                    .await
                    .is_ok()
                {
                    tracing::info!("guest powered off");
                    return;
                }
                tracing::warn!("guest did not power off within {GUEST_SHUTDOWN_GRACE:?}");
            }
            Ok(Err(e)) => tracing::warn!("guest agent shutdown request failed: {e}"),
            Err(_) => tracing::warn!("guest agent did not answer the shutdown request"),
        }
    }
    vm.terminate(QMP_GRACE).await;
}

/// Formats an error with its causes: "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
