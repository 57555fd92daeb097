//! The per-instance host agent (`limactl hostagent NAME`, started detached by
//! `limactl start`): brings the VM up ([`crate::bringup`]), reports lifecycle
//! events, and on SIGTERM/SIGINT shuts the VM down cleanly: guest agent
//! first, then QMP, then kill.
//!
//! It holds `ha.lock` for its whole life, which is what "running" means to
//! every other command. Its children die with it (PR_SET_PDEATHSIG), so even a
//! SIGKILL leaves no QEMU behind.
use std::sync::Arc;
use std::time::Instant;

use tokio::signal::unix::SignalKind;

use crate::bringup::{self, BringUpError, Ending, Options, Phase, Shutdown, Stop};
use crate::events::{emit, Event};
use crate::instance::{self, Instance, InstanceError};
use crate::vsock::TransportSpec;

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

/// Reports bring-up phases as lifecycle events, and saves how to reach the
/// guest for every other `limactl`.
fn observer(inst: &Instance) -> bringup::Observer {
    let events = inst.path(instance::HA_EVENTS);
    let transport_file = inst.path(instance::TRANSPORT);
    Arc::new(move |phase| match phase {
        Phase::Spawned { accel, transport } => {
            let _ = std::fs::write(
                &transport_file,
                serde_json::to_vec(transport).unwrap_or_default(),
            );
            let transport = match transport {
                TransportSpec::Hybrid { .. } => "vhost-user (vhost-device-vsock)",
                TransportSpec::Kernel { .. } => "vhost-vsock (kernel)",
            };
            emit(
                &events,
                Event::Booting {
                    accel: accel.to_string(),
                    transport: transport.into(),
                },
            );
        }
        Phase::Stopping => emit(&events, Event::Stopping),
        Phase::Forced(why) => emit(
            &events,
            Event::Warning {
                message: format!("forced stop: {why}"),
            },
        ),
        Phase::KernelStarted | Phase::AgentReady(_) | Phase::SharesMounted => {}
    })
}

async fn supervise(inst: &Instance) -> Result<(), HostAgentError> {
    let started = Instant::now();
    let mut stop = Stop::on_signals(&[SignalKind::terminate(), SignalKind::interrupt()])
        .map_err(|e| HostAgentError::Failed(e.to_string()))?;
    let options = Options {
        ready_timeout: None,
        shutdown: Shutdown::Clean,
        watch_console: false,
        observe: observer(inst),
        data_disk: true,
    };
    let mut up = match bringup::bring_up(inst, &mut stop, options).await {
        Ok(up) => up,
        Err(BringUpError::Stopped) => return Ok(()),
        Err(BringUpError::VmEnded(why)) => {
            return Err(HostAgentError::Failed(format!(
            "the VM stopped before the guest agent answered ({why}); see the serial console log {}",
            inst.path(instance::SERIAL_LOG).display()
        )))
        }
        Err(e) => return Err(HostAgentError::Failed(e.to_string())),
    };
    let boot_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        "guest agent ready after {boot_ms} ms: kernel {}, watcher {}",
        up.info.kernel_release,
        up.info.watcher
    );
    emit(
        &inst.path(instance::HA_EVENTS),
        Event::Running {
            kernel_release: up.info.kernel_release.clone(),
            watcher: up.info.watcher.clone(),
            boot_ms,
        },
    );
    let ended = match up.run(&mut stop).await {
        Ending::VmEnded(why) => {
            tracing::info!("VM ended: {why}");
            true
        }
        Ending::StopRequested => false,
    };
    up.close(ended).await;
    Ok(())
}
