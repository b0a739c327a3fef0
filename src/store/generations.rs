//! Checkpoint generations: one directory per checkpoint under the workload's `checkpoints/`,
//! dumped into a temp directory and renamed into place only after CRIU succeeded, so a crash
//! or a failed dump never leaves a half generation that a restore would pick.
//!
//! Each generation has a manifest: when and how it was taken, the spec, the mounts CRIU was
//! told are external (and the host paths a restore binds back), the CRIU flags, the log
//! offset at the dump, the init copy it runs from, the exec sessions in it, and the size (and,
//! for metadata images, a CRC) of every file. A restore verifies the files against the manifest and refuses a generation that
//! does not match, naming the file.
//!
//! Images are not fsynced by CRIU (nor by runc or podman); `checkpoint --all`, the maintenance
//! path, syncs the filesystem once at the end. A generation lost to a power cut fails
//! verification and the previous one is used.

use crate::container::mounts::ExtMount;
use crate::criu::options::Flags;
use crate::protocol::DumpStats;
use crate::spec::Spec;
use crate::store::atomic::{self, FsError};
use crate::store::state::WorkloadDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Manifest file name inside a generation.
pub const MANIFEST: &str = "manifest.json";
/// Current manifest format. 2: the container holds its own stdio (nothing but mounts is
/// external), every container has a mount namespace. 3: /dev/shm may be external (`shm`),
/// which an older stasis would not bind back.
pub const MANIFEST_VERSION: u32 = 3;
/// The oldest manifest format this stasis restores.
pub const MIN_MANIFEST_VERSION: u32 = 2;

/// Errors about generations.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{name} has no checkpoint")]
    NoGeneration { name: String },
    #[error("{name} has no generation {gen}")]
    NoSuchGeneration { name: String, gen: u32 },
    #[error("generation {gen} of {name} is corrupt: {why}")]
    Corrupt { name: String, gen: u32, why: String },
    #[error("archive {path}: {why}")]
    Archive { path: String, why: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// A file of a generation, for verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// CRC-32 of the content (metadata images; memory pages are checked by size only, to keep
    /// restore as fast as raw CRIU's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
}

/// An exec session recorded in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub id: crate::store::sessions::SessionId,
    pub tty: bool,
    pub stdin: bool,
    /// The session's record as it was at the dump, so an import (another state root, with no
    /// record of its own) lists and reattaches the session like the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<crate::store::sessions::SessionRecord>,
}

/// A generation's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub generation: u32,
    pub name: String,
    pub created_at: u64,
    pub criu_version: String,
    pub spec: Spec,
    /// The container's root at restore: `/` for one on the host's tree, else its rootfs.
    pub root: PathBuf,
    /// Mounts carried in from the host, declared external at the dump and bound back from
    /// these host paths at restore.
    pub mounts: Vec<ExtMount>,
    /// Where the workload's log stood at the dump (a restore of an older generation marks in
    /// the log that time went back to here).
    pub log_offset: u64,
    /// The init copy the dumped init runs from (it must exist at restore).
    pub init_path: PathBuf,
    pub leave_running: bool,
    /// The CRIU flags the dump ran with (its restore uses the matching ones).
    pub criu: Flags,
    #[serde(default)]
    pub sessions: Vec<SessionEntry>,
    /// The workload's pty size at the dump.
    #[serde(default)]
    pub winsize: Option<(u16, u16)>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub stats: DumpStats,
    /// The host's GPUs, for a job that held one (a restore needs the same model and count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::cuda::facts::GpuFacts>,
    /// Files copied into the generation's `snapshot/` while the tree was frozen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot: Vec<SnapshotEntry>,
    /// The container's /dev/shm was empty and declared external: a restore binds a fresh
    /// tmpfs made this way (see `crate::container::shm`). None: CRIU dumped its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<crate::container::shm::ShmMount>,
}

/// One snapshot copy in a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// The path as the job sees it.
    pub inside: PathBuf,
    /// Where it is on the host, and where a restore puts the copy back.
    pub host: PathBuf,
    /// The copy's name under `snapshot/` in the generation.
    pub copy: String,
}

/// A generation on disk.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u32,
    pub dir: PathBuf,
}

impl Generation {
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    /// Reads the manifest (without verifying the files).
    pub fn manifest(&self, name: &str) -> Result<Manifest, CheckpointError> {
        let p = self.manifest_path();
        let data = fs::read(&p).map_err(|e| CheckpointError::Corrupt {
            name: name.into(),
            gen: self.number,
            why: format!("{}: {e}", p.display()),
        })?;
        #[derive(Deserialize)]
        struct V {
            version: u32,
        }
        if let Ok(V { version }) = serde_json::from_slice::<V>(&data) {
            if version < MIN_MANIFEST_VERSION {
                return Err(CheckpointError::Corrupt {
                    name: name.into(),
                    gen: self.number,
                    why: format!("it was written by an older stasis (manifest version {version}), whose containers this version cannot restore: restore it with that version"),
                });
            }
        }
        serde_json::from_slice(&data).map_err(|e| CheckpointError::Corrupt {
            name: name.into(),
            gen: self.number,
            why: format!("{}: {e}", p.display()),
        })
    }

    /// Reads the manifest and checks every file against it.
    pub fn verify(&self, name: &str) -> Result<Manifest, CheckpointError> {
        let m = self.manifest(name)?;
        let bad = |why: String| CheckpointError::Corrupt {
            name: name.into(),
            gen: self.number,
            why,
        };
        if m.version > MANIFEST_VERSION {
            return Err(bad(format!(
                "manifest version {} is newer than this stasis understands",
                m.version
            )));
        }
        if m.files.is_empty() {
            return Err(bad("the manifest lists no image files".into()));
        }
        for f in &m.files {
            let p = self.dir.join(&f.name);
            let meta = fs::metadata(&p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
            if meta.len() != f.size {
                return Err(bad(format!(
                    "{} is {} bytes, the manifest says {}",
                    p.display(),
                    meta.len(),
                    f.size
                )));
            }
            if let Some(want) = f.crc32 {
                let got = crc_of(&p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
                if got != want {
                    return Err(bad(format!("{} does not match its checksum", p.display())));
                }
            }
        }
        if !m.init_path.is_file() {
            return Err(bad(format!(
                "the init copy it runs from, {}, is missing",
                m.init_path.display()
            )));
        }
        Ok(m)
    }
}

fn crc_of(p: &Path) -> io::Result<u32> {
    let mut f = fs::File::open(p)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Lists the files of a freshly dumped directory for its manifest.
pub fn file_entries(dir: &Path) -> io::Result<Vec<FileEntry>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Our own markers (the pending manifest, the hook's mark) are not images.
        if name == MANIFEST || name.starts_with('.') || !e.file_type()?.is_file() {
            continue;
        }
        let size = e.metadata()?.len();
        let crc32 = if name.starts_with("pages-") {
            None
        } else {
            Some(crc_of(&e.path())?)
        };
        v.push(FileEntry { name, size, crc32 });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// Generations of a workload, oldest first (temp directories excluded).
pub fn list(wd: &WorkloadDir) -> Vec<Generation> {
    let mut v: Vec<Generation> = fs::read_dir(wd.checkpoints())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n: u32 = e.file_name().to_str()?.parse().ok()?;
                    e.file_type().ok()?.is_dir().then(|| Generation {
                        number: n,
                        dir: e.path(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|g| g.number);
    v
}

/// The generation `n`, or the newest.
pub fn pick(wd: &WorkloadDir, n: Option<u32>) -> Result<Generation, CheckpointError> {
    let all = list(wd);
    match n {
        Some(n) => {
            all.into_iter()
                .find(|g| g.number == n)
                .ok_or(CheckpointError::NoSuchGeneration {
                    name: wd.name.to_string(),
                    gen: n,
                })
        }
        None => all.into_iter().last().ok_or(CheckpointError::NoGeneration {
            name: wd.name.to_string(),
        }),
    }
}

/// The number the next generation gets (numbers are never reused, even after pruning).
pub fn next_number(wd: &WorkloadDir, last_known: u32) -> u32 {
    list(wd)
        .last()
        .map(|g| g.number)
        .unwrap_or(0)
        .max(last_known)
        + 1
}

/// A temp directory for dumping generation `n` (removes leftovers of a crashed earlier try).
pub fn temp_dir(wd: &WorkloadDir, n: u32) -> Result<PathBuf, FsError> {
    let base = wd.checkpoints();
    atomic::mkdir_p(&base, 0o700)?;
    let p = base.join(format!(".tmp-{n}"));
    if p.exists() {
        fs::remove_dir_all(&p).map_err(|e| FsError::new("remove", &p, e))?;
    }
    atomic::mkdir_p(&p, 0o700)?;
    Ok(p)
}

/// The manifest a dump's temp directory holds while CRIU runs: everything but the files,
/// so a dump that CRIU finished after its monitor died can still become a generation.
pub const PENDING: &str = ".manifest.pending";

/// Keeps what dumps left behind: a temp directory whose images CRIU finished (its post-dump
/// hook marked them) and whose pending manifest says what they are becomes the generation it
/// was meant to be; every other temp directory is removed. Returns the recovered numbers.
///
/// Called under the workload lock with no monitor (and so no CRIU) running.
pub fn recover_temps(wd: &WorkloadDir) -> Vec<u32> {
    let mut recovered = Vec::new();
    let Ok(rd) = fs::read_dir(wd.checkpoints()) else {
        return recovered;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".tmp-") {
            continue;
        }
        let dir = e.path();
        if crate::criu::hook::images_complete(&dir) {
            if let Some(n) = finish_pending(wd, &dir) {
                recovered.push(n);
                continue;
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
    recovered.sort();
    recovered
}

/// Turns a finished temp directory with a pending manifest into its generation.
fn finish_pending(wd: &WorkloadDir, dir: &Path) -> Option<u32> {
    let mut m: Manifest = serde_json::from_slice(&fs::read(dir.join(PENDING)).ok()?).ok()?;
    let _ = fs::remove_file(dir.join(crate::criu::hook::COMPLETE));
    let _ = fs::remove_file(dir.join(PENDING));
    m.files = file_entries(dir).ok()?;
    m.stats.size = m.files.iter().map(|f| f.size).sum();
    if list(wd).iter().any(|g| g.number == m.generation) {
        return None;
    }
    commit(wd, dir, &m).ok().map(|g| g.number)
}

/// Removes temp directories left by dumps that never finished.
pub fn clean_temps(wd: &WorkloadDir) {
    if let Ok(rd) = fs::read_dir(wd.checkpoints()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Writes the manifest into the temp directory and renames it into place as generation
/// `m.generation`, durably: a migration's, whose source lets the job go once it is there.
pub fn commit(wd: &WorkloadDir, tmp: &Path, m: &Manifest) -> Result<Generation, FsError> {
    let g = place(wd, tmp, m, true)?;
    atomic::sync_dir(&wd.checkpoints())?;
    Ok(g)
}

/// Like [`commit`], without waiting for the disk: a checkpoint's. Its images are not synced
/// either (see the module's note), so syncing the manifest and the rename would buy nothing
/// but 2 or 3 journal commits per checkpoint. After a power cut the generation is there
/// whole, or fails verification (and older ones are used), or is not there; the journal
/// keeps the rename before the prune of older generations that follows it.
pub fn commit_quick(wd: &WorkloadDir, tmp: &Path, m: &Manifest) -> Result<Generation, FsError> {
    place(wd, tmp, m, false)
}

/// Writes the manifest (synced if `durable`) and renames the directory into place.
fn place(wd: &WorkloadDir, tmp: &Path, m: &Manifest, durable: bool) -> Result<Generation, FsError> {
    let manifest = tmp.join(MANIFEST);
    if durable {
        atomic::write_json_atomic(&manifest, m)?;
    } else {
        atomic::write_atomic_quick(&manifest, &atomic::to_json(&manifest, m)?)?;
    }
    // Images staged outside `checkpoints/` (a stream migration's, on its target) may be the
    // workload's first generation: the directory may not exist yet.
    atomic::mkdir_p(&wd.checkpoints(), 0o700)?;
    let dst = wd.checkpoints().join(m.generation.to_string());
    fs::rename(tmp, &dst).map_err(|e| FsError::new("rename", &dst, e))?;
    Ok(Generation {
        number: m.generation,
        dir: dst,
    })
}

/// Takes all but the newest `keep` generations out of the list; returns their directories,
/// for the caller to delete (deleting a big generation takes tens of ms on ext4).
pub fn prune(wd: &WorkloadDir, keep: u32) -> Vec<PathBuf> {
    let all = list(wd);
    let n = all.len().saturating_sub(keep as usize);
    let mut trash = vec![];
    for g in all.into_iter().take(n) {
        // Renamed at once, so a generation is gone from the list (and a crash mid-delete never
        // leaves half of one under a number); deleted by the caller, possibly later.
        let t = wd.checkpoints().join(format!(".tmp-prune-{}", g.number));
        if fs::rename(&g.dir, &t).is_ok() {
            trash.push(t);
        }
    }
    trash
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::state::StateRoot;

    pub(crate) fn setup() -> (tempfile::TempDir, WorkloadDir) {
        let d = tempfile::tempdir().unwrap();
        let r = StateRoot::from_flag(Some(d.path().to_path_buf()));
        r.ensure().unwrap();
        let w = r.workload(&crate::store::name::n("job"));
        w.create().unwrap();
        (d, w)
    }

    fn manifest(gen: u32, files: Vec<FileEntry>, init: PathBuf) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            generation: gen,
            name: "job".into(),
            created_at: 1,
            criu_version: "4.1.1".into(),
            spec: Spec::default(),
            root: "/".into(),
            mounts: vec![ExtMount {
                key: "m0".into(),
                inside: "/sys".into(),
                host: "/sys".into(),
            }],
            log_offset: 0,
            init_path: init,
            leave_running: false,
            criu: Flags::default(),
            sessions: vec![],
            winsize: None,
            files,
            stats: DumpStats::default(),
            gpu: None,
            snapshot: vec![],
            shm: None,
        }
    }

    pub(crate) fn dump_into(wd: &WorkloadDir, n: u32, init: &Path) -> Generation {
        let tmp = temp_dir(wd, n).unwrap();
        fs::write(tmp.join("core-1.img"), b"core").unwrap();
        fs::write(tmp.join("pages-1.img"), vec![1u8; 8192]).unwrap();
        let files = file_entries(&tmp).unwrap();
        commit(wd, &tmp, &manifest(n, files, init.to_path_buf())).unwrap()
    }

    #[test]
    fn manifests_with_sessions_round_trip() {
        let (d, _wd) = setup();
        let mut m = manifest(1, vec![], d.path().join("init"));
        m.sessions.push(SessionEntry {
            id: crate::store::sessions::SessionId::parse("abcabcabcabc").unwrap(),
            tty: false,
            stdin: true,
            record: None,
        });
        let j = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<Manifest>(&j).unwrap(), m);
    }

    #[test]
    fn an_old_manifest_is_refused_with_a_reason() {
        let (d, wd) = setup();
        let init = d.path().join("stasis-init-x");
        fs::write(&init, b"bin").unwrap();
        let g = dump_into(&wd, 1, &init);
        fs::write(g.manifest_path(), br#"{"version":1,"generation":1}"#).unwrap();
        let e = g.verify("job").unwrap_err().to_string();
        assert!(e.contains("older stasis (manifest version 1)"), "{e}");
    }

    /// Issue 11: a stream migration's target stages the images beside `checkpoints/`, which
    /// does not exist yet; committing them failed ("rename …/checkpoints/1: No such file"),
    /// so the images were never kept, and a restore that failed after the hand-over had
    /// nothing to try again from: the job ran nowhere.
    #[test]
    fn item_11_images_staged_elsewhere_become_the_first_generation() {
        let (d, wd) = setup();
        let init = d.path().join("stasis-init-x");
        fs::write(&init, b"bin").unwrap();
        let stage = wd.dir.join(".migrate-stage");
        fs::create_dir(&stage).unwrap();
        fs::write(stage.join("pages-1.img"), vec![1u8; 4096]).unwrap();
        assert!(!wd.checkpoints().exists());
        let files = file_entries(&stage).unwrap();
        let g = commit(&wd, &stage, &manifest(1, files, init)).unwrap();
        assert_eq!(
            list(&wd).iter().map(|g| g.number).collect::<Vec<_>>(),
            vec![1]
        );
        g.verify("job").unwrap();
    }

    #[test]
    fn commit_list_verify_prune() {
        let (d, wd) = setup();
        let init = d.path().join("stasis-init-x");
        fs::write(&init, b"bin").unwrap();
        for n in 1..=4 {
            dump_into(&wd, n, &init);
        }
        assert_eq!(
            list(&wd).iter().map(|g| g.number).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(pick(&wd, None).unwrap().number, 4);
        pick(&wd, Some(2)).unwrap().verify("job").unwrap();
        let trash = prune(&wd, 2);
        assert_eq!(trash.len(), 2);
        for t in trash {
            assert!(t
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-"));
            fs::remove_dir_all(t).unwrap();
        }
        assert_eq!(
            list(&wd).iter().map(|g| g.number).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(next_number(&wd, 0), 5);
        assert_eq!(next_number(&wd, 9), 10);
        assert!(matches!(
            pick(&wd, Some(1)),
            Err(CheckpointError::NoSuchGeneration { .. })
        ));
    }

    #[test]
    fn temp_dirs_are_never_generations() {
        let (_d, wd) = setup();
        temp_dir(&wd, 1).unwrap();
        assert!(list(&wd).is_empty());
        assert!(matches!(
            pick(&wd, None),
            Err(CheckpointError::NoGeneration { .. })
        ));
        clean_temps(&wd);
        assert_eq!(fs::read_dir(wd.checkpoints()).unwrap().count(), 0);
    }

    #[test]
    fn corruption_is_named() {
        let (d, wd) = setup();
        let init = d.path().join("stasis-init-x");
        fs::write(&init, b"bin").unwrap();
        let g = dump_into(&wd, 1, &init);
        fs::write(g.dir.join("core-1.img"), b"CORE").unwrap();
        let e = g.verify("job").unwrap_err().to_string();
        assert!(e.contains("core-1.img") && e.contains("checksum"), "{e}");
        fs::write(g.dir.join("pages-1.img"), b"short").unwrap();
        fs::write(g.dir.join("core-1.img"), b"core").unwrap();
        let e = g.verify("job").unwrap_err().to_string();
        assert!(e.contains("pages-1.img") && e.contains("bytes"), "{e}");
        fs::write(g.dir.join(MANIFEST), b"{").unwrap();
        assert!(g.verify("job").is_err());
    }

    #[test]
    fn missing_init_copy_is_named() {
        let (d, wd) = setup();
        let init = d.path().join("stasis-init-gone");
        fs::write(&init, b"bin").unwrap();
        let g = dump_into(&wd, 1, &init);
        fs::remove_file(&init).unwrap();
        let e = g.verify("job").unwrap_err().to_string();
        assert!(e.contains("stasis-init-gone"), "{e}");
    }
}
