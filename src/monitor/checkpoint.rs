//! Checkpoints, driven by the monitor.
//!
//! The container holds its own stdio and control socket, so a dump declares nothing but the
//! mounts carried in from the host external. The pumps stop at a gate for the dump: whatever
//! is in the container's pipes then is in the images exactly once. CRIU dumps into a temp
//! generation that is renamed into place only once it succeeded; CRIU's post-dump hook marks
//! the images complete, so a CRIU that dies after writing them (even after killing the tree)
//! still leaves a generation. A failed dump that took the job with it is answered: the job
//! comes back from the newest good generation, or its policy restarts it.

use super::lifecycle::{Ev, Phase};
use super::{diag, err_reply, Monitor};
use crate::container::mounts::{self, ExtMount, Layout};
use crate::container::{shm, tree, INIT_MOUNT};
use crate::criu::{self, Criu};
use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::{CheckpointOpts, DumpStats, Reply};
use crate::spec::Volume;
use crate::store::events::Event as HistEvent;
use crate::store::generations::{self, Manifest, SessionEntry, MANIFEST_VERSION};
use crate::store::state::now_ms;
use crate::sys;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where CRIU finds the workload lock it inherits (see [`Monitor::lock`]).
const LOCK_FD_IN_CRIU: i32 = 90;

impl Monitor {
    /// Finds and checks CRIU once per monitor.
    pub(crate) async fn criu(&mut self, given: Option<&Criu>) -> Result<Criu, Reply> {
        if let Some(c) = given {
            // The CLI located it and `criu check` passed there.
            return Ok(c.clone());
        }
        if let Some(c) = &self.criu {
            return Ok(c.clone());
        }
        let c = criu::locate().map_err(|e| err_reply(CODE_STASIS_ERROR, e.to_string()))?;
        let cache = criu::cache_dir(&self.root);
        if !c.check_is_cached(&cache) {
            // `criu check` takes tens of ms: run it as a child we await, not in the loop.
            let r = self
                .run_criu(&c, &["check".to_string()], &[], None, false)
                .await;
            if let Err(why) = r {
                return Err(err_reply(
                    CODE_STASIS_ERROR,
                    format!("`criu check` fails on this host: {why}"),
                ));
            }
            c.record_check(&cache);
        }
        self.criu = Some(c.clone());
        Ok(c)
    }

    /// Why the container must not be dumped now, if a spawn init was asked for is still
    /// unanswered: init spawns with `CLONE_VFORK` and stops for ptrace only once its child has
    /// exec'd, so CRIU would wait on it for good. Spawns and dumps never overlap on the event
    /// loop; this is the case of a child stuck before its exec (a hung `chdir` or `execve` on
    /// a dead network filesystem) after its requester gave up waiting.
    pub(crate) fn spawn_unanswered(&self) -> Option<String> {
        let live = self.live.as_ref()?;
        let pending = live.link.pending.borrow();
        let id = pending.keys().next()?;
        Some(format!(
            "{}: its init is still starting a process ({id}) and cannot be dumped until that process has started",
            self.wd.name
        ))
    }

    pub(crate) fn criu_log(&self, what: &str, gen: u32) -> PathBuf {
        let d = self.wd.criu_logs();
        if let Err(e) = crate::store::atomic::mkdir_in(&d, 0o700) {
            diag(&format!("criu log dir: {e}"));
        }
        d.join(format!("{what}-{gen}.log"))
    }

    /// Runs CRIU and waits for it through the reaper. The workload lock goes with it: a
    /// monitor that dies meanwhile leaves the workload locked until CRIU is done.
    pub(crate) async fn run_criu(
        &self,
        criu: &Criu,
        argv: &[String],
        fds: &[(i32, i32)],
        env: Option<&[(String, String)]>,
        keep_lock: bool,
    ) -> Result<(), String> {
        self.run_criu_bounded(criu, argv, fds, env, keep_lock, None)
            .await
    }

    /// As [`Self::run_criu`]; past `deadline` CRIU and the tree it was restoring are killed
    /// (by pid: CRIU's children, whose pid namespace goes with them, then CRIU) and the run
    /// fails. CRIU 4.2 can wait forever once a task it restores is killed mid-way.
    pub(crate) async fn run_criu_bounded(
        &self,
        criu: &Criu,
        argv: &[String],
        fds: &[(i32, i32)],
        env: Option<&[(String, String)]>,
        keep_lock: bool,
        deadline: Option<Duration>,
    ) -> Result<(), String> {
        let mut cmd = std::process::Command::new(&criu.path);
        cmd.args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env.unwrap_or(&[]) {
            cmd.env(k, v);
        }
        let mut all = fds.to_vec();
        if keep_lock {
            all.push((self.lock.as_raw_fd(), LOCK_FD_IN_CRIU));
        }
        // Its own process group: what a killed CRIU leaves behind is ended with it.
        criu::group::own_group(&mut cmd);
        let child = sys::spawn_with_fds(&mut cmd, &all)
            .map_err(|e| format!("run {}: {e}", criu.path.display()))?;
        let pid = child.id() as i32;
        let mut rx = self.reaper.watch_group(pid);
        drop(child);
        let ended = match deadline {
            None => rx.await,
            Some(d) => match tokio::time::timeout(d, &mut rx).await {
                Ok(r) => r,
                Err(_) => {
                    for p in tree::pids(pid).into_iter().rev() {
                        if let Err(e) = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        ) {
                            diag(&format!("kill {p} (a stuck CRIU run): {e}"));
                        }
                    }
                    let _ = rx.await;
                    return Err(format!(
                        "did not finish in {} s and was killed",
                        d.as_secs()
                    ));
                }
            },
        };
        match ended {
            Ok(st) if st.success() => Ok(()),
            Ok(st) => Err(format!("{st}")),
            Err(_) => Err("criu vanished".into()),
        }
    }

    /// The exec sessions a dump carries, each record saved first: a restore by a new monitor
    /// finds sessions through their records, and without one it could not give the session
    /// back its stdio, so a record that cannot be saved refuses the dump.
    pub(crate) fn dump_sessions(&mut self) -> Result<Vec<SessionEntry>, String> {
        let ids: Vec<_> = self.sessions.keys().cloned().collect();
        for id in &ids {
            self.session_persist(id)?;
        }
        Ok(self
            .sessions
            .iter()
            .filter(|(_, s)| s.stdio.is_some())
            .map(|(id, s)| SessionEntry {
                id: id.clone(),
                tty: s.rec.tty,
                stdin: s.stdin_tx.borrow().is_some(),
                record: Some(s.rec.clone()),
            })
            .collect())
    }

    /// The mounts of the running container CRIU must treat as external, read from its mount
    /// table (so whatever the host had mounted when it started is covered).
    pub(crate) fn external_mounts(
        &self,
        pid: i32,
    ) -> Result<(Vec<mounts::MountEntry>, Vec<ExtMount>), String> {
        let read = |p: i32| {
            mounts::mount_table(p)
                .map_err(|e| mounts::MountError::Read { pid: p, source: e }.to_string())
        };
        let mut table = read(pid)?;
        let layout = match &self.spec.rootfs {
            Some(_) => Layout::Rootfs,
            None => Layout::HostTree,
        };
        // What the host unmounted since the container started goes from the container too
        // (as slave propagation would have done): a restore could not bring it back.
        let host = read(std::process::id() as i32)?;
        // A volume that does not parse is an error, never a mount silently left out.
        let volumes: Vec<Volume> = self
            .spec
            .volumes
            .iter()
            .map(|v| Volume::parse(v))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut binds: Vec<PathBuf> = volumes.iter().map(|v| v.dst.clone()).collect();
        binds.push(crate::store::init_copies::dir());
        let gone = mounts::gone_from_host(&table, &host, layout, &binds);
        if !gone.is_empty() {
            diag(&format!(
                "unmounting in the container what the host dropped: {gone:?}"
            ));
            mounts::unmount_in(pid, &gone).map_err(|e| e.to_string())?;
            table = read(pid)?;
        }
        let store = crate::store::init_copies::dir();
        let rootfs = self.spec.rootfs.clone();
        let ext = mounts::externals(&table, layout, |inside: &Path| {
            if let Some(v) = volumes.iter().find(|v| v.dst == inside) {
                return v.src.clone();
            }
            match &rootfs {
                Some(_) if inside == Path::new(INIT_MOUNT) => store.clone(),
                Some(r) => r.join(inside.strip_prefix("/").unwrap_or(inside)),
                None => inside.to_path_buf(),
            }
        })
        .map_err(|e| e.to_string())?;
        Ok((table, ext))
    }

    /// `stasis checkpoint`: dumps the running container into a new generation.
    pub(crate) async fn checkpoint(&mut self, opts: CheckpointOpts) -> Reply {
        let asked = Instant::now();
        let criu = match self.criu(opts.criu.as_ref()).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(init) = self.live.as_ref().map(|l| l.init) else {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} is not running", self.wd.name),
            );
        };
        if let Some(why) = self.spawn_unanswered() {
            return err_reply(CODE_STASIS_ERROR, why);
        }
        if self.lazy.busy() {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} is still receiving its memory after a lazy restore: checkpoint it once that is done", self.wd.name),
            );
        }
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
        let sessions = match self.dump_sessions() {
            Ok(s) => s,
            Err(e) => return self.checkpoint_failed(gen, Some(&tmp), e, false),
        };
        let (table, ext) = match self.external_mounts(init.pid) {
            Ok(m) => m,
            Err(e) => return self.checkpoint_failed(gen, Some(&tmp), e, false),
        };
        let held = tree::held_files(&tree::pids(init.pid));
        let files = match super::files::plan(&self.spec, &table, &ext, &held) {
            Ok(f) => f,
            Err(e) => return self.checkpoint_failed(gen, Some(&tmp), e, false),
        };
        let flags = self
            .spec
            .criu
            .overlay(&opts.options)
            .resolve(tree::largest_ghost(&held));
        let (init_path, hook) = match crate::store::init_copies::ensure()
            .and_then(|i| crate::store::init_copies::hook().map(|h| (i, h)))
        {
            Ok(p) => p,
            Err(e) => {
                return self.checkpoint_failed(gen, Some(&tmp), e.to_string(), e.is_no_space())
            }
        };
        let (gpu_facts, gpu) = match super::gpu::before_dump(init.pid) {
            Ok(Some((facts, run))) => (Some(facts), run),
            Ok(None) => (None, Default::default()),
            Err(e) => return self.checkpoint_failed(gen, Some(&tmp), e, false),
        };
        let log = self.criu_log("dump", gen);
        // An empty /dev/shm is left to the restore to make afresh (see `container::shm`).
        let shm_dir = PathBuf::from(format!("/proc/{}/root{}", init.pid, shm::POINT));
        let own_shm = table
            .iter()
            .any(|m| m.point == Path::new(shm::POINT) && m.fstype == "tmpfs");
        let mut shm = (own_shm && shm::is_empty(&shm_dir)).then(|| match self.spec.rootfs {
            Some(_) => shm::ShmMount::rootfs(),
            None => shm::ShmMount::host_tree(),
        });
        let ext_args: Vec<(String, String)> = ext
            .iter()
            .map(|m| (m.inside.display().to_string(), m.key.clone()))
            .collect();
        let dump_opts = |shm: bool| criu::DumpOpts {
            pid: init.pid,
            images: tmp.clone(),
            log: log.clone(),
            ext_mounts: ext_args
                .iter()
                .cloned()
                .chain(shm.then(|| (shm::POINT.to_string(), shm::KEY.to_string())))
                .collect(),
            leave_running: opts.leave_running,
            flags: flags.clone(),
            action_script: Some(hook.display().to_string()),
            extra: gpu.args.clone(),
        };
        let mut env = vec![(criu::hook::ENV_DIR.to_string(), tmp.display().to_string())];
        env.extend(files.hook_env(&tmp));
        env.extend(gpu.env);
        // From here until the dump is over, nothing reads or writes the container's pipes.
        self.gate.close();
        let log_offset = self.log.borrow().as_ref().map(|l| l.offset()).unwrap_or(0);
        let mut manifest = Manifest {
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
            leave_running: opts.leave_running,
            criu: flags.clone(),
            sessions,
            winsize: self.winsize,
            files: vec![],
            stats: DumpStats::default(),
            gpu: gpu_facts,
            snapshot: files.snapshot.clone(),
            shm: None,
        };
        let (t0, ran) = loop {
            manifest.shm = shm.clone();
            let mut env = env.clone();
            if shm.is_some() {
                env.push((
                    criu::hook::ENV_SHM_EMPTY.to_string(),
                    shm_dir.display().to_string(),
                ));
            }
            // Should this monitor die while CRIU works, the next one finishes the generation.
            // (Without waiting for the disk: it serves a monitor's death, not a power cut.)
            // Through CRIU's RPC mode the monitor answers the post-dump stage itself: dead
            // before that answer, it fails the dump and CRIU resumes the tree (no generation,
            // the job runs on, unmonitored until adopted); dead after it, CRIU finishes, and
            // this marker lets the next monitor keep the images.
            let pending = tmp.join(generations::PENDING);
            let written = crate::store::atomic::to_json(&pending, &manifest)
                .and_then(|d| crate::store::atomic::write_atomic_quick(&pending, &d));
            if let Err(e) = written {
                self.gate.open();
                return self.checkpoint_failed(gen, Some(&tmp), e.to_string(), e.is_no_space());
            }
            let t0 = Instant::now();
            let ran = self
                .run_criu_rpc(
                    &criu,
                    &dump_opts(shm.is_some()).argv(),
                    &[],
                    &env,
                    None,
                    std::future::ready(Ok(())),
                )
                .await;
            if ran.is_err() && shm.is_some() && tmp.join(shm::BUSY).exists() {
                // The job wrote to /dev/shm between the look and the freeze; CRIU resumed it.
                diag(
                    "the job created files in /dev/shm as the dump began: dumping again with them",
                );
                shm = None;
                if let Err(e) = clear_dir(&tmp) {
                    self.gate.open();
                    return self.checkpoint_failed(gen, Some(&tmp), e, false);
                }
                continue;
            }
            break (t0, ran);
        };
        let dump_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let complete = criu::hook::images_complete(&tmp);
        if let Err(status) = &ran {
            if !complete {
                return self.dump_failed(gen, &tmp, &log, status).await;
            }
            diag(&format!(
                "criu dump {status} after writing every image of generation {gen}: keeping them"
            ));
        }
        let _ = std::fs::remove_file(tmp.join(criu::hook::COMPLETE));
        let _ = std::fs::remove_file(tmp.join(generations::PENDING));
        // A dump without --leave-running ends the tree: its pipes' unread bytes are in the
        // images, so the pumps stop where they are. A CRIU killed after the images but before
        // it stopped the tree leaves the job running: then it is as if left running.
        let stopped = !opts.leave_running && !init.alive();
        if stopped {
            self.stopped_by_dump().await;
        } else {
            self.gate.open();
        }
        let stop_ms = t0.elapsed().as_secs_f64() * 1000.0 - dump_ms;
        let times = criu::read_dump_times(&tmp.join("stats-dump"));
        let (files, listed) = match generations::file_entries(&tmp) {
            Ok(f) => (f, Ok(())),
            Err(e) => (
                vec![],
                Err(format!("list images in {}: {e}", tmp.display())),
            ),
        };
        let size = files.iter().map(|f| f.size).sum();
        let stats = DumpStats {
            dump_ms,
            frozen_ms: times.map(|t| t.frozen_us as f64 / 1000.0),
            size,
        };
        manifest.created_at = now_ms();
        manifest.leave_running = !stopped;
        manifest.files = files;
        manifest.stats = stats.clone();
        let committed = listed.and_then(|()| {
            generations::commit_quick(&self.wd, &tmp, &manifest)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        if let Err(why) = committed {
            if stopped {
                return self.restore_uncommitted(gen, &tmp, manifest, why).await;
            }
            let no_space = why.contains("No space left");
            return self.checkpoint_failed(gen, Some(&tmp), why, no_space);
        }
        self.policy.last_generation = gen;
        self.st.checkpoints += 1;
        self.st.generation = Some(gen);
        let keep = opts.keep.or(self.spec.checkpoint.keep);
        if let Some(k) = keep {
            let trash = generations::prune(&self.wd, k);
            self.delete_in_background(trash);
        }
        let mut reason = opts.reason.clone();
        if ran.is_err() {
            reason = format!("{reason}; criu died after writing the images");
        }
        self.event(HistEvent::new("checkpoint", reason).generation(gen));
        // The phases, for whoever weighs stasis's own cost against CRIU's (README, Benchmarks).
        diag(&format!(
            "checkpoint {gen}: before criu {:.1} ms, criu {dump_ms:.1} ms (frozen {:?} ms), stop {stop_ms:.1} ms, after {:.1} ms, total {:.1} ms, {size} bytes",
            (t0 - asked).as_secs_f64() * 1000.0,
            stats.frozen_ms,
            (t0.elapsed().as_secs_f64() * 1000.0 - dump_ms - stop_ms).max(0.0),
            asked.elapsed().as_secs_f64() * 1000.0
        ));
        if stopped {
            self.st.status = crate::store::state::Status::Checkpointed;
            self.st.init = None;
            self.go(Ev::Dumped { stopped: true });
            let msg = format!(
                "{} checkpointed (generation {gen}); output resumes after `stasis restore {}`",
                self.wd.name, self.wd.name
            );
            self.notice(&msg);
        }
        self.save();
        Reply::Checkpointed {
            generation: gen,
            stats,
            leave_running: !stopped,
        }
    }

    /// Deletes directories (and the CRIU logs of their generations) in a forked child, so the
    /// reply does not wait for it; the reaper collects the child. Leftovers of an interrupted
    /// delete are `.tmp-*` names, removed at the next monitor start.
    #[allow(unsafe_code)]
    fn delete_in_background(&self, dirs: Vec<PathBuf>) {
        if dirs.is_empty() {
            return;
        }
        let mut paths = dirs.clone();
        for d in &dirs {
            // `.tmp-prune-N` was generation N: its CRIU logs go with it.
            if let Some(n) = d
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(".tmp-prune-"))
            {
                for what in ["dump", "restore"] {
                    paths.push(self.wd.criu_logs().join(format!("{what}-{n}.log")));
                }
            }
        }
        let remove = |p: &Path| {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        };
        // SAFETY: the monitor is single-threaded; the child only deletes files and _exits.
        match unsafe { sys::fork() } {
            Ok(None) => {
                for p in &paths {
                    remove(p);
                }
                sys::exit_now(0)
            }
            Ok(Some(pid)) => drop(self.reaper.watch(pid)),
            Err(_) => {
                for p in &paths {
                    remove(p);
                }
            }
        }
    }

    fn checkpoint_failed(
        &mut self,
        gen: u32,
        tmp: Option<&Path>,
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

    /// CRIU failed before its images were complete. The job is normally still running (CRIU
    /// resumes it); if the failure took it with it (CRIU killed mid-dump, a half-injected
    /// parasite), it is brought back: from the newest good generation, else by its policy.
    async fn dump_failed(&mut self, gen: u32, tmp: &Path, log: &Path, status: &str) -> Reply {
        let reasons = criu::failure_reasons(log);
        let no_space = criu::log_says_no_space(log);
        let why = format!(
            "criu dump {status}: {} (log: {})",
            reasons.join("; "),
            log.display()
        );
        let alive = self.job_survived().await;
        self.gate.open();
        if alive {
            return self.checkpoint_failed(gen, Some(tmp), why, no_space);
        }
        let _ = std::fs::remove_dir_all(tmp);
        diag(&format!(
            "the failed dump of generation {gen} ended the job: {why}"
        ));
        self.event(HistEvent::new("checkpoint-failed", why.clone()).generation(gen));
        self.policy.dump_killed = Some(why.clone());
        err_reply(
            CODE_STASIS_ERROR,
            format!(
                "checkpoint of {} failed and took the job with it: {why}; it is being brought back (see `stasis events {}`)",
                self.wd.name, self.wd.name
            ),
        )
    }

    /// After a failed dump: is the job still running? CRIU resumes the tree (or its death
    /// detaches it) at once, but a task a half-injected parasite broke dies a moment later:
    /// give the tree a second to show which.
    pub(crate) async fn job_survived(&mut self) -> bool {
        let Some(init) = self.live.as_ref().map(|l| l.init) else {
            return false;
        };
        self.policy.dump_failed_at = Some(tokio::time::Instant::now());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            if !init.alive() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        init.alive()
    }

    /// The images are complete and the tree is gone, but the generation could not be
    /// committed (a full disk writing the manifest): bring the job straight back from the
    /// images just written, so a failed checkpoint never ends it.
    async fn restore_uncommitted(
        &mut self,
        gen: u32,
        tmp: &Path,
        manifest: Manifest,
        why: String,
    ) -> Reply {
        diag(&format!(
            "commit of generation {gen} failed ({why}); restoring from {}",
            tmp.display()
        ));
        self.phase = Phase::Checkpointed;
        let r = self
            .restore_images(
                tmp.to_path_buf(),
                manifest,
                crate::protocol::RestoreOpts::default(),
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
                let e = match e {
                    Reply::Error { message, .. } => message,
                    other => format!("{other:?}"),
                };
                err_reply(CODE_STASIS_ERROR, format!("checkpoint of {} failed after the dump ({why}) and the workload could not be brought back: {e}", self.wd.name))
            }
        }
    }

    /// After a dump that stopped the job: collect init; the pumps stop where they are (what
    /// the pipes held is in the images).
    pub(crate) async fn stopped_by_dump(&mut self) {
        if let Some(live) = self.live.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), live.exit_rx).await;
            live.link.reader.abort();
        }
        self.stdin_tx.send_replace(None);
        if let Some(s) = self.stdio.take() {
            s.abandon();
        }
        for s in self.sessions.values_mut() {
            s.stdin_tx.send_replace(None);
            if let Some(stdio) = s.stdio.take() {
                stdio.abandon();
            }
        }
        self.gate.open();
    }
}

/// Empties an image directory for another try of the same dump.
fn clear_dir(dir: &Path) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("read {}: {e}", dir.display()))?;
        let p = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| format!("remove {}: {e}", p.display()))?;
    }
    Ok(())
}
