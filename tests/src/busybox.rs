//! Debian's static busybox for an architecture, offline after the first
//! time: `apt-get download busybox-static[:ARCH]` into the build tree's
//! download folder (kept there), unpacked, its `bin/busybox` copied where a
//! test wants it. For arm64, dpkg must know the architecture (`cargo xtask
//! setup` adds it).
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's architecture name (`amd64`, `arm64`) → the ELF machine number
/// its busybox must carry.
fn elf_machine(arch: &str) -> u16 {
    match arch {
        "amd64" => 62,
        "arm64" => 183,
        other => panic!("no ELF machine known for Debian arch {other}"),
    }
}

/// Copies Debian's `busybox-static` of `arch` into `dest/busybox` and
/// returns that path. `bin_dir` is the fixture's binaries folder (the
/// download folder sits beside it, under `target/images/download/ARCH`).
pub fn busybox(bin_dir: &Path, arch: &str, dest: &Path) -> PathBuf {
    let dir = bin_dir.join("../images/download").join(arch);
    std::fs::create_dir_all(&dir).unwrap();
    let suffix = format!("_{arch}.deb");
    let find = || {
        std::fs::read_dir(&dir).unwrap().flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with("busybox-static_") && n.ends_with(&suffix)).then(|| e.path())
        })
    };
    let deb = find().unwrap_or_else(|| {
        let out = Command::new("apt-get")
            .args(["download", &format!("busybox-static:{arch}")])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apt-get download busybox-static:{arch} failed (does dpkg know {arch}? \
             `cargo xtask setup` adds arm64): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        find().unwrap_or_else(|| panic!("apt-get download left no busybox-static_*{suffix}"))
    });
    let tree = tempfile::tempdir().unwrap();
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(tree.path())
        .status()
        .unwrap();
    assert!(st.success(), "dpkg-deb -x {}", deb.display());
    std::fs::create_dir_all(dest).unwrap();
    let bin = dest.join("busybox");
    std::fs::copy(tree.path().join("bin/busybox"), &bin).unwrap();
    let elf = std::fs::read(&bin).unwrap();
    assert!(elf.starts_with(b"\x7fELF\x02\x01"), "not a 64-bit ELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        elf_machine(arch),
        "busybox-static:{arch} is not for {arch}"
    );
    bin
}
