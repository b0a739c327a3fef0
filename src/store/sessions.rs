//! Exec sessions: commands run inside a running workload's container, forked by its init (so
//! a checkpoint includes them), with a lifecycle kept on disk like podman's exec sessions:
//! created → running → exited, with the exit code.

use crate::exit::ExitStatus;
use crate::store::atomic::{self, FsError};
use crate::store::state::WorkloadDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::PathBuf;

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Created,
    Running,
    Exited,
}

/// A session as kept in `exec/ID.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub command: Vec<String>,
    pub status: SessionStatus,
    pub tty: bool,
    pub stdin: bool,
    pub detached: bool,
    pub created_at: u64,
    /// pid inside the container's PID namespace.
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub exit_status: Option<ExitStatus>,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A fresh session id: 12 hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = crate::store::state::now_ms() ^ (std::process::id() as u64) << 20;
        b.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Path of a session's record.
pub fn record_path(wd: &WorkloadDir, id: &str) -> PathBuf {
    wd.exec_dir().join(format!("{id}.json"))
}

/// Path of a session's log (output while no client is attached).
pub fn log_path(wd: &WorkloadDir, id: &str) -> PathBuf {
    wd.exec_dir().join(format!("{id}.log"))
}

/// Writes a session record atomically.
pub fn save(wd: &WorkloadDir, rec: &SessionRecord) -> Result<(), FsError> {
    atomic::mkdir_p(&wd.exec_dir(), 0o700)?;
    atomic::write_json_atomic(&record_path(wd, &rec.id), rec)
}

/// Reads one session record.
pub fn load(wd: &WorkloadDir, id: &str) -> Option<SessionRecord> {
    fs::read(record_path(wd, id))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
}

/// All session records, oldest first.
pub fn list(wd: &WorkloadDir) -> Vec<SessionRecord> {
    let mut v: Vec<SessionRecord> = fs::read_dir(wd.exec_dir())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| fs::read(e.path()).ok())
                .filter_map(|d| serde_json::from_slice(&d).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a: &SessionRecord, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    v
}

/// Removes a session's record and log.
pub fn remove(wd: &WorkloadDir, id: &str) {
    let _ = fs::remove_file(record_path(wd, id));
    let _ = fs::remove_file(log_path(wd, id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::StateRoot;

    #[test]
    fn ids_are_12_hex_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn records_round_trip_and_list_in_order() {
        let d = tempfile::tempdir().unwrap();
        let r = StateRoot::from_flag(Some(d.path().into()));
        r.ensure().unwrap();
        let w = r.workload("a");
        w.create().unwrap();
        for (i, id) in ["bbb", "aaa"].iter().enumerate() {
            let rec = SessionRecord {
                id: id.to_string(),
                command: vec!["true".into()],
                status: SessionStatus::Running,
                tty: false,
                stdin: false,
                detached: true,
                created_at: i as u64,
                pid: Some(7),
                exit_code: None,
                exit_status: None,
                finished_at: None,
                error: None,
            };
            save(&w, &rec).unwrap();
        }
        let l = list(&w);
        assert_eq!(
            l.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["bbb", "aaa"]
        );
        assert_eq!(load(&w, "aaa").unwrap().pid, Some(7));
        remove(&w, "aaa");
        assert!(load(&w, "aaa").is_none());
    }
}
