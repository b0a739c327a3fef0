//! A process's memory mappings, from /proc/PID/smaps: the files it maps (judged like open
//! files, by `files`: a deleted library or executable is a ghost file too), and the mappings
//! CRIU cannot dump at all: a device other than /dev/zero (without a plugin for it), an
//! anonymous-inode mapping such as an io_uring ring, VM_IO/VM_PFNMAP memory, and uprobes.

use super::fds::Stat;
use super::files::{mnt_id_of, Held};
use super::findings::{Finding, Holder};
use super::procs::{proc_path, Proc};
use super::InspectError;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// One mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub inode: u64,
    /// The name column: a path (maybe with " (deleted)"), `[heap]`, `anon_inode:…`, empty.
    pub name: String,
    /// The VmFlags mnemonics (`rd`, `wr`, `io`, `pf`…).
    pub flags: Vec<String>,
}

impl Vma {
    fn shared(&self) -> bool {
        self.perms.contains('s')
    }
}

/// Parses /proc/PID/smaps (or maps: then no flags).
pub fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.flags = v.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        let mut f = l.splitn(6, ' ');
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            // a "Key: value" line of smaps
            continue;
        };
        out.push(Vma {
            start,
            end,
            perms: perms.to_string(),
            inode: inode.parse().unwrap_or(0),
            name: f.next().unwrap_or("").trim().to_string(),
            flags: vec![],
        });
    }
    out
}

/// Kernel mappings CRIU handles itself though they carry VM_IO/VM_PFNMAP.
fn kernel_area(name: &str) -> bool {
    matches!(name, "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[uprobes]")
}

/// What a mapping is, once its map_files entry is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// No map_files entry: anonymous memory.
    None,
    Regular,
    /// /dev/zero, a socket ring, an AIO ring: CRIU knows these.
    Known,
    /// A device other than /dev/zero.
    Device,
    /// Anything else (an anonymous inode).
    Other,
}

/// The findings of one mapping; `backing` says what its map_files entry is.
pub fn judge(p: &Proc, v: &Vma, backing: Backing) -> Option<Finding> {
    let at = p.at(Holder::Map(v.start));
    if v.name == "[uprobes]" {
        return Some(Finding::Uprobes { at });
    }
    let io = v.flags.iter().any(|f| f == "io" || f == "pf");
    let shared_file = v.shared() && backing == Backing::Regular;
    if io && !kernel_area(&v.name) && !shared_file {
        return Some(Finding::Mapping {
            at,
            what: format!("VM_IO memory {}", v.name).trim_end().to_string(),
        });
    }
    // The GPU's devices are the cuda plugin's, judged with the GPU.
    if v.name.starts_with("/dev/nvidia") {
        return None;
    }
    match backing {
        Backing::Device => Some(Finding::Mapping {
            at,
            what: format!("device {}", v.name),
        }),
        Backing::Other => Some(Finding::Mapping {
            at,
            what: v.name.clone(),
        }),
        _ => None,
    }
}

/// Reads `p`'s mappings: the findings about them, and the regular files they map (one entry
/// per file) for `files` to judge.
pub fn read(p: &Proc) -> Result<(Vec<Finding>, Vec<Held>), InspectError> {
    let Some(text) = super::procs::read(&proc_path(p.pid, "smaps"))? else {
        return Ok((vec![], vec![]));
    };
    let mut findings = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    for v in parse_smaps(&text) {
        let mf = proc_path(p.pid, &format!("map_files/{:x}-{:x}", v.start, v.end));
        let meta = if v.inode != 0 || !v.name.is_empty() && !v.name.starts_with('[') {
            std::fs::metadata(&mf).ok()
        } else {
            None
        };
        let backing = match &meta {
            None => Backing::None,
            Some(_) if v.name.starts_with("/[aio]") => Backing::Known,
            Some(m) if m.file_type().is_file() => Backing::Regular,
            Some(m) if m.file_type().is_socket() => Backing::Known,
            Some(m) if m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 5) => {
                Backing::Known
            }
            Some(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => {
                Backing::Device
            }
            Some(_) => Backing::Other,
        };
        findings.extend(judge(p, &v, backing));
        if backing == Backing::Regular && v.name.starts_with('/') {
            let Some(m) = meta else { continue };
            let stat = Stat::of(&m);
            if held
                .iter()
                .any(|h| h.stat.dev == stat.dev && h.stat.ino == stat.ino)
            {
                continue;
            }
            held.push(Held {
                at: p.at(Holder::Map(v.start)),
                link: v.name.clone(),
                stat,
                mnt_id: mnt_id_of(&mf),
            });
        }
    }
    Ok((findings, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fe:00 393230                     /usr/bin/python3.11 (deleted)
Size:                160 kB
VmFlags: rd mr mw me dw sd
7f9bec592000-7f9bec593000 rw-s 00000000 00:10 4321                       anon_inode:[io_uring]
VmFlags: rd wr sh mr mw me ms de mm
7ffd1000-7ffd3000 r--p 00000000 00:00 0                                  [vvar]
VmFlags: rd mr pf io de dd sd
7ffd5000-7ffd6000 r-xp 00000000 00:00 0                                  [uprobes]
VmFlags: ex mr mw me io dd
";

    #[test]
    fn smaps_parse_with_flags() {
        let v = parse_smaps(SMAPS);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].name, "/usr/bin/python3.11 (deleted)");
        assert_eq!(v[0].start, 0x55d0c0a00000);
        assert_eq!(v[1].inode, 4321);
        assert!(v[2].flags.contains(&"io".to_string()));
    }

    #[test]
    fn mappings_criu_cannot_dump_are_found() {
        let p = super::super::procs::read_proc(std::process::id() as i32)
            .unwrap()
            .unwrap();
        let v = parse_smaps(SMAPS);
        assert_eq!(judge(&p, &v[0], Backing::Regular), None);
        assert!(
            matches!(judge(&p, &v[1], Backing::Other), Some(Finding::Mapping { what, .. }) if what.contains("io_uring"))
        );
        assert_eq!(judge(&p, &v[2], Backing::None), None);
        assert!(matches!(
            judge(&p, &v[3], Backing::None),
            Some(Finding::Uprobes { .. })
        ));
        let mut dev = v[0].clone();
        dev.name = "/dev/fb0".into();
        assert!(matches!(
            judge(&p, &dev, Backing::Device),
            Some(Finding::Mapping { .. })
        ));
    }

    #[test]
    fn our_own_mappings_read_back() {
        let p = super::super::procs::read_proc(std::process::id() as i32)
            .unwrap()
            .unwrap();
        let (findings, held) = read(&p).unwrap();
        assert!(findings.is_empty(), "{findings:#?}");
        assert!(held.iter().any(|h| h.mnt_id.is_some()));
    }
}
