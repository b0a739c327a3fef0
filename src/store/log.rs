//! The workload log: what the workload wrote to stdout and stderr, in order, as framed records
//! the monitor appends (the workload never holds the log open, so the log is never part of a
//! checkpoint and never "changes size" under CRIU's feet).
//!
//! A record is a 16-byte header — stream (1 byte), 3 reserved bytes, payload length (u32 LE),
//! time in ns since the epoch (u64 LE) — followed by the payload. Streams: 1 stdout, 2 stderr,
//! 3 a marker written by stasis itself ("restored from generation 3"). A torn last record (a
//! crash mid-append) is ignored by readers and overwritten by nothing: appends only ever add.
//!
//! The log is rotated by size. Offsets are global, counted from the first byte the log ever
//! had: `log` is the current segment, `log.<START>` the rotated ones, named by the global
//! offset they start at (so the current segment starts where the newest rotated one ends).
//! Checkpoints record global offsets, and readers cross segments as they go; the oldest
//! segments are deleted beyond the limit, and a reader that asks for what was deleted starts
//! at the oldest byte that is left.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Size limits of a log (spec key `log:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// A segment is rotated once it reaches this size.
    #[serde(default = "Rotation::default_max_size")]
    pub max_size: crate::spec::ByteSize,
    /// Rotated segments kept besides the current one.
    #[serde(default = "Rotation::default_max_files")]
    pub max_files: u32,
}

impl Rotation {
    fn default_max_size() -> crate::spec::ByteSize {
        crate::spec::ByteSize(64 << 20)
    }
    fn default_max_files() -> u32 {
        4
    }
    /// The most bytes a log can hold on disk.
    pub fn bound(&self) -> u64 {
        self.max_size.0.saturating_mul(self.max_files as u64 + 1) + MAX_PAYLOAD as u64 + 16
    }
}

impl Default for Rotation {
    /// 64 MiB per segment and 4 rotated ones: at most 320 MiB per job, enough to see what a
    /// long job did lately, never enough to fill a disk.
    fn default() -> Self {
        Rotation {
            max_size: Self::default_max_size(),
            max_files: Self::default_max_files(),
        }
    }
}

/// The rotated segments of the log at `path`: (start offset, path), oldest first.
pub fn segments(path: &Path) -> Vec<(u64, PathBuf)> {
    let Some(dir) = path.parent() else {
        return vec![];
    };
    let Some(base) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return vec![];
    };
    let prefix = format!("{base}.");
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let start = n.strip_prefix(&prefix)?.parse::<u64>().ok()?;
                    Some((start, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The global offset the current segment starts at.
pub fn current_base(path: &Path) -> u64 {
    segments(path)
        .last()
        .map(|(start, p)| start + std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or(0)
}

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
    Marker = 3,
}

impl Stream {
    fn from_u8(b: u8) -> Option<Stream> {
        match b {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            3 => Some(Stream::Marker),
            _ => None,
        }
    }
}

/// Header size of a record.
pub const HEADER: usize = 16;
/// Largest payload a record may carry; longer writes are split.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Appends records to a log, rotating it by size.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// The current segment again, without O_APPEND, to clear pending marks in place.
    patch: File,
    /// Global offset of the current segment's first byte.
    base: u64,
    /// Bytes in the current segment.
    len: u64,
    rotation: Rotation,
}

fn open_patch(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl LogWriter {
    /// Opens (creating) the log at `path` for appending, with the default rotation.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        Self::open_rotating(path, Rotation::default())
    }

    /// Opens (creating) the log at `path` for appending.
    pub fn open_rotating(path: &Path, rotation: Rotation) -> io::Result<LogWriter> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            patch: open_patch(path)?,
            base: current_base(path),
            len,
            rotation,
        })
    }

    /// The log's global length: the offset the next record starts at.
    pub fn offset(&self) -> u64 {
        self.base + self.len
    }

    /// Starts a new segment and drops the oldest beyond the limit.
    fn rotate(&mut self) -> io::Result<()> {
        let rotated = self.path.with_file_name(format!(
            "{}.{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.base
        ));
        std::fs::rename(&self.path, &rotated)?;
        self.file = open_append(&self.path)?;
        self.patch = open_patch(&self.path)?;
        self.base += self.len;
        self.len = 0;
        let segs = segments(&self.path);
        let extra = segs.len().saturating_sub(self.rotation.max_files as usize);
        for (_, p) in segs.into_iter().take(extra) {
            std::fs::remove_file(&p)?;
        }
        Ok(())
    }

    /// Appends one record per `MAX_PAYLOAD` bytes of `data`.
    pub fn append(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        self.append_flagged(stream, data, false).map(|_| ())
    }

    /// Appends `data` (at most `MAX_PAYLOAD` bytes) as one record marked pending: the bytes
    /// are logged but not yet taken from the pipe they came from. [`LogWriter::confirm`]
    /// clears the mark once they are; a monitor that dies in between leaves it for the next
    /// one, which then knows to take them from the pipe without logging them twice. Returns
    /// the record's global offset.
    pub fn append_pending(&mut self, stream: Stream, data: &[u8]) -> io::Result<u64> {
        self.append_flagged(stream, &data[..data.len().min(MAX_PAYLOAD)], true)
    }

    /// Clears the pending mark of the record at global offset `at` (in the current segment).
    pub fn confirm(&mut self, at: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let Some(pos) = at.checked_sub(self.base) else {
            return Ok(());
        };
        // O_APPEND ignores pwrite's offset: patch through the second, plain descriptor.
        self.patch.write_all_at(&[0], pos + 1)
    }

    fn append_flagged(&mut self, stream: Stream, data: &[u8], pending: bool) -> io::Result<u64> {
        if self.len >= self.rotation.max_size.0 {
            self.rotate()?;
        }
        let first = self.offset();
        for chunk in data.chunks(MAX_PAYLOAD) {
            let mut hdr = header(stream, chunk.len(), now_ns());
            hdr[1] = pending as u8;
            let mut bufs = [IoSlice::new(&hdr), IoSlice::new(chunk)];
            let mut bufs: &mut [IoSlice<'_>] = &mut bufs;
            let mut left = HEADER + chunk.len();
            while left > 0 {
                let n = self.file.write_vectored(bufs)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                left -= n;
                IoSlice::advance_slices(&mut bufs, n);
            }
            self.len += (HEADER + chunk.len()) as u64;
        }
        Ok(first)
    }

    /// Appends a marker written by stasis.
    pub fn marker(&mut self, text: &str) -> io::Result<()> {
        self.append(Stream::Marker, text.as_bytes())
    }
}

fn header(stream: Stream, len: usize, t: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = stream as u8;
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&t.to_le_bytes());
    h
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    pub time_ns: u64,
    pub data: Vec<u8>,
    /// Logged but maybe not taken from its pipe (see [`LogWriter::append_pending`]).
    pub pending: bool,
}

/// The last complete record of the log at `path` (the current segment), with its global
/// offset. Reads only record headers.
pub fn last_record(path: &Path) -> io::Result<Option<(u64, Record)>> {
    let base = current_base(path);
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = 0u64;
    let mut last = None;
    let mut hdr = [0u8; HEADER];
    while pos + HEADER as u64 <= len {
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut hdr)?;
        let n = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as u64;
        if pos + HEADER as u64 + n > len || Stream::from_u8(hdr[0]).is_none() {
            break;
        }
        last = Some(pos);
        pos += HEADER as u64 + n;
    }
    let Some(at) = last else { return Ok(None) };
    let mut r = LogReader::open(path, base + at)?;
    Ok(r.next_record()?.map(|rec| (base + at, rec)))
}

/// Reads records from a log, from a global offset on, across its segments; remembers where
/// it stopped, so a follower can call `next_record` again once the log has grown.
pub struct LogReader {
    path: PathBuf,
    file: File,
    /// Global offset of the open file's first byte.
    base: u64,
    /// Global offset of the next unread record.
    offset: u64,
    /// The open file is the current segment (it grows; others do not).
    current: bool,
}

impl LogReader {
    /// Opens the log at `path` at global `offset`. An offset whose segment was deleted by
    /// rotation starts at the oldest record that is left; use [`LogReader::offset`] to see
    /// where it starts.
    pub fn open(path: &Path, offset: u64) -> io::Result<LogReader> {
        let first = match File::open(path) {
            Ok(f) => f,
            // Only rotated segments (an import before its monitor ran): start in those.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !segments(path).is_empty() => {
                File::open(&segments(path)[0].1)?
            }
            Err(e) => return Err(e),
        };
        let mut r = LogReader {
            path: path.to_path_buf(),
            file: first,
            base: 0,
            offset,
            current: true,
        };
        r.seek_to(offset)?;
        Ok(r)
    }

    /// Points the reader at global offset `want` (or the oldest that is left).
    fn seek_to(&mut self, want: u64) -> io::Result<()> {
        let segs = segments(&self.path);
        let cur_base = segs
            .last()
            .map(|(s, p)| s + std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .unwrap_or(0);
        let (base, file, current) = if want >= cur_base || segs.is_empty() {
            (cur_base, File::open(&self.path)?, true)
        } else {
            let i = segs.iter().rposition(|(s, _)| *s <= want).unwrap_or(0);
            let (s, p) = &segs[i];
            (*s, File::open(p)?, false)
        };
        self.file = file;
        self.base = base;
        self.current = current;
        self.offset = want.max(base);
        self.file.seek(SeekFrom::Start(self.offset - base))?;
        Ok(())
    }

    /// Global offset of the next unread record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next complete record, or `None` at the (current) end of the log. A record that is
    /// not complete yet is left for a later call.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        loop {
            if let Some(r) = self.record_here()? {
                return Ok(Some(r));
            }
            // The end of a rotated segment: go on in the next one.
            if self.current {
                return Ok(None);
            }
            let at = self.offset;
            self.seek_to(at)?;
            if self.offset == at && self.current && self.record_peek_empty()? {
                return Ok(None);
            }
        }
    }

    fn record_peek_empty(&mut self) -> io::Result<bool> {
        let len = self.file.metadata()?.len();
        Ok(self.offset - self.base >= len)
    }

    fn record_here(&mut self) -> io::Result<Option<Record>> {
        let mut hdr = [0u8; HEADER];
        if !self.read_full(&mut hdr)? {
            return Ok(None);
        }
        let stream = Stream::from_u8(hdr[0]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad log record at offset {}", self.offset),
            )
        })?;
        let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad log record at offset {}", self.offset),
            ));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&hdr[8..16]);
        let mut data = vec![0u8; len];
        if !self.read_full(&mut data)? {
            return Ok(None);
        }
        self.offset += (HEADER + len) as u64;
        Ok(Some(Record {
            stream,
            time_ns: u64::from_le_bytes(t),
            data,
            pending: hdr[1] == 1,
        }))
    }

    /// Reads exactly buf.len() bytes, or rewinds to the record start and returns false.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.file.read(&mut buf[got..]) {
                Ok(0) => {
                    self.file.seek(SeekFrom::Start(self.offset - self.base))?;
                    return Ok(false);
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, b"hello ").unwrap();
        w.append(Stream::Stderr, b"oops").unwrap();
        w.marker("restored from generation 2").unwrap();
        w.append(Stream::Stdout, b"world").unwrap();
        let mut r = LogReader::open(&p, 0).unwrap();
        let mut got = vec![];
        while let Some(rec) = r.next_record().unwrap() {
            got.push((rec.stream, rec.data));
        }
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, b"hello ".to_vec()),
                (Stream::Stderr, b"oops".to_vec()),
                (Stream::Marker, b"restored from generation 2".to_vec()),
                (Stream::Stdout, b"world".to_vec()),
            ]
        );
        assert_eq!(r.offset(), w.offset());
    }

    #[test]
    fn large_writes_are_split() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        let big = vec![7u8; MAX_PAYLOAD * 2 + 10];
        w.append(Stream::Stdout, &big).unwrap();
        let mut r = LogReader::open(&p, 0).unwrap();
        let mut total = 0;
        while let Some(rec) = r.next_record().unwrap() {
            total += rec.data.len();
        }
        assert_eq!(total, big.len());
    }

    #[test]
    fn torn_record_waits_for_more() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, b"complete").unwrap();
        let good = w.offset();
        // half a header, as if the monitor died mid-append
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&header(Stream::Stdout, 100, 0)[..10]).unwrap();
        let mut r = LogReader::open(&p, 0).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().data, b"complete");
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(r.offset(), good);
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn reopening_appends_after_existing_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        LogWriter::open(&p)
            .unwrap()
            .append(Stream::Stdout, b"a")
            .unwrap();
        let mut w = LogWriter::open(&p).unwrap();
        assert_eq!(w.offset(), (HEADER + 1) as u64);
        w.append(Stream::Stdout, b"b").unwrap();
        let mut r = LogReader::open(&p, (HEADER + 1) as u64).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().data, b"b");
    }

    #[test]
    fn rotation_keeps_offsets_global_and_the_log_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let rot = Rotation {
            max_size: crate::spec::ByteSize(1000),
            max_files: 2,
        };
        let mut w = LogWriter::open_rotating(&p, rot).unwrap();
        let mut offsets = vec![];
        for i in 0..100u32 {
            offsets.push(w.offset());
            w.append(Stream::Stdout, format!("{i:0>84}").as_bytes())
                .unwrap();
        }
        // 100 records of 100 bytes: segments of 1000 bytes, two rotated ones kept
        let segs = segments(&p);
        assert_eq!(segs.len(), 2, "{segs:?}");
        let on_disk: u64 = segs
            .iter()
            .map(|(_, s)| std::fs::metadata(s).unwrap().len())
            .sum::<u64>()
            + std::fs::metadata(&p).unwrap().len();
        assert!(on_disk <= rot.bound());
        assert_eq!(w.offset(), 100 * 100);
        // a reopened writer continues the global offsets
        drop(w);
        let w = LogWriter::open_rotating(&p, rot).unwrap();
        assert_eq!(w.offset(), 100 * 100);
        // a reader from a kept offset reads on across segments, in order
        let from = offsets[75];
        let mut r = LogReader::open(&p, from).unwrap();
        let mut got = vec![];
        while let Some(rec) = r.next_record().unwrap() {
            got.push(String::from_utf8(rec.data).unwrap());
        }
        let want: Vec<String> = (75..100u32).map(|i| format!("{i:0>84}")).collect();
        assert_eq!(got, want);
        // one from a deleted offset starts at the oldest record left
        let r = LogReader::open(&p, 0).unwrap();
        assert_eq!(r.offset(), segs[0].0);
    }

    #[test]
    fn a_pending_record_is_found_and_confirmed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, b"one").unwrap();
        let at = w.append_pending(Stream::Stderr, b"two").unwrap();
        let (off, rec) = last_record(&p).unwrap().unwrap();
        assert_eq!(
            (off, rec.data.as_slice(), rec.pending),
            (at, &b"two"[..], true)
        );
        w.confirm(at).unwrap();
        let (_, rec) = last_record(&p).unwrap().unwrap();
        assert!(!rec.pending);
        // readers see pending records like any other
        let mut r = LogReader::open(&p, 0).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().data, b"one");
        assert_eq!(r.next_record().unwrap().unwrap().data, b"two");
    }
}
