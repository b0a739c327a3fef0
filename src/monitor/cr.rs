//! Checkpoint and restore, driven by the monitor.
//!
//! Dump: every fd crossing the container's edge (stdio pipes or pty, init's control socket,
//! exec sessions' stdio) is declared external; CRIU dumps into a temp generation that is
//! renamed into place only after it succeeded. A failed dump leaves the workload running (CRIU
//! resumes it) and no new generation.
//!
//! Restore: fresh pipes, pty and socket, each handed to CRIU as `--inherit-fd` for the old
//! inode it replaces, with `--restore-detached --restore-sibling` so the restored init is the
//! monitor's child again; then the new inodes are recorded, so the next checkpoint works like
//! the first. Attached clients keep their pipes: their output simply continues.

use super::sessions::Session;
use super::start::{make_stdio, role_stream, start_pumps};
use super::{diag, err_reply, Monitor, Stdio};
use crate::container::INIT_MOUNT;
use crate::criu::{self, Criu, ExtId};
use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::{CheckpointOpts, DumpStats, Reply, RestoreOpts};
use crate::spec::Volume;
use crate::store::atomic;
use crate::store::events::Event as HistEvent;
use crate::store::generations::{self, External, Manifest, Role, SessionEntry, MANIFEST_VERSION};
use crate::store::sessions::SessionId;
use crate::store::sessions::SessionStatus;
use crate::store::state::{now_ms, Status};
use crate::sys;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// First fd number handed to a restoring CRIU (above anything CRIU opens at start-up).
const INHERIT_BASE: i32 = 100;

/// A generation's worth of fresh fds for a restore.
struct Fresh {
    /// (fd in criu, old id, container-side end).
    inherit: Vec<(i32, ExtId, OwnedFd)>,
    ctl: Option<(OwnedFd, u64)>,
    stdio: Option<Stdio>,
    sessions: HashMap<SessionId, Stdio>,
}

impl Monitor {
    /// Finds and checks CRIU once per monitor.
    pub(crate) fn criu(&mut self, given: Option<&Criu>) -> Result<Criu, Reply> {
        if let Some(c) = given {
            // The CLI located it and `criu check` passed there.
            return Ok(c.clone());
        }
        if let Some(c) = &self.criu {
            return Ok(c.clone());
        }
        let c = criu::locate().map_err(|e| err_reply(CODE_STASIS_ERROR, e.to_string()))?;
        c.check_cached(&criu::cache_dir(&self.root))
            .map_err(|e| err_reply(CODE_STASIS_ERROR, e.to_string()))?;
        self.criu = Some(c.clone());
        Ok(c)
    }

    fn criu_log(&self, what: &str, gen: u32) -> PathBuf {
        let d = self.wd.criu_logs();
        let _ = atomic::mkdir_p(&d, 0o700);
        d.join(format!("{what}-{gen}.log"))
    }

    /// Bind mounts CRIU must be told about, as (mount point inside, key).
    fn ext_mount_keys(&self) -> Vec<(String, String, PathBuf)> {
        let mut v = Vec::new();
        if self.spec.rootfs.is_some() {
            v.push((
                INIT_MOUNT.to_string(),
                "stasis-init".to_string(),
                crate::store::init_copies::dir(),
            ));
            for (i, vol) in self
                .spec
                .volumes
                .iter()
                .filter_map(|v| Volume::parse(v).ok())
                .enumerate()
            {
                v.push((vol.dst.display().to_string(), format!("vol{i}"), vol.src));
            }
        }
        v
    }

    /// Runs CRIU and waits for it through the reaper.
    async fn run_criu(
        &self,
        criu: &Criu,
        argv: &[String],
        fds: &[(i32, i32)],
    ) -> Result<(), String> {
        let mut cmd = std::process::Command::new(&criu.path);
        cmd.args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = sys::spawn_with_fds(&mut cmd, fds)
            .map_err(|e| format!("run {}: {e}", criu.path.display()))?;
        let rx = self.reaper.watch(child.id() as i32);
        drop(child);
        match rx.await {
            Ok(st) if st.success() => Ok(()),
            Ok(st) => Err(format!("{st}")),
            Err(_) => Err("criu vanished".into()),
        }
    }

    /// `stasis checkpoint`: dumps the running container into a new generation.
    pub(crate) async fn checkpoint(&mut self, opts: CheckpointOpts) -> Reply {
        if self.live.is_none() || self.pending_exit.is_some() {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} is not running", self.wd.name),
            );
        }
        let criu = match self.criu(opts.criu.as_ref()) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let gen = generations::next_number(
            &self.wd,
            self.st
                .generation
                .unwrap_or(0)
                .max(self.policy.last_generation),
        );
        let tmp = match generations::temp_dir(&self.wd, gen) {
            Ok(t) => t,
            Err(e) => return self.checkpoint_failed(gen, None, e.to_string(), e.is_no_space()),
        };
        let Some(live) = self.live.as_ref() else {
            return err_reply(CODE_STASIS_ERROR, "not running");
        };
        let mut externals = vec![External {
            role: Role::Control,
            id: ExtId::Unix { ino: live.ctl_ino },
        }];
        if let Some(s) = &self.stdio {
            externals.extend(s.exts.iter().cloned());
        }
        // A restore by a new monitor finds sessions through their records.
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.session_persist(&id);
        }
        let Some(live) = self.live.as_ref() else {
            return err_reply(CODE_STASIS_ERROR, "not running");
        };
        let mut sessions = Vec::new();
        for (id, s) in &self.sessions {
            if let Some(stdio) = &s.stdio {
                externals.extend(stdio.exts.iter().cloned());
                sessions.push(SessionEntry {
                    id: id.clone(),
                    tty: s.rec.tty,
                    stdin: s.stdin_open(),
                });
            }
        }
        let log = self.criu_log("dump", gen);
        let dump = criu::DumpOpts {
            pid: live.init.pid,
            images: tmp.clone(),
            log: log.clone(),
            externals: externals.iter().map(|e| e.id.clone()).collect(),
            ext_mounts: self
                .ext_mount_keys()
                .into_iter()
                .map(|(m, k, _)| (m, k))
                .collect(),
            // Not the cgroup freezer: CRIU polls a v1 freezer in 100 ms steps, which made every
            // dump ~100 ms slower. Seizing with ptrace is consistent for a tree that lives
            // wholly in its own PID namespace (CRIU re-scans children until none appear).
            freeze_cgroup: None,
            leave_running: opts.leave_running,
            tcp_established: opts.tcp_established,
            file_locks: opts.file_locks,
        };
        let stdin_open = self.stdin_tx.borrow().is_some() && !self.spec.tty;
        let init_path = match crate::store::init_copies::ensure() {
            Ok(p) => p,
            Err(e) => {
                return self.checkpoint_failed(gen, Some(&tmp), e.to_string(), e.is_no_space())
            }
        };
        let t0 = Instant::now();
        if let Err(status) = self.run_criu(&criu, &dump.argv(), &[]).await {
            let reasons = criu::failure_reasons(&log);
            let no_space = criu::log_says_no_space(&log);
            let why = format!(
                "criu dump {status}: {} (log: {})",
                reasons.join("; "),
                log.display()
            );
            return self.checkpoint_failed(gen, Some(&tmp), why, no_space);
        }
        let dump_ms = t0.elapsed().as_secs_f64() * 1000.0;
        // Where the log stood at the dump: once the stopped job's pipes are drained, exactly;
        // for a job left running, right after CRIU (the pumps kept reading while it was frozen,
        // so everything written before the freeze is in, and little after the thaw).
        if !opts.leave_running {
            self.stopped_by_dump().await;
        }
        let stop_ms = t0.elapsed().as_secs_f64() * 1000.0 - dump_ms;
        let log_offset = self.log.borrow().as_ref().map(|l| l.offset()).unwrap_or(0);
        let times = criu::read_dump_times(&tmp.join("stats-dump"));
        let files = match generations::file_entries(&tmp) {
            Ok(f) => f,
            Err(e) => {
                return self.checkpoint_failed(gen, Some(&tmp), format!("list images: {e}"), false)
            }
        };
        let size = files.iter().map(|f| f.size).sum();
        let stats = DumpStats {
            dump_ms,
            frozen_ms: times.map(|t| t.frozen_us as f64 / 1000.0),
            size,
        };
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            generation: gen,
            name: self.wd.name.to_string(),
            created_at: now_ms(),
            criu_version: criu.version.clone(),
            spec: self.spec.clone(),
            externals,
            log_offset,
            init_path,
            init_cwd: self
                .spec
                .rootfs
                .is_none()
                .then(|| crate::container::init_cwd(&self.root.key(), self.wd.name.as_str())),
            leave_running: opts.leave_running,
            tcp_established: opts.tcp_established,
            file_locks: opts.file_locks,
            sessions,
            stdin_open,
            winsize: self.winsize,
            files,
            stats: stats.clone(),
        };
        if let Err(e) = generations::commit(&self.wd, &tmp, &manifest) {
            return self
                .after_dump_failure(gen, &tmp, manifest, e.to_string())
                .await;
        }
        self.policy.last_generation = gen;
        self.st.checkpoints += 1;
        self.st.generation = Some(gen);
        let keep = opts.keep.or(self.spec.checkpoint.keep);
        if let Some(k) = keep {
            let trash = generations::prune(&self.wd, k);
            self.delete_in_background(trash);
        }
        self.event(HistEvent::new("checkpoint", opts.reason.clone()).generation(gen));
        diag(&format!(
            "checkpoint {gen}: criu {dump_ms:.1} ms (frozen {:?} ms), stop {stop_ms:.1} ms, total {:.1} ms, {size} bytes",
            stats.frozen_ms,
            t0.elapsed().as_secs_f64() * 1000.0
        ));
        if !opts.leave_running {
            self.st.status = Status::Checkpointed;
            self.st.init = None;
            self.notice(&format!(
                "{} checkpointed (generation {gen}); output resumes after `stasis restore {}`",
                self.wd.name, self.wd.name
            ))
            .await;
        }
        self.save();
        Reply::Checkpointed {
            generation: gen,
            stats,
            leave_running: opts.leave_running,
        }
    }

    /// Deletes directories in a forked child, so the reply does not wait for it; the reaper
    /// collects the child. Leftovers of an interrupted delete are `.tmp-*` names, removed at
    /// the next monitor start.
    #[allow(unsafe_code)]
    fn delete_in_background(&self, dirs: Vec<PathBuf>) {
        if dirs.is_empty() {
            return;
        }
        // SAFETY: the monitor is single-threaded; the child only deletes files and _exits.
        match unsafe { sys::fork() } {
            Ok(None) => {
                for d in &dirs {
                    let _ = std::fs::remove_dir_all(d);
                }
                sys::exit_now(0)
            }
            Ok(Some(pid)) => drop(self.reaper.watch(pid)),
            Err(_) => {
                for d in &dirs {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
    }

    fn checkpoint_failed(
        &mut self,
        gen: u32,
        tmp: Option<&std::path::Path>,
        why: String,
        no_space: bool,
    ) -> Reply {
        if let Some(t) = tmp {
            let _ = std::fs::remove_dir_all(t);
        }
        let why = if no_space {
            format!("{why} (the disk is full; the workload keeps running and earlier generations are intact)")
        } else {
            why
        };
        diag(&format!("checkpoint {gen} failed: {why}"));
        self.event(HistEvent::new("checkpoint-failed", why.clone()).generation(gen));
        err_reply(
            CODE_STASIS_ERROR,
            format!("checkpoint of {} failed: {why}", self.wd.name),
        )
    }

    /// CRIU succeeded but the generation could not be committed. If the dump stopped the
    /// workload, bring it straight back from the images just written, so a failed checkpoint
    /// never ends the workload.
    async fn after_dump_failure(
        &mut self,
        gen: u32,
        tmp: &std::path::Path,
        manifest: Manifest,
        why: String,
    ) -> Reply {
        if manifest.leave_running {
            return self.checkpoint_failed(gen, Some(tmp), why, false);
        }
        diag(&format!(
            "commit of generation {gen} failed ({why}); restoring from {}",
            tmp.display()
        ));
        self.stopped_by_dump().await;
        self.st.status = Status::Checkpointed;
        let r = self
            .restore_images(
                tmp.to_path_buf(),
                manifest,
                RestoreOpts::default(),
                gen,
                false,
            )
            .await;
        let _ = std::fs::remove_dir_all(tmp);
        match r {
            Ok(_) => self.checkpoint_failed(
                gen,
                None,
                format!("{why}; the workload was restored from the dump and keeps running"),
                false,
            ),
            Err(e) => {
                self.save();
                err_reply(CODE_STASIS_ERROR, format!("checkpoint of {} failed after the dump ({why}) and the workload could not be brought back: {e:?}", self.wd.name))
            }
        }
    }

    /// After a dump without --leave-running: CRIU has killed the tree. Collect init, drain
    /// the old pipes to their end, keep what the workload had not read from its stdin.
    async fn stopped_by_dump(&mut self) {
        if let Some(live) = self.live.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), live.exit_rx).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), live.reader).await;
        }
        self.stdin_tx.send_replace(None);
        if let Some(s) = self.stdio.take() {
            self.stdin_carry = s.drain().await;
        }
        for s in self.sessions.values_mut() {
            if let Some(stdio) = s.stdio.take() {
                s.stdin_carry = stdio.drain().await;
            }
        }
    }

    /// `stasis restore`: brings the workload back from a generation. Errors leave the
    /// generation and the workload's state as they were, so it can be tried again.
    pub(crate) async fn restore(
        &mut self,
        opts: RestoreOpts,
        _first: Option<u64>,
    ) -> Result<Reply, Reply> {
        if self.live.is_some() {
            return Err(err_reply(
                CODE_STASIS_ERROR,
                format!("{} is running", self.wd.name),
            ));
        }
        let gen = generations::pick(&self.wd, opts.generation)
            .map_err(|e| err_reply(CODE_STASIS_ERROR, e.to_string()))?;
        let number = gen.number;
        let manifest = gen.verify(self.wd.name.as_str()).map_err(|e| {
            self.event(HistEvent::new("restore-failed", e.to_string()).generation(number));
            err_reply(
                CODE_STASIS_ERROR,
                format!("restore of {} refused: {e}", self.wd.name),
            )
        })?;
        self.restore_images(gen.dir.clone(), manifest, opts, number, true)
            .await
    }

    /// Restores from a directory of images described by `manifest`.
    pub(crate) async fn restore_images(
        &mut self,
        dir: PathBuf,
        manifest: Manifest,
        opts: RestoreOpts,
        number: u32,
        count_it: bool,
    ) -> Result<Reply, Reply> {
        let criu = self.criu(opts.criu.as_ref())?;
        self.prepare_cgroup().map_err(|(c, m)| err_reply(c, m))?;
        if let Some(d) = &manifest.init_cwd {
            atomic::mkdir_p(d, 0o700).map_err(|e| err_reply(CODE_STASIS_ERROR, e.to_string()))?;
        }
        let mut fresh = self.fresh_fds(&manifest).map_err(|e| {
            err_reply(
                CODE_STASIS_ERROR,
                format!("restore of {}: {e}", self.wd.name),
            )
        })?;
        let pidfile = self
            .root
            .runtime
            .join(format!("{}.restore.pid", self.wd.name));
        let _ = std::fs::remove_file(&pidfile);
        let log = self.criu_log("restore", number);
        let ropts = criu::RestoreOpts {
            images: dir.clone(),
            log: log.clone(),
            pidfile: pidfile.clone(),
            inherit: fresh
                .inherit
                .iter()
                .map(|(fd, id, _)| (*fd, id.clone()))
                .collect(),
            root: self.spec.rootfs.clone(),
            ext_mounts: self
                .ext_mount_keys()
                .into_iter()
                .map(|(_, k, p)| (k, p))
                .collect(),
            cgroup_args: self.cgroup.criu_restore_args(),
            tcp_established: opts.tcp_established || manifest.tcp_established,
            file_locks: opts.file_locks || manifest.file_locks,
        };
        let placed: Vec<(i32, i32)> = fresh
            .inherit
            .iter()
            .map(|(fd, _, f)| (f.as_raw_fd(), *fd))
            .collect();
        self.st.status = if self.st.status == Status::Checkpointed {
            Status::Restoring
        } else {
            self.st.status
        };
        let t0 = Instant::now();
        let run = self.run_criu(&criu, &ropts.argv(), &placed).await;
        // The container-side ends now live in the restored processes (or nowhere).
        fresh.inherit.clear();
        if let Err(status) = run {
            let reasons = criu::failure_reasons(&log);
            let why = format!(
                "criu restore {status}: {} (log: {})",
                reasons.join("; "),
                log.display()
            );
            diag(&format!("restore of generation {number} failed: {why}"));
            self.event(HistEvent::new("restore-failed", why.clone()).generation(number));
            if self.st.status == Status::Restoring {
                self.st.status = Status::Checkpointed;
            }
            self.save();
            return Err(err_reply(
                CODE_STASIS_ERROR,
                format!(
                    "restore of {} from generation {number} failed: {why}",
                    self.wd.name
                ),
            ));
        }
        let restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&pidfile);
        let pidfd = sys::pidfd_open(pid)
            .map_err(|e| err_reply(CODE_STASIS_ERROR, format!("restored init (pid {pid}): {e}")))?;
        let (ctl, ctl_ino) = fresh
            .ctl
            .take()
            .ok_or_else(|| err_reply(CODE_STASIS_ERROR, "manifest has no control socket"))?;
        self.adopt(pid, pidfd, ctl, ctl_ino)
            .map_err(|(c, m)| err_reply(c, m))?;
        if self.spec.network == crate::spec::Network::None {
            if let Err(e) = self.rekey_control(pid).await {
                // init runs but cannot be checkpointed again; say so, keep supervising.
                diag(&format!("rekey of the control socket failed: {e}"));
            }
        }
        if let Some(mut stdio) = fresh.stdio.take() {
            let carry = std::mem::take(&mut self.stdin_carry);
            if !carry.is_empty() {
                if let Some(w) = &stdio.stdin {
                    let _ = w.write_all(&carry).await;
                }
            }
            self.install_stdio(&mut stdio, manifest.stdin_open);
            start_pumps(
                &mut stdio,
                Some(self.log.clone()),
                &self.out_sinks,
                &self.err_sinks,
            );
            if let (Some(t), Some((r, c))) = (&stdio.tty, self.winsize.or(manifest.winsize)) {
                let _ = sys::set_winsize(t.borrow(), r, c);
            }
            self.stdio = Some(stdio);
        }
        for (id, stdio) in fresh.sessions.drain() {
            let entry = manifest.sessions.iter().find(|s| s.id == id);
            self.resume_session(&id, stdio, entry.map(|e| e.stdin).unwrap_or(false))
                .await;
        }
        // Sessions that existed at the dump but were not in it are gone for good.
        let in_dump: Vec<SessionId> = manifest.sessions.iter().map(|s| s.id.clone()).collect();
        self.sessions.retain(|id, _| in_dump.contains(id));
        let newest = generations::list(&self.wd)
            .last()
            .map(|g| g.number)
            .unwrap_or(number);
        if let Some(l) = self.log.borrow_mut().as_mut() {
            let text = if number < newest
                || manifest.log_offset < l.offset() && manifest.leave_running
            {
                format!("restored from generation {number}: output after log offset {} came from a run that was rolled back", manifest.log_offset)
            } else {
                format!("restored from generation {number}")
            };
            let _ = l.marker(&text);
        }
        self.st.status = Status::Running;
        self.st.init = self.live.as_ref().map(|l| l.init);
        self.st.exit = None;
        self.st.finished_at = None;
        self.st.stop_requested = false;
        self.st.generation = Some(number);
        if count_it {
            self.st.restores += 1;
        }
        self.st.note = None;
        self.save();
        let reason = if opts.reason.is_empty() {
            "user".to_string()
        } else {
            opts.reason.clone()
        };
        self.event(HistEvent::new("restore", reason).generation(number));
        self.policy_started();
        diag(&format!(
            "restored generation {number} in {restore_ms:.1} ms: init pid {pid}"
        ));
        self.notice(&format!(
            "{} restored from generation {number}",
            self.wd.name
        ))
        .await;
        Ok(Reply::Restored {
            generation: number,
            pid,
        })
    }

    /// Fresh fds for every external of a manifest, numbered for CRIU.
    fn fresh_fds(&mut self, m: &Manifest) -> std::io::Result<Fresh> {
        let mut f = Fresh {
            inherit: Vec::new(),
            ctl: None,
            stdio: None,
            sessions: HashMap::new(),
        };
        let mut next = INHERIT_BASE;
        let mut child_ends: HashMap<(Option<SessionId>, String), OwnedFd> = HashMap::new();
        let tty_of = |sess: Option<&SessionId>| {
            match sess {
            None => m.externals.iter().any(|e| e.role == Role::Tty),
            Some(id) => m.externals.iter().any(|e| matches!(&e.role, Role::Session { id: i, stream } if i == id && stream == "tty")),
        }
        };
        for ext in &m.externals {
            let sess = match &ext.role {
                Role::Session { id, .. } => Some(id.clone()),
                _ => None,
            };
            match &ext.role {
                Role::Control => {
                    let (mon, init_end) = crate::protocol::seqpacket_pair()?;
                    let ino = nix::sys::stat::fstat(&init_end)
                        .map(|s| s.st_ino)
                        .unwrap_or(0);
                    f.ctl = Some((mon, ino));
                    f.inherit.push((next, ext.id.clone(), init_end));
                    next += 1;
                    continue;
                }
                _ => {
                    let have = match &sess {
                        None => f.stdio.is_some(),
                        Some(id) => f.sessions.contains_key(id),
                    };
                    if !have {
                        let win = if sess.is_none() {
                            self.winsize.or(m.winsize)
                        } else {
                            None
                        };
                        let (stdio, ends) = make_stdio(tty_of(sess.as_ref()), sess.as_ref(), win)?;
                        for (role, fd) in ends.ends {
                            child_ends.insert((sess.clone(), role_stream(&role).to_string()), fd);
                        }
                        match &sess {
                            None => f.stdio = Some(stdio),
                            Some(id) => {
                                f.sessions.insert(id.clone(), stdio);
                            }
                        }
                    }
                    let key = (sess.clone(), role_stream(&ext.role).to_string());
                    let end = child_ends.remove(&key).ok_or_else(|| {
                        std::io::Error::other(format!("no fresh end for {:?}", ext.role))
                    })?;
                    f.inherit.push((next, ext.id.clone(), end));
                    next += 1;
                }
            }
        }
        Ok(f)
    }

    /// Resumes a session after a restore: fresh stdio, same clients.
    async fn resume_session(&mut self, id: &SessionId, mut stdio: Stdio, stdin_open: bool) {
        let Some(s) = self.sessions.get_mut(id) else {
            // A session known only from the checkpoint (a new monitor): its output goes to its log.
            let Some(rec) = crate::store::sessions::load(&self.wd, id) else {
                return;
            };
            let mut s = Session::new(rec, &self.wd);
            s.detach_to_log(&self.wd);
            self.sessions.insert(id.clone(), s);
            return Box::pin(self.resume_session(id, stdio, stdin_open)).await;
        };
        let carry = std::mem::take(&mut s.stdin_carry);
        if !carry.is_empty() {
            if let Some(w) = &stdio.stdin {
                let _ = w.write_all(&carry).await;
            }
        }
        let target = if stdio.tty.is_some() || stdin_open {
            stdio.stdin.take()
        } else {
            None
        };
        stdio.stdin = None;
        s.stdin_tx.send_replace(target);
        if s.rec.status == SessionStatus::Exited {
            // It died with its container (a crash) and the restored tree has it running again.
            s.rec.status = SessionStatus::Running;
            s.rec.exit_code = None;
            s.rec.exit_status = None;
            s.rec.finished_at = None;
            s.rec.error = None;
            if s.client.is_none() {
                s.detach_to_log(&self.wd);
            }
            if let Err(e) = crate::store::sessions::save(&self.wd, &s.rec) {
                diag(&format!("session {id}: {e}"));
            }
        }
        start_pumps(&mut stdio, Some(s.log.clone()), &s.out_sinks, &s.err_sinks);
        s.stdio = Some(stdio);
    }
}

impl Monitor {
    /// After a restore into a new network namespace the inherited control socket lives in
    /// the host's namespace, where CRIU would not find it at the next dump. Make a new pair
    /// inside the restored namespace (entering it briefly: the monitor is single-threaded)
    /// and have init switch to it.
    async fn rekey_control(&mut self, pid: i32) -> Result<(), String> {
        use nix::sched::{setns, CloneFlags};
        let host =
            std::fs::File::open("/proc/self/ns/net").map_err(|e| format!("open own netns: {e}"))?;
        let target = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("open netns of {pid}: {e}"))?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let pair = crate::protocol::seqpacket_pair();
        if let Err(e) = setns(&host, CloneFlags::CLONE_NEWNET) {
            // Never stay in a workload's namespace.
            diag(&format!("cannot return to the host network namespace: {e}"));
            sys::exit_now(CODE_STASIS_ERROR);
        }
        let (mine, theirs) = pair.map_err(|e| format!("socketpair: {e}"))?;
        let live = self.live.as_mut().ok_or("not running")?;
        live.ctl
            .send_msg(&crate::protocol::ToInit::Rekey, &[theirs.as_raw_fd()])
            .await
            .map_err(|e| format!("send: {e}"))?;
        drop(theirs);
        let new = std::rc::Rc::new(super::io::Fd::new(mine).map_err(|e| e.to_string())?);
        match tokio::time::timeout(
            Duration::from_secs(5),
            new.recv_msg::<crate::protocol::FromInit>(),
        )
        .await
        {
            Ok(Ok(Some((crate::protocol::FromInit::Rekeyed, _)))) => {}
            other => return Err(format!("no answer from init: {other:?}")),
        }
        let reader = super::start::spawn_reader(
            self.epoch,
            new.clone(),
            self.tx.clone(),
            live.pending.clone(),
            live.main_status.clone(),
        );
        // The old reader ends by itself: init closed its end of the old socket.
        live.reader = reader;
        live.ctl = new;
        live.ctl_ino = sys::fd_inode(pid, crate::container::INIT_CTL_FD).unwrap_or(0);
        Ok(())
    }
}
