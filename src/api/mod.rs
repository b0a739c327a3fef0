//! The library API the CLI is a thin layer over: create, start and adopt workloads, talk to
//! their monitors, checkpoint and restore them, and read their state when no monitor runs.

use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::{self, CheckpointOpts, Reply, Request, RestoreOpts};
use crate::spec::{Spec, SpecError};
use crate::store::atomic::FsError;
use crate::store::generations::CheckpointError;
use crate::store::name::WorkloadName;
use crate::store::state::{
    self, Observed, StateError, StateRoot, Status, WorkloadDir, WorkloadState,
};
use crate::sys;
use serde::Serialize;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// Errors of the API; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Spawn(#[from] crate::init::spawn::SpawnError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Criu(#[from] crate::criu::CriuError),
    #[error("{0} is not running")]
    NotRunning(WorkloadName),
    #[error("{0} is running (stop it first, or use -f)")]
    Running(WorkloadName),
    #[error("the monitor of {name} is gone: {why}")]
    NoMonitor { name: WorkloadName, why: String },
    #[error("{message}")]
    Monitor { code: i32, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl ApiError {
    /// The exit code the CLI returns for this error.
    pub fn code(&self) -> i32 {
        match self {
            ApiError::Monitor { code, .. } => *code,
            _ => CODE_STASIS_ERROR,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError::Io { what, source }
}

/// Turns an error reply into an error.
pub fn check(reply: Reply) -> Result<Reply, ApiError> {
    match reply {
        Reply::Error { code, message } => Err(ApiError::Monitor { code, message }),
        r => Ok(r),
    }
}

mod checkpoints;
pub mod logs;
mod query;
pub mod stats;
mod workload;

pub use checkpoints::*;
pub use query::*;
pub use workload::*;

/// Connects to the live monitor of `name`.
pub fn connect(root: &StateRoot, name: &WorkloadName) -> Result<OwnedFd, ApiError> {
    let wd = root.workload(name);
    if !wd.exists() {
        return Err(StateError::NotFound(name.clone()).into());
    }
    if !wd.monitor_alive() {
        return Err(ApiError::NoMonitor {
            name: name.clone(),
            why: "no monitor runs for it".into(),
        });
    }
    // A monitor that has just started may not be listening yet.
    let mut last = None;
    for _ in 0..100 {
        match protocol::connect(&wd.socket) {
            Ok(c) => return Ok(c),
            Err(e) => {
                if !wd.monitor_alive() {
                    return Err(ApiError::NoMonitor {
                        name: name.clone(),
                        why: e.to_string(),
                    });
                }
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Err(ApiError::NoMonitor {
        name: name.clone(),
        why: last.map(|e| e.to_string()).unwrap_or_default(),
    })
}

/// Sends a request and reads one reply.
pub fn request(conn: &OwnedFd, req: &Request) -> Result<Reply, ApiError> {
    protocol::send(conn.as_fd(), req, &[]).map_err(io_err("send to the monitor"))?;
    match protocol::recv::<Reply>(conn.as_fd()).map_err(io_err("read from the monitor"))? {
        Some((r, _)) => check(r),
        None => Err(ApiError::Monitor {
            code: CODE_STASIS_ERROR,
            message: "the monitor closed the connection".into(),
        }),
    }
}

/// Reads replies until one that is not a notice.
pub fn next_reply(conn: &OwnedFd) -> Result<Reply, ApiError> {
    loop {
        match protocol::recv::<Reply>(conn.as_fd()).map_err(io_err("read from the monitor"))? {
            Some((Reply::Notice { .. }, _)) => continue,
            Some((r, _)) => return check(r),
            None => {
                return Err(ApiError::Monitor {
                    code: CODE_STASIS_ERROR,
                    message: "the monitor closed the connection".into(),
                })
            }
        }
    }
}

/// One request to the monitor of `name`.
pub fn call(root: &StateRoot, name: &WorkloadName, req: &Request) -> Result<Reply, ApiError> {
    let c = connect(root, name)?;
    request(&c, req)
}

/// Observes a workload, first letting a monitor whose workload has ended finish exiting (it
/// records the exit before it goes), so the caller never talks to a monitor on its way out.
pub fn settled(wd: &WorkloadDir) -> Result<Observed, ApiError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let o = state::observe(wd)?;
        if !(o.monitor_alive && o.state.status.is_final()) || std::time::Instant::now() > deadline {
            return Ok(o);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The exit reply recorded in a final state.
pub fn exit_reply(st: &WorkloadState) -> Reply {
    match &st.exit {
        Some(e) => Reply::Exit {
            code: e.code,
            status: e.status,
            oom_killed: e.oom_killed,
            reason: e.reason.clone(),
        },
        None => Reply::Error {
            code: CODE_STASIS_ERROR,
            message: format!("{} has no exit status", st.name),
        },
    }
}
