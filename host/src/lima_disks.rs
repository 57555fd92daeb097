//! Lima's named disks (`limactl disk`, `additionalDisks:`): disk images of
//! their own, outlive any instance, and attach to one running instance at
//! a time.
//!
//! ```text
//! $LIMA_HOME/_disks/NAME/
//!   datadisk    the image (qcow2 or raw; the format is read from the file)
//!   in_use_by   a symlink to the instance folder while one uses the disk
//! ```
//!
//! The lock is taken by the host agent before the VM starts and dropped
//! when it stops; one left behind by an instance that no longer runs (a
//! killed host agent) does not count, so `disk unlock` is only needed to
//! clear the listing.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::additional_disks::AdditionalDisk;
use crate::image::DiskFormat;
use crate::instance::Instance;
use crate::qemu_img;

pub const DISKS_DIR: &str = "_disks";
pub const IMAGE: &str = "datadisk";
pub const LOCK: &str = "in_use_by";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "disk name `{0}` is invalid: use letters and digits, optionally joined by `.`, `_` or `-`"
    )]
    BadName(String),
    #[error("disk \"{0}\" does not exist; create it with `limactl disk create {0} --size SIZE`")]
    NotFound(String),
    #[error("disk \"{name}\" already exists ({dir})")]
    Exists { name: String, dir: String },
    #[error("disk format \"{0}\" not supported, use \"qcow2\" or \"raw\" instead")]
    BadFormat(String),
    #[error("{file} reads {others} too; import a standalone image (flatten it first: qemu-img convert -O qcow2 {file} FLAT.qcow2)")]
    NotStandalone { file: String, others: String },
    #[error("disk \"{name}\" is in use by instance \"{instance}\"")]
    InUse { name: String, instance: String },
    #[error("specified size {want} is less than the current disk size {have}. Disk shrinking is currently unavailable")]
    Shrink { want: String, have: String },
    #[error(transparent)]
    QemuImg(#[from] qemu_img::QemuImgError),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io { what, path, source }
}

/// Instance names' rule, which also keeps a name a plain file name.
pub fn check_name(name: &str) -> Result<(), DiskError> {
    if crate::names::is_valid_name(name) {
        Ok(())
    } else {
        Err(DiskError::BadName(name.to_string()))
    }
}

/// A disk as `limactl disk list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub name: String,
    /// Virtual size in bytes.
    pub size: u64,
    pub format: String,
    pub dir: PathBuf,
    /// The instance holding it, if one is running with it.
    pub instance: String,
    #[serde(rename = "instanceDir")]
    pub instance_dir: String,
}

pub fn disk_dir(home: &Path, name: &str) -> PathBuf {
    home.join(DISKS_DIR).join(name)
}

/// Makes an empty disk; the guest makes its file system on first use.
pub fn create(home: &Path, name: &str, size: u64, format: &str) -> Result<Disk, DiskError> {
    check_name(name)?;
    if !matches!(format, "qcow2" | "raw") {
        return Err(DiskError::BadFormat(format.to_string()));
    }
    let dir = disk_dir(home, name);
    if dir.symlink_metadata().is_ok() {
        return Err(DiskError::Exists {
            name: name.to_string(),
            dir: dir.display().to_string(),
        });
    }
    let parent = home.join(DISKS_DIR);
    crate::privacy::create_private_dir(&parent).map_err(io("create", &parent))?;
    crate::privacy::create_private_dir(&dir).map_err(io("create", &dir))?;
    let image = dir.join(IMAGE);
    let made = qemu_img::run(
        &[
            "create",
            "-q",
            "-f",
            format,
            &image.to_string_lossy(),
            &size.to_string(),
        ],
        &format!("create {}", image.display()),
    );
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.into());
    }
    inspect(home, name)
}

/// Every disk, by name.
pub fn names(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(home.join(DISKS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(IMAGE).exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn inspect(home: &Path, name: &str) -> Result<Disk, DiskError> {
    check_name(name)?;
    let dir = disk_dir(home, name);
    let image = dir.join(IMAGE);
    if !image.exists() {
        return Err(DiskError::NotFound(name.to_string()));
    }
    let info = qemu_img::info(&image)?;
    let (instance, instance_dir) = match holder(&dir) {
        Some(i) => (i.name.clone(), i.dir.display().to_string()),
        None => (String::new(), String::new()),
    };
    Ok(Disk {
        name: name.to_string(),
        size: info.virtual_size,
        format: info.format,
        dir,
        instance,
        instance_dir,
    })
}

/// The running instance the lock names, if any.
fn holder(dir: &Path) -> Option<Instance> {
    let target = std::fs::read_link(dir.join(LOCK)).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    let home = target.parent()?;
    let inst = Instance::new(home, &name).ok()?;
    inst.host_agent_running().then_some(inst)
}

/// Whether a lock is there at all (running holder or not).
pub fn locked_by(home: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_link(disk_dir(home, name).join(LOCK)).ok()
}

/// Takes the lock for `inst` (kept if it already holds it); a disk held by
/// another running instance is refused.
pub fn lock(home: &Path, name: &str, inst: &Instance) -> Result<(), DiskError> {
    let dir = disk_dir(home, name);
    if !dir.join(IMAGE).exists() {
        return Err(DiskError::NotFound(name.to_string()));
    }
    let link = dir.join(LOCK);
    if let Some(other) = holder(&dir) {
        if other.dir != inst.dir {
            return Err(DiskError::InUse {
                name: name.to_string(),
                instance: other.name,
            });
        }
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&inst.dir, &link).map_err(io("lock", &link))
}

/// Drops the lock if `inst` holds it (or, with `None`, whoever does).
pub fn unlock(home: &Path, name: &str, inst: Option<&Instance>) -> Result<(), DiskError> {
    let link = disk_dir(home, name).join(LOCK);
    match (std::fs::read_link(&link), inst) {
        (Err(_), _) => Ok(()),
        (Ok(t), Some(i)) if t != i.dir => Ok(()),
        _ => std::fs::remove_file(&link).map_err(io("unlock", &link)),
    }
}

pub fn delete(home: &Path, name: &str) -> Result<(), DiskError> {
    let d = inspect(home, name)?;
    if !d.instance.is_empty() {
        return Err(DiskError::InUse {
            name: name.to_string(),
            instance: d.instance,
        });
    }
    std::fs::remove_dir_all(&d.dir).map_err(io("remove", &d.dir))
}

/// Grows a disk that no running instance uses; the guest grows an ext4
/// file system on it at its next mount.
pub fn resize(home: &Path, name: &str, size: u64) -> Result<(), DiskError> {
    let d = inspect(home, name)?;
    if size < d.size {
        return Err(DiskError::Shrink {
            want: crate::units::human_size(size),
            have: crate::units::human_size(d.size),
        });
    }
    if !d.instance.is_empty() {
        return Err(DiskError::InUse {
            name: name.to_string(),
            instance: d.instance,
        });
    }
    let image = d.dir.join(IMAGE);
    qemu_img::run(
        &[
            "resize",
            "-q",
            "-f",
            &d.format,
            &image.to_string_lossy(),
            &size.to_string(),
        ],
        &format!("resize {}", image.display()),
    )?;
    Ok(())
}

/// Makes disk `name` from an image file (qcow2 or raw, as `qemu-img`
/// reads it), copied; the file is left as it is.
pub fn import(home: &Path, name: &str, file: &Path) -> Result<Disk, DiskError> {
    check_name(name)?;
    let dir = disk_dir(home, name);
    if dir.symlink_metadata().is_ok() {
        return Err(DiskError::Exists {
            name: name.to_string(),
            dir: dir.display().to_string(),
        });
    }
    let info = qemu_img::info(file)?;
    let others = info.other_files();
    if !others.is_empty() {
        return Err(DiskError::NotStandalone {
            file: file.display().to_string(),
            others: others.join(", "),
        });
    }
    if !matches!(info.format.as_str(), "qcow2" | "raw") {
        return Err(DiskError::BadFormat(info.format));
    }
    let parent = home.join(DISKS_DIR);
    crate::privacy::create_private_dir(&parent).map_err(io("create", &parent))?;
    crate::privacy::create_private_dir(&dir).map_err(io("create", &dir))?;
    let image = dir.join(IMAGE);
    if let Err(e) = crate::privacy::copy_private(file, &image) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(io("copy", file)(e));
    }
    inspect(home, name)
}

/// The QEMU format of a disk, for the VM's drive.
pub fn format_of(d: &Disk) -> DiskFormat {
    if d.format == "raw" {
        DiskFormat::Raw
    } else {
        DiskFormat::Qcow2
    }
}

/// Locks each of the instance's disks; on an error none stays locked.
pub fn lock_all(
    home: &Path,
    inst: &Instance,
    disks: &[AdditionalDisk],
) -> Result<Vec<Disk>, DiskError> {
    let mut locked: Vec<Disk> = Vec::new();
    for d in disks {
        let r = lock(home, &d.name, inst).and_then(|()| inspect(home, &d.name));
        match r {
            Ok(disk) => locked.push(disk),
            Err(e) => {
                for l in &locked {
                    let _ = unlock(home, &l.name, Some(inst));
                }
                return Err(e);
            }
        }
    }
    Ok(locked)
}

/// Drops every lock `inst` holds.
pub fn unlock_all(home: &Path, inst: &Instance) {
    for name in names(home) {
        let _ = unlock(home, &name, Some(inst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_made_listed_locked_resized_and_deleted() {
        if crate::programs::find_program("qemu-img").is_none() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        let d = create(home, "data", 1 << 20, "qcow2").unwrap();
        assert_eq!((d.size, d.format.as_str()), (1 << 20, "qcow2"));
        assert!(matches!(
            create(home, "data", 1, "qcow2"),
            Err(DiskError::Exists { .. })
        ));
        assert!(matches!(
            create(home, "x", 1, "vmdk"),
            Err(DiskError::BadFormat(_))
        ));
        create(home, "r", 1 << 20, "raw").unwrap();
        assert_eq!(names(home), ["data", "r"]);
        // A lock of an instance that does not run does not hold the disk.
        let inst = Instance::new(home, "vm").unwrap();
        lock(home, "data", &inst).unwrap();
        assert_eq!(locked_by(home, "data").as_deref(), Some(inst.dir.as_path()));
        assert_eq!(inspect(home, "data").unwrap().instance, "");
        resize(home, "data", 2 << 20).unwrap();
        assert_eq!(inspect(home, "data").unwrap().size, 2 << 20);
        assert!(matches!(
            resize(home, "data", 1 << 20),
            Err(DiskError::Shrink { .. })
        ));
        unlock(home, "data", Some(&inst)).unwrap();
        assert_eq!(locked_by(home, "data"), None);
        // An overlay that reads another file is refused; a plain image is
        // imported.
        let base = t.path().join("base.qcow2");
        let overlay = t.path().join("overlay.qcow2");
        let (b, o) = (base.to_string_lossy(), overlay.to_string_lossy());
        qemu_img::run(&["create", "-q", "-f", "qcow2", &b, "1M"], "create").unwrap();
        qemu_img::run(
            &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &b, &o],
            "create",
        )
        .unwrap();
        let e = import(home, "o", &overlay).unwrap_err().to_string();
        assert!(e.contains("import a standalone image"), "{e}");
        assert!(!disk_dir(home, "o").exists());
        assert_eq!(import(home, "b", &base).unwrap().format, "qcow2");
        delete(home, "data").unwrap();
        assert!(matches!(inspect(home, "data"), Err(DiskError::NotFound(_))));
    }
}
