//! The workload log: what the workload wrote to stdout and stderr, in order, as framed records
//! the monitor appends (the workload never holds the log open, so the log is never part of a
//! checkpoint and never "changes size" under CRIU's feet).
//!
//! A record is a 16-byte header — stream (1 byte), 3 reserved bytes, payload length (u32 LE),
//! time in ns since the epoch (u64 LE) — followed by the payload. Streams: 1 stdout, 2 stderr,
//! 3 a marker written by stasis itself ("restored from generation 3"). A torn last record (a
//! crash mid-append) is ignored by readers and overwritten by nothing: appends only ever add.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// Appends records to a log file.
pub struct LogWriter {
    file: File,
    offset: u64,
}

impl LogWriter {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        let offset = file.metadata()?.len();
        Ok(LogWriter { file, offset })
    }

    /// The log's length: the offset the next record starts at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends one record per `MAX_PAYLOAD` bytes of `data`.
    pub fn append(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            let hdr = header(stream, chunk.len(), now_ns());
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
            self.offset += (HEADER + chunk.len()) as u64;
        }
        Ok(())
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
}

/// Reads records from a log, from an offset on; remembers where it stopped, so a follower can
/// call `next` again once the file has grown.
pub struct LogReader {
    file: File,
    offset: u64,
}

impl LogReader {
    pub fn open(path: &Path, offset: u64) -> io::Result<LogReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(LogReader { file, offset })
    }

    /// Offset of the next unread record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next complete record, or `None` at the (current) end of the log. A record that is
    /// not complete yet is left for a later call.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
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
        }))
    }

    /// Reads exactly buf.len() bytes, or rewinds to the record start and returns false.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.file.read(&mut buf[got..]) {
                Ok(0) => {
                    self.file.seek(SeekFrom::Start(self.offset))?;
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
}
