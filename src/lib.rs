//! stasis: a checkpoint-aware exec supervisor.
//!
//! It runs workloads inside lightweight containers under full signal and exit control and
//! checkpoints and restores them with the `criu` binary, keeping their stdio plumbing: the
//! log, attached clients and exec sessions carry on after a restore.
//!
//! The library is the product; the `stasis` binary is a thin CLI over [`api`]. Processes:
//! the CLI talks to one [`monitor`] per workload over a unix socket; the monitor owns the
//! outer ends of the container's stdio and runs [`init`] as PID 1 of the container, which
//! starts the workload and exec sessions through the [`init::spawn`] builder.
#![deny(unsafe_code)]

pub mod api;
pub mod attach;
pub mod container;
pub mod criu;
pub mod cuda;
pub mod exit;
pub mod init;
pub mod migrate;
pub mod monitor;
pub mod precheck;
pub mod protocol;
pub mod spec;
pub mod store;
pub mod sys;
