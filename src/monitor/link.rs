//! The monitor's link to its container's init: taking init's kept control socket end with
//! pidfd_getfd, the hello that hands over init's process table, spawn requests and their
//! answers, and turning kept fd numbers into the monitor's own duplicates.
//!
//! The same steps serve a new container, a restored one and an adopted one (whose monitor died,
//! or which an older monitor handed over): nothing of the container's plumbing lives only in a
//! monitor, so any monitor can pick it up.

use super::fd::Fd;
use super::stdio::{Finish, Stdio};
use super::Event;
use crate::exit::{ExitStatus, CODE_STASIS_ERROR};
use crate::init::spawn::ProcSpec;
use crate::protocol::init::{FromInit, KeptFds, ProcInfo, StdioSpec, ToInit, CTL_PEER_FD};
use crate::sys;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What init answered to a spawn: the pid, the kept fds' numbers and duplicates of them, or
/// (exit code, reason).
pub(crate) type SpawnResult = Result<(i32, KeptFds, Vec<OwnedFd>), (i32, String)>;

/// Spawns init has been asked for, by id.
pub(crate) type PendingSpawns = Rc<RefCell<HashMap<String, oneshot::Sender<SpawnResult>>>>;

/// Errors talking to init.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("take init's control socket (pidfd_getfd of pid {pid}): {source}")]
    GetFd { pid: i32, source: std::io::Error },
    #[error("talk to the container's init (pid {pid}): {source}")]
    Io { pid: i32, source: std::io::Error },
    #[error("the container's init (pid {pid}) did not answer within {secs}s")]
    Timeout { pid: i32, secs: u64 },
    #[error("the container's init (pid {pid}) went away")]
    Gone { pid: i32 },
}

/// The live link.
pub(crate) struct Link {
    pub ctl: Rc<Fd>,
    pub pending: PendingSpawns,
    pub reader: JoinHandle<()>,
    /// The main process's status, as init reported it.
    pub main_status: Rc<Cell<Option<ExitStatus>>>,
}

/// Connects to init (host pid `pid`): takes its kept end of the control socket and says
/// hello; returns the socket and init's process table. Messages init queued for a monitor
/// that is gone are skipped: the table it answers with says everything they said.
pub(crate) async fn hello(
    pid: i32,
    pidfd: BorrowedFd<'_>,
) -> Result<(Rc<Fd>, Vec<ProcInfo>), LinkError> {
    let b =
        sys::pidfd_getfd(pidfd, CTL_PEER_FD).map_err(|source| LinkError::GetFd { pid, source })?;
    let ctl = Rc::new(Fd::new(b).map_err(|source| LinkError::Io { pid, source })?);
    ctl.send_msg(&ToInit::Hello, &[])
        .await
        .map_err(|source| LinkError::Io { pid, source })?;
    let wait = async {
        loop {
            match ctl.recv_msg::<FromInit>().await {
                Ok(Some((FromInit::Welcome { procs }, _))) => return Ok(procs),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(LinkError::Gone { pid }),
                Err(source) => return Err(LinkError::Io { pid, source }),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(r) => r.map(|procs| (ctl, procs)),
        Err(_) => Err(LinkError::Timeout { pid, secs: 10 }),
    }
}

/// Starts reading init's messages: spawn answers go straight to whoever awaits them (so the
/// event loop may await a spawn inline), exits become events.
pub(crate) fn start_reader(
    epoch: u64,
    ctl: Rc<Fd>,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Link {
    let pending: PendingSpawns = Rc::new(RefCell::new(HashMap::new()));
    let main_status = Rc::new(Cell::new(None));
    let (p, m, c) = (pending.clone(), main_status.clone(), ctl.clone());
    let reader = tokio::task::spawn_local(async move {
        loop {
            match c.recv_msg::<FromInit>().await {
                Ok(Some((msg, attached))) => match msg {
                    FromInit::Spawned { id, pid, fds } => {
                        if let Some(tx) = p.borrow_mut().remove(&id) {
                            let _ = tx.send(Ok((pid, fds, attached)));
                        }
                    }
                    FromInit::SpawnFailed { id, code, message } => {
                        if let Some(tx) = p.borrow_mut().remove(&id) {
                            let _ = tx.send(Err((code, message)));
                        }
                    }
                    FromInit::Exited { id, status } => {
                        if id == crate::protocol::init::MAIN_ID {
                            m.set(Some(status));
                        }
                        let _ = tx.send(Event::Proc { epoch, id, status });
                    }
                    FromInit::Welcome { .. } => {}
                },
                // The container is gone (init exited) or the socket broke: the exit path takes
                // it from here.
                Ok(None) | Err(_) => return,
            }
        }
    });
    Link {
        ctl,
        pending,
        reader,
        main_status,
    }
}

impl Link {
    /// Asks init to spawn a process; the receiver resolves with its answer.
    pub async fn request_spawn(
        &self,
        id: &str,
        proc: &ProcSpec,
        stdio: StdioSpec,
        extra: &[OwnedFd],
    ) -> Result<oneshot::Receiver<SpawnResult>, (i32, String)> {
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id.to_string(), tx);
        let raw: Vec<i32> = extra.iter().map(|f| f.as_raw_fd()).collect();
        let msg = ToInit::Spawn {
            id: id.to_string(),
            proc: proc.clone(),
            stdio,
        };
        if let Err(e) = self.ctl.send_msg(&msg, &raw).await {
            self.pending.borrow_mut().remove(id);
            return Err((
                CODE_STASIS_ERROR,
                format!("talk to the container's init: {e}"),
            ));
        }
        Ok(rx)
    }

    /// Sends init a message that needs no answer.
    pub async fn tell(&self, msg: &ToInit) -> std::io::Result<()> {
        self.ctl.send_msg(msg, &[]).await
    }
}

/// Waits for init's answer to a spawn request.
pub(crate) async fn await_spawn(rx: oneshot::Receiver<SpawnResult>) -> SpawnResult {
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err((CODE_STASIS_ERROR, "the container's init went away".into())),
        Err(_) => Err((
            CODE_STASIS_ERROR,
            "the container's init did not answer in 30s".into(),
        )),
    }
}

/// Where the monitor's duplicates of a process's kept fds come from.
pub(crate) enum Source<'a> {
    /// Taken from init's fd table (a restored or adopted container).
    Init(BorrowedFd<'a>),
    /// Attached to init's spawn answer, in [`KeptFds`] order.
    Attached(Vec<OwnedFd>),
}

/// The monitor's duplicates of the fds init keeps for one process, as a [`Stdio`] (pumps not
/// started yet).
pub(crate) fn stdio_from(src: Source<'_>, fds: &KeptFds) -> std::io::Result<Stdio> {
    let (pidfd, mut attached) = match src {
        Source::Init(p) => (Some(p), Vec::new().into_iter()),
        Source::Attached(v) => (None, v.into_iter()),
    };
    let mut take = |n: Option<i32>| -> std::io::Result<Option<Rc<Fd>>> {
        let Some(n) = n else { return Ok(None) };
        let fd = match pidfd {
            Some(p) => sys::pidfd_getfd(p, n)?,
            None => attached
                .next()
                .ok_or_else(|| std::io::Error::other("init's answer lacks an fd"))?,
        };
        Ok(Some(Rc::new(Fd::new(fd)?)))
    };
    // The order of KeptFds: stdin, stdout, stderr, tty.
    let stdin = take(fds.stdin)?;
    let out = take(fds.stdout)?;
    let err = take(fds.stderr)?;
    let tty = take(fds.tty)?;
    if tty.is_some() {
        return Ok(Stdio {
            stdin: tty.clone(),
            out: tty.clone(),
            tty,
            err: None,
            pumps: vec![],
            finish: Finish::new(),
        });
    }
    Ok(Stdio {
        tty: None,
        stdin,
        out,
        err,
        pumps: vec![],
        finish: Finish::new(),
    })
}

/// A pidfd's readiness (the process has exited), for a container init that is not our child.
#[allow(unsafe_code)]
pub(crate) async fn exited(pidfd: Rc<OwnedFd>) {
    let Ok(dup) = pidfd.as_fd().try_clone_to_owned() else {
        return std::future::pending().await;
    };
    // SAFETY: `dup` is a valid pidfd owned by the AsyncFd for its whole life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(a) => {
            let _ = a.readable().await;
        }
        Err(_) => std::future::pending().await,
    }
}
