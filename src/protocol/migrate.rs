//! Messages of a migration. Three links carry them, each a seqpacket socketpair or socket
//! with one JSON document per packet (the envelope of [`super::encode`]):
//! - `stasis migrate` ↔ the source's monitor (a socketpair handed over with the request);
//! - the target's `__migrate-target` ↔ the target's new monitor (likewise);
//! - CRIU's action script ↔ the monitor that runs CRIU (a socket the monitor listens on),
//!   which is how a dump or a restore waits, frozen, for the verdict.
//!
//! The ssh link between the two hosts carries [`crate::migrate::wire`] frames, which embed
//! the same [`Step`]s.

use crate::store::generations::Manifest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How memory moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Everything but memory is dumped and moved; the job runs on the target at once and its
    /// pages follow on fault and in the background (userfaultfd on the target).
    PostCopy,
    /// Stop-and-copy: the whole dump streams to the target (pages through CRIU's page server
    /// on the target, the rest over the control channel), then it runs there.
    Stream,
    /// Iterative pre-copy; needs dirty-memory tracking (soft-dirty), which this kernel lacks.
    PreCopy,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::PostCopy => "post-copy",
            Mode::Stream => "stream",
            Mode::PreCopy => "pre-copy",
        }
    }
}

/// What the source's monitor is asked to do (fds: the page channel, then the step link).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutOpts {
    /// The destination as the user named it (for the record and the clients' notice).
    pub dest: String,
    pub mode: Mode,
    /// CRIU options given as flags, on top of the spec's `criu:`.
    #[serde(default)]
    pub options: crate::criu::CriuOptions,
    #[serde(default)]
    pub criu: Option<crate::criu::Criu>,
}

/// What a new monitor on the target is asked to do (fds: the step link, then, for post-copy,
/// the page channel).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InOpts {
    /// The source, as the target knows it (the ssh client's address).
    pub from: String,
    pub mode: Mode,
    /// Names this migration on both sides (a reconnecting source proves it with it).
    pub token: String,
    /// The images (and, stream, the pages the page server wrote).
    pub stage: PathBuf,
    pub manifest: Manifest,
    #[serde(default)]
    pub criu: Option<crate::criu::Criu>,
}

/// One step of the two-phase hand-over. Before `Commit` the job belongs to the source (which
/// resumes it on any failure); from `Commit` on it belongs to the target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Source monitor → CLI: the images are written and the job is frozen in CRIU's
    /// post-dump script. `frozen_at`: ms since the epoch when CRIU was started.
    Dumped {
        dir: PathBuf,
        manifest: Box<Manifest>,
        frozen_at: u64,
    },
    /// Target → source: restored and held in CRIU's post-restore script, not yet running.
    Ready,
    /// The source hands the job over (it will never resume it).
    Commit,
    /// Either side gives up before the commit; the job stays (or goes back) on the source.
    Abort { reason: String },
    /// Source monitor → CLI: the commit is recorded and the source's CRIU released.
    Committed,
    /// Target → source: the job runs there.
    Running {
        pid: i32,
        restore_ms: f64,
        /// Stream: the bytes of memory the page server received.
        #[serde(default)]
        page_bytes: u64,
        /// How long ago CRIU resumed the job (its post-resume script said when): the job ran
        /// from then on, while CRIU ended and the target took it over, so the source counts
        /// the downtime to then.
        #[serde(default)]
        resumed_ms_ago: f64,
    },
    /// The post-copy window ended: every page is on the target (`ok`), or not.
    PagesDone {
        ok: bool,
        reason: String,
        bytes: u64,
    },
    /// Something failed before `Ready`.
    Failed { reason: String },
    /// Target → source, after an abort sent over `__migrate-resume`: nothing of that
    /// migration is left on the target.
    Dropped,
}

/// CRIU's action script ↔ the monitor gating it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "gate", rename_all = "snake_case")]
pub enum GateMsg {
    /// The script runs at `action` (post-dump, post-restore) and waits.
    Waiting { action: String },
    /// Let CRIU go on (exit 0).
    Go,
    /// Fail CRIU's run (exit 1): a dump resumes the tree, a restore kills what it restored.
    Stop,
    /// The script runs at `post-resume` (the restored job runs from now on): when, on
    /// CLOCK_MONOTONIC (ns). It waits for nothing.
    Resumed { mono_ns: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_in_the_envelope() {
        for s in [
            Step::Ready,
            Step::Commit,
            Step::Abort { reason: "x".into() },
            Step::Running {
                pid: 7,
                restore_ms: 1.5,
                page_bytes: 0,
                resumed_ms_ago: 2.5,
            },
        ] {
            let b = super::super::encode(&s).unwrap();
            assert_eq!(super::super::decode::<Step>(&b).unwrap(), s);
        }
        assert_eq!(
            serde_json::to_string(&Mode::PostCopy).unwrap(),
            "\"post-copy\""
        );
    }
}
