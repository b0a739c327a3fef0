//! Migration, the monitor's part: the source's gated dump and the target's gated restore,
//! with the two-phase hand-over between them (see `crate::migrate` for the whole story).
//!
//! Source: CRIU dumps with its pages going to the page channel (stream) or kept to be served
//! lazily over it (post-copy), then waits, frozen, in its post-dump script until the
//! `stasis migrate` command says `Commit` or `Abort`. The commit is written to the state
//! before CRIU is released, so the source never forgets that it gave the job away. After a
//! post-copy commit the source's tree is killed at once: its memory is already in CRIU's
//! page pipes, and a tree that CRIU could resume (it does when serving the pages fails)
//! would be a second copy of a job that runs on the target.
//!
//! Target: the restore waits in its post-restore script (restored, not running) until the
//! source's verdict arrives. A verdict that cannot arrive (the link broke) is awaited on a
//! resume socket for [`GRACE`]; then the restore is abandoned, which kills what it restored.

use super::fd::Fd;
use super::lifecycle::Phase;
use super::{diag, err_reply, Monitor};
use crate::criu::{self, gate, lazy};
use crate::exit::{CODE_MIGRATED, CODE_STASIS_ERROR};
use crate::protocol::migrate::{GateMsg, InOpts, Mode, OutOpts, Step};
use crate::protocol::{Reply, RestoreOpts};
use crate::store::events::Event as HistEvent;
use crate::store::generations::{self, Manifest, MANIFEST_VERSION};
use crate::store::state::{now_ms, Status};
use crate::sys;
use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a target holds a restored job for a verdict after its link to the source broke.
/// `STASIS_MIGRATE_GRACE` (seconds) changes it.
pub(crate) const GRACE: Duration = Duration::from_secs(20);

fn grace() -> Duration {
    std::env::var("STASIS_MIGRATE_GRACE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(GRACE)
}

/// Extra CRIU flags and environment for the next restore (a gated or lazy one).
#[derive(Default)]
pub(crate) struct RestoreExtra {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A lazy-pages daemon's status pipe and log: the restore waits for it to listen right
    /// before CRIU runs (see `lazy`).
    pub ready: Option<(super::fd::Fd, std::path::PathBuf)>,
}

/// How a gate ended.
enum Verdict {
    Commit,
    Abort(String),
    /// No verdict came (the link broke and nobody resumed it in time).
    Unknown(String),
}

/// Accepts the action script's connection and reads that it waits.
async fn hook_waiting(listener: &Fd) -> std::io::Result<Fd> {
    let hook = Fd::new(listener.accept().await?)?;
    match hook.recv_msg::<GateMsg>().await? {
        Some((GateMsg::Waiting { .. }, _)) => Ok(hook),
        _ => Err(std::io::Error::other("the action script said nothing")),
    }
}

/// Reads the next step of a link; `None` when it ended (or failed).
async fn next_step(link: &Fd) -> Option<Step> {
    match link.recv_msg::<Step>().await {
        Ok(Some((s, _))) => Some(s),
        _ => None,
    }
}

fn listen_at(path: &Path) -> Result<Fd, String> {
    crate::protocol::listen(path)
        .and_then(Fd::new)
        .map_err(|e| format!("listen {}: {e}", path.display()))
}

impl Monitor {
    /// `stasis migrate`, on the source: dumps the job gated, and hands it over or resumes it
    /// as the command decides. fds: the page channel, the step link.
    pub(crate) async fn migrate_out(&mut self, opts: OutOpts, fds: Vec<OwnedFd>) -> Reply {
        let mut fds = fds.into_iter();
        let (Some(pages), Some(link)) = (fds.next(), fds.next()) else {
            return err_reply(CODE_STASIS_ERROR, "migrate: the request lacks its channels");
        };
        let link = match Fd::new(link) {
            Ok(l) => l,
            Err(e) => return err_reply(CODE_STASIS_ERROR, format!("migrate: {e}")),
        };
        let r = self.migrate_out_gated(&opts, &pages, &link).await;
        match r {
            Ok(bytes) => Reply::Migrated { lazy_bytes: bytes },
            Err(why) => {
                let _ = link
                    .send_msg(
                        &Step::Failed {
                            reason: why.clone(),
                        },
                        &[],
                    )
                    .await;
                err_reply(
                    CODE_STASIS_ERROR,
                    format!(
                        "migration of {} to {} failed: {why}",
                        self.wd.name, opts.dest
                    ),
                )
            }
        }
    }

    async fn migrate_out_gated(
        &mut self,
        opts: &OutOpts,
        pages: &OwnedFd,
        link: &Fd,
    ) -> Result<u64, String> {
        if self.lazy.busy() {
            return Err("its memory is still arriving from a lazy restore".into());
        }
        if let Some(why) = self.spawn_unanswered() {
            return Err(why);
        }
        let criu = self.criu(opts.criu.as_ref()).await.map_err(reply_text)?;
        let init = self
            .live
            .as_ref()
            .map(|l| l.init)
            .ok_or_else(|| format!("{} is not running", self.wd.name))?;
        let gen = generations::next_number(
            &self.wd,
            self.st
                .generation
                .unwrap_or(0)
                .max(self.policy.last_generation),
        );
        let tmp = generations::temp_dir(&self.wd, gen).map_err(|e| e.to_string())?;
        let gate_path = self
            .root
            .runtime
            .join(format!("{}.gate.sock", self.wd.name));
        let listener = listen_at(&gate_path)?;
        let (dump, manifest) = match self.dump_plan(&criu, init.pid, gen, &tmp, opts) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let log = dump.log.clone();
        let env = vec![(gate::ENV_GATE.to_string(), gate_path.display().to_string())];
        let criu_fds = [(pages.as_raw_fd(), lazy::PS_SOCKET_FD)];
        self.gate.close();
        let frozen_at = now_ms();
        let argv = dump.argv();
        let committed_state = {
            let mut st = self.st.clone();
            st.status = Status::Migrated;
            st.init = None;
            st.note = Some(format!("migrated to {}", opts.dest));
            st
        };
        let lazy_bytes = Cell::new(0u64);
        let mut v = None;
        let ran = {
            // Through the command line and its action script, not RPC (see `criu_rpc`): the
            // RPC gate hung a post-copy move in 2 of 12 runs of tests/migrate.rs, cause not
            // found yet.
            let run = self.run_criu(&criu, &argv, &criu_fds, Some(&env), true);
            let gated = async {
                let hook = match hook_waiting(&listener).await {
                    Ok(h) => h,
                    Err(e) => return Verdict::Abort(format!("gate: {e}")),
                };
                if opts.mode == Mode::PostCopy {
                    lazy_bytes.set(lazy::lazy_bytes_in_log(&log));
                }
                let dumped = Step::Dumped {
                    dir: tmp.clone(),
                    manifest: Box::new(manifest.clone()),
                    frozen_at,
                };
                let post_copy = opts.mode == Mode::PostCopy;
                let sent = link.send_msg(&dumped, &[]).await;
                if post_copy && sent.is_ok() {
                    // Post-copy: CRIU serves the pages only after this script, and the
                    // target's restore faults on some of them before it can say it is ready.
                    // The tree stays frozen while CRIU serves; an abort breaks the page
                    // channel, which fails CRIU's lazy transfer and so resumes the tree.
                    let _ = hook.send_msg(&GateMsg::Go, &[]).await;
                }
                let v = match sent {
                    Err(e) => Verdict::Abort(format!("the migrating command went away ({e})")),
                    Ok(()) => match next_step(link).await {
                        Some(Step::Commit) => Verdict::Commit,
                        Some(Step::Abort { reason }) => Verdict::Abort(reason),
                        Some(other) => Verdict::Abort(format!("unexpected {other:?}")),
                        None => Verdict::Abort("the migrating command went away".into()),
                    },
                };
                let v = match v {
                    // Post-copy: a page channel that already closed means the target's
                    // restore failed (it ends its lazy-pages daemon then), and CRIU is
                    // resuming the tree here: no commit can hold.
                    Verdict::Commit if post_copy && sys::peer_closed(pages.as_fd()) => {
                        Verdict::Abort(
                            "the page channel closed before the commit: the target's restore failed"
                                .into(),
                        )
                    }
                    // Recorded before CRIU is released: from here the job is the target's.
                    Verdict::Commit => match self.wd.save(&committed_state) {
                        Ok(()) => Verdict::Commit,
                        Err(e) => Verdict::Abort(format!("record the hand-over: {e}")),
                    },
                    other => other,
                };
                if matches!(v, Verdict::Commit) {
                    if post_copy {
                        // Never two copies: the pages CRIU still serves are in its page
                        // pipes, so the tree can go now, and a transfer that breaks later
                        // cannot make CRIU resume it.
                        if let Some(l) = &self.live {
                            let _ = sys::pidfd_send_signal(l.pidfd.as_fd(), libc::SIGKILL);
                        }
                    } else {
                        let _ = hook.send_msg(&GateMsg::Go, &[]).await;
                    }
                    let _ = link.send_msg(&Step::Committed, &[]).await;
                } else {
                    if !post_copy {
                        let _ = hook.send_msg(&GateMsg::Stop, &[]).await;
                    }
                    // A lazy dump serves its pages after the script: breaking the channel
                    // fails it, and CRIU resumes the tree.
                    let _ = nix::sys::socket::shutdown(
                        pages.as_raw_fd(),
                        nix::sys::socket::Shutdown::Both,
                    );
                }
                v
            };
            tokio::pin!(run);
            tokio::pin!(gated);
            // Stream: CRIU cannot end while its script waits. Post-copy: nor while it serves
            // the pages, unless the target broke the channel. CRIU ending first means the job
            // was never handed over.
            loop {
                tokio::select! {
                    biased;
                    x = &mut gated, if v.is_none() => { v = Some(x); }
                    r = &mut run => break r,
                }
            }
        };
        let _ = std::fs::remove_file(&gate_path);
        match v {
            Some(Verdict::Commit) => {
                let _ = std::fs::remove_dir_all(&tmp);
                if let Err(e) = &ran {
                    diag(&format!(
                        "criu after the hand-over: {e} (the job is the target's)"
                    ));
                }
                self.migrated(&opts.dest, opts.mode).await;
                Ok(lazy_bytes.get())
            }
            other => {
                let why = match other {
                    Some(Verdict::Abort(r)) | Some(Verdict::Unknown(r)) => r,
                    _ => match &ran {
                        Err(status) => format!(
                            "criu dump {status}: {}",
                            criu::failure_reasons(&log).join("; ")
                        ),
                        Ok(()) if opts.mode == Mode::PostCopy => {
                            "the page channel closed before the target was ready".into()
                        }
                        Ok(()) => "criu ended without reaching its gate".into(),
                    },
                };
                let _ = std::fs::remove_dir_all(&tmp);
                let alive = self.job_survived().await;
                self.gate.open();
                self.event(HistEvent::new("migrate-failed", why.clone()));
                diag(&format!("migration to {} failed: {why}", opts.dest));
                if !alive {
                    self.policy.dump_killed = Some(why.clone());
                    return Err(format!("{why}; the failed dump took the job with it and it is being brought back from its newest generation"));
                }
                Err(format!("{why}; {} keeps running here", self.wd.name))
            }
        }
    }

    /// The dump of a migration and its manifest (as `checkpoint` makes them, gated).
    fn dump_plan(
        &mut self,
        criu: &criu::Criu,
        pid: i32,
        gen: u32,
        tmp: &Path,
        opts: &OutOpts,
    ) -> Result<(criu::DumpOpts, Manifest), String> {
        let sessions = self.dump_sessions()?;
        let (_, ext) = self.external_mounts(pid)?;
        // The cuda plugin's lock, checkpoint and restore around a move are not wired yet: a GPU
        // job is refused before anything is dumped.
        if super::gpu::before_dump(pid)?.is_some() {
            return Err("a GPU job cannot be migrated yet; checkpoint --export it and restore --import it on the target".into());
        }
        let held = crate::container::tree::held_files(&crate::container::tree::pids(pid));
        let flags = self
            .spec
            .criu
            .overlay(&opts.options)
            .resolve(crate::container::tree::largest_ghost(&held));
        let init_path = crate::store::init_copies::ensure().map_err(|e| e.to_string())?;
        let hook = crate::store::init_copies::hook().map_err(|e| e.to_string())?;
        let dump = criu::DumpOpts {
            pid,
            images: tmp.to_path_buf(),
            log: self.criu_log("migrate", gen),
            ext_mounts: ext
                .iter()
                .map(|m| (m.inside.display().to_string(), m.key.clone()))
                .collect(),
            // Post-copy: CRIU must never kill the tree itself. It would once its lazy page
            // server's session ends, and a page channel that merely closes (ssh killed, an
            // abort) reads to it as a session that ended well. Left running, the tree
            // resumes whenever the transfer ends without a commit; at the commit the
            // monitor kills it (see `migrate_out_gated`).
            leave_running: opts.mode == Mode::PostCopy,
            flags: flags.clone(),
            action_script: Some(hook.display().to_string()),
            extra: lazy::dump_extra(opts.mode == Mode::PostCopy),
        };
        let log_offset = self.log.borrow().as_ref().map(|l| l.offset()).unwrap_or(0);
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            generation: gen,
            name: self.wd.name.to_string(),
            created_at: now_ms(),
            criu_version: criu.version.clone(),
            spec: self.spec.clone(),
            root: self.spec.rootfs.clone().unwrap_or_else(|| "/".into()),
            mounts: ext,
            log_offset,
            init_path,
            leave_running: false,
            criu: flags,
            sessions,
            winsize: self.winsize,
            files: vec![],
            stats: Default::default(),
            gpu: None,
            // A move stops the job on the source: nothing there writes on after the dump.
            snapshot: vec![],
            shm: None,
        };
        Ok((dump, manifest))
    }

    /// The job now runs on `dest`: the record says so, attached clients are told where it
    /// went, and this monitor leaves.
    async fn migrated(&mut self, dest: &str, mode: Mode) {
        self.stopped_by_dump().await;
        if let Some(l) = self.log.borrow_mut().as_mut() {
            let _ = l.marker(&format!(
                "moved to {dest} (stasis migrate, {})",
                mode.as_str()
            ));
        }
        self.st.status = Status::Migrated;
        self.st.init = None;
        self.st.finished_at = Some(now_ms());
        self.st.note = Some(format!("migrated to {dest}"));
        self.save();
        self.event(HistEvent::new(
            "migrated",
            format!("to {dest} ({})", mode.as_str()),
        ));
        let msg = format!(
            "{} moved to {dest}: `stasis attach {}` there",
            self.wd.name, self.wd.name
        );
        self.notice(&msg);
        for w in self.watchers.borrow_mut().drain(..) {
            w.finish();
        }
        let exit = Reply::Exit {
            code: CODE_MIGRATED,
            status: None,
            oom_killed: false,
            reason: Some(format!("migrated to {dest}")),
        };
        let targets: Vec<u64> = self.attached.drain().chain(self.waiters.drain()).collect();
        for cid in targets {
            self.reply(cid, exit.clone());
        }
        self.policy.cancel();
        self.phase = Phase::Ended;
    }

    /// A new monitor on the target: restores the migrated job held in CRIU's post-restore
    /// script until the source's verdict. fds: the step link, then (post-copy) the page
    /// channel.
    pub(crate) async fn migrate_in(&mut self, opts: InOpts, fds: Vec<OwnedFd>) -> Reply {
        self.phase = Phase::Checkpointed;
        // The claim's placeholder record ("did not complete") is replaced by the restore's.
        self.st.error = None;
        self.st.note = None;
        let mut fds = fds.into_iter();
        let Some(link) = fds.next().and_then(|f| Fd::new(f).ok()) else {
            return err_reply(CODE_STASIS_ERROR, "migrate: no step link");
        };
        let pages = fds.next();
        match self.migrate_in_gated(&opts, &link, pages).await {
            Ok(pid) => {
                // The job is this host's now: no abort may ever remove it.
                if let Err(e) = std::fs::remove_file(crate::migrate::target::token_path(&self.wd)) {
                    diag(&format!("remove the migration's token: {e}"));
                }
                Reply::Restored {
                    generation: opts.manifest.generation,
                    pid,
                    diverged: vec![],
                }
            }
            Err(why) => {
                let _ = link
                    .send_msg(
                        &Step::Failed {
                            reason: why.clone(),
                        },
                        &[],
                    )
                    .await;
                self.phase = Phase::Ended;
                err_reply(CODE_STASIS_ERROR, why)
            }
        }
    }

    async fn migrate_in_gated(
        &mut self,
        opts: &InOpts,
        link: &Fd,
        pages: Option<OwnedFd>,
    ) -> Result<i32, String> {
        let criu = self.criu(opts.criu.as_ref()).await.map_err(reply_text)?;
        let name = self.wd.name.clone();
        let gate_path = self.root.runtime.join(format!("{name}.gate.sock"));
        let resume_path = self.root.runtime.join(format!("{name}.resume.sock"));
        let listener = listen_at(&gate_path)?;
        let resume = listen_at(&resume_path)?;
        let hook = crate::store::init_copies::hook().map_err(|e| e.to_string())?;
        let mut argv = vec!["--action-script".to_string(), hook.display().to_string()];
        let mut daemon = None;
        if opts.mode == Mode::PostCopy {
            let pages = pages.ok_or("post-copy without a page channel")?;
            daemon = Some(
                self.start_lazy_daemon(&criu, &opts.stage, Some(&pages))
                    .await?,
            );
            argv.push("--lazy-pages".into());
        }
        if let Some(l) = self.log.borrow_mut().as_mut() {
            let _ = l.marker(&format!(
                "moved here from {} (stasis migrate, {})",
                opts.from,
                opts.mode.as_str()
            ));
        }
        self.restore_extra = Some(RestoreExtra {
            argv,
            env: vec![(gate::ENV_GATE.to_string(), gate_path.display().to_string())],
            ready: None,
        });
        let mut daemon = daemon;
        let daemon_pid = daemon.as_ref().map(|d| d.pid);
        // How the lazy-pages daemon ended, should it end before the job runs.
        let mut lazy_end: Option<Result<crate::exit::ExitStatus, String>> = None;
        let uffds: std::cell::RefCell<Vec<OwnedFd>> = Default::default();
        let mut verdict = None;
        // Set once the source may have heard `Ready`, and so may commit.
        let ready = Cell::new(false);
        let restore_opts = RestoreOpts {
            generation: None,
            criu: Some(criu.clone()),
            reason: format!("migrated from {}", opts.from),
            lazy: false,
        };
        let t0 = Instant::now();
        let wd = self.wd.clone();
        let restored = {
            let gated = async {
                let hook = match hook_waiting(&listener).await {
                    Ok(h) => h,
                    Err(e) => return Verdict::Abort(format!("gate: {e}")),
                };
                let sent = link.send_msg(&Step::Ready, &[]).await;
                ready.set(true);
                diag("restored and held for the source's verdict");
                let v = if sent.is_err() {
                    wait_resumed(&resume).await
                } else {
                    match next_step(link).await {
                        Some(Step::Commit) => Verdict::Commit,
                        Some(Step::Abort { reason }) => Verdict::Abort(reason),
                        Some(other) => Verdict::Abort(format!("unexpected {other:?}")),
                        None => wait_resumed(&resume).await,
                    }
                };
                if matches!(v, Verdict::Commit) {
                    if let Some(pid) = daemon_pid {
                        // Hold the job's userfaultfds: should the daemon die, its faults stay
                        // pending (until the job is killed) instead of reading zeroes.
                        *uffds.borrow_mut() = super::lazy::take_fds(pid, &lazy::userfaultfds(pid));
                    }
                    let _ = hook.send_msg(&GateMsg::Go, &[]).await;
                } else {
                    let _ = hook.send_msg(&GateMsg::Stop, &[]).await;
                }
                v
            };
            let stage = opts.stage.clone();
            let manifest = opts.manifest.clone();
            let gen = manifest.generation;
            let restore = self.restore_images(stage, manifest, restore_opts, gen, false);
            tokio::pin!(restore);
            tokio::pin!(gated);
            loop {
                tokio::select! {
                    biased;
                    x = &mut gated, if verdict.is_none() => { verdict = Some(x); }
                    // The daemon died with the job not yet running (its page channel broke):
                    // the memory it was to bring cannot come, so the restored tree goes now,
                    // rather than its first fault hanging the restore's last steps.
                    st = lazy_exit(&mut daemon), if daemon.is_some() && lazy_end.is_none() => {
                        let st = st.map_err(|_| "vanished".to_string());
                        if !st.as_ref().is_ok_and(|s| s.success()) {
                            kill_restored_inits();
                        }
                        lazy_end = Some(st);
                    }
                    r = &mut restore => {
                        // The restore ended (its CRIU died, say) after the source heard
                        // `Ready`: the source may have committed already, so what happens
                        // to the images here is its verdict's to decide, never this
                        // failure's. Without the wait they were dropped while the source
                        // gave the job away, and it ran nowhere.
                        // Post-copy: the daemon goes at once, which breaks the page channel:
                        // a source that has not committed yet then sees its transfer fail
                        // and resumes the job, rather than give away one that cannot run.
                        if verdict.is_none() && ready.get() && r.is_err() {
                            diag("the restore ended before the source's verdict: waiting for it");
                            kill_restored_inits();
                            end_daemon(&mut daemon, &mut lazy_end);
                            // What `ps` says meanwhile (the record on disk: `self` is the
                            // finished restore's until this block ends).
                            if let Ok(mut st) = wd.load() {
                                st.note = Some(format!(
                                    "its restore failed after it was ready: waiting for {}'s verdict",
                                    opts.from
                                ));
                                if let Err(e) = wd.save(&st) {
                                    diag(&format!("record the wait: {e}"));
                                }
                            }
                            // Bounded like a broken link's wait: a stream's images are then
                            // kept "unconfirmed", which a late commit still restores.
                            let grace = grace();
                            verdict = Some(
                                tokio::time::timeout(grace, &mut gated)
                                    .await
                                    .unwrap_or_else(|_| {
                                        Verdict::Unknown(format!(
                                            "its restore failed after it was ready and no verdict came within {}s",
                                            grace.as_secs()
                                        ))
                                    }),
                            );
                        }
                        break r;
                    }
                }
            }
        };
        // What the daemon said, should it have ended unsuccessfully before the job ran.
        let lazy_lost = match (&lazy_end, &daemon) {
            (Some(Ok(st)), _) if st.success() => None,
            (Some(st), Some(d)) => Some(format!(
                "criu lazy-pages {}: {} (log: {})",
                st.as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.clone()),
                criu::failure_reasons(&d.log).join("; "),
                d.log.display()
            )),
            _ => None,
        };
        self.restore_extra = None;
        let _ = std::fs::remove_file(&gate_path);
        let _ = std::fs::remove_file(&resume_path);
        let restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let v = verdict;
        match (restored, v) {
            (Ok(Reply::Restored { pid, .. }), Some(Verdict::Commit)) => {
                let page_bytes = match opts.mode {
                    Mode::PostCopy => 0,
                    _ => pages_size(&opts.stage),
                };
                let resumed_ms_ago = resumed_ago(&listener).await;
                let _ = link
                    .send_msg(
                        &Step::Running {
                            pid,
                            restore_ms,
                            page_bytes,
                            resumed_ms_ago,
                        },
                        &[],
                    )
                    .await;
                self.event(HistEvent::new(
                    "migrated-in",
                    format!("from {} ({})", opts.from, opts.mode.as_str()),
                ));
                match daemon {
                    Some(mut d) => {
                        if let Some(end) = lazy_end {
                            // It already ended (every page in before the job's last restore
                            // steps were done, or it died just as they were): its watcher
                            // gets what was consumed here, or "vanished".
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            if let Ok(st) = end {
                                let _ = tx.send(st);
                            }
                            d.exit = rx;
                        }
                        let l = link
                            .borrow()
                            .try_clone_to_owned()
                            .ok()
                            .and_then(|f| Fd::new(f).ok());
                        self.watch_lazy_daemon(d, uffds.take(), l)
                    }
                    None => self.keep_stage_as_generation(opts),
                }
                Ok(pid)
            }
            (restored, v) => {
                kill_restored_inits();
                end_daemon(&mut daemon, &mut lazy_end);
                let why = match (&v, restored, lazy_lost) {
                    (Some(Verdict::Abort(r)), _, _) | (Some(Verdict::Unknown(r)), _, _) => {
                        r.clone()
                    }
                    // The restore failed because the daemon died: that is why.
                    (_, _, Some(lost)) => lost,
                    (_, Err(e), None) => reply_text(e),
                    (_, Ok(r), None) => format!("unexpected {r:?}"),
                };
                if matches!(v, Some(Verdict::Commit)) && opts.mode == Mode::Stream {
                    // The source gave the job away and the images are all here: the job
                    // must run here, so the restore is tried again, ungated.
                    return self.restore_committed(opts, link, &why).await;
                }
                if matches!(v, Some(Verdict::Commit)) {
                    // Post-copy after the hand-over: the source no longer has the job and
                    // part of its memory never arrived. Lost, and the record says so.
                    self.st.status = Status::Failed;
                    self.st.init = None;
                    self.st.restoring_since = None;
                    self.st.error = Some(format!(
                        "lost after its migration from {}: {why}",
                        opts.from
                    ));
                    self.save();
                    self.event(HistEvent::new("migrate-lost", why.clone()));
                    return Err(why);
                }
                self.migrate_in_undo(opts, &why, matches!(v, Some(Verdict::Unknown(_))))
                    .await;
                Err(why)
            }
        }
    }

    /// A stream migration committed but its gated restore failed (its CRIU died, say): the
    /// images become a generation and a plain restore brings the job up from them. Should
    /// that fail too, the generation stays, checkpointed, and says so.
    async fn restore_committed(
        &mut self,
        opts: &InOpts,
        link: &Fd,
        first: &str,
    ) -> Result<i32, String> {
        diag(&format!(
            "restore after the hand-over failed ({first}): again, ungated"
        ));
        self.keep_stage_as_generation(opts);
        let t0 = Instant::now();
        let r = self
            .restore(
                RestoreOpts {
                    generation: self.st.generation,
                    criu: opts.criu.clone(),
                    reason: format!("migrated from {} (second try)", opts.from),
                    lazy: false,
                },
                false,
            )
            .await;
        match r {
            Ok(Reply::Restored { pid, .. }) => {
                let restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
                let _ = link
                    .send_msg(
                        &Step::Running {
                            pid,
                            restore_ms,
                            page_bytes: 0,
                            resumed_ms_ago: 0.0,
                        },
                        &[],
                    )
                    .await;
                self.event(HistEvent::new(
                    "migrated-in",
                    format!("from {} (stream, second restore)", opts.from),
                ));
                Ok(pid)
            }
            other => {
                let why = match other {
                    Err(e) | Ok(e) => reply_text(e),
                };
                self.st.status = Status::Checkpointed;
                self.st.note = Some(format!(
                    "migrated from {} but its restore failed ({why}): `stasis restore` it here",
                    opts.from
                ));
                self.save();
                Err(why)
            }
        }
    }

    /// After a target's restore that did not go through: the job stays on (or went back to)
    /// the source, so this record goes; unless no verdict came and the images are complete
    /// here (stream): then they are kept, checkpointed, with the truth in the note.
    async fn migrate_in_undo(&mut self, opts: &InOpts, why: &str, unknown: bool) {
        diag(&format!("migration from {} undone: {why}", opts.from));
        // The restore's cgroup, whose inits were killed: nothing runs here any more.
        self.cleanup_container().await;
        if unknown && opts.mode == Mode::Stream {
            self.keep_stage_as_generation(opts);
            self.st.status = Status::Checkpointed;
            self.st.init = None;
            self.st.note = Some(format!(
                "migration from {} unconfirmed ({why}): restore it here only if {} does not run it",
                opts.from, opts.from
            ));
            self.save();
            self.event(HistEvent::new("migrate-unconfirmed", why.to_string()));
            return;
        }
        if let Err(e) = self.wd.remove_all() {
            diag(&format!("remove the undone migration's record: {e}"));
        }
    }

    /// A stream migration's images are complete here: they become a generation.
    fn keep_stage_as_generation(&mut self, opts: &InOpts) {
        let mut m = opts.manifest.clone();
        match generations::file_entries(&opts.stage) {
            Ok(files) => {
                m.stats.size = files.iter().map(|f| f.size).sum();
                m.files = files;
                match generations::commit(&self.wd, &opts.stage, &m) {
                    Ok(g) => {
                        self.st.generation = Some(g.number);
                        self.policy.last_generation = g.number;
                        self.save();
                    }
                    Err(e) => diag(&format!("keep the migrated images: {e}")),
                }
            }
            Err(e) => diag(&format!("list the migrated images: {e}")),
        }
    }
}

/// The exit of the lazy-pages daemon, if there is one (else never).
async fn lazy_exit(
    d: &mut Option<super::lazy::LazyDaemon>,
) -> Result<crate::exit::ExitStatus, tokio::sync::oneshot::error::RecvError> {
    match d {
        Some(d) => (&mut d.exit).await,
        None => std::future::pending().await,
    }
}

/// Kills the lazy-pages daemon of a restore that failed, unless it has ended already (its
/// end then goes to `end`). Only while the reaper has not reported it is its pid still its
/// own, and nothing awaits between this check and the kill.
fn end_daemon(
    daemon: &mut Option<super::lazy::LazyDaemon>,
    end: &mut Option<Result<crate::exit::ExitStatus, String>>,
) {
    use tokio::sync::oneshot::error::TryRecvError;
    let Some(d) = daemon else { return };
    if end.is_some() {
        return;
    }
    match d.exit.try_recv() {
        Err(TryRecvError::Empty) => {
            if let Err(e) = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.pid),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                diag(&format!("kill criu lazy-pages (pid {}): {e}", d.pid));
            }
        }
        Ok(st) => *end = Some(Ok(st)),
        Err(TryRecvError::Closed) => *end = Some(Err("vanished".into())),
    }
}

/// How long ago the restored job resumed, from what the action script said at post-resume
/// (0 when it said nothing). CRIU ends only after that script, so by the time its restore
/// returned the word is waiting on the gate's socket: nothing here waits for it.
async fn resumed_ago(listener: &Fd) -> f64 {
    let word = async {
        let c = Fd::new(listener.accept().await.ok()?).ok()?;
        match c.recv_msg::<GateMsg>().await {
            Ok(Some((GateMsg::Resumed { mono_ns }, _))) => Some(mono_ns),
            _ => None,
        }
    };
    match tokio::time::timeout(Duration::from_millis(1), word).await {
        Ok(Some(at)) => sys::monotonic_ns().saturating_sub(at) as f64 / 1e6,
        _ => 0.0,
    }
}

/// Waits on the resume socket for a source that reconnects with its verdict.
async fn wait_resumed(resume: &Fd) -> Verdict {
    let wait = async {
        loop {
            let Ok(c) = resume.accept().await else {
                continue;
            };
            let Ok(c) = Fd::new(c) else { continue };
            match next_step(&c).await {
                Some(Step::Commit) => return (Verdict::Commit, c),
                Some(Step::Abort { reason }) => return (Verdict::Abort(reason), c),
                _ => continue,
            }
        }
    };
    let grace = grace();
    match tokio::time::timeout(grace, wait).await {
        Ok((v, c)) => {
            // Kept open: the resumer learns the outcome when it closes.
            std::mem::forget(c);
            v
        }
        Err(_) => Verdict::Unknown(format!(
            "the link to the source broke and no verdict came within {}s",
            grace.as_secs()
        )),
    }
}

/// The size of the pages images in `dir`.
fn pages_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Kills what a failed restore may have left among our descendants: a restored init whose
/// restore was abandoned after it forked, and the tasks of a restore whose CRIU was killed
/// mid-way (they have not become init copies yet, but live in the container's new pid
/// namespace; nothing else of ours does).
fn kill_restored_inits() {
    let me = std::process::id() as i32;
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let ours = ns("self");
    for p in crate::container::tree::pids(me).into_iter().skip(1) {
        let elsewhere = ours.is_some() && ns(&p.to_string()).is_some_and(|n| Some(n) != ours);
        if elsewhere || crate::store::init_copies::runs_init(p) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn reply_text(r: Reply) -> String {
    match r {
        Reply::Error { message, .. } => message,
        other => format!("{other:?}"),
    }
}
