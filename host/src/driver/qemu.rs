//! The QEMU driver: direct kernel boot of our image, the guest's serial
//! console in `serial.log`, QMP on `qmp.sock`, and vsock through either the
//! kernel's vhost-vsock or a `vhost-device-vsock` helper (vhost-user), which
//! needs guest RAM in a shared memfd.
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::{accel, find_program, BoxFuture, Driver, DriverError, Launch, RunningVm};
use crate::instance::{self, Instance};
use crate::vsock::TransportSpec;

/// The guest CID under the vhost-user backend (one backend per VM, so it
/// never collides).
const HYBRID_GUEST_CID: u32 = 3;

pub struct Qemu {
    binary: PathBuf,
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
        Ok(Qemu { binary })
    }
}

/// Spawns a child that dies with the host agent and has no terminal.
fn spawn(
    mut cmd: std::process::Command,
    program: &str,
    log: &std::path::Path,
) -> Result<Child, DriverError> {
    let spawn_err = |source| DriverError::Spawn {
        program: program.to_string(),
        source,
    };
    let log = std::fs::File::create(log).map_err(spawn_err)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(spawn_err)?)
        .stderr(log);
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(crate::sys::die_with_parent);
    }
    Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)
}

async fn wait_for_socket(
    path: &std::path::Path,
    helper: &mut Child,
    what: &str,
) -> Result<(), DriverError> {
    for _ in 0..500 {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(st)) = helper.try_wait() {
            return Err(DriverError::Failed(format!(
                "{what} exited ({st}) before creating {}",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(DriverError::Failed(format!(
        "{what} did not create {} within 5s",
        path.display()
    )))
}

fn kernel_cmdline(inst: &Instance, extra: &str) -> String {
    let hostname = format!("lima-{}", inst.name.replace(['.', '_'], "-"));
    let mut c = format!("console=ttyS0 panic=-1 lima.hostname={hostname}");
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// The image's root filesystem as a read-only virtio-blk disk (the guest's
/// only one, so `/dev/vda`): QEMU arguments, and the kernel parameter that
/// tells the guest agent to switch into it.
fn root_disk(rootfs: &std::path::Path, machine: Machine) -> ([String; 4], &'static str) {
    // QEMU option values escape a comma by doubling it.
    let file = rootfs.display().to_string().replace(',', ",,");
    let args = [
        "-drive".to_string(),
        format!("file={file},if=none,id=root,format=raw,readonly=on"),
        "-device".to_string(),
        format!("{},drive=root", machine.device("virtio-blk")),
    ];
    (args, "lima.root=/dev/vda")
}

/// The QEMU machine type. `q35` (PCI, firmware) is the default; `microvm`
/// (virtio-mmio, qboot, no PCI) is chosen with `LIMA_QEMU_MACHINE=microvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Q35,
    Microvm,
}

impl Machine {
    pub fn from_env() -> Result<Self, DriverError> {
        match std::env::var("LIMA_QEMU_MACHINE").as_deref() {
            Err(_) | Ok("") | Ok("q35") => Ok(Machine::Q35),
            Ok("microvm") => Ok(Machine::Microvm),
            Ok(other) => Err(DriverError::Failed(format!(
                "LIMA_QEMU_MACHINE={other}: unknown machine type (use q35 or microvm)"
            ))),
        }
    }

    fn arg(self, accel: &str) -> String {
        match self {
            Machine::Q35 => format!("q35,accel={accel}"),
            Machine::Microvm => format!("microvm,accel={accel}"),
        }
    }

    /// `virtio-net` → `virtio-net-pci` or `virtio-net-device` (virtio-mmio).
    fn device(self, base: &str) -> String {
        match self {
            Machine::Q35 => format!("{base}-pci"),
            Machine::Microvm => format!("{base}-device"),
        }
    }

    /// Kernel parameters the machine needs. Under TCG, microvm has no HPET
    /// or PM timer to calibrate the TSC against and the kernel stalls, so it
    /// is told the frequency; TCG's guest TSC counts at the host's rate.
    fn cmdline(self, accel: &str) -> Option<String> {
        if self != Machine::Microvm || accel != "tcg" {
            return None;
        }
        crate::sys::tsc_khz().map(|khz| format!("tsc_early_khz={khz} tsc=reliable"))
    }
}

impl Driver for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start<'a>(
        &'a self,
        launch: Launch<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn RunningVm>, DriverError>> {
        Box::pin(async move {
            let inst = launch.instance;
            let cfg = launch.config;
            let (accel, why) =
                accel::choose(&self.binary, &launch.image.kernel).map_err(DriverError::Failed)?;
            tracing::info!("accelerator {accel} ({why})");
            let mem_mib = cfg.memory >> 20;
            let mut cmd = std::process::Command::new(&self.binary);
            cmd.args(["-name", &format!("lima-{}", inst.name)]);
            let machine = Machine::from_env()?;
            cmd.args(["-machine", &machine.arg(&accel)]);
            cmd.args(["-cpu", if accel == "tcg" { "max" } else { "host" }]);
            cmd.args(["-smp", &cfg.cpus.to_string(), "-m", &format!("{mem_mib}M")]);
            cmd.args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ]);
            cmd.arg("-kernel").arg(&launch.image.kernel);
            if let Some(initrd) = &launch.image.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            let mut cmdline = kernel_cmdline(inst, &launch.image.extra_cmdline);
            if let Some(extra) = machine.cmdline(&accel) {
                cmdline = format!("{cmdline} {extra}");
            }
            if let Some(rootfs) = &launch.image.rootfs {
                let (args, param) = root_disk(rootfs, machine);
                cmd.args(args);
                cmdline = format!("{cmdline} {param}");
            }
            cmd.args(["-append", &cmdline]);
            cmd.args([
                "-chardev",
                &format!(
                    "file,id=serial0,path={}",
                    inst.path(instance::SERIAL_LOG).display()
                ),
            ]);
            cmd.args(["-serial", "chardev:serial0"]);
            cmd.args([
                "-qmp",
                &format!(
                    "unix:{},server=on,wait=off",
                    inst.path(instance::QMP_SOCK).display()
                ),
            ]);
            cmd.args([
                "-pidfile",
                &inst.path(instance::QEMU_PID).display().to_string(),
            ]);
            // LIMA_QEMU_HOSTFWD adds QEMU's own user-mode forwards (comma-separated
            // `tcp:HOSTIP:HOSTPORT-:GUESTPORT`); benchmarks use it as the baseline.
            let mut netdev = "user,id=net0".to_string();
            if let Ok(fwds) = std::env::var("LIMA_QEMU_HOSTFWD") {
                for f in fwds.split(',').filter(|f| !f.is_empty()) {
                    netdev.push_str(&format!(",hostfwd={f}"));
                }
            }
            cmd.args([
                "-netdev",
                &netdev,
                "-device",
                &match machine {
                    Machine::Q35 => "virtio-net-pci,netdev=net0,romfile=".to_string(),
                    Machine::Microvm => "virtio-net-device,netdev=net0".to_string(),
                },
            ]);
            cmd.args(["-device", &machine.device("virtio-rng")]);

            let mut helpers = Vec::new();
            // Shared folders that QEMU or a vhost-user daemon serves.
            let mut shared_mem = !crate::sys::kernel_vsock_usable();
            for m in &cfg.mounts {
                match m.kind {
                    crate::mounts::MountType::NineP => {
                        let mut v = format!(
                            "local,path={},security_model={},id={}",
                            m.location.display().to_string().replace(',', ",,"),
                            m.security_model,
                            m.tag
                        );
                        if !m.writable {
                            v.push_str(",readonly=on");
                        }
                        cmd.args(["-fsdev", &v]);
                        cmd.args([
                            "-device",
                            &format!(
                                "{},fsdev={},mount_tag={}",
                                machine.device("virtio-9p"),
                                m.tag,
                                m.tag
                            ),
                        ]);
                    }
                    crate::mounts::MountType::Virtiofs => {
                        shared_mem = true;
                        let program = find_program("virtiofsd")
                            .or_else(|| Some(PathBuf::from("/usr/libexec/virtiofsd")).filter(|p| p.exists()))
                            .ok_or_else(|| DriverError::Missing {
                                program: "virtiofsd".into(),
                                hint: "mountType virtiofs needs it; run `cargo xtask setup` or `cargo install virtiofsd`".into(),
                            })?;
                        let sock = inst.dir.join(format!("virtiofsd-{}.sock", m.tag));
                        let _ = std::fs::remove_file(&sock);
                        let mut vc = std::process::Command::new(program);
                        vc.arg(format!("--socket-path={}", sock.display()));
                        vc.arg(format!("--shared-dir={}", m.location.display()));
                        vc.args(["--cache=auto", "--sandbox=none"]);
                        if !m.writable {
                            vc.arg("--readonly");
                        }
                        let mut h = spawn(
                            vc,
                            "virtiofsd",
                            &inst.dir.join(format!("virtiofsd-{}.log", m.tag)),
                        )?;
                        wait_for_socket(&sock, &mut h, "virtiofsd").await?;
                        helpers.push(h);
                        cmd.args([
                            "-chardev",
                            &format!("socket,id={},path={}", m.tag, sock.display()),
                        ]);
                        cmd.args([
                            "-device",
                            &format!(
                                "{},chardev={},tag={}",
                                machine.device("vhost-user-fs"),
                                m.tag,
                                m.tag
                            ),
                        ]);
                    }
                    crate::mounts::MountType::Vsockfs => {}
                }
            }
            // vsockfs shares move bulk data through an ivshmem device (a PCI
            // device: q35 only) whose backing file the host agent maps too.
            let shm_file = inst.path(instance::FS_SHM);
            let _ = std::fs::remove_file(&shm_file);
            let vsockfs = cfg
                .mounts
                .iter()
                .filter(|m| m.kind == crate::mounts::MountType::Vsockfs)
                .count() as u64;
            if machine == Machine::Q35 && vsockfs > 0 {
                let size = crate::shares_vsockfs::SHM_PER_SHARE
                    * vsockfs.min(crate::shares_vsockfs::SHM_SHARES_MAX);
                let made = std::fs::File::create(&shm_file).and_then(|f| f.set_len(size));
                match made {
                    Ok(()) => {
                        cmd.args([
                            "-object",
                            &format!(
                                "memory-backend-file,id=fsshm,mem-path={},size={size},share=on",
                                shm_file.display().to_string().replace(',', ",,")
                            ),
                        ]);
                        cmd.args(["-device", "ivshmem-plain,memdev=fsshm"]);
                    }
                    Err(e) => tracing::warn!(
                        "{}: {e}; shares will carry their data over vsock",
                        shm_file.display()
                    ),
                }
            }
            // Each vsockfs share's frames go over a virtio-serial port of
            // its own when it has one (see `shares_vsockfs`); QEMU listens
            // for the host agent on the port's socket.
            let ports = vsockfs.min(crate::shares_vsockfs::PORTS_MAX);
            crate::shares_vsockfs::remove_port_sockets(&inst.path(""));
            if ports > 0 {
                cmd.args([
                    "-device",
                    &format!(
                        "{},id=fsports,max_ports={}",
                        machine.device("virtio-serial"),
                        ports + 1
                    ),
                ]);
                for n in 0..ports {
                    let sock = crate::shares_vsockfs::port_socket(&inst.path(""), n);
                    cmd.args([
                        "-chardev",
                        &format!(
                            "socket,id=fsport{n},path={},server=on,wait=off",
                            sock.display().to_string().replace(',', ",,")
                        ),
                        "-device",
                        &format!(
                            "virtserialport,bus=fsports.0,chardev=fsport{n},name={}",
                            crate::shares_vsockfs::port_name(n)
                        ),
                    ]);
                }
            }
            if shared_mem {
                // vhost-user devices need the guest RAM shared with their daemon.
                cmd.args([
                    "-object",
                    &format!("memory-backend-memfd,id=mem0,size={mem_mib}M,share=on"),
                ]);
                cmd.args(["-machine", "memory-backend=mem0"]);
            }
            let transport = if crate::sys::kernel_vsock_usable() {
                let cid = 3 + (std::process::id() % 100_000);
                cmd.args([
                    "-device",
                    &format!("{},guest-cid={cid}", machine.device("vhost-vsock")),
                ]);
                TransportSpec::Kernel { cid }
            } else {
                let vhost_sock = inst.path(instance::VHOST_VSOCK_SOCK);
                let uds = inst.path(instance::VSOCK_SOCK);
                let _ = std::fs::remove_file(&vhost_sock);
                let _ = std::fs::remove_file(&uds);
                let program = find_program("vhost-device-vsock").ok_or_else(|| DriverError::Missing {
                    program: "vhost-device-vsock".into(),
                    hint: "this host has no /dev/vhost-vsock, so the vsock channel needs it; run `cargo xtask setup` or `cargo install vhost-device-vsock`".into(),
                })?;
                let mut hc = std::process::Command::new(program);
                hc.arg("--guest-cid").arg(HYBRID_GUEST_CID.to_string());
                hc.arg("--socket")
                    .arg(&vhost_sock)
                    .arg("--uds-path")
                    .arg(&uds);
                let mut h = spawn(
                    hc,
                    "vhost-device-vsock",
                    &inst.path(instance::VSOCK_HELPER_LOG),
                )?;
                wait_for_socket(&vhost_sock, &mut h, "vhost-device-vsock").await?;
                helpers.push(h);
                cmd.args([
                    "-chardev",
                    &format!("socket,id=vsock0,path={}", vhost_sock.display()),
                ]);
                cmd.args([
                    "-device",
                    &format!("{},chardev=vsock0", machine.device("vhost-user-vsock")),
                ]);
                TransportSpec::Hybrid { path: uds }
            };
            // A new console log per boot: the host waits for the agent's line
            // in it, and must not find the previous boot's.
            let _ = std::fs::remove_file(inst.path(instance::SERIAL_LOG));
            tracing::info!("qemu command: {cmd:?}");
            let child = spawn(
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
    /// Sends `quit` over QMP.
    async fn qmp_quit(&self) -> std::io::Result<()> {
        let s = tokio::net::UnixStream::connect(&self.qmp).await?;
        let (rd, mut wr) = s.into_split();
        let mut lines = BufReader::new(rd).lines();
        lines.next_line().await?; // greeting
        wr.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await?;
        lines.next_line().await?;
        wr.write_all(b"{\"execute\":\"quit\"}\n").await?;
        let _ = lines.next_line().await;
        Ok(())
    }

    async fn stop_helper(&mut self) {
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
            self.stop_helper().await;
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail = tail
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" / ");
            match status {
                Ok(st) if st.success() => "QEMU exited".to_string(),
                Ok(st) if tail.is_empty() => format!("QEMU exited ({st})"),
                Ok(st) => format!("QEMU exited ({st}): {tail}"),
                Err(e) => format!("waiting for QEMU failed: {e}"),
            }
        })
    }

    fn terminate(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.qmp_quit().await {
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
            self.stop_helper().await;
        })
    }
}

#[cfg(test)]
mod root_disk_tests {
    #[test]
    fn root_disk_is_read_only_and_escapes_commas() {
        let (args, param) = super::root_disk(
            std::path::Path::new("/img/a,b/rootfs.ext4"),
            super::Machine::Q35,
        );
        assert_eq!(
            args[1],
            "file=/img/a,,b/rootfs.ext4,if=none,id=root,format=raw,readonly=on"
        );
        assert_eq!(args[3], "virtio-blk-pci,drive=root");
        let (args, _) = super::root_disk(std::path::Path::new("/r"), super::Machine::Microvm);
        assert_eq!(args[3], "virtio-blk-device,drive=root");
        assert_eq!(param, "lima.root=/dev/vda");
    }
}
