//! The monitor: one per workload, as conmon is, daemonised, a child subreaper, outliving the
//! CLI that started it. It owns the outer ends of every pipe and pty that crosses the
//! container's edge, writes the log, serves attach clients on a unix socket, reaps everything,
//! turns the workload's end into a recorded exit, and drives checkpoint and restore.
//!
//! It runs a current-thread tokio runtime and never starts another thread, so it can clone the
//! container's init safely at any time. One event loop owns all state; small tasks (client
//! readers, output pumps, the reaper) talk to it through a channel.

mod cr;
pub(crate) mod io;
mod policy;
mod reaper;
mod sessions;
mod start;

use crate::container::cgroup::Cgroup;
use crate::criu::Criu;
use crate::exit::{ExitStatus, CODE_STASIS_ERROR};
use crate::protocol::{self, Reply, Request};
use crate::spec::Spec;
use crate::store::events::{self, Event as HistEvent};
use crate::store::log::LogWriter;
use crate::store::state::{
    now_ms, ExitInfo, ProcRef, StateRoot, Status, WorkloadDir, WorkloadState,
};
use crate::sys;
use io::{Fd, Finish, Sinks};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a new monitor is handed by the CLI that forks it.
pub struct Launch {
    pub root: StateRoot,
    pub name: crate::store::name::WorkloadName,
    /// The workload lock, held for the monitor's whole life.
    pub lock: File,
    /// The CLI's connection; its first request says start or restore.
    pub first: OwnedFd,
    /// The spec and state the CLI just wrote, when it has them (saves reading them back).
    pub preloaded: Option<(Spec, WorkloadState)>,
}

thread_local! {
    static DIAG: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// Writes a line to the monitor's own diagnostic log (`monitor.log` in the workload dir).
pub(crate) fn diag(msg: &str) {
    DIAG.with(|d| {
        if let Some(f) = d.borrow_mut().as_mut() {
            let _ = writeln!(f, "{} {msg}", now_ms());
        }
    });
}

/// Runs a monitor in the current (already daemonised) process. Never returns.
pub fn run(l: Launch) -> ! {
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
        DIAG.with(|d| *d.borrow_mut() = Some(f));
    }
    sys::set_name("stasis-monitor");
    let _ = sys::set_child_subreaper();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            diag(&format!("runtime: {e}"));
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
        id: crate::store::sessions::SessionId,
    },
    /// Time to write a running session's record.
    SessionPersist {
        id: crate::store::sessions::SessionId,
    },
    /// A restart or restore the exit policy scheduled is due.
    PolicyDue,
}

/// Spawns init has been asked for, by id: each gets init's pid for it, or (code, reason).
pub(crate) type PendingSpawns =
    Rc<RefCell<HashMap<String, oneshot::Sender<Result<i32, (i32, String)>>>>>;

/// The running container.
pub(crate) struct Live {
    pub init: ProcRef,
    pub pidfd: OwnedFd,
    pub exit_rx: oneshot::Receiver<ExitStatus>,
    pub ctl: Rc<Fd>,
    /// Inode of init's end of the control socket (CRIU's name for it).
    pub ctl_ino: u64,
    pub reader: JoinHandle<()>,
    pub main_status: Rc<Cell<Option<ExitStatus>>>,
    pub pending: PendingSpawns,
}

/// The monitor's ends of a workload's (or session's) stdio.
pub(crate) struct Stdio {
    pub tty: Option<Rc<Fd>>,
    pub stdin: Option<Rc<Fd>>,
    /// A dup of the stdin pipe's read end: bytes the workload had not read when it was dumped
    /// are taken back from it and written first into the restored workload's stdin.
    pub stdin_peek: Option<OwnedFd>,
    pub out: Option<Rc<Fd>>,
    pub err: Option<Rc<Fd>>,
    pub pumps: Vec<JoinHandle<u64>>,
    pub finish: Rc<Finish>,
    /// CRIU names of the container-side ends, by role.
    pub exts: Vec<crate::store::generations::External>,
}

impl Stdio {
    /// The writers are gone (or going): lets the output pumps deliver what is left, then
    /// returns what the process had not read from its stdin (for a restore to hand back).
    pub async fn drain(mut self) -> Vec<u8> {
        self.finish.exited();
        for p in self.pumps.drain(..) {
            // A writer that outlived its container cannot exist (PID namespace), but a stuck
            // pipe must not hold things up forever.
            let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
        }
        self.stdin_peek
            .as_ref()
            .map(read_available)
            .unwrap_or_default()
    }
}

/// Reads whatever is buffered in a pipe, without blocking and without touching its flags
/// (the description is shared with the workload's stdin).
fn read_available(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = sys::bytes_readable(fd.as_fd()).unwrap_or(0).min(buf.len());
        if n == 0 {
            return out;
        }
        match nix::unistd::read(fd.as_fd(), &mut buf[..n]) {
            Ok(0) | Err(_) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
        }
    }
}

pub(crate) struct Monitor {
    pub root: StateRoot,
    pub wd: WorkloadDir,
    pub spec: Spec,
    pub st: WorkloadState,
    _lock: File,
    pub log: Rc<RefCell<Option<LogWriter>>>,
    pub cgroup: Cgroup,
    pub reaper: Rc<reaper::Reaper>,
    pub tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    next_cid: u64,
    pub clients: HashMap<u64, Rc<Fd>>,
    /// Clients attached to the workload's stdio (they get `Exit` at the end).
    pub attached: HashSet<u64>,
    /// Clients waiting for the final exit.
    pub waiters: HashSet<u64>,
    pub out_sinks: Sinks,
    pub err_sinks: Sinks,
    pub stdin_tx: watch::Sender<Option<Rc<Fd>>>,
    pub live: Option<Live>,
    pub stdio: Option<Stdio>,
    pub epoch: u64,
    stop_deadline: Option<Instant>,
    /// A signal the user sent with `stasis kill`, and when.
    pub user_kill: Option<(i32, Instant)>,
    pub oom_base: u64,
    pub sessions: HashMap<crate::store::sessions::SessionId, sessions::Session>,
    /// The exit being drained before it is recorded.
    pending_exit: Option<ExitInfo>,
    pub criu: Option<Criu>,
    pub term: Option<String>,
    pub exiting: bool,
    /// The workload's pty size, kept for a restore (a new pty starts at 0x0).
    pub winsize: Option<(u16, u16)>,
    pub policy: policy::PolicyState,
    /// Bytes the workload had not read from its stdin at the last dump.
    pub stdin_carry: Vec<u8>,
    /// spec.json exists (a new workload's is written by its monitor, off the CLI's path).
    pub spec_on_disk: bool,
}

async fn main(l: Launch) -> i32 {
    let wd = l.root.workload(&l.name);
    let spec_on_disk = l.preloaded.is_none();
    let (spec, st) = match l.preloaded {
        Some(p) => p,
        None => {
            let spec: Spec = match std::fs::read(wd.spec_path())
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok())
            {
                Some(s) => s,
                None => {
                    diag("cannot read spec.json");
                    return CODE_STASIS_ERROR;
                }
            };
            match wd.load() {
                Ok(st) => (spec, st),
                Err(e) => {
                    diag(&format!("{e}"));
                    return CODE_STASIS_ERROR;
                }
            }
        }
    };
    let log = match LogWriter::open(&wd.log_path()) {
        Ok(l) => l,
        Err(e) => {
            diag(&format!("open log: {e}"));
            return CODE_STASIS_ERROR;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let reaper = Rc::new(reaper::Reaper::default());
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => {
            tokio::task::spawn_local(reaper::run(reaper.clone(), s));
        }
        Err(e) => {
            diag(&format!("SIGCHLD handler: {e}"));
            return CODE_STASIS_ERROR;
        }
    }
    let cgroup = Cgroup::for_workload(&l.root.key(), l.name.as_str());
    let (stdin_tx, _) = watch::channel(None);
    let mut m = Monitor {
        root: l.root.clone(),
        wd: wd.clone(),
        spec,
        st,
        _lock: l.lock,
        log: Rc::new(RefCell::new(Some(log))),
        cgroup,
        reaper,
        tx,
        rx,
        next_cid: 1,
        clients: HashMap::new(),
        attached: HashSet::new(),
        waiters: HashSet::new(),
        out_sinks: Rc::new(RefCell::new(Vec::new())),
        err_sinks: Rc::new(RefCell::new(Vec::new())),
        stdin_tx,
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
        exiting: false,
        winsize: None,
        policy: policy::PolicyState::default(),
        stdin_carry: Vec::new(),
        spec_on_disk,
    };
    // Recorded with the next state change (the start or restore that follows at once).
    m.st.monitor = ProcRef::of(std::process::id() as i32);
    m.st.note = None;
    crate::store::generations::clean_temps(&m.wd);
    match Fd::new(l.first) {
        Ok(f) => {
            m.add_client(f);
        }
        Err(e) => {
            diag(&format!("first connection: {e}"));
            return CODE_STASIS_ERROR;
        }
    }
    match protocol::listen(&wd.socket).and_then(Fd::new) {
        Ok(listener) => {
            let tx = m.tx.clone();
            tokio::task::spawn_local(accept_loop(listener, tx));
        }
        Err(e) => diag(&format!("listen {}: {e}", wd.socket.display())),
    }
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        if m.exiting && m.pending_exit.is_none() {
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
    let _ = std::fs::remove_file(&m.wd.socket);
    if m.spec.rm && m.st.status.is_final() {
        m.remove_all();
    }
    0
}

enum Wake {
    Event(Event),
    InitExit(ExitStatus),
    StopTimeout,
    Periodic,
    Term,
    Nothing,
}

async fn wait_init(live: &mut Option<Live>) -> ExitStatus {
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
                diag(&format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client_reader(cid: u64, conn: Rc<Fd>, tx: mpsc::UnboundedSender<Event>) {
    loop {
        match conn.recv_msg::<Request>().await {
            Ok(Some((req, fds))) => {
                if tx.send(Event::Request { cid, req, fds }).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = tx.send(Event::ClientGone { cid });
                return;
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
    pub fn save(&mut self) {
        if let Err(e) = self.wd.save(&self.st) {
            diag(&format!("save state: {e}"));
        }
    }

    pub fn event(&self, ev: HistEvent) {
        events::append(&self.wd, &ev);
    }

    fn add_client(&mut self, conn: Fd) -> u64 {
        let cid = self.next_cid;
        self.next_cid += 1;
        let conn = Rc::new(conn);
        self.clients.insert(cid, conn.clone());
        tokio::task::spawn_local(client_reader(cid, conn, self.tx.clone()));
        cid
    }

    pub async fn reply(&self, cid: u64, r: Reply) {
        if let Some(c) = self.clients.get(&cid) {
            let _ = c.send_msg(&r, &[]).await;
        }
    }

    async fn on_event(&mut self, e: Event) {
        match e {
            Event::NewClient(fd) => match Fd::new(fd) {
                Ok(f) => {
                    self.add_client(f);
                }
                Err(e) => diag(&format!("client: {e}")),
            },
            Event::Request { cid, req, fds } => self.on_request(cid, req, fds).await,
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
            Event::SessionPersist { id } => self.session_persist(&id),
            Event::PolicyDue => self.policy_due().await,
        }
    }

    fn client_gone(&mut self, cid: u64) {
        self.clients.remove(&cid);
        self.attached.remove(&cid);
        self.waiters.remove(&cid);
        self.detach_sessions_of(cid);
        // A monitor whose starter vanished before saying what to do has nothing to supervise.
        if self.st.status == Status::Created && self.live.is_none() && self.clients.is_empty() {
            self.st.set_exited(ExitInfo {
                status: None,
                code: CODE_STASIS_ERROR,
                oom_killed: false,
                at: now_ms(),
                reason: Some("the CLI went away before the workload started".into()),
            });
            self.save();
            self.exiting = true;
        }
    }

    async fn on_request(&mut self, cid: u64, req: Request, fds: Vec<OwnedFd>) {
        match req {
            Request::Start {
                version,
                attach,
                term,
            } => {
                if version != protocol::PROTO_VERSION {
                    self.reply(
                        cid,
                        err_reply(
                            CODE_STASIS_ERROR,
                            format!(
                                "protocol version {version} is not {}",
                                protocol::PROTO_VERSION
                            ),
                        ),
                    )
                    .await;
                    self.exiting = true;
                    return;
                }
                self.term = term;
                self.req_start(cid, attach, fds).await;
            }
            Request::StartRestore { opts, .. } => {
                let r = self.restore(opts, Some(cid)).await;
                if r.is_err() {
                    // Nothing runs: this monitor exits; the workload stays checkpointed.
                    self.exiting = true;
                }
                let reply = match r {
                    Ok(r) => r,
                    Err(e) => e,
                };
                self.reply(cid, reply).await;
            }
            Request::Attach { attach } => {
                let r = self.attach(cid, &attach, fds);
                self.reply(cid, r).await;
            }
            Request::Signal { sig, session: None } => {
                let r = self.signal_workload(sig, true);
                self.reply(cid, r).await;
            }
            Request::Signal {
                sig,
                session: Some(id),
            } => {
                let r = self.signal_session(&id, sig).await;
                self.reply(cid, r).await;
            }
            Request::Resize {
                rows,
                cols,
                session,
            } => {
                self.resize(session.as_ref(), rows, cols);
            }
            Request::Stop { timeout_ms } => self.req_stop(cid, timeout_ms).await,
            Request::Wait => {
                if self.st.status.is_final() && self.pending_exit.is_none() {
                    let r = self.exit_reply();
                    self.reply(cid, r).await;
                } else {
                    self.waiters.insert(cid);
                }
            }
            Request::Checkpoint { opts } => {
                let r = self.checkpoint(opts).await;
                self.reply(cid, r).await;
            }
            Request::Restore { opts } => {
                let r = match self.restore(opts, None).await {
                    Ok(r) => r,
                    Err(e) => e,
                };
                self.reply(cid, r).await;
            }
            Request::Exec { req } => self.exec_start(cid, req, fds).await,
            Request::ExecAttach { id, attach } => self.exec_attach(cid, &id, &attach, fds).await,
            Request::ExecStop { id, timeout_ms } => self.exec_stop(cid, &id, timeout_ms).await,
            Request::ExecRemove { id } => {
                let r = self.exec_remove(&id);
                self.reply(cid, r).await;
            }
            Request::Detach => {
                self.attached.remove(&cid);
                self.detach_sessions_of(cid);
                self.reply(cid, Reply::Ok).await;
            }
            Request::Shutdown => {
                if self.live.is_none() {
                    self.exiting = true;
                    self.reply(cid, Reply::Ok).await;
                } else {
                    self.reply(
                        cid,
                        err_reply(CODE_STASIS_ERROR, format!("{} is running", self.wd.name)),
                    )
                    .await;
                }
            }
        }
    }

    async fn req_start(
        &mut self,
        cid: u64,
        attach: Option<protocol::AttachSpec>,
        fds: Vec<OwnedFd>,
    ) {
        if self.st.status != Status::Created {
            self.reply(
                cid,
                err_reply(
                    CODE_STASIS_ERROR,
                    format!("{} was already started", self.wd.name),
                ),
            )
            .await;
            return;
        }
        if let Some(a) = &attach {
            if let Reply::Error { code, message } = self.attach(cid, a, fds) {
                self.reply(cid, Reply::Error { code, message }).await;
                self.exiting = true;
                return;
            }
            self.winsize = a.winsize;
        }
        match self.launch().await {
            Ok(pid) => {
                self.event(HistEvent::new("start", ""));
                self.reply(cid, Reply::Started { pid }).await;
            }
            Err((code, message)) => {
                diag(&format!("start failed: {message}"));
                self.persist_spec();
                self.st.error = Some(message.clone());
                // Clients attached to a workload that never ran get its code now.
                self.record_exit(ExitInfo {
                    status: None,
                    code,
                    oom_killed: false,
                    at: now_ms(),
                    reason: Some(message.clone()),
                });
                self.attached.remove(&cid);
                self.reply(cid, Reply::Error { code, message }).await;
                self.notify_exit().await;
                self.cleanup_container();
                self.exiting = true;
            }
        }
    }

    /// Attaches a client's pipes (stdin read end, stdout and stderr write ends, in that order,
    /// as the spec says which are present) to the workload's stdio.
    fn attach(&mut self, cid: u64, a: &protocol::AttachSpec, fds: Vec<OwnedFd>) -> Reply {
        if self.st.status.is_final() {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} is not running", self.wd.name),
            );
        }
        let mut it = fds.into_iter();
        let want = a.stdin as usize + a.stdout as usize + a.stderr as usize;
        if it.len() != want {
            return err_reply(CODE_STASIS_ERROR, "attach: wrong number of fds");
        }
        let stdin = if a.stdin { it.next() } else { None };
        let out = if a.stdout { it.next() } else { None };
        let err = if a.stderr { it.next() } else { None };
        let mk = |f: OwnedFd| Fd::new(f).map(Rc::new);
        if let Some(f) = out {
            match mk(f) {
                Ok(f) => self.out_sinks.borrow_mut().push(f),
                Err(e) => return err_reply(CODE_STASIS_ERROR, format!("attach stdout: {e}")),
            }
        }
        if let Some(f) = err {
            match mk(f) {
                Ok(f) => {
                    // A tty has one output stream: stderr goes to the stdout sink list.
                    if self.spec.tty {
                        drop(f);
                    } else {
                        self.err_sinks.borrow_mut().push(f)
                    }
                }
                Err(e) => return err_reply(CODE_STASIS_ERROR, format!("attach stderr: {e}")),
            }
        }
        if let Some(f) = stdin {
            if self.spec.stdin || self.spec.tty {
                match Fd::new(f) {
                    Ok(src) => {
                        let target = self.stdin_tx.subscribe();
                        let tty = self.spec.tty;
                        let stdin_owner = self.stdin_tx.clone();
                        tokio::task::spawn_local(async move {
                            let eof = io::pump_stdin(src, target).await;
                            // The client's stdin ended: the workload sees end-of-file too (not
                            // for a tty, which has no end-of-file to pass on).
                            if eof && !tty {
                                stdin_owner.send_replace(None);
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
                    self.user_kill = Some((sig, Instant::now()));
                }
                Reply::Ok
            }
            Err(e) => err_reply(CODE_STASIS_ERROR, format!("signal {}: {e}", self.wd.name)),
        }
    }

    fn resize(
        &mut self,
        session: Option<&crate::store::sessions::SessionId>,
        rows: u16,
        cols: u16,
    ) {
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
        if self.live.is_none() {
            self.waiters.insert(cid);
            if self.st.status == Status::Checkpointed || self.policy.pending() {
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
                self.notify_exit().await;
                self.cleanup_container();
                self.exiting = true;
            } else if self.st.status.is_final() && self.pending_exit.is_none() {
                self.notify_exit().await;
            }
            return;
        }
        self.st.stop_requested = true;
        self.save();
        self.policy.cancel();
        let _ = self.signal_workload(self.spec.stop_signal(), false);
        let t = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.spec.stop_timeout());
        self.stop_deadline = Some(Instant::now() + t);
        self.waiters.insert(cid);
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
    async fn on_init_exit(&mut self, init_status: ExitStatus) {
        let Some(live) = self.live.take() else { return };
        self.stop_deadline = None;
        // init reports the main process's exit before exiting itself; wait for its socket to
        // reach end-of-file so that report is in.
        let _ = tokio::time::timeout(Duration::from_secs(2), live.reader).await;
        let status = live.main_status.get().unwrap_or(match init_status {
            // init exits with the workload's code; a signal to init (SIGKILL) ended everything.
            ExitStatus::Exited { code } => ExitStatus::Exited { code },
            s => s,
        });
        let oom = self.cgroup.oom_kills().unwrap_or(0) > self.oom_base;
        let reason = if oom {
            Some("OOM-killed: the memory limit was reached".to_string())
        } else {
            None
        };
        diag(&format!("workload ended: {status} (init {init_status})"));
        self.sessions_container_gone();
        self.pending_exit = Some(ExitInfo {
            status: Some(status),
            code: status.code(),
            oom_killed: oom,
            at: now_ms(),
            reason,
        });
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
        let by_user = self.exit_was_asked(&exit);
        self.event(
            HistEvent::new(
                "exit",
                exit.status.map(|s| s.to_string()).unwrap_or_default(),
            )
            .code(code),
        );
        self.record_exit(exit);
        if !by_user && self.policy_wants_retry().await {
            return;
        }
        self.notify_exit().await;
        self.cleanup_container();
        self.exiting = true;
    }

    /// True when the user asked for this end (`stop`, or `kill` shortly before).
    fn exit_was_asked(&self, exit: &ExitInfo) -> bool {
        if self.st.stop_requested {
            return true;
        }
        match (self.user_kill, exit.status) {
            (Some((sig, _)), Some(ExitStatus::Signaled { signal, .. })) if sig == signal => true,
            (Some((_, at)), _) => at.elapsed() < Duration::from_secs(10),
            _ => false,
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

    /// Closes attached clients' output pipes (so they read end-of-file) and sends them and
    /// every waiter the exit.
    async fn notify_exit(&mut self) {
        self.out_sinks.borrow_mut().clear();
        self.err_sinks.borrow_mut().clear();
        let r = self.exit_reply();
        let targets: Vec<u64> = self
            .attached
            .drain()
            .chain(self.waiters.drain())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for cid in targets {
            self.reply(cid, r.clone()).await;
        }
    }

    /// Tells attached clients something they should know, on their stderr.
    pub async fn notice(&self, message: &str) {
        for cid in &self.attached {
            self.reply(
                *cid,
                Reply::Notice {
                    message: message.to_string(),
                },
            )
            .await;
        }
    }

    /// Removes the cgroup once nothing runs in it.
    pub fn cleanup_container(&mut self) {
        if let Err(e) = self.cgroup.remove() {
            diag(&format!("{e}"));
        }
        // A later restore makes it again from the manifest.
        let _ = std::fs::remove_dir(crate::container::init_cwd(
            &self.root.key(),
            self.wd.name.as_str(),
        ));
    }

    /// `--rm`: the workload's directory goes once it has exited and been reported.
    fn remove_all(&mut self) {
        let _ = std::fs::remove_dir_all(&self.wd.dir);
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
                self.exiting = true;
                return;
            }
            diag("shutdown checkpoint failed; stopping instead");
        }
        if self.live.is_some() {
            self.st.stop_requested = true;
            self.policy.cancel();
            let _ = self.signal_workload(self.spec.stop_signal(), false);
            self.stop_deadline = Some(Instant::now() + self.spec.stop_timeout());
        } else {
            self.exiting = true;
        }
    }
}
