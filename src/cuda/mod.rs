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
//! happen in a small dynamically linked helper ([`helper`], built by build.rs) that stasis
//! embeds and runs from a memfd ([`embedded`], [`driver`]).
//!
//! For the core, per checkpoint: [`preflight::before_dump`] (costs a job without a GPU one
//! `stat`), then CRIU with `PATH=`[`shim::criu_path`] and the plugin's
//! [`plugin::CudaPlugin::criu_args`]; record [`facts::GpuFacts`] in the manifest. Per
//! restore of a generation that recorded GPU facts: [`preflight::before_restore`].

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
