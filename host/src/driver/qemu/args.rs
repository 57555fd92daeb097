//! A [`VmPlan`] as QEMU's command line. Pure: every input is in
//! [`Inputs`], so the whole argument list is unit-tested without QEMU.
use std::path::{Path, PathBuf};

use super::firmware::Firmware;
use crate::driver::DriverError;
use crate::plan::{Boot, Share, VmPlan};

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

    /// Whether the machine takes an ivshmem device (a PCI device).
    pub fn has_pci(self) -> bool {
        self == Machine::Q35
    }

    /// Kernel parameters the machine needs. Under TCG, microvm has no HPET
    /// or PM timer to calibrate the TSC against and the kernel stalls, so it
    /// is told the frequency (`tsc_khz`); TCG's guest TSC counts at the
    /// host's rate.
    fn cmdline(self, accel: &str, tsc_khz: Option<u64>) -> Option<String> {
        if self != Machine::Microvm || accel != "tcg" {
            return None;
        }
        tsc_khz.map(|khz| format!("tsc_early_khz={khz} tsc=reliable"))
    }

    /// Whether [`Machine::cmdline`] needs the host's TSC rate.
    pub fn needs_tsc_khz(self, accel: &str) -> bool {
        self == Machine::Microvm && accel == "tcg"
    }
}

/// How the guest's vsock device is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// The host kernel's vhost-vsock.
    Kernel { cid: u32 },
    /// A vhost-user daemon (`vhost-device-vsock`) listening on `socket`.
    VhostUser { socket: PathBuf },
}

/// Everything the command line depends on.
pub struct Inputs<'a> {
    pub plan: &'a VmPlan,
    pub machine: Machine,
    pub accel: &'a str,
    pub vsock: &'a VsockDevice,
    pub qmp: &'a Path,
    pub pidfile: &'a Path,
    /// QEMU user-mode forwards (`tcp:HOSTIP:HOSTPORT-:GUESTPORT`), from
    /// `LIMA_QEMU_HOSTFWD`: the benchmarks' baseline.
    pub hostfwd: &'a [String],
    /// The host's TSC rate, when [`Machine::needs_tsc_khz`].
    pub tsc_khz: Option<u64>,
    /// UEFI for a firmware boot (none: kernel boot, or QEMU's BIOS).
    pub firmware: Option<&'a Firmware>,
}

/// QEMU option values escape a comma by doubling it.
fn escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The arguments for `qemu-system-*`.
pub fn build(i: &Inputs) -> Vec<String> {
    let plan = i.plan;
    let m = i.machine;
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    let mem_mib = plan.memory >> 20;
    push(&["-name", &format!("lima-{}", plan.name)]);
    push(&["-machine", &m.arg(i.accel)]);
    push(&["-cpu", if i.accel == "tcg" { "max" } else { "host" }]);
    push(&["-smp", &plan.cpus.to_string(), "-m", &format!("{mem_mib}M")]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    // Our images never reboot; a distro guest may (an update, cloud-init),
    // and its VM should come back rather than end.
    if matches!(plan.boot, Boot::Kernel { .. }) {
        push(&["-no-reboot"]);
    }
    match i.firmware {
        Some(Firmware::Pflash { code, vars }) => push(&[
            "-drive",
            &format!(
                "if=pflash,unit=0,format=raw,readonly=on,file={}",
                escape(code)
            ),
            "-drive",
            &format!("if=pflash,unit=1,format=raw,file={}", escape(vars)),
        ]),
        Some(Firmware::Rom(rom)) => push(&["-bios", &rom.display().to_string()]),
        None => {}
    }
    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &plan.boot
    {
        push(&["-kernel", &kernel.display().to_string()]);
        if let Some(initrd) = initrd {
            push(&["-initrd", &initrd.display().to_string()]);
        }
        let mut params = vec!["console=ttyS0".to_string()];
        params.extend(cmdline.iter().cloned());
        params.extend(m.cmdline(i.accel, i.tsc_khz));
        push(&["-append", &params.join(" ")]);
    }
    for d in &plan.disks {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        let device = m.device("virtio-blk");
        let serial = d
            .serial
            .as_ref()
            .map(|s| format!(",serial={s}"))
            .unwrap_or_default();
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id={},format={}{ro}",
                escape(&d.path),
                d.id,
                d.format.as_str()
            ),
            "-device",
            &format!("{device},drive={}{serial}", d.id),
        ]);
    }
    push(&[
        "-chardev",
        &format!("file,id=serial0,path={}", plan.serial_log.display()),
    ]);
    push(&["-serial", "chardev:serial0"]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", i.qmp.display()),
    ]);
    push(&["-pidfile", &i.pidfile.display().to_string()]);
    let mut netdev = "user,id=net0".to_string();
    if let Some(port) = plan.ssh_port {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:22"));
    }
    for f in i.hostfwd {
        netdev.push_str(&format!(",hostfwd={f}"));
    }
    push(&[
        "-netdev",
        &netdev,
        "-device",
        &match m {
            Machine::Q35 => format!("virtio-net-pci,netdev=net0,mac={},romfile=", plan.mac),
            Machine::Microvm => format!("virtio-net-device,netdev=net0,mac={}", plan.mac),
        },
    ]);
    push(&["-device", &m.device("virtio-rng")]);
    for s in &plan.shares {
        match s {
            Share::NineP {
                tag,
                path,
                security_model,
                read_only,
            } => {
                let mut v = format!(
                    "local,path={},security_model={security_model},id={tag}",
                    escape(path)
                );
                if *read_only {
                    v.push_str(",readonly=on");
                }
                push(&["-fsdev", &v]);
                push(&[
                    "-device",
                    &format!("{},fsdev={tag},mount_tag={tag}", m.device("virtio-9p")),
                ]);
            }
            Share::Virtiofs { tag, socket, .. } => {
                push(&[
                    "-chardev",
                    &format!("socket,id={tag},path={}", socket.display()),
                ]);
                push(&[
                    "-device",
                    &format!("{},chardev={tag},tag={tag}", m.device("vhost-user-fs")),
                ]);
            }
        }
    }
    if let Some(shm) = &plan.vsockfs.shm {
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id={},mem-path={},size={},share=on",
                shm.id,
                escape(&shm.path),
                shm.size
            ),
        ]);
        push(&["-device", &format!("ivshmem-plain,memdev={}", shm.id)]);
    }
    let ports = &plan.vsockfs.ports;
    if !ports.is_empty() {
        push(&[
            "-device",
            &format!(
                "{},id=fsports,max_ports={}",
                m.device("virtio-serial"),
                ports.len() + 1
            ),
        ]);
        for (n, port) in ports.iter().enumerate() {
            push(&[
                "-chardev",
                &format!(
                    "socket,id=fsport{n},path={},server=on,wait=off",
                    escape(&port.socket)
                ),
                "-device",
                &format!(
                    "virtserialport,bus=fsports.0,chardev=fsport{n},name={}",
                    port.name
                ),
            ]);
        }
    }
    // vhost-user devices need the guest RAM shared with their daemon.
    if plan.has_virtiofs() || matches!(i.vsock, VsockDevice::VhostUser { .. }) {
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem0,size={mem_mib}M,share=on"),
        ]);
        push(&["-machine", "memory-backend=mem0"]);
    }
    match i.vsock {
        VsockDevice::Kernel { cid } => {
            push(&[
                "-device",
                &format!("{},guest-cid={cid}", m.device("vhost-vsock")),
            ]);
        }
        VsockDevice::VhostUser { socket } => {
            push(&[
                "-chardev",
                &format!("socket,id=vsock0,path={}", socket.display()),
            ]);
            push(&[
                "-device",
                &format!("{},chardev=vsock0", m.device("vhost-user-vsock")),
            ]);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::DiskFormat;
    use crate::plan::{Disk, SerialPort, SharedMemory, VsockfsDevices};

    fn plan(boot: Boot, disks: Vec<Disk>) -> VmPlan {
        VmPlan {
            name: "dev".into(),
            cpus: 2,
            memory: 1 << 30,
            boot,
            disks,
            shares: vec![],
            vsockfs: VsockfsDevices::default(),
            serial_log: "/h/dev/serial.log".into(),
            ssh_port: None,
            mac: "52:55:55:00:00:01".into(),
            data_disk_size: None,
        }
    }

    fn args(plan: &VmPlan, machine: Machine, vsock: &VsockDevice) -> Vec<String> {
        build(&Inputs {
            plan,
            machine,
            accel: "tcg",
            vsock,
            qmp: Path::new("/h/dev/qmp.sock"),
            pidfile: Path::new("/h/dev/qemu.pid"),
            hostfwd: &[],
            tsc_khz: Some(2_000_000),
            firmware: None,
        })
    }

    /// The value after the `n`th occurrence of `flag`.
    fn after(a: &[String], flag: &str) -> Vec<String> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    fn kernel_boot() -> Boot {
        Boot::Kernel {
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initrd.img".into()),
            cmdline: vec!["panic=-1".into(), "lima.root=/dev/vda".into()],
        }
    }

    #[test]
    fn root_disk_is_read_only_and_escapes_commas() {
        let disk = Disk {
            id: "root".into(),
            path: "/img/a,b/rootfs.ext4".into(),
            format: DiskFormat::Raw,
            read_only: true,
            serial: None,
        };
        let data = Disk {
            id: "data".into(),
            path: "/h/dev/datadisk".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
            serial: Some("lima-data".into()),
        };
        let p = plan(kernel_boot(), vec![disk, data]);
        let vsock = VsockDevice::Kernel { cid: 7 };
        let a = args(&p, Machine::Q35, &vsock);
        assert_eq!(
            after(&a, "-drive"),
            [
                "file=/img/a,,b/rootfs.ext4,if=none,id=root,format=raw,readonly=on",
                "file=/h/dev/datadisk,if=none,id=data,format=qcow2"
            ]
        );
        assert!(after(&a, "-device").contains(&"virtio-blk-pci,drive=root".to_string()));
        assert!(after(&a, "-device")
            .contains(&"virtio-blk-pci,drive=data,serial=lima-data".to_string()));
        let a = args(&p, Machine::Microvm, &vsock);
        assert!(after(&a, "-device").contains(&"virtio-blk-device,drive=root".to_string()));
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0 panic=-1 lima.root=/dev/vda tsc_early_khz=2000000 tsc=reliable"]
        );
        assert!(after(&a, "-device").contains(&"vhost-vsock-device,guest-cid=7".to_string()));
        // The kernel's vhost-vsock needs no shared guest RAM.
        assert!(!a.iter().any(|x| x.contains("memory-backend-memfd")));
    }

    #[test]
    fn a_firmware_boot_has_uefi_flash_a_seed_disk_and_ssh() {
        let disks = vec![
            Disk {
                id: "root".into(),
                path: "/i/disk".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
                serial: None,
            },
            Disk {
                id: "seed".into(),
                path: "/i/cidata.img".into(),
                format: DiskFormat::Raw,
                read_only: true,
                serial: None,
            },
        ];
        let mut p = plan(
            Boot::Firmware {
                legacy_bios: false,
                vars: "/i/efi-vars.fd".into(),
            },
            disks,
        );
        p.ssh_port = Some(60022);
        let fw = Firmware::Pflash {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/i/efi-vars.fd".into(),
        };
        let vsock = VsockDevice::VhostUser {
            socket: "/h/v.sock".into(),
        };
        let a = build(&Inputs {
            plan: &p,
            machine: Machine::Q35,
            accel: "tcg",
            vsock: &vsock,
            qmp: Path::new("/h/dev/qmp.sock"),
            pidfile: Path::new("/h/dev/qemu.pid"),
            hostfwd: &[],
            tsc_khz: None,
            firmware: Some(&fw),
        });
        assert!(!a
            .iter()
            .any(|x| x == "-kernel" || x == "-append" || x == "-no-reboot"));
        assert_eq!(
            after(&a, "-drive"),
            [
                "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "if=pflash,unit=1,format=raw,file=/i/efi-vars.fd",
                "file=/i/disk,if=none,id=root,format=qcow2",
                "file=/i/cidata.img,if=none,id=seed,format=raw,readonly=on"
            ]
        );
        assert!(after(&a, "-device").contains(&"virtio-blk-pci,drive=seed".to_string()));
        assert_eq!(
            after(&a, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:60022-:22"]
        );
        assert!(after(&a, "-object")
            .contains(&"memory-backend-memfd,id=mem0,size=1024M,share=on".to_string()));
    }

    #[test]
    fn vsockfs_devices_become_ivshmem_and_serial_ports() {
        let mut p = plan(kernel_boot(), vec![]);
        p.vsockfs = VsockfsDevices {
            shm: Some(SharedMemory {
                id: "fsshm".into(),
                path: "/h/dev/fs-shm".into(),
                size: 64 << 20,
            }),
            ports: vec![
                SerialPort {
                    name: "lima.fs.0".into(),
                    socket: "/h/dev/fs-0.sock".into(),
                },
                SerialPort {
                    name: "lima.fs.1".into(),
                    socket: "/h/dev/fs-1.sock".into(),
                },
            ],
        };
        p.shares = vec![Share::NineP {
            tag: "m1".into(),
            path: "/src".into(),
            security_model: "none".into(),
            read_only: true,
        }];
        let a = args(&p, Machine::Q35, &VsockDevice::Kernel { cid: 3 });
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-file,id=fsshm,mem-path=/h/dev/fs-shm,size=67108864,share=on"]
        );
        let devices = after(&a, "-device");
        for d in [
            "ivshmem-plain,memdev=fsshm",
            "virtio-serial-pci,id=fsports,max_ports=3",
            "virtserialport,bus=fsports.0,chardev=fsport1,name=lima.fs.1",
            "virtio-9p-pci,fsdev=m1,mount_tag=m1",
        ] {
            assert!(devices.contains(&d.to_string()), "{d} missing: {devices:?}");
        }
        assert_eq!(
            after(&a, "-fsdev"),
            ["local,path=/src,security_model=none,id=m1,readonly=on"]
        );
        assert!(after(&a, "-chardev")
            .contains(&"socket,id=fsport0,path=/h/dev/fs-0.sock,server=on,wait=off".to_string()));
    }
}
