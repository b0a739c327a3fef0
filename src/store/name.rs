//! A workload's name, validated once where it enters (a flag, a spec, an archive, a directory
//! listing). Every path under the state root is derived from this type, so a string that was
//! never checked (`..`, `''`, `a/b`) cannot reach the filesystem.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a string is not a workload name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: {why}")]
pub struct NameError {
    pub name: String,
    pub why: String,
}

/// 1 to 64 characters of `[a-zA-Z0-9_.-]`, starting with a letter or digit: never empty, `.`,
/// `..`, a hidden name or a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadName(String);

/// The longest name: it becomes a directory, a socket file name and a cgroup.
pub const MAX_LEN: usize = 64;

impl WorkloadName {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<WorkloadName, NameError> {
        let bad = |why: String| NameError {
            name: s.chars().take(80).collect(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if s.len() > MAX_LEN {
            return Err(bad(format!("it is longer than {MAX_LEN} characters")));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
        {
            return Err(bad(format!(
                "it contains {c:?} (allowed: letters, digits, '_', '.', '-')"
            )));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("it must start with a letter or a digit".into()));
        }
        Ok(WorkloadName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkloadName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadName::parse(s)
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for WorkloadName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for WorkloadName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A name known to be valid, for tests.
#[cfg(test)]
pub(crate) fn n(s: &str) -> WorkloadName {
    WorkloadName::parse(s).expect("a valid test name")
}

impl From<&WorkloadName> for String {
    fn from(n: &WorkloadName) -> String {
        n.0.clone()
    }
}

impl Serialize for WorkloadName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkloadName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        WorkloadName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for good in ["a", "job-1", "A.b_c", "9lives", &"x".repeat(64)] {
            assert_eq!(WorkloadName::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn paths_and_empty_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "a/b",
            "/abs",
            "-x",
            ".hidden",
            "a b",
            "a\0b",
            &"x".repeat(65),
            "é",
        ] {
            let e = WorkloadName::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid name"), "{e}");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<WorkloadName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<WorkloadName>("\"../x\"").is_err());
    }
}
