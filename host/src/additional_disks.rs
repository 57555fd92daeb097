//! `additionalDisks:` in `lima.yaml`: which of `limactl disk`'s disks an
//! instance attaches, and how the guest readies each (`lima_disks.rs`
//! keeps the disks themselves, `guest-agent/src/disks.rs` formats and
//! mounts them).
use serde::Serialize;
use serde_yaml_ng::Value;

/// One `additionalDisks:` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdditionalDisk {
    pub name: String,
    /// Make a file system when the disk is blank (Lima's default: yes).
    pub format: bool,
    pub fs_type: String,
    pub fs_args: Vec<String>,
}

/// File systems the guest can make and mount (`swap` is enabled, not
/// mounted).
const FS_TYPES: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs", "swap"];

/// `additionalDisks:`: names, or `{name, format, fsType, fsArgs}`; each
/// name once. The error names the entry and what is wrong.
pub fn resolve(value: Option<&Value>) -> Result<Vec<AdditionalDisk>, (String, String)> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(s)) => s,
        Some(_) => {
            return Err((
                "additionalDisks".into(),
                "must be a list of disk names or {name, format, fsType, fsArgs}".into(),
            ))
        }
    };
    let mut out: Vec<AdditionalDisk> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("additionalDisks[{i}]");
        let bad = |m: &str| (field.clone(), m.to_string());
        let disk = match item {
            Value::String(name) => AdditionalDisk {
                name: name.clone(),
                format: true,
                fs_type: "ext4".into(),
                fs_args: Vec::new(),
            },
            Value::Mapping(m) => {
                let mut d = AdditionalDisk {
                    name: String::new(),
                    format: true,
                    fs_type: "ext4".into(),
                    fs_args: Vec::new(),
                };
                for (k, v) in m {
                    match (k.as_str(), v) {
                        (Some("name"), Value::String(s)) => d.name = s.clone(),
                        (Some("format"), Value::Bool(b)) => d.format = *b,
                        (Some("format"), Value::Null) => {}
                        (Some("fsType"), Value::String(s)) => d.fs_type = s.clone(),
                        (Some("fsType"), Value::Null) => {}
                        (Some("fsArgs"), Value::Sequence(args)) => {
                            for a in args {
                                match a {
                                    Value::String(s) => d.fs_args.push(s.clone()),
                                    _ => return Err(bad("fsArgs must be a list of strings")),
                                }
                            }
                        }
                        (Some("fsArgs"), Value::Null) => {}
                        (Some(k @ ("name" | "format" | "fsType" | "fsArgs")), _) => {
                            return Err(bad(&format!("`{k}` has the wrong type")))
                        }
                        (k, _) => {
                            return Err(bad(&format!(
                                "unknown field `{}` (known: name, format, fsType, fsArgs)",
                                k.unwrap_or("?")
                            )))
                        }
                    }
                }
                d
            }
            _ => return Err(bad("must be a disk name or {name, format, fsType, fsArgs}")),
        };
        if !crate::names::is_valid_name(&disk.name) {
            return Err(bad(&format!(
                "disk name `{}` is invalid: use letters and digits, optionally joined by `.`, `_` or `-`",
                disk.name
            )));
        }
        if !FS_TYPES.contains(&disk.fs_type.as_str()) {
            return Err(bad(&format!(
                "fsType `{}` is not supported (use one of {})",
                disk.fs_type,
                FS_TYPES.join(", ")
            )));
        }
        if out.iter().any(|d| d.name == disk.name) {
            return Err(bad(&format!("disk `{}` is listed twice", disk.name)));
        }
        out.push(disk);
    }
    Ok(out)
}

/// The virtio serial of the `nth` additional disk (at most 20 bytes).
pub fn serial(nth: usize) -> String {
    format!("lima-disk{nth}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additional_disks_are_names_or_maps() {
        let v: Value = serde_yaml_ng::from_str(
            "[data, {name: swp, fsType: swap}, {name: raw, format: false, fsArgs: [-m, '0']}]",
        )
        .unwrap();
        let d = resolve(Some(&v)).unwrap();
        assert_eq!(d[0].name, "data");
        assert!(d[0].format && d[0].fs_type == "ext4");
        assert_eq!(d[1].fs_type, "swap");
        assert!(!d[2].format);
        assert_eq!(d[2].fs_args, ["-m", "0"]);
        for (bad, needle) in [
            ("[data, data]", "listed twice"),
            ("[{name: d, fsType: ntfs}]", "fsType `ntfs`"),
            ("[{name: d, size: 1}]", "unknown field `size`"),
            ("['../x']", "invalid"),
            ("data", "must be a list"),
        ] {
            let v: Value = serde_yaml_ng::from_str(bad).unwrap();
            let (_, msg) = resolve(Some(&v)).unwrap_err();
            assert!(msg.contains(needle), "{bad}: {msg}");
        }
    }
}
