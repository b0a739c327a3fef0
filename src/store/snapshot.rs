//! File snapshots kept with a generation (`snapshot:` in the spec): copies of the job's data
//! files (or its whole rootfs) taken while CRIU holds the tree frozen, so a restore can put
//! back files that match the memory it restores. Copies use reflinks where the filesystem has
//! them (btrfs, XFS), so a snapshot costs little until the job writes.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The directory inside a generation that holds its snapshot.
pub const DIR: &str = "snapshot";

/// `FICLONE`: share the source's extents (a reflink).
const FICLONE: libc::c_ulong = 0x4004_9409;

#[allow(unsafe_code)]
fn reflink(src: &fs::File, dst: &fs::File) -> io::Result<()> {
    // SAFETY: ioctl with two valid fds and no pointers.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn copy_file(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let from = fs::File::open(src)?;
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    if reflink(&from, &to).is_err() {
        let mut from = from;
        let mut to = to;
        io::copy(&mut from, &mut to)?;
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(())
}

/// Copies `src` (a file, a symlink or a directory tree) to `dst`, which must not exist.
/// Ownership and modes are kept; special files (devices, sockets, fifos) are skipped: they
/// hold no data.
pub fn copy_one(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        fs::create_dir(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_one(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if ft.is_file() {
        copy_file(src, dst, &meta)?;
    } else {
        return Ok(());
    }
    let _ = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

/// Puts a snapshot copy back: `dst` (the job's path) becomes exactly `snap`. A directory is
/// replaced whole (files the job created after the snapshot go); the old content is moved
/// aside first and removed only once the copy is in place.
pub fn put_back(snap: &Path, dst: &Path) -> io::Result<()> {
    let aside = dst.with_file_name(format!(
        ".{}.stasis-old-{}",
        dst.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had = fs::symlink_metadata(dst).is_ok();
    if had {
        fs::rename(dst, &aside)?;
    }
    if let Err(e) = copy_one(snap, dst) {
        // Leave the job's files as they were.
        let _ = fs::remove_dir_all(dst).or_else(|_| fs::remove_file(dst));
        if had {
            let _ = fs::rename(&aside, dst);
        }
        return Err(e);
    }
    if had {
        let gone = fs::symlink_metadata(&aside)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if gone {
            fs::remove_dir_all(&aside)?;
        } else {
            fs::remove_file(&aside)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_round_trips_and_replaces_what_moved_on() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("data");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a"), b"one").unwrap();
        fs::write(src.join("sub/b"), b"two").unwrap();
        std::os::unix::fs::symlink("a", src.join("link")).unwrap();
        let snap = d.path().join("snap/data");
        copy_one(&src, &snap).unwrap();
        // the job moves on
        fs::write(src.join("a"), b"changed").unwrap();
        fs::write(src.join("new"), b"x").unwrap();
        put_back(&snap, &src).unwrap();
        assert_eq!(fs::read(src.join("a")).unwrap(), b"one");
        assert_eq!(fs::read(src.join("sub/b")).unwrap(), b"two");
        assert!(!src.join("new").exists());
        assert_eq!(fs::read_link(src.join("link")).unwrap(), Path::new("a"));
        // nothing left aside
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
