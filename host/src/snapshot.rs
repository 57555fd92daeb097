//! `limactl snapshot`: named snapshots of a stopped instance's disks, kept
//! inside the qcow2 files themselves (`qemu-img snapshot`), as Lima's QEMU
//! driver does for a stopped instance.
//!
//! The disks are the ones the guest writes: a distro image's overlay
//! (`diffdisk`) and our images' data disk (`datadisk`, `/home` and `/var`).
//! Every one of them gets the same tag, so applying a snapshot takes the
//! whole instance back. A running instance is refused: Lima saves the
//! VM's memory too (`savevm`), which QEMU refuses for our vhost-user vsock
//! and shared-memory devices.
use std::path::PathBuf;

use crate::instance::{self, Instance};
use crate::qemu_img;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("expected tag (give one with --tag NAME)")]
    NoTag,
    #[error(
        "tag \"{0}\" is only digits, which qemu-img takes for a snapshot ID; give it a letter"
    )]
    NumericTag(String),
    #[error("cannot take or apply a snapshot of a running instance; stop it first with `limactl stop {0}` (lima-rs snapshots disks only)")]
    Running(String),
    #[error("instance \"{0}\" has no disk yet; start it once first")]
    NoDisk(String),
    #[error("snapshot \"{tag}\" already exists in instance \"{name}\"")]
    Exists { name: String, tag: String },
    #[error("snapshot \"{tag}\" not found in instance \"{name}\"; `limactl snapshot list {name}` shows them")]
    NotFound { name: String, tag: String },
    #[error(transparent)]
    QemuImg(#[from] qemu_img::QemuImgError),
}

/// The instance's qcow2 disks that can hold snapshots.
fn disks(inst: &Instance) -> Vec<PathBuf> {
    [instance::DIFFDISK, instance::DATA_DISK]
        .iter()
        .map(|d| inst.path(d))
        .filter(|p| p.is_file())
        .collect()
}

/// The tags the first disk holds.
pub fn tags(inst: &Instance) -> Result<Vec<String>, SnapshotError> {
    let Some(disk) = disks(inst).into_iter().next() else {
        return Ok(Vec::new());
    };
    let info = qemu_img::info(&disk)?;
    Ok(info.snapshots.into_iter().map(|s| s.name).collect())
}

/// The disks to act on, for a stopped instance that has them.
fn stopped_disks(inst: &Instance, tag: &str) -> Result<Vec<PathBuf>, SnapshotError> {
    if tag.is_empty() {
        return Err(SnapshotError::NoTag);
    }
    // qemu-img takes a tag of digits for a snapshot's ID first.
    if tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SnapshotError::NumericTag(tag.to_string()));
    }
    if inst.host_agent_running() {
        return Err(SnapshotError::Running(inst.name.clone()));
    }
    let disks = disks(inst);
    if disks.is_empty() {
        return Err(SnapshotError::NoDisk(inst.name.clone()));
    }
    Ok(disks)
}

fn each(inst: &Instance, tag: &str, flag: &str, verb: &str) -> Result<(), SnapshotError> {
    for disk in stopped_disks(inst, tag)? {
        let d = disk.to_string_lossy();
        qemu_img::run(
            &["snapshot", flag, tag, &d],
            &format!("snapshot {verb} on {d}"),
        )?;
    }
    Ok(())
}

pub fn create(inst: &Instance, tag: &str) -> Result<(), SnapshotError> {
    stopped_disks(inst, tag)?;
    if tags(inst)?.iter().any(|t| t == tag) {
        return Err(SnapshotError::Exists {
            name: inst.name.clone(),
            tag: tag.to_string(),
        });
    }
    each(inst, tag, "-c", "create")
}

fn known(inst: &Instance, tag: &str) -> Result<(), SnapshotError> {
    stopped_disks(inst, tag)?;
    if !tags(inst)?.iter().any(|t| t == tag) {
        return Err(SnapshotError::NotFound {
            name: inst.name.clone(),
            tag: tag.to_string(),
        });
    }
    Ok(())
}

pub fn apply(inst: &Instance, tag: &str) -> Result<(), SnapshotError> {
    known(inst, tag)?;
    each(inst, tag, "-a", "apply")
}

pub fn delete(inst: &Instance, tag: &str) -> Result<(), SnapshotError> {
    known(inst, tag)?;
    each(inst, tag, "-d", "delete")
}

/// `qemu-img snapshot -l`'s table of the first disk without its title
/// line (Lima's form: a header `ID TAG VM SIZE DATE VM CLOCK ICOUNT`, a row
/// per snapshot); empty when there is none. A running instance is listed
/// too (read-only, with QEMU's `-U`).
pub fn list(inst: &Instance) -> Result<String, SnapshotError> {
    let Some(disk) = disks(inst).into_iter().next() else {
        return Ok(String::new());
    };
    let d = disk.to_string_lossy();
    let out = qemu_img::run(
        &["snapshot", "-U", "-l", &d],
        &format!("snapshot list on {d}"),
    )?;
    Ok(out
        .lines()
        .skip_while(|l| !l.starts_with("ID"))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// The tags of a [`list`] table.
pub fn tags_of_table(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_of_a_stopped_instance_disk() {
        if crate::programs::find_program("qemu-img").is_none() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let inst = Instance::new(t.path(), "s").unwrap();
        std::fs::create_dir_all(&inst.dir).unwrap();
        assert!(matches!(create(&inst, "a"), Err(SnapshotError::NoDisk(_))));
        let disk = inst.path(instance::DATA_DISK);
        qemu_img::run(
            &["create", "-q", "-f", "qcow2", &disk.to_string_lossy(), "1M"],
            "create",
        )
        .unwrap();
        assert!(matches!(create(&inst, ""), Err(SnapshotError::NoTag)));
        assert!(matches!(
            create(&inst, "12"),
            Err(SnapshotError::NumericTag(_))
        ));
        assert_eq!(list(&inst).unwrap(), "");
        create(&inst, "one").unwrap();
        create(&inst, "two").unwrap();
        assert!(matches!(
            create(&inst, "one"),
            Err(SnapshotError::Exists { .. })
        ));
        let table = list(&inst).unwrap();
        assert!(table.starts_with("ID"), "{table}");
        assert_eq!(tags_of_table(&table), ["one", "two"]);
        apply(&inst, "one").unwrap();
        assert!(matches!(
            apply(&inst, "three"),
            Err(SnapshotError::NotFound { .. })
        ));
        delete(&inst, "one").unwrap();
        assert_eq!(tags(&inst).unwrap(), ["two"]);
    }
}
