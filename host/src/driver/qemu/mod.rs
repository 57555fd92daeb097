//! The QEMU driver: a [`VmPlan`](crate::plan::VmPlan) turned into a QEMU
//! process (`args.rs`), the daemons it needs beside it (`helpers.rs`), and
//! QMP to stop it (`qmp.rs`). The guest's serial console goes to
//! `serial.log`, QMP listens on `qmp.sock`, and vsock runs through either the
//! kernel's vhost-vsock or a `vhost-device-vsock` helper (vhost-user), which
//! needs guest RAM in a shared memfd.
mod args;
mod firmware;
mod helpers;
mod process;
mod qmp;

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Child;

use self::args::{Inputs, Machine, VsockDevice};
use super::{accel, BoxFuture, Driver, DriverError, Launch, RunningVm};
use crate::instance;
use crate::plan::{Boot, Caps, Share};
use crate::programs::find_program;
use crate::vsock::TransportSpec;

/// The guest CID under the vhost-user backend (one backend per VM, so it
/// never collides).
const HYBRID_GUEST_CID: u32 = 3;

pub struct Qemu {
    binary: PathBuf,
    machine: Machine,
}

fn qemu_name() -> String {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "aarch64",
        _ => "x86_64",
    };
    format!("qemu-system-{arch}")
}

impl Qemu {
    pub fn find() -> Result<Self, DriverError> {
        let name = qemu_name();
        let binary = find_program(&name).ok_or_else(|| DriverError::Missing {
            program: name,
            hint: "install QEMU (`cargo xtask setup` does it on Debian/Ubuntu)".into(),
        })?;
        Ok(Qemu {
            binary,
            machine: Machine::from_env()?,
        })
    }
}

impl Driver for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn caps(&self) -> Caps {
        Caps {
            shared_memory: self.machine.has_pci(),
            serial_ports: true,
        }
    }

    fn start<'a>(
        &'a self,
        launch: Launch<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn RunningVm>, DriverError>> {
        Box::pin(async move {
            let inst = launch.instance;
            let plan = launch.plan;
            let (accel, why) =
                accel::choose(&self.binary, plan.probe_kernel()).map_err(DriverError::Failed)?;
            tracing::info!("accelerator {accel} ({why})");

            let mut helpers = Vec::new();
            for s in &plan.shares {
                if let Share::Virtiofs {
                    path,
                    read_only,
                    socket,
                    log,
                    ..
                } = s
                {
                    helpers.push(helpers::virtiofsd(path, *read_only, socket, log).await?);
                }
            }
            let (vsock, transport) = if crate::sys::kernel_vsock_usable() {
                let cid = 3 + (std::process::id() % 100_000);
                (VsockDevice::Kernel { cid }, TransportSpec::Kernel { cid })
            } else {
                let socket = inst.path(instance::VHOST_VSOCK_SOCK);
                let uds = inst.path(instance::VSOCK_SOCK);
                helpers.push(
                    helpers::vhost_device_vsock(
                        HYBRID_GUEST_CID,
                        &socket,
                        &uds,
                        &inst.path(instance::VSOCK_HELPER_LOG),
                    )
                    .await?,
                );
                (
                    VsockDevice::VhostUser { socket },
                    TransportSpec::Hybrid { path: uds },
                )
            };
            // LIMA_QEMU_HOSTFWD adds QEMU's own user-mode forwards
            // (comma-separated `tcp:HOSTIP:HOSTPORT-:GUESTPORT`); benchmarks
            // use it as the baseline.
            let hostfwd: Vec<String> = std::env::var("LIMA_QEMU_HOSTFWD")
                .map(|v| {
                    v.split(',')
                        .filter(|f| !f.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let tsc_khz = if self.machine.needs_tsc_khz(&accel) {
                crate::sys::tsc_khz()
            } else {
                None
            };
            let firmware = match &plan.boot {
                Boot::Firmware {
                    legacy_bios: false,
                    vars,
                } => Some(firmware::prepare(
                    &self.binary,
                    std::env::consts::ARCH,
                    vars,
                )?),
                _ => None,
            };
            // Firmware boots need PCI (microvm has no UEFI or disk boot).
            let machine = match plan.boot {
                Boot::Firmware { .. } => Machine::Q35,
                Boot::Kernel { .. } => self.machine,
            };
            let argv = args::build(&Inputs {
                plan,
                machine,
                firmware: firmware.as_ref(),
                accel: &accel,
                vsock: &vsock,
                qmp: &inst.path(instance::QMP_SOCK),
                pidfile: &inst.path(instance::QEMU_PID),
                hostfwd: &hostfwd,
                tsc_khz,
            });
            // A new console log per boot: the host waits for the agent's line
            // in it, and must not find the previous boot's.
            let _ = std::fs::remove_file(&plan.serial_log);
            let mut cmd = std::process::Command::new(&self.binary);
            cmd.args(&argv);
            tracing::info!("qemu command: {cmd:?}");
            let child = process::spawn(
                cmd,
                &self.binary.display().to_string(),
                &inst.path(instance::QEMU_LOG),
            )?;
            Ok(Box::new(QemuVm {
                child,
                helpers,
                transport,
                accel,
                qmp: inst.path(instance::QMP_SOCK),
                log: inst.path(instance::QEMU_LOG),
            }) as Box<dyn RunningVm>)
        })
    }
}

pub struct QemuVm {
    child: Child,
    helpers: Vec<Child>,
    transport: TransportSpec,
    accel: String,
    qmp: PathBuf,
    log: PathBuf,
}

impl QemuVm {
    async fn stop_helpers(&mut self) {
        for mut h in self.helpers.drain(..) {
            let _ = h.start_kill();
            let _ = h.wait().await;
        }
    }
}

impl RunningVm for QemuVm {
    fn transport(&self) -> TransportSpec {
        self.transport.clone()
    }

    fn accel(&self) -> &str {
        &self.accel
    }

    fn wait(&mut self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let status = self.child.wait().await;
            self.stop_helpers().await;
            let tail = process::log_tail(&self.log, 3);
            match status {
                Ok(st) if st.success() => "QEMU exited".to_string(),
                Ok(st) if tail.is_empty() => format!("QEMU exited ({st})"),
                Ok(st) => format!("QEMU exited ({st}): {tail}"),
                Err(e) => format!("waiting for QEMU failed: {e}"),
            }
        })
    }

    fn powerdown(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            qmp::powerdown(&self.qmp)
                .await
                .map_err(|e| format!("QMP system_powerdown: {e}"))
        })
    }

    fn terminate(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = qmp::quit(&self.qmp).await {
                tracing::warn!("QMP quit failed: {e}");
            }
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!("QEMU still running after QMP quit; killing it");
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
            self.stop_helpers().await;
        })
    }
}
