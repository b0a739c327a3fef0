//! A workload's event history (`events.jsonl`): checkpoints, restores, restarts, failures,
//! with time, generation and reason. Appended one JSON line at a time (O_APPEND, one write per
//! line, not fsynced: it is history, not state); a torn last line is skipped by readers.

use crate::store::state::{now_ms, WorkloadDir};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub at: u64,
    /// "start", "exit", "checkpoint", "checkpoint-failed", "restore", "restore-failed",
    /// "restart", "failed", "stop".
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Event {
    pub fn new(kind: &str, reason: impl Into<String>) -> Event {
        Event {
            at: now_ms(),
            kind: kind.to_string(),
            generation: None,
            code: None,
            reason: reason.into(),
        }
    }
    pub fn generation(mut self, g: u32) -> Event {
        self.generation = Some(g);
        self
    }
    pub fn code(mut self, c: i32) -> Event {
        self.code = Some(c);
        self
    }
}

/// Appends an event (best effort: a full disk must not stop supervision).
pub fn append(wd: &WorkloadDir, ev: &Event) {
    let Ok(mut line) = serde_json::to_vec(ev) else {
        return;
    };
    line.push(b'\n');
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(wd.events_path());
    if let Ok(mut f) = f {
        let _ = f.write_all(&line);
    }
}

/// Reads all events, oldest first.
pub fn read(wd: &WorkloadDir) -> Vec<Event> {
    let Ok(f) = std::fs::File::open(wd.events_path()) else {
        return vec![];
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Reads the events appended after byte `offset` of the file, oldest first, and the offset
/// to read on from: a line still being written (no newline yet) is left for the next call,
/// so a follower never sees half an event.
pub fn read_from(wd: &WorkloadDir, offset: u64) -> (Vec<Event>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(wd.events_path()) else {
        return (vec![], offset);
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut buf).is_err() {
        return (vec![], offset);
    }
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let events = buf[..complete]
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    (events, offset + complete as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::StateRoot;

    #[test]
    fn append_and_read_skip_torn_lines() {
        let d = tempfile::tempdir().unwrap();
        let r = StateRoot::from_flag(Some(d.path().into()));
        r.ensure().unwrap();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        append(&w, &Event::new("checkpoint", "periodic").generation(1));
        append(&w, &Event::new("restore", "crash").generation(1).code(137));
        let mut f = OpenOptions::new()
            .append(true)
            .open(w.events_path())
            .unwrap();
        f.write_all(b"{\"at\":1,\"ki").unwrap();
        let ev = read(&w);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].kind, "restore");
        assert_eq!(ev[1].code, Some(137));
        // a follower gets the complete lines, then the torn one once it is finished
        let (ev, at) = read_from(&w, 0);
        assert_eq!(ev.len(), 2);
        assert_eq!(read_from(&w, at).0, vec![]);
        f.write_all(b"nd\":\"stop\"}\n").unwrap();
        let (ev, _) = read_from(&w, at);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, "stop");
    }
}
