//! virtio-serial ports: the host agent can give a share a port of its own
//! (`ShareSetup::port`), which under TCG costs far less per round trip than
//! a vsock stream (no vsock workqueue hops in the guest, no
//! `vhost-device-vsock` relay on the host; see docs/decisions.md).
//!
//! The kernel lists ports in `/sys/class/virtio-ports/vportNpM/` with the
//! `name` the host gave and the `dev` numbers of `/dev/vportNpM`; the node
//! is made if `/dev` is not a devtmpfs. The port is opened `O_NONBLOCK`
//! (see `client::Sink`), and only once the host end is connected is it
//! handed on: until then its reads return end-of-file.
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SYSFS: &str = "/sys/class/virtio-ports";
/// How long the port may take to appear, and its host end to connect.
const WAIT: Duration = Duration::from_secs(5);

/// Opens the port named `name`, connected to the host.
pub(super) fn open(name: &str) -> io::Result<File> {
    open_in(Path::new(SYSFS), Path::new("/dev"), name, WAIT)
}

fn open_in(sysfs: &Path, dev: &Path, name: &str, wait: Duration) -> io::Result<File> {
    let deadline = Instant::now() + wait;
    let (node, rdev) = loop {
        if let Some(found) = find(sysfs, name)? {
            break found;
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name} in {}", sysfs.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let path = dev.join(&node);
    make_node(&path, rdev)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    while hung_up(&f)? {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the host never connected virtio-serial port {name}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(f)
}

/// The device node name (`vport1p1`) and number of the port named `name`.
fn find(sysfs: &Path, name: &str) -> io::Result<Option<(PathBuf, libc::dev_t)>> {
    let dir = match std::fs::read_dir(sysfs) {
        Ok(d) => d,
        // No virtio_console (yet): no ports.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for port in dir {
        let port = port?;
        let named = std::fs::read_to_string(port.path().join("name")).unwrap_or_default();
        if named.trim_end() != name {
            continue;
        }
        let dev = std::fs::read_to_string(port.path().join("dev"))?;
        let rdev = parse_dev(&dev).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: dev is {dev:?}", port.path().display()),
            )
        })?;
        return Ok(Some((PathBuf::from(port.file_name()), rdev)));
    }
    Ok(None)
}

/// `MAJOR:MINOR` as sysfs writes it.
fn parse_dev(s: &str) -> Option<libc::dev_t> {
    let (major, minor) = s.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Makes the character device `path` unless it already is that device.
fn make_node(path: &Path, rdev: libc::dev_t) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_char_device() && m.rdev() == rdev {
            return Ok(());
        }
        std::fs::remove_file(path)?;
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("making {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Whether the port's host end is closed (`POLLHUP`).
fn hung_up(f: &File) -> io::Result<bool> {
    Ok(super::client::poll(f, libc::POLLOUT, 0)? & libc::POLLHUP != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_found_by_its_name_and_missing_ones_are_named_in_the_error() {
        let root = std::env::temp_dir().join(format!("ports-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap();
        let ports = [
            ("vport1p1", "lima.fs.0\n", "246:1\n"),
            ("vport1p2", "other\n", "246:2\n"),
        ];
        for (node, name, dev) in ports {
            let d = root.join(node);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("name"), name).unwrap();
            std::fs::write(d.join("dev"), dev).unwrap();
        }
        let (node, rdev) = find(root.as_path(), "lima.fs.0").unwrap().unwrap();
        assert_eq!(node, PathBuf::from("vport1p1"));
        assert_eq!(rdev, libc::makedev(246, 1));
        assert_eq!(find(root.as_path(), "lima.fs.1").unwrap(), None);
        assert_eq!(find(&root.as_path().join("none"), "x").unwrap(), None);
        let e = open_in(root.as_path(), root.as_path(), "lima.fs.1", Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("lima.fs.1"), "{e}");
        assert_eq!(parse_dev("10:200"), Some(libc::makedev(10, 200)));
        assert_eq!(parse_dev("10"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
