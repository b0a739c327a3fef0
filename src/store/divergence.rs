//! Files a job may write, recorded with each generation, and compared at restore: CRIU restores
//! memory, not the files the job keeps on the host, so a file that moved on after the dump (a
//! `--leave-running` checkpoint, or a crash long after it) meets memory that does not know it.
//! CRIU itself checks only the size of some files; a same-size change, or any change to an
//! O_APPEND file, passes it silently. stasis records, while CRIU holds the tree frozen (in the
//! post-dump hook), each such file's size, mtime and inode, and a SHA-256 of the content of
//! files up to [`HASH_LIMIT`], and names every file that differs at restore.

use super::atomic::{self, FsError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The record file inside a generation.
pub const RECORDS: &str = "files.json";
/// Files up to this size get a content hash (a few ms of frozen time at most); larger ones are
/// compared by size and mtime.
pub const HASH_LIMIT: u64 = 1 << 20;

/// A file as it was while the tree was frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The path as the job sees it.
    pub path: PathBuf,
    /// Where it is on the host (through the mount it lives on).
    pub host: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// How a file differs from its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum Change {
    /// The file is gone.
    Gone,
    /// Its size changed.
    Size { was: u64, now: u64 },
    /// Same size, other content (hashed files).
    Content,
    /// Same size, modified since (files too large to hash).
    Modified,
}

/// A file that moved on since its generation was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverged {
    pub path: PathBuf,
    #[serde(flatten)]
    pub change: Change,
}

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.change {
            Change::Gone => write!(f, "{p} (gone)"),
            Change::Size { was, now } => write!(f, "{p} (size {was} -> {now})"),
            Change::Content => write!(f, "{p} (content changed, same size)"),
            Change::Modified => write!(f, "{p} (modified, same size)"),
        }
    }
}

/// A short list of changed files for one line: the first few, then a count.
pub fn describe(d: &[Diverged]) -> String {
    let mut s: Vec<String> = d.iter().take(5).map(|x| x.to_string()).collect();
    if d.len() > 5 {
        s.push(format!("and {} more", d.len() - 5));
    }
    s.join(", ")
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut f = fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return None,
        }
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Records each `(path inside, host path)`; a file that cannot be read is left out (it cannot
/// be compared either, and the dump must not fail for it).
pub fn record(files: &[(PathBuf, PathBuf)]) -> Vec<FileRecord> {
    files
        .iter()
        .filter_map(|(inside, host)| {
            let m = fs::metadata(host).ok()?;
            if !m.is_file() {
                return None;
            }
            Some(FileRecord {
                path: inside.clone(),
                host: host.clone(),
                size: m.size(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                ino: m.ino(),
                sha256: (m.size() <= HASH_LIMIT).then(|| sha256_of(host)).flatten(),
            })
        })
        .collect()
}

/// How `r`'s file differs now, if it does.
pub fn compare_one(r: &FileRecord) -> Option<Change> {
    let Ok(m) = fs::metadata(&r.host) else {
        return Some(Change::Gone);
    };
    if m.size() != r.size {
        return Some(Change::Size {
            was: r.size,
            now: m.size(),
        });
    }
    match &r.sha256 {
        Some(h) => (sha256_of(&r.host).as_ref() != Some(h)).then_some(Change::Content),
        None => {
            let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
            (mtime != r.mtime_ns || m.ino() != r.ino).then_some(Change::Modified)
        }
    }
}

/// Every recorded file that moved on, except those under `skip` (put back from a snapshot).
pub fn compare(records: &[FileRecord], skip: &[PathBuf]) -> Vec<Diverged> {
    records
        .iter()
        .filter(|r| !skip.iter().any(|s| r.host.starts_with(s)))
        .filter_map(|r| {
            compare_one(r).map(|change| Diverged {
                path: r.path.clone(),
                change,
            })
        })
        .collect()
}

/// Writes the records into a generation's directory (inside CRIU's post-dump hook).
pub fn write(dir: &Path, records: &[FileRecord]) -> Result<(), FsError> {
    let p = dir.join(RECORDS);
    let data = atomic::to_json(&p, &records)?;
    atomic::write_atomic_quick(&p, &data)
}

/// The records of a generation (none for one taken before they existed).
pub fn read(dir: &Path) -> Result<Vec<FileRecord>, FsError> {
    let p = dir.join(RECORDS);
    match fs::read(&p) {
        Ok(d) => serde_json::from_slice(&d).map_err(|e| {
            FsError::new(
                "parse",
                &p,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(FsError::new("read", &p, e)),
    }
}

/// What the post-dump hook is told to record: `INSIDE\tHOST` per line.
pub fn encode_list(files: &[(PathBuf, PathBuf)]) -> String {
    files
        .iter()
        .map(|(i, h)| format!("{}\t{}\n", i.display(), h.display()))
        .collect()
}

/// The list [`encode_list`] made.
pub fn decode_list(s: &str) -> Vec<(PathBuf, PathBuf)> {
    s.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(i, h)| (PathBuf::from(i), PathBuf::from(h)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_change_is_named() {
        let d = tempfile::tempdir().unwrap();
        let small = d.path().join("small");
        let big = d.path().join("big");
        let gone = d.path().join("gone");
        let same = d.path().join("same");
        fs::write(&small, b"abcd").unwrap();
        fs::write(&big, vec![0u8; HASH_LIMIT as usize + 1]).unwrap();
        fs::write(&gone, b"x").unwrap();
        fs::write(&same, b"keep").unwrap();
        let list: Vec<(PathBuf, PathBuf)> = [&small, &big, &gone, &same]
            .iter()
            .map(|p| {
                (
                    Path::new("/in").join(p.file_name().unwrap()),
                    p.to_path_buf(),
                )
            })
            .collect();
        let recs = record(&list);
        assert_eq!(recs.len(), 4);
        assert!(recs[0].sha256.is_some() && recs[1].sha256.is_none());
        assert_eq!(decode_list(&encode_list(&list)), list);

        fs::write(&small, b"abce").unwrap(); // same size, other content
                                             // a same-size rewrite of a large file: a new inode, like an editor's save
        let tmp = d.path().join("big.new");
        fs::write(&tmp, vec![1u8; HASH_LIMIT as usize + 1]).unwrap();
        fs::rename(&tmp, &big).unwrap();
        fs::remove_file(&gone).unwrap();
        let diff = compare(&recs, &[]);
        let names: Vec<String> = diff.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            names,
            [
                "/in/small (content changed, same size)",
                "/in/big (modified, same size)",
                "/in/gone (gone)"
            ]
        );
        fs::write(&same, b"longer").unwrap();
        assert_eq!(compare(&recs[3..], &[]).len(), 1);
        // files put back from a snapshot are not compared
        assert!(compare(&recs, &[d.path().to_path_buf()]).is_empty());
        assert!(describe(&diff).contains("/in/gone (gone)"));
    }

    #[test]
    fn records_round_trip_and_old_generations_have_none() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path()).unwrap().is_empty());
        let f = d.path().join("f");
        fs::write(&f, b"1").unwrap();
        let recs = record(&[("/f".into(), f)]);
        write(d.path(), &recs).unwrap();
        assert_eq!(read(d.path()).unwrap(), recs);
    }
}
