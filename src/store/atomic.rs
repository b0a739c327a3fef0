//! Atomic file writes: every state file goes through a temp file in the same directory, an
//! fsync and a rename, so a crash leaves either the old file or the new one, never a torn one.
//!
//! The directory is not fsynced after each rename: the rename reaches the journal with the
//! next commit, so a power cut may bring back the previous version, whole — which the readers
//! reconcile like any stale state. That saves a journal flush on every state change (the start
//! of a workload writes state several times). Where a rename must be durable at once (a new
//! checkpoint generation), the caller fsyncs the directory with [`sync_dir`].

use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A filesystem operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> FsError {
        FsError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the disk (or quota) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }
}

/// Writes `data` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FsError> {
    write_atomic_many(&[(path, data)])
}

/// Writes several files atomically: all temp files first, then their fsyncs, then the
/// renames. On a journaling filesystem the first fsync commits the transaction that holds
/// them all, so the others cost almost nothing. Each file is atomic; the set is not.
pub fn write_atomic_many(files: &[(&Path, &[u8])]) -> Result<(), FsError> {
    let mut temps = Vec::new();
    let res = (|| {
        for (path, data) in files {
            let dir = path.parent().unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
                .map_err(|e| FsError::new("create", &tmp, e))?;
            temps.push(tmp.clone());
            f.write_all(data)
                .map_err(|e| FsError::new("write", &tmp, e))?;
        }
        for tmp in &temps {
            File::open(tmp)
                .and_then(|f| f.sync_data())
                .map_err(|e| FsError::new("fsync", tmp, e))?;
        }
        for ((path, _), tmp) in files.iter().zip(&temps) {
            fs::rename(tmp, path).map_err(|e| FsError::new("rename", path, e))?;
        }
        Ok(())
    })();
    if res.is_err() {
        for t in &temps {
            let _ = fs::remove_file(t);
        }
    }
    res
}

/// Writes `data` to `path` atomically but without waiting for the disk: a process that dies
/// right after leaves the new file whole (the kernel has it), a power cut may bring back the
/// old one. For records that a durable write follows shortly, written where a crash of the
/// writer must not lose them.
pub fn write_atomic_quick(path: &Path, data: &[u8]) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.q.tmp", std::process::id()));
    let r = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| FsError::new("write", &tmp, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| FsError::new("rename", path, e)));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Replaces `path` with `data` without waiting for the disk, by writing `spare` and swapping
/// the two names (`renameat2(RENAME_EXCHANGE)`): no inode is made or freed, and `spare` keeps
/// the old content for the next swap. A reader that opens `path` after the swap sees the new
/// content whole, but one that opened it before holds what is now the spare, which the next
/// call rewrites: readers must check what they read and read again (see
/// `store::sessions::load`), unlike with [`write_atomic_quick`]. On ext4 without a journal
/// (this project's VM), every inode freed stays "recently deleted" for a while and makes each
/// later allocation in its group scan past it: an exec session's two record writes cost a
/// tenth of its time that way. `spare` must be the caller's alone. Where `path` does not
/// exist yet the spare is renamed into place; where the filesystem cannot exchange, this is
/// [`write_atomic_quick`].
pub fn swap_in_quick(path: &Path, spare: &Path, data: &[u8]) -> Result<(), FsError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(spare)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| FsError::new("write", spare, e))?;
    let cwd = nix::fcntl::AT_FDCWD;
    match nix::fcntl::renameat2(
        cwd,
        spare,
        cwd,
        path,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => {
            fs::rename(spare, path).map_err(|e| FsError::new("rename", path, e))
        }
        // No exchange on this filesystem (EINVAL) or kernel (ENOSYS).
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOSYS) => {
            write_atomic_quick(path, data)
        }
        Err(e) => Err(FsError::new("rename", path, e.into())),
    }
}

/// Pretty JSON with a trailing newline.
pub fn to_json(path: &Path, value: &impl Serialize) -> Result<Vec<u8>, FsError> {
    let mut data = serde_json::to_vec_pretty(value).map_err(|e| {
        FsError::new(
            "serialise",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    data.push(b'\n');
    Ok(data)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    write_atomic(path, &to_json(path, value)?)
}

/// fsyncs a directory, so a rename or create inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new("fsync", dir, e))
}

/// Creates a directory and its parents with the given mode.
pub fn mkdir_p(path: &Path, mode: u32) -> Result<(), FsError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| FsError::new("mkdir", path, e))
}

/// Creates one directory (its parent must exist) with the given mode; one that exists is
/// fine. For a workload's subdirectories: unlike [`mkdir_p`], it never brings back a workload
/// directory that was removed meanwhile (a ghost record).
pub fn mkdir_in(path: &Path, mode: u32) -> Result<(), FsError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(FsError::new("mkdir", path, e)),
        _ => Ok(()),
    }
}

/// Total size in bytes of the regular files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += dir_size(&e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_write_into_missing_dir_names_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope/state.json");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), [0u8; 10]).unwrap();
        fs::create_dir(d.path().join("s")).unwrap();
        fs::write(d.path().join("s/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(d.path()), 15);
    }
}
