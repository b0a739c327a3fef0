//! `stats`: what a running workload uses now, from its cgroup or /proc (see
//! [`crate::container::usage`]), with CPU and memory as percentages.

use super::*;
use crate::container::usage::{self, Usage};

/// One workload's figures at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub name: WorkloadName,
    pub status: Status,
    /// The container's init, as the host sees it.
    pub pid: i32,
    /// When it was measured, in ns since the epoch.
    pub at_ns: u64,
    /// CPU used since the previous sample (for the first, since the workload started), in
    /// percent of one core: 200 is two cores busy.
    pub cpu_percent: f64,
    /// Memory in use, in percent of its limit, or of the host's memory without one.
    pub memory_percent: f64,
    #[serde(flatten)]
    pub usage: Usage,
}

/// The host's memory in bytes (MemTotal), the base of an unlimited job's percentage.
pub fn host_memory() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = t
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Measures a running workload. `prev` is its previous sample, if any: CPU is the share
/// used since then.
pub fn stats(
    root: &StateRoot,
    name: &WorkloadName,
    prev: Option<&Stats>,
) -> Result<Stats, ApiError> {
    let wd = root.workload(name);
    let o = state::observe(&wd)?;
    let init = match o.state.init {
        Some(i) if o.state.status == Status::Running && i.alive() => i,
        _ => return Err(ApiError::NotRunning(name.clone())),
    };
    let cg = crate::container::cgroup::Cgroup::for_workload(&root.key(), name.as_str());
    let at_ns = crate::api::logs::now_ns();
    let u = usage::measure(&cg, Some(init.pid));
    let (cpu0, t0) = match prev {
        Some(p) if p.pid == init.pid && p.at_ns < at_ns => (p.usage.cpu_ns, p.at_ns),
        _ => (
            0,
            o.state
                .started_at
                .unwrap_or(o.state.created_at)
                .saturating_mul(1_000_000),
        ),
    };
    let cpu_percent = if at_ns > t0 {
        u.cpu_ns.saturating_sub(cpu0) as f64 * 100.0 / (at_ns - t0) as f64
    } else {
        0.0
    };
    let base = u.memory_limit.or_else(host_memory).unwrap_or(0);
    let memory_percent = if base > 0 {
        u.memory_bytes as f64 * 100.0 / base as f64
    } else {
        0.0
    };
    Ok(Stats {
        name: name.clone(),
        status: o.state.status,
        pid: init.pid,
        at_ns,
        cpu_percent,
        memory_percent,
        usage: u,
    })
}
