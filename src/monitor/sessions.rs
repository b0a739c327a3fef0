//! Exec sessions in the monitor: started by the container's init (so a checkpoint includes
//! them), their stdio pipes or pty owned by the monitor like the workload's. An attached
//! client gets the output; without one (`exec -d`, or after detaching) it goes to the
//! session's log.

use super::io::{self as mio, Fd, Sinks};
use super::start::{make_stdio, start_pumps};
use super::{diag, err_reply, Event, Monitor, Stdio};
use crate::exit::{ExitStatus, CODE_STASIS_ERROR};
use crate::init::spawn::{self, ProcSpec};
use crate::protocol::{AttachSpec, ExecRequest, Reply, ToInit};
use crate::store::log::LogWriter;
use crate::store::sessions::{self, SessionId, SessionRecord, SessionStatus};
use crate::store::state::{now_ms, WorkloadDir};
use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;

/// The spawn id init knows a session by.
pub(crate) fn init_id(id: &SessionId) -> String {
    format!("exec:{id}")
}

pub(crate) struct Session {
    pub rec: SessionRecord,
    pub stdio: Option<Stdio>,
    pub out_sinks: Sinks,
    pub err_sinks: Sinks,
    /// The session's log, open while no client is attached.
    pub log: Rc<RefCell<Option<LogWriter>>>,
    pub client: Option<u64>,
    pub stdin_tx: watch::Sender<Option<Rc<Fd>>>,
    /// Bytes the session had not read from its stdin at a dump.
    pub stdin_carry: Vec<u8>,
    /// Clients waiting for this session to end (`exec --stop`).
    pub waiters: Vec<u64>,
}

impl Session {
    pub fn new(rec: SessionRecord, _wd: &WorkloadDir) -> Session {
        Session {
            rec,
            stdio: None,
            out_sinks: Rc::new(RefCell::new(Vec::new())),
            err_sinks: Rc::new(RefCell::new(Vec::new())),
            log: Rc::new(RefCell::new(None)),
            client: None,
            stdin_tx: watch::channel(None).0,
            stdin_carry: Vec::new(),
            waiters: Vec::new(),
        }
    }

    pub fn stdin_open(&self) -> bool {
        self.stdin_tx.borrow().is_some() && !self.rec.tty
    }

    /// From now on output goes to the session's log.
    pub fn detach_to_log(&mut self, wd: &WorkloadDir) {
        self.client = None;
        self.out_sinks.borrow_mut().clear();
        self.err_sinks.borrow_mut().clear();
        if self.log.borrow().is_none() {
            let _ = crate::store::atomic::mkdir_p(&wd.exec_dir(), 0o700);
            match LogWriter::open(&sessions::log_path(wd, &self.rec.id)) {
                Ok(l) => *self.log.borrow_mut() = Some(l),
                Err(e) => diag(&format!("session {} log: {e}", self.rec.id)),
            }
        }
    }

    /// Adds a client's pipes as the session's stdio ends.
    fn attach(&mut self, cid: u64, a: &AttachSpec, fds: Vec<OwnedFd>) -> Result<(), String> {
        let mut it = fds.into_iter();
        let stdin = if a.stdin { it.next() } else { None };
        let out = if a.stdout { it.next() } else { None };
        let err = if a.stderr { it.next() } else { None };
        let mk = |f: OwnedFd| Fd::new(f).map(Rc::new).map_err(|e| format!("attach: {e}"));
        if let Some(f) = out {
            self.out_sinks.borrow_mut().push(mk(f)?);
        }
        if let Some(f) = err {
            if self.rec.tty {
                drop(f);
            } else {
                self.err_sinks.borrow_mut().push(mk(f)?);
            }
        }
        if let Some(f) = stdin {
            if self.rec.stdin || self.rec.tty {
                let src = Fd::new(f).map_err(|e| format!("attach stdin: {e}"))?;
                let target = self.stdin_tx.subscribe();
                let closer = self.stdin_tx.clone();
                let tty = self.rec.tty;
                tokio::task::spawn_local(async move {
                    if mio::pump_stdin(src, target).await && !tty {
                        closer.send_replace(None);
                    }
                });
            }
        }
        *self.log.borrow_mut() = None;
        self.client = Some(cid);
        Ok(())
    }
}

impl Monitor {
    fn session_proc(&self, req: &ExecRequest) -> Result<ProcSpec, String> {
        let o = spawn::Overrides {
            argv: &req.command,
            env: &req.env,
            workdir: req.workdir.as_deref(),
            user: req.user.as_deref(),
            tty: req.tty,
            term: req.term.as_deref(),
            fds: &req.preserve_fds,
        };
        spawn::build_proc(&self.spec, &o).map_err(|e| e.to_string())
    }

    /// `stasis exec`: starts a session; replies `ExecStarted`, then `Exit` to an attached
    /// client when the session ends.
    pub(crate) async fn exec_start(&mut self, cid: u64, req: ExecRequest, fds: Vec<OwnedFd>) {
        if self.live.is_none() || self.pending_exit.is_some() {
            let what = if self.st.status == crate::store::state::Status::Checkpointed {
                "is checkpointed"
            } else {
                "is not running"
            };
            self.reply(
                cid,
                err_reply(CODE_STASIS_ERROR, format!("{} {what}", self.wd.name)),
            )
            .await;
            return;
        }
        if req.command.is_empty() || req.command[0].is_empty() {
            self.reply(cid, err_reply(CODE_STASIS_ERROR, "the command is empty"))
                .await;
            return;
        }
        let proc = match self.session_proc(&req) {
            Ok(p) => p,
            Err(e) => {
                self.reply(cid, err_reply(CODE_STASIS_ERROR, e)).await;
                return;
            }
        };
        let n_attach = if req.detach {
            0
        } else {
            req.attach.stdin as usize + req.attach.stdout as usize + req.attach.stderr as usize
        };
        if fds.len() != n_attach + req.preserve_fds.len() {
            self.reply(
                cid,
                err_reply(CODE_STASIS_ERROR, "exec: wrong number of fds"),
            )
            .await;
            return;
        }
        let mut fds = fds;
        let preserved: Vec<OwnedFd> = fds.split_off(n_attach);
        let id = SessionId::random();
        let mut rec = SessionRecord {
            id: id.clone(),
            command: req.command.clone(),
            status: SessionStatus::Created,
            tty: req.tty,
            stdin: req.stdin,
            detached: req.detach,
            created_at: now_ms(),
            pid: None,
            exit_code: None,
            exit_status: None,
            finished_at: None,
            error: None,
        };
        // No record yet: a session that never runs leaves none. The first is written once it
        // runs (see below).
        let (mut stdio, ends) = match make_stdio(req.tty, Some(&id), req.attach.winsize) {
            Ok(x) => x,
            Err(e) => {
                sessions::remove(&self.wd, &id);
                self.reply(
                    cid,
                    err_reply(CODE_STASIS_ERROR, format!("exec stdio: {e}")),
                )
                .await;
                return;
            }
        };
        let mut child_fds = match ends.stdio_fds() {
            Ok(f) => f,
            Err(e) => {
                sessions::remove(&self.wd, &id);
                self.reply(
                    cid,
                    err_reply(CODE_STASIS_ERROR, format!("exec stdio: {e}")),
                )
                .await;
                return;
            }
        };
        child_fds.extend(preserved);
        let r = self
            .spawn_in_container(&init_id(&id), &proc, &child_fds)
            .await;
        drop(child_fds);
        drop(ends);
        let pid = match r {
            Ok(pid) => pid,
            Err((code, message)) => {
                // No record of a session that never ran.
                sessions::remove(&self.wd, &id);
                self.reply(cid, Reply::Error { code, message }).await;
                return;
            }
        };
        rec.pid = Some(pid);
        rec.status = SessionStatus::Running;
        if req.detach {
            // `exec -d` prints the id next: the record must be there for `exec --list`.
            let _ = sessions::save(&self.wd, &rec);
        } else {
            // An attached client is told how it ends; a short session then writes only its
            // final record, one fsync instead of two on its path.
            let tx = self.tx.clone();
            let sid = id.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Event::SessionPersist { id: sid });
            });
        }
        let mut s = Session::new(rec, &self.wd);
        let target = if req.tty || req.stdin {
            stdio.stdin.take()
        } else {
            None
        };
        stdio.stdin = None;
        s.stdin_tx.send_replace(target);
        if req.detach {
            s.detach_to_log(&self.wd);
        } else if let Err(e) = s.attach(cid, &req.attach, fds) {
            diag(&format!("session {id}: {e}"));
            s.detach_to_log(&self.wd);
        }
        start_pumps(&mut stdio, Some(s.log.clone()), &s.out_sinks, &s.err_sinks);
        s.stdio = Some(stdio);
        self.sessions.insert(id.clone(), s);
        self.reply(cid, Reply::ExecStarted { id }).await;
    }

    pub(crate) async fn exec_attach(
        &mut self,
        cid: u64,
        id: &SessionId,
        a: &AttachSpec,
        fds: Vec<OwnedFd>,
    ) {
        let r = match self.sessions.get_mut(id) {
            None => err_reply(
                CODE_STASIS_ERROR,
                format!("no running exec session {id} in {}", self.wd.name),
            ),
            Some(s) if s.client.is_some() => err_reply(
                CODE_STASIS_ERROR,
                format!("exec session {id} already has a client"),
            ),
            Some(s) => match s.attach(cid, a, fds) {
                Ok(()) => {
                    if let (Some((r, c)), Some(t)) =
                        (a.winsize, s.stdio.as_ref().and_then(|x| x.tty.clone()))
                    {
                        let _ = crate::sys::set_winsize(t.borrow(), r, c);
                    }
                    Reply::Ok
                }
                Err(e) => err_reply(CODE_STASIS_ERROR, e),
            },
        };
        self.reply(cid, r).await;
    }

    pub(crate) async fn signal_session(&mut self, id: &SessionId, sig: i32) -> Reply {
        let (Some(live), true) = (&self.live, self.sessions.contains_key(id)) else {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("no running exec session {id} in {}", self.wd.name),
            );
        };
        match live
            .ctl
            .send_msg(
                &ToInit::Signal {
                    id: init_id(id),
                    sig,
                },
                &[],
            )
            .await
        {
            Ok(()) => Reply::Ok,
            Err(e) => err_reply(CODE_STASIS_ERROR, format!("signal session {id}: {e}")),
        }
    }

    /// Stops a session: TERM, then KILL after the timeout; replies when it has ended.
    pub(crate) async fn exec_stop(&mut self, cid: u64, id: &SessionId, timeout_ms: Option<u64>) {
        if !self.sessions.contains_key(id) {
            let r = match sessions::load(&self.wd, id) {
                Some(rec) if rec.status == SessionStatus::Exited => Reply::Exit {
                    code: rec.exit_code.unwrap_or(0),
                    status: rec.exit_status,
                    oom_killed: false,
                    reason: None,
                },
                _ => err_reply(
                    CODE_STASIS_ERROR,
                    format!("no running exec session {id} in {}", self.wd.name),
                ),
            };
            self.reply(cid, r).await;
            return;
        }
        let r = self.signal_session(id, libc::SIGTERM).await;
        if let Reply::Error { .. } = r {
            self.reply(cid, r).await;
            return;
        }
        if let (Some(s), Some(live)) = (self.sessions.get_mut(id), &self.live) {
            s.waiters.push(cid);
            let ctl = live.ctl.clone();
            let iid = init_id(id);
            let t = Duration::from_millis(timeout_ms.unwrap_or(10_000));
            tokio::task::spawn_local(async move {
                tokio::time::sleep(t).await;
                let _ = ctl
                    .send_msg(
                        &ToInit::Signal {
                            id: iid,
                            sig: libc::SIGKILL,
                        },
                        &[],
                    )
                    .await;
            });
        }
    }

    pub(crate) fn exec_remove(&mut self, id: &SessionId) -> Reply {
        if self.sessions.contains_key(id) {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("exec session {id} is running; stop it first"),
            );
        }
        match sessions::load(&self.wd, id) {
            Some(_) => {
                sessions::remove(&self.wd, id);
                Reply::Ok
            }
            None => err_reply(
                CODE_STASIS_ERROR,
                format!("no exec session {id} in {}", self.wd.name),
            ),
        }
    }

    /// A process init spawned has ended.
    pub(crate) async fn on_proc_exit(&mut self, init_id_: &str, status: ExitStatus) {
        let Some(id) = init_id_
            .strip_prefix("exec:")
            .and_then(|i| SessionId::parse(i).ok())
        else {
            return;
        };
        self.session_ended(&id, status, None);
    }

    fn session_ended(&mut self, id: &SessionId, status: ExitStatus, why: Option<&str>) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if s.rec.status == SessionStatus::Exited {
            return;
        }
        s.rec.status = SessionStatus::Exited;
        s.rec.exit_status = Some(status);
        s.rec.exit_code = Some(status.code());
        s.rec.finished_at = Some(now_ms());
        s.rec.error = why.map(str::to_string);
        s.stdin_tx.send_replace(None);
        let stdio = s.stdio.take();
        let tx = self.tx.clone();
        let id = id.clone();
        tokio::task::spawn_local(async move {
            if let Some(st) = stdio {
                st.drain().await;
            }
            let _ = tx.send(Event::SessionDrained { id });
        });
    }

    /// Writes the record of a session that is still running.
    pub(crate) fn session_persist(&mut self, id: &SessionId) {
        if let Some(s) = self.sessions.get(id) {
            if s.rec.status == SessionStatus::Running {
                if let Err(e) = sessions::save(&self.wd, &s.rec) {
                    diag(&format!("session {id}: {e}"));
                }
            }
        }
    }

    /// A session's output is all delivered: record its exit and tell its clients.
    pub(crate) async fn session_drained(&mut self, id: &SessionId) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        s.out_sinks.borrow_mut().clear();
        s.err_sinks.borrow_mut().clear();
        if let Err(e) = sessions::save(&self.wd, &s.rec) {
            diag(&format!("session {id}: {e}"));
        }
        let r = Reply::Exit {
            code: s.rec.exit_code.unwrap_or(0),
            status: s.rec.exit_status,
            oom_killed: false,
            reason: s.rec.error.clone(),
        };
        for cid in s.client.into_iter().chain(s.waiters.iter().copied()) {
            self.reply(cid, r.clone()).await;
        }
    }

    /// The container ended: every session in it ended with it.
    pub(crate) fn sessions_container_gone(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.session_ended(
                &id,
                ExitStatus::Signaled {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                },
                Some("the workload's container stopped"),
            );
        }
    }

    /// A client went away or detached: its sessions go on, writing to their logs.
    pub(crate) fn detach_sessions_of(&mut self, cid: u64) {
        let wd = self.wd.clone();
        for s in self.sessions.values_mut() {
            if s.client == Some(cid) {
                s.detach_to_log(&wd);
            }
            s.waiters.retain(|w| *w != cid);
        }
    }
}
