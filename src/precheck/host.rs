//! The host side of a pre-check: what stasis and CRIU are here, and whether this CPU can run
//! what another host's CPU dumped (`criu cpuinfo check` on that host's `criu cpuinfo dump`
//! image, the same check a restore makes). `stasis check NAME` uses this host's facts; with
//! `--target HOST` the hidden `stasis host-facts` prints them on HOST, as JSON, for
//! [`super::target`] to compare.

use crate::criu::{self, Criu};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// CRIU features a move between hosts may depend on.
pub const FEATURES: &[&str] = &[
    "uffd-noncoop",
    "mem_dirty_track",
    "pidfd_store",
    "timens",
    "network_lock_nftables",
    "tcp_half_closed",
];
/// The image `criu cpuinfo dump` writes.
pub const CPUINFO_IMG: &str = "cpuinfo.img";
/// Where CRIU keeps its cache of kernel probes (`criu.kdat`): only when this is a tmpfs,
/// since a cache on a disk could outlive the kernel it describes.
pub const KDAT_DIR: &str = "/run";

/// This host's stasis and CRIU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub stasis_version: String,
    /// The CLI↔monitor protocol this stasis speaks.
    pub protocol: u32,
    /// The newest checkpoint manifest version this stasis reads.
    pub manifest: u32,
    pub kernel: String,
    pub arch: String,
    /// CRIU, or why there is none that works.
    pub criu: Option<CriuFacts>,
    #[serde(default)]
    pub criu_error: Option<String>,
    /// The GPUs (empty without the NVIDIA driver).
    #[serde(default)]
    pub gpus: String,
    /// The answer of `criu cpuinfo check` for an image given to `host-facts`.
    #[serde(default)]
    pub cpuinfo: Option<Check>,
    /// Whether [`KDAT_DIR`] is a tmpfs, so CRIU caches its kernel probes there; without the
    /// cache every CRIU run re-probes the kernel (tens of ms per dump and restore). None:
    /// unknown (statfs failed, or a stasis too old to say).
    #[serde(default)]
    pub run_tmpfs: Option<bool>,
}

/// A located CRIU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuFacts {
    pub path: String,
    pub version: String,
    /// `criu check`.
    pub check: Check,
    /// `criu check --feature NAME` for [`FEATURES`] (empty unless asked for).
    #[serde(default)]
    pub features: BTreeMap<String, bool>,
}

/// A check's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl HostFacts {
    /// The CRIU version as (major, minor), when there is one.
    pub fn criu_version(&self) -> Option<(u32, u32)> {
        let c = self.criu.as_ref()?;
        version_pair(&c.version)
    }
}

/// "4.2.1" -> (4, 2).
pub fn version_pair(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next().flatten().unwrap_or(0)))
}

/// "6.18.0-1-amd64" -> (6, 18).
pub fn kernel_pair(release: &str) -> Option<(u32, u32)> {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Gathers this host's facts. `features` also asks CRIU for [`FEATURES`] (tens of ms each);
/// `cache_dir` is where `criu check`'s answer is cached for this boot.
pub fn gather(cache_dir: &Path, features: bool) -> HostFacts {
    let uname = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname
            .as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut h = HostFacts {
        hostname: field(|u| u.nodename()),
        stasis_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: crate::protocol::PROTO_VERSION,
        manifest: crate::store::generations::MANIFEST_VERSION,
        kernel: field(|u| u.release()),
        arch: field(|u| u.machine()),
        gpus: {
            let g =
                crate::cuda::facts::GpuFacts::from_proc(Path::new(crate::cuda::facts::PROC_NVIDIA));
            if g.is_empty() {
                String::new()
            } else {
                g.describe()
            }
        },
        run_tmpfs: is_tmpfs(Path::new(KDAT_DIR)),
        ..Default::default()
    };
    match criu::locate() {
        Ok(c) => {
            let check = if c.check_is_cached(cache_dir) {
                Check {
                    ok: true,
                    detail: "Looks good".into(),
                }
            } else {
                match c.check() {
                    Ok(()) => {
                        c.record_check(cache_dir);
                        Check {
                            ok: true,
                            detail: "Looks good".into(),
                        }
                    }
                    Err(e) => Check {
                        ok: false,
                        detail: e.to_string(),
                    },
                }
            };
            let features = if features {
                c.features(FEATURES).into_iter().collect()
            } else {
                BTreeMap::new()
            };
            h.criu = Some(CriuFacts {
                path: c.path.display().to_string(),
                version: c.version.clone(),
                check,
                features,
            });
        }
        Err(e) => h.criu_error = Some(e.to_string()),
    }
    h
}

/// Whether `dir` is on a tmpfs (None when statfs fails).
pub fn is_tmpfs(dir: &Path) -> Option<bool> {
    nix::sys::statfs::statfs(dir)
        .ok()
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Runs a CRIU subcommand quietly; its output on failure, without CRIU's noise.
fn run_criu(c: &Criu, args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new(&c.path)
        .args(args)
        .arg("-D")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", c.path.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !criu::log::is_noise(l))
        .collect();
    Err(if lines.is_empty() {
        format!("criu {} failed ({})", args.join(" "), out.status)
    } else {
        lines.join("; ")
    })
}

/// This CPU's description for another host to check (`criu cpuinfo dump`).
pub fn cpuinfo_dump(c: &Criu) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    run_criu(c, &["cpuinfo", "dump"], dir.path())?;
    let img = dir.path().join(CPUINFO_IMG);
    std::fs::read(&img).map_err(|e| format!("read {}: {e}", img.display()))
}

/// Whether this CPU can run what a CPU described by `image` dumped (`criu cpuinfo check`).
pub fn cpuinfo_check(c: &Criu, image: &[u8]) -> Check {
    let r = tempfile::tempdir()
        .map_err(|e| format!("temp dir: {e}"))
        .and_then(|dir| {
            let img = dir.path().join(CPUINFO_IMG);
            std::fs::write(&img, image).map_err(|e| format!("write {}: {e}", img.display()))?;
            run_criu(c, &["cpuinfo", "check"], dir.path())
        });
    match r {
        Ok(()) => Check {
            ok: true,
            detail: "this CPU has what the other host's CPU offered".into(),
        },
        Err(detail) => Check { ok: false, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(version_pair("4.2.1"), Some((4, 2)));
        assert_eq!(version_pair("4"), Some((4, 0)));
        assert_eq!(version_pair("x"), None);
        assert_eq!(kernel_pair("6.18.0-1-amd64"), Some((6, 18)));
        assert!(version_pair("4.10").unwrap() > (4, 2));
    }

    #[test]
    fn facts_round_trip_as_json() {
        let h = HostFacts {
            hostname: "a".into(),
            criu: Some(CriuFacts {
                version: "4.2.1".into(),
                ..Default::default()
            }),
            cpuinfo: Some(Check {
                ok: false,
                detail: "x".into(),
            }),
            ..Default::default()
        };
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HostFacts>(&j).unwrap(), h);
        assert_eq!(h.criu_version(), Some((4, 2)));
    }
}
