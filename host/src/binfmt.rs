//! `binfmt:` in `lima.yaml`, a lima-rs key: which QEMU user-mode emulators
//! the guest registers in `binfmt_misc`, so that arm64 programs and
//! `docker run --platform linux/arm64` containers run on an x86_64 VM.
//!
//! Lima has no key for this on QEMU (its docs have users run
//! `tonistiigi/binfmt` in a container); its `vmOpts.vz.rosetta.binfmt` does
//! the same for Rosetta on vz, and the shape here follows Lima's older
//! `rosetta: {enabled, binfmt}`:
//!
//! ```yaml
//! binfmt:
//!   enabled: true                # default
//!   architectures: [aarch64]     # default: every emulator the image has
//! ```
//!
//! Architectures take Lima's names (those of `arch:`); the guest agent gets
//! QEMU's (`armv7l` is QEMU's `arm`) as `lima.binfmt=` on the kernel command
//! line, so only images whose kernel we boot (the built-in ones) see it.
use serde::{Deserialize, Serialize};

/// `binfmt:` as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BinfmtYaml {
    pub enabled: Option<bool>,
    pub architectures: Option<Vec<String>>,
}

/// The checked setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Binfmt {
    /// Every emulator the image has, but the VM's own architecture.
    #[default]
    Default,
    /// None (`enabled: false`, or an empty `architectures`).
    Off,
    /// These, in QEMU's names.
    Only(Vec<&'static str>),
}

/// Lima's architecture names and QEMU's for the same.
const ARCHES: &[(&str, &str)] = &[
    ("x86_64", "x86_64"),
    ("aarch64", "aarch64"),
    ("armv7l", "arm"),
    ("riscv64", "riscv64"),
    ("ppc64le", "ppc64le"),
    ("s390x", "s390x"),
];

/// Checks `binfmt:` for a VM of `vm_arch`; an error is (field, message).
pub fn resolve(yaml: Option<&BinfmtYaml>, vm_arch: &str) -> Result<Binfmt, (String, String)> {
    let Some(yaml) = yaml else {
        return Ok(Binfmt::Default);
    };
    if yaml.enabled == Some(false) {
        return Ok(Binfmt::Off);
    }
    let Some(list) = &yaml.architectures else {
        return Ok(Binfmt::Default);
    };
    let mut qemu = Vec::new();
    for (i, arch) in list.iter().enumerate() {
        let field = format!("binfmt.architectures[{i}]");
        let Some((lima, name)) = ARCHES.iter().find(|(lima, _)| lima == arch) else {
            let hint = match arch.as_str() {
                "arm64" => " (Docker's name for aarch64)",
                "amd64" => " (Docker's name for x86_64)",
                "arm" | "armhf" | "armv7" => " (32-bit arm is armv7l)",
                _ => "",
            };
            let names: Vec<&str> = ARCHES.iter().map(|(l, _)| *l).collect();
            return Err((
                field,
                format!(
                    "`{arch}` is not an architecture name{hint}; use one of {}",
                    names.join(", ")
                ),
            ));
        };
        if *lima == vm_arch {
            return Err((
                field,
                format!(
                    "{arch} is this VM's own architecture, which runs without emulation; remove it"
                ),
            ));
        }
        if !qemu.contains(name) {
            qemu.push(*name);
        }
    }
    Ok(if qemu.is_empty() {
        Binfmt::Off
    } else {
        Binfmt::Only(qemu)
    })
}

impl Binfmt {
    /// The guest agent's `lima.binfmt=` parameter; none for the default.
    pub fn kernel_param(&self) -> Option<String> {
        match self {
            Binfmt::Default => None,
            Binfmt::Off => Some("lima.binfmt=none".into()),
            Binfmt::Only(list) => Some(format!("lima.binfmt={}", list.join(","))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(enabled: Option<bool>, arches: Option<&[&str]>) -> BinfmtYaml {
        BinfmtYaml {
            enabled,
            architectures: arches.map(|a| a.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn default_is_every_emulator_and_needs_no_parameter() {
        assert_eq!(resolve(None, "x86_64"), Ok(Binfmt::Default));
        assert_eq!(
            resolve(Some(&yaml(Some(true), None)), "x86_64"),
            Ok(Binfmt::Default)
        );
        assert_eq!(Binfmt::Default.kernel_param(), None);
    }

    #[test]
    fn off_and_named_architectures_become_the_agents_parameter() {
        let off = resolve(Some(&yaml(Some(false), Some(&["aarch64"]))), "x86_64").unwrap();
        assert_eq!(off.kernel_param().as_deref(), Some("lima.binfmt=none"));
        let empty = resolve(Some(&yaml(None, Some(&[]))), "x86_64").unwrap();
        assert_eq!(empty, Binfmt::Off);
        let only = resolve(
            Some(&yaml(None, Some(&["aarch64", "armv7l", "aarch64"]))),
            "x86_64",
        )
        .unwrap();
        assert_eq!(only, Binfmt::Only(vec!["aarch64", "arm"]));
        assert_eq!(
            only.kernel_param().as_deref(),
            Some("lima.binfmt=aarch64,arm")
        );
        // On an arm64 VM, x86_64 is the foreign one.
        let x86 = resolve(Some(&yaml(None, Some(&["x86_64"]))), "aarch64").unwrap();
        assert_eq!(x86.kernel_param().as_deref(), Some("lima.binfmt=x86_64"));
    }

    #[test]
    fn bad_names_and_the_vms_own_arch_are_refused_by_field() {
        let (field, msg) =
            resolve(Some(&yaml(None, Some(&["aarch64", "arm64"]))), "x86_64").unwrap_err();
        assert_eq!(field, "binfmt.architectures[1]");
        assert!(
            msg.contains("`arm64`") && msg.contains("Docker's name for aarch64"),
            "{msg}"
        );
        assert!(msg.contains("aarch64, armv7l"), "{msg}");
        let (field, msg) = resolve(Some(&yaml(None, Some(&["x86_64"]))), "x86_64").unwrap_err();
        assert_eq!(field, "binfmt.architectures[0]");
        assert!(msg.contains("own architecture"), "{msg}");
    }
}
