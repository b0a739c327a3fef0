//! What a dump or a restore of a GPU job adds to CRIU's run: the cuda plugin's directory
//! (`--libdir`) and a PATH that finds stasis as `cuda-checkpoint`. A job that holds no GPU gets
//! neither, so it pays one `stat` (no NVIDIA driver) or one walk of its fds (a driver, no GPU
//! use) and CRIU never loads the plugin for it.

use crate::cuda::facts::GpuFacts;
use crate::cuda::plugin::CudaPlugin;
use crate::cuda::preflight;
use crate::cuda::shim;

/// CRIU's extra arguments and environment for one GPU dump or restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GpuRun {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl GpuRun {
    fn for_plugin(plugin: &CudaPlugin) -> Result<GpuRun, String> {
        let bin = crate::store::init_copies::cuda_shim_dir().map_err(|e| e.to_string())?;
        let path = shim::criu_path(&bin, std::env::var_os("PATH"));
        Ok(GpuRun {
            args: plugin.criu_args(),
            env: vec![("PATH".into(), path.to_string_lossy().into_owned())],
        })
    }
}

/// Before dumping the tree of `init_pid`: nothing for a job without a GPU; for a GPU job, the
/// GPUs to record in the manifest and what CRIU needs; or the one line saying why it cannot be
/// checkpointed here (no plugin, a driver too old).
pub(crate) fn before_dump(init_pid: i32) -> Result<Option<(GpuFacts, GpuRun)>, String> {
    match preflight::before_dump(init_pid) {
        Ok(None) => Ok(None),
        Ok(Some(g)) => Ok(Some((g.facts, GpuRun::for_plugin(&g.plugin)?))),
        Err(e) => Err(e.to_string()),
    }
}

/// Before restoring a generation: nothing when it recorded no GPU; else what CRIU needs, or
/// why the restore cannot work on this host (no plugin, no libcuda, other GPUs).
pub(crate) fn before_restore(saved: Option<&GpuFacts>) -> Result<GpuRun, String> {
    match saved {
        None => Ok(GpuRun::default()),
        Some(f) => {
            let plugin = preflight::before_restore(f).map_err(|e| e.to_string())?;
            GpuRun::for_plugin(&plugin)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_without_gpu_state_adds_nothing() {
        assert_eq!(before_restore(None).unwrap(), GpuRun::default());
    }

    #[test]
    fn a_job_without_a_gpu_adds_nothing() {
        // This test process holds no /dev/nvidia* file, whatever the host has.
        assert_eq!(before_dump(std::process::id() as i32).unwrap(), None);
    }
}
