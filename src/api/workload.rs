//! Workloads: creating one, its monitor (started, or adopting a running container), and the
//! verbs that end it: kill, stop, wait, rm.

use super::*;

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
    // Fail on a bad user now, not after the monitor started (root, the default, needs no
    // lookup to be valid).
    if spec.user.is_some() {
        crate::init::spawn::resolve_user(
            spec.user.as_deref(),
            spec.rootfs.as_deref(),
            &spec.group_add,
        )?;
    }
    // Pass-through variables are resolved here, in the caller's environment, and kept: a
    // restart by the monitor later must see the same values.
    for k in spec.env_pass.clone() {
        if let Ok(v) = std::env::var(&k) {
            spec.env.entry(k).or_insert(v);
        }
    }
    crate::spec::check_args_env(&spec.command, &spec.env)?;
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
pub fn spawn_monitor(
    root: &StateRoot,
    wd: &WorkloadDir,
    lock: std::fs::File,
    preloaded: Option<(Spec, WorkloadState)>,
) -> Result<OwnedFd, ApiError> {
    spawn_monitor_closing(root, wd, lock, preloaded, &[])
}

/// [`spawn_monitor`], with the fds `close` closed in the monitor: descriptors of the caller's
/// that the monitor must not hold (it keeps a copy of everything else that was open).
#[allow(unsafe_code)]
pub fn spawn_monitor_closing(
    root: &StateRoot,
    wd: &WorkloadDir,
    lock: std::fs::File,
    preloaded: Option<(Spec, WorkloadState)>,
    close: &[std::os::fd::RawFd],
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
            for fd in close {
                let _ = nix::unistd::close(*fd);
            }
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

/// Sends a signal to a workload.
pub fn kill(root: &StateRoot, name: &WorkloadName, sig: i32) -> Result<(), ApiError> {
    let o = supervised(root, name)?;
    if !o.monitor_alive {
        return Err(not_running_or_orphan(&o, name));
    }
    call(root, name, &Request::Signal { sig, session: None }).map(|_| ())
}

/// Observes a workload and, if its container runs without a monitor (the monitor was killed,
/// or died), adopts it first: any command that touches a job brings its supervision back.
pub fn supervised(root: &StateRoot, name: &WorkloadName) -> Result<Observed, ApiError> {
    let wd = root.workload(name);
    let o = state::observe(&wd)?;
    if o.monitor_alive || !o.orphaned() {
        return Ok(o);
    }
    match adopt(root, name, false) {
        Ok(_) | Err(ApiError::Monitor { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(state::observe(&wd)?)
}

/// `stasis adopt`: a new monitor takes over the running container of `name` whose monitor
/// is gone. With `replace`, a live monitor (an older stasis) first hands it over.
pub fn adopt(root: &StateRoot, name: &WorkloadName, replace: bool) -> Result<Reply, ApiError> {
    let wd = root.workload(name);
    let o = state::observe(&wd)?;
    if o.monitor_alive {
        if !replace {
            return Err(ApiError::Monitor {
                code: CODE_STASIS_ERROR,
                message: format!(
                    "{name} has a monitor (`stasis adopt --replace {name}` hands it to this stasis)"
                ),
            });
        }
        call(root, name, &Request::Release)?;
        wait_for_monitor_exit(&wd)?;
    }
    let o = state::observe(&wd)?;
    if !o.orphaned() {
        return Err(ApiError::NotRunning(name.clone()));
    }
    let lock = lock_existing(&wd)?;
    let conn = spawn_monitor(root, &wd, lock, None)?;
    protocol::send(conn.as_fd(), &Request::Adopt, &[]).map_err(io_err("send to the monitor"))?;
    next_reply(&conn)
}

/// Waits (up to 5 s) until the monitor of `wd` has exited and released its lock.
fn wait_for_monitor_exit(wd: &WorkloadDir) -> Result<(), ApiError> {
    for _ in 0..500 {
        if !wd.monitor_alive() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(ApiError::Monitor {
        code: CODE_STASIS_ERROR,
        message: format!("the monitor of {} did not exit", wd.name),
    })
}

pub(crate) fn not_running_or_orphan(o: &Observed, name: &WorkloadName) -> ApiError {
    match (o.state.status, &o.state.note) {
        (Status::Running, Some(n)) => ApiError::NoMonitor {
            name: name.clone(),
            why: format!("{n}; `stasis adopt {name}` takes it over, `stasis rm -f {name}` ends it"),
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
    let o = supervised(root, name)?;
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

/// Waits for a workload to end; returns its exit reply. Keeps waiting across a checkpoint
/// (the workload is one continuous job) and across a monitor restart.
pub fn wait(root: &StateRoot, name: &WorkloadName) -> Result<Reply, ApiError> {
    loop {
        let o = supervised(root, name)?;
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
        wait_for_monitor_exit(&wd)?;
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
    crate::container::shm::detach_leftover(&root.runtime, name.as_str());
    let _ = std::fs::remove_file(&wd.socket);
    // Removed whole (renamed aside first) under the lock.
    wd.remove_all().map_err(StateError::from)?;
    drop(lock);
    Ok(())
}
