//! CRIU's `stats-dump` image: how long the tree was frozen and how much memory was written.

use std::fs;
use std::path::Path;

/// What CRIU's stats-dump file says about a dump.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DumpTimes {
    pub freezing_us: u64,
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_written: u64,
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads `stats-dump` (service magic, stats magic, a length-prefixed `stats_entry`).
pub fn read_dump_times(path: &Path) -> Option<DumpTimes> {
    let b = fs::read(path).ok()?;
    if b.len() < 12
        || b[0..4] != 0x55105940u32.to_le_bytes()
        || b[4..8] != 0x57093306u32.to_le_bytes()
    {
        return None;
    }
    let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    let entry = b.get(12..12 + len)?;
    // stats_entry.dump (field 1, length-delimited)
    let mut i = 0;
    while i < entry.len() {
        let key = varint(entry, &mut i)?;
        if key == (1 << 3 | 2) {
            let l = varint(entry, &mut i)? as usize;
            let d = entry.get(i..i + l)?;
            let mut t = DumpTimes::default();
            let mut j = 0;
            while j < d.len() {
                let k = varint(d, &mut j)?;
                if k & 7 != 0 {
                    return None;
                }
                let v = varint(d, &mut j)?;
                match k >> 3 {
                    1 => t.freezing_us = v,
                    2 => t.frozen_us = v,
                    3 => t.memdump_us = v,
                    4 => t.memwrite_us = v,
                    7 => t.pages_written = v,
                    _ => {}
                }
            }
            return Some(t);
        }
        // skip other fields
        match key & 7 {
            0 => {
                varint(entry, &mut i)?;
            }
            2 => {
                let l = varint(entry, &mut i)? as usize;
                i += l;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_dump_decodes() {
        // stats_entry { dump { freezing 5, frozen 1234, memdump 10, memwrite 20, scanned 1, skipped 0, written 300, lazy 0 } }
        let mut dump = vec![];
        for (f, v) in [
            (1u64, 5u64),
            (2, 1234),
            (3, 10),
            (4, 20),
            (5, 1),
            (6, 0),
            (7, 300),
            (9, 0),
        ] {
            dump.push((f << 3) as u8);
            let mut v = v;
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    dump.push(b);
                    break;
                }
                dump.push(b | 0x80);
            }
        }
        let mut entry = vec![(1 << 3 | 2) as u8, dump.len() as u8];
        entry.extend(&dump);
        let mut file = vec![];
        file.extend(0x55105940u32.to_le_bytes());
        file.extend(0x57093306u32.to_le_bytes());
        file.extend((entry.len() as u32).to_le_bytes());
        file.extend(&entry);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stats-dump");
        fs::write(&p, file).unwrap();
        let t = read_dump_times(&p).unwrap();
        assert_eq!(t.frozen_us, 1234);
        assert_eq!(t.pages_written, 300);
        fs::write(&p, b"nonsense").unwrap();
        assert_eq!(read_dump_times(&p), None);
    }
}
