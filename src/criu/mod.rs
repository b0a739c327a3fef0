//! The CRIU driver: finds the `criu` binary, checks it once per boot, builds dump and restore
//! argv from typed options (never a shell string), and turns a failed run into the lines of
//! its log that say why.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod argv;
pub mod gate;
pub mod group;
pub mod hook;
pub mod lazy;
pub mod log;
pub mod options;
pub mod rpc;
pub mod stats;

pub use argv::{DumpOpts, RestoreOpts};
pub use log::{failure_reasons, log_says_no_space};
pub use options::CriuOptions;
pub use stats::{read_dump_times, DumpTimes};

/// The oldest CRIU stasis works with: 3.x does not know the `[vvar_vclock]` mapping of
/// kernels since 6.13 and fails every dump on them.
pub const MIN_MAJOR: u32 = 4;

/// How to get a working CRIU, for error messages.
pub const INSTALL_HINT: &str = "install CRIU 4.x: run scripts/install-criu.sh (builds it from Debian's trixie source package), or set STASIS_CRIU to a criu >= 4.0";

/// Errors finding or running CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu not found on PATH (or STASIS_CRIU): {INSTALL_HINT}")]
    NotFound,
    #[error("{path} is CRIU {version}, stasis needs >= {MIN_MAJOR}.0: {INSTALL_HINT}")]
    TooOld { path: PathBuf, version: String },
    #[error("cannot run {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error("`criu check` fails on this host: {0}")]
    Check(String),
    #[error("criu {op} failed: {reasons} (log: {log})")]
    Failed {
        op: &'static str,
        reasons: String,
        log: PathBuf,
        no_space: bool,
    },
}

impl CriuError {
    /// True when the failure was a full disk (a "nothing lost" failure of its own kind).
    pub fn is_no_space(&self) -> bool {
        matches!(self, CriuError::Failed { no_space: true, .. })
    }
}

/// A located, version-checked CRIU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criu {
    pub path: PathBuf,
    pub version: String,
}

/// Parses `criu --version` output ("Version: 4.1.1").
pub fn parse_version(out: &str) -> Option<(String, u32)> {
    let v = out
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))?
        .trim()
        .to_string();
    let major = v.split('.').next()?.parse().ok()?;
    Some((v, major))
}

/// Finds CRIU: `STASIS_CRIU`, else `criu` on PATH (plus the sbin directories, which a
/// non-login root shell may lack), and checks its version.
pub fn locate() -> Result<Criu, CriuError> {
    let path = find_binary()?;
    version_of(path)
}

/// NotFound for a missing binary, else the error running it.
fn missing_or(path: &Path, source: io::Error) -> CriuError {
    if source.kind() == io::ErrorKind::NotFound {
        CriuError::NotFound
    } else {
        CriuError::Exec {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The path `locate` would check.
fn find_binary() -> Result<PathBuf, CriuError> {
    match std::env::var_os("STASIS_CRIU").filter(|v| !v.is_empty()) {
        Some(p) => Ok(PathBuf::from(p)),
        None => {
            let path_var = std::env::var_os("PATH").unwrap_or_default();
            let mut search = std::env::split_paths(&path_var).collect::<Vec<_>>();
            for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
                if !search.iter().any(|p| p == Path::new(extra)) {
                    search.push(extra.into());
                }
            }
            let joined = std::env::join_paths(search).unwrap_or_default();
            which::which_in("criu", Some(joined), "/").map_err(|_| CriuError::NotFound)
        }
    }
}

/// Asks `path --version` and checks it.
fn version_of(path: PathBuf) -> Result<Criu, CriuError> {
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| missing_or(&path, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (version, major) = parse_version(&text).ok_or_else(|| CriuError::TooOld {
        path: path.clone(),
        version: "unknown".into(),
    })?;
    if major < MIN_MAJOR {
        return Err(CriuError::TooOld { path, version });
    }
    Ok(Criu { path, version })
}

/// Where the result of `criu check` is cached: the default runtime directory, shared by every
/// state root (the answer depends only on the binary and the boot), or the root's own runtime
/// directory when that cannot be made.
pub fn cache_dir(root: &crate::store::state::StateRoot) -> PathBuf {
    let shared = Path::new(crate::store::state::DEFAULT_RUNTIME);
    if crate::store::atomic::mkdir_p(shared, 0o700).is_ok() {
        shared.to_path_buf()
    } else {
        root.runtime.clone()
    }
}

/// Finds CRIU and checks it, running `criu --version` and `criu check` only when this binary
/// (path, size, mtime) has not passed them since boot: the answer is cached in `cache_dir`.
pub fn locate_checked(cache_dir: &Path) -> Result<Criu, CriuError> {
    let path = find_binary()?;
    let key = CheckCache::of(&path, String::new()).map_err(|e| missing_or(&path, e))?;
    if let Some(hit) = CheckCache::read(cache_dir) {
        if hit.same_binary(&key) {
            return Ok(Criu {
                path,
                version: hit.version,
            });
        }
    }
    let c = version_of(path)?;
    c.check()?;
    c.record_check(cache_dir);
    Ok(c)
}

impl CheckCache {
    fn file(dir: &Path) -> PathBuf {
        dir.join("criu-check.json")
    }

    fn of(path: &Path, version: String) -> io::Result<CheckCache> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path)?;
        Ok(CheckCache {
            boot_id: boot_id(),
            path: path.to_path_buf(),
            size: meta.size(),
            mtime: meta.mtime(),
            version,
        })
    }

    fn read(dir: &Path) -> Option<CheckCache> {
        fs::read(Self::file(dir))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
    }

    fn same_binary(&self, other: &CheckCache) -> bool {
        (self.boot_id.as_str(), &self.path, self.size, self.mtime)
            == (other.boot_id.as_str(), &other.path, other.size, other.mtime)
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
struct CheckCache {
    boot_id: String,
    path: PathBuf,
    size: u64,
    mtime: i64,
    #[serde(default)]
    version: String,
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Criu {
    /// True when this binary passed `criu check` since boot (the answer is cached in
    /// `cache_dir`, shared by every state root).
    pub fn check_is_cached(&self, cache_dir: &Path) -> bool {
        match (
            CheckCache::read(cache_dir),
            CheckCache::of(&self.path, String::new()),
        ) {
            (Some(hit), Ok(key)) => hit.same_binary(&key),
            _ => false,
        }
    }

    /// Records that this binary passed `criu check` (a failed write only costs a later check).
    pub fn record_check(&self, cache_dir: &Path) {
        if let Ok(key) = CheckCache::of(&self.path, self.version.clone()) {
            let _ = crate::store::atomic::write_json_atomic(&CheckCache::file(cache_dir), &key);
        }
    }

    /// Runs `criu check`.
    pub fn check(&self) -> Result<(), CriuError> {
        let out = Command::new(&self.path)
            .arg("check")
            .output()
            .map_err(|source| CriuError::Exec {
                path: self.path.clone(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("Looks good") {
            Ok(())
        } else {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !log::is_noise(l))
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            Err(CriuError::Check(lines.join("; ")))
        }
    }

    /// Features `criu check --feature` reports for the names given: (name, supported).
    pub fn features(&self, names: &[&str]) -> Vec<(String, bool)> {
        names
            .iter()
            .map(|n| {
                let ok = Command::new(&self.path)
                    .args(["check", "--feature", n])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                (n.to_string(), ok)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("Version: 4.1.1\n"), Some(("4.1.1".into(), 4)));
        assert_eq!(
            parse_version("Version: 3.17.1\nGitID: x\n"),
            Some(("3.17.1".into(), 3))
        );
        assert_eq!(parse_version("garbage"), None);
    }
}
