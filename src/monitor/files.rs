//! The job's files around a dump and a restore: which files the post-dump hook records (those
//! the job may write, on mounts backed by the host) and copies (`snapshot:`), and, before a
//! restore, which of them moved on since, and putting the snapshot back.
//!
//! Only files on the container's root or on mounts carried in from the host can move on: a
//! file on a mount the container made (its /dev/shm, a rootfs job's /tmp) is in the images.

use crate::container::mounts::{self, ExtMount, MountEntry};
use crate::container::tree::HeldFile;
use crate::criu::hook;
use crate::spec::{OnDivergence, Snapshot, Spec};
use crate::store::divergence::{self, Diverged};
use crate::store::generations::{Manifest, SnapshotEntry};
use crate::store::snapshot;
use std::path::{Path, PathBuf};

/// What the post-dump hook records and copies for one dump.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct DumpFiles {
    /// (path inside, host path) of each file the job may write.
    pub watch: Vec<(PathBuf, PathBuf)>,
    pub snapshot: Vec<SnapshotEntry>,
}

impl DumpFiles {
    /// The hook's environment for a dump into `images`.
    pub fn hook_env(&self, images: &Path) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if !self.watch.is_empty() {
            env.push((
                hook::ENV_WATCH.to_string(),
                divergence::encode_list(&self.watch),
            ));
        }
        if !self.snapshot.is_empty() {
            let list: String = self
                .snapshot
                .iter()
                .map(|s| {
                    format!(
                        "{}\t{}\n",
                        s.host.display(),
                        images.join(snapshot::DIR).join(&s.copy).display()
                    )
                })
                .collect();
            env.push((hook::ENV_SNAPSHOT.to_string(), list));
        }
        env
    }
}

/// Plans a dump's file work from the container's mount table, its carried-in mounts and the
/// files its tree holds. A snapshot path the host does not back is an error.
pub(crate) fn plan(
    spec: &Spec,
    table: &[MountEntry],
    ext: &[ExtMount],
    held: &[HeldFile],
) -> Result<DumpFiles, String> {
    let root = spec.rootfs.clone().unwrap_or_else(|| PathBuf::from("/"));
    let watch = held
        .iter()
        .filter(|f| f.written && !f.deleted)
        .filter_map(|f| mounts::host_path(table, ext, &root, &f.path).map(|h| (f.path.clone(), h)))
        .collect();
    let snapshot = match &spec.snapshot {
        Snapshot::None => Vec::new(),
        Snapshot::Rootfs => vec![SnapshotEntry {
            inside: "/".into(),
            host: root.clone(),
            copy: "0".into(),
        }],
        Snapshot::Paths(paths) => paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let host = mounts::host_path(table, ext, &root, p).ok_or_else(|| {
                    format!(
                        "snapshot {}: it is on a filesystem the container made for itself, whose content every checkpoint already holds",
                        p.display()
                    )
                })?;
                if std::fs::symlink_metadata(&host).is_err() {
                    return Err(format!(
                        "snapshot {}: {} does not exist",
                        p.display(),
                        host.display()
                    ));
                }
                Ok(SnapshotEntry {
                    inside: p.clone(),
                    host,
                    copy: i.to_string(),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(DumpFiles { watch, snapshot })
}

/// Before a restore from the generation in `dir`: the recorded files that moved on since
/// (those a snapshot puts back excepted), or, with `on_divergence: refuse`, the refusal naming
/// them; then the snapshot is put back, so the restored memory meets the files it knew.
pub(crate) fn before_restore(
    dir: &Path,
    manifest: &Manifest,
    policy: OnDivergence,
) -> Result<Vec<Diverged>, String> {
    let records = divergence::read(dir).map_err(|e| e.to_string())?;
    let restored: Vec<PathBuf> = manifest.snapshot.iter().map(|s| s.host.clone()).collect();
    let diverged = divergence::compare(&records, &restored);
    if policy == OnDivergence::Refuse && !diverged.is_empty() {
        return Err(format!(
            "files changed since generation {} was taken (on_divergence: refuse): {}",
            manifest.generation,
            divergence::describe(&diverged)
        ));
    }
    for s in &manifest.snapshot {
        let copy = dir.join(snapshot::DIR).join(&s.copy);
        snapshot::put_back(&copy, &s.host).map_err(|e| {
            format!(
                "putting back the snapshot of {} at {}: {e}",
                s.inside.display(),
                s.host.display()
            )
        })?;
    }
    Ok(diverged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(path: &str, written: bool, deleted: bool) -> HeldFile {
        HeldFile {
            path: path.into(),
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            deleted,
            written,
            append: false,
        }
    }

    #[test]
    fn only_written_host_backed_files_are_watched() {
        let table = mounts::parse_mountinfo(
            "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:5 / /dev/shm rw - tmpfs shm rw\n3 1 254:0 /srv/v /data rw - ext4 /dev/vda rw\n",
        );
        let ext = vec![ExtMount {
            key: "m0".into(),
            inside: "/data".into(),
            host: "/srv/v".into(),
        }];
        let files = [
            held("/home/u/out", true, false),
            held("/etc/passwd", false, false),
            held("/dev/shm/seg", true, false),
            held("/tmp/gone", true, true),
            held("/data/db", true, false),
        ];
        let spec = Spec::default();
        let p = plan(&spec, &table, &ext, &files).unwrap();
        assert_eq!(
            p.watch,
            vec![
                ("/home/u/out".into(), "/home/u/out".into()),
                ("/data/db".into(), "/srv/v/db".into())
            ]
        );
        let mut spec = Spec {
            snapshot: Snapshot::Paths(vec!["/dev/shm/x".into()]),
            ..Spec::default()
        };
        let e = plan(&spec, &table, &ext, &files).unwrap_err();
        assert!(e.contains("already holds"), "{e}");
        spec.snapshot = Snapshot::Paths(vec!["/data/nope-stasis-test".into()]);
        assert!(plan(&spec, &table, &ext, &files)
            .unwrap_err()
            .contains("does not exist"));
    }

    #[test]
    fn the_hook_is_told_what_to_record_and_copy() {
        let f = DumpFiles {
            watch: vec![("/a".into(), "/h/a".into())],
            snapshot: vec![SnapshotEntry {
                inside: "/d".into(),
                host: "/h/d".into(),
                copy: "0".into(),
            }],
        };
        let env = f.hook_env(Path::new("/g/.tmp-3"));
        assert_eq!(env[0], (hook::ENV_WATCH.into(), "/a\t/h/a\n".into()));
        assert_eq!(
            env[1],
            (
                hook::ENV_SNAPSHOT.into(),
                "/h/d\t/g/.tmp-3/snapshot/0\n".into()
            )
        );
        assert!(DumpFiles::default().hook_env(Path::new("/g")).is_empty());
    }
}
