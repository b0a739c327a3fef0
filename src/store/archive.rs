//! Export archives: one generation (its images and manifest), the init copy it runs from and
//! the log up to the dump, as a zstd-compressed tar, so a job can move to another host or
//! state root.

use super::atomic::{self, FsError};
use super::generations::{CheckpointError, Generation, Manifest, MANIFEST};
use super::state::WorkloadDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The header of an export archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: u32,
    pub name: String,
    pub manifest: Manifest,
}

/// Export archive format version.
pub const EXPORT_FORMAT: u32 = 1;
const HEADER_NAME: &str = "stasis-export.json";

/// Writes generation `g` of `wd` (its images, manifest and init copy) as a zstd-compressed
/// tar to `out`.
pub fn export(wd: &WorkloadDir, g: &Generation, out: impl Write) -> Result<(), CheckpointError> {
    let m = g.verify(wd.name.as_str())?;
    let arch = |why: String| CheckpointError::Archive {
        path: "export".into(),
        why,
    };
    let enc = zstd::stream::write::Encoder::new(out, 3).map_err(|e| arch(e.to_string()))?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    // A snapshot keeps its links as links (a rootfs has many, some pointing nowhere here).
    tar.follow_symlinks(false);
    let header = serde_json::to_vec_pretty(&ExportHeader {
        format: EXPORT_FORMAT,
        name: wd.name.to_string(),
        manifest: m.clone(),
    })
    .map_err(|e| arch(e.to_string()))?;
    let mut h = tar::Header::new_gnu();
    h.set_size(header.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(&mut h, HEADER_NAME, header.as_slice())
        .map_err(|e| arch(e.to_string()))?;
    let mut names: Vec<String> = m.files.iter().map(|f| f.name.clone()).collect();
    names.push(MANIFEST.into());
    for n in names {
        tar.append_path_with_name(g.dir.join(&n), format!("images/{n}"))
            .map_err(|e| arch(format!("{n}: {e}")))?;
    }
    let snap = g.dir.join(super::snapshot::DIR);
    if snap.is_dir() {
        // Owners and times are part of a snapshot (a rootfs's files are not all root's).
        tar.mode(tar::HeaderMode::Complete);
        tar.append_dir_all(super::snapshot::DIR, &snap)
            .map_err(|e| arch(format!("snapshot: {e}")))?;
        tar.mode(tar::HeaderMode::Deterministic);
    }
    tar.append_path_with_name(&m.init_path, "init/stasis-init")
        .map_err(|e| arch(format!("{}: {e}", m.init_path.display())))?;
    // The log up to the dump, segment by segment under its global offsets, so the log on
    // the new host continues this one and the generation's log offset means the same there.
    let mut parts = crate::store::log::segments(&wd.log_path());
    parts.push((
        crate::store::log::current_base(&wd.log_path()),
        wd.log_path(),
    ));
    for (start, p) in parts {
        if start >= m.log_offset {
            break;
        }
        let Ok(f) = fs::File::open(&p) else { continue };
        let len = f
            .metadata()
            .map(|md| md.len())
            .unwrap_or(0)
            .min(m.log_offset - start);
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, format!("log/{start}"), f.take(len))
            .map_err(|e| arch(format!("log: {e}")))?;
    }
    let enc = tar.into_inner().map_err(|e| arch(e.to_string()))?;
    enc.finish()
        .map_err(|e| arch(e.to_string()))?
        .flush()
        .map_err(|e| arch(e.to_string()))?;
    Ok(())
}

/// An unpacked import: where its images and log segments went, what it says, and its init
/// copy (checked, not yet installed: see [`Imported::install_init`]).
pub struct Imported {
    pub header: ExportHeader,
    pub images: PathBuf,
    /// Log segments: (global start offset, unpacked file).
    pub log: Vec<(u64, PathBuf)>,
    init: Vec<u8>,
    init_path: PathBuf,
}

impl Imported {
    /// Puts the archive's init copy into this host's init store, under the name its content
    /// gives it (the path the generation needs, which [`import`] checked).
    pub fn install_init(&self) -> Result<(), FsError> {
        crate::store::init_copies::install(&self.init_path, &self.init)
    }
}

/// Archive text shown to a user: printable, one line, bounded (an archive is untrusted input,
/// and a damaged one yields binary garbage in decoder errors and entry names).
pub fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(200)
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                '?'
            } else {
                c
            }
        })
        .collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Unpacks an export archive into `dest_tmp` (a temp directory). Nothing is written outside
/// `dest_tmp`: the init copy is checked against the generation's manifest and this host's
/// store, and installed only by [`Imported::install_init`].
pub fn import(
    input: impl Read,
    origin: &str,
    dest_tmp: &Path,
    init_store: &Path,
) -> Result<Imported, CheckpointError> {
    let arch = |why: String| CheckpointError::Archive {
        path: printable(origin),
        why: printable(&why),
    };
    let dec = zstd::stream::read::Decoder::new(input)
        .map_err(|e| arch(format!("not a zstd stream: {e}")))?;
    let mut tar = tar::Archive::new(dec);
    // Snapshot copies keep their owners and modes (a rootfs needs them).
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    let images = dest_tmp.join("images");
    atomic::mkdir_p(&images, 0o700)?;
    let mut header: Option<ExportHeader> = None;
    let mut init: Option<Vec<u8>> = None;
    let mut log: Vec<(u64, PathBuf)> = Vec::new();
    for entry in tar.entries().map_err(|e| arch(e.to_string()))? {
        let mut entry = entry.map_err(|e| arch(format!("damaged archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| arch(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if path == HEADER_NAME {
            let mut s = Vec::new();
            entry.read_to_end(&mut s).map_err(|e| arch(e.to_string()))?;
            header = Some(
                serde_json::from_slice(&s).map_err(|e| arch(format!("bad {HEADER_NAME}: {e}")))?,
            );
        } else if let Some(start) = (path == "log").then_some(0).or_else(|| {
            path.strip_prefix("log/")
                .and_then(|s| s.parse::<u64>().ok())
        }) {
            let dst = dest_tmp.join(format!("log.{start}"));
            let mut f = fs::File::create(&dst).map_err(|e| FsError::new("create", &dst, e))?;
            io::copy(&mut entry, &mut f).map_err(|e| FsError::new("write", &dst, e))?;
            log.push((start, dst));
        } else if path == "init/stasis-init" {
            let mut s = Vec::new();
            entry.read_to_end(&mut s).map_err(|e| arch(e.to_string()))?;
            init = Some(s);
        } else if path == super::snapshot::DIR || path.starts_with("snapshot/") {
            // Only files, directories and links, and only below images/snapshot/: tar's
            // unpack_in refuses `..` and parents that lead outside (through a link).
            use tar::EntryType as T;
            let kind = entry.header().entry_type();
            if !matches!(kind, T::Regular | T::Directory | T::Symlink) {
                return Err(arch(format!("unexpected entry {path} ({kind:?})")));
            }
            let inside = entry
                .unpack_in(&images)
                .map_err(|e| arch(format!("{path}: {e}")))?;
            if !inside {
                return Err(arch(format!("entry {path} leads outside the import")));
            }
        } else if let Some(name) = path.strip_prefix("images/") {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(arch(format!("unexpected entry {path}")));
            }
            let dst = images.join(name);
            let mut f = fs::File::create(&dst).map_err(|e| FsError::new("create", &dst, e))?;
            io::copy(&mut entry, &mut f).map_err(|e| FsError::new("write", &dst, e))?;
        } else {
            return Err(arch(format!("unexpected entry {path}")));
        }
    }
    let header = header.ok_or_else(|| arch(format!("no {HEADER_NAME}: not a stasis export")))?;
    if header.format > EXPORT_FORMAT {
        return Err(arch(format!(
            "export format {} is newer than this stasis understands",
            header.format
        )));
    }
    let init = init.ok_or_else(|| arch("no init copy in the archive".into()))?;
    let init_path =
        crate::store::init_copies::import_path(init_store, &header.manifest.init_path, &init)
            .map_err(|e| arch(e.to_string()))?;
    Ok(Imported {
        header,
        images,
        log,
        init,
        init_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::generations::tests::{dump_into, setup};

    /// This test binary as an "init copy" in a store under `d`.
    fn fake_init(d: &Path) -> (PathBuf, PathBuf) {
        let bytes = fs::read("/proc/self/exe").unwrap();
        let key = crate::store::init_copies::elf_build_id(&bytes).expect("build-id");
        let store = d.join("store");
        fs::create_dir_all(&store).unwrap();
        let init = store.join(format!("stasis-init-{key}"));
        fs::write(&init, &bytes).unwrap();
        (store, init)
    }

    #[test]
    fn export_import_round_trip() {
        let (d, wd) = setup();
        let (store, init) = fake_init(d.path());
        let g = dump_into(&wd, 3, &init);
        let mut buf = Vec::new();
        export(&wd, &g, &mut buf).unwrap();
        fs::remove_file(&init).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let imp = import(buf.as_slice(), "x.tar.zst", dest.path(), &store).unwrap();
        assert_eq!(imp.header.name, "job");
        assert_eq!(imp.header.manifest.generation, 3);
        assert_eq!(fs::read(imp.images.join("core-1.img")).unwrap(), b"core");
        assert!(
            !init.exists(),
            "import installed the init copy before being asked"
        );
        imp.install_init().unwrap();
        assert!(init.is_file());
        let e = import(&b"not an archive"[..], "bad.tar.zst", dest.path(), &store)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad.tar.zst"), "{e}");
    }

    #[test]
    fn an_archive_never_chooses_where_its_init_copy_goes() {
        let (d, wd) = setup();
        let (store, init) = fake_init(d.path());
        let g = dump_into(&wd, 1, &init);
        // a manifest that names a path outside the store (as a hostile archive would)
        let mut m = g.manifest("job").unwrap();
        let evil = d.path().join("etc/cron.d/stasis-init-x");
        m.init_path = evil.clone();
        crate::store::atomic::write_json_atomic(&g.manifest_path(), &m).unwrap();
        let mut buf = Vec::new();
        // export reads init from the manifest's path: give it one to read
        fs::create_dir_all(evil.parent().unwrap()).unwrap();
        fs::copy(&init, &evil).unwrap();
        export(&wd, &g, &mut buf).unwrap();
        fs::remove_dir_all(d.path().join("etc")).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let e = import(buf.as_slice(), "evil.tar.zst", dest.path(), &store)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("keeps init copies in"), "{e}");
        assert!(
            !d.path().join("etc").exists(),
            "import wrote outside the store"
        );
    }

    #[test]
    fn garbage_gives_a_printable_one_line_error() {
        let (_d, _wd) = setup();
        let dest = tempfile::tempdir().unwrap();
        let mut junk = vec![0x28u8, 0xb5, 0x2f, 0xfd];
        junk.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        let e = import(
            junk.as_slice(),
            "junk",
            dest.path(),
            Path::new("/nonexistent"),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            !e.contains('\n') && e.chars().all(|c| !c.is_control()),
            "{e:?}"
        );
        assert!(e.chars().count() < 400, "{e}");
    }
}
