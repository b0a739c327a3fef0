//! Reading workloads: everything about one, and all of them, reconciled with what runs.

use super::*;
use crate::store::generations;

/// What `inspect` shows.
#[derive(Debug, Serialize)]
pub struct Inspect {
    pub name: WorkloadName,
    pub state: WorkloadState,
    pub monitor_alive: bool,
    pub spec: Spec,
    pub generations: Vec<GenerationInfo>,
    pub sessions: Vec<crate::store::sessions::SessionRecord>,
    pub cgroup: String,
    pub log: String,
    /// The monitor's own diagnostics (`STASIS_LOG` sets their level).
    pub monitor_log: String,
}

/// A generation in `inspect` and `checkpoints`.
#[derive(Debug, Serialize)]
pub struct GenerationInfo {
    pub generation: u32,
    pub created_at: u64,
    pub size: u64,
    pub dump_ms: f64,
    pub frozen_ms: Option<f64>,
    pub leave_running: bool,
    pub criu_version: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The generations of a workload with their manifests' facts.
pub fn generations(wd: &WorkloadDir) -> Vec<GenerationInfo> {
    generations::list(wd)
        .into_iter()
        .map(|g| match g.manifest(wd.name.as_str()) {
            Ok(m) => GenerationInfo {
                generation: g.number,
                created_at: m.created_at,
                size: m.stats.size,
                dump_ms: m.stats.dump_ms,
                frozen_ms: m.stats.frozen_ms,
                leave_running: m.leave_running,
                criu_version: m.criu_version,
                ok: true,
                problem: None,
            },
            Err(e) => GenerationInfo {
                generation: g.number,
                created_at: 0,
                size: 0,
                dump_ms: 0.0,
                frozen_ms: None,
                leave_running: false,
                criu_version: String::new(),
                ok: false,
                problem: Some(e.to_string()),
            },
        })
        .collect()
}

/// Everything about one workload.
pub fn inspect(root: &StateRoot, name: &WorkloadName) -> Result<Inspect, ApiError> {
    let wd = root.workload(name);
    let mut o = supervised(root, name)?;
    // A live monitor knows more than state.json can say (on a full disk it cannot say it).
    if o.monitor_alive {
        if let Ok(Reply::Status { state }) = call(root, name, &Request::Status) {
            o.state = *state;
        }
    }
    // A workload whose monitor died before it wrote the spec still has a state to show.
    let spec = match load_spec(&wd) {
        Err(ApiError::State(StateError::NotFound(_))) if wd.exists() => Spec::default(),
        other => other?,
    };
    Ok(Inspect {
        name: name.clone(),
        state: o.state,
        monitor_alive: o.monitor_alive,
        spec,
        generations: generations(&wd),
        sessions: crate::store::sessions::list(&wd),
        cgroup: crate::container::cgroup::Cgroup::for_workload(&root.key(), name.as_str()).rel,
        log: wd.log_path().display().to_string(),
        monitor_log: wd.dir.join("monitor.log").display().to_string(),
    })
}

/// All workloads, reconciled.
pub fn list(root: &StateRoot) -> Vec<(WorkloadName, Result<Observed, ApiError>)> {
    root.names()
        .into_iter()
        .map(|n| {
            let o = state::observe(&root.workload(&n)).map_err(ApiError::from);
            (n, o)
        })
        .collect()
}
