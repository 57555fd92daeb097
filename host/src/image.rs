//! Finding what an instance boots, as one of two kinds ([`BootImage`]): a
//! kernel the VMM loads directly (our images, Lima's `kernel:`/`initrd:`),
//! or a bootable disk that firmware starts (distro cloud images).
//!
//! `builtin:NAME` names an image built by `cargo xtask image` (a directory with
//! `vmlinuz`, `initrd.img`, `image.json`, and for `builtin:debian` a
//! read-only root filesystem `rootfs.ext4`), searched in `$LIMA_IMAGES_PATH`,
//! then next to the binaries (`<bindir>/../images`, which is `target/images`
//! in a checkout, and `<bindir>/../share/lima-rs/images` when installed).
//! Lima's `images[].kernel` / `images[].initrd` with local paths work too.
//! Any other location is a distro disk image, which boots from the
//! instance's own disk (`disk.rs`).
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Image;
use crate::instance::{self, Instance};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image `{name}` not found (looked in {looked}); build it with `cargo xtask image {name}`, or set LIMA_IMAGES_PATH")]
    NotFound { name: String, looked: String },
    #[error("image file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("image {location}: the instance has no disk made from it yet ({disk} is missing); `limactl start` makes it")]
    NoInstanceDisk { location: String, disk: PathBuf },
    #[error(
        "{0}: remote image locations are not supported yet; download it and give a local path"
    )]
    Remote(String),
    #[error(
        "image {location} is a disk image; this command boots built-in images and kernels only"
    )]
    NotKernel { location: String },
    #[error("cannot read {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What an instance boots.
#[derive(Debug, Clone)]
pub enum BootImage {
    /// Direct kernel boot.
    Kernel(KernelBoot),
    /// Firmware boot from a disk.
    Disk(DiskBoot),
}

/// A disk image's on-disk format, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A bootable disk (the guest's root, written by the guest) and an optional
/// read-only seed volume beside it, such as a cloud-init NoCloud image.
#[derive(Debug, Clone)]
pub struct DiskBoot {
    pub disk: PathBuf,
    pub format: DiskFormat,
    pub seed: Option<PathBuf>,
}

/// A kernel, its initramfs, and what our images add.
#[derive(Debug, Clone)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to the runner's own kernel command line.
    pub extra_cmdline: String,
    /// From `image.json` when the image is ours.
    pub kernel_release: Option<String>,
    /// A root filesystem image the guest agent switches into (attached
    /// read-only; the guest puts a memory overlay on top).
    pub rootfs: Option<PathBuf>,
}

#[derive(Deserialize, Debug)]
struct Manifest {
    kernel_release: String,
    kernel: String,
    initrd: String,
    /// Optional: images without one run from the initramfs.
    #[serde(default)]
    rootfs: Option<String>,
}

/// Parses `image.json`.
fn parse_manifest(path: &Path, text: &str) -> Result<Manifest, ImageError> {
    serde_json::from_str(text).map_err(|e| ImageError::Manifest {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LIMA_IMAGES_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(bindir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(bindir.join("../images"));
        dirs.push(bindir.join("../share/lima-rs/images"));
    }
    dirs
}

/// The file a local location names: `file://` dropped, `~/` the home.
pub fn local_path(location: &str) -> PathBuf {
    let p = location.strip_prefix("file://").unwrap_or(location);
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => PathBuf::from(p),
    }
}

fn local(location: &str) -> Result<PathBuf, ImageError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Err(ImageError::Remote(location.to_string()));
    }
    let p = local_path(location);
    if !p.exists() {
        return Err(ImageError::MissingFile(p));
    }
    Ok(p)
}

/// Opens a built image directory.
pub fn open_builtin(name: &str) -> Result<KernelBoot, ImageError> {
    open_builtin_in(name, &search_dirs())
}

/// [`open_builtin`] over the given search directories.
pub fn open_builtin_in(name: &str, dirs: &[PathBuf]) -> Result<KernelBoot, ImageError> {
    for dir in dirs {
        let d = dir.join(name);
        let manifest = d.join("image.json");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).map_err(|e| ImageError::Manifest {
            path: manifest.clone(),
            source: Box::new(e),
        })?;
        let m = parse_manifest(&manifest, &text)?;
        let kernel = d.join(&m.kernel);
        let initrd = d.join(&m.initrd);
        let rootfs = m.rootfs.as_ref().map(|r| d.join(r));
        for f in [Some(&kernel), Some(&initrd), rootfs.as_ref()]
            .into_iter()
            .flatten()
        {
            if !f.exists() {
                return Err(ImageError::MissingFile(f.clone()));
            }
        }
        return Ok(KernelBoot {
            kernel: kernel.canonicalize().unwrap_or(kernel),
            initrd: Some(initrd.canonicalize().unwrap_or(initrd)),
            extra_cmdline: String::new(),
            kernel_release: Some(m.kernel_release),
            rootfs: rootfs.map(|r| r.canonicalize().unwrap_or(r)),
        });
    }
    Err(ImageError::NotFound {
        name: name.to_string(),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Whether `image` is a disk that firmware boots (not one of our built-in
/// images, not a kernel the VMM loads).
pub fn is_disk_image(image: &Image) -> bool {
    !image.location.starts_with("builtin:")
        && image
            .kernel
            .as_ref()
            .is_none_or(|k| k.location.trim().is_empty())
}

/// Resolves an `images[]` entry to files on this host. A disk image boots
/// from the instance's own disk (made by `disk::prepare`) with the
/// instance's cloud-init seed beside it.
pub fn resolve(image: &Image, inst: &Instance) -> Result<BootImage, ImageError> {
    if is_disk_image(image) {
        let disk = inst.path(instance::DIFFDISK);
        if !disk.exists() {
            return Err(ImageError::NoInstanceDisk {
                location: image.location.clone(),
                disk,
            });
        }
        return Ok(BootImage::Disk(DiskBoot {
            disk,
            format: DiskFormat::Qcow2,
            seed: Some(inst.path(instance::CIDATA)),
        }));
    }
    resolve_kernel(image).map(BootImage::Kernel)
}

/// Resolves a kernel image (built-in, or Lima's `kernel:`/`initrd:`).
pub fn resolve_kernel(image: &Image) -> Result<KernelBoot, ImageError> {
    let mut boot = if let Some(name) = image.location.strip_prefix("builtin:") {
        open_builtin(name)?
    } else if let Some(k) = image.kernel.as_ref().filter(|k| !k.location.is_empty()) {
        KernelBoot {
            kernel: local(&k.location)?,
            initrd: image
                .initrd
                .as_ref()
                .map(|i| local(&i.location))
                .transpose()?,
            extra_cmdline: String::new(),
            kernel_release: None,
            rootfs: None,
        }
    } else {
        return Err(ImageError::NotKernel {
            location: image.location.clone(),
        });
    };
    if let Some(cmdline) = image.kernel.as_ref().and_then(|k| k.cmdline.clone()) {
        boot.extra_cmdline = cmdline;
    }
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_with_and_without_rootfs() {
        let p = Path::new("image.json");
        let m = parse_manifest(
            p,
            r#"{"name":"debian","kernel_release":"6.1.0-1-amd64","kernel":"vmlinuz","initrd":"initrd.img","rootfs":"rootfs.ext4"}"#,
        )
        .unwrap();
        assert_eq!(m.rootfs.as_deref(), Some("rootfs.ext4"));
        let m = parse_manifest(
            p,
            r#"{"kernel_release":"6.1.0-1-amd64","kernel":"vmlinuz","initrd":"initrd.img"}"#,
        )
        .unwrap();
        assert!(m.rootfs.is_none());
        let err = parse_manifest(p, r#"{"kernel":"vmlinuz"}"#).unwrap_err();
        assert!(err.to_string().contains("image.json"), "{err}");
    }

    #[test]
    fn a_missing_rootfs_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("withroot");
        std::fs::create_dir(&image).unwrap();
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::write(image.join(f), b"x").unwrap();
        }
        std::fs::write(
            image.join("image.json"),
            r#"{"kernel_release":"r","kernel":"vmlinuz","initrd":"initrd.img","rootfs":"rootfs.ext4"}"#,
        )
        .unwrap();
        let dirs = [dir.path().to_path_buf()];
        match open_builtin_in("withroot", &dirs) {
            Err(ImageError::MissingFile(p)) => assert!(p.ends_with("rootfs.ext4"), "{p:?}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(image.join("rootfs.ext4"), b"x").unwrap();
        let boot = open_builtin_in("withroot", &dirs).unwrap();
        assert!(boot.rootfs.unwrap().ends_with("withroot/rootfs.ext4"));
    }
}
