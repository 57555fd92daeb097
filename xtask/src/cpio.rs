//! A writer for the cpio "newc" format, the one the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! We write it ourselves rather than calling `cpio` so the image is
//! reproducible: every entry is owned by root, has mtime 0 and comes in
//! sorted order, whatever the umask, clock and file order of the machine
//! that built it. The format is small:
//!
//! ```text
//! entry   = header(110 bytes) name NUL pad4 data pad4
//! header  = "070701" + 13 fields of 8 uppercase hex digits:
//!           ino mode uid gid nlink mtime filesize
//!           devmajor devminor rdevmajor rdevminor namesize check
//! archive = entry* trailer   (trailer: an empty entry named "TRAILER!!!")
//! ```
//!
//! Symlink targets are stored as the entry's data. The kernel creates each
//! entry in archive order, so a parent directory must come before its
//! children: sorting the paths gives that, and [`Archive::write`] checks that
//! every parent is in the archive. Regular files get `nlink` 1 so the kernel
//! never tries to hard-link them to each other.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

/// One archive member; the path is the key of [`Archive::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// File type and permission bits, as in `st_mode`.
    mode: u32,
    /// File contents, or the target of a symlink.
    data: Vec<u8>,
    /// Device number of a device node.
    rdev: (u32, u32),
}

/// The members of an archive, kept sorted by path.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (`perm` are the permission bits, e.g. `0o1777`).
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.insert(path, S_IFDIR | (perm & 0o7777), Vec::new(), (0, 0));
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.insert(path, S_IFREG | (perm & 0o7777), data, (0, 0));
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, S_IFLNK | 0o777, target.as_bytes().to_vec(), (0, 0));
    }

    /// Adds a character device node (which we could not create on disk
    /// without root, hence not through [`Archive::add_tree`]).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.insert(path, S_IFCHR | (perm & 0o7777), Vec::new(), (major, minor));
    }

    fn insert(&mut self, path: &str, mode: u32, data: Vec<u8>, rdev: (u32, u32)) {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        self.entries
            .insert(path.to_string(), Entry { mode, data, rdev });
    }

    /// Adds everything below `root` (not `root` itself) with the permission
    /// bits it has on disk; owner and times are not taken over.
    pub fn add_tree(&mut self, root: &Path) -> io::Result<()> {
        self.add_tree_at(root, "")
    }

    fn add_tree_at(&mut self, dir: &Path, prefix: &str) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                invalid(format!(
                    "{}: file name is not UTF-8",
                    entry.path().display()
                ))
            })?;
            let path = format!("{prefix}{name}");
            let meta = entry.path().symlink_metadata()?;
            let perm = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            let kind = meta.file_type();
            if kind.is_dir() {
                self.dir(&path, perm);
                self.add_tree_at(&entry.path(), &format!("{path}/"))?;
            } else if kind.is_file() {
                self.file(&path, perm, std::fs::read(entry.path())?);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                let target = target.to_str().ok_or_else(|| {
                    invalid(format!(
                        "{}: link target is not UTF-8",
                        entry.path().display()
                    ))
                })?;
                self.symlink(&path, target);
            } else {
                return Err(invalid(format!(
                    "{}: only files, directories and symlinks can be added from disk",
                    entry.path().display()
                )));
            }
        }
        Ok(())
    }

    /// Writes the archive and returns the number of bytes written.
    pub fn write<W: Write>(&self, out: W) -> io::Result<u64> {
        let mut out = Counting {
            inner: out,
            written: 0,
        };
        for path in self.entries.keys() {
            if let Some((parent, _)) = path.rsplit_once('/') {
                if self
                    .entries
                    .get(parent)
                    .is_none_or(|p| p.mode & S_IFMT != S_IFDIR)
                {
                    return Err(invalid(format!(
                        "{path}: parent directory {parent} is not in the archive"
                    )));
                }
            }
        }
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let nlink = if entry.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
            let header = Header {
                ino,
                mode: entry.mode,
                nlink,
                size: entry.data.len(),
                rdev: entry.rdev,
            };
            write_entry(&mut out, &header, path, &entry.data)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        };
        write_entry(&mut out, &trailer, TRAILER, &[])?;
        out.inner.flush()?;
        Ok(out.written)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
}

fn write_entry(
    out: &mut Counting<impl Write>,
    h: &Header,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(h.size).map_err(|_| invalid(format!("{name}: larger than 4 GiB")))?;
    let namesize = name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        0,
        size,
        0,
        0,
        h.rdev.0,
        h.rdev.1,
        namesize as u32,
        0,
    ];
    let mut header = String::with_capacity(HEADER_LEN);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.pad4()?;
    out.write_all(data)?;
    out.pad4()
}

/// A writer that knows how far it is, for the 4-byte alignment.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Counting<W> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.write_all(&[0; 3][..pad as usize])
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal newc reader, to check the writer against.
    fn parse(mut buf: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let total = buf.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&buf[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, nlink, mtime, size, namesize) =
                (field(1), field(4), field(5), field(6), field(11));
            assert_eq!((field(2), field(3), mtime), (0, 0, 0), "uid, gid, mtime");
            let name_end = HEADER_LEN + namesize as usize;
            let name = std::str::from_utf8(&buf[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[name_end - 1], 0, "name is NUL-terminated");
            let data_start = name_end.next_multiple_of(4);
            let data = buf[data_start..data_start + size as usize].to_vec();
            buf = &buf[(data_start + size as usize).next_multiple_of(4)..];
            if name == TRAILER {
                assert!(buf.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, nlink, data));
        }
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.dir("/bin", 0o755);
        a.file("bin/busybox", 0o755, b"#!hello".to_vec());
        a.symlink("bin/sh", "busybox");
        a.dir("tmp", 0o1777);
        a.dir("dev", 0o755);
        a.char_device("dev/console", 0o600, 5, 1);
        a.file("init", 0o755, vec![7; 5]);
        a
    }

    #[test]
    fn header_is_byte_exact() {
        let mut a = Archive::new();
        a.file("ab", 0o644, b"xyz".to_vec());
        let mut buf = Vec::new();
        a.write(&mut buf).unwrap();
        let expected = concat!(
            "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000",
            "00000003", "00000000", "00000000", "00000000", "00000000", "00000003", "00000000",
        );
        assert_eq!(&buf[..HEADER_LEN], expected.as_bytes());
        // 110 + "ab\0" = 113 → padded to 116; 3 data bytes → padded to 120.
        assert_eq!(&buf[HEADER_LEN..116], b"ab\0\0\0\0");
        assert_eq!(&buf[116..120], b"xyz\0");
        assert_eq!(&buf[120..126], b"070701");
        assert_eq!(buf.len() % 4, 0);
    }

    #[test]
    fn entries_come_back_sorted_with_modes_and_data() {
        let mut buf = Vec::new();
        let written = sample().write(&mut buf).unwrap();
        assert_eq!(written, buf.len() as u64);
        let entries = parse(&buf);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "tmp"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("bin").1, 0o040_755);
        assert_eq!(get("bin").2, 2);
        assert_eq!(get("tmp").1, 0o041_777);
        assert_eq!(get("bin/busybox").1, 0o100_755);
        assert_eq!(get("bin/busybox").3, b"#!hello");
        assert_eq!(get("bin/sh").1, 0o120_777);
        assert_eq!(get("bin/sh").3, b"busybox");
        assert_eq!(get("dev/console").1, 0o020_600);
        assert_eq!(get("init").3, [7; 5]);
    }

    #[test]
    fn output_is_reproducible() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sample().write(&mut a).unwrap();
        sample().write(&mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn missing_parent_is_an_error_naming_it() {
        let mut a = Archive::new();
        a.file("usr/bin/agent", 0o755, Vec::new());
        a.dir("usr", 0o755);
        let err = a.write(Vec::new()).unwrap_err();
        assert!(err.to_string().contains("usr/bin"), "{err}");
    }

    #[test]
    fn add_tree_takes_files_dirs_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hostname"), "lima\n").unwrap();
        std::fs::set_permissions(
            dir.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("etc/hostname", dir.join("name")).unwrap();
        let mut a = Archive::new();
        a.add_tree(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut buf = Vec::new();
        a.write(&mut buf).unwrap();
        let entries = parse(&buf);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[1],
            ("etc/hostname".into(), 0o100_600, 1, b"lima\n".to_vec())
        );
        assert_eq!(
            entries[2],
            ("name".into(), 0o120_777, 1, b"etc/hostname".to_vec())
        );
    }

    /// Cross-check with GNU cpio when it is installed (Debian's `cpio`).
    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        use std::process::{Command, Stdio};
        let mut buf = Vec::new();
        sample().write(&mut buf).unwrap();
        let child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("cpio is not installed; skipping the cross-check");
            return;
        };
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 7, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("-rwxr-xr-x") && lines[1].contains(" 7 "),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("bin/sh -> busybox"),
            "{listing}"
        );
        assert!(
            lines[4].starts_with("crw-------") && lines[4].contains("5,"),
            "{listing}"
        );
        assert!(
            lines[6].starts_with("drwxrwxrwt") && lines[6].ends_with(" tmp"),
            "{listing}"
        );
    }
}
