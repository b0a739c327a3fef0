//! The CRIU options a workload's checkpoints use: the spec's `criu:` key, with checkpoint
//! flags on top, resolved into the exact flags one dump runs with (which its manifest records,
//! so its restore uses the matching ones).
//!
//! Defaults are what a user of a long-running job wants: a job that holds an unlinked file, a
//! big deleted file or a lock at the instant of the dump still checkpoints.

use crate::spec::{ByteSize, Dur};
use serde::{Deserialize, Serialize};

/// The smallest ghost limit: CRIU's own default.
pub const MIN_GHOST_LIMIT: u64 = 1 << 20;
/// The largest ghost limit chosen without being asked: a bigger deleted file must be allowed
/// explicitly, since it is copied into every generation.
pub const MAX_AUTO_GHOST_LIMIT: u64 = 4 << 30;

/// CRIU options, as written in a spec (`criu:`) or given as checkpoint flags; unset fields
/// take the defaults documented on each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriuOptions {
    /// Dump established TCP connections (`--tcp-established`). Default off: a restored
    /// connection needs its addresses where it is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<bool>,
    /// A file unlinked while open is linked back under a temporary name for the dump
    /// (`--link-remap`). Default on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_remap: Option<bool>,
    /// Deleted files still open are copied into the images up to this size each
    /// (`--ghost-limit`). Default: big enough for every such file the job holds at the dump
    /// (at least 1 MiB, at most 4 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ghost_limit: Option<ByteSize>,
    /// Dump file locks (`--file-locks`). Default on: a job that holds a lock at the instant
    /// of the dump (a sqlite writer) would otherwise fail to checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_locks: Option<bool>,
    /// A unix socket connected to something outside the container is dumped as external and
    /// comes back unconnected (`--ext-unix-sk`): the job must reconnect. Default off (the
    /// dump fails and names the socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_unix_sk: Option<bool>,
    /// How long CRIU may take to freeze the whole tree (`--timeout`). Default CRIU's 10s;
    /// raise it for jobs with thousands of busy threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_timeout: Option<Dur>,
    /// Resources declared external in CRIU's own syntax (`--external`, e.g.
    /// `file[MNT_ID:INODE]`), for what stasis does not manage: at restore they must be
    /// provided as CRIU expects. Advanced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<String>,
}

impl CriuOptions {
    /// `self` with every field `over` sets taken from `over` (externals are added).
    pub fn overlay(&self, over: &CriuOptions) -> CriuOptions {
        let mut external = self.external.clone();
        external.extend(over.external.iter().cloned());
        CriuOptions {
            tcp_established: over.tcp_established.or(self.tcp_established),
            link_remap: over.link_remap.or(self.link_remap),
            ghost_limit: over.ghost_limit.or(self.ghost_limit),
            file_locks: over.file_locks.or(self.file_locks),
            ext_unix_sk: over.ext_unix_sk.or(self.ext_unix_sk),
            freeze_timeout: over.freeze_timeout.or(self.freeze_timeout),
            external,
        }
    }

    /// Every default decided; `largest_ghost` is the size of the largest deleted file the job
    /// holds open right now.
    pub fn resolve(&self, largest_ghost: u64) -> Flags {
        let auto = largest_ghost
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .clamp(MIN_GHOST_LIMIT, MAX_AUTO_GHOST_LIMIT);
        Flags {
            tcp_established: self.tcp_established.unwrap_or(false),
            link_remap: self.link_remap.unwrap_or(true),
            ghost_limit: self.ghost_limit.map(|b| b.0).unwrap_or(auto),
            file_locks: self.file_locks.unwrap_or(true),
            ext_unix_sk: self.ext_unix_sk.unwrap_or(false),
            freeze_timeout_s: self.freeze_timeout.map(|d| d.0.as_secs().max(1)),
            external: self.external.clone(),
        }
    }

    /// Checks what can be checked without CRIU.
    pub fn validate(&self) -> Result<(), String> {
        for e in &self.external {
            if e.is_empty() || e.contains(char::is_whitespace) {
                return Err(format!("criu.external {e:?} is not a CRIU external"));
            }
        }
        if self.freeze_timeout.is_some_and(|d| d.0.as_secs() == 0) {
            return Err("criu.freeze_timeout must be at least 1s".into());
        }
        Ok(())
    }
}

/// The CRIU flags one dump ran with; recorded in its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub tcp_established: bool,
    pub link_remap: bool,
    pub ghost_limit: u64,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_are_what_a_long_job_wants() {
        let f = CriuOptions::default().resolve(0);
        assert!(f.link_remap && f.file_locks && !f.tcp_established && !f.ext_unix_sk);
        assert_eq!(f.ghost_limit, MIN_GHOST_LIMIT);
        assert_eq!(f.freeze_timeout_s, None);
    }

    #[test]
    fn the_ghost_limit_scales_with_the_job() {
        let f = CriuOptions::default().resolve(3 << 20);
        assert_eq!(f.ghost_limit, 4 << 20);
        let f = CriuOptions::default().resolve(100 << 30);
        assert_eq!(f.ghost_limit, MAX_AUTO_GHOST_LIMIT);
        let set = CriuOptions {
            ghost_limit: Some(ByteSize(512)),
            ..Default::default()
        };
        assert_eq!(set.resolve(100 << 20).ghost_limit, 512);
    }

    #[test]
    fn flags_override_the_spec() {
        let spec = CriuOptions {
            tcp_established: Some(true),
            link_remap: Some(false),
            external: vec!["a".into()],
            ..Default::default()
        };
        let flags = CriuOptions {
            link_remap: Some(true),
            freeze_timeout: Some(Dur(Duration::from_secs(30))),
            external: vec!["b".into()],
            ..Default::default()
        };
        let f = spec.overlay(&flags).resolve(0);
        assert!(f.tcp_established && f.link_remap);
        assert_eq!(f.freeze_timeout_s, Some(30));
        assert_eq!(f.external, vec!["a", "b"]);
    }
}
