//! What a host's GPUs are, for `stasis check` and for a checkpoint's manifest: a CUDA restore
//! needs the same GPU model and count as the dump (CRIU's cuda plugin README), so a generation
//! records them and a restore compares.

use super::driver::{self, DriverError, Op, Reply};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Where the NVIDIA kernel module describes itself and each GPU.
pub const PROC_NVIDIA: &str = "/proc/driver/nvidia";

/// The GPUs of a host and the driver that runs them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFacts {
    /// The NVIDIA kernel module's version ("580.159.04").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The CUDA version libcuda implements ("CUDA 12.8"), when it could be loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<String>,
    /// One model name per GPU, in the driver's order.
    pub gpus: Vec<String>,
}

impl GpuFacts {
    /// Facts from the kernel module's files under `proc_nvidia` (normally [`PROC_NVIDIA`]):
    /// no library is loaded, so this is cheap enough for any caller. Empty without a driver.
    pub fn from_proc(proc_nvidia: &Path) -> GpuFacts {
        let driver = fs::read_to_string(proc_nvidia.join("version"))
            .ok()
            .and_then(|t| parse_module_version(&t));
        let mut dirs: Vec<PathBuf> = fs::read_dir(proc_nvidia.join("gpus"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        // The directories are PCI bus ids: sorted, they give the driver's device order.
        dirs.sort();
        let gpus = dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("information")).ok())
            .map(|t| parse_model(&t).unwrap_or_else(|| "unknown NVIDIA GPU".into()))
            .collect();
        GpuFacts {
            driver,
            cuda: None,
            gpus,
        }
    }

    /// Adds what the driver API said (a probe's reply): its CUDA version, and its device
    /// names, which take precedence over the kernel module's where it gave any.
    pub fn merge_probe(&mut self, probe: &Reply) {
        self.cuda = probe.version.map(|v| v.to_string());
        if !probe.gpus.is_empty() {
            self.gpus = probe.gpus.clone();
        }
    }

    /// True when the host has no NVIDIA GPU that stasis can see.
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// The GPUs as "2 x NVIDIA H100 80GB HBM3" (several models joined with " + ").
    pub fn describe(&self) -> String {
        if self.gpus.is_empty() {
            return "no NVIDIA GPU".into();
        }
        let mut groups: Vec<(String, usize)> = Vec::new();
        for g in &self.gpus {
            match groups.iter_mut().find(|(m, _)| m == g) {
                Some((_, n)) => *n += 1,
                None => groups.push((g.clone(), 1)),
            }
        }
        groups
            .iter()
            .map(|(m, n)| format!("{n} x {m}"))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// The models, compared the way a restore must: same count, same models, order aside,
    /// spacing and case aside (the kernel module and the driver API spell them alike, but a
    /// manifest written by one may be compared with facts read by the other).
    fn key(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .gpus
            .iter()
            .map(|g| {
                g.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            })
            .collect();
        k.sort();
        k
    }
}

impl fmt::Display for GpuFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())?;
        if let Some(d) = &self.driver {
            write!(f, ", driver {d}")?;
        }
        if let Some(c) = &self.cuda {
            write!(f, ", {c}")?;
        }
        Ok(())
    }
}

/// A restore onto GPUs that differ from the dump's.
#[derive(Debug, thiserror::Error)]
#[error("this checkpoint holds GPU state from {saved}, but this host has {here}: a GPU job restores only onto the same GPU model and count")]
pub struct GpuMismatch {
    /// The dump's GPUs, described.
    pub saved: String,
    /// This host's GPUs, described.
    pub here: String,
}

/// Checks that `here` can take a restore of GPU state dumped on `saved`.
pub fn same_gpus(saved: &GpuFacts, here: &GpuFacts) -> Result<(), GpuMismatch> {
    if saved.key() == here.key() {
        Ok(())
    } else {
        Err(GpuMismatch {
            saved: saved.describe(),
            here: here.describe(),
        })
    }
}

/// This host's facts: the kernel module's, completed by the driver API through the helper
/// where libcuda loads (its error is returned beside the facts, which stay usable).
pub fn probe() -> (GpuFacts, Result<Reply, DriverError>) {
    let mut facts = GpuFacts::from_proc(Path::new(PROC_NVIDIA));
    let reply = driver::run(&Op::Probe).and_then(|r| r.outcome(&Op::Probe).map(|_| r));
    if let Ok(r) = &reply {
        facts.merge_probe(r);
    }
    (facts, reply)
}

/// The module version in /proc/driver/nvidia/version's "NVRM version:" line: the first word
/// made of digits and dots.
fn parse_module_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

fn parse_model(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(gpus: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("version"),
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U16)  Thu Jul 10 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
        )
        .unwrap();
        for (bus, model) in gpus {
            let g = d.path().join("gpus").join(bus);
            fs::create_dir_all(&g).unwrap();
            fs::write(
                g.join("information"),
                format!("Model: \t\t {model}\nIRQ:   \t\t 60\nBus Location: \t {bus}\n"),
            )
            .unwrap();
        }
        d
    }

    #[test]
    fn reads_the_kernel_modules_files_in_bus_order() {
        let d = fake_proc(&[
            ("0000:41:00.0", "NVIDIA H100 80GB HBM3"),
            ("0000:01:00.0", "NVIDIA A100-SXM4-40GB"),
        ]);
        let f = GpuFacts::from_proc(d.path());
        assert_eq!(f.driver.as_deref(), Some("580.159.04"));
        assert_eq!(f.gpus, ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"]);
        assert_eq!(
            f.describe(),
            "1 x NVIDIA A100-SXM4-40GB + 1 x NVIDIA H100 80GB HBM3"
        );
    }

    #[test]
    fn a_host_without_the_driver_has_no_facts() {
        let d = tempfile::tempdir().unwrap();
        let f = GpuFacts::from_proc(&d.path().join("absent"));
        assert!(f.is_empty());
        assert_eq!(f.driver, None);
        assert_eq!(f.describe(), "no NVIDIA GPU");
    }

    #[test]
    fn the_driver_apis_names_and_version_complete_the_facts() {
        let d = fake_proc(&[("0000:01:00.0", "NVIDIA H100 80GB HBM3")]);
        let mut f = GpuFacts::from_proc(d.path());
        let r = Reply::parse("lib /l\nversion 12080\ngpu NVIDIA H100 80GB HBM3\nend\n").unwrap();
        f.merge_probe(&r);
        assert_eq!(f.cuda.as_deref(), Some("CUDA 12.8"));
        assert_eq!(
            f.to_string(),
            "1 x NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 12.8"
        );
    }

    #[test]
    fn a_restore_needs_the_same_models_and_count() {
        let two = GpuFacts {
            gpus: vec!["NVIDIA H100 80GB HBM3".into(); 2],
            ..Default::default()
        };
        let one = GpuFacts {
            gpus: vec!["NVIDIA H100 80GB HBM3".into()],
            ..Default::default()
        };
        let other = GpuFacts {
            driver: Some("580.1".into()),
            gpus: vec!["nvidia  h100 80gb HBM3".into(), "NVIDIA A100".into()],
            cuda: None,
        };
        assert!(same_gpus(&two, &two.clone()).is_ok());
        let e = same_gpus(&two, &one).unwrap_err().to_string();
        assert_eq!(e, "this checkpoint holds GPU state from 2 x NVIDIA H100 80GB HBM3, but this host has 1 x NVIDIA H100 80GB HBM3: a GPU job restores only onto the same GPU model and count");
        assert!(same_gpus(&two, &other).is_err());
        // spelling aside, the same set in another order is the same GPUs
        let swapped = GpuFacts {
            gpus: vec!["NVIDIA A100".into(), "NVIDIA H100 80GB HBM3".into()],
            ..Default::default()
        };
        assert!(same_gpus(&other, &swapped).is_ok());
    }

    #[test]
    fn manifests_round_trip() {
        let f = GpuFacts {
            driver: Some("580.159.04".into()),
            cuda: Some("CUDA 12.8".into()),
            gpus: vec!["NVIDIA H100 80GB HBM3".into()],
        };
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<GpuFacts>(&j).unwrap(), f);
        let bare: GpuFacts = serde_json::from_str(r#"{"gpus":[]}"#).unwrap();
        assert!(bare.is_empty());
    }
}
