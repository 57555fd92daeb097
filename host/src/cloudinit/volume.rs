//! A FAT volume holding a few files in its root folder, sized to fit them,
//! written with the `fatfs` crate (no mkfs.vfat, no genisoimage).
//!
//! Sectors are 2048 bytes: Linux mounts a FAT volume only when its sectors
//! are at least as large as the device's blocks, and a CD-ROM's blocks are
//! 2048 bytes, so this one volume mounts both as a CD-ROM (how the device
//! plan attaches seeds) and as a disk. Clusters are 4 KiB; a seed of a few
//! MiB comes out FAT12, a larger one FAT16, both `TYPE="vfat"` to blkid.
//! File names are long names (VFAT), times FAT's epoch (1980-01-01), so the
//! same inputs give the same bytes.
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const SECTOR: u64 = 2048;
pub const CLUSTER: u64 = 4096;
/// Root folder entries of FAT12/16 (fatfs's default, fixed at format).
const ROOT_ENTRIES: u64 = 512;

/// Writes a volume labelled `label` holding `files` to `out` (mode 0600) by
/// rename; nothing is left beside `out` on failure.
pub fn write(out: &Path, label: &str, files: &[(&str, &[u8])]) -> io::Result<()> {
    let label = fat_label(label)?;
    let tmp = temp_path(out);
    let result = (|| {
        let mut size = estimate_size(files);
        // The estimate leaves room to spare; should it ever fall short,
        // try once more with twice the room.
        for attempt in 0..2 {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            match fill(&mut f, size, label, files) {
                Ok(()) => return f.sync_all(),
                Err(e) if attempt == 0 && is_full(&e) => size *= 2,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
    })();
    match result.and_then(|()| std::fs::rename(&tmp, out)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Bytes for `files`: their clusters, two FATs sized as if FAT16, the root
/// folder, the boot sector, and an eighth more; at least 1 MiB.
pub fn estimate_size(files: &[(&str, &[u8])]) -> u64 {
    let clusters: u64 = files
        .iter()
        .map(|(_, d)| (d.len() as u64).div_ceil(CLUSTER))
        .sum();
    let data = clusters * CLUSTER;
    let fats = 2 * (clusters + 16) * 2;
    let raw = data + fats + ROOT_ENTRIES * 32 + 4 * SECTOR;
    let with_slack = raw + raw / 8;
    with_slack.max(1 << 20).next_multiple_of(64 * 1024)
}

fn fill(
    f: &mut std::fs::File,
    size: u64,
    label: [u8; 11],
    files: &[(&str, &[u8])],
) -> io::Result<()> {
    f.set_len(size)?;
    f.seek(SeekFrom::Start(0))?;
    fatfs::format_volume(
        &mut *f,
        fatfs::FormatVolumeOptions::new()
            .bytes_per_sector(SECTOR as u16)
            .bytes_per_cluster(CLUSTER as u32)
            .total_sectors((size / SECTOR) as u32)
            .volume_label(label),
    )?;
    let fs = fatfs::FileSystem::new(&mut *f, fatfs::FsOptions::new().time_provider(&FAT_EPOCH))?;
    {
        let root = fs.root_dir();
        for (name, data) in files {
            let mut file = root.create_file(name)?;
            file.truncate()?;
            file.write_all(data)?;
            file.flush()?;
        }
    }
    fs.unmount()
}

/// Every file's times: 1980-01-01 00:00, the first FAT date. (fatfs's own
/// default without chrono writes day 0 of month 0, which is no date.)
#[derive(Debug)]
struct FatEpoch;

static FAT_EPOCH: FatEpoch = FatEpoch;

impl fatfs::TimeProvider for FatEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

/// fatfs says a full volume with `Other` and this text.
fn is_full(e: &io::Error) -> bool {
    e.to_string().contains("No space left")
}

fn fat_label(label: &str) -> io::Result<[u8; 11]> {
    if label.len() > 11
        || !label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("volume label {label:?} is not up to 11 upper-case letters and digits"),
        ));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "seed".into());
    out.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}
