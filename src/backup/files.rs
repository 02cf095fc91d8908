//! Backup files on disk: their names, atomic private writes, the retention
//! of a backup directory, and its listing. Blocking file I/O: call it off
//! the async runtime.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const PREFIX: &str = "floatlm-backup-";
const SUFFIX: &str = ".fbk";
/// `YYYYMMDDTHHMMSSZ`.
const STAMP_LEN: usize = 16;

/// `floatlm-backup-YYYYMMDDTHHMMSSZ.fbk` for a backup of the state at `at`
/// (names sort by time).
pub fn file_name(at: DateTime<Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.format("%Y%m%dT%H%M%SZ"))
}

/// Whether `name` is a backup file name as [`file_name`] makes them: only
/// those are ever deleted by retention.
pub fn is_backup_name(name: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == STAMP_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
}

/// Writes `bytes` to `path` so that the file is either absent or complete,
/// readable by its owner only: a temporary file in the same directory
/// (mode 0600), fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", crate::crypto::random_hex(4)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A backup file in a directory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackupFile {
    pub name: String,
    pub bytes: u64,
}

/// The backup files in `dir`, oldest first (an absent directory holds none).
pub fn list(dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_backup_name(&name) && e.file_type()?.is_file() {
            out.push(BackupFile {
                name,
                bytes: e.metadata()?.len(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes the oldest backup files in `dir` beyond the newest `keep`;
/// returns the names deleted. Files not named like backups are never touched.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<Vec<String>> {
    let files = list(dir)?;
    let excess = files.len().saturating_sub(keep);
    let mut gone = Vec::with_capacity(excess);
    for f in files.into_iter().take(excess) {
        match std::fs::remove_file(dir.join(&f.name)) {
            Ok(()) => gone.push(f.name),
            // Another instance sharing the directory pruned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !gone.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_only_they_are_pruned() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let n = file_name(t);
        assert_eq!(n, "floatlm-backup-20270115T080000Z.fbk");
        assert!(is_backup_name(&n));
        for bad in [
            "floatlm-backup-20270115T080000Z.fbk.tmp",
            ".floatlm-backup-20270115T080000Z.fbk.tmp-ab",
            "floatlm-backup-2027011T080000Z.fbk",
            "notes.txt",
        ] {
            assert!(!is_backup_name(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = dir.path().join(file_name(t + chrono::Duration::hours(i)));
            write_atomic(&p, b"x").unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(dir.path().join("keep-me.txt"), b"y").unwrap();
        let gone = prune(dir.path(), 2).unwrap();
        assert_eq!(gone.len(), 3);
        let left = list(dir.path()).unwrap();
        assert_eq!(left.len(), 2);
        assert_eq!(left[1].name, file_name(t + chrono::Duration::hours(4)));
        assert!(dir.path().join("keep-me.txt").exists());
    }
}
