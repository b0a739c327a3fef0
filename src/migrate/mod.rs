//! Live migration: `stasis migrate NAME DEST` moves a running job to another host over ssh.
//!
//! Three processes on each side take part:
//! - source: the `stasis migrate` command ([`source`]), which drives everything; the job's
//!   monitor, which dumps the job gated (CRIU waits, the job frozen, in its post-dump script
//!   until the command says commit or abort); CRIU, whose page channel is an ssh channel;
//! - target: `stasis __migrate-target` ([`target`]), started by ssh, which checks that it can
//!   take the job, claims the name, receives the images and starts a new monitor that
//!   restores the job gated (held, restored but not running, in CRIU's post-restore script);
//!   `stasis __migrate-pages`, the other end of the page channel.
//!
//! The hand-over is two-phase. Until the source's monitor has recorded the commit, any
//! failure (ssh drops, the target refuses, its restore fails) resumes the job on the source:
//! CRIU resumes a tree whose post-dump script fails, and a target whose restore is not let go
//! kills what it restored. Once the commit is recorded, the job is the target's.
//!
//! Post-copy's window: after the commit the job runs on the target while part of its memory
//! still lives on the source, in CRIU's page pipes (the source's tree itself is killed at
//! once, so it can never run twice). Should the page channel break in that window, the
//! target cannot complete the job's memory: it kills the job rather than let it read zeroes,
//! records `lazy-pages-lost` in its events, and the command exits with
//! [`CODE_LOST`]. Neither side then runs the job, and both say so; the source's generations
//! stay, so `stasis rm` and a restore from an older generation are the way back.

pub mod deadline;
pub mod mode;
pub mod source;
pub mod ssh;
pub mod target;
pub mod wire;

/// Exit code of `stasis migrate` when the job was not moved and runs on the source as before
/// (every failure before the hand-over).
pub const CODE_ROLLED_BACK: i32 = crate::exit::CODE_STASIS_ERROR;
/// Exit code of `stasis migrate` when the hand-over happened but the job did not survive it
/// (post-copy: its memory could not be fetched) or its fate on the target is not confirmed.
pub const CODE_LOST: i32 = 3;

/// A failed migration, in one line.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Nothing was touched: the job runs here as before.
    #[error("{0}")]
    RolledBack(String),
    /// The job was handed over and then lost, or its state on the target is unknown.
    #[error("{0}")]
    AfterHandOver(String),
}

impl MigrateError {
    /// The exit code for it.
    pub fn code(&self) -> i32 {
        match self {
            MigrateError::RolledBack(_) => CODE_ROLLED_BACK,
            MigrateError::AfterHandOver(_) => CODE_LOST,
        }
    }
}

/// A random token naming one migration on both sides.
pub fn token() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
