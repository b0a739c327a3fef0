//! What a spec says about the job's files across a checkpoint: what a restore does when they
//! moved on since (`on_divergence`), and which of them are copied with each generation and put
//! back by its restore (`snapshot`), so memory and data match again.

use super::{invalid, SpecError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// What a restore does when files the job writes changed since its generation was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnDivergence {
    /// Restore, and name the files on stderr, in events and in `inspect`.
    #[default]
    Warn,
    /// Refuse the restore, naming the files.
    Refuse,
}

/// Files copied with each generation (`snapshot: [PATHS]`, or `snapshot: rootfs` for a
/// `--rootfs` job): taken while CRIU holds the tree frozen, put back before its restore.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Snapshot {
    #[default]
    None,
    /// Files or directories, as the job sees them.
    Paths(Vec<PathBuf>),
    /// The job's whole root filesystem.
    Rootfs,
}

impl Snapshot {
    /// From `--snapshot` flags: `rootfs`, or paths.
    pub fn from_flags(flags: &[String]) -> Result<Snapshot, SpecError> {
        if flags.iter().any(|f| f == "rootfs") {
            if flags.len() > 1 {
                return Err(invalid(
                    "snapshot",
                    "`rootfs` already covers every path; give it alone",
                ));
            }
            return Ok(Snapshot::Rootfs);
        }
        Ok(if flags.is_empty() {
            Snapshot::None
        } else {
            Snapshot::Paths(flags.iter().map(PathBuf::from).collect())
        })
    }

    /// Checks the paths: absolute, no `..`, and `rootfs` only with a rootfs.
    pub fn validate(&self, rootfs: Option<&Path>) -> Result<(), SpecError> {
        match self {
            Snapshot::None => Ok(()),
            Snapshot::Rootfs if rootfs.is_none() => Err(invalid(
                "snapshot",
                "`rootfs` needs a --rootfs job (a job on the host's tree names its paths)",
            )),
            Snapshot::Rootfs => Ok(()),
            Snapshot::Paths(ps) => {
                for p in ps {
                    let bad = !p.is_absolute()
                        || p.components()
                            .any(|c| matches!(c, std::path::Component::ParentDir))
                        || p == Path::new("/");
                    if bad {
                        return Err(invalid(
                            "snapshot",
                            format!(
                                "{} is not an absolute path below / without `..`",
                                p.display()
                            ),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SnapshotRepr {
    Word(String),
    List(Vec<PathBuf>),
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Snapshot::None => SnapshotRepr::List(vec![]).serialize(s),
            Snapshot::Paths(p) => SnapshotRepr::List(p.clone()).serialize(s),
            Snapshot::Rootfs => SnapshotRepr::Word("rootfs".into()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Snapshot, D::Error> {
        match SnapshotRepr::deserialize(d)? {
            SnapshotRepr::Word(w) if w == "rootfs" => Ok(Snapshot::Rootfs),
            SnapshotRepr::Word(w) => Err(serde::de::Error::custom(format!(
                "snapshot: {w:?} is neither `rootfs` nor a list of paths"
            ))),
            SnapshotRepr::List(l) if l.is_empty() => Ok(Snapshot::None),
            SnapshotRepr::List(l) => Ok(Snapshot::Paths(l)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_forms_and_flags() {
        let s: Snapshot = serde_yaml::from_str("rootfs").unwrap();
        assert_eq!(s, Snapshot::Rootfs);
        let s: Snapshot = serde_yaml::from_str("[/data, /var/db]").unwrap();
        assert_eq!(s, Snapshot::Paths(vec!["/data".into(), "/var/db".into()]));
        assert!(serde_yaml::from_str::<Snapshot>("everything").is_err());
        assert_eq!(
            serde_yaml::to_string(&Snapshot::Rootfs).unwrap().trim(),
            "rootfs"
        );
        assert_eq!(
            Snapshot::from_flags(&["rootfs".into()]).unwrap(),
            Snapshot::Rootfs
        );
        assert!(Snapshot::from_flags(&["rootfs".into(), "/x".into()]).is_err());
        let o: OnDivergence = serde_yaml::from_str("refuse").unwrap();
        assert_eq!(o, OnDivergence::Refuse);
    }

    #[test]
    fn paths_are_checked() {
        let p = |s: &str| Snapshot::Paths(vec![s.into()]);
        assert!(p("/data").validate(None).is_ok());
        for bad in ["data", "/a/../etc", "/"] {
            assert!(p(bad).validate(None).is_err(), "{bad}");
        }
        assert!(Snapshot::Rootfs.validate(None).is_err());
        assert!(Snapshot::Rootfs.validate(Some(Path::new("/r"))).is_ok());
    }
}
