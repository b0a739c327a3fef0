//! Starting a container: its stdio, its cgroup, init, the workload's spawn, the output pumps.

use super::io::{self as mio, Fd, Finish, Sinks};
use super::{diag, Event, Live, Monitor, Stdio};
use crate::container::cgroup::Limits;
use crate::container::{self, ContainerConfig};
use crate::criu::ExtId;
use crate::exit::CODE_STASIS_ERROR;
use crate::init::spawn::ProcSpec;
use crate::protocol::{FromInit, ToInit};
use crate::spec::Volume;
use crate::store::generations::{External, Role};
use crate::store::log::Stream;
use crate::store::sessions::SessionId;
use crate::store::state::{now_ms, ProcRef, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Pipe buffers for output: large enough that a fast writer rarely waits on the monitor.
const OUT_PIPE_SIZE: usize = 1 << 20;

/// The container-side ends of a fresh stdio, by role.
pub(crate) struct ChildEnds {
    pub ends: Vec<(Role, OwnedFd)>,
}

impl ChildEnds {
    /// The fds for the spawn of a process, in fd order 0, 1, 2.
    pub fn stdio_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        let find = |r: &Role| self.ends.iter().find(|(role, _)| role == r).map(|(_, f)| f);
        if let Some(tty) = find(&Role::Tty).or_else(|| {
            self.ends
                .iter()
                .find(|(r, _)| matches!(r, Role::Session { stream, .. } if stream == "tty"))
                .map(|(_, f)| f)
        }) {
            return Ok(vec![tty.try_clone()?, tty.try_clone()?, tty.try_clone()?]);
        }
        let mut v = Vec::new();
        for want in ["stdin", "stdout", "stderr"] {
            let f = self
                .ends
                .iter()
                .find(|(r, _)| role_stream(r) == want)
                .map(|(_, f)| f)
                .ok_or_else(|| std::io::Error::other(format!("no {want} end")))?;
            v.push(f.try_clone()?);
        }
        Ok(v)
    }
}

/// "stdin", "stdout", "stderr" or "tty" for a stdio role.
pub(crate) fn role_stream(r: &Role) -> &str {
    match r {
        Role::Stdin => "stdin",
        Role::Stdout => "stdout",
        Role::Stderr => "stderr",
        Role::Tty => "tty",
        Role::Control => "control",
        Role::Session { stream, .. } => stream,
    }
}

/// Creates the stdio of a process: a pty, or three pipes. `session` tags the roles of an
/// exec session. The monitor's ends come back in a [`Stdio`] (pumps not started yet).
pub(crate) fn make_stdio(
    tty: bool,
    session: Option<&SessionId>,
    winsize: Option<(u16, u16)>,
) -> std::io::Result<(Stdio, ChildEnds)> {
    let role = |stream: &str| match session {
        Some(id) => Role::Session {
            id: id.clone(),
            stream: stream.to_string(),
        },
        None => match stream {
            "stdin" => Role::Stdin,
            "stdout" => Role::Stdout,
            "stderr" => Role::Stderr,
            _ => Role::Tty,
        },
    };
    let mut exts = Vec::new();
    let mut ends = Vec::new();
    let finish = Finish::new();
    if tty {
        let pty = nix::pty::openpty(None, None)?;
        let st = nix::sys::stat::fstat(&pty.slave)?;
        let master = pty.master;
        if let Some((r, c)) = winsize {
            let _ = crate::sys::set_winsize(master.as_fd(), r, c);
        }
        let m = Rc::new(Fd::new(master)?);
        exts.push(External {
            role: role("tty"),
            id: ExtId::Tty {
                rdev: st.st_rdev,
                dev: st.st_dev,
            },
        });
        ends.push((role("tty"), pty.slave));
        return Ok((
            Stdio {
                tty: Some(m.clone()),
                stdin: Some(m.clone()),
                stdin_peek: None,
                out: Some(m),
                err: None,
                pumps: vec![],
                finish,
                exts,
            },
            ChildEnds { ends },
        ));
    }
    let (in_r, in_w) = mio::pipe(None)?;
    let (out_r, out_w) = mio::pipe(Some(OUT_PIPE_SIZE))?;
    let (err_r, err_w) = mio::pipe(Some(OUT_PIPE_SIZE))?;
    let ino = |f: &OwnedFd| nix::sys::stat::fstat(f).map(|s| s.st_ino).unwrap_or(0);
    exts.push(External {
        role: role("stdin"),
        id: ExtId::Pipe { ino: ino(&in_r) },
    });
    exts.push(External {
        role: role("stdout"),
        id: ExtId::Pipe { ino: ino(&out_r) },
    });
    exts.push(External {
        role: role("stderr"),
        id: ExtId::Pipe { ino: ino(&err_r) },
    });
    // Same description as the workload's stdin: never make it non-blocking (the reader of
    // leftovers asks FIONREAD first instead).
    let peek = in_r.try_clone()?;
    ends.push((role("stdin"), in_r));
    ends.push((role("stdout"), out_w));
    ends.push((role("stderr"), err_w));
    Ok((
        Stdio {
            tty: None,
            stdin: Some(Rc::new(Fd::new(in_w)?)),
            stdin_peek: Some(peek),
            out: Some(Rc::new(Fd::new(out_r)?)),
            err: Some(Rc::new(Fd::new(err_r)?)),
            pumps: vec![],
            finish,
            exts,
        },
        ChildEnds { ends },
    ))
}

/// Starts the output pumps of a stdio towards a log and sinks.
pub(crate) fn start_pumps(
    s: &mut Stdio,
    log: Option<Rc<RefCell<Option<crate::store::log::LogWriter>>>>,
    out_sinks: &Sinks,
    err_sinks: &Sinks,
) {
    if let Some(out) = s.out.take() {
        let h = tokio::task::spawn_local(mio::pump_output(
            out,
            Stream::Stdout,
            log.clone(),
            out_sinks.clone(),
            s.finish.clone(),
        ));
        s.pumps.push(h);
    }
    if let Some(err) = s.err.take() {
        let h = tokio::task::spawn_local(mio::pump_output(
            err,
            Stream::Stderr,
            log,
            err_sinks.clone(),
            s.finish.clone(),
        ));
        s.pumps.push(h);
    }
}

/// Reads init's messages: spawn results go straight to whoever awaits them (so the event loop
/// may await a spawn inline), exits become events.
pub(crate) fn spawn_reader(
    epoch: u64,
    ctl: Rc<Fd>,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    pending: super::PendingSpawns,
    main_status: Rc<Cell<Option<crate::exit::ExitStatus>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        loop {
            match ctl.recv_msg::<FromInit>().await {
                Ok(Some((msg, _))) => match msg {
                    FromInit::Spawned { id, pid } => {
                        if let Some(tx) = pending.borrow_mut().remove(&id) {
                            let _ = tx.send(Ok(pid));
                        }
                    }
                    FromInit::SpawnFailed { id, code, message } => {
                        if let Some(tx) = pending.borrow_mut().remove(&id) {
                            let _ = tx.send(Err((code, message)));
                        }
                    }
                    FromInit::Rekeyed => {}
                    FromInit::Exited { id, status } => {
                        if id == crate::init::MAIN_ID {
                            main_status.set(Some(status));
                        }
                        let _ = tx.send(Event::Proc { epoch, id, status });
                    }
                },
                Ok(None) | Err(_) => return,
            }
        }
    })
}

impl Monitor {
    /// The container configuration for this workload.
    pub(crate) fn container_config(
        &self,
        init_path: std::path::PathBuf,
    ) -> Result<ContainerConfig, (i32, String)> {
        let volumes = self
            .spec
            .volumes
            .iter()
            .map(|v| Volume::parse(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        Ok(ContainerConfig {
            hostname: self.spec.hostname.clone(),
            network: self.spec.network,
            rootfs: self.spec.rootfs.clone(),
            volumes,
            cgroup_procs: self.cgroup.procs_files(),
            init_path,
            init_cwd: self
                .spec
                .rootfs
                .is_none()
                .then(|| container::init_cwd(&self.root.key(), self.wd.name.as_str())),
        })
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            memory: self.spec.memory.map(|m| m.0),
            pids: self.spec.pids,
            cpus: self.spec.cpus,
        }
    }

    /// Creates the cgroup with the spec's limits.
    pub(crate) fn prepare_cgroup(&mut self) -> Result<(), (i32, String)> {
        self.cgroup
            .create(&self.limits())
            .map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        self.oom_base = self.cgroup.oom_kills().unwrap_or(0);
        Ok(())
    }

    /// Makes `live` the running container and starts reading its control socket.
    pub(crate) fn adopt(
        &mut self,
        pid: i32,
        pidfd: OwnedFd,
        ctl: OwnedFd,
        ctl_ino: u64,
    ) -> Result<(), (i32, String)> {
        self.epoch += 1;
        let ctl =
            Rc::new(Fd::new(ctl).map_err(|e| (CODE_STASIS_ERROR, format!("control socket: {e}")))?);
        let pending = Rc::new(RefCell::new(HashMap::new()));
        let main_status = Rc::new(Cell::new(None));
        let reader = spawn_reader(
            self.epoch,
            ctl.clone(),
            self.tx.clone(),
            pending.clone(),
            main_status.clone(),
        );
        let exit_rx = self.reaper.watch(pid);
        let init = ProcRef::of(pid).unwrap_or(ProcRef { pid, start_time: 0 });
        self.live = Some(Live {
            init,
            pidfd,
            exit_rx,
            ctl,
            ctl_ino,
            reader,
            main_status,
            pending,
        });
        Ok(())
    }

    /// Asks init to spawn a process; waits for its pid (inside the container).
    pub(crate) async fn spawn_in_container(
        &mut self,
        id: &str,
        proc: &ProcSpec,
        fds: &[OwnedFd],
    ) -> Result<i32, (i32, String)> {
        let rx = self.request_spawn(id, proc, fds).await?;
        await_spawn(rx).await
    }

    /// Sends init a spawn request; the receiver resolves with its answer.
    pub(crate) async fn request_spawn(
        &mut self,
        id: &str,
        proc: &ProcSpec,
        fds: &[OwnedFd],
    ) -> Result<SpawnAnswer, (i32, String)> {
        let live = self.live.as_ref().ok_or((
            CODE_STASIS_ERROR,
            format!("{} is not running", self.wd.name),
        ))?;
        let (tx, rx) = oneshot::channel();
        live.pending.borrow_mut().insert(id.to_string(), tx);
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let msg = ToInit::Spawn {
            id: id.to_string(),
            proc: proc.clone(),
        };
        if let Err(e) = live.ctl.send_msg(&msg, &raw).await {
            live.pending.borrow_mut().remove(id);
            return Err((
                CODE_STASIS_ERROR,
                format!("talk to the container's init: {e}"),
            ));
        }
        Ok(rx)
    }
}

/// init's answer to a spawn request: the pid, or (code, reason).
pub(crate) type SpawnAnswer = oneshot::Receiver<Result<i32, (i32, String)>>;

/// Waits for init's answer to a spawn request.
pub(crate) async fn await_spawn(rx: SpawnAnswer) -> Result<i32, (i32, String)> {
    {
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err((CODE_STASIS_ERROR, "the container's init went away".into())),
            Err(_) => Err((
                CODE_STASIS_ERROR,
                "the container's init did not answer in 30s".into(),
            )),
        }
    }
}

impl Monitor {
    /// Writes spec.json if the CLI left it to the monitor (see `api::create`).
    pub(crate) fn persist_spec(&mut self) {
        if !self.spec_on_disk {
            match crate::store::atomic::write_json_atomic(&self.wd.spec_path(), &self.spec) {
                Ok(()) => self.spec_on_disk = true,
                Err(e) => diag(&format!("write spec: {e}")),
            }
        }
    }

    /// Writes spec.json (if not on disk yet) and state.json together.
    fn persist_spec_and_state(&mut self) {
        if self.spec_on_disk {
            self.save();
            return;
        }
        let spec = crate::store::atomic::to_json(&self.wd.spec_path(), &self.spec);
        let state = crate::store::atomic::to_json(&self.wd.state_path(), &self.st);
        let r = match (spec, state) {
            (Ok(a), Ok(b)) => crate::store::atomic::write_atomic_many(&[
                (&self.wd.spec_path(), &a),
                (&self.wd.state_path(), &b),
            ]),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match r {
            Ok(()) => self.spec_on_disk = true,
            Err(e) => diag(&format!("write spec and state: {e}")),
        }
    }

    /// Starts the container and the workload in it. Returns init's host pid.
    pub(crate) async fn launch(&mut self) -> Result<i32, (i32, String)> {
        let proc = crate::init::spawn::workload_proc(&self.spec, self.term.as_deref())
            .map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        let init_path =
            crate::store::init_copies::ensure().map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        // The cgroup first: the config lists the cgroup.procs files init joins.
        self.prepare_cgroup()?;
        let cfg = self.container_config(init_path)?;
        if let Some(d) = &cfg.init_cwd {
            crate::store::atomic::mkdir_p(d, 0o700)
                .map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        }
        let (mut mon_ctl, init_ctl) = crate::protocol::seqpacket_pair()
            .map_err(|e| (CODE_STASIS_ERROR, format!("socketpair: {e}")))?;
        let (mut stdio, child) = make_stdio(self.spec.tty, None, self.winsize)
            .map_err(|e| (CODE_STASIS_ERROR, format!("stdio: {e}")))?;
        let started =
            container::start(&cfg, &init_ctl).map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        drop(init_ctl);
        if self.spec.network == crate::spec::Network::None {
            // The child made the real control socket inside the new network namespace and
            // sent our end over the bootstrap pair (see container::start).
            mon_ctl = match crate::protocol::recv::<String>(mon_ctl.as_fd()) {
                Ok(Some((_, mut fds))) if fds.len() == 1 => fds.remove(0),
                other => {
                    return Err((
                        CODE_STASIS_ERROR,
                        format!("control socket handover failed: {other:?}"),
                    ))
                }
            };
        }
        let ctl_ino = crate::sys::fd_inode(started.pid, container::INIT_CTL_FD).unwrap_or(0);
        self.adopt(started.pid, started.pidfd, mon_ctl, ctl_ino)?;
        let fds = child
            .stdio_fds()
            .map_err(|e| (CODE_STASIS_ERROR, format!("stdio: {e}")))?;
        let asked = self.request_spawn(crate::init::MAIN_ID, &proc, &fds).await;
        // While init forks and execs the workload on the other core, make the start durable.
        if asked.is_ok() {
            self.st.status = Status::Running;
            self.st.started_at = Some(now_ms());
            self.st.init = self.live.as_ref().map(|l| l.init);
            self.st.exit = None;
            self.st.error = None;
            self.persist_spec_and_state();
        } else {
            self.persist_spec();
        }
        let spawned = match asked {
            Ok(rx) => await_spawn(rx).await,
            Err(e) => Err(e),
        };
        drop(fds);
        drop(child);
        if let Err(e) = spawned {
            // init exits with the code once it has reported; collect it.
            if let Some(l) = self.live.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), l.exit_rx).await;
            }
            return Err(e);
        }
        self.install_stdio(&mut stdio, self.spec.stdin);
        start_pumps(
            &mut stdio,
            Some(self.log.clone()),
            &self.out_sinks,
            &self.err_sinks,
        );
        self.stdio = Some(stdio);
        let pid = self.live.as_ref().map(|l| l.init.pid).unwrap_or(0);
        self.policy_started();
        diag(&format!("started: init pid {pid}"));
        Ok(pid)
    }

    /// Hands the workload's stdin to the clients' pumps (or closes it when nobody may write).
    pub(crate) fn install_stdio(&mut self, s: &mut Stdio, keep_stdin: bool) {
        let target = if s.tty.is_some() || keep_stdin {
            s.stdin.take()
        } else {
            None
        };
        s.stdin = None;
        self.stdin_tx.send_replace(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn pipes_have_roles_and_distinct_inodes() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (s, ends) = make_stdio(false, Some(&SessionId::parse("abcabcabcabc").unwrap()), None).unwrap();
                assert_eq!(s.exts.len(), 3);
                let inos: std::collections::HashSet<_> = s.exts.iter().map(|e| e.id.clone()).collect();
                assert_eq!(inos.len(), 3);
                assert!(matches!(&s.exts[0].role, Role::Session { id, stream } if id.as_str() == "abcabcabcabc" && stream == "stdin"));
                assert_eq!(ends.stdio_fds().unwrap().len(), 3);
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pty_is_one_stream() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (s, ends) = make_stdio(true, None, Some((24, 80))).unwrap();
                assert!(s.tty.is_some() && s.err.is_none());
                assert!(matches!(s.exts[0].id, ExtId::Tty { .. }));
                let fds = ends.stdio_fds().unwrap();
                assert_eq!(fds.len(), 3);
                assert_eq!(crate::sys::get_winsize(fds[0].as_fd()).unwrap(), (24, 80));
            })
            .await;
    }
}
