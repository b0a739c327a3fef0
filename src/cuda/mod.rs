//! GPU jobs: stasis's own `cuda-checkpoint` command for CRIU's cuda plugin, and what the
//! checkpoint and restore paths need to know about a host's GPUs.
//!
//! CRIU checkpoints a CUDA process through its cuda plugin, which runs a `cuda-checkpoint`
//! command from PATH to lock the process's GPU work, copy GPU memory into host memory (which
//! CRIU then dumps like any other), and, after a restore, put it back and unlock. stasis is
//! that command ([`cli`], reached through the link [`shim::install`] makes), built on the
//! CUDA driver's checkpoint API in libcuda.so.1, loaded at run time and never linked.
//!
//! Because stasis is a static binary and libcuda cannot be loaded into one, the driver calls
//! happen in a small dynamically linked helper (`src/cuda/helper.rs`, built by build.rs) that
//! stasis embeds and runs from a memfd ([`embedded`], [`driver`]).
//!
//! What the checkpoint and restore paths call:
//! - once per host (or per monitor): [`shim::install`]`(dir)` with a root-owned directory of
//!   stasis's own (say RUNTIME/bin), then run every `criu` with
//!   `PATH=`[`shim::criu_path`]`(dir, PATH)`, so the plugin finds stasis as `cuda-checkpoint`;
//! - before a dump: [`preflight::before_dump`]`(init_pid)`. `Ok(None)`: no GPU, nothing to do
//!   (a `stat` on a host without the NVIDIA driver). `Ok(Some(g))`: add
//!   `g.plugin.`[`criu_args`](plugin::CudaPlugin::criu_args) to CRIU's argv and record
//!   `g.facts` ([`facts::GpuFacts`], serde) in the generation's manifest. `Err(e)`: refuse the
//!   checkpoint with `e` (one line);
//! - before restoring a generation that recorded GPU facts `f`:
//!   [`preflight::before_restore`]`(&f)`, giving the plugin (whose CRIU arguments to add), or
//!   the one line that says why the restore cannot work here.

pub mod cli;
pub mod detect;
pub mod driver;
pub mod embedded;
pub mod facts;
pub mod plugin;
pub mod preflight;
pub mod readiness;
pub mod shim;
pub mod state;

// Compiled into the crate only so that fmt, clippy and unit tests cover it: the program that
// runs it is built from the file alone by build.rs, and nothing here calls it.
#[cfg(test)]
#[allow(dead_code)]
mod helper;
