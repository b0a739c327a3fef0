//! Files a process holds by path (open files, named pipes, its cwd, root and executable, the
//! files it maps), judged as CRIU judges them when it dumps their paths: the mount must be one
//! it can find, and the name must still lead to the same file, or the file must be deleted
//! (then it is copied into the images up to the ghost limit, or linked back with
//! `--link-remap` while other names of it remain).

use super::fds::{FdKind, OpenFd, Stat};
use super::findings::{Finding, Holder, Place};
use super::mounts::MountView;
use super::procs::{proc_path, Proc};
use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Paths CRIU dumps in other ways than by name (memfds, SysV shm, shared anonymous memory,
/// AIO rings): nothing to check here.
fn special(path: &str) -> bool {
    [
        "/memfd:",
        "/SYSV",
        "/dev/zero (deleted)",
        "/[aio]",
        "/secretmem",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// A file held by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub at: Place,
    /// As /proc shows it, maybe with " (deleted)".
    pub link: String,
    pub stat: Stat,
    pub mnt_id: Option<i32>,
}

/// What the same name leads to now, seen from the process's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameNow {
    Same,
    Missing,
    Other,
}

/// Judges one held file: its mount, then its name. `name_now` looks the path up in the
/// process's root (only asked for a file not shown as deleted).
pub fn judge(h: &Held, mounts: &MountView, name_now: impl Fn() -> NameNow) -> Vec<Finding> {
    if special(&h.link) || !h.link.starts_with('/') {
        return vec![];
    }
    let (path, deleted) = match h.link.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (h.link.as_str(), false),
    };
    if let Some(f) = h
        .mnt_id
        .and_then(|id| mounts.judge(&h.at, Path::new(path), id))
    {
        return vec![f];
    }
    let path = PathBuf::from(path);
    let at = h.at.clone();
    if h.stat.nlink == 0 {
        return vec![Finding::Deleted {
            at,
            path,
            bytes: h.stat.bytes,
            linked: false,
        }];
    }
    let now = if deleted {
        NameNow::Missing
    } else {
        name_now()
    };
    match now {
        NameNow::Same => vec![],
        NameNow::Missing => vec![Finding::Deleted {
            at,
            path,
            bytes: h.stat.bytes,
            linked: true,
        }],
        NameNow::Other => vec![Finding::PathReused { at, path }],
    }
}

/// Looks `path` up in `pid`'s root and compares it with the held file.
fn name_now(pid: i32, path: &str, held: &Stat) -> NameNow {
    let p = proc_path(pid, "root").join(path.trim_start_matches('/'));
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.ino() == held.ino && m.dev() == held.dev => NameNow::Same,
        Ok(_) => NameNow::Other,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NameNow::Missing,
        // Unreadable (permissions, a name too long): let CRIU decide.
        Err(_) => NameNow::Same,
    }
}

/// The mount id of what `path` (a /proc magic link) leads to: opened O_PATH, which touches
/// nothing of the file, and read back from our own fdinfo.
pub fn mnt_id_of(path: &Path) -> Option<i32> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .ok()?;
    use std::os::fd::AsRawFd;
    let mut text = String::new();
    std::fs::File::open(format!("/proc/self/fdinfo/{}", f.as_raw_fd()))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    super::fds::parse_fdinfo(&text).mnt_id
}

/// A held file from a /proc magic link (`cwd`, `root`, `exe`, `map_files/…`).
pub fn held_link(p: &Proc, holder: Holder, rest: &str, link: Option<String>) -> Option<Held> {
    let path = proc_path(p.pid, rest);
    let link = match link {
        Some(l) => l,
        None => std::fs::read_link(&path)
            .ok()?
            .to_string_lossy()
            .into_owned(),
    };
    let meta = std::fs::metadata(&path).ok()?;
    Some(Held {
        at: p.at(holder),
        link,
        stat: Stat::of(&meta),
        mnt_id: mnt_id_of(&path),
    })
}

/// The files process `p` holds by path through `fds`, its cwd, root and executable.
pub fn held_by(p: &Proc, fds: &[OpenFd]) -> Vec<Held> {
    let mut out: Vec<Held> = fds
        .iter()
        .filter(|f| match f.kind {
            FdKind::File => !f.mqueue,
            FdKind::Fifo => true,
            // memory devices (/dev/null…) are dumped by path like files
            FdKind::CharDev => libc::major(f.stat.rdev) == 1,
            _ => false,
        })
        .map(|f| Held {
            at: p.at(Holder::Fd(f.fd)),
            link: f.link.clone(),
            stat: f.stat,
            mnt_id: f.info.mnt_id,
        })
        .collect();
    if !p.zombie {
        for (holder, rest) in [
            (Holder::Cwd, "cwd"),
            (Holder::Root, "root"),
            (Holder::Exe, "exe"),
        ] {
            out.extend(held_link(p, holder, rest, None));
        }
    }
    out
}

/// Judges every held file, once per process and file.
pub fn findings(held: &[Held], mounts: &MountView) -> Vec<Finding> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for h in held {
        if !seen.insert((h.at.pid, h.stat.dev, h.stat.ino)) {
            continue;
        }
        let path = h.link.trim_end_matches(" (deleted)").to_string();
        out.extend(judge(h, mounts, || name_now(h.at.pid, &path, &h.stat)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::mounts::parse_mountinfo;

    fn held(link: &str, nlink: u64, mnt: i32) -> Held {
        Held {
            at: Place::new(5, "job", Holder::Fd(4)),
            link: link.into(),
            stat: Stat {
                nlink,
                bytes: 8 << 20,
                ..Default::default()
            },
            mnt_id: Some(mnt),
        }
    }

    #[test]
    fn deleted_renamed_over_and_foreign_files_are_told_apart() {
        let t = parse_mountinfo("1 0 8:1 / / rw - ext4 x rw\n");
        let v = MountView::build(&[t], &[]);
        let same = || NameNow::Same;
        assert!(judge(&held("/data/a", 1, 1), &v, same).is_empty());
        let ghost = judge(&held("/data/a (deleted)", 0, 1), &v, same);
        assert!(
            matches!(&ghost[..], [Finding::Deleted { linked: false, bytes, .. }] if *bytes == 8 << 20)
        );
        let linked = judge(&held("/data/a (deleted)", 2, 1), &v, same);
        assert!(matches!(
            &linked[..],
            [Finding::Deleted { linked: true, .. }]
        ));
        let reused = judge(&held("/data/a", 1, 1), &v, || NameNow::Other);
        assert!(matches!(&reused[..], [Finding::PathReused { .. }]));
        let foreign = judge(&held("/dev/pts/0", 1, 99), &v, same);
        assert!(matches!(
            &foreign[..],
            [Finding::MountUnknown { mnt_id: 99, .. }]
        ));
        assert!(judge(&held("/memfd:x (deleted)", 0, 99), &v, same).is_empty());
    }

    #[test]
    fn our_cwd_has_a_mount() {
        assert!(mnt_id_of(Path::new("/proc/self/cwd")).is_some());
    }
}
