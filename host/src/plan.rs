//! The machine an instance runs on, described once for every driver.
//!
//! [`plan`] turns the checked `lima.yaml`, the resolved boot image and what
//! the driver can offer ([`Caps`]) into a [`VmPlan`]: CPUs, memory, how it
//! boots, its disks, its shared folders, the shared memory and serial ports
//! that `vsockfs` shares use, and the console log. A driver only turns the
//! plan into its own arguments (QEMU) or API calls (Virtualization.framework);
//! which devices exist is decided here, so every driver gets the same machine.
//!
//! ```text
//! lima.yaml ─ config ─┐
//! images[]  ─ image  ─┼─ plan() ─ VmPlan ─ driver (qemu: args; vz: API)
//! driver.caps() ──────┘                 └─ shares (which port / region each vsockfs mount uses)
//! ```
use std::path::{Path, PathBuf};

use crate::config::InstanceConfig;
use crate::image::{BootImage, DiskFormat};
use crate::instance::{self, Instance};
use crate::mounts::MountType;

/// Shared memory per vsockfs share: 32 slots of 1 MiB, twice the readahead
/// window.
pub const SHM_PER_SHARE: u64 = 32 << 20;
/// Shares that get shared memory; later ones carry their data in frames.
pub const SHM_SHARES_MAX: u64 = 8;
/// Shares that get a serial port of their own (one virtio-serial device
/// holds 31 ports).
pub const PORTS_MAX: u64 = 30;

/// What a driver can give a VM besides the basics (disks, 9p/virtiofs,
/// vsock, a console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// A shared-memory device the host maps too (QEMU's ivshmem, PCI only).
    pub shared_memory: bool,
    /// Named serial ports with a Unix socket on the host (virtio-serial).
    pub serial_ports: bool,
}

/// Everything a driver needs to build the VM.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// The instance's name (the VM's name is `lima-NAME`).
    pub name: String,
    pub cpus: u32,
    /// Bytes.
    pub memory: u64,
    pub boot: Boot,
    /// In order: the guest sees the first as `/dev/vda`.
    pub disks: Vec<Disk>,
    /// 9p and virtiofs shares, which are VM devices.
    pub shares: Vec<Share>,
    /// What `vsockfs` shares use besides vsock.
    pub vsockfs: VsockfsDevices,
    /// Where the guest's serial console goes.
    pub serial_log: PathBuf,
    /// The host port (on 127.0.0.1) forwarded to the guest's sshd, for
    /// disk images.
    pub ssh_port: Option<u16>,
    /// The network card's MAC address.
    pub mac: String,
    /// The size (bytes) of the data disk to create if its file is missing
    /// (see [`add_data_disk`]).
    pub data_disk_size: Option<u64>,
}

/// How the VM starts.
#[derive(Debug, Clone)]
pub enum Boot {
    /// The VMM loads the kernel. `cmdline` holds the guest's parameters;
    /// the driver adds its console and machine-specific ones.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Vec<String>,
    },
    /// Firmware boots the first disk: UEFI with its variable store in
    /// `vars` (the driver fills it from its firmware's template), or the
    /// PC BIOS (`firmware.legacyBIOS`).
    Firmware { legacy_bios: bool, vars: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Unique among the VM's devices.
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// The serial the guest sees (`/sys/block/vdX/serial`), if any.
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    NineP {
        tag: String,
        path: PathBuf,
        security_model: String,
        read_only: bool,
    },
    /// Served by a `virtiofsd` that the driver starts (QEMU) or by the
    /// hypervisor itself (vz).
    Virtiofs {
        tag: String,
        path: PathBuf,
        read_only: bool,
        socket: PathBuf,
        log: PathBuf,
    },
}

/// The devices of `vsockfs` shares. The nth share uses region n of the
/// shared memory (if n < [`SHM_SHARES_MAX`]) and port n (if there is one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VsockfsDevices {
    pub shm: Option<SharedMemory>,
    pub ports: Vec<SerialPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMemory {
    pub id: String,
    /// Backing file, created before the driver starts.
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// The name the guest sees (`/dev/virtio-ports/NAME`).
    pub name: String,
    /// The host's end: the VMM listens here.
    pub socket: PathBuf,
}

impl VmPlan {
    /// A kernel that shows whether the native accelerator runs guests (the
    /// accelerator probe boots it), if the plan has one.
    pub fn probe_kernel(&self) -> Option<&Path> {
        match &self.boot {
            Boot::Kernel { kernel, .. } => Some(kernel),
            Boot::Firmware { .. } => None,
        }
    }

    /// Whether any device needs guest RAM shared with a host process.
    pub fn has_virtiofs(&self) -> bool {
        self.shares
            .iter()
            .any(|s| matches!(s, Share::Virtiofs { .. }))
    }
}

impl VsockfsDevices {
    /// The shared-memory region (offset, length) of the `nth` share.
    pub fn region(&self, nth: u64) -> Option<(&Path, u64, u64)> {
        let shm = self.shm.as_ref()?;
        let offset = nth.checked_mul(SHM_PER_SHARE)?;
        (nth < SHM_SHARES_MAX && offset + SHM_PER_SHARE <= shm.size).then_some((
            shm.path.as_path(),
            offset,
            SHM_PER_SHARE,
        ))
    }

    /// The serial port of the `nth` share.
    pub fn port(&self, nth: u64) -> Option<&SerialPort> {
        self.ports.get(usize::try_from(nth).ok()?)
    }
}

/// The `nth` vsockfs share's port name, as the guest sees it.
pub fn port_name(nth: u64) -> String {
    format!("lima.fs.{nth}")
}

/// The serial of the data disk, by which our agent finds it.
pub const DATA_DISK_SERIAL: &str = "lima-data";

/// Adds the instance's data disk (`/var` and `/home` that survive a
/// restart) to a plan whose kernel runs our agent as init; other images
/// keep their own disk. The file is made by the bring-up
/// ([`VmPlan::data_disk`] says its size), formatted by the guest.
pub fn add_data_disk(plan: &mut VmPlan, inst: &Instance, cfg: &InstanceConfig) {
    let Boot::Kernel { cmdline, .. } = &mut plan.boot else {
        return;
    };
    cmdline.push(format!("lima.data={DATA_DISK_SERIAL}"));
    plan.disks.push(Disk {
        id: "data".into(),
        path: inst.path(instance::DATA_DISK),
        format: DiskFormat::Qcow2,
        read_only: false,
        serial: Some(DATA_DISK_SERIAL.into()),
    });
    plan.data_disk_size = Some(cfg.disk);
}

/// Describes the VM of `inst`.
pub fn plan(inst: &Instance, cfg: &InstanceConfig, image: &BootImage, caps: Caps) -> VmPlan {
    let mut disks = Vec::new();
    let boot = match image {
        BootImage::Kernel(k) => {
            let hostname = format!("lima-{}", inst.name.replace(['.', '_'], "-"));
            // The agent (init) makes the guest user at boot.
            let mut cmdline = vec![
                "panic=-1".to_string(),
                format!("lima.hostname={hostname}"),
                cfg.user.kernel_param(),
            ];
            cmdline.extend(cfg.binfmt.kernel_param());
            cmdline.extend(k.extra_cmdline.split_whitespace().map(String::from));
            if let Some(rootfs) = &k.rootfs {
                // The image's root filesystem, read-only (the guest puts a
                // memory overlay on top); the agent switches into it.
                disks.push(Disk {
                    id: "root".into(),
                    path: rootfs.clone(),
                    format: DiskFormat::Raw,
                    read_only: true,
                    serial: None,
                });
                cmdline.push("lima.root=/dev/vda".into());
            }
            Boot::Kernel {
                kernel: k.kernel.clone(),
                initrd: k.initrd.clone(),
                cmdline,
            }
        }
        BootImage::Disk(d) => {
            disks.push(Disk {
                id: "root".into(),
                path: d.disk.clone(),
                format: d.format,
                read_only: false,
                serial: None,
            });
            if let Some(seed) = &d.seed {
                // A small vfat volume labelled CIDATA, which cloud-init's
                // NoCloud source finds on any block device.
                disks.push(Disk {
                    id: "seed".into(),
                    path: seed.clone(),
                    format: DiskFormat::Raw,
                    read_only: true,
                    serial: None,
                });
            }
            Boot::Firmware {
                legacy_bios: cfg.legacy_bios,
                vars: inst.path(instance::EFI_VARS),
            }
        }
    };
    let mut shares = Vec::new();
    let mut vsockfs = 0u64;
    for m in &cfg.mounts {
        match m.kind {
            MountType::NineP => shares.push(Share::NineP {
                tag: m.tag.clone(),
                path: m.location.clone(),
                security_model: m.security_model.clone(),
                read_only: !m.writable,
            }),
            MountType::Virtiofs => {
                let (socket, log) = inst.virtiofsd_files(&m.tag);
                shares.push(Share::Virtiofs {
                    tag: m.tag.clone(),
                    path: m.location.clone(),
                    read_only: !m.writable,
                    socket,
                    log,
                });
            }
            MountType::Vsockfs => vsockfs += 1,
        }
    }
    let shm = (caps.shared_memory && vsockfs > 0).then(|| SharedMemory {
        id: "fsshm".into(),
        path: inst.path(instance::FS_SHM),
        size: SHM_PER_SHARE * vsockfs.min(SHM_SHARES_MAX),
    });
    let ports = if caps.serial_ports {
        (0..vsockfs.min(PORTS_MAX))
            .map(|n| SerialPort {
                name: port_name(n),
                socket: inst.share_port_socket(n),
            })
            .collect()
    } else {
        Vec::new()
    };
    VmPlan {
        name: inst.name.clone(),
        cpus: cfg.cpus,
        memory: cfg.memory,
        boot,
        disks,
        shares,
        vsockfs: VsockfsDevices { shm, ports },
        serial_log: inst.path(instance::SERIAL_LOG),
        ssh_port: None,
        mac: crate::distro::mac_address(inst),
        data_disk_size: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{DiskBoot, KernelBoot};

    fn config(yaml: &str) -> InstanceConfig {
        crate::config::LimaYaml::parse(yaml, "t.yaml")
            .unwrap()
            .resolve("t.yaml")
            .unwrap()
    }

    fn kernel(rootfs: Option<&str>) -> BootImage {
        BootImage::Kernel(KernelBoot {
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initrd.img".into()),
            extra_cmdline: "quiet  loglevel=3".into(),
            kernel_release: None,
            rootfs: rootfs.map(PathBuf::from),
        })
    }

    const ALL: Caps = Caps {
        shared_memory: true,
        serial_ports: true,
    };

    #[test]
    fn a_kernel_image_with_a_root_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let inst = Instance::new(dir.path(), "my.vm").unwrap();
        let cfg = config("images: [{location: builtin:default}]\ncpus: 2\nmemory: 1GiB\n");
        let p = plan(&inst, &cfg, &kernel(Some("/img/rootfs.ext4")), ALL);
        assert_eq!((p.cpus, p.memory), (2, 1 << 30));
        let Boot::Kernel {
            cmdline, initrd, ..
        } = &p.boot
        else {
            panic!("{:?}", p.boot)
        };
        assert_eq!(initrd.as_deref(), Some(Path::new("/img/initrd.img")));
        assert_eq!(
            cmdline.join(" "),
            format!(
                "panic=-1 lima.hostname=lima-my-vm {} quiet loglevel=3 lima.root=/dev/vda",
                cfg.user.kernel_param()
            )
        );
        assert_eq!(p.disks.len(), 1);
        assert!(p.disks[0].read_only);
        assert_eq!(p.probe_kernel(), Some(Path::new("/img/vmlinux")));
        assert_eq!(p.vsockfs, VsockfsDevices::default());
        assert_eq!(p.serial_log, inst.path(instance::SERIAL_LOG));
    }

    #[test]
    fn binfmt_reaches_the_agent_on_the_kernel_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let inst = Instance::new(dir.path(), "b").unwrap();
        let cmdline = |yaml: &str| {
            let cfg = config(&format!("images: [{{location: builtin:default}}]\n{yaml}"));
            match plan(&inst, &cfg, &kernel(Some("/img/rootfs.ext4")), ALL).boot {
                Boot::Kernel { cmdline, .. } => cmdline,
                other => panic!("{other:?}"),
            }
        };
        let binfmt = |c: Vec<String>| -> Vec<String> {
            c.into_iter()
                .filter(|w| w.starts_with("lima.binfmt="))
                .collect()
        };
        // The default (every emulator the image has) needs no parameter.
        assert!(binfmt(cmdline("")).is_empty());
        assert_eq!(
            binfmt(cmdline("binfmt: {enabled: false}\n")),
            ["lima.binfmt=none"]
        );
        let arch = crate::config::host_arch();
        let foreign = if arch == "x86_64" {
            "aarch64"
        } else {
            "x86_64"
        };
        assert_eq!(
            binfmt(cmdline(&format!(
                "binfmt: {{architectures: [{foreign}, armv7l]}}\n"
            ))),
            [format!("lima.binfmt={foreign},arm")]
        );
    }

    #[test]
    fn a_data_disk_goes_to_kernel_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let inst = Instance::new(dir.path(), "d").unwrap();
        let cfg = config(
            "images: [{location: builtin:default}]\ndisk: 20GiB\nuser: {name: tester, uid: 4242}\n",
        );
        let mut p = plan(&inst, &cfg, &kernel(Some("/img/rootfs.ext4")), ALL);
        add_data_disk(&mut p, &inst, &cfg);
        let Boot::Kernel { cmdline, .. } = &p.boot else {
            panic!("{:?}", p.boot)
        };
        assert!(cmdline.contains(&"lima.data=lima-data".to_string()));
        assert!(cmdline
            .contains(&"lima.user=tester:4242:4242:/home/tester.guest:/bin/bash".to_string()));
        // After the root filesystem, which stays /dev/vda.
        assert_eq!(p.disks.len(), 2);
        let data = &p.disks[1];
        assert_eq!(data.path, inst.path(instance::DATA_DISK));
        assert_eq!((data.format, data.read_only), (DiskFormat::Qcow2, false));
        assert_eq!(data.serial.as_deref(), Some(DATA_DISK_SERIAL));
        assert_eq!(p.data_disk_size, Some(20 << 30));

        let image = BootImage::Disk(DiskBoot {
            disk: "/i/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
            seed: None,
        });
        let mut p = plan(&inst, &cfg, &image, ALL);
        add_data_disk(&mut p, &inst, &cfg);
        assert_eq!(p.disks.len(), 1);
        assert_eq!(p.data_disk_size, None);
    }

    #[test]
    fn a_disk_image_boots_from_firmware_with_its_seed() {
        let dir = tempfile::tempdir().unwrap();
        let inst = Instance::new(dir.path(), "d").unwrap();
        let cfg = config("images: [{location: builtin:default}]\n");
        let image = BootImage::Disk(DiskBoot {
            disk: "/i/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
            seed: Some("/i/cidata.iso".into()),
        });
        let p = plan(&inst, &cfg, &image, ALL);
        assert!(
            matches!(&p.boot, Boot::Firmware { legacy_bios: false, vars } if *vars == inst.path(instance::EFI_VARS))
        );
        assert!(p.probe_kernel().is_none());
        assert_eq!(p.disks.len(), 2);
        assert_eq!(
            (p.disks[0].format, p.disks[0].read_only),
            (DiskFormat::Qcow2, false)
        );
        assert_eq!(
            (p.disks[1].format, p.disks[1].read_only),
            (DiskFormat::Raw, true)
        );
        let cfg = config("images: [{location: builtin:default}]\nfirmware: {legacyBIOS: true}\n");
        let p = plan(&inst, &cfg, &image, ALL);
        assert!(matches!(
            p.boot,
            Boot::Firmware {
                legacy_bios: true,
                ..
            }
        ));
    }

    #[test]
    fn shares_get_devices_as_the_driver_allows() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().display().to_string();
        let inst = Instance::new(dir.path(), "s").unwrap();
        let mut yaml = "images: [{location: builtin:default}]\nmounts:\n".to_string();
        for (n, kind) in ["vsockfs", "9p", "virtiofs", "vsockfs"].iter().enumerate() {
            yaml.push_str(&format!(
                "- {{location: {folder}, mountPoint: /mnt/{n}, mountType: {kind}}}\n"
            ));
        }
        let cfg = config(&yaml);
        let p = plan(&inst, &cfg, &kernel(None), ALL);
        assert_eq!(p.shares.len(), 2);
        assert!(p.has_virtiofs());
        let shm = p.vsockfs.shm.as_ref().unwrap();
        assert_eq!(shm.size, 2 * SHM_PER_SHARE);
        assert_eq!(shm.path, inst.path(instance::FS_SHM));
        assert_eq!(p.vsockfs.ports.len(), 2);
        assert_eq!(p.vsockfs.port(1).unwrap().name, "lima.fs.1");
        assert_eq!(p.vsockfs.port(1).unwrap().socket, inst.share_port_socket(1));
        assert!(p.vsockfs.port(2).is_none());
        assert_eq!(p.vsockfs.region(1).unwrap().1, SHM_PER_SHARE);
        assert!(p.vsockfs.region(2).is_none());

        let p = plan(
            &inst,
            &cfg,
            &kernel(None),
            Caps {
                shared_memory: false,
                serial_ports: false,
            },
        );
        assert!(p.vsockfs.shm.is_none() && p.vsockfs.ports.is_empty());
    }
}
