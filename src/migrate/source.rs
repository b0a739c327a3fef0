//! The source's side: `stasis migrate NAME DEST` drives the whole migration.
//!
//! 1. ssh to DEST runs `stasis __migrate-target` (the control channel); the target says what
//!    it can do, or why it cannot take the job (nothing is touched on either side yet);
//! 2. a second ssh channel runs `stasis __migrate-pages` there: the page channel, handed to
//!    CRIU on both sides as an already connected socket;
//! 3. the job's monitor dumps it gated: the images (stream: the pages go to the target's
//!    page server while the dump runs; post-copy: they stay, to be served on demand) and CRIU
//!    waits, the job frozen, in its post-dump script;
//! 4. this command copies the images, the log, the events and the exec sessions' records to
//!    the target, which restores the job held in its post-restore script and says `Ready`;
//! 5. commit: the source's monitor records the hand-over and lets its CRIU go, then the
//!    target lets the job run. Any failure before the monitor's record resumes the job here.

use super::deadline::{self, Watchdog};
use super::mode::{self, Features, Phases, Summary};
use super::ssh::{Channel, Ssh};
use super::wire::{self, Wire};
use super::MigrateError;
use crate::api::{self, ApiError};
use crate::criu::{lazy, CriuOptions};
use crate::protocol::migrate::{Mode, OutOpts, Step};
use crate::protocol::{self, Reply, Request};
use crate::store::name::WorkloadName;
use crate::store::state::{now_ms, StateRoot, Status, WorkloadDir};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

/// What `stasis migrate` was asked.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub dest: String,
    /// None: post-copy where both hosts can, else stream.
    pub mode: Option<Mode>,
    pub options: CriuOptions,
    /// The stasis command on the target (`stasis`: found on its PATH).
    pub remote_stasis: String,
    /// The ssh command line (None: `STASIS_SSH_COMMAND`, else `ssh`).
    pub ssh: Option<String>,
    /// The longest the job may stay frozen before the target takes it (None: the default,
    /// [`deadline::DEFAULT`]; zero: no limit).
    pub timeout: Option<std::time::Duration>,
}

/// Progress: a phase began or moved `bytes` so far.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64);

fn back(msg: impl Into<String>) -> MigrateError {
    MigrateError::RolledBack(msg.into())
}

fn api_back(e: ApiError) -> MigrateError {
    back(e.to_string())
}

/// How far a migration got, for what its failure must still do.
#[derive(Default)]
struct Reached {
    /// The source's monitor was asked to dump (it records a failure in the events itself).
    asked: bool,
    /// The target claimed the name for this migration (its token).
    claimed: Option<String>,
}

/// Moves the running job `name` to `o.dest`. A failure is recorded in the job's events
/// (by its monitor, once it was asked to dump; here before that). After a rollback, what
/// the target may still hold of the attempt is dropped there (see [`confirm_abort`]).
pub fn migrate(
    root: &StateRoot,
    name: &WorkloadName,
    o: &Opts,
    progress: Progress,
) -> Result<Summary, MigrateError> {
    let mut reached = Reached::default();
    let mut r = migrate_steps(root, name, o, progress, &mut reached);
    if let (Err(MigrateError::RolledBack(why)), Some(token)) = (&r, &reached.claimed) {
        if let Err(e) = confirm_abort(o, name, token, why) {
            r = Err(back(format!(
                "{why}; {} may still hold a record of the attempt ({e})",
                o.dest
            )));
        }
    }
    if let (Err(MigrateError::RolledBack(why)), false) = (&r, reached.asked) {
        let wd = root.workload(name);
        if wd.dir.is_dir() {
            crate::store::events::append(
                &wd,
                &crate::store::events::Event::new(
                    "migrate-failed",
                    format!("to {}: {why}", o.dest),
                ),
            );
        }
    }
    r
}

/// How long the target may take to confirm an abort: it waits for whatever of the attempt
/// still runs there (a restore being undone, a CRIU finishing) before removing the record.
const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

/// After a rollback, tells the target over a fresh ssh session that migration `token` will
/// never be committed, and waits until it has dropped what it held of it. The control
/// channel cannot be trusted to have carried the abort: when it broke, a target kept a
/// placeholder record (its `__migrate-target` killed), a restore it held waited out its
/// grace period, a stream's images stayed as an "unconfirmed" checkpoint of a job that runs
/// here, and a monitor killed mid-restore left a record saying "checkpointed".
fn confirm_abort(o: &Opts, name: &WorkloadName, token: &str, why: &str) -> Result<(), String> {
    let ssh = Ssh::new(o.ssh.as_deref());
    let stasis = remote_words(&o.remote_stasis);
    let mut c = ssh
        .open(
            &o.dest,
            &with(&stasis, &["__migrate-resume", name.as_str(), token]),
        )
        .map_err(|e| format!("run ssh: {e}"))?;
    c.sock
        .set_read_timeout(Some(CONFIRM_WAIT))
        .map_err(|e| e.to_string())?;
    let abort = Wire::Step {
        step: Step::Abort {
            reason: why.to_string(),
        },
    };
    wire::send(&mut &c.sock, &abort).map_err(|e| e.to_string())?;
    let r = match wire::recv(&mut &c.sock) {
        Ok(Some(Wire::Step {
            step: Step::Dropped,
        })) => Ok(()),
        Ok(Some(Wire::Refuse { reason })) => Err(reason),
        Ok(Some(other)) => Err(format!("{other:?}")),
        _ => Err(c.why_closed()),
    };
    c.close();
    r
}

fn migrate_steps(
    root: &StateRoot,
    name: &WorkloadName,
    o: &Opts,
    progress: Progress,
    reached: &mut Reached,
) -> Result<Summary, MigrateError> {
    let t0 = Instant::now();
    let dest = o.dest.as_str();
    let seen = api::supervised(root, name).map_err(api_back)?;
    if !seen.monitor_alive || seen.state.status != Status::Running {
        return Err(back(format!("{name} is not running")));
    }
    let criu = api::locate_criu(root).map_err(api_back)?;
    let feats = criu.features(&[lazy::FEATURE_UFFD, lazy::FEATURE_DIRTY]);
    let lazy_dump = lazy::lazy_dump_possible();
    if o.mode == Some(Mode::PostCopy) {
        lazy_dump.clone().map_err(back)?;
    }
    let here = Features {
        uffd: feats.first().is_some_and(|f| f.1) && lazy_dump.is_ok(),
        dirty_track: feats.get(1).is_some_and(|f| f.1),
    };
    let init_path = crate::store::init_copies::ensure()
        .map_err(|e| back(e.to_string()))?
        .display()
        .to_string();
    progress("connect", 0);
    let ssh = Ssh::new(o.ssh.as_deref());
    let stasis = remote_words(&o.remote_stasis);
    let mut ctl = ssh
        .open(dest, &with(&stasis, &["__migrate-target"]))
        .map_err(|e| back(format!("run ssh: {e}")))?;
    let token = super::token();
    let hello = Wire::Hello {
        proto: wire::PROTO,
        name: name.to_string(),
        token: token.clone(),
        stasis: env!("CARGO_PKG_VERSION").into(),
        init_path: init_path.clone(),
    };
    let sent = wire::send(&mut &ctl.sock, &hello);
    let welcome = match (sent, wire::recv(&mut &ctl.sock)) {
        (Ok(()), Ok(Some(w))) => w,
        _ => return Err(back(ctl.why_closed())),
    };
    let (there, has_init) = match welcome {
        Wire::Welcome {
            proto,
            uffd,
            dirty_track,
            has_init,
            ..
        } if proto == wire::PROTO => (Features { uffd, dirty_track }, has_init),
        Wire::Welcome { proto, .. } => {
            return Err(back(format!(
                "the stasis on {dest} speaks migration protocol {proto}, this one {}",
                wire::PROTO
            )))
        }
        Wire::Refuse { reason } => return Err(back(reason)),
        other => return Err(back(format!("{dest} answered {other:?}"))),
    };
    let mode = mode::choose(o.mode, here, there, dest).map_err(back)?;
    let spec = api::load_spec(&root.workload(name)).map_err(api_back)?;
    let start = Wire::Start {
        mode,
        spec: Box::new(spec),
    };
    // From here the target may hold a claim on the name, whatever happens to this channel.
    reached.claimed = Some(token.clone());
    if wire::send(&mut &ctl.sock, &start).is_err() {
        return Err(back(ctl.why_closed()));
    }
    let pages = ssh
        .open(
            dest,
            &with(&stasis, &["__migrate-pages", name.as_str(), &token]),
        )
        .map_err(|e| back(format!("run ssh: {e}")))?;
    let mut pages = pages;
    // Nothing comes on the page channel before the target says it is prepared: should it
    // end first (its ssh died), the target would wait for it in vain, and so would we.
    if let Err(why) = first_readable(&ctl.sock, &pages.sock) {
        return Err(back(format!("{why} ({})", pages.why_closed())));
    }
    match wire::recv(&mut &ctl.sock) {
        Ok(Some(Wire::Prepared)) => {}
        Ok(Some(Wire::Refuse { reason })) => {
            return Err(back(format!("{reason} ({})", pages.why_closed())))
        }
        Ok(Some(other)) => return Err(back(format!("{dest} answered {other:?}"))),
        _ => return Err(back(ctl.why_closed())),
    }
    let connect_ms = ms(t0);
    let mut run = Run {
        root,
        name,
        dest,
        mode,
        ctl,
        pages,
        has_init,
        init_path,
        phases: Phases {
            connect_ms,
            ..Default::default()
        },
        image_bytes: 0,
    };
    reached.asked = true;
    let r = run.hand_over(o, criu, progress);
    let (pid, frozen_at, running_at, page_bytes) = r?;
    Ok(Summary {
        name: name.to_string(),
        dest: dest.to_string(),
        mode,
        phases: run.phases,
        downtime_ms: running_at.saturating_sub(frozen_at) as f64,
        total_ms: ms(t0),
        image_bytes: run.image_bytes,
        page_bytes,
        pid,
    })
}

/// Waits until `ctl` has something to read; an error if `pages` ends (or speaks) first.
fn first_readable(
    ctl: &std::os::unix::net::UnixStream,
    pages: &std::os::unix::net::UnixStream,
) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    loop {
        let mut p = [
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
            PollFd::new(pages.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut p, PollTimeout::NONE) {
            Ok(_) if p[0].any() == Some(true) => return Ok(()),
            Ok(_) if p[1].any() == Some(true) => {
                return Err("the page channel closed before the target was prepared".into())
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}

/// The remote stasis command line, as words (`stasis` when empty).
fn remote_words(cmd: &str) -> Vec<String> {
    let w: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    if w.is_empty() {
        vec!["stasis".into()]
    } else {
        w
    }
}

fn with(base: &[String], more: &[&str]) -> Vec<String> {
    let mut v = base.to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

struct Run<'a> {
    root: &'a StateRoot,
    name: &'a WorkloadName,
    dest: &'a str,
    mode: Mode,
    ctl: Channel,
    pages: Channel,
    has_init: bool,
    init_path: String,
    phases: Phases,
    image_bytes: u64,
}

/// The source monitor's request: its reply, and the step link.
struct Monitor {
    conn: OwnedFd,
    link: OwnedFd,
}

impl Monitor {
    fn step(&self) -> Option<Step> {
        match protocol::recv::<Step>(self.link.as_fd()) {
            Ok(Some((s, _))) => Some(s),
            _ => None,
        }
    }

    fn send(&self, s: &Step) -> bool {
        protocol::send(self.link.as_fd(), s, &[]).is_ok()
    }

    /// The monitor's final word (an error's message, or what it replied).
    fn reply(&self) -> Result<Reply, String> {
        match api::next_reply(&self.conn) {
            Ok(Reply::Error { message, .. }) => Err(message),
            Ok(r) => Ok(r),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Run<'_> {
    /// Dump, copy, restore, commit. Returns the target's pid, when the job froze, when it ran
    /// on the target (ms since the epoch), and the bytes of memory moved over the page channel.
    fn hand_over(
        &mut self,
        o: &Opts,
        criu: crate::criu::Criu,
        progress: Progress,
    ) -> Result<(i32, u64, u64, u64), MigrateError> {
        let (ours, theirs) =
            protocol::seqpacket_pair().map_err(|e| back(format!("socketpair: {e}")))?;
        let conn = api::connect(self.root, self.name).map_err(api_back)?;
        // From the dump on, the job is frozen until the commit: bounded (see `deadline`).
        let channels = [&self.ctl.sock, &self.pages.sock]
            .iter()
            .map(|s| s.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| back(format!("dup a channel: {e}")))?;
        let watchdog = Watchdog::arm(o.timeout.unwrap_or(deadline::DEFAULT), move || {
            for c in &channels {
                // Already closed is as good: whatever waits on it has its answer.
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        })
        .map_err(|e| back(format!("start the migration's watchdog: {e}")))?;
        let timed = |why: String| match watchdog.fired(self.dest) {
            Some(t) => format!("{t}; {why}"),
            None => why,
        };
        let req = Request::MigrateOut {
            opts: OutOpts {
                dest: self.dest.to_string(),
                mode: self.mode,
                options: o.options.clone(),
                criu: Some(criu),
            },
        };
        protocol::send(
            conn.as_fd(),
            &req,
            &[self.pages.sock.as_raw_fd(), theirs.as_raw_fd()],
        )
        .map_err(|e| back(format!("send to the monitor: {e}")))?;
        drop(theirs);
        let mon = Monitor { conn, link: ours };
        progress("dump", 0);
        let t = Instant::now();
        let (dir, manifest, frozen_at) = match mon.step() {
            Some(Step::Dumped {
                dir,
                manifest,
                frozen_at,
            }) => (dir, manifest, frozen_at),
            _ => {
                let why = timed(
                    mon.reply()
                        .err()
                        .unwrap_or_else(|| "the monitor did not dump".into()),
                );
                self.tell_target_abort(&why);
                return Err(back(why));
            }
        };
        self.phases.dump_ms = ms(t);
        // From here the job is frozen: every failure must reach the monitor as an abort.
        let t = Instant::now();
        progress("copy", 0);
        if let Err(why) = self.send_files(&dir, &manifest, progress) {
            return Err(self.abort(&mon, timed(why)));
        }
        self.phases.copy_ms = ms(t);
        let t = Instant::now();
        progress("restore", self.image_bytes);
        let ready = match self.ctl_step() {
            Ok(Step::Ready) => Ok(()),
            Ok(Step::Failed { reason }) | Ok(Step::Abort { reason }) => {
                Err(format!("restore on {}: {reason}", self.dest))
            }
            Ok(other) => Err(format!("{} answered {other:?}", self.dest)),
            Err(why) => Err(why),
        };
        // The commit claims the migration from the watchdog, or finds that it timed out.
        let ready = ready.and_then(|()| {
            if watchdog.try_commit() {
                Ok(())
            } else {
                Err(format!("{} said ready too late", self.dest))
            }
        });
        if let Err(why) = ready {
            return Err(self.abort(&mon, timed(why)));
        }
        self.phases.restore_ms = ms(t);
        let t = Instant::now();
        progress("switch", self.image_bytes);
        if !mon.send(&Step::Commit) || mon.step() != Some(Step::Committed) {
            let why = mon
                .reply()
                .err()
                .unwrap_or_else(|| "the source's monitor could not record the hand-over".into());
            self.tell_target_abort(&why);
            return Err(back(why));
        }
        // Committed: the job is the target's from here on.
        let sent = wire::send(&mut &self.ctl.sock, &Wire::Step { step: Step::Commit });
        let running = match sent
            .map_err(|e| e.to_string())
            .and_then(|()| self.ctl_step())
        {
            Ok(Step::Running {
                pid,
                page_bytes,
                resumed_ms_ago,
                ..
            }) => Ok((pid, page_bytes, resumed_ms_ago)),
            Ok(other) => Err(format!("{} answered {other:?}", self.dest)),
            Err(why) => Err(why),
        };
        let answered_at = now_ms();
        self.phases.switch_ms = ms(t);
        let (pid, streamed, resumed_ago) = match running {
            Ok(r) => r,
            Err(why) => match self.resume_commit(o) {
                Ok(pid) => (pid, 0, 0.0),
                Err(e) => {
                    let _ = mon.reply();
                    return Err(MigrateError::AfterHandOver(format!(
                        "{} was handed over to {} but its start there is not confirmed ({why}; {e}): check `stasis ps` there",
                        self.name, self.dest
                    )));
                }
            },
        };
        // The job ran from the moment CRIU resumed it, not from when the word of it came
        // (the target ends CRIU and takes the job over first): never before the commit.
        let running_at =
            answered_at.saturating_sub(resumed_ago.clamp(0.0, self.phases.switch_ms) as u64);
        let t = Instant::now();
        let mut page_bytes = 0;
        if self.mode == Mode::PostCopy {
            progress("pages", self.image_bytes);
            let done = self.ctl_step();
            let reply = mon.reply();
            if let Ok(Reply::Migrated { lazy_bytes }) = reply {
                page_bytes = lazy_bytes;
            }
            match done {
                Ok(Step::PagesDone { ok: true, .. }) => {}
                Ok(Step::PagesDone { reason, .. }) => {
                    return Err(MigrateError::AfterHandOver(format!(
                        "{} was handed over to {} but its memory could not follow ({reason}); the target killed it rather than run it on missing pages",
                        self.name, self.dest
                    )))
                }
                _ => {
                    return Err(MigrateError::AfterHandOver(format!(
                        "{} runs on {} but the end of its memory transfer was not confirmed ({}): check `stasis ps` there",
                        self.name,
                        self.dest,
                        reply.err().unwrap_or_else(|| "the connection closed".into())
                    )))
                }
            }
            self.phases.pages_ms = ms(t);
        } else {
            let _ = mon.reply();
            page_bytes = streamed;
        }
        Ok((pid, frozen_at, running_at, page_bytes))
    }

    /// The next step the target sends, or why none came.
    fn ctl_step(&mut self) -> Result<Step, String> {
        match wire::recv(&mut &self.ctl.sock) {
            Ok(Some(Wire::Step { step })) => Ok(step),
            Ok(Some(Wire::Refuse { reason })) => Err(reason),
            Ok(Some(other)) => Err(format!("{} answered {other:?}", self.dest)),
            Ok(None) | Err(_) => Err(self.ctl.why_closed()),
        }
    }

    fn tell_target_abort(&self, why: &str) {
        let _ = wire::send(
            &mut &self.ctl.sock,
            &Wire::Step {
                step: Step::Abort {
                    reason: why.to_string(),
                },
            },
        );
    }

    /// Before the commit: the monitor resumes the job, the target drops what it restored.
    fn abort(&self, mon: &Monitor, why: String) -> MigrateError {
        self.tell_target_abort(&why);
        mon.send(&Step::Abort {
            reason: why.clone(),
        });
        match mon.reply() {
            // The monitor's word says what became of the job; the target's failure may
            // have reached it only as its effect ("the page channel closed before the
            // target was ready"), so the cause goes first.
            Err(m) if !m.contains(&why) => back(format!("{why}; {m}")),
            Err(m) => back(m),
            Ok(_) => back(why),
        }
    }

    /// The images, then the job's files: log, events, exec sessions (and the init copy where
    /// the target lacks it).
    fn send_files(
        &mut self,
        dir: &Path,
        manifest: &crate::store::generations::Manifest,
        progress: Progress,
    ) -> Result<(), String> {
        let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) && !n.starts_with('.') {
                files.push((format!("images/{n}"), e.path()));
            }
        }
        let wd: WorkloadDir = self.root.workload(self.name);
        files.extend(job_files(&wd));
        if !self.has_init {
            files.push(("init".into(), self.init_path.clone().into()));
        }
        let ctl = &self.ctl.sock;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, ctl);
        for (rel, path) in &files {
            if !wire::allowed(rel) {
                continue;
            }
            let n = wire::send_file(&mut w, rel, path)
                .map_err(|e| format!("send {}: {e}", path.display()))?;
            self.image_bytes += n;
            progress("copy", self.image_bytes);
        }
        let done = Wire::FilesDone {
            manifest: Box::new(manifest.clone()),
        };
        wire::send(&mut w, &done).map_err(|e| format!("send to {}: {e}", self.dest))?;
        drop(w);
        Ok(())
    }

    /// The commit could not be told over the control channel: a fresh ssh tells the target's
    /// monitor, which waits for it a while (see `monitor::migrate::GRACE`).
    fn resume_commit(&mut self, o: &Opts) -> Result<i32, String> {
        let ssh = Ssh::new(o.ssh.as_deref());
        let stasis = remote_words(&o.remote_stasis);
        let mut c = ssh
            .open(
                self.dest,
                &with(&stasis, &["__migrate-resume", self.name.as_str()]),
            )
            .map_err(|e| format!("run ssh: {e}"))?;
        wire::send(&mut &c.sock, &Wire::Step { step: Step::Commit }).map_err(|e| e.to_string())?;
        match wire::recv(&mut &c.sock) {
            Ok(Some(Wire::Step {
                step: Step::Running { pid, .. },
            })) => Ok(pid),
            Ok(Some(Wire::Refuse { reason })) => Err(reason),
            Ok(Some(other)) => Err(format!("{other:?}")),
            _ => Err(c.why_closed()),
        }
    }
}

/// The job's own files to move: the log and its segments, the events, the exec sessions'
/// records and logs.
fn job_files(wd: &WorkloadDir) -> Vec<(String, std::path::PathBuf)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&wd.dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if wire::allowed(&n) && n != "init" {
                v.push((n, e.path()));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(wd.exec_dir()) {
        for e in rd.flatten() {
            let n = format!("exec/{}", e.file_name().to_string_lossy());
            if wire::allowed(&n) {
                v.push((n, e.path()));
            }
        }
    }
    v
}
