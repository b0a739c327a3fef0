//! Devices and terminals the job holds.
//!
//! CRIU dumps memory devices (/dev/null, /dev/zero, /dev/urandom…), terminals it has a
//! driver for (ptys, the console, /dev/tty, virtual consoles, USB and low-density serial
//! ports), tun and autofs; any other device fails the dump. A pty comes back only with its
//! master: CRIU pairs each pty it dumps with a master of the same index held by the tree, and
//! refuses a slave without one (stasis passes neither `--shell-job` nor `--orphan-pts-master`).
//! A terminal opened outside the container (its devpts is not the container's) also fails:
//! its mount is not one CRIU dumps.

use super::fds::{FdKind, OpenFd};
use super::findings::{Finding, Holder};
use super::mounts::MountView;
use super::procs::Proc;
use std::collections::HashSet;

/// `/dev/ptmx` and `/dev/pts/ptmx`: a pty master.
const PTMX: (u32, u32) = (5, 2);
/// The major of pty slaves CRIU knows (`UNIX98_PTY_SLAVE_MAJOR`).
const PTS_MAJOR: u32 = 136;

/// How CRIU treats a character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharKind {
    /// Dumped by path, like a file.
    Memory,
    /// A pty master.
    PtyMaster,
    /// A pty slave.
    PtySlave,
    /// Another terminal CRIU has a driver for.
    Tty,
    /// tun, autofs.
    Misc,
    /// The NVIDIA driver's: the cuda plugin's business.
    Gpu,
    Unsupported,
}

/// Sorts a character device as CRIU's `dump_chrdev` and `get_tty_driver` do.
pub fn char_kind(major: u32, minor: u32, path: &str) -> CharKind {
    if path.starts_with("/dev/nvidia") {
        return CharKind::Gpu;
    }
    match (major, minor) {
        (1, _) => CharKind::Memory,
        PTMX => CharKind::PtyMaster,
        (5, 0) | (5, 1) => CharKind::Tty,
        // virtual consoles are minors 1..=63; tty0 and the 8250 serial ports are not
        (4, 1..=63) => CharKind::Tty,
        // USB serial, low-density serial
        (188, _) | (204, _) => CharKind::Tty,
        (128..=135, _) => CharKind::PtyMaster,
        (PTS_MAJOR, _) => CharKind::PtySlave,
        // tun, autofs
        (10, 200) | (10, 235) => CharKind::Misc,
        _ => CharKind::Unsupported,
    }
}

/// Findings about the devices of every process of the job: `fds[i]` belongs to `procs[i]`.
pub fn findings(procs: &[Proc], fds: &[Vec<OpenFd>], mounts: &MountView) -> Vec<Finding> {
    // Masters held anywhere in the tree, by index.
    let masters: HashSet<u32> = fds
        .iter()
        .flatten()
        .filter(|f| f.kind == FdKind::CharDev)
        .filter(|f| {
            let r = f.stat.rdev;
            char_kind(libc::major(r), libc::minor(r), &f.link) == CharKind::PtyMaster
        })
        .filter_map(|f| f.info.tty_index)
        .collect();
    let mut out = Vec::new();
    for (p, fds) in procs.iter().zip(fds) {
        for f in fds.iter().filter(|f| f.kind == FdKind::CharDev) {
            let (major, minor) = (libc::major(f.stat.rdev), libc::minor(f.stat.rdev));
            let at = p.at(Holder::Fd(f.fd));
            let path = std::path::PathBuf::from(&f.link);
            match char_kind(major, minor, &f.link) {
                CharKind::Unsupported => out.push(Finding::Device {
                    at,
                    path,
                    major,
                    minor,
                }),
                CharKind::PtySlave | CharKind::PtyMaster | CharKind::Tty => {
                    let outside = f
                        .info
                        .mnt_id
                        .is_some_and(|id| mounts.judge(&at, &path, id).is_some());
                    if outside {
                        out.push(Finding::ForeignTty {
                            at,
                            path,
                            why: "it was opened outside the container".into(),
                        });
                    } else if char_kind(major, minor, "") == CharKind::PtySlave
                        && !masters.contains(&((major - PTS_MAJOR) * 256 + minor))
                    {
                        out.push(Finding::ForeignTty {
                            at,
                            path,
                            why: "its master is held outside the job".into(),
                        });
                    }
                }
                CharKind::Memory | CharKind::Misc | CharKind::Gpu => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::mounts::parse_mountinfo;
    use crate::precheck::fds::{FdInfo, Stat};

    #[test]
    fn devices_sort_like_criu() {
        assert_eq!(char_kind(1, 3, "/dev/null"), CharKind::Memory);
        assert_eq!(char_kind(5, 2, "/dev/ptmx"), CharKind::PtyMaster);
        assert_eq!(char_kind(136, 4, "/dev/pts/4"), CharKind::PtySlave);
        assert_eq!(char_kind(4, 1, "/dev/tty1"), CharKind::Tty);
        assert_eq!(char_kind(4, 64, "/dev/ttyS0"), CharKind::Unsupported);
        assert_eq!(char_kind(10, 229, "/dev/fuse"), CharKind::Unsupported);
        assert_eq!(char_kind(10, 200, "/dev/net/tun"), CharKind::Misc);
        assert_eq!(char_kind(195, 0, "/dev/nvidia0"), CharKind::Gpu);
    }

    fn chr(fd: i32, link: &str, major: u32, minor: u32, info: FdInfo) -> OpenFd {
        OpenFd {
            fd,
            link: link.into(),
            kind: FdKind::CharDev,
            stat: Stat {
                rdev: libc::makedev(major, minor),
                ..Default::default()
            },
            info,
            mqueue: false,
        }
    }

    #[test]
    fn ptys_need_their_master_and_the_containers_devpts() {
        let procs = vec![crate::precheck::procs::read_proc(std::process::id() as i32)
            .unwrap()
            .unwrap()];
        let v = MountView::build(
            &[parse_mountinfo(
                "1 0 8:1 / / rw - ext4 x rw\n2 1 0:9 / /dev/pts rw - devpts d rw\n",
            )],
            &[],
        );
        let on = |id| FdInfo {
            mnt_id: Some(id),
            ..Default::default()
        };
        let master = FdInfo {
            mnt_id: Some(2),
            tty_index: Some(0),
            ..Default::default()
        };
        let fds = vec![vec![
            chr(3, "/dev/pts/ptmx", 5, 2, master),
            chr(4, "/dev/pts/0", 136, 0, on(2)),
            chr(5, "/dev/pts/1", 136, 1, on(2)),
            chr(6, "/dev/pts/0", 136, 0, on(77)),
            chr(7, "/dev/fuse", 10, 229, on(1)),
            chr(8, "/dev/null", 1, 3, on(1)),
        ]];
        let f = findings(&procs, &fds, &v);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(matches!(&f[0], Finding::ForeignTty { why, .. } if why.contains("master")));
        assert!(
            matches!(&f[1], Finding::ForeignTty { why, .. } if why.contains("outside the container"))
        );
        assert!(matches!(
            &f[2],
            Finding::Device {
                major: 10,
                minor: 229,
                ..
            }
        ));
    }
}
