//! Which mode a migration runs in, and what it reports.
//!
//! Default (no `--mode`): post-copy where both hosts' CRIU can use userfaultfd, else
//! stop-and-copy streaming. An explicit mode the hosts cannot run is refused with the reason
//! (never silently changed). Pre-copy needs dirty-memory tracking on both sides.

use crate::protocol::migrate::Mode;
use serde::Serialize;

/// What one host's CRIU supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub uffd: bool,
    pub dirty_track: bool,
}

/// The mode to run: `wish` (None: the default) given what each side supports.
pub fn choose(
    wish: Option<Mode>,
    here: Features,
    there: Features,
    dest: &str,
) -> Result<Mode, String> {
    let lacks = |what: &str, h: bool, t: bool| -> String {
        match (h, t) {
            (false, false) => format!("neither this host nor {dest} has {what}"),
            (false, true) => format!("this host lacks {what}"),
            _ => format!("{dest} lacks {what}"),
        }
    };
    match wish {
        None if here.uffd && there.uffd => Ok(Mode::PostCopy),
        None | Some(Mode::Stream) => Ok(Mode::Stream),
        Some(Mode::PostCopy) if here.uffd && there.uffd => Ok(Mode::PostCopy),
        Some(Mode::PostCopy) => Err(format!(
            "post-copy needs userfaultfd on both hosts and {} (`criu check --feature uffd-noncoop`): use --mode stream",
            lacks("it", here.uffd, there.uffd)
        )),
        Some(Mode::PreCopy) if !(here.dirty_track && there.dirty_track) => Err(format!(
            "pre-copy needs dirty-memory tracking on both hosts and {} (`criu check --feature mem_dirty_track`; soft-dirty is off in this kernel): use --mode post-copy or stream",
            lacks("it", here.dirty_track, there.dirty_track)
        )),
        Some(Mode::PreCopy) => Err("pre-copy is not implemented yet: use --mode post-copy or stream".into()),
    }
}

/// Durations of the phases of one migration, in ms.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Phases {
    /// ssh to the target and the handshake (the job runs on).
    pub connect_ms: f64,
    /// From the freeze to the images written (stream: the pages are on the target too).
    pub dump_ms: f64,
    /// The images (and the log, events, sessions) copied to the target.
    pub copy_ms: f64,
    /// From the copy's end to the job held restored on the target.
    pub restore_ms: f64,
    /// From the target's "ready" to the job running there (commit round trip).
    pub switch_ms: f64,
    /// Post-copy: from running on the target to the last page there.
    pub pages_ms: f64,
}

/// What `stasis migrate` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub dest: String,
    pub mode: Mode,
    pub phases: Phases,
    /// From the freeze on the source to running on the target, as the source's clock sees it.
    pub downtime_ms: f64,
    pub total_ms: f64,
    /// Bytes of images and job files copied over the control channel.
    pub image_bytes: u64,
    /// Bytes of memory sent over the page channel.
    pub page_bytes: u64,
    /// The job's init on the target.
    pub pid: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const YES: Features = Features {
        uffd: true,
        dirty_track: false,
    };
    const NO: Features = Features {
        uffd: false,
        dirty_track: false,
    };

    #[test]
    fn post_copy_is_the_default_where_both_can() {
        assert_eq!(choose(None, YES, YES, "b"), Ok(Mode::PostCopy));
        assert_eq!(choose(None, YES, NO, "b"), Ok(Mode::Stream));
        assert_eq!(choose(None, NO, YES, "b"), Ok(Mode::Stream));
        assert_eq!(choose(Some(Mode::Stream), YES, YES, "b"), Ok(Mode::Stream));
    }

    #[test]
    fn an_explicit_mode_is_never_changed_silently() {
        let e = choose(Some(Mode::PostCopy), YES, NO, "b").unwrap_err();
        assert!(
            e.contains("b lacks it") && e.contains("--mode stream"),
            "{e}"
        );
        let e = choose(Some(Mode::PreCopy), YES, YES, "b").unwrap_err();
        assert!(e.contains("dirty-memory tracking"), "{e}");
        let both = Features {
            uffd: true,
            dirty_track: true,
        };
        assert!(choose(Some(Mode::PreCopy), both, both, "b")
            .unwrap_err()
            .contains("not implemented"));
    }
}
