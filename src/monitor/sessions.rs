//! Exec sessions in the monitor: started by the container's init (so a checkpoint includes
//! them), their stdio made and kept by init like the workload's. An attached client gets the
//! output, and the session waits for it as a remote command waits for ssh; without one (`exec
//! -d`, or after detaching) the output goes to the session's log.

use super::fd::{Fd, Gate};
use super::link;
use super::stdio::{self, Sinks, Stdio};
use super::{clients, diag, err_reply, Event, Monitor};
use crate::exit::{ExitStatus, CODE_STASIS_ERROR};
use crate::init::spawn::{self, ProcSpec};
use crate::protocol::init::{KeptFds, StdioSpec, ToInit};
use crate::protocol::{AttachSpec, ExecRequest, Reply};
use crate::store::log::LogWriter;
use crate::store::sessions::{self, SessionId, SessionRecord, SessionStatus};
use crate::store::state::{now_ms, WorkloadDir};
use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The spawn id init knows a session by.
pub(crate) fn init_id(id: &SessionId) -> String {
    format!("exec:{id}")
}

/// The session a spawn id names.
pub(crate) fn session_of(init_id: &str) -> Option<SessionId> {
    init_id
        .strip_prefix("exec:")
        .and_then(|i| SessionId::parse(i).ok())
}

pub(crate) struct Session {
    pub rec: SessionRecord,
    pub stdio: Option<Stdio>,
    pub out_sinks: Sinks,
    pub err_sinks: Sinks,
    /// The session's log, open while no client is attached.
    pub log: stdio::SharedLog,
    pub client: Option<u64>,
    pub stdin_tx: watch::Sender<Option<Rc<Fd>>>,
    /// Clients waiting for this session to end (`exec --stop`).
    pub waiters: Vec<u64>,
}

impl Session {
    pub fn new(rec: SessionRecord) -> Session {
        Session {
            rec,
            stdio: None,
            out_sinks: Rc::new(RefCell::new(Vec::new())),
            err_sinks: Rc::new(RefCell::new(Vec::new())),
            log: Rc::new(RefCell::new(None)),
            client: None,
            stdin_tx: watch::channel(None).0,
            waiters: Vec::new(),
        }
    }

    /// From now on output goes to the session's log (rotated like the workload's).
    pub fn detach_to_log(&mut self, wd: &WorkloadDir, rotation: &crate::store::log::Rotation) {
        self.client = None;
        self.out_sinks.borrow_mut().clear();
        self.err_sinks.borrow_mut().clear();
        if self.log.borrow().is_none() {
            if let Err(e) = crate::store::atomic::mkdir_in(&wd.exec_dir(), 0o700) {
                diag(&format!("session {} log: {e}", self.rec.id));
            }
            match LogWriter::open_rotating(&sessions::log_path(wd, &self.rec.id), *rotation) {
                Ok(l) => *self.log.borrow_mut() = Some(l),
                Err(e) => diag(&format!("session {} log: {e}", self.rec.id)),
            }
        }
    }

    /// Adds a client's pipes as the session's stdio ends.
    fn attach(
        &mut self,
        cid: u64,
        a: &AttachSpec,
        got: clients::Attached,
        gate: Rc<Gate>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<(), String> {
        let mk = |f: OwnedFd| Fd::new(f).map(Rc::new).map_err(|e| format!("attach: {e}"));
        // The session's own client: the session waits for it (as with ssh).
        if let Some(f) = got.stdout {
            self.out_sinks.borrow_mut().push(mk(f)?);
        }
        if let Some(f) = got.stderr {
            if !self.rec.tty && !a.merge_output {
                self.err_sinks.borrow_mut().push(mk(f)?);
            }
        }
        if let Some(f) = got.stdin {
            if self.rec.stdin || self.rec.tty {
                let src = Fd::new(f).map_err(|e| format!("attach stdin: {e}"))?;
                let target = self.stdin_tx.subscribe();
                let closer = self.stdin_tx.clone();
                let tty = self.rec.tty;
                let id = self.rec.id.clone();
                tokio::task::spawn_local(async move {
                    if stdio::pump_stdin(src, target, gate).await && !tty {
                        closer.send_replace(None);
                        let _ = events.send(Event::StdinEnded { session: Some(id) });
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
        if req.command.is_empty() || req.command[0].is_empty() {
            self.reply(cid, err_reply(CODE_STASIS_ERROR, "the command is empty"));
            return;
        }
        let proc = match self.session_proc(&req) {
            Ok(p) => p,
            Err(e) => {
                self.reply(cid, err_reply(CODE_STASIS_ERROR, e));
                return;
            }
        };
        let declared = if req.detach {
            AttachSpec::default()
        } else {
            req.attach.clone()
        };
        let got = match clients::split_fds(&declared, fds, req.preserve_fds.len()) {
            Ok(g) => g,
            Err(e) => {
                self.reply(cid, err_reply(CODE_STASIS_ERROR, format!("exec: {e}")));
                return;
            }
        };
        let id = SessionId::random();
        let stdio = if req.tty {
            StdioSpec::Tty {
                winsize: req.attach.winsize,
            }
        } else {
            StdioSpec::Pipes {
                stdin: req.stdin,
                merge: req.attach.merge_output && !req.detach,
            }
        };
        let asked = match &self.live {
            Some(l) => {
                l.link
                    .request_spawn(&init_id(&id), &proc, stdio, &got.rest)
                    .await
            }
            None => Err((
                CODE_STASIS_ERROR,
                format!("{} is not running", self.wd.name),
            )),
        };
        let answer = match asked {
            Ok(rx) => link::await_spawn(rx).await,
            Err(e) => Err(e),
        };
        let (pid, kept, attached) = match answer {
            Ok(x) => x,
            Err((code, message)) => {
                // No record of a session that never ran.
                self.reply(cid, Reply::Error { code, message });
                return;
            }
        };
        let rec = SessionRecord {
            id: id.clone(),
            command: req.command.clone(),
            status: SessionStatus::Running,
            tty: req.tty,
            stdin: req.stdin,
            detached: req.detach,
            created_at: now_ms(),
            pid: Some(pid),
            exit_code: None,
            exit_status: None,
            finished_at: None,
            error: None,
        };
        if req.detach {
            // `exec -d` prints the id next: the record must be there for `exec --list`. It
            // names a live process, so it is not synced (see `save_state`).
            if let Err(e) = sessions::save_quick(&self.wd, &rec) {
                self.reply(
                    cid,
                    err_reply(
                        CODE_STASIS_ERROR,
                        format!("session {id} runs, but its record was not saved: {e}"),
                    ),
                );
            }
        } else {
            // An attached client is told how it ends; a short session then writes only its
            // final record.
            let tx = self.tx.clone();
            let sid = id.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Event::SessionPersist { id: sid });
            });
        }
        let mut s = Session::new(rec);
        if req.detach {
            s.detach_to_log(&self.wd, &self.spec.log);
        } else if let Err(e) = s.attach(cid, &req.attach, got, self.gate.clone(), self.tx.clone()) {
            diag(&format!("session {id}: {e}"));
            s.detach_to_log(&self.wd, &self.spec.log);
        }
        if let Err(e) = self.resume_session_stdio(&mut s, &kept, Some(attached)) {
            diag(&format!("session {id}: {e}"));
        }
        self.sessions.insert(id.clone(), s);
        self.reply(cid, Reply::ExecStarted { id });
    }

    /// Takes a session's stdio from init and starts its pumps.
    pub(crate) fn resume_session_stdio(
        &self,
        s: &mut Session,
        kept: &KeptFds,
        attached: Option<Vec<OwnedFd>>,
    ) -> Result<(), String> {
        let adopted = attached.is_none();
        let mut stdio = self.stdio_for(kept, attached)?;
        if adopted && s.log.borrow().is_some() {
            super::start::settle(&s.log, &sessions::log_path(&self.wd, &s.rec.id), &stdio);
        }
        s.stdin_tx.send_replace(stdio.stdin.take());
        self.start_pumps(
            &mut stdio,
            Some(s.log.clone()),
            Some((&s.out_sinks, &s.err_sinks)),
        );
        s.stdio = Some(stdio);
        Ok(())
    }

    pub(crate) fn exec_attach(
        &mut self,
        cid: u64,
        id: &SessionId,
        a: &AttachSpec,
        fds: Vec<OwnedFd>,
    ) {
        let gate = self.gate.clone();
        let events = self.tx.clone();
        let r = match self.sessions.get_mut(id) {
            None => err_reply(
                CODE_STASIS_ERROR,
                format!("no running exec session {id} in {}", self.wd.name),
            ),
            Some(s) if s.client.is_some() => err_reply(
                CODE_STASIS_ERROR,
                format!("exec session {id} already has a client"),
            ),
            Some(s) => match clients::split_fds(a, fds, 0)
                .and_then(|got| s.attach(cid, a, got, gate, events))
            {
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
        self.reply(cid, r);
    }

    pub(crate) async fn signal_session(&mut self, id: &SessionId, sig: i32) -> Reply {
        let (Some(live), true) = (&self.live, self.sessions.contains_key(id)) else {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("no running exec session {id} in {}", self.wd.name),
            );
        };
        match live
            .link
            .tell(&ToInit::Signal {
                id: init_id(id),
                sig,
            })
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
                    code: rec.exit_code.unwrap_or(CODE_STASIS_ERROR),
                    status: rec.exit_status,
                    oom_killed: false,
                    reason: rec.error,
                },
                _ => err_reply(
                    CODE_STASIS_ERROR,
                    format!("no running exec session {id} in {}", self.wd.name),
                ),
            };
            self.reply(cid, r);
            return;
        }
        let r = self.signal_session(id, libc::SIGTERM).await;
        if let Reply::Error { .. } = r {
            self.reply(cid, r);
            return;
        }
        if let (Some(s), Some(live)) = (self.sessions.get_mut(id), &self.live) {
            s.waiters.push(cid);
            let ctl = live.link.ctl.clone();
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
        if let Some(id) = session_of(init_id_) {
            self.session_ended(&id, Some(status), None);
        }
    }

    pub(crate) fn session_ended(
        &mut self,
        id: &SessionId,
        status: Option<ExitStatus>,
        why: Option<&str>,
    ) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if s.rec.status == SessionStatus::Exited {
            return;
        }
        s.rec.status = SessionStatus::Exited;
        s.rec.exit_status = status;
        // An unknown end is not success: no code rather than a made-up 0.
        s.rec.exit_code = status.map(|st| st.code());
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
    pub(crate) fn session_persist(&mut self, id: &SessionId) -> Result<(), String> {
        if let Some(s) = self.sessions.get(id) {
            if s.rec.status == SessionStatus::Running {
                if let Err(e) = sessions::save_quick(&self.wd, &s.rec) {
                    diag(&format!("session {id}: {e}"));
                    return Err(format!("session {id}'s record could not be saved: {e}"));
                }
            }
        }
        Ok(())
    }

    /// A session's output is all delivered: record its exit, tell its clients, and let init
    /// drop what it kept for it.
    pub(crate) async fn session_drained(&mut self, id: &SessionId) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        s.out_sinks.borrow_mut().clear();
        s.err_sinks.borrow_mut().clear();
        // In place before the reply, so `exec --list` after the exit shows it; not synced.
        // Its code has reached its client. A session is a process of the job: a power cut
        // ends it with the job, whose own "running" state is not synced either, and the
        // filesystem's next periodic journal commit (5 s on ext4) makes the record durable
        // anyway. Waiting for a commit here (or running one beside the next exec, from a
        // forked child) measured about 1 ms of an `exec true` that nsenter does in 3.
        if let Err(e) = sessions::save_quick(&self.wd, &s.rec) {
            diag(&format!("session {id}: {e}"));
        }
        let r = Reply::Exit {
            code: s.rec.exit_code.unwrap_or(CODE_STASIS_ERROR),
            status: s.rec.exit_status,
            oom_killed: false,
            reason: s.rec.error.clone(),
        };
        for cid in s.client.into_iter().chain(s.waiters.iter().copied()) {
            self.reply(cid, r.clone());
        }
        // The clients' writers send the exit first: init's housekeeping is nobody's wait.
        tokio::task::yield_now().await;
        if let Some(live) = &self.live {
            let _ = live.link.tell(&ToInit::Forget { id: init_id(id) }).await;
        }
    }

    /// The container ended: every session in it ended with it.
    pub(crate) fn sessions_container_gone(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.session_ended(
                &id,
                Some(ExitStatus::Signaled {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                }),
                Some("the workload's container stopped"),
            );
        }
    }

    /// A client went away or detached: its sessions go on, writing to their logs.
    pub(crate) fn detach_sessions_of(&mut self, cid: u64) {
        let wd = self.wd.clone();
        let rotation = self.spec.log;
        for s in self.sessions.values_mut() {
            if s.client == Some(cid) {
                s.detach_to_log(&wd, &rotation);
            }
            s.waiters.retain(|w| *w != cid);
        }
    }

    /// Takes up the sessions init reports after a restore or an adoption: a session this
    /// monitor knows keeps its clients; one it does not (a new monitor, an import) comes back
    /// from its record, writing to its log. Returns the ids of sessions that ended meanwhile
    /// (their output is drained and their end recorded).
    pub(crate) fn take_sessions(
        &mut self,
        procs: &[crate::protocol::init::ProcInfo],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for p in procs {
            let Some(id) = session_of(&p.id) else {
                continue;
            };
            if !self.sessions.contains_key(&id) {
                let rec = match sessions::load(&self.wd, &id) {
                    Some(r) => r,
                    None => {
                        problems.push(format!(
                            "exec session {id} runs but has no record; its output goes to its log"
                        ));
                        SessionRecord {
                            id: id.clone(),
                            command: vec![],
                            status: SessionStatus::Running,
                            tty: p.fds.tty.is_some(),
                            stdin: p.fds.stdin.is_some(),
                            detached: true,
                            created_at: now_ms(),
                            pid: Some(p.pid),
                            exit_code: None,
                            exit_status: None,
                            finished_at: None,
                            error: None,
                        }
                    }
                };
                let mut s = Session::new(rec);
                s.detach_to_log(&self.wd, &self.spec.log);
                self.sessions.insert(id.clone(), s);
            }
            let Some(mut s) = self.sessions.remove(&id) else {
                continue;
            };
            if s.rec.status == SessionStatus::Exited {
                // It died with its container (a crash) and the restored tree has it again.
                s.rec.status = SessionStatus::Running;
                s.rec.exit_code = None;
                s.rec.exit_status = None;
                s.rec.finished_at = None;
                s.rec.error = None;
                if s.client.is_none() {
                    s.detach_to_log(&self.wd, &self.spec.log);
                }
            }
            s.rec.pid = Some(p.pid);
            if let Err(e) = sessions::save_quick(&self.wd, &s.rec) {
                diag(&format!("session {id}: {e}"));
            }
            if let Err(e) = self.resume_session_stdio(&mut s, &p.fds, None) {
                problems.push(format!("exec session {id}: {e}"));
            }
            self.sessions.insert(id.clone(), s);
            if p.exited.is_some() {
                self.session_ended(&id, p.exited, None);
            }
        }
        // Sessions this monitor knew that the container does not have are gone for good.
        let have: Vec<SessionId> = procs.iter().filter_map(|p| session_of(&p.id)).collect();
        let gone: Vec<SessionId> = self
            .sessions
            .keys()
            .filter(|k| !have.contains(k))
            .cloned()
            .collect();
        for id in gone {
            self.session_ended(&id, None, Some("not in the restored container"));
        }
        problems
    }
}
