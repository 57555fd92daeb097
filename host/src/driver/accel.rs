//! Choosing QEMU's accelerator by a real probe.
//!
//! A `/dev/kvm` that opens does not mean KVM runs guests: on some nested
//! setups the firmware runs but the kernel never prints. So we boot our own
//! kernel under KVM with a short deadline for its first console line, and
//! cache the verdict per host boot (`boot_id`). `LIMA_QEMU_ACCEL=kvm|hvf|tcg`
//! overrides everything.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const OVERRIDE_ENV: &str = "LIMA_QEMU_ACCEL";
const PROBE_DEADLINE: Duration = Duration::from_secs(6);

#[derive(Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    qemu: PathBuf,
    accel: String,
}

/// Returns the accelerator to use and how it was decided. The probe boots
/// `kernel`; a VM without one (a disk image) probes with our default
/// image's kernel, and trusts the device only when there is none.
pub fn choose(qemu: &Path, kernel: Option<&Path>) -> Result<(String, String), String> {
    if let Ok(v) = std::env::var(OVERRIDE_ENV) {
        return match v.as_str() {
            "kvm" | "hvf" | "tcg" => Ok((v.clone(), format!("{OVERRIDE_ENV}={v}"))),
            other => Err(format!(
                "{OVERRIDE_ENV}={other} is not an accelerator; use kvm, hvf or tcg"
            )),
        };
    }
    let native = crate::sys::NATIVE_ACCEL;
    if !crate::sys::native_accel_device_usable() {
        return Ok(("tcg".into(), format!("{native} unavailable")));
    }
    let boot_id = crate::sys::boot_id().unwrap_or_default();
    let cache = crate::download::cache_dir().join("accel-probe.json");
    if let Some(c) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
    {
        if c.boot_id == boot_id && c.qemu == qemu {
            return Ok((c.accel, "cached probe".into()));
        }
    }
    let fallback;
    let kernel = match kernel {
        Some(k) => k,
        None => match crate::image::open_builtin("default") {
            Ok(image) => {
                fallback = image.kernel;
                &fallback
            }
            Err(_) => {
                return Ok((
                    native.to_string(),
                    format!("{native} not probed: no kernel to probe with"),
                ))
            }
        },
    };
    let works = probe(qemu, kernel, native);
    let accel = if works {
        native.to_string()
    } else {
        "tcg".to_string()
    };
    let _ = crate::privacy::create_private_dir(&crate::download::cache_dir());
    let _ = std::fs::write(
        &cache,
        serde_json::to_vec(&Cached {
            boot_id,
            qemu: qemu.to_path_buf(),
            accel: accel.clone(),
        })
        .unwrap_or_default(),
    );
    let why = if works {
        format!("{native} probe booted")
    } else {
        format!("{native} probe failed")
    };
    Ok((accel, why))
}

/// Boots `kernel` under `accel` and waits for the kernel's first line.
/// The CPU is the one the real VM gets (`-cpu host`): on a broken nested
/// KVM here, QEMU's default CPU model let our own kernel print its banner
/// and then crash, while `-cpu host` made QEMU abort at once (an MSR it
/// cannot set); only the latter says what the real launch will do.
fn probe(qemu: &Path, kernel: &Path, accel: &str) -> bool {
    let child = Command::new(qemu)
        .args([
            "-accel",
            accel,
            "-cpu",
            "host",
            "-M",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(13).any(|w| w == b"Linux version") {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let start = Instant::now();
    let ok = rx
        .recv_timeout(PROBE_DEADLINE.saturating_sub(start.elapsed()))
        .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    ok
}
