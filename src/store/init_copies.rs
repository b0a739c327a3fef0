//! The init store: immutable copies of the stasis binary that containers' init processes run
//! from, one per build, named by the binary's GNU build-id.
//!
//! init's executable is part of every checkpoint, and CRIU checks at restore that each mapped
//! file still has the size (and build-id) it had at dump. If init ran from the installed
//! binary, upgrading stasis between a dump and its restore would make every old checkpoint
//! unrestorable. A copy that never changes, at a path that does not depend on the state root,
//! keeps old checkpoints restorable across upgrades, state roots and hosts (an export archive
//! carries the copy and import puts it back at the same path).

use crate::store::atomic::{self, FsError};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The default store (host-wide, independent of `--root`).
pub const DEFAULT_DIR: &str = "/var/lib/stasis/init";
/// File name prefix of the copies.
pub const PREFIX: &str = "stasis-init-";

/// The store directory: `STASIS_INIT_DIR` or the default.
pub fn dir() -> PathBuf {
    std::env::var_os("STASIS_INIT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// An identifier for the running binary: its build-id, or (without one) its size and mtime.
pub fn build_key() -> io::Result<String> {
    if let Some(id) = crate::sys::own_build_id() {
        return Ok(id);
    }
    let m = fs::metadata("/proc/self/exe")?;
    use std::os::unix::fs::MetadataExt;
    Ok(format!("nobuildid-{}-{}", m.size(), m.mtime()))
}

/// Returns the path of the init copy for the running binary, creating it if needed.
pub fn ensure() -> Result<PathBuf, FsError> {
    let d = dir();
    let key = build_key().map_err(|e| FsError::new("identify", Path::new("/proc/self/exe"), e))?;
    let path = d.join(format!("{PREFIX}{key}"));
    if path.is_file() {
        return Ok(path);
    }
    atomic::mkdir_p(&d, 0o755)?;
    let tmp = d.join(format!(".{PREFIX}{key}.{}.tmp", std::process::id()));
    let res = (|| {
        fs::copy("/proc/self/exe", &tmp)
            .map_err(|e| FsError::new("copy /proc/self/exe to", &tmp, e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555))
            .map_err(|e| FsError::new("chmod", &tmp, e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| FsError::new("fsync", &tmp, e))?;
        publish(&tmp, &path)?;
        atomic::sync_dir(&d)
    })();
    let _ = fs::remove_file(&tmp);
    res.map(|()| path)
}

/// Puts `tmp` at `path` unless a file is already there. A link, not a rename: a rename would
/// replace a copy another process just published — and some init may already run from it,
/// which would turn its executable into a deleted ("ghost") file CRIU refuses to dump.
fn publish(tmp: &Path, path: &Path) -> Result<(), FsError> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(FsError::new("link", path, e)),
    }
}

/// File name prefix of the links CRIU runs as its action script (see `crate::criu::hook`).
pub const HOOK_PREFIX: &str = "criu-hook-";

/// The path CRIU runs as its action script: a link named `criu-hook-<build>` to the init copy
/// of the running binary (CRIU execs the script without arguments, so the name says what to
/// do). Made on first use.
pub fn hook() -> Result<PathBuf, FsError> {
    let init = ensure()?;
    let key = build_key().map_err(|e| FsError::new("identify", Path::new("/proc/self/exe"), e))?;
    let link = dir().join(format!("{HOOK_PREFIX}{key}"));
    if fs::symlink_metadata(&link).is_ok() {
        return Ok(link);
    }
    let target = init.file_name().map(PathBuf::from).unwrap_or(init.clone());
    match std::os::unix::fs::symlink(&target, &link) {
        Ok(()) => Ok(link),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(link),
        Err(e) => Err(FsError::new("symlink", &link, e)),
    }
}

/// The directory holding `cuda-checkpoint`, a link to this build's init copy, for the PATH
/// CRIU gets when it dumps or restores a GPU job (CRIU's cuda plugin runs the command from
/// PATH). Pointing at the copy, not the installed binary, keeps it working across upgrades.
pub fn cuda_shim_dir() -> Result<PathBuf, FsError> {
    let init = ensure()?;
    let key = build_key().map_err(|e| FsError::new("identify", Path::new("/proc/self/exe"), e))?;
    let bin = dir().join(format!("bin-{key}"));
    crate::cuda::shim::install_for(&bin, &init)
        .map_err(|e| FsError::new(e.op, &e.path, e.source))?;
    Ok(bin)
}

/// True when process `pid` runs one of this store's init copies (a container's init).
pub fn runs_init(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|exe| {
            exe.parent() == Some(dir().as_path())
                && exe
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX))
        })
        .unwrap_or(false)
}

/// The GNU build-id of an ELF64 little-endian executable given as bytes, as hex.
///
/// An import names the init copy it brings by its content, never by a path an archive
/// claims: the copy goes to `dir()/stasis-init-<build-id>` or nowhere.
pub fn elf_build_id(b: &[u8]) -> Option<String> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    // ELF magic, 64-bit, little-endian
    if b.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let off = usize::try_from(u64_at(ph + 0x08)?).ok()?;
        let size = usize::try_from(u64_at(ph + 0x20)?).ok()?;
        let notes = b.get(off..off.checked_add(size)?)?;
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz = u32::from_le_bytes(notes[p..p + 4].try_into().ok()?) as usize;
            let descsz = u32::from_le_bytes(notes[p + 4..p + 8].try_into().ok()?) as usize;
            let ntype = u32::from_le_bytes(notes[p + 8..p + 12].try_into().ok()?);
            let name = p + 12;
            let desc = name.checked_add(namesz.checked_add(3)? & !3)?;
            let end = desc.checked_add(descsz)?;
            if end > notes.len() {
                break;
            }
            if ntype == 3 && notes.get(name..name + namesz) == Some(b"GNU\0".as_slice()) {
                return Some(
                    notes[desc..end]
                        .iter()
                        .map(|x| format!("{x:02x}"))
                        .collect(),
                );
            }
            p = desc.checked_add(descsz.checked_add(3)? & !3)?;
        }
    }
    None
}

/// Errors installing an imported init copy.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the archive's init copy is not a stasis binary (no ELF build-id)")]
    NotStasis,
    #[error("the generation runs init from {wanted}, but this host keeps init copies in {store} (STASIS_INIT_DIR): CRIU restores a process only from the path it was dumped with")]
    OtherStore { wanted: PathBuf, store: PathBuf },
    #[error("the generation names init copy {wanted}, but the archive's copy has build-id {key}")]
    Mismatch { wanted: PathBuf, key: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Where an imported copy goes: checks that `data` is a stasis binary whose build-id names
/// exactly `wanted` inside the init store `store`, without writing anything.
pub fn import_path(store: &Path, wanted: &Path, data: &[u8]) -> Result<PathBuf, InstallError> {
    let key = elf_build_id(data).ok_or(InstallError::NotStasis)?;
    let store = store.to_path_buf();
    let path = store.join(format!("{PREFIX}{key}"));
    if wanted.parent() != Some(store.as_path()) {
        return Err(InstallError::OtherStore {
            wanted: wanted.to_path_buf(),
            store,
        });
    }
    if wanted != path {
        return Err(InstallError::Mismatch {
            wanted: wanted.to_path_buf(),
            key,
        });
    }
    Ok(path)
}

/// Installs an init copy at `path` (a path from [`import_path`], inside the store).
pub fn install(path: &Path, data: &[u8]) -> Result<(), FsError> {
    if let Ok(existing) = fs::read(path) {
        if existing == data {
            return Ok(());
        }
        return Err(FsError::new(
            "install init copy",
            path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a different file already has this name",
            ),
        ));
    }
    let d = path.parent().unwrap_or(Path::new("/"));
    atomic::mkdir_p(d, 0o755)?;
    let tmp = d.join(format!(".import.{}.tmp", std::process::id()));
    fs::write(&tmp, data).map_err(|e| FsError::new("write", &tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555))
        .map_err(|e| FsError::new("chmod", &tmp, e))?;
    let r = publish(&tmp, path);
    let _ = fs::remove_file(&tmp);
    r?;
    atomic::sync_dir(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_never_replaces_a_published_copy() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("stasis-init-x");
        fs::write(d.path().join("a"), b"first").unwrap();
        fs::write(d.path().join("b"), b"second").unwrap();
        publish(&d.path().join("a"), &path).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = fs::metadata(&path).unwrap().ino();
        publish(&d.path().join("b"), &path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            ino,
            "the published copy was replaced"
        );
        assert_eq!(fs::read(&path).unwrap(), b"first");
    }

    #[test]
    fn build_key_is_stable() {
        assert_eq!(build_key().unwrap(), build_key().unwrap());
    }

    #[test]
    fn install_is_idempotent_and_refuses_a_different_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/stasis-init-abc");
        install(&p, b"binary").unwrap();
        install(&p, b"binary").unwrap();
        assert!(install(&p, b"other").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"binary");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o555
        );
    }
}
