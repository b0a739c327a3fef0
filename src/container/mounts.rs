//! A container's mounts: what the container gets (its own /proc, /dev/pts, /dev/shm and
//! /dev/mqueue; a read-only init store; volumes), and which of its mounts CRIU must be told are
//! external (carried in from the host, bound back from the host at restore).
//!
//! Every container has its own mount namespace. A container on the host's filesystem (no
//! rootfs) keeps a copy of the host's mount tree, so it sees the host's files and tools, but
//! gets fresh instances of the filesystems that belong to its own namespaces: a /proc of its
//! PID namespace (so `/proc/self` and `/proc/$$` name itself; CUDA and CRIU's own tests need
//! that), a devpts instance for its ptys, and tmpfs/mqueue for its IPC namespace. CRIU dumps
//! and restores those with the container; every other mount is declared external at dump
//! (`--external mnt[PATH]:KEY`) and bound from the same host path at restore
//! (`--external mnt[KEY]:PATH` with `--root /`), as runc does with a rootfs's bind mounts.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One line of /proc/PID/mountinfo, the parts we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// Where it is mounted, as the container sees it.
    pub point: PathBuf,
    pub fstype: String,
    /// The mount source ("none" when mountinfo has none).
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash…).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = unescape(post.next().unwrap_or("none"));
            Some(MountEntry {
                id: f.first()?.parse().ok()?,
                parent: f.get(1)?.parse().ok()?,
                point: PathBuf::from(unescape(f.get(4)?)),
                fstype,
                source,
            })
        })
        .collect()
}

/// Reads a process's mount table.
pub fn mount_table(pid: i32) -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(format!(
        "/proc/{pid}/mountinfo"
    ))?))
}

/// Which layout a container has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The host's mount tree with private /proc, /dev/pts, /dev/shm, /dev/mqueue.
    HostTree,
    /// Its own root filesystem with private /proc, /sys, /dev (tmpfs), /dev/pts, /dev/shm,
    /// /tmp.
    Rootfs,
}

impl Layout {
    /// Mounts the container made for itself: CRIU dumps them with it.
    fn own(&self, m: &MountEntry) -> bool {
        let p = m.point.to_str().unwrap_or("");
        let t = m.fstype.as_str();
        let common = matches!(
            (p, t),
            ("/proc", "proc")
                | ("/dev/pts", "devpts")
                | ("/dev/shm", "tmpfs")
                | ("/dev/mqueue", "mqueue")
        );
        match self {
            Layout::HostTree => common,
            Layout::Rootfs => {
                common
                    || matches!(
                        (p, t),
                        ("/sys", "sysfs") | ("/dev", "tmpfs") | ("/tmp", "tmpfs")
                    )
            }
        }
    }
}

/// A mount CRIU must treat as external: at dump it is declared with `key`; at restore `key` is
/// bound from `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtMount {
    pub key: String,
    /// The mount point inside the container.
    pub inside: PathBuf,
    /// What to bind there at restore.
    pub host: PathBuf,
}

/// Mounts a host-tree container carried in that the host no longer has (the host unmounted
/// them since the container started; with private propagation the container kept its copy).
/// `binds` are the container's own bind mounts (the init store, volumes), which the host
/// never had. Deepest first, ready to unmount.
pub fn gone_from_host(
    container: &[MountEntry],
    host: &[MountEntry],
    layout: Layout,
    binds: &[PathBuf],
) -> Vec<PathBuf> {
    if layout != Layout::HostTree {
        return vec![];
    }
    let mut gone: Vec<PathBuf> = container
        .iter()
        .filter(|m| m.point != Path::new("/") && !layout.own(m))
        .filter(|m| !binds.contains(&m.point))
        .filter(|m| {
            // A restore's fresh /dev/shm, staged on the host while another container started
            // (see `shm`): transient, never the container's to keep.
            m.source == super::shm::STAGING_SOURCE
                || !host
                    .iter()
                    .any(|h| h.point == m.point && h.fstype == m.fstype)
        })
        .map(|m| m.point.clone())
        .collect();
    gone.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    gone.dedup();
    gone
}

/// Unmounts `points` inside the mount namespace of process `pid`, from a forked child (the
/// caller's own namespace, root and working directory stay as they are).
#[allow(unsafe_code)]
pub fn unmount_in(pid: i32, points: &[PathBuf]) -> std::io::Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    // SAFETY: called from the single-threaded monitor; the child only makes syscalls and
    // exits.
    match unsafe { crate::sys::fork() }? {
        None => {
            let ok = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
                && points.iter().all(|p| {
                    matches!(
                        nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH),
                        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT)
                    )
                });
            crate::sys::exit_now(if ok { 0 } else { 1 })
        }
        Some(child) => match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
            other => Err(std::io::Error::other(format!(
                "unmount in the container's namespace: {other:?}"
            ))),
        },
    }
}

/// Errors classifying a container's mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("read the container's mount table (/proc/{pid}/mountinfo): {source}")]
    Read { pid: i32, source: std::io::Error },
    #[error("the container has a mount at {0:?}, whose name CRIU's --external cannot express")]
    Unnamable(PathBuf),
}

/// The external mounts of a container, from its mount table: everything but its root and the
/// mounts it made itself. `host_of` maps a mount point inside to the host path bound there at
/// restore (for a host-tree container, the same path).
pub fn externals(
    table: &[MountEntry],
    layout: Layout,
    host_of: impl Fn(&Path) -> PathBuf,
) -> Result<Vec<ExtMount>, MountError> {
    let root = table.iter().find(|m| m.point == Path::new("/"));
    let mut out = Vec::new();
    for m in table {
        if Some(m) == root || layout.own(m) {
            continue;
        }
        let s = m.point.to_string_lossy();
        // CRIU parses mnt[PATH]:KEY; these characters would end PATH early.
        if s.contains(']') || s.contains(':') || s.contains(',') {
            return Err(MountError::Unnamable(m.point.clone()));
        }
        out.push(ExtMount {
            key: format!("m{}", out.len()),
            inside: m.point.clone(),
            host: host_of(&m.point),
        });
    }
    Ok(out)
}

/// Where the file the container sees at `inside` lives on the host: through the deepest mount
/// holding it, which is the container's root (`root` on the host), a carried-in mount, or one
/// the container made for itself (`None`: its content is in the dump, and cannot move on).
pub fn host_path(
    table: &[MountEntry],
    ext: &[ExtMount],
    root: &Path,
    inside: &Path,
) -> Option<PathBuf> {
    let mount = table
        .iter()
        .filter(|m| inside.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())?;
    let rest = inside.strip_prefix(&mount.point).ok()?;
    if mount.point == Path::new("/") {
        return Some(root.join(rest));
    }
    ext.iter()
        .find(|e| e.inside == mount.point)
        .map(|e| e.host.join(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_found_through_its_mount() {
        let t = parse_mountinfo(HOST_TREE);
        let e = externals(&t, Layout::HostTree, |p| p.to_path_buf()).unwrap();
        let root = Path::new("/");
        assert_eq!(
            host_path(&t, &e, root, Path::new("/home/u/db")),
            Some(PathBuf::from("/home/u/db"))
        );
        // the container's own /dev/shm is in the dump; the host's /dev is carried in
        assert_eq!(host_path(&t, &e, root, Path::new("/dev/shm/seg")), None);
        assert_eq!(
            host_path(&t, &e, root, Path::new("/dev/null")),
            Some(PathBuf::from("/dev/null"))
        );
        // a rootfs container's root, and a volume bound from elsewhere
        let vol = vec![ExtMount {
            key: "m0".into(),
            inside: "/data".into(),
            host: "/srv/vol".into(),
        }];
        let t2 = parse_mountinfo(
            "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 254:0 /srv/vol /data rw - ext4 /dev/vda rw\n",
        );
        assert_eq!(
            host_path(&t2, &vol, Path::new("/r"), Path::new("/etc/x")),
            Some(PathBuf::from("/r/etc/x"))
        );
        assert_eq!(
            host_path(&t2, &vol, Path::new("/r"), Path::new("/data/a/b")),
            Some(PathBuf::from("/srv/vol/a/b"))
        );
    }

    const HOST_TREE: &str = "\
54 53 254:0 / / rw,relatime - ext4 /dev/vda rw
55 54 0:25 / /mnt/with\\040space ro,nosuid - tmpfs x ro
57 54 0:22 / /sys rw,relatime - sysfs sysfs rw
58 57 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
59 58 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
69 54 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
72 69 0:51 / /dev/pts rw,relatime - devpts devpts rw,mode=620,ptmxmode=666
70 69 0:52 / /dev/shm rw,relatime - tmpfs shm rw
73 54 254:0 /var/lib/stasis/init /var/lib/stasis/init ro,relatime - ext4 /dev/vda rw
56 54 0:53 / /proc rw,relatime - proc proc rw
";

    #[test]
    fn mountinfo_parses_with_escapes() {
        let t = parse_mountinfo(HOST_TREE);
        assert_eq!(t.len(), 10);
        assert_eq!(t[1].point, Path::new("/mnt/with space"));
        assert_eq!(t[4].fstype, "cgroup");
        assert_eq!((t[4].id, t[4].parent), (59, 58));
    }

    #[test]
    fn a_host_tree_declares_everything_it_did_not_make() {
        let t = parse_mountinfo(HOST_TREE);
        let e = externals(&t, Layout::HostTree, |p| p.to_path_buf()).unwrap();
        let inside: Vec<&str> = e.iter().map(|m| m.inside.to_str().unwrap()).collect();
        assert_eq!(
            inside,
            vec![
                "/mnt/with space",
                "/sys",
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/cpu",
                "/dev",
                "/var/lib/stasis/init"
            ]
        );
        assert_eq!(e[0].key, "m0");
        assert_eq!(e[5].host, Path::new("/var/lib/stasis/init"));
    }

    #[test]
    fn a_rootfs_owns_its_dev_sys_and_tmp() {
        let t = parse_mountinfo(
            "1 0 254:0 /r / rw - ext4 /dev/vda rw\n\
             2 1 0:5 / /proc rw - proc proc rw\n\
             3 1 0:6 / /sys ro - sysfs sysfs ro\n\
             4 1 0:7 / /dev rw - tmpfs tmpfs rw\n\
             5 4 0:8 / /dev/pts rw - devpts devpts rw\n\
             6 1 0:9 / /tmp rw - tmpfs tmpfs rw\n\
             7 1 254:0 /data /data rw - ext4 /dev/vda rw\n",
        );
        let e = externals(&t, Layout::Rootfs, |p| {
            Path::new("/host").join(p.strip_prefix("/").unwrap())
        })
        .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].inside, Path::new("/data"));
        assert_eq!(e[0].host, Path::new("/host/data"));
    }

    #[test]
    fn mounts_the_host_dropped_are_found_deepest_first() {
        let c = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 x rw\n2 1 0:5 / /proc rw - proc proc rw\n\
             3 1 0:9 / /tmp/x rw - tmpfs t rw\n4 3 0:10 / /tmp/x/y rw - tmpfs t rw\n\
             5 1 0:11 / /sys rw - sysfs s rw\n",
        );
        let host = parse_mountinfo("1 0 8:1 / / rw - ext4 x rw\n5 1 0:11 / /sys rw - sysfs s rw\n");
        let gone = gone_from_host(&c, &host, Layout::HostTree, &[]);
        assert_eq!(
            gone,
            vec![PathBuf::from("/tmp/x/y"), PathBuf::from("/tmp/x")]
        );
        assert!(gone_from_host(&c, &host, Layout::Rootfs, &[]).is_empty());
        // the container's own binds are not the host's to drop
        let gone = gone_from_host(&c, &host, Layout::HostTree, &[PathBuf::from("/tmp/x")]);
        assert_eq!(gone, vec![PathBuf::from("/tmp/x/y")]);
    }

    #[test]
    fn another_restores_staged_dev_shm_is_dropped_even_while_the_host_has_it() {
        let staged = "1 0 8:1 / / rw - ext4 x rw\n\
             2 1 0:5 / /dev/shm rw - tmpfs stasis-shm-staging rw\n\
             3 1 0:6 / /r/run/shm.other rw - tmpfs stasis-shm-staging rw\n\
             4 1 0:7 / /sys rw - sysfs sysfs rw\n";
        let c = parse_mountinfo(staged);
        assert_eq!(c[2].source, super::super::shm::STAGING_SOURCE);
        // the host still has it: it is dropped all the same; the container's own /dev/shm
        // (a bind of its own restore's staging) stays
        let host = parse_mountinfo(staged);
        assert_eq!(
            gone_from_host(&c, &host, Layout::HostTree, &[]),
            vec![PathBuf::from("/r/run/shm.other")]
        );
    }

    #[test]
    fn a_name_criu_cannot_take_is_refused() {
        let t = parse_mountinfo("1 0 8:1 / / rw - ext4 x rw\n2 1 8:1 / /a]b rw - ext4 x rw\n");
        assert!(matches!(
            externals(&t, Layout::HostTree, |p| p.to_path_buf()),
            Err(MountError::Unnamable(_))
        ));
    }
}
