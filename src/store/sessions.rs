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
    pub id: SessionId,
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

/// An exec session's id: 12 lowercase hex digits. Like a workload name, it is validated where
/// it enters (a flag, a request, a record) because it names files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(String);

/// Why a string is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid exec session id {0:?}: an id is 12 hex digits (see `stasis exec --list NAME`)")]
pub struct BadSessionId(pub String);

impl SessionId {
    pub fn parse(s: &str) -> Result<SessionId, BadSessionId> {
        if s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(SessionId(s.to_string()))
        } else {
            Err(BadSessionId(s.chars().take(40).collect()))
        }
    }

    /// A fresh random id.
    pub fn random() -> SessionId {
        SessionId(random_hex())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SessionId {
    type Err = BadSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SessionId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// 12 random hex digits.
pub fn random_hex() -> String {
    let b = crate::sys::random_bytes::<6>().unwrap_or_else(|_| {
        let t = crate::store::state::now_ms() ^ (std::process::id() as u64) << 20;
        let mut b = [0u8; 6];
        b.copy_from_slice(&t.to_le_bytes()[..6]);
        b
    });
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Path of a session's record.
pub fn record_path(wd: &WorkloadDir, id: &SessionId) -> PathBuf {
    wd.exec_dir().join(format!("{id}.json"))
}

/// Path of a session's log (output while no client is attached).
pub fn log_path(wd: &WorkloadDir, id: &SessionId) -> PathBuf {
    wd.exec_dir().join(format!("{id}.log"))
}

/// Writes a session record atomically and durably.
pub fn save(wd: &WorkloadDir, rec: &SessionRecord) -> Result<(), FsError> {
    atomic::mkdir_in(&wd.exec_dir(), 0o700)?;
    atomic::write_json_atomic(&record_path(wd, &rec.id), rec)
}

/// The monitor's spare file for [`save_quick`] (only the monitor, which holds the workload's
/// lock, writes records quickly; no `.json`, so never listed).
const SPARE: &str = ".spare";

/// Writes a session record atomically without waiting for the disk: readers see it at once,
/// a power cut may bring back the older one (or none), as for the workload's running state.
/// Through a swap with a spare file ([`atomic::swap_in_quick`]), so a session's records make
/// one inode in all, not one per write.
pub fn save_quick(wd: &WorkloadDir, rec: &SessionRecord) -> Result<(), FsError> {
    let dir = wd.exec_dir();
    atomic::mkdir_in(&dir, 0o700)?;
    let path = record_path(wd, &rec.id);
    atomic::swap_in_quick(&path, &dir.join(SPARE), &atomic::to_json(&path, rec)?)
}

/// How often a reader reads a record again that was rewritten under it.
const READ_TRIES: usize = 20;

/// Reads the record at `path`, which must be session `id`'s. A record is swapped in through
/// the monitor's spare file ([`save_quick`]): a reader that opened the record just before a
/// swap holds the old file, which the monitor may then rewrite as the spare, for this or
/// another session. What such a reader gets is torn (it does not parse) or another
/// session's: it reads the record again, by its name. One that stays unreadable (damaged)
/// counts as missing.
fn read_record(path: &std::path::Path, id: &SessionId) -> Option<SessionRecord> {
    for _ in 0..READ_TRIES {
        let data = fs::read(path).ok()?;
        match serde_json::from_slice::<SessionRecord>(&data) {
            Ok(r) if r.id == *id => return Some(r),
            _ => std::thread::yield_now(),
        }
    }
    None
}

/// Reads one session record.
pub fn load(wd: &WorkloadDir, id: &SessionId) -> Option<SessionRecord> {
    read_record(&record_path(wd, id), id)
}

/// All session records, oldest first.
pub fn list(wd: &WorkloadDir) -> Vec<SessionRecord> {
    let mut v: Vec<SessionRecord> = fs::read_dir(wd.exec_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = SessionId::parse(name.strip_suffix(".json")?).ok()?;
                    read_record(&e.path(), &id)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a: &SessionRecord, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    v
}

/// Removes a session's record and log.
pub fn remove(wd: &WorkloadDir, id: &SessionId) {
    let _ = fs::remove_file(record_path(wd, id));
    let _ = fs::remove_file(log_path(wd, id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::StateRoot;

    /// A fresh state root (kept alive by the TempDir) with workload `a` made.
    fn workload() -> (tempfile::TempDir, WorkloadDir) {
        let d = tempfile::tempdir().unwrap();
        let r = StateRoot::from_flag(Some(d.path().into()));
        r.ensure().unwrap();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        (d, w)
    }

    /// A running session's record.
    fn record(id: &str, command: &str, created_at: u64, pid: i32, detached: bool) -> SessionRecord {
        SessionRecord {
            id: SessionId::parse(id).unwrap(),
            command: vec![command.into()],
            status: SessionStatus::Running,
            tty: false,
            stdin: false,
            detached,
            created_at,
            pid: Some(pid),
            exit_code: None,
            exit_status: None,
            finished_at: None,
            error: None,
        }
    }

    #[test]
    fn ids_are_12_hex_and_differ() {
        let a = random_hex();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_hex());
    }

    #[test]
    fn records_round_trip_and_list_in_order() {
        let (_d, w) = workload();
        for (i, id) in ["bbbbbbbbbbbb", "aaaaaaaaaaaa"].iter().enumerate() {
            let rec = record(id, "true", i as u64, 7, true);
            if i == 0 {
                save(&w, &rec).unwrap();
            } else {
                save_quick(&w, &rec).unwrap();
            }
        }
        let l = list(&w);
        assert_eq!(
            l.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["bbbbbbbbbbbb", "aaaaaaaaaaaa"]
        );
        assert_eq!(
            load(&w, &SessionId::parse("aaaaaaaaaaaa").unwrap())
                .unwrap()
                .pid,
            Some(7)
        );
        remove(&w, &SessionId::parse("aaaaaaaaaaaa").unwrap());
        assert!(load(&w, &SessionId::parse("aaaaaaaaaaaa").unwrap()).is_none());
    }

    /// A session's running and ended records cost one inode in all: the ended one is swapped
    /// in through the spare, which keeps the running one's inode for the next session. The
    /// spare never shows as a session.
    #[test]
    fn a_session_end_swaps_its_record_without_a_new_inode() {
        use std::os::unix::fs::MetadataExt;
        let (_d, w) = workload();
        let id = SessionId::parse("cccccccccccc").unwrap();
        let mut rec = record(id.as_str(), "true", 1, 9, false);
        save_quick(&w, &rec).unwrap();
        let running = fs::metadata(record_path(&w, &id)).unwrap().ino();
        rec.status = SessionStatus::Exited;
        rec.exit_code = Some(3);
        save_quick(&w, &rec).unwrap();
        let spare = w.exec_dir().join(SPARE);
        // the ended record is the spare's inode; the spare now holds the running one's
        assert_eq!(fs::metadata(&spare).unwrap().ino(), running);
        assert_eq!(load(&w, &id).unwrap().exit_code, Some(3));
        rec.exit_code = Some(4);
        save_quick(&w, &rec).unwrap();
        assert_eq!(fs::metadata(record_path(&w, &id)).unwrap().ino(), running);
        assert_eq!(load(&w, &id).unwrap().exit_code, Some(4));
        assert_eq!(list(&w).len(), 1);
    }

    /// A reader racing the monitor's swaps gets session A's record every time: never
    /// nothing, never B's (the old file it opened may be the spare, rewritten meanwhile).
    #[test]
    fn a_reader_racing_the_swaps_always_gets_the_right_record() {
        let (_d, w) = workload();
        let long = "x".repeat(2000);
        let rec = |id: &str, n: i32| record(id, &long, 1, n, false);
        let a = SessionId::parse("aaaaaaaaaaaa").unwrap();
        save_quick(&w, &rec("aaaaaaaaaaaa", 0)).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w2, done2, a2) = (w.clone(), done.clone(), a.clone());
        let reader = std::thread::spawn(move || {
            let mut reads = 0u32;
            while !done2.load(std::sync::atomic::Ordering::Relaxed) {
                let got = load(&w2, &a2).expect("A's record");
                assert_eq!(got.id, a2);
                assert_eq!(list(&w2).iter().filter(|r| r.id == a2).count(), 1);
                reads += 1;
            }
            reads
        });
        let b = SessionId::parse("bbbbbbbbbbbb").unwrap();
        for n in 1..400 {
            save_quick(&w, &rec("aaaaaaaaaaaa", n)).unwrap();
            save_quick(&w, &rec("bbbbbbbbbbbb", n)).unwrap();
            remove(&w, &b);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
