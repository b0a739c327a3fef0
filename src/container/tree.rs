//! A running container's process tree as /proc shows it from the host: its tasks, and the
//! regular files they hold (open, deleted, written, mapped shared). A checkpoint reads it
//! without freezing anything, to size CRIU's ghost limit and to record the files whose content
//! a restore must find unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every process of the tree rooted at `pid` (host pids), `pid` first.
pub fn pids(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for c in children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok())
                {
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// A regular file the tree holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFile {
    /// The path as the container sees it (without " (deleted)").
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// Its name was unlinked while open.
    pub deleted: bool,
    /// Open for writing, or mapped shared and writable: its content can move on after a
    /// dump.
    pub written: bool,
    /// Opened with O_APPEND (a log): CRIU checks nothing of such a file at restore.
    pub append: bool,
}

/// Reads an fd's flags from fdinfo.
fn fd_flags(pid: i32, fd: &str) -> Option<i32> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let v = t.lines().find_map(|l| l.strip_prefix("flags:"))?;
    i32::from_str_radix(v.trim(), 8).ok()
}

fn held(meta: &std::fs::Metadata, link: &str, written: bool, append: bool) -> Option<HeldFile> {
    if !meta.file_type().is_file() {
        return None;
    }
    let (path, deleted) = match link.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (link, false),
    };
    Some(HeldFile {
        path: PathBuf::from(path),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        deleted,
        written,
        append,
    })
}

/// The regular files held by `pids` (open or mapped), one entry per file (by device and
/// inode), `written` if any holder may write it.
pub fn held_files(pids: &[i32]) -> Vec<HeldFile> {
    let mut by_inode: BTreeMap<(u64, u64), HeldFile> = BTreeMap::new();
    let mut add = |f: HeldFile| {
        by_inode
            .entry((f.dev, f.ino))
            .and_modify(|e| {
                e.written |= f.written;
                e.append &= f.append;
            })
            .or_insert(f);
    };
    for &pid in pids {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(link) = std::fs::read_link(e.path()) else {
                    continue;
                };
                let Ok(meta) = std::fs::metadata(e.path()) else {
                    continue;
                };
                let flags = fd_flags(pid, &name).unwrap_or(0);
                let acc = flags & libc::O_ACCMODE;
                let written = acc == libc::O_WRONLY || acc == libc::O_RDWR;
                let append = flags & libc::O_APPEND != 0;
                if let Some(f) = held(&meta, &link.to_string_lossy(), written, append) {
                    add(f);
                }
            }
        }
        // Shared writable mappings: writes reach the file without any fd.
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mut seen = BTreeSet::new();
        for l in maps.lines() {
            let f: Vec<&str> = l.splitn(6, ' ').collect();
            let (Some(perms), Some(path)) = (f.get(1), f.get(5)) else {
                continue;
            };
            let path = path.trim();
            if !perms.contains('s') || !perms.contains('w') || !path.starts_with('/') {
                continue;
            }
            let range = f[0];
            if !seen.insert(range.to_string()) {
                continue;
            }
            let mf = Path::new("/proc")
                .join(pid.to_string())
                .join("map_files")
                .join(range);
            if let Ok(meta) = std::fs::metadata(&mf) {
                if let Some(h) = held(&meta, path, true, false) {
                    add(h);
                }
            }
        }
    }
    by_inode.into_values().collect()
}

/// The size of the largest deleted file `files` holds (0 without one).
pub fn largest_ghost(files: &[HeldFile]) -> u64 {
    files
        .iter()
        .filter(|f| f.deleted)
        .map(|f| f.size)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn our_own_open_files_show_with_their_modes() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("written");
        let mut f = std::fs::File::create(&w).unwrap();
        f.write_all(&[0u8; 1000]).unwrap();
        let gone = d.path().join("gone");
        let mut g = std::fs::File::create(&gone).unwrap();
        g.write_all(&[1u8; 3000]).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let r = std::fs::File::open(d.path().join("written")).unwrap();
        let me = std::process::id() as i32;
        let files = held_files(&[me]);
        let mine = files
            .iter()
            .find(|h| h.path == w)
            .expect("written file listed");
        assert!(mine.written && mine.size == 1000 && !mine.deleted);
        let ghost = files
            .iter()
            .find(|h| h.path == gone)
            .expect("deleted file listed");
        assert!(ghost.deleted);
        assert!(largest_ghost(&files) >= 3000);
        drop((f, g, r));
    }

    #[test]
    fn the_tree_starts_with_its_root() {
        let me = std::process::id() as i32;
        assert_eq!(pids(me)[0], me);
    }
}
