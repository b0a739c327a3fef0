//! Starting a container: its cgroup, init, the link to init, the workload's spawn, the pumps;
//! and making a running container (new, restored or adopted) the monitor's live one.

use super::lifecycle::Ev;
use super::link::{self, Link};
use super::stdio::{self, PumpTo, Readers, Stdio};
use super::{diag, err_reply, Live, Monitor};
use crate::container::cgroup::Limits;
use crate::container::{self, ContainerConfig};
use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::init::{ProcInfo, StdioSpec, MAIN_ID};
use crate::protocol::{self, Reply};
use crate::spec::Volume;
use crate::store::events::Event as HistEvent;
use crate::store::log::Stream;
use crate::store::state::{now_ms, ExitInfo, ProcRef, Status};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use tokio::sync::oneshot;

/// Settles what a killed monitor left pending in a log fed by `stdio` (see
/// [`stdio::settle_pending`]).
pub(crate) fn settle(log: &stdio::SharedLog, path: &std::path::Path, s: &Stdio) {
    let pipe_of = |stream| match stream {
        Stream::Stderr => s.err.clone(),
        _ => s.out.clone(),
    };
    match stdio::settle_pending(log, path, pipe_of) {
        Ok(true) => diag(&format!(
            "{}: the last chunk was logged but not taken from its pipe: taken now",
            path.display()
        )),
        Ok(false) => {}
        Err(e) => diag(&format!("{}: settle a pending record: {e}", path.display())),
    }
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

    /// Makes the container whose init is `pid` the live one: links to init, takes the stdio
    /// of every process init knows (the workload's and the sessions'), and starts the pumps.
    /// `child`: init is our child (started or restored by us), not adopted.
    pub(crate) async fn take_container(
        &mut self,
        pid: i32,
        pidfd: OwnedFd,
        child: bool,
    ) -> Result<Vec<ProcInfo>, (i32, String)> {
        let pidfd = Rc::new(pidfd);
        let (ctl, procs) = link::hello(pid, pidfd.as_fd())
            .await
            .map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        self.epoch += 1;
        let link: Link = link::start_reader(self.epoch, ctl, self.tx.clone());
        let (etx, exit_rx) = oneshot::channel();
        if child {
            let rx = self.reaper.watch(pid);
            tokio::task::spawn_local(async move {
                let st = rx.await.ok();
                let _ = etx.send(st);
            });
        } else {
            let p = pidfd.clone();
            tokio::task::spawn_local(async move {
                link::exited(p).await;
                let _ = etx.send(None);
            });
        }
        let init = ProcRef::of(pid).unwrap_or(ProcRef { pid, start_time: 0 });
        self.live = Some(Live {
            init,
            pidfd,
            exit_rx,
            link,
        });
        for p in &procs {
            if p.id == MAIN_ID {
                let stdio = self
                    .stdio_for(&p.fds, None)
                    .map_err(|e| (CODE_STASIS_ERROR, e))?;
                if !child {
                    // A monitor killed mid-way through logging a chunk left it pending.
                    settle(&self.log, &self.wd.log_path(), &stdio);
                }
                self.install_main_stdio(stdio);
            }
        }
        Ok(procs)
    }

    /// Our duplicates of the fds init keeps for a process: `attached` to its spawn answer,
    /// or else taken from init.
    pub(crate) fn stdio_for(
        &self,
        fds: &crate::protocol::init::KeptFds,
        attached: Option<Vec<OwnedFd>>,
    ) -> Result<Stdio, String> {
        let src = match attached {
            Some(v) => link::Source::Attached(v),
            None => link::Source::Init(self.live.as_ref().ok_or("not running")?.pidfd.as_fd()),
        };
        link::stdio_from(src, fds).map_err(|e| format!("take the stdio init keeps: {e}"))
    }

    /// Makes `s` the workload's stdio: clients' stdin goes to it, its output to the log and
    /// the attached clients.
    pub(crate) fn install_main_stdio(&mut self, mut s: Stdio) {
        self.stdin_tx.send_replace(s.stdin.take());
        self.start_pumps(&mut s, Some(self.log.clone()), None);
        if let (Some(t), Some((r, c))) = (&s.tty, self.winsize) {
            let _ = crate::sys::set_winsize(t.borrow(), r, c);
        }
        self.stdio = Some(s);
    }

    /// Starts the output pumps of `s` towards `log` and the workload's watchers, or a
    /// session's client (`client`: its stdout and stderr pipes).
    pub(crate) fn start_pumps(
        &self,
        s: &mut Stdio,
        log: Option<stdio::SharedLog>,
        client: Option<(&stdio::Sinks, &stdio::Sinks)>,
    ) {
        let readers = |stream| match client {
            None => Readers::Watchers(self.watchers.clone()),
            Some((o, e)) => Readers::Client(if stream == Stream::Stderr { e } else { o }.clone()),
        };
        let to = |stream| PumpTo {
            stream,
            log: log.clone(),
            readers: readers(stream),
            gate: self.gate.clone(),
            finish: s.finish.clone(),
            log_dropped: self.log_dropped.clone(),
            events: self.tx.clone(),
        };
        if let Some(out) = s.out.take() {
            let t = to(Stream::Stdout);
            s.pumps
                .push(tokio::task::spawn_local(stdio::pump_output(out, t)));
        }
        if let Some(err) = s.err.take() {
            let t = to(Stream::Stderr);
            s.pumps
                .push(tokio::task::spawn_local(stdio::pump_output(err, t)));
        }
    }

    /// Writes spec.json if the CLI left it to the monitor (see `api::create`).
    pub(crate) fn persist_spec(&mut self) {
        if !self.spec_on_disk {
            match crate::store::atomic::write_json_atomic(&self.wd.spec_path(), &self.spec) {
                Ok(()) => self.spec_on_disk = true,
                Err(e) => diag(&format!("write spec: {e}")),
            }
        }
    }

    /// Writes spec.json (if not on disk yet) and state.json without waiting for the disk:
    /// enough for a new monitor to find the container should this one die. For a job that
    /// keeps its record (not `--rm`), [`Monitor::make_record_durable`] follows.
    fn record_quickly(&mut self) {
        use crate::store::atomic::{to_json, write_atomic_quick};
        // The spec first: a state that names a container is only adoptable with its spec.
        if !self.spec_on_disk {
            let path = self.wd.spec_path();
            match to_json(&path, &self.spec).and_then(|d| write_atomic_quick(&path, &d)) {
                Ok(()) => self.spec_on_disk = true,
                Err(e) => diag(&format!("record the container: {e}")),
            }
        }
        if let Err(e) = self.wd.save_quick(&self.st) {
            diag(&format!("record the container: {e}"));
        }
    }

    /// Makes spec.json and state.json durable in a forked child (see
    /// `Monitor::sync_in_background`): the record of a job that keeps it (not `--rm`) must
    /// outlive a power cut, the start need not wait for it. A restart's state (running) is
    /// transient, like every later save of one.
    fn make_record_durable(&self, first_start: bool) {
        if first_start && !self.spec.rm {
            self.sync_in_background(vec![self.wd.spec_path(), self.wd.state_path()]);
        }
    }

    /// Starts the container and the workload in it. Returns init's host pid.
    pub(crate) async fn launch(&mut self, merge_output: bool) -> Result<i32, (i32, String)> {
        let proc = crate::init::spawn::workload_proc(&self.spec, self.term.as_deref())
            .map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        let init_path =
            crate::store::init_copies::ensure().map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        // The cgroup first: the config lists the cgroup.procs files init joins.
        self.prepare_cgroup()?;
        let cfg = self.container_config(init_path)?;
        let started = container::start(&cfg).map_err(|e| (CODE_STASIS_ERROR, e.to_string()))?;
        let pid = started.pid;
        // Name the container's init at once, in the one state write of the start (cheaply: no
        // fsync): if this monitor dies from here on, the next command finds and adopts the
        // container, which may run the workload as soon as it is asked for it below.
        self.st.status = Status::Running;
        self.st.started_at = Some(now_ms());
        self.st.init = ProcRef::of(pid);
        self.st.exit = None;
        self.st.error = None;
        let first_start = !self.spec_on_disk;
        self.record_quickly();
        // While init starts up, make the record durable (a failed start's exit record
        // follows, durable too).
        self.make_record_durable(first_start);
        self.take_container(pid, started.pidfd, true).await?;
        let stdio = if self.spec.tty {
            StdioSpec::Tty {
                winsize: self.winsize,
            }
        } else {
            StdioSpec::Pipes {
                stdin: self.spec.stdin,
                merge: merge_output,
            }
        };
        let asked = match &self.live {
            Some(l) => l.link.request_spawn(MAIN_ID, &proc, stdio, &[]).await,
            None => Err((CODE_STASIS_ERROR, "the container is gone".into())),
        };
        let spawned = match asked {
            Ok(rx) => link::await_spawn(rx).await,
            Err(e) => Err(e),
        };
        let (fds, attached) = match spawned {
            Ok((_, fds, attached)) => (fds, attached),
            Err(e) => {
                // init exits with the code once it has reported; collect it.
                if let Some(l) = self.live.take() {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(5), l.exit_rx).await;
                }
                return Err(e);
            }
        };
        let stdio = self
            .stdio_for(&fds, Some(attached))
            .map_err(|e| (CODE_STASIS_ERROR, e))?;
        self.install_main_stdio(stdio);
        self.policy_started();
        diag(&format!("started: init pid {pid}"));
        Ok(pid)
    }

    pub(crate) async fn req_start(
        &mut self,
        cid: u64,
        attach: Option<protocol::AttachSpec>,
        fds: Vec<OwnedFd>,
    ) {
        if self.phase != super::lifecycle::Phase::New {
            let r = err_reply(
                CODE_STASIS_ERROR,
                format!("{} was already started", self.wd.name),
            );
            self.reply(cid, r);
            return;
        }
        let mut merge = false;
        if let Some(a) = &attach {
            if let Reply::Error { code, message } = self.attach(cid, a, fds) {
                self.reply(cid, Reply::Error { code, message });
                self.go(Ev::StartFailed);
                return;
            }
            self.winsize = a.winsize;
            merge = a.merge_output && !self.spec.tty;
        }
        match self.launch(merge).await {
            Ok(pid) => {
                self.go(Ev::Started);
                self.event(HistEvent::new("start", ""));
                self.reply(cid, Reply::Started { pid });
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
                self.reply(cid, Reply::Error { code, message });
                self.phase = super::lifecycle::Phase::Ended;
                self.notify_exit();
                self.cleanup_container().await;
            }
        }
    }
}
