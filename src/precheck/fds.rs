//! A process's open files: what each fd is (from its /proc link, its inode and its fdinfo),
//! and what CRIU refuses among the kinds it sees here: anonymous inodes it has no dumper for
//! (io_uring, userfaultfd, perf events…), pidfds of processes outside the tree, block
//! devices, POSIX message queues, and file locks when they are not to be dumped.
//!
//! Sockets, devices and the paths of regular files are judged by their own modules.

use super::findings::{Finding, Holder};
use super::procs::{gone, proc_path, read, Proc};
use super::InspectError;
use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Anonymous inodes CRIU dumps (its `is_*_link` checks); every other one fails the dump.
const DUMPABLE_ANON: &[&str] = &[
    "[eventfd]",
    "[eventpoll]",
    "inotify",
    "[fanotify]",
    "[signalfd]",
    "[timerfd]",
    "[pidfd]",
    "bpf-map",
];
/// statfs magic of the mqueue filesystem.
const MQUEUE_MAGIC: i64 = 0x1980_0202;
/// `PIDFD_THREAD` (= O_EXCL) in a pidfd's flags.
const PIDFD_THREAD: i32 = libc::O_EXCL;

/// The fdinfo fields we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub flags: i32,
    pub mnt_id: Option<i32>,
    /// A pidfd's target, as the host sees it (-1: it has exited).
    pub pidfd: Option<i32>,
    /// A pty master's index.
    pub tty_index: Option<u32>,
    /// File locks this fd's owner holds on the file.
    pub locks: usize,
}

/// Parses /proc/PID/fdinfo/N.
pub fn parse_fdinfo(text: &str) -> FdInfo {
    let mut i = FdInfo::default();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "flags" => i.flags = i32::from_str_radix(v, 8).unwrap_or(0),
            "mnt_id" => i.mnt_id = v.parse().ok(),
            "Pid" => i.pidfd = v.parse().ok(),
            "tty-index" => i.tty_index = v.parse().ok(),
            "lock" => i.locks += 1,
            _ => {}
        }
    }
    i
}

/// What an fd refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file or directory (with a path, or a memfd).
    File,
    Pipe,
    /// A named pipe (it has a path, like a file).
    Fifo,
    Socket(u64),
    /// An anonymous inode: `[eventfd]`, `[io_uring]`…
    Anon(String),
    Pidfd,
    CharDev,
    BlockDev,
    /// A namespace file (/proc/PID/ns/…).
    Namespace,
    Other,
}

/// The inode an fd refers to, the parts we use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub nlink: u64,
    /// Allocated bytes (blocks × 512): what CRIU compares with the ghost limit.
    pub bytes: u64,
    pub size: u64,
}

impl Stat {
    pub fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            rdev: m.rdev(),
            nlink: m.nlink(),
            bytes: m.blocks() * 512,
            size: m.size(),
        }
    }
}

/// One open fd of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFd {
    pub fd: i32,
    /// Its /proc link: a path (maybe with " (deleted)"), `socket:[N]`, `anon_inode:[…]`.
    pub link: String,
    pub kind: FdKind,
    pub stat: Stat,
    pub info: FdInfo,
    /// On the mqueue filesystem.
    pub mqueue: bool,
}

/// Sorts an fd from its link, its file type and its fdinfo.
pub fn classify(link: &str, ft: Option<std::fs::FileType>, info: &FdInfo) -> FdKind {
    if info.pidfd.is_some() {
        return FdKind::Pidfd;
    }
    if let Some(name) = link.strip_prefix("anon_inode:") {
        return FdKind::Anon(name.to_string());
    }
    if let Some(ino) = link
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
    {
        return FdKind::Socket(ino.parse().unwrap_or(0));
    }
    if link.starts_with("pipe:[") {
        return FdKind::Pipe;
    }
    if link.contains(":[") && !link.starts_with('/') {
        // net:[…], mnt:[…]: a namespace file opened from /proc/PID/ns
        return FdKind::Namespace;
    }
    match ft {
        Some(t) if t.is_char_device() => FdKind::CharDev,
        Some(t) if t.is_block_device() => FdKind::BlockDev,
        Some(t) if t.is_fifo() => FdKind::Fifo,
        Some(t) if t.is_file() || t.is_dir() || t.is_symlink() => FdKind::File,
        _ => FdKind::Other,
    }
}

/// Reads every open fd of `pid` (none when it has gone).
pub fn read_fds(pid: i32) -> Result<Vec<OpenFd>, InspectError> {
    let dir = proc_path(pid, "fd");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if gone(&e) => return Ok(vec![]),
        Err(source) => return Err(InspectError::Read { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // An fd closed while we look is simply not there.
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let Some(info) = read(&proc_path(pid, &format!("fdinfo/{fd}")))? else {
            continue;
        };
        let info = parse_fdinfo(&info);
        let meta = std::fs::metadata(e.path()).ok();
        let link = link.to_string_lossy().into_owned();
        let kind = classify(&link, meta.as_ref().map(|m| m.file_type()), &info);
        let mqueue = kind == FdKind::File
            && nix::sys::statfs::statfs(&e.path())
                .map(|s| s.filesystem_type().0 == MQUEUE_MAGIC)
                .unwrap_or(false);
        out.push(OpenFd {
            fd,
            link,
            kind,
            stat: meta.as_ref().map(Stat::of).unwrap_or_default(),
            info,
            mqueue,
        });
    }
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

/// What CRIU refuses among the fds of `p` (`tree`: the job's host pids), sockets, devices
/// and paths aside. File locks are listed always; the verdict knows whether they are dumped.
pub fn findings(p: &Proc, fds: &[OpenFd], tree: &HashSet<i32>) -> Vec<Finding> {
    let mut out = Vec::new();
    for f in fds {
        let at = p.at(Holder::Fd(f.fd));
        match &f.kind {
            FdKind::Anon(name) if !DUMPABLE_ANON.contains(&name.as_str()) => {
                out.push(Finding::UnsupportedFile {
                    at,
                    what: f.link.clone(),
                });
            }
            FdKind::Pidfd => {
                let target = f.info.pidfd.unwrap_or(-1);
                if f.info.flags & PIDFD_THREAD != 0 {
                    out.push(Finding::PidfdThread { at });
                } else if target > 0 && !tree.contains(&target) {
                    out.push(Finding::PidfdOutside { at, target });
                }
            }
            FdKind::BlockDev => out.push(Finding::Device {
                at,
                path: f.link.clone().into(),
                major: libc::major(f.stat.rdev),
                minor: libc::minor(f.stat.rdev),
            }),
            FdKind::File if f.mqueue => out.push(Finding::UnsupportedFile {
                at,
                what: format!("POSIX message queue {}", f.link),
            }),
            FdKind::File if f.info.locks > 0 => out.push(Finding::FileLock {
                at,
                path: f.link.clone().into(),
            }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_parses() {
        let i = parse_fdinfo(
            "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\t7\n",
        );
        assert_eq!(i.flags, 0o2004002);
        assert_eq!((i.mnt_id, i.pidfd), (Some(15), Some(4242)));
        let i = parse_fdinfo("pos:\t0\nflags:\t0100002\nmnt_id:\t31\ntty-index:\t3\n");
        assert_eq!(i.tty_index, Some(3));
        let i = parse_fdinfo(
            "pos:\t0\nflags:\t02\nmnt_id:\t1\nlock:\t1: FLOCK  ADVISORY  WRITE 12 fe:00:3 0 EOF\n",
        );
        assert_eq!(i.locks, 1);
    }

    #[test]
    fn links_classify() {
        let none = FdInfo::default();
        assert_eq!(
            classify("anon_inode:[io_uring]", None, &none),
            FdKind::Anon("[io_uring]".into())
        );
        assert_eq!(classify("socket:[991]", None, &none), FdKind::Socket(991));
        assert_eq!(classify("pipe:[5]", None, &none), FdKind::Pipe);
        assert_eq!(classify("net:[4026531840]", None, &none), FdKind::Namespace);
        let pidfd = FdInfo {
            pidfd: Some(3),
            ..Default::default()
        };
        assert_eq!(classify("anon_inode:[pidfd]", None, &pidfd), FdKind::Pidfd);
    }

    fn fd(n: i32, link: &str, kind: FdKind, info: FdInfo) -> OpenFd {
        OpenFd {
            fd: n,
            link: link.into(),
            kind,
            stat: Stat::default(),
            info,
            mqueue: false,
        }
    }

    #[test]
    fn io_uring_foreign_pidfds_and_locks_are_found() {
        let p = super::super::procs::read_proc(std::process::id() as i32)
            .unwrap()
            .unwrap();
        let tree: HashSet<i32> = [p.pid, 50].into();
        let fds = vec![
            fd(
                3,
                "anon_inode:[io_uring]",
                FdKind::Anon("[io_uring]".into()),
                FdInfo::default(),
            ),
            fd(
                4,
                "anon_inode:[eventfd]",
                FdKind::Anon("[eventfd]".into()),
                FdInfo::default(),
            ),
            fd(
                5,
                "anon_inode:[pidfd]",
                FdKind::Pidfd,
                FdInfo {
                    pidfd: Some(50),
                    ..Default::default()
                },
            ),
            fd(
                6,
                "anon_inode:[pidfd]",
                FdKind::Pidfd,
                FdInfo {
                    pidfd: Some(9999),
                    ..Default::default()
                },
            ),
            fd(
                7,
                "anon_inode:[pidfd]",
                FdKind::Pidfd,
                FdInfo {
                    pidfd: Some(-1),
                    ..Default::default()
                },
            ),
            fd(
                8,
                "/tmp/db",
                FdKind::File,
                FdInfo {
                    locks: 1,
                    ..Default::default()
                },
            ),
        ];
        let f = findings(&p, &fds, &tree);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(
            matches!(&f[0], Finding::UnsupportedFile { what, .. } if what.contains("io_uring"))
        );
        assert!(matches!(&f[1], Finding::PidfdOutside { target: 9999, .. }));
        assert!(matches!(&f[2], Finding::FileLock { .. }));
    }

    #[test]
    fn our_own_fds_read_back() {
        let me = std::process::id() as i32;
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("x")).unwrap();
        let fds = read_fds(me).unwrap();
        use std::os::fd::AsRawFd;
        let mine = fds.iter().find(|o| o.fd == f.as_raw_fd()).unwrap();
        assert_eq!(mine.kind, FdKind::File);
        assert!(mine.info.mnt_id.is_some() && mine.info.flags & libc::O_CLOEXEC != 0);
    }
}
