//! The library API the CLI is a thin layer over: create and start workloads, talk to their
//! monitors, and read their state when no monitor runs.

use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::{self, CheckpointOpts, Reply, Request, RestoreOpts};
use crate::spec::{Spec, SpecError};
use crate::store::atomic::FsError;
use crate::store::generations::{self, CheckpointError};
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

/// A generated workload name: `job-` and 6 hex digits.
pub fn generate_name(root: &StateRoot) -> WorkloadName {
    loop {
        let id = crate::store::sessions::random_hex();
        // six hex digits after "job-" always make a valid name
        let Ok(n) = WorkloadName::parse(&format!("job-{}", &id[..6])) else {
            continue;
        };
        if !root.workload(&n).exists() {
            return n;
        }
    }
}

/// A workload just recorded, with its lock held (handed on to its monitor).
pub struct Created {
    pub wd: WorkloadDir,
    pub lock: std::fs::File,
    /// What was written, for the monitor to start from.
    pub spec: Spec,
    pub state: WorkloadState,
}

/// Records a new workload: validates the spec, checks the host-side paths it names, claims
/// the name, writes spec.json and state.json. On any failure nothing is left behind.
///
/// The workload lock is taken right after the name is claimed and kept until the monitor
/// inherits it, so no reader ever mistakes the new workload for one whose monitor died.
pub fn create(root: &StateRoot, mut spec: Spec) -> Result<Created, ApiError> {
    spec.normalize();
    spec.validate()?;
    root.ensure()?;
    let name = match &spec.name {
        Some(n) => n.clone(),
        None => generate_name(root),
    };
    spec.name = Some(name.clone());
    // The rootfs and volume paths exist: fail now, not after the monitor started.
    crate::container::ContainerConfig {
        hostname: None,
        network: spec.network,
        rootfs: spec.rootfs.clone(),
        volumes: spec
            .volumes
            .iter()
            .map(|v| crate::spec::Volume::parse(v))
            .collect::<Result<_, _>>()?,
        cgroup_procs: vec![],
        init_path: Default::default(),
    }
    .check()?;
    // Fail on a bad user now, not after the monitor started.
    crate::init::spawn::resolve_user(
        spec.user.as_deref(),
        spec.rootfs.as_deref(),
        &spec.group_add,
    )?;
    // Pass-through variables are resolved here, in the caller's environment, and kept: a
    // restart by the monitor later must see the same values.
    for k in spec.env_pass.clone() {
        if let Ok(v) = std::env::var(&k) {
            spec.env.entry(k).or_insert(v);
        }
    }
    let wd = root.workload(&name);
    wd.create()?;
    let state = WorkloadState::new(&name);
    let res = (|| -> Result<std::fs::File, ApiError> {
        let lock = wd.lock_for_monitor()?.ok_or_else(|| ApiError::Monitor {
            code: CODE_STASIS_ERROR,
            message: format!("{name} is locked by another process"),
        })?;
        // spec.json and state.json are written by the monitor, while the container's init
        // starts: their fsyncs stay off the start's critical path. Until then readers see a
        // workload being created (see state::observe).
        Ok(lock)
    })();
    match res {
        Ok(lock) => Ok(Created {
            wd,
            lock,
            spec,
            state,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&wd.dir);
            Err(e)
        }
    }
}

/// Reads a workload's spec.
pub fn load_spec(wd: &WorkloadDir) -> Result<Spec, ApiError> {
    let data = std::fs::read(wd.spec_path()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::State(StateError::NotFound(wd.name.clone()))
        } else {
            ApiError::Io {
                what: format!("read {}", wd.spec_path().display()),
                source: e,
            }
        }
    })?;
    serde_json::from_slice(&data).map_err(|e| {
        ApiError::State(StateError::Corrupt {
            name: wd.name.clone(),
            path: wd.spec_path(),
            msg: e.to_string(),
        })
    })
}

/// Starts a monitor for `wd` (which must not have a live one): forks, daemonises (setsid and
/// a second fork, so it belongs to no terminal and no caller waits for it) and returns the
/// caller's end of the monitor's first connection.
///
/// `lock` is the workload lock, held by the caller (see [`create`] and [`lock_existing`]).
/// The caller must be single-threaded.
#[allow(unsafe_code)]
pub fn spawn_monitor(
    root: &StateRoot,
    wd: &WorkloadDir,
    lock: std::fs::File,
    preloaded: Option<(Spec, WorkloadState)>,
) -> Result<OwnedFd, ApiError> {
    // Forking a multi-threaded process can leave the child stuck on a lock another thread held.
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads != 1 {
        return Err(ApiError::Monitor {
            code: CODE_STASIS_ERROR,
            message: format!(
                "cannot start a monitor for {} from a multi-threaded process",
                wd.name
            ),
        });
    }
    let (cli, mon) = protocol::seqpacket_pair().map_err(io_err("socketpair"))?;
    // SAFETY: the CLI is single-threaded here; the children only call async-signal-safe
    // setsid/fork before the grandchild becomes the monitor (a fresh single-threaded process).
    // One fork, then setsid: the monitor leaves the caller's session and terminal. The
    // caller does not wait for it; when the caller exits first, init (or the nearest
    // subreaper) adopts and later reaps it.
    match unsafe { sys::fork() }.map_err(io_err("fork"))? {
        None => {
            drop(cli);
            let _ = nix::unistd::setsid();
            crate::monitor::run(crate::monitor::Launch {
                root: root.clone(),
                name: wd.name.clone(),
                lock,
                first: mon,
                preloaded,
            })
        }
        Some(_) => {
            drop(mon);
            drop(lock);
            Ok(cli)
        }
    }
}

/// Takes the lock of an existing workload for a new monitor.
pub fn lock_existing(wd: &WorkloadDir) -> Result<std::fs::File, ApiError> {
    wd.lock_for_monitor()?.ok_or_else(|| ApiError::Monitor {
        code: CODE_STASIS_ERROR,
        message: format!("{} already has a monitor", wd.name),
    })
}

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

/// Sends a signal to a workload.
pub fn kill(root: &StateRoot, name: &WorkloadName, sig: i32) -> Result<(), ApiError> {
    let o = state::observe(&root.workload(name))?;
    if !o.monitor_alive {
        return Err(not_running_or_orphan(&o, name));
    }
    call(root, name, &Request::Signal { sig, session: None }).map(|_| ())
}

fn not_running_or_orphan(o: &Observed, name: &WorkloadName) -> ApiError {
    match (o.state.status, &o.state.note) {
        (Status::Running, Some(n)) => ApiError::NoMonitor {
            name: name.clone(),
            why: format!("{n}; `stasis rm -f {name}` ends it"),
        },
        _ => ApiError::NotRunning(name.clone()),
    }
}

/// Stops a workload (stop signal, SIGKILL after the timeout); returns its exit reply.
pub fn stop(
    root: &StateRoot,
    name: &WorkloadName,
    timeout: Option<Duration>,
) -> Result<Reply, ApiError> {
    let o = state::observe(&root.workload(name))?;
    if !o.monitor_alive {
        if o.state.status.is_final() {
            return Ok(exit_reply(&o.state));
        }
        return Err(not_running_or_orphan(&o, name));
    }
    let c = connect(root, name)?;
    protocol::send(
        c.as_fd(),
        &Request::Stop {
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        },
        &[],
    )
    .map_err(io_err("send to the monitor"))?;
    next_reply(&c)
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

/// Waits for a workload to end; returns its exit reply. Keeps waiting across a checkpoint
/// (the workload is one continuous job) and across a monitor restart.
pub fn wait(root: &StateRoot, name: &WorkloadName) -> Result<Reply, ApiError> {
    let wd = root.workload(name);
    loop {
        let o = state::observe(&wd)?;
        if o.state.status.is_final() && !o.monitor_alive {
            return Ok(exit_reply(&o.state));
        }
        if o.monitor_alive {
            if let Ok(c) = connect(root, name) {
                if protocol::send(c.as_fd(), &Request::Wait, &[]).is_ok() {
                    if let Ok(r) = next_reply(&c) {
                        return Ok(r);
                    }
                }
            }
        } else if o.state.status == Status::Running {
            return Err(not_running_or_orphan(&o, name));
        }
        // checkpointed without a monitor, or a monitor between lives: look again shortly
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills whatever of a workload still runs without a monitor, by pid and start time.
fn kill_orphan(root: &StateRoot, wd: &WorkloadDir, st: &WorkloadState) {
    if let Some(init) = st.init {
        if init.alive() {
            if let Ok(fd) = sys::pidfd_open(init.pid) {
                // re-check after pinning the process with a pidfd: the pid may have been reused
                if init.alive() {
                    let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                }
            }
        }
    }
    let cg = crate::container::cgroup::Cgroup::for_workload(&root.key(), wd.name.as_str());
    for _ in 0..200 {
        if cg.pids().is_empty() && !st.init.is_some_and(|i| i.alive()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = cg.remove();
}

/// Removes a workload. Without `force` it must not be running.
pub fn rm(root: &StateRoot, name: &WorkloadName, force: bool) -> Result<(), ApiError> {
    let wd = root.workload(name);
    let o = state::observe(&wd)?;
    if o.monitor_alive {
        let running = !o.state.status.is_final() && o.state.status != Status::Checkpointed;
        if running && !force {
            return Err(ApiError::Running(name.clone()));
        }
        if let Ok(c) = connect(root, name) {
            if running {
                let _ = request(
                    &c,
                    &Request::Signal {
                        sig: libc::SIGKILL,
                        session: None,
                    },
                );
                let _ = protocol::send(
                    c.as_fd(),
                    &Request::Stop {
                        timeout_ms: Some(0),
                    },
                    &[],
                );
                let _ = next_reply(&c);
            }
            if let Ok(c) = connect(root, name) {
                let _ = request(&c, &Request::Shutdown);
            }
        }
        // the monitor releases the lock when it exits
        for _ in 0..500 {
            if !wd.monitor_alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if wd.monitor_alive() {
            return Err(ApiError::Monitor {
                code: CODE_STASIS_ERROR,
                message: format!("the monitor of {name} did not exit"),
            });
        }
    }
    let lock = wd.try_lock()?;
    let st = match wd.load() {
        Ok(s) => s,
        Err(StateError::NotFound(_)) if !wd.exists() => return Ok(()),
        Err(_) => WorkloadState::new(name),
    };
    if st.status == Status::Running && st.init.is_some_and(|i| i.alive()) && !force {
        return Err(ApiError::Running(name.clone()));
    }
    kill_orphan(root, &wd, &st);
    let _ = std::fs::remove_file(&wd.socket);
    drop(lock);
    std::fs::remove_dir_all(&wd.dir).map_err(io_err(format!("remove {}", wd.dir.display())))?;
    Ok(())
}

/// Takes a checkpoint.
/// Finds CRIU in the caller's environment and checks it (once per boot).
pub fn locate_criu(root: &StateRoot) -> Result<crate::criu::Criu, ApiError> {
    root.ensure()?;
    Ok(crate::criu::locate_checked(&crate::criu::cache_dir(root))?)
}

pub fn checkpoint(
    root: &StateRoot,
    name: &WorkloadName,
    mut opts: CheckpointOpts,
) -> Result<Reply, ApiError> {
    let o = state::observe(&root.workload(name))?;
    if !o.monitor_alive {
        return Err(not_running_or_orphan(&o, name));
    }
    opts.criu = Some(locate_criu(root)?);
    let c = connect(root, name)?;
    protocol::send(c.as_fd(), &Request::Checkpoint { opts }, &[])
        .map_err(io_err("send to the monitor"))?;
    next_reply(&c)
}

/// Restores a workload: through its monitor if it has one, else by starting a new monitor.
pub fn restore(
    root: &StateRoot,
    name: &WorkloadName,
    mut opts: RestoreOpts,
) -> Result<Reply, ApiError> {
    let wd = root.workload(name);
    let o = settled(&wd)?;
    opts.criu = Some(locate_criu(root)?);
    if o.monitor_alive {
        let c = connect(root, name)?;
        protocol::send(c.as_fd(), &Request::Restore { opts }, &[])
            .map_err(io_err("send to the monitor"))?;
        return next_reply(&c);
    }
    if o.state.status == Status::Running {
        return Err(not_running_or_orphan(&o, name));
    }
    // Check before starting a monitor, so a refusal leaves nothing changed.
    let g = generations::pick(&wd, opts.generation)?;
    g.verify(name.as_str())?;
    let lock = lock_existing(&wd)?;
    let conn = spawn_monitor(root, &wd, lock, None)?;
    protocol::send(conn.as_fd(), &Request::StartRestore { opts }, &[])
        .map_err(io_err("send to the monitor"))?;
    next_reply(&conn)
}

/// Exports generation `gen` (newest when None) of a workload to `out`.
pub fn export(
    root: &StateRoot,
    name: &WorkloadName,
    gen: Option<u32>,
    out: impl std::io::Write,
) -> Result<u32, ApiError> {
    let wd = root.workload(name);
    if !wd.exists() {
        return Err(StateError::NotFound(name.clone()).into());
    }
    let g = generations::pick(&wd, gen)?;
    crate::store::archive::export(&wd, &g, out)?;
    Ok(g.number)
}

/// Imports an export archive as a checkpointed workload named `name` (or the archive's).
pub fn import(
    root: &StateRoot,
    input: impl std::io::Read,
    origin: &str,
    name: Option<WorkloadName>,
) -> Result<WorkloadName, ApiError> {
    root.ensure()?;
    let staging = root
        .root
        .join("workloads")
        .join(format!(".import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    crate::store::atomic::mkdir_p(&staging, 0o700)?;
    let res = (|| -> Result<WorkloadName, ApiError> {
        let imp = crate::store::archive::import(
            input,
            origin,
            &staging,
            &crate::store::init_copies::dir(),
        )?;
        let name = match name {
            Some(n) => n,
            None => {
                WorkloadName::parse(&imp.header.name).map_err(|e| CheckpointError::Archive {
                    path: origin.to_string(),
                    why: e.to_string(),
                })?
            }
        };
        let mut spec = imp.header.manifest.spec.clone();
        spec.name = Some(name.clone());
        let wd = root.workload(&name);
        wd.create()?;
        let inner = (|| -> Result<(), ApiError> {
            imp.install_init()?;
            crate::store::atomic::write_json_atomic(&wd.spec_path(), &spec)?;
            crate::store::atomic::mkdir_p(&wd.checkpoints(), 0o700)?;
            let gen = imp.header.manifest.generation;
            let dst = wd.checkpoints().join(gen.to_string());
            std::fs::rename(&imp.images, &dst)
                .map_err(io_err(format!("move images to {}", dst.display())))?;
            if let Some(log) = &imp.log {
                std::fs::rename(log, wd.log_path())
                    .map_err(io_err(format!("move log to {}", wd.log_path().display())))?;
            }
            let mut st = WorkloadState::new(&name);
            st.status = Status::Checkpointed;
            st.generation = Some(gen);
            wd.save(&st)?;
            generations::Generation {
                number: gen,
                dir: dst,
            }
            .verify(name.as_str())?;
            Ok(())
        })();
        if let Err(e) = inner {
            let _ = std::fs::remove_dir_all(&wd.dir);
            return Err(e);
        }
        Ok(name)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    res
}

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
    let o = state::observe(&wd)?;
    let spec = load_spec(&wd)?;
    Ok(Inspect {
        name: name.clone(),
        state: o.state,
        monitor_alive: o.monitor_alive,
        spec,
        generations: generations(&wd),
        sessions: crate::store::sessions::list(&wd),
        cgroup: crate::container::cgroup::Cgroup::for_workload(&root.key(), name.as_str()).rel,
        log: wd.log_path().display().to_string(),
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
