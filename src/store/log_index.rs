//! Finding where to start reading a log without reading all of it: before the last N lines
//! (`logs --tail`), or at the first record of a time (`logs --since`).
//!
//! Both look at segments newest first and at record headers only (a header says a record's
//! length, so the payload is skipped with a seek); payloads are read just for the records
//! whose lines are counted. A segment's headers are scanned in blocks, so even a segment of
//! millions of tiny records is walked back without holding an index of all of them.

use crate::store::log::{current_base, segments, Stream, HEADER, MAX_PAYLOAD};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where a reader starts: the record at global `offset`, less its first `skip` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Start {
    pub offset: u64,
    pub skip: usize,
}

/// A record's header and where it is.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Global offset of the header.
    pub offset: u64,
    /// Its position in its segment's file.
    pub pos: u64,
    pub stream: Stream,
    pub len: u32,
    pub time_ns: u64,
}

/// The log's segments, oldest first: (global start, path), the current one last.
fn all_segments(path: &Path) -> Vec<(u64, PathBuf)> {
    let mut v = segments(path);
    v.push((current_base(path), path.to_path_buf()));
    v
}

fn parse_header(h: &[u8; HEADER], base: u64, pos: u64) -> io::Result<Header> {
    let offset = base + pos;
    let stream = match h[0] {
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        3 => Stream::Marker,
        _ => return Err(bad(offset)),
    };
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len as usize > MAX_PAYLOAD {
        return Err(bad(offset));
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&h[8..16]);
    Ok(Header {
        offset,
        pos,
        stream,
        len,
        time_ns: u64::from_le_bytes(t),
    })
}

fn bad(offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad log record at offset {offset}"),
    )
}

/// Reads headers of one segment from its local position `from`, at most `max` of them (a
/// torn last record ends the scan). Returns them and the local position after the last.
fn scan(
    file: &File,
    base: u64,
    size: u64,
    from: u64,
    max: usize,
) -> io::Result<(Vec<Header>, u64)> {
    let mut r = BufReader::with_capacity(64 << 10, file);
    io::Seek::seek(&mut r, io::SeekFrom::Start(from))?;
    let mut pos = from;
    let mut out = Vec::new();
    while out.len() < max && pos + HEADER as u64 <= size {
        let mut h = [0u8; HEADER];
        r.read_exact(&mut h)?;
        let hd = parse_header(&h, base, pos)?;
        let end = pos + (HEADER as u64) + hd.len as u64;
        if end > size {
            break;
        }
        r.seek_relative(hd.len as i64)?;
        out.push(hd);
        pos = end;
    }
    Ok((out, pos))
}

/// Records per block of a backward walk.
const BLOCK: usize = 4096;

/// Calls `f` on each record header of the log, newest first, until it returns false. Only
/// headers are read.
pub fn for_each_back(path: &Path, mut f: impl FnMut(&File, &Header) -> bool) -> io::Result<()> {
    for (base, p) in all_segments(path).into_iter().rev() {
        let file = match File::open(&p) {
            Ok(f) => f,
            // rotated away meanwhile: its records are in an older segment now, or gone
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        // block starts, found with one forward pass over the headers
        let mut marks = vec![0u64];
        let mut pos = 0;
        loop {
            let (hs, next) = scan(&file, base, size, pos, BLOCK)?;
            if hs.len() < BLOCK || next >= size {
                break;
            }
            marks.push(next);
            pos = next;
        }
        for &m in marks.iter().rev() {
            let (hs, _) = scan(&file, base, size, m, BLOCK)?;
            for h in hs.iter().rev() {
                if !f(&file, h) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn payload(file: &File, h: &Header) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; h.len as usize];
    file.read_exact_at(&mut data, h.pos + HEADER as u64)?;
    Ok(data)
}

/// Where to start so that the records `keep` accepts give their last `lines` lines. A line
/// ends with a newline; an unterminated last line counts as one.
pub fn tail(path: &Path, lines: usize, keep: impl Fn(&Header) -> bool) -> io::Result<Start> {
    let segs = all_segments(path);
    let end = segs
        .last()
        .map(|(b, p)| b + std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or(0);
    if lines == 0 {
        return Ok(Start {
            offset: end,
            skip: 0,
        });
    }
    let mut found = 0usize;
    let mut last_byte = true;
    let mut start = Start {
        offset: segs.first().map(|(b, _)| *b).unwrap_or(0),
        skip: 0,
    };
    let mut err = None;
    for_each_back(path, |file, h| {
        if !keep(h) {
            return true;
        }
        let data = match payload(file, h) {
            Ok(d) => d,
            Err(e) => {
                err = Some(e);
                return false;
            }
        };
        for i in (0..data.len()).rev() {
            let first = std::mem::replace(&mut last_byte, false);
            // the newline that ends the very last line starts no line after it
            if data[i] == b'\n' && !first {
                found += 1;
                if found == lines {
                    start = Start {
                        offset: h.offset,
                        skip: i + 1,
                    };
                    return false;
                }
            }
        }
        start = Start {
            offset: h.offset,
            skip: 0,
        };
        true
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(start),
    }
}

/// A start at or before the first record written at or after `since_ns`: the newest segment
/// whose first record is older. Records before `since_ns` in it are for the reader to skip.
pub fn since(path: &Path, since_ns: u64) -> io::Result<Start> {
    let segs = all_segments(path);
    let mut start = Start {
        offset: segs.first().map(|(b, _)| *b).unwrap_or(0),
        skip: 0,
    };
    for (base, p) in segs {
        let mut h = [0u8; HEADER];
        let first = match File::open(&p).and_then(|f| f.read_exact_at(&mut h, 0).map(|_| f)) {
            Ok(_) => parse_header(&h, base, 0)?,
            // empty or rotated away: nothing to learn from it
            Err(_) => continue,
        };
        if first.time_ns > since_ns {
            break;
        }
        start.offset = base;
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::{LogReader, LogWriter, Rotation};

    /// Reads from `s` to the end, as `logs` does: the first record less `skip` bytes.
    fn read_from(p: &Path, s: Start) -> Vec<u8> {
        let mut r = LogReader::open(p, s.offset).unwrap();
        let mut out = Vec::new();
        let mut first = true;
        while let Some(rec) = r.next_record().unwrap() {
            if rec.stream == Stream::Marker {
                continue;
            }
            let from = if first { s.skip } else { 0 };
            first = false;
            out.extend_from_slice(&rec.data[from..]);
        }
        out
    }

    fn out_only(h: &Header) -> bool {
        h.stream != Stream::Marker
    }

    #[test]
    fn tail_counts_lines_across_records_and_segments() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let rot = Rotation {
            max_size: crate::spec::ByteSize(300),
            max_files: 100,
        };
        let mut w = LogWriter::open_rotating(&p, rot).unwrap();
        // lines split across records, several lines in one record, a marker between
        for i in 0..50 {
            w.append(Stream::Stdout, format!("line {i}").as_bytes())
                .unwrap();
            w.append(Stream::Stdout, b"\n").unwrap();
            if i % 7 == 0 {
                w.marker("restored").unwrap();
                w.append(Stream::Stdout, format!("a{i}\nb{i}\n").as_bytes())
                    .unwrap();
            }
        }
        w.append(Stream::Stdout, b"unterminated").unwrap();
        assert!(segments(&p).len() > 3, "the test wants several segments");
        let all = read_from(&p, Start::default());
        let text = String::from_utf8(all).unwrap();
        let want_lines: Vec<&str> = text.split_inclusive('\n').collect();
        for n in [1, 2, 3, 10, 40, want_lines.len(), want_lines.len() + 5] {
            let s = tail(&p, n, out_only).unwrap();
            let got = String::from_utf8(read_from(&p, s)).unwrap();
            let want = want_lines[want_lines.len().saturating_sub(n)..].concat();
            assert_eq!(got, want, "tail {n}");
        }
        assert_eq!(read_from(&p, tail(&p, 0, out_only).unwrap()), b"");
    }

    #[test]
    fn tail_of_a_log_ending_in_a_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, b"a\nb\nc\n").unwrap();
        assert_eq!(read_from(&p, tail(&p, 2, out_only).unwrap()), b"b\nc\n");
        assert_eq!(read_from(&p, tail(&p, 3, out_only).unwrap()), b"a\nb\nc\n");
        assert_eq!(read_from(&p, tail(&p, 9, out_only).unwrap()), b"a\nb\nc\n");
    }

    #[test]
    fn backward_walk_crosses_blocks_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        let n = BLOCK * 2 + 17;
        for i in 0..n {
            w.append(Stream::Stdout, &(i as u32).to_le_bytes()).unwrap();
        }
        let mut offsets = vec![];
        for_each_back(&p, |_, h| {
            offsets.push(h.offset);
            true
        })
        .unwrap();
        assert_eq!(offsets.len(), n);
        assert!(offsets.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(offsets.last(), Some(&0));
    }

    #[test]
    fn since_skips_whole_older_segments() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let rot = Rotation {
            max_size: crate::spec::ByteSize(100),
            max_files: 100,
        };
        let mut w = LogWriter::open_rotating(&p, rot).unwrap();
        let mut times = vec![];
        for i in 0..20 {
            w.append(Stream::Stdout, format!("{i:0>90}").as_bytes())
                .unwrap();
            let mut r = LogReader::open(&p, w.offset() - 106).unwrap();
            times.push(r.next_record().unwrap().unwrap().time_ns);
        }
        let s = since(&p, times[12]).unwrap();
        // one record a segment: the start is the newest segment not newer than record 12
        // (record 12's own, unless a later one has the very same time)
        let want = (0..20).filter(|&i| times[i] <= times[12]).max().unwrap() as u64 * 106;
        assert_eq!(s.offset, want);
        assert_eq!(since(&p, 0).unwrap().offset, 0);
    }
}
