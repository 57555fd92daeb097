//! UEFI firmware for QEMU guests that boot a disk: the firmware code
//! (read-only flash) and a per-instance copy of its variable store
//! (writable flash), found where QEMU and the distributions install them.
use std::path::{Path, PathBuf};

use crate::driver::DriverError;

/// Firmware files for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// Code and variables in two flash devices.
    Pflash { code: PathBuf, vars: PathBuf },
    /// One combined image loaded as the BIOS ROM (variables are lost at
    /// power-off), for hosts that only have that.
    Rom(PathBuf),
}

/// (code, variable store template) pairs, most specific first. QEMU's own
/// (`<prefix>/share/qemu`, as Homebrew and source builds install it), then
/// Debian/Ubuntu's `ovmf`, Fedora's `edk2-ovmf`, Arch's `edk2-ovmf`.
fn candidates(qemu: &Path, arch: &str) -> Vec<(PathBuf, PathBuf)> {
    let share = qemu
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("share/qemu"))
        .unwrap_or_default();
    match arch {
        "aarch64" => vec![
            (
                share.join("edk2-aarch64-code.fd"),
                share.join("edk2-arm-vars.fd"),
            ),
            (
                "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
                "/usr/share/AAVMF/AAVMF_VARS.fd".into(),
            ),
            (
                "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw".into(),
                "/usr/share/edk2/aarch64/vars-template-pflash.raw".into(),
            ),
        ],
        _ => vec![
            (
                share.join("edk2-x86_64-code.fd"),
                share.join("edk2-i386-vars.fd"),
            ),
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            ),
            (
                "/usr/share/OVMF/OVMF_CODE.fd".into(),
                "/usr/share/OVMF/OVMF_VARS.fd".into(),
            ),
            (
                "/usr/share/edk2/ovmf/OVMF_CODE.fd".into(),
                "/usr/share/edk2/ovmf/OVMF_VARS.fd".into(),
            ),
            (
                "/usr/share/edk2/x64/OVMF_CODE.4m.fd".into(),
                "/usr/share/edk2/x64/OVMF_VARS.4m.fd".into(),
            ),
        ],
    }
}

/// Combined images, for hosts without a code/variables pair.
const ROMS: &[&str] = &["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"];

/// Finds the firmware and gives the instance its variable store at `vars`
/// (copied from the template once; the guest's boot entries live there).
pub fn prepare(qemu: &Path, arch: &str, vars: &Path) -> Result<Firmware, DriverError> {
    for (code, template) in candidates(qemu, arch) {
        if !(code.is_file() && template.is_file()) {
            continue;
        }
        if !vars.exists() {
            crate::privacy::copy_private(&template, vars).map_err(|e| {
                DriverError::Failed(format!(
                    "cannot copy the UEFI variable store {} to {}: {e}",
                    template.display(),
                    vars.display()
                ))
            })?;
        }
        return Ok(Firmware::Pflash {
            code,
            vars: vars.to_path_buf(),
        });
    }
    if arch == "x86_64" {
        if let Some(rom) = ROMS.iter().map(PathBuf::from).find(|p| p.is_file()) {
            return Ok(Firmware::Rom(rom));
        }
    }
    Err(DriverError::Missing {
        program: "UEFI firmware".into(),
        hint: format!(
            "looked for {}; install it (Debian/Ubuntu: the `ovmf` package; `cargo xtask setup` does it){}",
            candidates(qemu, arch)
                .iter()
                .map(|(c, _)| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if arch == "x86_64" {
                ", or set `firmware.legacyBIOS: true` in lima.yaml"
            } else {
                ""
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_own_firmware_comes_first_and_vars_are_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share/qemu");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(share.join("edk2-x86_64-code.fd"), b"code").unwrap();
        std::fs::write(share.join("edk2-i386-vars.fd"), b"template").unwrap();
        let qemu = dir.path().join("bin/qemu-system-x86_64");
        let vars = dir.path().join("efi-vars.fd");
        let fw = prepare(&qemu, "x86_64", &vars).unwrap();
        assert_eq!(
            fw,
            Firmware::Pflash {
                code: share.join("edk2-x86_64-code.fd"),
                vars: vars.clone()
            }
        );
        assert_eq!(std::fs::read(&vars).unwrap(), b"template");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&vars).unwrap().permissions().mode() & 0o777,
            0o600,
            "the template's own mode is not taken over"
        );
        // The guest's variables survive the next start.
        std::fs::write(&vars, b"written by the guest").unwrap();
        prepare(&qemu, "x86_64", &vars).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), b"written by the guest");
    }

    #[test]
    fn no_firmware_names_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = dir.path().join("bin/qemu-system-aarch64");
        let e = prepare(&qemu, "aarch64", &dir.path().join("v"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("UEFI firmware") && e.contains("AAVMF_CODE.fd"),
            "{e}"
        );
    }
}
