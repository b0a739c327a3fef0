//! The monitor: one per workload, as conmon is, daemonised, a child subreaper, outliving the
//! CLI that started it. It reads and writes the workload's stdio (duplicates of the ends the
//! container's init keeps), writes the log, serves clients on a unix socket, turns the
//! workload's end into a recorded exit, and drives checkpoint, restore and the exit policy.
//!
//! It runs a current-thread tokio runtime and never starts another thread, so it can clone the
//! container's init safely at any time. One event loop owns all state; small tasks (client
//! readers and writers, output pumps, the reaper) talk to it through a channel. Where the
//! workload is in its life is one [`lifecycle::Phase`].

mod adopt;
mod checkpoint;
mod clients;
mod criu_rpc;
mod diag;
pub(crate) mod fd;
mod files;
mod gpu;
mod lazy;
mod lifecycle;
mod link;
mod migrate;
mod policy;
mod reaper;
mod restore;
mod sessions;
mod start;
pub(crate) mod stdio;

use crate::container::cgroup::Cgroup;
use crate::criu::Criu;
use crate::exit::{ExitStatus, CODE_STASIS_ERROR};
use crate::protocol::{self, Reply, Request};
use crate::spec::Spec;
use crate::store::events::{self, Event as HistEvent};
use crate::store::log::LogWriter;
use crate::store::name::WorkloadName;
use crate::store::sessions::SessionId;
use crate::store::state::{
    now_ms, ExitInfo, ProcRef, StateRoot, Status, WorkloadDir, WorkloadState,
};
use crate::sys;
use fd::{Fd, Gate};
use lifecycle::{Ev, Op, Phase};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use stdio::{Stdio, Watchers};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What a new monitor is handed by the CLI that forks it.
pub struct Launch {
    pub root: StateRoot,
    pub name: WorkloadName,
    /// The workload lock, held for the monitor's whole life (and by its CRIU children).
    pub lock: File,
    /// The CLI's connection; its first request says start, restore or adopt.
    pub first: OwnedFd,
    /// The spec and state the CLI just wrote, when it has them (saves reading them back).
    pub preloaded: Option<(Spec, WorkloadState)>,
}

/// Writes a line to the monitor's own diagnostic log (`monitor.log` in the workload dir).
pub(crate) use diag::diag;

/// Runs a monitor in the current (already daemonised) process. Never returns.
pub fn run(l: Launch) -> ! {
    // A vanished client is an EPIPE to handle, never a reason for the monitor to die.
    sys::sigpipe(true);
    // The monitor must not hold the CLI's terminal or pipes: a caller reading the CLI's
    // output to end-of-file would otherwise wait for the monitor to die.
    if let Ok(null) = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        for i in 0..3 {
            let _ = sys::dup_to(null.as_raw_fd(), i);
        }
    }
    let wd = l.root.workload(&l.name);
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(wd.dir.join("monitor.log"))
    {
        diag::init(f);
    }
    sys::set_name("stasis-monitor");
    sys::trim_heap();
    // Orphans of CRIU runs and of restored trees must be ours to reap: without it a restored
    // init's zombie would linger until the host's init gets to it.
    if let Err(e) = sys::set_child_subreaper() {
        diag::error(&format!("cannot become a child subreaper: {e}"));
        sys::exit_now(CODE_STASIS_ERROR)
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            diag::error(&format!("runtime: {e}"));
            sys::exit_now(CODE_STASIS_ERROR)
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, main(l));
    drop(local);
    drop(rt);
    sys::exit_now(code)
}

/// Something the event loop must handle.
pub(crate) enum Event {
    NewClient(OwnedFd),
    Request {
        cid: u64,
        req: Request,
        fds: Vec<OwnedFd>,
    },
    /// A client sent something this version cannot read.
    BadRequest {
        cid: u64,
        why: String,
    },
    ClientGone {
        cid: u64,
    },
    /// A process init spawned has exited.
    Proc {
        epoch: u64,
        id: String,
        status: ExitStatus,
    },
    /// The workload's output is fully drained after its exit.
    Drained {
        epoch: u64,
    },
    /// A session's output is drained after its exit.
    SessionDrained {
        id: SessionId,
    },
    /// Time to write a running session's record.
    SessionPersist {
        id: SessionId,
    },
    /// A restart or restore the exit policy scheduled is due.
    PolicyDue,
    /// A client's stdin ended: the workload's (or a session's) stdin ends too.
    StdinEnded {
        session: Option<SessionId>,
    },
    /// Writing the log started failing (a full disk): output is counted as dropped.
    LogFailing {
        why: String,
    },
    /// Writing the log works again after failures.
    LogRecovered,
}

/// The running container.
pub(crate) struct Live {
    pub init: ProcRef,
    pub pidfd: Rc<OwnedFd>,
    /// Resolves when init has exited: its status when it was our child.
    pub exit_rx: oneshot::Receiver<Option<ExitStatus>>,
    pub link: link::Link,
}

pub(crate) struct Monitor {
    pub root: StateRoot,
    pub wd: WorkloadDir,
    pub spec: Spec,
    pub st: WorkloadState,
    /// The workload lock; CRIU runs inherit it, so a monitor killed mid-dump or mid-restore
    /// leaves the workload locked until CRIU is done (no second restore can start meanwhile).
    pub lock: File,
    pub phase: Phase,
    pub log: stdio::SharedLog,
    /// Log bytes lost to write errors (a full disk) since this monitor started.
    pub log_dropped: Rc<Cell<u64>>,
    pub cgroup: Cgroup,
    pub reaper: Rc<reaper::Reaper>,
    pub tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    pub clients: clients::Clients,
    /// Clients attached to the workload's stdio (they get `Exit` at the end).
    pub attached: HashSet<u64>,
    /// Clients waiting for the final exit.
    pub waiters: HashSet<u64>,
    /// Clients watching the workload's output.
    pub watchers: Watchers,
    /// Their writer tasks, awaited (while they make progress) before the monitor leaves.
    pub watcher_tasks: Vec<(tokio::task::JoinHandle<()>, Rc<stdio::Watcher>)>,
    pub stdin_tx: watch::Sender<Option<Rc<Fd>>>,
    /// Closed around a dump (see [`fd::Gate`]).
    pub gate: Rc<Gate>,
    pub live: Option<Live>,
    pub stdio: Option<Stdio>,
    pub epoch: u64,
    stop_deadline: Option<Instant>,
    /// A signal the user sent with `stasis kill`, and when.
    pub user_kill: Option<policy::UserKill>,
    pub oom_base: u64,
    pub sessions: HashMap<SessionId, sessions::Session>,
    /// The exit being drained before it is recorded.
    pending_exit: Option<ExitInfo>,
    pub criu: Option<Criu>,
    pub term: Option<String>,
    /// The workload's pty size.
    pub winsize: Option<(u16, u16)>,
    pub policy: policy::PolicyState,
    /// spec.json exists (a new workload's is written by its monitor, off the CLI's path).
    pub spec_on_disk: bool,
    /// Flags and environment the next restore adds (a lazy or gated one).
    pub restore_extra: Option<migrate::RestoreExtra>,
    /// When the running restore was asked for (its phases go to the monitor's log).
    pub restore_asked: Option<std::time::Instant>,
    /// Lazy restores under way.
    pub lazy: lazy::LazyState,
    /// A `--rm` job's record is gone: nothing may be written at its paths any more, where a
    /// new workload of the same name may already live.
    record_removed: bool,
}

async fn main(l: Launch) -> i32 {
    let wd = l.root.workload(&l.name);
    let spec_on_disk = l.preloaded.is_none();
    // A monitor that cannot start says why to the CLI that is waiting for it.
    let refuse = |why: String| {
        diag::error(&why);
        let _ = protocol::send(l.first.as_fd(), &err_reply(CODE_STASIS_ERROR, why), &[]);
        CODE_STASIS_ERROR
    };
    let (spec, st) = match l.preloaded {
        Some(p) => p,
        None => {
            let spec: Spec = match std::fs::read(wd.spec_path())
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => return refuse(format!("{}: {e}", wd.spec_path().display())),
            };
            match wd.load() {
                Ok(st) => (spec, st),
                Err(e) => return refuse(e.to_string()),
            }
        }
    };
    let log = match LogWriter::open_rotating(&wd.log_path(), spec.log) {
        Ok(l) => l,
        Err(e) => return refuse(format!("open the log {}: {e}", wd.log_path().display())),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let reaper = Rc::new(reaper::Reaper::default());
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => {
            tokio::task::spawn_local(reaper::run(reaper.clone(), s));
        }
        Err(e) => {
            diag::error(&format!("SIGCHLD handler: {e}"));
            return CODE_STASIS_ERROR;
        }
    }
    let cgroup = Cgroup::for_workload(&l.root.key(), l.name.as_str());
    let (stdin_tx, _) = watch::channel(None);
    let dropped_before = st.log_dropped;
    let mut m = Monitor {
        root: l.root.clone(),
        wd: wd.clone(),
        spec,
        st,
        lock: l.lock,
        phase: Phase::New,
        log: Rc::new(RefCell::new(Some(log))),
        log_dropped: Rc::new(Cell::new(dropped_before)),
        cgroup,
        reaper,
        tx,
        rx,
        clients: clients::Clients::default(),
        attached: HashSet::new(),
        waiters: HashSet::new(),
        watchers: Rc::new(RefCell::new(Vec::new())),
        watcher_tasks: Vec::new(),
        stdin_tx,
        gate: Rc::new(Gate::default()),
        live: None,
        stdio: None,
        epoch: 0,
        stop_deadline: None,
        user_kill: None,
        oom_base: 0,
        sessions: HashMap::new(),
        pending_exit: None,
        criu: None,
        term: None,
        winsize: None,
        policy: policy::PolicyState::default(),
        spec_on_disk,
        restore_extra: None,
        restore_asked: None,
        lazy: lazy::LazyState::default(),
        record_removed: false,
    };
    // Recorded with the next state change (the start, restore or adoption that follows).
    m.st.monitor = ProcRef::of(std::process::id() as i32);
    m.st.note = None;
    for n in crate::store::generations::recover_temps(&m.wd) {
        diag(&format!(
            "generation {n}: CRIU finished it after its monitor died: kept"
        ));
        m.event(
            HistEvent::new("checkpoint", "finished by CRIU after its monitor died").generation(n),
        );
    }
    match Fd::new(l.first) {
        Ok(f) => {
            m.clients.add(f, m.tx.clone());
        }
        Err(e) => {
            diag::warn(&format!("first connection: {e}"));
            return CODE_STASIS_ERROR;
        }
    }
    match protocol::listen(&wd.socket).and_then(Fd::new) {
        Ok(listener) => {
            let tx = m.tx.clone();
            tokio::task::spawn_local(accept_loop(listener, tx));
        }
        Err(e) => diag::warn(&format!("listen {}: {e}", wd.socket.display())),
    }
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        if matches!(m.phase, Phase::Ended | Phase::Released) && m.pending_exit.is_none() {
            break;
        }
        let periodic = m.policy.next_periodic;
        let wake = tokio::select! {
            ev = m.rx.recv() => match ev { Some(e) => Wake::Event(e), None => Wake::Nothing },
            st = wait_init(&mut m.live) => Wake::InitExit(st),
            _ = sleep_opt(m.stop_deadline) => Wake::StopTimeout,
            _ = sleep_opt(periodic) => Wake::Periodic,
            _ = recv_sig(&mut sigterm) => Wake::Term,
        };
        match wake {
            Wake::Event(e) => m.on_event(e).await,
            Wake::InitExit(st) => m.on_init_exit(st).await,
            Wake::StopTimeout => m.on_stop_timeout(),
            Wake::Periodic => m.periodic_checkpoint().await,
            Wake::Term => m.on_host_shutdown().await,
            Wake::Nothing => {}
        }
    }
    // Watching clients take the rest of the output (never at the job's expense: it has ended,
    // or runs on under another monitor), as long as they keep reading.
    for w in m.watchers.borrow_mut().drain(..) {
        w.finish();
    }
    let tasks = std::mem::take(&mut m.watcher_tasks);
    stdio::await_watchers(tasks, Duration::from_secs(5)).await;
    m.clients.flush(Duration::from_secs(2)).await;
    if !m.record_removed {
        if m.spec.rm && m.st.status.is_final() && m.phase == Phase::Ended {
            m.remove_record();
        } else {
            let _ = std::fs::remove_file(&m.wd.socket);
        }
    }
    0
}

enum Wake {
    Event(Event),
    InitExit(Option<ExitStatus>),
    StopTimeout,
    Periodic,
    Term,
    Nothing,
}

async fn wait_init(live: &mut Option<Live>) -> Option<ExitStatus> {
    match live {
        Some(l) => match (&mut l.exit_rx).await {
            Ok(s) => s,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn recv_sig(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn accept_loop(listener: Fd, tx: mpsc::UnboundedSender<Event>) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        match listener.accept().await {
            Ok(fd) => {
                // Only root and the monitor's own user may drive a workload.
                match protocol::peer_uid(&fd) {
                    Ok(uid) if uid == 0 || uid == me => {
                        if tx.send(Event::NewClient(fd)).is_err() {
                            return;
                        }
                    }
                    _ => drop(fd),
                }
            }
            Err(e) => {
                diag::warn(&format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An error reply for a request.
pub(crate) fn err_reply(code: i32, message: impl Into<String>) -> Reply {
    Reply::Error {
        code,
        message: message.into(),
    }
}

impl Monitor {
    /// Writes state.json. A failure (a full disk) is logged; the in-memory state stays the
    /// truth the monitor acts on, and the next save retries.
    pub fn save(&mut self) {
        if self.record_removed {
            return;
        }
        self.st.log_dropped = self.log_dropped.get();
        // What must outlive a power cut is what outlives the job's processes: that the job
        // exists (the start's durable write), how it ended, that it is checkpointed or has
        // moved. A state naming live processes (running, restoring) is ended by a power cut
        // anyway, and readers reconcile whichever older state the disk kept with the dead
        // monitor (`store::state::observe`): it is written whole, without waiting for the
        // disk (a journal commit, 1 to 8 ms here, twice on every restore).
        // The end of a `--rm` job is about to remove its whole record: its final state is
        // for readers in the meantime, and waiting for the disk would only delay the client's
        // exit. A power cut before the removal leaves an older state with a dead monitor,
        // which readers already report as such and `rm -f` clears.
        // The rest (an exit, a checkpointed or moved job) is made durable by a forked child,
        // so the monitor's loop never waits for the disk either.
        let transient = matches!(self.st.status, Status::Running | Status::Restoring);
        let quick = transient || (self.spec.rm && self.st.status.is_final());
        match self.wd.save_quick(&self.st) {
            Ok(()) if !quick => self.sync_in_background(vec![self.wd.state_path()]),
            Ok(()) => {}
            Err(e) => diag::warn(&format!("save state: {e}")),
        }
    }

    /// Makes the files at `paths` (renamed into place already) and their directory durable
    /// in a forked child: a journal commit takes a millisecond on a quiet disk and tens of
    /// milliseconds behind another writer, and nothing the monitor does next depends on it.
    /// A power cut before the child is done leaves the older file, as if it came a moment
    /// earlier.
    #[allow(unsafe_code)]
    pub(crate) fn sync_in_background(&self, paths: Vec<std::path::PathBuf>) {
        fn sync(paths: &[std::path::PathBuf]) -> std::io::Result<()> {
            for p in paths {
                std::fs::File::open(p)?.sync_data()?;
            }
            if let Some(dir) = paths.first().and_then(|p| p.parent()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        }
        // SAFETY: the monitor is single-threaded; the child only syncs files and _exits.
        match unsafe { sys::fork() } {
            Ok(None) => sys::exit_now(i32::from(sync(&paths).is_err())),
            Ok(Some(pid)) => {
                let done = self.reaper.watch(pid);
                tokio::task::spawn_local(async move {
                    if !done.await.is_ok_and(|s| s.success()) {
                        diag::warn(&format!("could not make {paths:?} durable"));
                    }
                });
            }
            Err(_) => {
                if let Err(e) = sync(&paths) {
                    diag::warn(&format!("sync {paths:?}: {e}"));
                }
            }
        }
    }

    pub fn event(&self, ev: HistEvent) {
        if self.record_removed {
            return;
        }
        events::append(&self.wd, &ev);
    }

    /// Moves the lifecycle on.
    pub fn go(&mut self, ev: Ev) {
        let next = lifecycle::next(self.phase, ev);
        if next != self.phase {
            diag::debug(&format!("{:?} --{ev:?}--> {next:?}", self.phase));
        }
        self.phase = next;
    }

    /// Refuses a request the phase does not admit.
    pub fn admit(&self, op: Op) -> Result<(), Reply> {
        lifecycle::admit(self.phase, op)
            .map_err(|r| err_reply(CODE_STASIS_ERROR, format!("{} {}", self.wd.name, r.0)))
    }

    pub fn reply(&mut self, cid: u64, r: Reply) {
        self.clients.reply(cid, r);
    }

    async fn on_event(&mut self, e: Event) {
        match e {
            Event::NewClient(fd) => match Fd::new(fd) {
                Ok(f) => {
                    self.clients.add(f, self.tx.clone());
                }
                Err(e) => diag::warn(&format!("client: {e}")),
            },
            Event::Request { cid, req, fds } => self.on_request(cid, req, fds).await,
            Event::BadRequest { cid, why } => {
                self.reply(cid, err_reply(CODE_STASIS_ERROR, why));
            }
            Event::ClientGone { cid } => self.client_gone(cid),
            Event::Proc { epoch, id, status } => {
                if epoch == self.epoch {
                    self.on_proc_exit(&id, status).await;
                }
            }
            Event::Drained { epoch } => {
                if epoch == self.epoch {
                    self.finish_exit().await;
                }
            }
            Event::SessionDrained { id } => self.session_drained(&id).await,
            Event::SessionPersist { id } => {
                // Reported in monitor.log; a checkpoint retries it and refuses if it fails.
                let _ = self.session_persist(&id);
            }
            Event::PolicyDue => self.policy_due().await,
            Event::StdinEnded { session } => self.close_stdin(session).await,
            Event::LogFailing { why } => {
                diag::warn(&format!("log writes fail: {why}"));
                self.event(HistEvent::new(
                    "log-failing",
                    format!(
                        "output cannot be written to the log ({why}); it is counted in `inspect`"
                    ),
                ));
                self.save();
            }
            Event::LogRecovered => {
                let n = self.log_dropped.get();
                diag(&format!("log writes work again; {n} bytes dropped so far"));
                self.event(HistEvent::new(
                    "log-dropped",
                    format!("{n} bytes of output could not be written to the log"),
                ));
                self.save();
            }
        }
    }

    /// Closes the stdin init keeps for the workload or a session, so its reader sees
    /// end-of-file (our own duplicate is already dropped).
    async fn close_stdin(&mut self, session: Option<SessionId>) {
        let id = match &session {
            None => crate::protocol::init::MAIN_ID.to_string(),
            Some(s) => sessions::init_id(s),
        };
        if let Some(live) = &self.live {
            if let Err(e) = live
                .link
                .tell(&crate::protocol::init::ToInit::CloseStdin { id })
                .await
            {
                diag::warn(&format!("close stdin: {e}"));
            }
        }
    }

    fn client_gone(&mut self, cid: u64) {
        self.clients.remove(cid);
        self.attached.remove(&cid);
        self.waiters.remove(&cid);
        self.detach_sessions_of(cid);
        // A monitor whose starter vanished before saying what to do has nothing to supervise.
        if self.phase == Phase::New && self.clients.is_empty() {
            self.st.set_exited(ExitInfo {
                status: None,
                code: CODE_STASIS_ERROR,
                oom_killed: false,
                at: now_ms(),
                reason: Some("the CLI went away before the workload started".into()),
            });
            self.save();
            self.go(Ev::GaveUp);
        }
    }

    async fn on_request(&mut self, cid: u64, req: Request, fds: Vec<OwnedFd>) {
        let admitted = |m: &Monitor, op: Op| m.admit(op);
        match req {
            Request::Start { attach, term } => {
                self.term = term;
                self.req_start(cid, attach, fds).await;
            }
            Request::StartRestore { opts } => {
                // A monitor started for a restore: the workload is checkpointed (or ended
                // with generations to come back from).
                self.phase = Phase::Checkpointed;
                let r = self.restore(opts, true).await;
                if r.is_err() {
                    // Nothing runs: this monitor exits; the workload stays as it was.
                    self.phase = Phase::Ended;
                }
                let reply = r.unwrap_or_else(|e| e);
                self.reply(cid, reply);
            }
            Request::MigrateOut { opts } => {
                let r = match admitted(self, Op::Migrate) {
                    Ok(()) => self.migrate_out(opts, fds).await,
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
            Request::StartMigrateIn { opts } => {
                let r = self.migrate_in(*opts, fds).await;
                self.reply(cid, r);
            }
            Request::Adopt => {
                let r = self.adopt().await;
                self.reply(cid, r);
            }
            Request::Release => {
                let r = match admitted(self, Op::Release) {
                    Ok(()) => self.release().await,
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
            Request::Attach { attach } => {
                let r = match admitted(self, Op::Attach) {
                    Ok(()) => self.attach(cid, &attach, fds),
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
            Request::Signal { sig, session: None } => {
                let r = match admitted(self, Op::Signal) {
                    Ok(()) => self.signal_workload(sig, true),
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
            Request::Signal {
                sig,
                session: Some(id),
            } => {
                let r = self.signal_session(&id, sig).await;
                self.reply(cid, r);
            }
            Request::Resize {
                rows,
                cols,
                session,
            } => self.resize(session.as_ref(), rows, cols),
            Request::Stop { timeout_ms } => match admitted(self, Op::Stop) {
                Ok(()) => self.req_stop(cid, timeout_ms).await,
                Err(_) if self.phase == Phase::Ended || self.phase == Phase::Draining => {
                    self.waiters.insert(cid);
                    if self.pending_exit.is_none() {
                        self.notify_exit();
                    }
                }
                Err(e) => self.reply(cid, e),
            },
            Request::Wait => {
                if self.phase == Phase::Ended && self.pending_exit.is_none() {
                    let r = self.exit_reply();
                    self.reply(cid, r);
                } else {
                    self.waiters.insert(cid);
                }
            }
            Request::Checkpoint { opts } => {
                let r = match admitted(self, Op::Checkpoint) {
                    Ok(()) => self.checkpoint(opts).await,
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
            Request::Restore { opts } => {
                let r = match admitted(self, Op::Restore) {
                    Ok(()) => self.restore(opts, true).await.unwrap_or_else(|e| e),
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
            Request::Exec { req } => match admitted(self, Op::Exec) {
                Ok(()) => self.exec_start(cid, req, fds).await,
                Err(e) => self.reply(cid, e),
            },
            Request::ExecAttach { id, attach } => self.exec_attach(cid, &id, &attach, fds),
            Request::ExecStop { id, timeout_ms } => self.exec_stop(cid, &id, timeout_ms).await,
            Request::ExecRemove { id } => {
                let r = self.exec_remove(&id);
                self.reply(cid, r);
            }
            Request::Detach => {
                self.attached.remove(&cid);
                self.detach_sessions_of(cid);
                self.reply(cid, Reply::Ok);
            }
            Request::Status => {
                self.st.log_dropped = self.log_dropped.get();
                let r = Reply::Status {
                    state: Box::new(self.st.clone()),
                };
                self.reply(cid, r);
            }
            Request::Shutdown => {
                let r = match admitted(self, Op::Shutdown) {
                    Ok(()) => {
                        if self.phase != Phase::Released {
                            self.phase = Phase::Ended;
                        }
                        Reply::Ok
                    }
                    Err(e) => e,
                };
                self.reply(cid, r);
            }
        }
    }

    /// Attaches a client's pipes (stdin read end, stdout and stderr write ends, in that order,
    /// as the spec says which are present) to the workload's stdio.
    fn attach(&mut self, cid: u64, a: &protocol::AttachSpec, fds: Vec<OwnedFd>) -> Reply {
        let got = match clients::split_fds(a, fds, 0) {
            Ok(g) => g,
            Err(e) => return err_reply(CODE_STASIS_ERROR, format!("attach: {e}")),
        };
        let mk = |f: OwnedFd| Fd::new(f).map(Rc::new);
        let out = match got.stdout.map(mk).transpose() {
            Ok(o) => o,
            Err(e) => return err_reply(CODE_STASIS_ERROR, format!("attach stdout: {e}")),
        };
        // A tty has one output stream, and so does a client whose stdout and stderr are one:
        // stderr goes with stdout.
        let err = match got.stderr.filter(|_| !self.spec.tty).map(mk).transpose() {
            Ok(e) => e,
            Err(e) => return err_reply(CODE_STASIS_ERROR, format!("attach stderr: {e}")),
        };
        if let Some(out) = out {
            let (w, task) = stdio::Watcher::new(out, err, self.log.clone(), self.wd.log_path());
            self.watchers.borrow_mut().push(w.clone());
            self.watcher_tasks.retain(|(t, _)| !t.is_finished());
            self.watcher_tasks.push((task, w));
        }
        if let Some(f) = got.stdin {
            if self.spec.stdin || self.spec.tty {
                match Fd::new(f) {
                    Ok(src) => {
                        let target = self.stdin_tx.subscribe();
                        let tty = self.spec.tty;
                        let stdin_owner = self.stdin_tx.clone();
                        let gate = self.gate.clone();
                        let tx = self.tx.clone();
                        tokio::task::spawn_local(async move {
                            let eof = stdio::pump_stdin(src, target, gate).await;
                            // The client's stdin ended: the workload sees end-of-file too (not
                            // for a tty, which has no end-of-file to pass on).
                            if eof && !tty {
                                stdin_owner.send_replace(None);
                                let _ = tx.send(Event::StdinEnded { session: None });
                            }
                        });
                    }
                    Err(e) => return err_reply(CODE_STASIS_ERROR, format!("attach stdin: {e}")),
                }
            }
        }
        if a.winsize.is_some() {
            self.winsize = a.winsize;
            if let (Some((r, c)), Some(s)) =
                (a.winsize, self.stdio.as_ref().and_then(|s| s.tty.clone()))
            {
                let _ = sys::set_winsize(s.borrow(), r, c);
            }
        }
        self.attached.insert(cid);
        Reply::Ok
    }

    /// Sends `sig` to the container's init, which forwards it to the workload's process group
    /// (SIGKILL ends the whole container at once).
    fn signal_workload(&mut self, sig: i32, by_user: bool) -> Reply {
        let Some(live) = &self.live else {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} is not running", self.wd.name),
            );
        };
        match sys::pidfd_send_signal(live.pidfd.as_fd(), sig) {
            Ok(()) => {
                if by_user {
                    self.user_kill = Some(policy::UserKill {
                        sig,
                        at: Instant::now(),
                    });
                }
                Reply::Ok
            }
            Err(e) => err_reply(CODE_STASIS_ERROR, format!("signal {}: {e}", self.wd.name)),
        }
    }

    fn resize(&mut self, session: Option<&SessionId>, rows: u16, cols: u16) {
        let tty = match session {
            None => {
                self.winsize = Some((rows, cols));
                self.stdio.as_ref().and_then(|s| s.tty.clone())
            }
            Some(id) => self
                .sessions
                .get(id)
                .and_then(|s| s.stdio.as_ref())
                .and_then(|s| s.tty.clone()),
        };
        if let Some(t) = tty {
            let _ = sys::set_winsize(t.borrow(), rows, cols);
        }
    }

    async fn req_stop(&mut self, cid: u64, timeout_ms: Option<u64>) {
        self.waiters.insert(cid);
        if self.live.is_none() {
            // Nothing runs and the user wants it ended: it stays restorable from its
            // generations, but is neither "checkpointed" nor brought back by a policy.
            self.policy.cancel();
            self.st.stop_requested = true;
            let exit = self.st.exit.clone().unwrap_or(ExitInfo {
                status: None,
                code: 0,
                oom_killed: false,
                at: now_ms(),
                reason: Some("stopped while checkpointed".into()),
            });
            self.record_exit(exit);
            self.go(Ev::StopAsked);
            self.notify_exit();
            self.cleanup_container().await;
            return;
        }
        self.st.stop_requested = true;
        self.save();
        self.policy.cancel();
        self.go(Ev::StopAsked);
        let _ = self.signal_workload(self.spec.stop_signal(), false);
        let t = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.spec.stop_timeout());
        self.stop_deadline = Some(Instant::now() + t);
    }

    fn on_stop_timeout(&mut self) {
        self.stop_deadline = None;
        if self.live.is_some() {
            diag("stop timeout: SIGKILL");
            let _ = self.signal_workload(libc::SIGKILL, false);
        }
    }

    /// init has exited: the container is gone. Work out how the workload ended, then drain
    /// its output before recording the exit.
    async fn on_init_exit(&mut self, init_status: Option<ExitStatus>) {
        let Some(live) = self.live.take() else { return };
        self.stop_deadline = None;
        // init reports the main process's exit before exiting itself; wait for its socket to
        // reach end-of-file so that report is in.
        let _ = tokio::time::timeout(Duration::from_secs(2), live.link.reader).await;
        let status = live.link.main_status.get().or(init_status);
        let oom = self.cgroup.oom_kills().unwrap_or(0) > self.oom_base;
        let reason = match (oom, status, self.lazy.take_lost()) {
            // Killed by the monitor when a lazy restore's memory could not come (a
            // post-copy migration whose page channel broke): the record says why.
            (_, _, Some(why)) => Some(format!(
                "killed: the rest of its memory could not be fetched ({why})"
            )),
            (true, _, None) => Some("OOM-killed: the memory limit was reached".to_string()),
            (false, None, None) => Some(
                "the container ended while adopted; its exit status was not reported".to_string(),
            ),
            _ => None,
        };
        diag(&format!(
            "workload ended: {status:?} (init {init_status:?})"
        ));
        self.sessions_container_gone();
        self.pending_exit = Some(ExitInfo {
            status,
            code: status.map(|s| s.code()).unwrap_or(CODE_STASIS_ERROR),
            oom_killed: oom,
            at: now_ms(),
            reason,
        });
        self.go(Ev::ContainerGone);
        self.drain_stdio();
    }

    /// Lets the output pumps finish, then sends `Drained`.
    fn drain_stdio(&mut self) {
        let epoch = self.epoch;
        let tx = self.tx.clone();
        let stdio = self.stdio.take();
        self.stdin_tx.send_replace(None);
        tokio::task::spawn_local(async move {
            if let Some(s) = stdio {
                s.drain().await;
            }
            let _ = tx.send(Event::Drained { epoch });
        });
    }

    /// Records the pending exit and tells everyone; then applies the exit policy.
    async fn finish_exit(&mut self) {
        let Some(exit) = self.pending_exit.take() else {
            return;
        };
        let code = exit.code;
        let by_user = policy::exit_was_asked(
            self.st.stop_requested,
            self.user_kill.as_ref(),
            exit.status,
            self.spec.stop_signal(),
            self.spec.stop_timeout(),
        );
        self.event(
            HistEvent::new(
                "exit",
                exit.status.map(|s| s.to_string()).unwrap_or_default(),
            )
            .code(code),
        );
        // A `--rm` job that ends for good is removed before anyone hears of its exit: once
        // `run --rm` returns, no record is left and its name is free. Its final state would be
        // removed with it, so it is not written (a monitor killed in between leaves a record
        // of a running job with a dead monitor, which readers report as such).
        if self.spec.rm {
            self.st.set_exited(exit);
        } else {
            self.record_exit(exit);
        }
        if !by_user && self.policy_wants_retry().await {
            if self.spec.rm {
                self.save();
            }
            self.go(Ev::Drained { retry: true });
            return;
        }
        self.go(Ev::Drained { retry: false });
        if self.spec.rm {
            // The cgroup first: its path is the name's, which the removal frees.
            self.cleanup_container().await;
            self.remove_record();
            self.notify_exit();
        } else {
            self.notify_exit();
            self.cleanup_container().await;
        }
    }

    pub fn record_exit(&mut self, exit: ExitInfo) {
        self.st.set_exited(exit);
        self.save();
    }

    pub fn exit_reply(&self) -> Reply {
        match &self.st.exit {
            Some(e) => Reply::Exit {
                code: e.code,
                status: e.status,
                oom_killed: e.oom_killed,
                reason: e.reason.clone(),
            },
            None => err_reply(
                CODE_STASIS_ERROR,
                format!("{} has no exit status", self.wd.name),
            ),
        }
    }

    /// Ends attached clients' output (their queues are delivered, then closed, so they read
    /// end-of-file) and sends them and every waiter the exit.
    fn notify_exit(&mut self) {
        for w in self.watchers.borrow_mut().drain(..) {
            w.finish();
        }
        let r = self.exit_reply();
        let targets: HashSet<u64> = self.attached.drain().chain(self.waiters.drain()).collect();
        for cid in targets {
            self.reply(cid, r.clone());
        }
    }

    /// Tells attached clients something they should know, on their stderr.
    pub fn notice(&mut self, message: &str) {
        let targets: Vec<u64> = self.attached.iter().copied().collect();
        for cid in targets {
            self.reply(
                cid,
                Reply::Notice {
                    message: message.to_string(),
                },
            );
        }
    }

    /// Removes the cgroup once nothing runs in it.
    pub async fn cleanup_container(&mut self) {
        if let Err(e) = self.cgroup.remove_async().await {
            diag(&format!("{e}"));
        }
    }

    /// `--rm`: the record (and socket) of a job that has ended for good goes: before its
    /// clients hear of the exit, or at the monitor's end when it never ran. Should that fail,
    /// the record keeps the final state instead.
    fn remove_record(&mut self) {
        // The socket first, while the directory still holds the name: a new workload of the
        // same name binds a socket at the same path.
        let _ = std::fs::remove_file(&self.wd.socket);
        match self.wd.remove_all() {
            Ok(()) => self.record_removed = true,
            Err(e) => {
                diag::warn(&format!("remove {}: {e}", self.wd.dir.display()));
                self.save();
            }
        }
    }

    /// The host is shutting down (SIGTERM to the monitor): checkpoint or stop, as the spec
    /// says, then exit.
    async fn on_host_shutdown(&mut self) {
        diag("SIGTERM: host shutdown");
        if self.live.is_some() && self.spec.on_shutdown == crate::spec::ShutdownAction::Checkpoint {
            let r = self
                .checkpoint(protocol::CheckpointOpts {
                    reason: "shutdown".into(),
                    ..Default::default()
                })
                .await;
            if matches!(r, Reply::Checkpointed { .. }) {
                self.phase = Phase::Ended;
                return;
            }
            diag("shutdown checkpoint failed; stopping instead");
        }
        if self.live.is_some() {
            self.st.stop_requested = true;
            self.policy.cancel();
            self.go(Ev::StopAsked);
            let _ = self.signal_workload(self.spec.stop_signal(), false);
            self.stop_deadline = Some(Instant::now() + self.spec.stop_timeout());
        } else {
            self.phase = Phase::Ended;
        }
    }
}
