//! A container's /dev/shm across a dump and a restore.
//!
//! Every container mounts a tmpfs of its own on /dev/shm (it has its own IPC namespace).
//! CRIU dumps a tmpfs by running `tar | gzip` over it while the tree is frozen, and restores
//! it with `tar` again: 5 to 15 ms of frozen time per dump and several ms per restore, for a
//! directory that is almost always empty. So when it is empty at the dump, stasis declares it
//! external (`--external mnt[/dev/shm]:shm`) and the restore binds a fresh tmpfs there, made
//! with the same options: the same empty /dev/shm, without tar.
//!
//! "Empty" must hold while the tree is frozen, not only when stasis looked: the post-dump
//! hook checks again and fails the dump (leaving [`BUSY`] behind) if the job created a file
//! in between; the checkpoint then runs once more with the content dumped by CRIU. A file
//! the job unlinked but still holds is not in the directory: CRIU keeps it as a ghost file in
//! the images and recreates it in the restored mount, as for any mount.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// CRIU's key for the external /dev/shm.
pub const KEY: &str = "shm";
/// The mount point inside the container.
pub const POINT: &str = "/dev/shm";
/// The source of a staged tmpfs: a container that starts while one is mounted on the host
/// copies it into its mount table; a dump recognises it by this name and unmounts it there
/// (`mounts::gone_from_host`) instead of declaring a mount that is about to vanish.
pub const STAGING_SOURCE: &str = "stasis-shm-staging";
/// Left in the image directory by a hook that found /dev/shm no longer empty.
pub const BUSY: &str = ".shm-busy";

/// How a container's /dev/shm tmpfs is mounted: the same at start and when a restore makes
/// it afresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmMount {
    /// tmpfs mount data.
    pub data: String,
    pub noexec: bool,
}

impl ShmMount {
    /// A container on the host's filesystem: like the host's /dev/shm.
    pub fn host_tree() -> Self {
        ShmMount {
            data: "mode=1777".into(),
            noexec: false,
        }
    }

    /// A rootfs container: bounded, as runc's default.
    pub fn rootfs() -> Self {
        ShmMount {
            data: "mode=1777,size=65536k".into(),
            noexec: true,
        }
    }

    pub fn flags(&self) -> nix::mount::MsFlags {
        use nix::mount::MsFlags as F;
        let f = F::MS_NOSUID | F::MS_NODEV;
        if self.noexec {
            f | F::MS_NOEXEC
        } else {
            f
        }
    }
}

/// True when `dir` has no entries (an unreadable directory is not known to be empty).
pub fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_none())
}

/// A fresh tmpfs on the host for a restore to bind as the container's /dev/shm. Dropping it
/// detaches it from the host: the restored container's bind keeps the filesystem alive.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn staging_path(runtime: &Path, name: &str) -> PathBuf {
    runtime.join(format!("shm.{name}"))
}

/// Mounts the tmpfs at `runtime/shm.NAME` (one restore per workload runs at a time; a
/// leftover of a monitor that died mid-restore is detached first).
pub fn stage(runtime: &Path, name: &str, m: &ShmMount) -> Result<Staged, String> {
    let path = staging_path(runtime, name);
    crate::store::atomic::mkdir_p(&path, 0o700).map_err(|e| e.to_string())?;
    detach(&path);
    nix::mount::mount(
        Some(STAGING_SOURCE),
        &path,
        Some("tmpfs"),
        m.flags(),
        Some(m.data.as_str()),
    )
    .map_err(|e| format!("mount a tmpfs for /dev/shm on {}: {e}", path.display()))?;
    Ok(Staged { path })
}

/// Detaches and removes the staging tmpfs a monitor killed mid-restore left on the host.
/// Called with the workload lock held (CRIU, which holds it during a restore, is done).
pub fn detach_leftover(runtime: &Path, name: &str) {
    drop(Staged {
        path: staging_path(runtime, name),
    });
}

/// Detaches whatever is mounted at `path` (nothing: EINVAL, fine).
fn detach(path: &Path) {
    use nix::mount::MntFlags as M;
    while nix::mount::umount2(path, M::MNT_DETACH | M::UMOUNT_NOFOLLOW).is_ok() {}
}

impl Drop for Staged {
    fn drop(&mut self) {
        detach(&self.path);
        // Only an empty mount point is removed: never anything below a mount.
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptiness() {
        let d = tempfile::tempdir().unwrap();
        assert!(is_empty(d.path()));
        std::fs::write(d.path().join("seg"), b"x").unwrap();
        assert!(!is_empty(d.path()));
        assert!(!is_empty(&d.path().join("missing")));
    }

    #[test]
    fn options_per_layout() {
        use nix::mount::MsFlags as F;
        assert!(!ShmMount::host_tree().flags().contains(F::MS_NOEXEC));
        assert!(ShmMount::rootfs().flags().contains(F::MS_NOEXEC));
        assert!(ShmMount::rootfs().data.contains("size="));
    }

    #[test]
    fn a_staged_tmpfs_is_detached_and_removed() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let s = stage(d.path(), "job", &ShmMount::host_tree()).unwrap();
        let p = s.path().to_path_buf();
        std::fs::write(p.join("seg"), b"x").unwrap();
        drop(s);
        assert!(!p.exists(), "{} left behind", p.display());
        // a leftover (its monitor died) goes the same way, and nothing there is fine too
        let s = stage(d.path(), "job", &ShmMount::host_tree()).unwrap();
        std::mem::forget(s);
        detach_leftover(d.path(), "job");
        assert!(!p.exists(), "{} left behind", p.display());
        detach_leftover(d.path(), "other");
        // the directory below was never written: the file lived on the tmpfs
        assert!(is_empty(d.path()));
    }
}
