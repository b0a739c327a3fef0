//! The checks a checkpoint and a restore make before CRIU runs, so that a GPU job that cannot
//! be dumped or restored fails with one line saying why, instead of with CRIU's log.

use super::detect::{self, GpuUse};
use super::driver::{DriverError, Reply};
use super::facts::{self, GpuFacts, GpuMismatch};
use super::plugin::{self, CudaPlugin, NoPlugin};

/// A GPU job about to be dumped: what it holds, what to record, and the plugin CRIU will use.
#[derive(Debug, Clone)]
pub struct GpuDump {
    /// The first process found using the GPU.
    pub user: GpuUse,
    /// This host's GPUs, for the generation's manifest ([`before_restore`] compares them).
    pub facts: GpuFacts,
    /// The plugin; its [`CudaPlugin::criu_args`] go on CRIU's command line.
    pub plugin: CudaPlugin,
}

/// Why a GPU job cannot be checkpointed or restored here.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// A GPU job, and CRIU would not load the plugin.
    #[error("{user} (a GPU job), but {source}")]
    DumpNoPlugin { user: GpuUse, source: NoPlugin },
    /// A GPU job, and the driver cannot checkpoint it (too old, or libcuda fails).
    #[error("{user} (a GPU job), but {source}")]
    DumpDriver { user: GpuUse, source: DriverError },
    /// A generation with GPU state, and CRIU would not load the plugin.
    #[error("this checkpoint holds GPU state ({saved}), but {source}")]
    RestoreNoPlugin { saved: String, source: NoPlugin },
    /// A generation with GPU state, and no usable libcuda here.
    #[error("this checkpoint holds GPU state ({saved}), but {source}")]
    RestoreDriver { saved: String, source: DriverError },
    /// A generation with GPU state, and other GPUs here.
    #[error(transparent)]
    Mismatch(#[from] GpuMismatch),
}

/// A probe's answer ([`facts::probe`]) as a usable driver, i.e. loaded, initialised and with
/// the checkpoint API: this host's facts, or why not.
pub fn usable_driver(
    probe: (GpuFacts, Result<Reply, DriverError>),
) -> Result<GpuFacts, DriverError> {
    let (facts, reply) = probe;
    let reply = reply?;
    if let Some(symbol) = reply.missing.first() {
        return Err(DriverError::TooOld {
            symbol: symbol.clone(),
            version: reply.version,
        });
    }
    Ok(facts)
}

/// Before a dump of the tree rooted at `root_pid`: `Ok(None)` for a job that uses no GPU
/// (on a host without the NVIDIA driver this costs one `stat`); for a GPU job, the plugin and
/// the facts to record, or why it cannot be dumped.
pub fn before_dump(root_pid: i32) -> Result<Option<GpuDump>, GpuError> {
    let Some(user) = detect::tree_uses_gpu(root_pid) else {
        return Ok(None);
    };
    let plugin = plugin::locate().map_err(|source| GpuError::DumpNoPlugin {
        user: user.clone(),
        source,
    })?;
    let facts = usable_driver(facts::probe()).map_err(|source| GpuError::DumpDriver {
        user: user.clone(),
        source,
    })?;
    Ok(Some(GpuDump {
        user,
        facts,
        plugin,
    }))
}

/// Before restoring a generation whose manifest recorded `saved`: the plugin CRIU will use, or
/// why the restore cannot work here (no plugin, no libcuda, a driver too old, other GPUs).
pub fn before_restore(saved: &GpuFacts) -> Result<CudaPlugin, GpuError> {
    let plugin = plugin::locate().map_err(|source| GpuError::RestoreNoPlugin {
        saved: saved.describe(),
        source,
    })?;
    let here = usable_driver(facts::probe()).map_err(|source| GpuError::RestoreDriver {
        saved: saved.describe(),
        source,
    })?;
    facts::same_gpus(saved, &here)?;
    Ok(plugin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> GpuFacts {
        GpuFacts {
            gpus: vec!["NVIDIA H100 80GB HBM3".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_driver_without_the_checkpoint_api_is_too_old() {
        let r = Reply::parse("lib /l\nversion 12040\nmissing cuCheckpointProcessGetState\nmissing cuCheckpointProcessLock\ngpu NVIDIA H100 80GB HBM3\nend\n").unwrap();
        let e = usable_driver((h100(), Ok(r))).unwrap_err();
        assert!(
            matches!(e, DriverError::TooOld { ref symbol, .. } if symbol == "cuCheckpointProcessGetState")
        );
        let r = Reply::parse("lib /l\nversion 12080\nend\n").unwrap();
        assert_eq!(usable_driver((h100(), Ok(r))).unwrap(), h100());
    }

    #[test]
    fn failures_read_as_one_line() {
        let user = GpuUse {
            pid: 4242,
            evidence: "/dev/nvidia0".into(),
        };
        let e = GpuError::DumpNoPlugin {
            user,
            source: NoPlugin {
                searched: vec!["/usr/lib/criu".into(), "/usr/local/lib/criu".into()],
            },
        };
        assert_eq!(e.to_string(), "pid 4242 holds /dev/nvidia0 (a GPU job), but CRIU's cuda plugin (cuda_plugin.so) is not installed (looked in /usr/lib/criu, /usr/local/lib/criu): run scripts/install-criu.sh");
        let e = GpuError::RestoreDriver {
            saved: h100().describe(),
            source: DriverError::NoLibrary {
                reason: "libcuda.so.1: cannot open shared object file: No such file or directory"
                    .into(),
            },
        };
        assert_eq!(e.to_string(), "this checkpoint holds GPU state (1 x NVIDIA H100 80GB HBM3), but cannot load libcuda.so.1: libcuda.so.1: cannot open shared object file: No such file or directory (is the NVIDIA driver installed?)");
        assert!(!e.to_string().contains('\n'));
    }
}
