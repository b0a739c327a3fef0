//! stasis as CRIU's action script (`--action-script`): CRIU execs it without arguments (so
//! it is invoked through a link whose name says what it is) at each stage of a dump, with
//! `CRTOOLS_SCRIPT_ACTION` set. At `post-dump` every image is written and the tree is
//! still frozen: the hook marks the images complete (so a CRIU killed after that point leaves
//! a generation stasis can keep), copies the files declared for snapshot and records the state
//! of the files the job may write, consistent with the memory just dumped. A migration's runs
//! are gated instead (see [`super::gate`]).
//!
//! The same answers ([`answer`]) serve CRIU's RPC mode, where CRIU asks the monitor over its
//! socket instead of exec'ing this script (see [`super::rpc`]); the script remains for an
//! argv that CRIU's configuration file cannot carry.

use std::path::{Path, PathBuf};

/// The marker the post-dump hook leaves in a finished image directory.
pub const COMPLETE: &str = ".images-complete";
/// Environment: the image directory of the dump.
pub const ENV_DIR: &str = "STASIS_DUMP_DIR";
/// Environment: files to snapshot, `SRC\tDST` per line.
pub const ENV_SNAPSHOT: &str = "STASIS_SNAPSHOT";
/// Environment: files whose state to record for the restore's comparison, `INSIDE\tHOST` per
/// line (see `crate::store::divergence`).
pub const ENV_WATCH: &str = "STASIS_WATCH";
/// Environment: the container's /dev/shm (seen from the host), declared external because it
/// was empty; the hook fails the dump if it is no longer (see `crate::container::shm`).
pub const ENV_SHM_EMPTY: &str = "STASIS_SHM_EMPTY";

/// True when the post-dump hook ran for `dir`: CRIU wrote every image there.
pub fn images_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

/// True when a binary invoked as `argv0` is CRIU's action script (see
/// `crate::store::init_copies::hook`).
pub fn invoked_as_hook(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| {
        n.to_string_lossy()
            .starts_with(crate::store::init_copies::HOOK_PREFIX)
    })
}

/// Runs the hook; returns the exit code CRIU sees (non-zero fails the dump).
pub fn run() -> i32 {
    let action = std::env::var("CRTOOLS_SCRIPT_ACTION").unwrap_or_default();
    match answer(&action, |k| std::env::var(k).ok(), &mark_complete) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stasis criu-hook: {e}");
            1
        }
    }
}

/// What stasis does at CRIU's stage `action`, with its settings read through `var`: as the
/// action script, or in the monitor when CRIU notifies it over RPC (see [`super::rpc`]). An
/// error fails CRIU's run. `mark` marks a dump's images complete, last of the post-dump work
/// ([`mark_complete`], or that behind a check that the run still waits for it).
pub fn answer(
    action: &str,
    var: impl Fn(&str) -> Option<String>,
    mark: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<(), String> {
    // A migration's dump or restore waits here for the monitor's verdict.
    if let Some(sock) = var(super::gate::ENV_GATE) {
        if super::gate::gated(action) {
            return match super::gate::wait(Path::new(&sock), action) {
                0 => Ok(()),
                _ => Err(format!("the gate at {action} said stop")),
            };
        }
        if action == "post-resume" {
            super::gate::resumed(Path::new(&sock));
        }
        return Ok(());
    }
    if action != "post-dump" {
        return Ok(());
    }
    post_dump(var, mark)
}

/// Marks the images in `dir` complete: every image is written (see [`images_complete`]).
pub fn mark_complete(dir: &Path) -> Result<(), String> {
    std::fs::write(dir.join(COMPLETE), b"").map_err(|e| format!("{}: {e}", dir.display()))
}

/// The post-dump work, with its settings read through `var` (the environment of the action
/// script, or the monitor's own list when CRIU notifies it over RPC, see [`super::rpc`]).
/// An error fails the dump, and CRIU resumes the tree.
pub fn post_dump(
    var: impl Fn(&str) -> Option<String>,
    mark: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let Some(dir) = var(ENV_DIR).map(PathBuf::from) else {
        return Ok(());
    };
    if let Some(shm) = var(ENV_SHM_EMPTY).map(PathBuf::from) {
        if !crate::container::shm::is_empty(&shm) {
            // Its content is not in the images: the monitor dumps once more with it.
            let busy = dir.join(crate::container::shm::BUSY);
            std::fs::write(&busy, b"").map_err(|e| format!("{}: {e}", busy.display()))?;
            return Err(format!(
                "{} is no longer empty: dumping again with its content",
                shm.display()
            ));
        }
    }
    if let Some(list) = var(ENV_SNAPSHOT) {
        for line in list.lines().filter(|l| !l.is_empty()) {
            let Some((src, dst)) = line.split_once('\t') else {
                continue;
            };
            crate::store::snapshot::copy_one(Path::new(src), Path::new(dst))
                .map_err(|e| format!("snapshot {src}: {e}"))?;
        }
    }
    if let Some(list) = var(ENV_WATCH) {
        let records =
            crate::store::divergence::record(&crate::store::divergence::decode_list(&list));
        crate::store::divergence::write(&dir, &records).map_err(|e| e.to_string())?;
    }
    mark(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_is_known_by_its_name() {
        assert!(invoked_as_hook(std::ffi::OsStr::new(
            "/var/lib/stasis/init/criu-hook-ab"
        )));
        assert!(!invoked_as_hook(std::ffi::OsStr::new("/usr/bin/stasis")));
        assert!(!invoked_as_hook(std::ffi::OsStr::new("stasis-init")));
    }
}
