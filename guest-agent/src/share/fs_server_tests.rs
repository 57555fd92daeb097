//! [`serve`](super::serve) against the real host server (`lima-fs-server`)
//! over a socket pair, on a real FUSE mount of this machine: the two halves
//! of the protocol as they ship, without a VM. Ignored by default (root and
//! `/dev/fuse`): `cargo test -p lima-guest-agent share -- --ignored`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::fs::{FsToHost, ShareSetup, ShareStatus, ShmRegion, MAX_IO};
use lima_proto::{read_frame_async, write_frame_async};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::tests::{
    blocking, eventually, exercise, kind_of, lock_whole, since, unique_dir, until_listed, wait_for,
    GID, UID,
};

/// Requests the guest sent, by kind (`Lookup`, `Getattr`, ...).
type Kinds = Arc<Mutex<HashMap<String, u64>>>;

struct Mounted {
    root: PathBuf,
    mount: PathBuf,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    cable: tokio::task::JoinHandle<()>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    kinds: Kinds,
}

impl Mounted {
    fn kinds(&self) -> HashMap<String, u64> {
        self.kinds.lock().unwrap().clone()
    }
}

/// Relays both ways between the guest's end and the server's, counting
/// the guest's requests on the way.
async fn counting_cable<G, S>(guest: G, server: S, kinds: Kinds)
where
    G: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_guest, mut to_guest) = tokio::io::split(guest);
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let up = async {
        while let Ok(Some(frame)) = read_frame_async::<_, FsToHost>(&mut from_guest).await {
            let FsToHost::Request { req, .. } = &frame;
            *kinds.lock().unwrap().entry(kind_of(req)).or_default() += 1;
            if write_frame_async(&mut to_server, &frame).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_guest).await;
        let _ = to_guest.shutdown().await;
    };
    tokio::join!(up, down);
}

async fn mount_fs_server(writable: bool) -> Mounted {
    mount_fs_server_with(writable, None).await
}

/// With `shm`, both halves map that region of the test "device" file.
async fn mount_fs_server_with(writable: bool, shm: Option<ShmRegion>) -> Mounted {
    let root = unique_dir("root");
    let mount = unique_dir("mnt").join("m");
    let (guest, mut host_end) = tokio::net::UnixStream::pair().unwrap();
    let agent = tokio::spawn(super::serve(guest));
    let setup = ShareSetup {
        tag: "fs-server".into(),
        mount_point: mount.to_str().unwrap().into(),
        writable,
        uid: UID,
        gid: GID,
        shm,
        port: None,
        layer: None,
    };
    write_frame_async(&mut host_end, &setup).await.unwrap();
    let status: ShareStatus = read_frame_async(&mut host_end).await.unwrap().unwrap();
    assert_eq!(status, ShareStatus::Ready);
    let server = lima_fs_server::Server::new(&root, writable).unwrap();
    if let Some(r) = shm {
        let mapped = lima_fs_server::Shm::map(&super::shm::test_device(), r.offset, r.len);
        server.attach_shm(mapped.unwrap());
    }
    // The server runs tasks of its own that hold the stream; a cable in
    // between lets the test cut the connection like a dying host would, and
    // count what the guest asks.
    let (server_end, server_side) = tokio::io::duplex(4 << 20);
    let server = tokio::spawn(server.serve(server_side));
    let kinds = Kinds::default();
    let cable = tokio::spawn(counting_cable(host_end, server_end, kinds.clone()));
    Mounted {
        root,
        mount,
        server,
        cable,
        agent,
        kinds,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn with_the_real_fs_server() {
    let m = mount_fs_server(true).await;
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    blocking({
        let (root, mnt) = (root.clone(), mnt.clone());
        move || exercise(&root, &mnt)
    })
    .await;

    // Host edits reach the guest through fs-server's inotify invalidations,
    // even for a file whose pages the guest holds.
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from the host\n"
    );
    std::fs::write(root.join("hello.txt"), "HELLO FROM THE HOST\n").unwrap();
    wait_for(&mnt.join("hello.txt"), "HELLO FROM THE HOST\n").await;
    // A name looked up in vain, then created on the host.
    let late = mnt.join("late.txt");
    assert!(
        !blocking({
            let late = late.clone();
            move || late.exists()
        })
        .await
    );
    std::fs::write(root.join("late.txt"), "late").unwrap();
    wait_for(&late, "late").await;
    // Removed and renamed on the host.
    std::fs::remove_file(root.join("late.txt")).unwrap();
    eventually("host unlink seen", {
        let late = late.clone();
        move || !late.exists()
    })
    .await;
    std::fs::rename(root.join("sub"), root.join("sub2")).unwrap();
    eventually("host rename seen", {
        let mnt = mnt.clone();
        move || !mnt.join("sub").exists() && mnt.join("sub2/a").exists()
    })
    .await;
    // A listing the guest cached changes on the host.
    let count = |p: &Path| std::fs::read_dir(p).unwrap().count();
    let before = count(&mnt.join("many"));
    std::fs::write(root.join("many/one-more"), "").unwrap();
    eventually("host create listed", {
        let mnt = mnt.clone();
        move || count(&mnt.join("many")) == before + 1
    })
    .await;

    // POSIX locks go to the host.
    blocking({
        let mnt = mnt.clone();
        move || {
            let f = std::fs::File::options()
                .read(true)
                .write(true)
                .open(mnt.join("hello.txt"))
                .unwrap();
            assert!(
                lock_whole(&f, libc::F_SETLK, libc::F_WRLCK),
                "{}",
                std::io::Error::last_os_error()
            );
        }
    })
    .await;

    // A read lock taken through a read-only handle is held on the host
    // until the handle is closed; the host lets go once the release arrives.
    let host_wrlock = {
        let root = root.clone();
        move || {
            let f = std::fs::File::options()
                .read(true)
                .write(true)
                .open(root.join("hello.txt"))
                .unwrap();
            lock_whole(&f, libc::F_OFD_SETLK, libc::F_WRLCK)
        }
    };
    blocking({
        let (mnt, host_wrlock) = (mnt.clone(), host_wrlock.clone());
        move || {
            let f = std::fs::File::open(mnt.join("hello.txt")).unwrap();
            assert!(
                lock_whole(&f, libc::F_SETLK, libc::F_RDLCK),
                "{}",
                std::io::Error::last_os_error()
            );
            assert!(!host_wrlock(), "the guest's read lock is held on the host");
        }
    })
    .await;
    eventually("the closed handle's lock released on the host", host_wrlock).await;

    // The host goes away: the agent detaches the mount and returns.
    let mnt = m.mount.clone();
    m.cable.abort();
    tokio::time::timeout(Duration::from_secs(10), m.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!blocking(move || super::tests::is_mounted(&mnt)).await);
    m.server.abort();
    let _ = std::fs::remove_dir_all(&m.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE and measures: needs root and /dev/fuse (shared folders issue)"]
async fn fs_server_throughput() {
    let m = mount_fs_server(true).await;
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    blocking(move || super::tests::measure(&root, &mnt, || None)).await;
    m.cable.abort();
    m.server.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), m.agent).await;
    let _ = std::fs::remove_dir_all(&m.root);
}

/// A directory the guest has listed, changed on the host: the host's
/// invalidations reach the listing as well as the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn host_changes_reach_a_listed_directory() {
    let m = mount_fs_server(true).await;
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    std::fs::create_dir(root.join("d")).unwrap();
    for i in 0..50 {
        std::fs::write(root.join(format!("d/f{i}")), "x").unwrap();
    }
    blocking({
        let mnt = mnt.clone();
        move || {
            // Enough misses to list `d`; f40.. are never looked up.
            for i in 0..20 {
                assert!(mnt.join(format!("d/f{i}")).exists());
            }
            assert!(!mnt.join("d/new").exists());
        }
    })
    .await;
    // Let the listing land before the host changes anything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(root.join("d/new"), "new").unwrap();
    std::fs::write(root.join("d/brand-new"), "b").unwrap();
    std::fs::remove_file(root.join("d/f45")).unwrap();
    std::fs::write(root.join("d/f46"), "longer now").unwrap();
    // A name looked up in vain, one never looked up, one deleted and one
    // changed, the last three known to the guest only from its listing.
    wait_for(&mnt.join("d/new"), "new").await;
    wait_for(&mnt.join("d/brand-new"), "b").await;
    eventually("host unlink seen", {
        let mnt = mnt.clone();
        move || !mnt.join("d/f45").exists()
    })
    .await;
    eventually("host write seen in stat", {
        let mnt = mnt.clone();
        move || std::fs::metadata(mnt.join("d/f46")).unwrap().len() == 10
    })
    .await;
    m.cable.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), m.agent).await;
    m.server.abort();
    let _ = std::fs::remove_dir_all(&m.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn bulk_data_goes_through_shared_memory() {
    // The second half of the test device (no other test uses it).
    let region = ShmRegion {
        offset: 32 << 20,
        len: 32 << 20,
    };
    let m = mount_fs_server_with(true, Some(region)).await;
    let slot = MAX_IO as usize;
    // Three 1 MiB chunks, each one byte value: a slot's first page shows
    // which chunk went through it.
    let chunks = move |base: u8| -> Vec<u8> {
        (0..3u8)
            .flat_map(move |i| std::iter::repeat_n(base + i, slot))
            .collect()
    };
    let region_bytes = move || {
        let all = std::fs::read(super::shm::test_device()).unwrap();
        all[region.offset as usize..(region.offset + region.len) as usize].to_vec()
    };
    let slot_starts = move |mem: &[u8], values: &[u8]| {
        mem.chunks(slot)
            .any(|s| values.contains(&s[0]) && s[..4096].iter().all(|b| *b == s[0]))
    };
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    blocking(move || {
        // Guest writes: on the host as written, and through the region.
        let data = chunks(1);
        std::fs::write(mnt.join("out"), &data).unwrap();
        assert_eq!(std::fs::read(root.join("out")).unwrap(), data);
        assert!(
            slot_starts(&region_bytes(), &[1, 2, 3]),
            "no write went through shared memory"
        );
        // Host writes, guest reads (nothing cached): the same.
        let data = chunks(0x11);
        std::fs::write(root.join("in"), &data).unwrap();
        assert_eq!(std::fs::read(mnt.join("in")).unwrap(), data);
        assert!(
            slot_starts(&region_bytes(), &[0x11, 0x12, 0x13]),
            "no read went through shared memory"
        );
    })
    .await;
    m.server.abort();
    m.cable.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), m.agent).await;
}

/// `echo x > f$i` in a loop: each create costs the create, the write and a
/// release nobody waits for. The kernel drops the directory's attributes
/// after each create and needs them for the next one's permission check;
/// they came with the create's reply. And the server does not report the
/// guest's own creates back (which dropped the new dentries and those
/// attributes again), while a host edit in the same directory still shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "mounts FUSE: needs root and /dev/fuse (shared folders issue)"]
async fn small_creates_cost_no_getattr_or_lookup() {
    let m = mount_fs_server(true).await;
    let (root, mnt) = (m.root.clone(), m.mount.clone());
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/old"), "old").unwrap();
    blocking({
        let mnt = mnt.clone();
        move || {
            assert_eq!(std::fs::read_to_string(mnt.join("d/old")).unwrap(), "old");
            // Absent, as far as the guest knows (kernel and listing).
            assert!(!mnt.join("d/from-host").exists());
            assert!(!mnt.join("d/from-host").exists());
        }
    })
    .await;
    until_listed(mnt.join("d"), {
        let kinds = m.kinds.clone();
        move || kinds.lock().unwrap().get("Lookup").copied().unwrap_or(0)
    })
    .await;

    let k0 = m.kinds();
    let creates = blocking({
        let mnt = mnt.clone();
        move || {
            for i in 0..50 {
                std::fs::write(mnt.join(format!("d/f{i}")), "x").unwrap();
            }
        }
    });
    // A host process adds a file there meanwhile.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(root.join("d/from-host"), "host").unwrap();
    creates.await;
    let asked = since(&k0, &m.kinds());
    println!("50 creates against fs-server: {asked:?}");
    assert_eq!(asked.get("Create"), Some(&50), "{asked:?}");
    // Before: a Getattr of the directory per create. A few may remain (the
    // host's create drops the directory's attributes; so may a listing
    // fetch overlapping the first creates).
    assert!(asked.get("Getattr").copied().unwrap_or(0) <= 3, "{asked:?}");
    assert!(asked.get("Lookup").copied().unwrap_or(0) <= 3, "{asked:?}");
    for i in 0..50 {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("d/f{i}"))).unwrap(),
            "x"
        );
    }
    // The host's file shows, and the directory lists it with ours.
    wait_for(&mnt.join("d/from-host"), "host").await;
    let names = blocking({
        let mnt = mnt.clone();
        move || std::fs::read_dir(mnt.join("d")).unwrap().count()
    })
    .await;
    assert_eq!(names, 52);
    // The directory's attributes are the host's.
    let (guest, host) = blocking({
        let (mnt, root) = (mnt.clone(), root.clone());
        move || {
            let g = std::fs::metadata(mnt.join("d")).unwrap();
            let h = std::fs::metadata(root.join("d")).unwrap();
            (g.modified().unwrap(), h.modified().unwrap())
        }
    })
    .await;
    assert_eq!(guest, host);

    m.cable.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), m.agent).await;
    m.server.abort();
    let _ = std::fs::remove_dir_all(&m.root);
}
