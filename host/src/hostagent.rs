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

/// Runs `provision:` and waits for `probes:`, reporting each as events;
/// `LIMA_START_DEADLINE_MS` (set by `limactl start`) bounds the probes.
async fn provision(inst: &Instance, up: &bringup::Up) -> Result<(), String> {
    let origin = inst.path(instance::LIMA_YAML).display().to_string();
    let e = |e: &dyn std::error::Error| lima_proto::errors::error_chain(e);
    let yaml = inst.yaml().map_err(|x| e(&x))?;
    let cfg = inst.config().map_err(|x| e(&x))?;
    let vars =
        crate::tmplvars::vars_for(&yaml, &inst.name, &inst.dir, &origin).map_err(|x| e(&x))?;
    let p = crate::provision::Provisioning::from_yaml(&yaml, vars.param_env(), &origin)
        .map_err(|x| e(&x))?;
    let deadline = std::env::var("LIMA_START_DEADLINE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            // Give up a little before `limactl start` does, so the hint reaches it.
            let left = std::time::Duration::from_millis(ms)
                .saturating_sub(now)
                .saturating_sub(std::time::Duration::from_secs(5));
            Instant::now() + left
        });
    let events = inst.path(instance::HA_EVENTS);
    let report = move |p: crate::provision::Progress<'_>| match p {
        crate::provision::Progress::Started(step) => emit(
            &events,
            Event::StepStarted {
                step: step.to_string(),
            },
        ),
        crate::provision::Progress::Done(step, d) => emit(
            &events,
            Event::StepDone {
                step: step.to_string(),
                ms: d.as_millis() as u64,
            },
        ),
    };
    let distro = matches!(up.plan.boot, crate::plan::Boot::Firmware { .. });
    if distro && !(p.steps.is_empty() && p.probes.is_empty()) {
        crate::provision::wait_for_cloud_init(up.transport(), &report).await?;
    }
    crate::provision::run(&p, up.transport(), &cfg.user.name, deadline, &report).await
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
    // Provisioning and probes (`provision.rs`); a failure stops the VM.
    let provisioned = tokio::select! {
        r = provision(inst, &up) => r,
        _ = stop.requested() => {
            up.close(false).await;
            return Ok(());
        }
    };
    if let Err(reason) = provisioned {
        up.close(false).await;
        return Err(HostAgentError::Failed(reason));
    }
    // `copyToHost:` once provisioning is done; a failure stops the VM.
    let copies = inst.config().map(|c| c.copy_to_host).unwrap_or_default();
    if let Err(reason) = crate::copy_out::run(up.transport(), &copies).await {
        up.close(false).await;
        crate::copy_out::delete_on_stop(&copies);
        return Err(HostAgentError::Failed(reason));
    }
    up.settle_sockets().await;
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
    crate::copy_out::delete_on_stop(&copies);
    Ok(())
}
