//! Writes a starting corpus for the `server` target: short, valid request
//! sequences against the fuzz layout (see the target's docs), one file each.
//! Usage: `cargo run --bin make_seeds -- corpus/server`.
use lima_proto::encode_frame;
use lima_proto::fs::*;

fn n(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn main() {
    use FsRequest::*;
    let dir = std::env::args().nth(1).expect("corpus dir");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = |typ| Lock { start: 0, end: u64::MAX, typ, pid: 0 };
    let seqs: Vec<Vec<FsRequest>> = vec![
        // Through the escape links.
        vec![
            Lookup { parent: 1, name: n("esc") },
            Lookup { parent: 2, name: n("secret") },
            Opendir { id: 2 },
            Create { parent: 2, name: n("x"), mode: 0o644, umask: 0, flags: 2 },
            Open { id: 2, flags: 2 },
            Link { id: 2, new_parent: 1, new_name: n("l") },
            Lookup { parent: 1, name: n("abs") },
            Lookup { parent: 1, name: n("etc") },
            Readlink { id: 3 },
            Lookup { parent: 1, name: n("..") },
            Lookup { parent: 1, name: n("esc/secret") },
        ],
        // File life cycle.
        vec![
            Create { parent: 1, name: n("n"), mode: 0o644, umask: 0o022, flags: 2 },
            Write { fh: 1, offset: 0, data: n("hello") },
            Read { fh: 1, offset: 0, size: 100 },
            Setattr { id: 2, fh: Some(1), mode: Some(0o600), size: Some(2), atime: Some(SetTime::Now), mtime: None },
            Flush { fh: 1 },
            Fsync { fh: 1, datasync: true },
            Rename { parent: 1, name: n("n"), new_parent: 1, new_name: n("f"), flags: 0 },
            Link { id: 2, new_parent: 1, new_name: n("n2") },
            Unlink { parent: 1, name: n("n2") },
            Release { fh: 1 },
            Forget { id: 2, nlookup: 1 },
        ],
        // Directories.
        vec![
            Mkdir { parent: 1, name: n("m"), mode: 0o755, umask: 0 },
            Symlink { parent: 2, name: n("s"), target: n("../../outside/secret") },
            Lookup { parent: 1, name: n("d") },
            Opendir { id: 1 },
            Readdir { fh: 1, offset: 0, plus: true },
            Readdir { fh: 1, offset: 3, plus: false },
            Releasedir { fh: 1 },
            Rename { parent: 1, name: n("d"), new_parent: 2, new_name: n("d"), flags: 2 },
            Rmdir { parent: 1, name: n("m") },
            Statfs,
            Getattr { id: 3 },
        ],
        // Locks.
        vec![
            Lookup { parent: 1, name: n("f") },
            Open { id: 2, flags: 2 },
            Open { id: 2, flags: 0 },
            Setlk { fh: 1, owner: 1, lock: lock(1), wait: false },
            Getlk { fh: 2, owner: 2, lock: lock(0) },
            Setlk { fh: 2, owner: 2, lock: lock(0), wait: true },
            Flock { fh: 1, owner: 1, op: 2 },
            Flock { fh: 2, owner: 2, op: 1 },
            Release { fh: 1 },
        ],
    ];
    for (i, seq) in seqs.iter().enumerate() {
        let mut bytes = Vec::new();
        for (id, req) in seq.iter().enumerate() {
            bytes.extend(encode_frame(&FsToHost::Request { id: id as u64, req: req.clone() }).unwrap());
        }
        std::fs::write(format!("{dir}/seed{i}"), bytes).unwrap();
    }
}
