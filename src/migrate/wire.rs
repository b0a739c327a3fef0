//! The migration protocol between the two hosts, over the ssh channel that runs
//! `stasis __migrate-target` on the target: length-prefixed JSON frames (a 4-byte big-endian
//! length, then the document), and raw file contents right after a `File` frame.
//!
//! The first frame from each side names the protocol version, so two stasis versions that
//! cannot work together say so before anything is touched.

use crate::protocol::migrate::{Mode, Step};
use crate::spec::Spec;
use crate::store::generations::Manifest;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::{Component, Path};

/// Version of this protocol. A target speaking another refuses in its first frame.
pub const PROTO: u32 = 1;
/// Largest frame (a manifest with many files, a spec).
pub const MAX_FRAME: u32 = 16 << 20;

/// One frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Wire {
    /// Source → target, first.
    Hello {
        proto: u32,
        name: String,
        token: String,
        stasis: String,
        /// The init copy the job runs from (the target needs it at the same path).
        init_path: String,
    },
    /// Target → source: it can take the job.
    Welcome {
        proto: u32,
        criu: String,
        uffd: bool,
        dirty_track: bool,
        /// The target already has the job's init copy.
        has_init: bool,
        /// The source as the target sees it (the ssh client's address).
        from: String,
    },
    /// Target → source: it cannot; why, in one line.
    Refuse { reason: String },
    /// Source → target: the mode, and the job's spec (the target claims the name now).
    Start { mode: Mode, spec: Box<Spec> },
    /// Target → source: the page channel is connected (and, stream, the page server runs).
    Prepared,
    /// Source → target: a file of the job follows, `size` bytes.
    File { path: String, size: u64 },
    /// Source → target: every file is sent; restore from these images.
    FilesDone { manifest: Box<Manifest> },
    /// A step of the hand-over (see [`Step`]).
    Step { step: Step },
}

/// Writes one frame.
pub fn send(w: &mut impl Write, m: &Wire) -> io::Result<()> {
    let data = serde_json::to_vec(m).map_err(io::Error::other)?;
    w.write_all(&(data.len() as u32).to_be_bytes())?;
    w.write_all(&data)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of stream.
pub fn recv(r: &mut impl Read) -> io::Result<Option<Wire>> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1])? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..])?,
    }
    let n = u32::from_be_bytes(len);
    if n > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {n} bytes: not a stasis migration peer"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    r.read_exact(&mut buf)?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}")))
}

/// Sends the file at `src` as `path`; returns its size.
pub fn send_file(w: &mut impl Write, path: &str, src: &Path) -> io::Result<u64> {
    let mut f = std::fs::File::open(src)?;
    let size = f.metadata()?.len();
    send(
        w,
        &Wire::File {
            path: path.to_string(),
            size,
        },
    )?;
    let copied = io::copy(&mut (&mut f).take(size), w)?;
    if copied != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} shrank while it was sent", src.display()),
        ));
    }
    Ok(size)
}

/// Where a received file may go, relative to the workload's directory: the log and its
/// segments, the events, exec session records and logs, the images, the init copy. Anything
/// else (an absolute path, `..`, a name stasis does not write) is refused: the peer is
/// another host.
pub fn allowed(path: &str) -> bool {
    let p = Path::new(path);
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return false;
    }
    let parts: Vec<&str> = path.split('/').collect();
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.');
    match parts.as_slice() {
        ["log"] | ["events.jsonl"] | ["init"] => true,
        [seg] => seg
            .strip_prefix("log.")
            .is_some_and(|n| n.parse::<u64>().is_ok()),
        ["exec", f] => plain(f) && (f.ends_with(".json") || f.ends_with(".log")),
        ["images", f] => plain(f),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let m = Wire::Step { step: Step::Commit };
        send(&mut buf, &m).unwrap();
        send(&mut buf, &Wire::Prepared).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(recv(&mut r).unwrap(), Some(m));
        assert_eq!(recv(&mut r).unwrap(), Some(Wire::Prepared));
        assert_eq!(recv(&mut r).unwrap(), None);
    }

    #[test]
    fn garbage_is_refused_not_allocated() {
        let mut r: &[u8] = b"SSH-2.0-OpenSSH\r\n";
        assert!(recv(&mut r).is_err());
    }

    #[test]
    fn files_stay_inside_the_workload() {
        for ok in [
            "log",
            "log.1024",
            "events.jsonl",
            "exec/abc.json",
            "images/pages-1.img",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "../x",
            "images/../../x",
            "images/.hidden",
            "spec.json",
            "state.json",
            "log.x",
            "exec/a/b.json",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
    }
}
