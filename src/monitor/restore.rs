//! Restores, driven by the monitor: `criu restore --root` with the carried-in mounts bound back
//! from the host, `--restore-detached --restore-sibling` so the restored init is the monitor's
//! child, then the same link to init as for a new container: the control socket, the stdio of
//! the workload and of every session come back with the container, and the monitor takes
//! duplicates of them. Attached clients keep their pipes: their output simply continues.
//!
//! Before CRIU runs, the state says `restoring` and names CRIU's pidfile, and CRIU holds the
//! workload lock: a monitor killed mid-restore leaves a trail the next command follows to the
//! restored container (adopting it), never a second copy.

use super::lifecycle::Ev;
use super::{diag, err_reply, Monitor};
use crate::container::shm;
use crate::criu;
use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::{Reply, RestoreOpts};
use crate::store::events::Event as HistEvent;
use crate::store::generations::{self, Manifest};
use crate::store::state::Status;
use crate::sys;
use std::path::PathBuf;
use std::time::Instant;

impl Monitor {
    /// `stasis restore`: brings the workload back from a generation. Errors leave the
    /// generation and the workload's state as they were, so it can be tried again.
    pub(crate) async fn restore(
        &mut self,
        opts: RestoreOpts,
        count_it: bool,
    ) -> Result<Reply, Reply> {
        self.restore_asked = Some(Instant::now());
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
        if opts.lazy {
            return self
                .restore_lazily(gen.dir.clone(), manifest, opts, number, count_it)
                .await;
        }
        self.restore_images(gen.dir.clone(), manifest, opts, number, count_it)
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
        let criu = self.criu(opts.criu.as_ref()).await?;
        let gpu = super::gpu::before_restore(manifest.gpu.as_ref()).map_err(|e| {
            self.event(HistEvent::new("restore-failed", e.clone()).generation(number));
            err_reply(
                CODE_STASIS_ERROR,
                format!(
                    "restore of {} from generation {number} refused: {e}",
                    self.wd.name
                ),
            )
        })?;
        // Files the job writes that moved on since the dump: named (or the restore refused),
        // and what the generation snapshotted is put back.
        let diverged = super::files::before_restore(&dir, &manifest, self.spec.on_divergence)
            .map_err(|e| {
                self.event(HistEvent::new("restore-failed", e.clone()).generation(number));
                err_reply(
                    CODE_STASIS_ERROR,
                    format!(
                        "restore of {} from generation {number} refused: {e}",
                        self.wd.name
                    ),
                )
            })?;
        if !diverged.is_empty() {
            let text = format!(
                "files changed since generation {number}: {}",
                crate::store::divergence::describe(&diverged)
            );
            diag(&text);
            self.event(HistEvent::new("diverged", text).generation(number));
        }
        self.prepare_cgroup().map_err(|(c, m)| err_reply(c, m))?;
        let pidfile = self.wd.restore_pidfile();
        let _ = std::fs::remove_file(&pidfile);
        let log = self.criu_log("restore", number);
        let mut placeholders = Placeholders::default();
        let (mut ext_mounts, live) = self.map_mounts(&manifest, number, &mut placeholders)?;
        // An external /dev/shm (empty at the dump) gets a fresh tmpfs, detached from the host
        // once CRIU has bound it into the container.
        let shm = match &manifest.shm {
            Some(m) => Some(
                shm::stage(&self.root.runtime, self.wd.name.as_str(), m).map_err(|e| {
                    err_reply(
                        CODE_STASIS_ERROR,
                        format!("restore of {} from generation {number}: {e}", self.wd.name),
                    )
                })?,
            ),
            None => None,
        };
        let shm_ext = shm
            .as_ref()
            .map(|s| (shm::KEY.to_string(), s.path().to_path_buf()));
        ext_mounts.extend(shm_ext.clone());
        // A lazy or gated restore (see `lazy` and `migrate`) adds its flags and environment.
        let extra = self.restore_extra.take();
        // A lazy or gated restore (a migration's) must not hang the target forever should
        // a task it restores be killed mid-way; a plain restore is the user's to interrupt.
        let deadline = extra.as_ref().map(|_| RESTORE_DEADLINE);
        let mut extra = extra.unwrap_or_default();
        let ready = extra.ready.take();
        let ropts = criu::RestoreOpts {
            images: dir.clone(),
            log: log.clone(),
            pidfile: pidfile.clone(),
            root: manifest.root.clone(),
            ext_mounts,
            cgroup_args: self.cgroup.criu_restore_args(),
            flags: manifest.criu.clone(),
            extra: gpu.args.into_iter().chain(extra.argv).collect(),
        };
        let was = self.st.status;
        self.st.status = Status::Restoring;
        self.st.restoring_since = Some(crate::store::state::now_ms());
        self.save();
        let t0 = Instant::now();
        let mut all_env = gpu.env;
        all_env.extend(extra.env);
        let env = (!all_env.is_empty()).then_some(all_env.as_slice());
        // Why a lazy restore's daemon never listened: CRIU was then sent nothing, so this is
        // no failed restore (no event, no CRIU log to quote); the caller restores fully.
        let daemon_failed: std::cell::RefCell<Option<String>> = Default::default();
        let mut run = match &ready {
            // A lazy restore: CRIU starts up (about 7 ms) while the lazy-pages daemon gets
            // ready, and gets its request once the daemon listens.
            Some((status, daemon_log)) => {
                let listens = async {
                    // Bounded like CRIU's run: a daemon that neither listens nor exits must
                    // not hold the restore (and the job's status) for ever.
                    let waited = super::lazy::daemon_listens(status, daemon_log);
                    let r = match deadline {
                        Some(d) => tokio::time::timeout(d, waited).await.unwrap_or_else(|_| {
                            Err(format!(
                                "criu lazy-pages did not listen within {} s (log: {})",
                                d.as_secs(),
                                daemon_log.display()
                            ))
                        }),
                        None => waited.await,
                    };
                    if let Err(e) = &r {
                        *daemon_failed.borrow_mut() = Some(e.clone());
                    }
                    r
                };
                self.run_criu_rpc(&criu, &ropts.argv(), &[], &all_env, deadline, listens)
                    .await
            }
            None => {
                self.run_criu_bounded(&criu, &ropts.argv(), &[], env, true, deadline)
                    .await
            }
        };
        placeholders.remove();
        if let Some(why) = daemon_failed.take() {
            drop(shm);
            self.st.status = was;
            self.st.restoring_since = None;
            self.save();
            return Err(err_reply(CODE_STASIS_ERROR, why));
        }
        // A host mount that vanished while CRIU worked (after the check above) fails the
        // restore; once more, it gets its stand-in like one gone before.
        if run.is_err() && live.iter().any(|p| !p.exists()) {
            diag("a host mount the container carried vanished during the restore: once more");
            let (mut again, _) = self.map_mounts(&manifest, number, &mut placeholders)?;
            again.extend(shm_ext.clone());
            let ropts = criu::RestoreOpts {
                ext_mounts: again,
                ..ropts
            };
            run = self
                .run_criu_bounded(&criu, &ropts.argv(), &[], env, true, deadline)
                .await;
            placeholders.remove();
        }
        drop(shm);
        if let Err(status) = run {
            let reasons = criu::failure_reasons(&log);
            let mut why = format!(
                "criu restore {status}: {} (log: {})",
                reasons.join("; "),
                log.display()
            );
            if !diverged.is_empty() {
                let after = if manifest.leave_running {
                    " (it was taken with --leave-running, and the job wrote on)"
                } else {
                    ""
                };
                why.push_str(&format!(
                    "; changed since generation {number}{after}: {}",
                    crate::store::divergence::describe(&diverged)
                ));
            } else if manifest.leave_running && reasons.iter().any(|r| r.contains("changed size")) {
                why.push_str(&format!(
                    "; generation {number} was taken with --leave-running and the job's files moved on after it"
                ));
            }
            diag(&format!("restore of generation {number} failed: {why}"));
            self.event(HistEvent::new("restore-failed", why.clone()).generation(number));
            self.st.status = was;
            self.st.restoring_since = None;
            self.save();
            self.go(Ev::RestoreFailed);
            return Err(err_reply(
                CODE_STASIS_ERROR,
                format!(
                    "restore of {} from generation {number} failed: {why}",
                    self.wd.name
                ),
            ));
        }
        let restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let pid = self.restored_pid(&pidfile).map_err(|e| {
            err_reply(
                CODE_STASIS_ERROR,
                format!("restore of {}: {e}", self.wd.name),
            )
        })?;
        let _ = std::fs::remove_file(&pidfile);
        let pidfd = sys::pidfd_open(pid)
            .map_err(|e| err_reply(CODE_STASIS_ERROR, format!("restored init (pid {pid}): {e}")))?;
        let procs = self
            .take_container(pid, pidfd, true)
            .await
            .map_err(|(c, m)| err_reply(c, m))?;
        let problems = self.take_sessions(&procs);
        for p in &problems {
            diag(p);
            self.event(HistEvent::new("session-lost", p.clone()).generation(number));
        }
        let newest = generations::list(&self.wd)
            .last()
            .map(|g| g.number)
            .unwrap_or(number);
        if let Some(l) = self.log.borrow_mut().as_mut() {
            let text = if number < newest || manifest.log_offset < l.offset() {
                format!("restored from generation {number}: output after log offset {} came from a run that was rolled back", manifest.log_offset)
            } else {
                format!("restored from generation {number}")
            };
            if l.marker(&text).is_err() {
                self.log_dropped
                    .set(self.log_dropped.get() + text.len() as u64);
            }
        }
        self.st.status = Status::Running;
        self.st.restoring_since = None;
        self.st.init = self.live.as_ref().map(|l| l.init);
        self.st.exit = None;
        self.st.finished_at = None;
        self.st.stop_requested = false;
        self.st.generation = Some(number);
        self.st.diverged = diverged.clone();
        if count_it {
            self.st.restores += 1;
        }
        self.st.note = None;
        self.user_kill = None;
        self.winsize = self.winsize.or(manifest.winsize);
        self.save();
        self.go(Ev::Restored);
        let reason = if opts.reason.is_empty() {
            "user".to_string()
        } else {
            opts.reason.clone()
        };
        self.event(HistEvent::new("restore", reason).generation(number));
        self.policy_started();
        let asked = self.restore_asked.take().unwrap_or(t0);
        diag(&format!(
            "restored generation {number}: before criu {:.1} ms, criu {restore_ms:.1} ms, after {:.1} ms, total {:.1} ms: init pid {pid}",
            (t0 - asked).as_secs_f64() * 1000.0,
            (asked.elapsed().as_secs_f64() * 1000.0 - restore_ms - (t0 - asked).as_secs_f64() * 1000.0).max(0.0),
            asked.elapsed().as_secs_f64() * 1000.0
        ));
        self.notice(&format!(
            "{} restored from generation {number}",
            self.wd.name
        ));
        Ok(Reply::Restored {
            generation: number,
            pid,
            diverged,
        })
    }

    /// Where CRIU finds each host mount the container carried: the mount itself, or an empty
    /// stand-in for one the host has dropped (see below). Also the host paths taken as they
    /// are, to notice one vanishing during the restore.
    #[allow(clippy::type_complexity)]
    fn map_mounts(
        &self,
        manifest: &Manifest,
        number: u32,
        placeholders: &mut Placeholders,
    ) -> Result<(Vec<(String, std::path::PathBuf)>, Vec<std::path::PathBuf>), Reply> {
        // A host mount the container carried that the host has since dropped (and whose
        // mount point is gone): CRIU needs its mount point to restore it. It gets an empty
        // stand-in, and the stand-in goes with the placeholder directory right after, so the
        // restored container lacks the mount just as the host does. Only a job that used it
        // fails (CRIU cannot reopen its files there) and says so.
        let mut ext_mounts = Vec::new();
        let mut live = Vec::new();
        for m in &manifest.mounts {
            if m.host.exists() || manifest.root != std::path::Path::new("/") {
                ext_mounts.push((m.key.clone(), m.host.clone()));
                live.push(m.host.clone());
                continue;
            }
            let empty = self.root.runtime.join("empty");
            let made = crate::store::atomic::mkdir_p(&empty, 0o700)
                .map_err(|e| e.to_string())
                .and_then(|()| placeholders.make(&m.host));
            if let Err(e) = made {
                return Err(err_reply(
                    CODE_STASIS_ERROR,
                    format!(
                        "restore of {} from generation {number}: the container had {} mounted when it was checkpointed; the host no longer has it, and a stand-in could not be made: {e}",
                        self.wd.name,
                        m.host.display()
                    ),
                ));
            }
            diag(&format!(
                "{} is gone from the host: the restored container will not have it",
                m.host.display()
            ));
            ext_mounts.push((m.key.clone(), empty));
        }
        Ok((ext_mounts, live))
    }

    /// The restored init's pid: from CRIU's pidfile, else (unreadable) the one child of ours
    /// that runs an init copy. Never a made-up pid: a tree we cannot find is an error.
    fn restored_pid(&self, pidfile: &std::path::Path) -> Result<i32, String> {
        let read = std::fs::read_to_string(pidfile)
            .map_err(|e| format!("read CRIU's pidfile {}: {e}", pidfile.display()))
            .and_then(|s| {
                parse_pidfile(&s)
                    .map_err(|why| format!("CRIU's pidfile {} {why}", pidfile.display()))
            });
        match read {
            Ok(p) => Ok(p),
            Err(why) => {
                let me = std::process::id() as i32;
                let kids = crate::container::tree::pids(me);
                let found: Vec<i32> = kids
                    .into_iter()
                    .skip(1)
                    .filter(|p| crate::store::init_copies::runs_init(*p))
                    .collect();
                match found.as_slice() {
                    [one] => {
                        diag(&format!("{why}; found the restored init as pid {one}"));
                        Ok(*one)
                    }
                    _ => Err(format!(
                        "{why}, and no single restored init among our children"
                    )),
                }
            }
        }
    }
}

/// How long a lazy or gated restore may take, gates included: far above a move's hand-over
/// (seconds) and its grace for a late commit (20 s).
const RESTORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Directories made on the host to stand in for mount points it no longer has, removed (and
/// with them the stand-in mounts in the restored container) once CRIU is done.
#[derive(Default)]
struct Placeholders(Vec<std::path::PathBuf>);

impl Placeholders {
    /// Makes `path` and whatever of its parents is missing.
    fn make(&mut self, path: &std::path::Path) -> Result<(), String> {
        let mut missing = vec![];
        let mut p = Some(path);
        while let Some(d) = p.filter(|d| !d.exists()) {
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing.iter().rev() {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            self.0.push(d.clone());
        }
        Ok(())
    }

    /// Removes them, deepest first: a mount on one of them in another namespace goes too.
    fn remove(&mut self) {
        for d in self.0.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir(&d) {
                diag(&format!("remove the stand-in {}: {e}", d.display()));
            }
        }
    }
}

impl Drop for Placeholders {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A pidfile's pid, only when it names a real process: never 0 or a negative "all processes".
fn parse_pidfile(text: &str) -> Result<i32, String> {
    match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        Ok(p) => Err(format!("names pid {p}")),
        Err(_) => Err(format!("holds {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pidfile;

    /// Issue 9, item 15: an unreadable or odd pidfile never becomes pid 0 (a live tree left
    /// unsupervised); it is an error that sends restore to its fallback.
    #[test]
    fn item_15_a_bad_pidfile_never_becomes_pid_0() {
        assert_eq!(parse_pidfile("4242\n"), Ok(4242));
        for bad in ["", "0", "-1", "12ab", "\n"] {
            assert!(parse_pidfile(bad).is_err(), "{bad:?}");
        }
    }
}
