//! An instance's own disk when it boots a distro image: the image, fetched
//! into the download cache and verified, linked (or copied) into the
//! instance directory as `basedisk`, with a qcow2 overlay `diffdisk` on top
//! that the guest writes and that is grown to `disk:`. Made once, on the
//! first start; later starts reuse both, so what the guest wrote persists.
//!
//! ```text
//! images[].location ─ fetch (download.rs, or a local file) ─ basedisk ◀─ diffdisk (qcow2, disk: bytes)
//!                     (a URL's cached file is hard-linked; a local file is copied)
//! ```
use std::path::{Path, PathBuf};

use crate::config::Image;
use crate::image::DiskFormat;
use crate::instance::{self, Instance};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Download(#[from] crate::download::DownloadError),
    #[error("image file {0} does not exist; fix `images[].location` in lima.yaml")]
    Missing(PathBuf),
    #[error("{0} is not a disk image (neither qcow2 nor a raw disk with a partition table); fix `images[].location` in lima.yaml")]
    NotADiskImage(PathBuf),
    #[error("{path}: {algo} digest mismatch: lima.yaml says {want}, the file is {got}")]
    Mismatch {
        path: PathBuf,
        algo: &'static str,
        want: String,
        got: String,
    },
    #[error("qemu-img not found on PATH; install QEMU (Debian: qemu-utils)")]
    NoQemuImg,
    #[error("qemu-img {what} failed: {stderr}")]
    QemuImg { what: &'static str, stderr: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks what can be checked before anything is fetched: the digest's
/// form and, for a local file, that it exists.
pub fn check(image: &Image) -> Result<(), DiskError> {
    let loc = image.location.as_str();
    if let Some(d) = image.digest.as_deref() {
        crate::download::Expected::parse(loc, d)?;
    }
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Ok(());
    }
    fetch(
        &Image {
            digest: None,
            ..image.clone()
        },
        false,
    )
    .map(|_| ())
}

/// The disk format of a file, from its first bytes; `None` when it is not a
/// disk image.
pub fn sniff(path: &Path) -> Result<Option<DiskFormat>, DiskError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1024);
    std::fs::File::open(path)
        .map_err(io("open", path))?
        .take(1024)
        .read_to_end(&mut head)
        .map_err(io("read", path))?;
    Ok(format_of(&head))
}

fn format_of(head: &[u8]) -> Option<DiskFormat> {
    if head.starts_with(b"QFI\xfb") {
        return Some(DiskFormat::Qcow2);
    }
    let mbr = head.len() >= 512 && head[510..512] == [0x55, 0xaa];
    let gpt = head.len() >= 520 && &head[512..520] == b"EFI PART";
    (mbr || gpt).then_some(DiskFormat::Raw)
}

/// The image file on this host: a local path (`file://`, `~/` allowed) as
/// it is, a URL through the download cache (with a progress bar when
/// `progress`). Both are checked against `digest`.
pub fn fetch(image: &Image, progress: bool) -> Result<PathBuf, DiskError> {
    let loc = image.location.as_str();
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Ok(crate::download::fetch(
            &crate::download::cache_dir(),
            loc,
            image.digest.as_deref(),
            progress,
        )?);
    }
    let p = crate::image::local_path(loc);
    if !p.is_file() {
        return Err(DiskError::Missing(p));
    }
    if let Some(d) = image.digest.as_deref() {
        let want = crate::download::Expected::parse(loc, d)?;
        let got = crate::download::hash_file(&p, &want)?;
        if got != want.hex() {
            return Err(DiskError::Mismatch {
                path: p,
                algo: want.algo_name(),
                want: want.hex().to_string(),
                got,
            });
        }
    }
    Ok(p)
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The instance already had its disk.
    Existing,
    /// A new overlay of `size` bytes on the image; `warning` when that is
    /// more than the host's free space.
    Made { size: u64, warning: Option<String> },
}

/// Makes the instance's disk from `image` unless it has one: `basedisk` (a
/// hard link to the fetched file, or a copy across file systems) and the
/// qcow2 overlay `diffdisk`, at least `size` bytes. Anything half-made is
/// removed on failure.
pub fn prepare(
    inst: &Instance,
    image: &Image,
    size: u64,
    progress: bool,
) -> Result<Prepared, DiskError> {
    let diff = inst.path(instance::DIFFDISK);
    if diff.exists() {
        return Ok(Prepared::Existing);
    }
    let source = fetch(image, progress)?;
    let format = sniff(&source)?.ok_or_else(|| DiskError::NotADiskImage(source.clone()))?;
    let qemu_img = crate::programs::find_program("qemu-img").ok_or(DiskError::NoQemuImg)?;
    let base = inst.path(instance::BASEDISK);
    // A hard link shares the file's permissions: only our private cache's
    // files are linked; a user's own image (maybe readable by others) is
    // copied, so nothing in the instance is open to other users.
    let from_cache = source.starts_with(crate::download::cache_dir());
    let made = link_or_copy(&source, &base, from_cache)
        .and_then(|()| overlay(&qemu_img, &base, format, &diff, size));
    match made {
        Ok(size) => Ok(Prepared::Made {
            size,
            warning: free_space_warning(&inst.dir, size),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&diff);
            let _ = std::fs::remove_file(&base);
            Err(e)
        }
    }
}

fn link_or_copy(from: &Path, to: &Path, link: bool) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(to);
    if link && std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    crate::privacy::copy_private(from, to).map_err(io("copy the image to", to))
}

/// Creates `diff` on `base` (named relative to it, so the instance
/// directory can move), as large as the larger of `size` and the image;
/// returns that size.
fn overlay(
    qemu_img: &Path,
    base: &Path,
    format: DiskFormat,
    diff: &Path,
    size: u64,
) -> Result<u64, DiskError> {
    let size = size.max(virtual_size(qemu_img, base, format)?);
    let backing = base.file_name().map(PathBuf::from).unwrap_or_default();
    let out = std::process::Command::new(qemu_img)
        .current_dir(diff.parent().unwrap_or(Path::new(".")))
        .args(["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"])
        .arg(&backing)
        .arg(diff)
        .arg(size.to_string())
        .output()
        .map_err(io("run qemu-img create for", diff))?;
    if !out.status.success() {
        return Err(DiskError::QemuImg {
            what: "create",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(size)
}

/// The disk size the image itself declares.
fn virtual_size(qemu_img: &Path, path: &Path, format: DiskFormat) -> Result<u64, DiskError> {
    let out = std::process::Command::new(qemu_img)
        .args(["info", "--output=json", "-f", format.as_str()])
        .arg(path)
        .output()
        .map_err(io("run qemu-img info on", path))?;
    if !out.status.success() {
        return Err(DiskError::QemuImg {
            what: "info",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "virtual-size")]
        virtual_size: u64,
    }
    serde_json::from_slice::<Info>(&out.stdout)
        .map(|i| i.virtual_size)
        .map_err(|e| DiskError::QemuImg {
            what: "info",
            stderr: format!("unreadable answer: {e}"),
        })
}

/// A warning when a disk of `size` bytes could outgrow the free space of
/// the file system holding `dir`. The file is sparse, so it only takes what
/// the guest writes; this is a warning, as in Lima.
fn free_space_warning(dir: &Path, size: u64) -> Option<String> {
    let free = crate::sys::free_space(dir)?;
    (size > free).then(|| {
        format!(
            "the disk ({}) is larger than the free space on {} ({}); it grows only as the guest writes, but the guest can fill the host",
            crate::units::human_size(size),
            dir.display(),
            crate::units::human_size(free)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(location: &str, digest: Option<&str>) -> Image {
        Image {
            location: location.to_string(),
            digest: digest.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn disk_images_are_told_from_builtin_and_kernel_images() {
        assert!(crate::image::is_disk_image(&image(
            "https://x/debian.qcow2",
            None
        )));
        assert!(crate::image::is_disk_image(&image("/tmp/x.img", None)));
        assert!(!crate::image::is_disk_image(&image(
            "builtin:default",
            None
        )));
        let mut k = image("/tmp/x.img", None);
        k.kernel = Some(crate::config::Kernel {
            location: "/boot/vmlinuz".into(),
            ..Default::default()
        });
        assert!(!crate::image::is_disk_image(&k));
    }

    #[test]
    fn formats_are_sniffed() {
        assert_eq!(format_of(b"QFI\xfb\0\0\0\x03"), Some(DiskFormat::Qcow2));
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(format_of(&mbr), Some(DiskFormat::Raw));
        assert_eq!(format_of(b"<html>404</html>"), None);
        assert_eq!(format_of(&[0u8; 1024]), None);
    }

    #[test]
    fn a_local_file_is_checked_against_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk.img");
        std::fs::write(&f, b"hello").unwrap();
        let good = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(
            fetch(&image(f.to_str().unwrap(), Some(good)), false).unwrap(),
            f
        );
        let bad = format!("sha256:{}", "0".repeat(64));
        let e = fetch(&image(f.to_str().unwrap(), Some(&bad)), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("digest mismatch") && e.contains("disk.img"),
            "{e}"
        );
        let e = fetch(&image("/nonexistent/x.qcow2", None), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/x.qcow2") && e.contains("images[].location"),
            "{e}"
        );
    }

    #[test]
    fn the_overlay_is_made_once_grown_and_backed_relatively() {
        use std::os::unix::fs::PermissionsExt;
        let Some(qemu_img) = crate::programs::find_program("qemu-img") else {
            eprintln!("skipped: no qemu-img");
            return;
        };
        let home = tempfile::tempdir().unwrap();
        let inst = Instance::new(home.path(), "d").unwrap();
        std::fs::create_dir_all(&inst.dir).unwrap();
        let src = home.path().join("src.qcow2");
        let st = std::process::Command::new(&qemu_img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
        let img = image(src.to_str().unwrap(), None);
        let made = prepare(&inst, &img, 64 << 20, false).unwrap();
        assert!(
            matches!(made, Prepared::Made { size, .. } if size == 64 << 20),
            "{made:?}"
        );
        let diff = inst.path(instance::DIFFDISK);
        assert_eq!(
            virtual_size(&qemu_img, &diff, DiskFormat::Qcow2).unwrap(),
            64 << 20
        );
        let info = std::process::Command::new(&qemu_img)
            .args(["info", "--output=json"])
            .arg(&diff)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"], "basedisk");
        // A local image is copied, private, whatever its own mode.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&src), 0o644);
        assert_eq!(mode(&inst.path(instance::BASEDISK)), 0o600);
        // A second start keeps the disk the guest wrote.
        assert_eq!(
            prepare(&inst, &img, 1 << 30, false).unwrap(),
            Prepared::Existing
        );
        // A disk smaller than the image keeps the image's size.
        let inst2 = Instance::new(home.path(), "e").unwrap();
        std::fs::create_dir_all(&inst2.dir).unwrap();
        assert!(matches!(
            prepare(&inst2, &img, 4096, false).unwrap(),
            Prepared::Made { size, .. } if size == 1 << 20
        ));
    }

    #[test]
    fn something_that_is_not_a_disk_leaves_nothing_behind() {
        let home = tempfile::tempdir().unwrap();
        let inst = Instance::new(home.path(), "d").unwrap();
        std::fs::create_dir_all(&inst.dir).unwrap();
        let src = home.path().join("page.html");
        std::fs::write(&src, b"<html>not found</html>").unwrap();
        let e = prepare(&inst, &image(src.to_str().unwrap(), None), 1 << 30, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("page.html") && e.contains("not a disk image"),
            "{e}"
        );
        assert!(!inst.path(instance::BASEDISK).exists());
        assert!(!inst.path(instance::DIFFDISK).exists());
    }
}
