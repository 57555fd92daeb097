//! What happens to a stopped instance's folder as a whole, as Lima does
//! it: protection from `delete` and `factory-reset`, clone, rename, and a
//! factory reset back to what `create` left.
//!
//! A clone copies the instance's configuration and disks and nothing of a
//! past run (logs, events, sockets, pid files) or of its protection. The
//! base disk is a hard link (it is never written; the overlay names it
//! relatively, `basedisk`), the rest is copied. A rename moves the folder.
//! The next start makes everything per-run again (the cloud-init seed with
//! the new name, `ssh.config`, sockets).
use std::path::{Path, PathBuf};

use crate::instance::{self, Instance, InstanceError};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("instance \"{0}\" is protected to prohibit accidental removal (Hint: use `limactl unprotect {0}`)")]
    Protected(String),
    #[error("cannot {verb} a running instance; stop it first with `limactl stop {name}`")]
    Running { verb: &'static str, name: String },
    #[error("new instance name \"{new}\" must be different from \"{old}\"")]
    SameName { old: String, new: String },
    #[error("instance \"{0}\" already exists")]
    Exists(String),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManageError {
    let path = path.to_path_buf();
    move |source| ManageError::Io { what, path, source }
}

pub fn is_protected(inst: &Instance) -> bool {
    inst.path(instance::PROTECTED).symlink_metadata().is_ok()
}

/// Marks the instance protected (or not); false when it already was (or
/// was not).
pub fn set_protected(inst: &Instance, on: bool) -> Result<bool, ManageError> {
    let path = inst.path(instance::PROTECTED);
    if is_protected(inst) == on {
        return Ok(false);
    }
    if on {
        std::fs::write(&path, b"").map_err(io("write", &path))?;
    } else {
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
    }
    Ok(true)
}

/// Refuses a protected instance (for `delete` and `factory-reset`).
pub fn check_unprotected(inst: &Instance) -> Result<(), ManageError> {
    if is_protected(inst) {
        return Err(ManageError::Protected(inst.name.clone()));
    }
    Ok(())
}

/// What a clone leaves behind: a past run's files and the protection.
fn skipped_on_clone(name: &str) -> bool {
    instance::RUNTIME_FILES.contains(&name)
        || [
            instance::PROTECTED,
            instance::HA_LOCK,
            instance::HA_EVENTS,
            instance::SSH_CONFIG,
            instance::CIDATA,
        ]
        .contains(&name)
        || [".log", ".sock", ".pid", ".tmp"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

/// Clones (or renames) the stopped instance `old` as `new`.
pub fn clone(
    home: &Path,
    old: &Instance,
    new: &str,
    rename: bool,
) -> Result<Instance, ManageError> {
    let verb = if rename { "rename" } else { "clone" };
    if old.name == new {
        return Err(ManageError::SameName {
            old: old.name.clone(),
            new: new.to_string(),
        });
    }
    if old.host_agent_running() {
        return Err(ManageError::Running {
            verb,
            name: old.name.clone(),
        });
    }
    let to = Instance::new(home, new)?;
    if to.dir.symlink_metadata().is_ok() {
        return Err(ManageError::Exists(new.to_string()));
    }
    if rename {
        std::fs::rename(&old.dir, &to.dir).map_err(io("move the instance folder to", &to.dir))?;
        return Ok(to);
    }
    crate::privacy::create_private_dir(&to.dir).map_err(io("create", &to.dir))?;
    if let Err(e) = copy_tree(&old.dir, &to.dir, true) {
        let _ = std::fs::remove_dir_all(&to.dir);
        return Err(e);
    }
    Ok(to)
}

fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<(), ManageError> {
    for entry in std::fs::read_dir(from).map_err(io("read", from))? {
        let entry = entry.map_err(io("read", from))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let (src, dst) = (entry.path(), to.join(&name));
        let ty = entry.file_type().map_err(io("read", &src))?;
        if skipped_on_clone(&name_str) {
            continue;
        }
        if ty.is_dir() {
            crate::privacy::create_private_dir(&dst).map_err(io("create", &dst))?;
            copy_tree(&src, &dst, false)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io("read", &src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io("create", &dst))?;
        } else if ty.is_file() {
            let linked =
                top && name_str == instance::BASEDISK && std::fs::hard_link(&src, &dst).is_ok();
            if !linked {
                std::fs::copy(&src, &dst).map_err(io("copy", &src))?;
            }
        }
        // Sockets and FIFOs belong to a past run.
    }
    Ok(())
}

/// Removes everything but the configuration, the version and the
/// protection mark (a protected instance is refused), stopping the
/// instance first; returns what was removed. The next start makes its
/// disks anew from the image.
pub fn factory_reset(inst: &Instance) -> Result<Vec<PathBuf>, ManageError> {
    check_unprotected(inst)?;
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&inst.dir).map_err(io("read", &inst.dir))? {
        let entry = entry.map_err(io("read", &inst.dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml")
            || name.ends_with(".yml")
            || name == instance::LIMA_VERSION
            || name == instance::PROTECTED
        {
            continue;
        }
        let path = entry.path();
        let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(io("remove", &path))?;
        removed.push(path);
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(home: &Path, name: &str) -> Instance {
        let inst = Instance::new(home, name).unwrap();
        std::fs::create_dir_all(&inst.dir).unwrap();
        std::fs::write(inst.path(instance::LIMA_YAML), "images: []\n").unwrap();
        inst
    }

    #[test]
    fn protection_is_a_file_and_blocks_reset() {
        let t = tempfile::tempdir().unwrap();
        let inst = instance(t.path(), "p");
        assert!(set_protected(&inst, true).unwrap());
        assert!(!set_protected(&inst, true).unwrap());
        let e = factory_reset(&inst).unwrap_err().to_string();
        assert!(e.contains("Hint: use `limactl unprotect p`"), "{e}");
        assert!(set_protected(&inst, false).unwrap());
        assert!(!set_protected(&inst, false).unwrap());
        assert!(!is_protected(&inst));
    }

    #[test]
    fn a_clone_takes_configuration_and_disks_not_a_past_run() {
        let t = tempfile::tempdir().unwrap();
        let old = instance(t.path(), "old");
        for f in [
            instance::BASEDISK,
            instance::DIFFDISK,
            instance::DATA_DISK,
            instance::LIMA_VERSION,
        ] {
            std::fs::write(old.path(f), f).unwrap();
        }
        for f in [
            instance::HA_LOG,
            instance::HA_EVENTS,
            instance::SERIAL_LOG,
            "fs-0.log",
            instance::PROTECTED,
        ] {
            std::fs::write(old.path(f), "x").unwrap();
        }
        std::fs::create_dir(old.path("sock")).unwrap();
        std::fs::write(old.path("sock/keep"), "k").unwrap();
        let new = clone(t.path(), &old, "new", false).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&new.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "basedisk",
                "datadisk",
                "diffdisk",
                "lima-version",
                "lima.yaml",
                "sock"
            ]
        );
        assert_eq!(std::fs::read_to_string(new.path("sock/keep")).unwrap(), "k");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(new.path(instance::BASEDISK))
                .unwrap()
                .ino(),
            std::fs::metadata(old.path(instance::BASEDISK))
                .unwrap()
                .ino()
        );
        assert_eq!(std::fs::metadata(&new.dir).unwrap().mode() & 0o777, 0o700);
        // Taken names, the same name.
        let e = clone(t.path(), &old, "new", false).unwrap_err().to_string();
        assert_eq!(e, "instance \"new\" already exists");
        let e = clone(t.path(), &old, "old", true).unwrap_err().to_string();
        assert!(e.contains("must be different"), "{e}");
        // A rename moves everything.
        let moved = clone(t.path(), &new, "moved", true).unwrap();
        assert!(!new.dir.exists());
        assert!(moved.path(instance::DIFFDISK).exists());
    }

    #[test]
    fn a_reset_keeps_only_configuration_version_and_protection() {
        let t = tempfile::tempdir().unwrap();
        let inst = instance(t.path(), "r");
        for f in [
            instance::DIFFDISK,
            instance::LIMA_VERSION,
            instance::HA_LOG,
            "override.yml",
        ] {
            std::fs::write(inst.path(f), "x").unwrap();
        }
        std::fs::create_dir(inst.path("sock")).unwrap();
        let removed = factory_reset(&inst).unwrap();
        assert_eq!(
            removed,
            [
                inst.path("diffdisk"),
                inst.path("ha.stderr.log"),
                inst.path("sock")
            ]
        );
        assert!(inst.path("override.yml").exists() && inst.path(instance::LIMA_VERSION).exists());
    }
}
