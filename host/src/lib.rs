//! The host side of lima-rs: instance store, `lima.yaml`, VM drivers, the
//! per-instance host agent and the command-line front ends.
pub mod additional_disks;
pub mod base;
pub mod binfmt;
pub mod bringup;
pub mod cli;
pub mod client;
pub mod cloudinit;
pub mod config;
pub mod copy;
pub mod copy_out;
pub mod disk;
pub mod distro;
pub mod download;
pub mod driver;
pub mod events;
pub mod exec;
pub mod forwarder;
pub mod gotmpl;
pub mod guest_user;
pub mod hostagent;
pub mod image;
pub mod instance;
pub mod lifecycle;
pub mod lima_disks;
pub mod listing;
pub mod logfmt;
pub mod manage;
pub mod mcp;
pub mod mounts;
pub mod names;
pub mod oneshot;
pub mod plan;
pub mod portfwd;
pub mod privacy;
pub mod programs;
pub mod progress;
pub mod provision;
pub mod qemu_img;
pub mod shares;
pub mod shell;
pub mod snapshot;
pub mod ssh;
pub mod ssh_identity;
pub mod sync;
pub mod sys;
pub mod template;
pub mod tmplvars;
pub mod units;
pub mod vsock;
pub mod yamlout;
pub mod yq;

/// `lima-run`'s logging: `tracing`'s own format on stderr at `level`, or
/// as `LIMA_LOG` (an `EnvFilter`) says. `limactl` logs in Lima's form
/// instead: [`logfmt::init`].
pub fn init_logging(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIMA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
}
