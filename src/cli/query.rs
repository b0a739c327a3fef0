//! `ps`, `inspect`, `checkpoints`, `check` (of the host; `check NAME` is in `precheck`).

use super::{ago, fmt_time, usage, Failure, Format};
use clap::Args;
use serde::Serialize;
use stasis::api;
use stasis::precheck::host as precheck_host;
use stasis::store::name::WorkloadName;
use stasis::store::state::{self, StateRoot, Status};
use std::path::Path;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show exited and failed workloads too.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Output format: a table, or a JSON array.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Output format: a table, or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The workload.
    pub name: WorkloadName,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Output format: a table, or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Also ask HOST (over ssh; `stasis` must be on its PATH) whether it can restore what
    /// this host dumps: its stasis and CRIU, and `criu cpuinfo check` of this CPU.
    #[arg(long, value_name = "HOST", value_hint = clap::ValueHint::Hostname)]
    pub target: Option<String>,
    /// With NAME: the CRIU options to judge the job under, as `checkpoint` takes them.
    #[command(flatten)]
    pub criu: super::cr::CriuFlags,
    /// A running workload: will it checkpoint? (exit 0: yes, 1: no, with one line per
    /// obstacle and what fixes it). Without NAME: what stasis needs from this host.
    pub name: Option<WorkloadName>,
}

#[derive(Serialize)]
struct PsRow {
    name: String,
    status: Status,
    pid: Option<i32>,
    exit_code: Option<i32>,
    generation: Option<u32>,
    created_at: u64,
    command: Vec<String>,
    monitor: bool,
    note: Option<String>,
}

fn status_text(st: &state::WorkloadState) -> String {
    match st.status {
        Status::Exited | Status::Failed => {
            let code = st
                .exit
                .as_ref()
                .map(|e| e.code.to_string())
                .unwrap_or_else(|| "?".into());
            let oom = if st.exit.as_ref().is_some_and(|e| e.oom_killed) {
                ", oom"
            } else {
                ""
            };
            let w = if st.status == Status::Failed {
                "failed"
            } else {
                "exited"
            };
            format!("{w} ({code}{oom}) {} ago", ago(st.finished_at.unwrap_or(0)))
        }
        Status::Checkpointed => format!("checkpointed (gen {})", st.generation.unwrap_or(0)),
        Status::Running => format!("running {}", ago(st.started_at.unwrap_or(st.created_at))),
        Status::Restoring => "restoring".into(),
        Status::Created => "created".into(),
        Status::Migrated => st.note.clone().unwrap_or_else(|| "migrated".into()),
    }
}

pub fn ps(root: &StateRoot, a: PsArgs) -> Result<i32, Failure> {
    let mut rows = Vec::new();
    for (name, o) in api::list(root) {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                eprintln!("stasis: {name}: {e}");
                continue;
            }
        };
        if !a.all && o.state.status.is_final() {
            continue;
        }
        let spec = api::load_spec(&root.workload(&name)).ok();
        rows.push((
            PsRow {
                name: name.to_string(),
                status: o.state.status,
                pid: o.state.init.map(|i| i.pid),
                exit_code: o.state.exit.as_ref().map(|e| e.code),
                generation: o.state.generation,
                created_at: o.state.created_at,
                command: spec.map(|s| s.command).unwrap_or_default(),
                monitor: o.monitor_alive,
                note: o.state.note.clone(),
            },
            status_text(&o.state),
        ));
    }
    if a.format == Format::Json {
        let v: Vec<&PsRow> = rows.iter().map(|(r, _)| r).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| usage(e.to_string()))?
        );
        return Ok(0);
    }
    println!("{:<24} {:<30} {:>8}  COMMAND", "NAME", "STATUS", "PID");
    for (r, s) in rows {
        let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let mut status = s;
        if let Some(n) = &r.note {
            status = format!("{status} [{n}]");
        }
        println!(
            "{:<24} {:<30} {:>8}  {}",
            r.name,
            status,
            pid,
            r.command.join(" ")
        );
    }
    Ok(0)
}

pub fn inspect(root: &StateRoot, a: InspectArgs) -> Result<i32, Failure> {
    let i = api::inspect(root, &a.name)?;
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&i).map_err(|e| usage(e.to_string()))?
        );
        return Ok(0);
    }
    let st = &i.state;
    println!("name:        {}", i.name);
    println!("status:      {}", status_text(st));
    if let Some(n) = &st.note {
        println!("note:        {n}");
    }
    println!(
        "monitor:     {}",
        if i.monitor_alive {
            st.monitor
                .map(|m| format!("pid {}", m.pid))
                .unwrap_or_else(|| "alive".into())
        } else {
            "none".into()
        }
    );
    if let Some(init) = st.init {
        println!("pid:         {} (the container's init)", init.pid);
    }
    println!("command:     {}", i.spec.command.join(" "));
    println!("created:     {}", fmt_time(st.created_at));
    if let Some(e) = &st.exit {
        let how = e
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        println!(
            "exit:        code {} ({how}){}",
            e.code,
            if e.oom_killed { ", OOM-killed" } else { "" }
        );
        if let Some(r) = &e.reason {
            println!("reason:      {r}");
        }
    }
    if let Some(e) = &st.error {
        println!("error:       {e}");
    }
    println!(
        "checkpoints: {} taken, {} restores, {} restarts",
        st.checkpoints, st.restores, st.restarts
    );
    for g in &i.generations {
        println!(
            "  gen {:>4}  {}  {:>10} bytes  {}",
            g.generation,
            fmt_time(g.created_at),
            g.size,
            if g.ok {
                ""
            } else {
                g.problem.as_deref().unwrap_or("bad")
            }
        );
    }
    for s in &i.sessions {
        println!(
            "exec {}  {:?}  {}  {}",
            s.id,
            s.status,
            s.exit_code.map(|c| format!("code {c}")).unwrap_or_default(),
            s.command.join(" ")
        );
    }
    println!("cgroup:      {}", i.cgroup);
    println!("log:         {}", i.log);
    println!("monitor log: {} (STASIS_LOG=debug for more)", i.monitor_log);
    Ok(0)
}

pub fn checkpoints(root: &StateRoot, a: InspectArgs) -> Result<i32, Failure> {
    let wd = root.workload(&a.name);
    if !wd.exists() {
        return Err(api::ApiError::from(state::StateError::NotFound(a.name.clone())).into());
    }
    let gens = api::generations(&wd);
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&gens).map_err(|e| usage(e.to_string()))?
        );
        return Ok(0);
    }
    println!(
        "{:>5}  {:<19}  {:>12}  {:>9}  {:>10}  NOTE",
        "GEN", "CREATED", "SIZE", "DUMP MS", "FROZEN MS"
    );
    for g in gens {
        let note = if !g.ok {
            g.problem.unwrap_or_default()
        } else if g.leave_running {
            "left running".into()
        } else {
            String::new()
        };
        let frozen = g
            .frozen_ms
            .map(|f| format!("{f:.1}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>5}  {:<19}  {:>12}  {:>9.1}  {:>10}  {}",
            g.generation,
            fmt_time(g.created_at),
            g.size,
            g.dump_ms,
            frozen,
            note
        );
    }
    Ok(0)
}

/// One line of `check`.
/// How a host-check line reads in the table: a note tells of something slower or limited
/// and, like ok, does not fail the check.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    Ok,
    Note,
    Fail,
}

impl From<bool> for Mark {
    fn from(good: bool) -> Mark {
        if good {
            Mark::Ok
        } else {
            Mark::Fail
        }
    }
}

#[derive(Serialize)]
struct CheckItem {
    check: String,
    ok: bool,
    detail: String,
}

/// What `check --format json` prints.
#[derive(Serialize)]
struct CheckReport {
    ok: bool,
    checks: Vec<CheckItem>,
}

pub fn check(root: &StateRoot, a: CheckArgs) -> Result<i32, Failure> {
    match (&a.name, &a.target) {
        (Some(n), t) => {
            return super::precheck::check_job(root, n, &a.criu, t.as_deref(), a.format)
        }
        (None, Some(t)) => return super::precheck::check_target(root, t, a.format),
        (None, None) => {}
    }
    let mut checks = Vec::new();
    let table = a.format == Format::Table;
    let mut line = |mark: Mark, what: &str, detail: String| {
        // a table line as soon as it is known: `criu check` takes a while
        if table {
            let m = match mark {
                Mark::Ok => "ok",
                Mark::Note => "note",
                Mark::Fail => "FAIL",
            };
            println!("{m:<4} {what:<12} {detail}");
        }
        checks.push(CheckItem {
            check: what.to_string(),
            ok: mark != Mark::Fail,
            detail,
        });
    };
    let uname = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    line(Mark::Ok, "kernel", uname);
    line(
        nix::unistd::geteuid().is_root().into(),
        "root",
        if nix::unistd::geteuid().is_root() {
            "running as root".into()
        } else {
            "stasis needs root (namespaces, cgroups, CRIU)".into()
        },
    );
    let mode = stasis::container::cgroup::detect();

    let dirs = stasis::container::cgroup::available();
    line(
        (!dirs.is_empty()).into(),
        "cgroup",
        format!("{mode:?} ({})", dirs.join(", ")),
    );
    match stasis::criu::locate() {
        Ok(c) => {
            line(
                Mark::Ok,
                "criu",
                format!("{} {}", c.path.display(), c.version),
            );
            // Kernels since 6.16 refuse SO_PASSCRED/SO_PASSSEC on non-unix sockets, and CRIU
            // before 4.2 asks for them on every socket: TCP sockets cannot be dumped.
            let old = c
                .version
                .split('.')
                .take(2)
                .map(|x| x.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
                < vec![4, 2];
            if old {
                line(Mark::Note, "tcp", "CRIU < 4.2 cannot dump TCP sockets on kernels >= 6.16 (scripts/install-criu.sh builds 4.2)".into());
            }
            match c.check() {
                Ok(()) => line(Mark::Ok, "criu check", "Looks good".into()),
                Err(e) => line(Mark::Fail, "criu check", e.to_string()),
            }
            let feats = c.features(&[
                "uffd",
                "uffd-noncoop",
                "mem_dirty_track",
                "pidfd_store",
                "timens",
                "network_lock_nftables",
            ]);
            let list: Vec<String> = feats
                .iter()
                .map(|(n, y)| format!("{n}={}", if *y { "yes" } else { "no" }))
                .collect();
            line(
                Mark::Ok,
                "features",
                format!("{} (no mem_dirty_track: no pre-dump)", list.join(" ")),
            );
        }
        Err(e) => line(Mark::Fail, "criu", e.to_string()),
    }
    if let Some(t) = precheck_host::is_tmpfs(Path::new(precheck_host::KDAT_DIR)) {
        let dir = precheck_host::KDAT_DIR;
        let detail = if t {
            format!("{dir} is a tmpfs: CRIU caches its kernel probes in {dir}/criu.kdat")
        } else {
            format!("{dir} is not a tmpfs: CRIU keeps no cache of its kernel probes ({dir}/criu.kdat) and re-probes the kernel on every dump and restore (some 25-40 ms each); mount a tmpfs on {dir} (most distributions do)")
        };
        line(if t { Mark::Ok } else { Mark::Note }, "run", detail);
    }
    let store = stasis::store::init_copies::dir();
    match stasis::store::init_copies::ensure() {
        Ok(p) => line(Mark::Ok, "init store", p.display().to_string()),
        Err(e) => line(
            Mark::Fail,
            "init store",
            format!("{}: {e}", store.display()),
        ),
    }
    match root.ensure() {
        Ok(()) => line(Mark::Ok, "state root", root.root.display().to_string()),
        Err(e) => line(Mark::Fail, "state root", e.to_string()),
    }
    for l in stasis::cuda::readiness::check_lines() {
        line(l.ok.into(), l.what, l.detail);
    }
    let ok = checks.iter().all(|c| c.ok);
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&CheckReport { ok, checks })
                .map_err(|e| usage(e.to_string()))?
        );
    }
    Ok(if ok {
        0
    } else {
        stasis::exit::CODE_STASIS_ERROR
    })
}
