use std::path::Path;

use crate::modules::Loader;

/// Mounts `fstype` on `target`, creating the directory first.
pub fn mount(src: &str, target: &str, fstype: &str, data: &str) -> nix::Result<()> {
    let _ = std::fs::create_dir_all(target);
    nix::mount::mount(
        Some(src),
        target,
        Some(fstype),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NOEXEC,
        if data.is_empty() { None } else { Some(data) },
    )
    .or_else(|e| {
        // devtmpfs and friends reject MS_NOEXEC on some kernels; retry plain.
        nix::mount::mount(
            Some(src),
            target,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            Some(data),
        )
        .map_err(|_| e)
    })
}

/// Loads modules with `finit_module(2)`.
pub struct RealLoader;

impl Loader for RealLoader {
    fn load(&self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::File::open(path)?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs a helper program (busybox applet), logging a failure.
pub fn run_quiet(program: &str, args: &[&str]) -> std::io::Result<()> {
    let out = std::process::Command::new(program).args(args).output()?;
    if !out.status.success() {
        tracing::warn!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a helper program; an error names it and carries its stderr.
pub fn run_checked(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
