//! The Landlock ruleset: files beneath the share root only.
//!
//! Landlock checks an access against the path the kernel resolved, not
//! the name we passed, so it holds for every way the server reaches a file:
//! `openat2` beneath a node's fd, the `/proc/self/fd/N` reopen (the magic
//! link lands on the file itself, inside the share), `linkat` through it.
//! Metadata calls (`fstatat`, `utimensat`, `fchmod` on an open fd) are not
//! file accesses to Landlock; the seccomp filter and our own checks cover
//! them.
//!
//! Rights handled (denied unless a rule grants them), as of the ABI
//! [`TESTED`]: every file right, TCP bind/connect, and the signal and
//! abstract-socket scopes; older kernels enforce what they know (see
//! [`Landlock`](super::Landlock) for what that means). The one rule grants,
//! beneath the root: reading files and listing directories; for a writable
//! share also writing, truncating, removing, and making directories,
//! regular files and symlinks, and renaming or linking within the share
//! (`Refer`), plus renaming fifos and sockets that are already there
//! (making new ones needs `mknodat`/`bind`, which seccomp refuses). Never
//! executing, device nodes, device ioctls or connecting to Unix sockets.
use std::os::fd::BorrowedFd;

use ::landlock::{
    Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use super::{ConfineError, Landlock};

/// The Landlock ABI this ruleset was written and tested against (Linux
/// 6.15+); raise it after testing on a newer kernel.
const TESTED: ABI = ABI::V7;

fn granted(writable: bool) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    if !writable {
        return read;
    }
    read | AccessFs::WriteFile
        | AccessFs::Truncate
        | AccessFs::RemoveDir
        | AccessFs::RemoveFile
        | AccessFs::MakeDir
        | AccessFs::MakeReg
        | AccessFs::MakeSym
        | AccessFs::MakeFifo
        | AccessFs::MakeSock
        | AccessFs::Refer
}

/// Restricts this thread (and the threads it starts) to `root`.
pub(super) fn restrict(root: BorrowedFd<'_>, writable: bool) -> Result<Landlock, ConfineError> {
    let err = |e: ::landlock::RulesetError| ConfineError::Landlock(Box::new(e));
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(TESTED))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TESTED))
        .map_err(err)?
        .scope(Scope::from_all(TESTED))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rule(PathBeneath::new(root, granted(writable)))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    Ok(match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => {
            let abi = effective_abi as u32;
            // ABI 3 brought Truncate; with 2, Refer: below that a share is
            // confined, but not in every way.
            if effective_abi >= ABI::V3 {
                Landlock::Full { abi }
            } else {
                Landlock::Partial { abi }
            }
        }
        _ => Landlock::Unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_shares_get_no_write_right() {
        let ro = granted(false);
        assert!(ro.contains(AccessFs::ReadFile | AccessFs::ReadDir));
        assert_eq!(ro & AccessFs::from_write(TESTED), BitFlags::EMPTY);
        let rw = granted(true);
        for never in [
            AccessFs::Execute,
            AccessFs::MakeChar,
            AccessFs::MakeBlock,
            AccessFs::IoctlDev,
            AccessFs::ResolveUnix,
        ] {
            assert!(!rw.contains(never), "{never:?}");
        }
        // Everything granted is handled, so nothing else is.
        assert_eq!(rw & !AccessFs::from_all(TESTED), BitFlags::EMPTY);
    }
}
