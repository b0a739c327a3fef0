//! `stasis check`'s GPU lines: the GPUs and driver, libcuda and its checkpoint API, CRIU's
//! cuda plugin, and the restore caveat (same GPU model and count).

use super::detect;
use super::driver::{DriverError, Reply};
use super::facts::{self, GpuFacts, PROC_NVIDIA};
use super::plugin::{self, CudaPlugin, NoPlugin};
use super::preflight::usable_driver;
use std::path::Path;

/// One line of `stasis check`: whether it is good, what it is about, what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// False when GPU jobs could not be checkpointed or restored because of it.
    pub ok: bool,
    /// The subject, a word or two.
    pub what: &'static str,
    /// What was found, or what to do.
    pub detail: String,
}

fn line(ok: bool, what: &'static str, detail: String) -> CheckLine {
    CheckLine { ok, what, detail }
}

/// This host's GPU readiness. A host without the NVIDIA driver gets informational lines only
/// (nothing is loaded or run); a host with it is probed through libcuda.
pub fn check_lines() -> Vec<CheckLine> {
    let proc_facts = GpuFacts::from_proc(Path::new(PROC_NVIDIA));
    let probe = (detect::driver_loaded() || !proc_facts.is_empty()).then(facts::probe);
    lines_for(probe, plugin::locate())
}

/// [`check_lines`] from what was found: `probe` is `None` without an NVIDIA driver.
pub fn lines_for(
    probe: Option<(GpuFacts, Result<Reply, DriverError>)>,
    plugin: Result<CudaPlugin, NoPlugin>,
) -> Vec<CheckLine> {
    let Some((facts, reply)) = probe else {
        let p = match plugin {
            Ok(p) => p.path.display().to_string(),
            Err(_) => "not installed (GPU jobs need it: scripts/install-criu.sh)".into(),
        };
        return vec![
            line(true, "gpu", "none (no NVIDIA driver on this host)".into()),
            line(true, "cuda plugin", p),
        ];
    };
    let mut out = vec![line(!facts.is_empty(), "gpu", facts.to_string())];
    let lib = reply.as_ref().ok().and_then(|r| r.lib.clone());
    let version = reply.as_ref().ok().and_then(|r| r.version);
    match usable_driver((facts.clone(), reply)) {
        Ok(_) => {
            let mut d = lib.map_or_else(|| "loaded".into(), |l| l.display().to_string());
            if let Some(v) = version {
                d.push_str(&format!(", {v}"));
            }
            d.push_str(", checkpoint API present");
            out.push(line(true, "libcuda", d));
        }
        Err(e) => out.push(line(false, "libcuda", e.to_string())),
    }
    out.push(match plugin {
        Ok(p) => {
            let mut d = p.path.display().to_string();
            if let Some(dir) = &p.libdir {
                d.push_str(&format!(" (CRIU loads it with --libdir {})", dir.display()));
            }
            line(true, "cuda plugin", d)
        }
        Err(e) => line(false, "cuda plugin", e.to_string()),
    });
    out.push(line(
        true,
        "gpu restore",
        format!(
            "a GPU job's checkpoint restores only onto the same GPU model and count ({})",
            facts.describe()
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_gpu_is_fine() {
        let l = lines_for(None, Err(NoPlugin { searched: vec![] }));
        assert!(l.iter().all(|l| l.ok));
        assert_eq!(l[0].what, "gpu");
        assert!(l[1].detail.starts_with("not installed"));
    }

    #[test]
    fn a_gpu_host_gets_every_line() {
        let facts = GpuFacts {
            driver: Some("580.159.04".into()),
            cuda: Some("CUDA 12.8".into()),
            gpus: vec!["NVIDIA H100 80GB HBM3".into(); 2],
        };
        let r = Reply::parse("lib /usr/lib/libcuda.so.580.159.04\nversion 12080\nend\n").unwrap();
        let plugin = CudaPlugin {
            path: "/usr/lib/criu/cuda_plugin.so".into(),
            libdir: None,
        };
        let l = lines_for(Some((facts, Ok(r))), Ok(plugin));
        let text: Vec<String> = l
            .iter()
            .map(|l| format!("{} {} {}", l.ok, l.what, l.detail))
            .collect();
        assert_eq!(
            text,
            [
                "true gpu 2 x NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 12.8",
                "true libcuda /usr/lib/libcuda.so.580.159.04, CUDA 12.8, checkpoint API present",
                "true cuda plugin /usr/lib/criu/cuda_plugin.so",
                "true gpu restore a GPU job's checkpoint restores only onto the same GPU model and count (2 x NVIDIA H100 80GB HBM3)",
            ]
        );
    }

    #[test]
    fn an_old_driver_and_a_missing_plugin_fail() {
        let facts = GpuFacts {
            gpus: vec!["Tesla T4".into()],
            ..Default::default()
        };
        let r =
            Reply::parse("lib /l\nversion 12040\nmissing cuCheckpointProcessLock\nend\n").unwrap();
        let l = lines_for(
            Some((facts, Ok(r))),
            Err(NoPlugin {
                searched: vec!["/usr/lib/criu".into()],
            }),
        );
        assert!(
            !l[1].ok && l[1].detail.starts_with("driver too old"),
            "{l:?}"
        );
        assert!(!l[2].ok && l[2].detail.contains("not installed"), "{l:?}");
    }
}
