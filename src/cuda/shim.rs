//! The `cuda-checkpoint` command CRIU's cuda plugin runs: a directory holding a link of that
//! name to the stasis binary, put first on the PATH stasis gives CRIU. The plugin finds the
//! command with `execvp` and stasis answers in its cuda-checkpoint mode (`super::cli`), so no
//! NVIDIA tool needs to be installed.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The command's name, which is also how stasis recognises the mode in `argv[0]`.
pub const COMMAND: &str = "cuda-checkpoint";

/// Making the command's directory failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", .path.display())]
pub struct ShimError {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The OS's reason.
    pub source: io::Error,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ShimError {
    let path = path.to_path_buf();
    move |source| ShimError { op, path, source }
}

/// Makes `dir` (stasis's own directory: created if missing, mode 0755) hold
/// `cuda-checkpoint`, a link to the running stasis binary, and returns the link's path.
/// Idempotent; a link to another binary (an older stasis) is replaced atomically, so a CRIU
/// running meanwhile finds one or the other.
///
/// CRIU runs the command as root: `dir` must be writable by root only (a directory under the
/// state root's runtime directory is). A caller that wants the link to survive an upgrade of
/// the installed binary can point it at the init store's copy with [`install_for`].
pub fn install(dir: &Path) -> Result<PathBuf, ShimError> {
    let exe = std::env::current_exe().map_err(err("find", Path::new("/proc/self/exe")))?;
    install_for(dir, &running_binary(exe))
}

/// The path of the running binary, also after it was replaced on disk (an upgrade while a
/// monitor runs): /proc/self/exe then reads "PATH (deleted)", and PATH holds the new stasis,
/// which has the mode too.
fn running_binary(exe: PathBuf) -> PathBuf {
    let s = exe.to_string_lossy();
    match s.strip_suffix(" (deleted)") {
        Some(p) if !exe.exists() => PathBuf::from(p),
        _ => exe,
    }
}

/// [`install`] with the link pointing at `exe`.
pub fn install_for(dir: &Path, exe: &Path) -> Result<PathBuf, ShimError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(err("create", dir))?;
    // The directory is stasis's own; whatever the umask, CRIU must be able to search it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(err("chmod", dir))?;
    let link = dir.join(COMMAND);
    if fs::read_link(&link).is_ok_and(|t| t == exe) {
        return Ok(link);
    }
    let tmp = dir.join(format!(".{COMMAND}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(exe, &tmp).map_err(err("link", &tmp))?;
    fs::rename(&tmp, &link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err("rename into", &link)(e)
    })?;
    Ok(link)
}

/// The PATH to give CRIU: `dir` first, then `path` (the caller's PATH, or a default when it
/// has none), so the plugin's `cuda-checkpoint` is stasis whatever else is installed.
pub fn criu_path(dir: &Path, path: Option<OsString>) -> OsString {
    let rest = path
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&rest).filter(|p| p != dir));
    // join_paths fails only for a directory containing ':', which split_paths cannot yield,
    // and `dir` is ours; fall back to `dir` alone rather than lose it.
    std::env::join_paths(dirs).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_a_link_and_replaces_a_stale_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("run/bin");
        let link = install_for(&dir, Path::new("/opt/stasis-old")).unwrap();
        assert_eq!(link, dir.join("cuda-checkpoint"));
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let me = std::env::current_exe().unwrap();
        let again = install(&dir).unwrap();
        assert_eq!(fs::read_link(&again).unwrap(), me);
        install(&dir).unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cuda-checkpoint"], "no temp file left behind");
    }

    #[test]
    fn an_upgraded_binary_is_linked_at_its_path() {
        let t = tempfile::tempdir().unwrap();
        let old = t.path().join("stasis (deleted)");
        assert_eq!(running_binary(old), t.path().join("stasis"));
        let me = std::env::current_exe().unwrap();
        assert_eq!(running_binary(me.clone()), me);
    }

    #[test]
    fn criu_finds_the_command_first() {
        let p = criu_path(
            Path::new("/run/stasis/bin"),
            Some("/usr/bin:/run/stasis/bin:/bin".into()),
        );
        assert_eq!(p, "/run/stasis/bin:/usr/bin:/bin");
        let p = criu_path(Path::new("/r/bin"), None);
        assert!(p.to_string_lossy().starts_with("/r/bin:/usr/local/sbin:"));
    }
}
