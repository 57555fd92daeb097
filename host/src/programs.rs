//! Finding the helper programs we run (QEMU, virtiofsd, vhost-device-vsock,
//! our own lima-fs-server).

use std::path::PathBuf;

/// Looks a program up on PATH and in `~/.cargo/bin` (where `cargo xtask setup`
/// installs our helpers).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Names the `lima-fs-server` binary to run for shares (tests, development).
pub const FS_SERVER_ENV: &str = "LIMA_FS_SERVER";

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("the share file server {0} does not exist (it is installed beside limactl; {FS_SERVER_ENV} names another)")]
    NoFsServer(PathBuf),
    #[error("cannot find our own executable")]
    NoSelf(#[source] std::io::Error),
}

/// The share file server: `$LIMA_FS_SERVER`, else `lima-fs-server` beside
/// our own executable (where `cargo build` and an install put it, as with
/// `limactl`, `lima` and `lima-run`).
pub fn fs_server() -> Result<PathBuf, ProgramError> {
    let path = match std::env::var_os(FS_SERVER_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(ProgramError::NoSelf)?
            .with_file_name("lima-fs-server"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProgramError::NoFsServer(path))
    }
}

/// Names the static guest agent that distro instances get in their seed.
pub const GUEST_AGENT_ENV: &str = "LIMA_GUEST_AGENT";

#[derive(Debug, thiserror::Error)]
#[error("no static guest agent for {arch} guests at {}; `cargo xtask build` makes it ({GUEST_AGENT_ENV} names another)", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
pub struct NoGuestAgent {
    pub arch: String,
    pub tried: Vec<PathBuf>,
}

/// The static (musl) guest agent for `arch` (`x86_64`, `aarch64`) guests,
/// which the cloud-init seed carries: `$LIMA_GUEST_AGENT`, else where
/// `cargo xtask build` leaves it when we run from `target/{debug,release}`
/// (`target/ARCH-unknown-linux-musl/release/`), else
/// `lima-guest-agent.ARCH` beside our executable (an install).
pub fn guest_agent(arch: &str) -> Result<PathBuf, NoGuestAgent> {
    let exe = std::env::current_exe().unwrap_or_default();
    find_guest_agent(std::env::var_os(GUEST_AGENT_ENV), &exe, arch)
}

fn find_guest_agent(
    env: Option<std::ffi::OsString>,
    exe: &std::path::Path,
    arch: &str,
) -> Result<PathBuf, NoGuestAgent> {
    let tried = match env.filter(|v| !v.is_empty()) {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let dir = exe.parent().unwrap_or(std::path::Path::new("."));
            let musl = format!("{arch}-unknown-linux-musl");
            vec![
                dir.join("..").join(musl).join("release/lima-guest-agent"),
                dir.join(format!("lima-guest-agent.{arch}")),
            ]
        }
    };
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(NoGuestAgent {
            arch: arch.to_string(),
            tried,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_agent_is_found_where_xtask_or_an_install_puts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let exe = target.join("debug/limactl");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();

        let e = find_guest_agent(None, &exe, "x86_64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x86_64 guests") && e.contains("cargo xtask build"),
            "{e}"
        );
        assert!(
            e.contains("x86_64-unknown-linux-musl/release/lima-guest-agent"),
            "{e}"
        );
        assert!(e.contains("debug/lima-guest-agent.x86_64"), "{e}");

        let installed = target.join("debug/lima-guest-agent.x86_64");
        std::fs::write(&installed, "agent").unwrap();
        assert_eq!(find_guest_agent(None, &exe, "x86_64").unwrap(), installed);
        // xtask's output wins over an install beside us.
        let built = target.join("x86_64-unknown-linux-musl/release/lima-guest-agent");
        std::fs::create_dir_all(built.parent().unwrap()).unwrap();
        std::fs::write(&built, "agent").unwrap();
        let found = find_guest_agent(None, &exe, "x86_64").unwrap();
        assert_eq!(found.canonicalize().unwrap(), built.canonicalize().unwrap());
        // Another arch is not mistaken for it.
        assert!(find_guest_agent(None, &exe, "aarch64").is_err());

        // The variable, when set, is the only place looked at.
        let e = find_guest_agent(Some(tmp.path().join("nope").into()), &exe, "x86_64")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && !e.contains("musl"), "{e}");
        assert_eq!(
            find_guest_agent(Some(installed.clone().into()), &exe, "x86_64").unwrap(),
            installed
        );
        // An empty one is as good as unset.
        assert!(find_guest_agent(Some("".into()), &exe, "x86_64").is_ok());
    }
}
