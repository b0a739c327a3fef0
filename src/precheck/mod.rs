//! `stasis check NAME`: will this job checkpoint, and if not, what to change.
//!
//! CRIU has no dry run: peers (runc, podman, LXD) find out by dumping. This inspects the
//! running job instead, without freezing or stopping it and without writing anything into
//! it: its process tree and their fds, fdinfo, maps and mount tables from /proc, its sockets
//! from its network namespaces' /proc/net tables and sock_diag, its GPU use, and this host's
//! CRIU; then [`verdict`] weighs what was found against the options the dump would run with
//! (the spec's `criu:` and the flags given, resolved exactly as a checkpoint resolves them).
//! With `--target HOST`, [`target`] asks HOST the same host questions over ssh.
//!
//! Each inspection has its module: [`procs`] (tracers, namespaces, sessions), [`fds`]
//! (anonymous inodes, pidfds, locks), [`sockets`] and [`diag`], [`files`] (names and ghosts),
//! [`mounts`], [`maps`], [`devices`] (devices and terminals), [`host`].

pub mod devices;
pub mod diag;
pub mod fds;
pub mod files;
pub mod findings;
pub mod host;
pub mod maps;
pub mod mounts;
pub mod procs;
pub mod sockets;
pub mod target;
pub mod verdict;

use crate::api::{self, ApiError};
use crate::container::mounts::Layout;
use crate::container::tree;
use crate::criu::options::{CriuOptions, Flags};
use crate::protocol::{Reply, Request};
use crate::spec::Volume;
use crate::store::name::WorkloadName;
use crate::store::state::{self, StateRoot};
use findings::{Finding, Gpu};
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;

/// Errors reading a job's processes.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sock_diag in the network namespace of pid {pid}: {op}: {source}")]
    Diag {
        pid: i32,
        op: &'static str,
        source: std::io::Error,
    },
}

/// Errors of a pre-check: it could not tell.
#[derive(Debug, thiserror::Error)]
pub enum PrecheckError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0} is not running: there is nothing to check")]
    NotRunning(WorkloadName),
    #[error("check of {name}: {source}")]
    Inspect {
        name: WorkloadName,
        source: InspectError,
    },
    #[error(transparent)]
    Target(#[from] target::TargetError),
}

impl PrecheckError {
    /// The exit code for it (stasis's own error).
    pub fn code(&self) -> i32 {
        match self {
            PrecheckError::Api(e) => e.code(),
            _ => crate::exit::CODE_STASIS_ERROR,
        }
    }
}

/// What `stasis check NAME` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: WorkloadName,
    /// The container's init (host pid).
    pub pid: i32,
    pub processes: usize,
    /// No obstacle here (nor on the target, when one was asked about).
    pub checkpointable: bool,
    pub obstacles: Vec<verdict::Line>,
    pub notes: Vec<verdict::Line>,
    /// The CRIU flags the dump would run with.
    pub options: DumpOptions,
    pub host: host::HostFacts,
    pub target: Option<target::TargetReport>,
}

/// The CRIU flags of a dump, every field always present (the JSON shape stays the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DumpOptions {
    pub tcp_established: bool,
    pub link_remap: bool,
    pub ghost_limit: u64,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    pub freeze_timeout_s: Option<u64>,
    pub external: Vec<String>,
}

impl From<&Flags> for DumpOptions {
    fn from(f: &Flags) -> DumpOptions {
        DumpOptions {
            tcp_established: f.tcp_established,
            link_remap: f.link_remap,
            ghost_limit: f.ghost_limit,
            file_locks: f.file_locks,
            ext_unix_sk: f.ext_unix_sk,
            freeze_timeout_s: f.freeze_timeout_s,
            external: f.external.clone(),
        }
    }
}

/// The container's layout and its own bind mounts, as the checkpoint sees them.
fn layout_of(spec: &crate::spec::Spec) -> (Layout, Vec<PathBuf>) {
    let layout = match spec.rootfs {
        Some(_) => Layout::Rootfs,
        None => Layout::HostTree,
    };
    let mut binds: Vec<PathBuf> = spec
        .volumes
        .iter()
        .filter_map(|v| Volume::parse(v).ok())
        .map(|v| v.dst)
        .collect();
    binds.push(crate::store::init_copies::dir());
    (layout, binds)
}

/// Everything the inspections find in the tree rooted at `init`.
pub fn inspect(
    init: i32,
    layout: Layout,
    binds: &[PathBuf],
) -> Result<(Vec<Finding>, usize), InspectError> {
    let procs = procs::read_tree(init)?;
    let tree: HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    let mut out = procs::findings(&procs);
    let (mount_view, mount_findings) = mounts::read(&procs, layout, binds)?;
    out.extend(mount_findings);
    let mut all_fds = Vec::new();
    let mut held = Vec::new();
    for p in &procs {
        let fds = fds::read_fds(p.pid)?;
        out.extend(fds::findings(p, &fds, &tree));
        held.extend(files::held_by(p, &fds));
        let (map_findings, mapped) = maps::read(p)?;
        out.extend(map_findings);
        held.extend(mapped);
        all_fds.push(fds);
    }
    out.extend(files::findings(&held, &mount_view));
    out.extend(devices::findings(&procs, &all_fds, &mount_view));
    out.extend(sockets::findings(&procs, &all_fds)?);
    Ok((out, procs.len()))
}

/// The GPU finding of the tree at `init`, from the checkpoint's own pre-flight check.
pub fn gpu(init: i32) -> Option<Finding> {
    use crate::cuda::preflight::{before_dump, GpuError};
    match before_dump(init) {
        Ok(None) => None,
        Ok(Some(d)) => Some(Finding::Gpu(Gpu::Ready {
            user: d.user.to_string(),
            detail: d.facts.describe(),
        })),
        Err(GpuError::DumpNoPlugin { user, source }) => Some(Finding::Gpu(Gpu::NoPlugin {
            user: user.to_string(),
            why: source.to_string(),
        })),
        Err(GpuError::DumpDriver { user, source }) => Some(Finding::Gpu(Gpu::Driver {
            user: user.to_string(),
            why: source.to_string(),
        })),
        Err(other) => Some(Finding::Gpu(Gpu::Driver {
            user: format!("pid {init}'s tree"),
            why: other.to_string(),
        })),
    }
}

/// `stasis check NAME`: inspects the running job `name` as a checkpoint with the extra
/// options `over` would dump it, and (with `target`) asks that host too.
pub fn check(
    root: &StateRoot,
    name: &WorkloadName,
    over: &CriuOptions,
    target: Option<&str>,
) -> Result<Report, PrecheckError> {
    let wd = root.workload(name);
    let mut o = state::observe(&wd).map_err(ApiError::from)?;
    // A live monitor knows more than state.json may say yet.
    if o.monitor_alive {
        if let Ok(Reply::Status { state }) = api::call(root, name, &Request::Status) {
            o.state = *state;
        }
    }
    let init = match o.state.init {
        Some(i) if o.state.status == state::Status::Running && i.alive() => i,
        _ => return Err(PrecheckError::NotRunning(name.clone())),
    };
    // Pin the process, so a pid reused while we read cannot pass for the job.
    let _pin = crate::sys::pidfd_open(init.pid).ok();
    if !init.alive() {
        return Err(PrecheckError::NotRunning(name.clone()));
    }
    let spec = api::load_spec(&wd)?;
    let (layout, binds) = layout_of(&spec);
    let wrap = |source| PrecheckError::Inspect {
        name: name.clone(),
        source,
    };
    let (mut found, processes) = inspect(init.pid, layout, &binds).map_err(wrap)?;
    found.extend(gpu(init.pid));
    // The options exactly as the checkpoint resolves them (its ghost limit from the files
    // held open now).
    let opts = spec.criu.overlay(over);
    let held = tree::held_files(&tree::pids(init.pid));
    let flags = opts.resolve(tree::largest_ghost(&held));
    let options = verdict::Options {
        flags: flags.clone(),
        ghost_limit_set: opts.ghost_limit.is_some(),
    };
    let host = host::gather(&crate::criu::cache_dir(root), false);
    let mut v = verdict::judge(&found, &options, &host);
    let target = match target {
        Some(h) => {
            let gpu_job = found.iter().any(|f| matches!(f, Finding::Gpu(_)));
            let has_tcp = found.iter().any(|f| matches!(f, Finding::Tcp { .. }));
            let t = target::ask(h, &host, gpu_job, has_tcp)?;
            v.obstacles.extend(t.obstacles.iter().cloned());
            v.notes.extend(t.notes.iter().cloned());
            Some(t)
        }
        None => None,
    };
    Ok(Report {
        name: name.clone(),
        pid: init.pid,
        processes,
        checkpointable: v.obstacles.is_empty(),
        obstacles: v.obstacles,
        notes: v.notes,
        options: DumpOptions::from(&flags),
        host,
        target,
    })
}
