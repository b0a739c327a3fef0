//! The state root: where each workload's spec, state, log and checkpoints live, and how a
//! reader tells what the files say from what really runs.
//!
//! Layout (`--root`, `STASIS_ROOT`, default `/var/lib/stasis`):
//! ```text
//! ROOT/workloads/NAME/spec.json     the resolved spec
//!                    state.json     status, pids, exit, counters (atomic writes)
//!                    lock           flock held by the live monitor for its whole life
//!                    log            framed stdout/stderr (see `log`)
//!                    events.jsonl   restarts, restores, checkpoints
//!                    checkpoints/N  one directory per generation
//!                    exec/ID.json   exec sessions
//! RUNTIME/NAME.sock                 the monitor's socket (RUNTIME = /run/stasis or ROOT/run)
//! ```
//! The monitor's flock is the ground truth for "is a monitor alive": the kernel drops it when
//! the monitor dies, however it dies, so a reader never trusts a stale pid.

use crate::exit::ExitStatus;
use crate::store::atomic::{self, FsError};
use crate::store::name::WorkloadName;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/stasis";
/// The runtime directory used with the default state root.
pub const DEFAULT_RUNTIME: &str = "/run/stasis";

/// Errors reading or changing workload state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no such workload: {0}")]
    NotFound(WorkloadName),
    #[error("a workload named {0} already exists")]
    Exists(WorkloadName),
    #[error("state of {name} is unreadable ({path}): {msg}")]
    Corrupt {
        name: WorkloadName,
        path: PathBuf,
        msg: String,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The state root and its runtime directory.
#[derive(Debug, Clone)]
pub struct StateRoot {
    pub root: PathBuf,
    pub runtime: PathBuf,
}

impl StateRoot {
    /// Picks the root: the flag, else `STASIS_ROOT`, else the default.
    pub fn from_flag(flag: Option<PathBuf>) -> StateRoot {
        let root = flag
            .or_else(|| {
                std::env::var_os("STASIS_ROOT")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let root = std::path::absolute(&root).unwrap_or(root);
        let runtime = if root == Path::new(DEFAULT_ROOT) {
            PathBuf::from(DEFAULT_RUNTIME)
        } else {
            root.join("run")
        };
        StateRoot { root, runtime }
    }

    /// Creates the root's directories (mode 0700: specs and logs may hold secrets).
    pub fn ensure(&self) -> Result<(), FsError> {
        atomic::mkdir_p(&self.root.join("workloads"), 0o700)?;
        atomic::mkdir_p(&self.runtime, 0o700)
    }

    /// The directory of workload `name` (which may not exist). Only a validated name makes a
    /// path, so nothing outside `ROOT/workloads` can be named.
    pub fn workload(&self, name: &WorkloadName) -> WorkloadDir {
        WorkloadDir {
            name: name.clone(),
            dir: self.root.join("workloads").join(name.as_str()),
            socket: self.runtime.join(format!("{name}.sock")),
        }
    }

    /// Names of all workloads, sorted (directories whose names are not valid names, such as
    /// an import's staging directory, are not workloads).
    pub fn names(&self) -> Vec<WorkloadName> {
        let mut v: Vec<WorkloadName> = fs::read_dir(self.root.join("workloads"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| WorkloadName::parse(&n).ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A short stable key for this root, used to keep cgroups of two roots apart.
    pub fn key(&self) -> String {
        let s = self.root.to_string_lossy();
        let mut h: u32 = 0x811c9dc5;
        for b in s.bytes() {
            h = (h ^ b as u32).wrapping_mul(0x01000193);
        }
        format!("{h:08x}")
    }
}

/// Paths of one workload.
#[derive(Debug, Clone)]
pub struct WorkloadDir {
    pub name: WorkloadName,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl WorkloadDir {
    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    pub fn exec_dir(&self) -> PathBuf {
        self.dir.join("exec")
    }
    /// Where CRIU writes the restored init's pid (in the runtime directory, beside the
    /// socket).
    pub fn restore_pidfile(&self) -> PathBuf {
        self.socket
            .with_file_name(format!("{}.restore.pid", self.name))
    }
    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }
    pub fn criu_logs(&self) -> PathBuf {
        self.dir.join("criu")
    }
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the directory; fails with `Exists` if the name is taken (mkdir is the atomic
    /// claim on a name, so two concurrent `run --name x` never both succeed).
    pub fn create(&self) -> Result<(), StateError> {
        match fs::create_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(self.name.clone()))
            }
            Err(e) => Err(FsError::new("mkdir", &self.dir, e).into()),
        }
    }

    /// Claims the name with a directory prepared elsewhere (`staged`, on the same
    /// filesystem), renamed into place only if the name is free (`RENAME_NOREPLACE`): the
    /// record appears with all it holds at once, so a claimer killed midway leaves either
    /// no record or a whole one, never a bare directory. `Exists` if the name is taken.
    pub fn create_from(&self, staged: &Path) -> Result<(), StateError> {
        let cwd = nix::fcntl::AT_FDCWD;
        match nix::fcntl::renameat2(
            cwd,
            staged,
            cwd,
            &self.dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EEXIST) | Err(nix::errno::Errno::ENOTEMPTY) => {
                Err(StateError::Exists(self.name.clone()))
            }
            Err(e) => Err(FsError::new("rename", &self.dir, e.into()).into()),
        }
    }

    /// Removes the record: renamed aside first (`workloads/.gone-RANDOM`, never a workload
    /// name), then deleted there. A reader sees the whole record or none: deleted in place,
    /// file by file, it was a directory with some files and not others, which a reader (or an
    /// `rm`, or an abort) could take for a record whose monitor had died, and write to. A
    /// record already gone is not an error.
    pub fn remove_all(&self) -> Result<(), FsError> {
        let tag: String = crate::sys::random_bytes::<8>()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_else(|_| format!("{}", std::process::id()));
        let aside = self.dir.with_file_name(format!(".gone-{tag}"));
        match fs::rename(&self.dir, &aside) {
            Ok(()) => fs::remove_dir_all(&aside).map_err(|e| FsError::new("remove", &aside, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::new("rename", &self.dir, e)),
        }
    }

    /// Reads state.json.
    pub fn load(&self) -> Result<WorkloadState, StateError> {
        let p = self.state_path();
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(self.name.clone()))
            }
            Err(e) => return Err(FsError::new("read", &p, e).into()),
        };
        serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
            name: self.name.clone(),
            path: p,
            msg: e.to_string(),
        })
    }

    /// Writes state.json atomically.
    pub fn save(&self, st: &WorkloadState) -> Result<(), StateError> {
        Ok(atomic::write_json_atomic(&self.state_path(), st)?)
    }

    /// Saves the state whole but without waiting for the disk (see
    /// [`atomic::write_atomic_quick`]).
    pub fn save_quick(&self, st: &WorkloadState) -> Result<(), StateError> {
        let path = self.state_path();
        let data = atomic::to_json(&path, st)?;
        Ok(atomic::write_atomic_quick(&path, &data)?)
    }

    /// Opens the lock file (creating it).
    pub fn open_lock(&self) -> Result<File, StateError> {
        self.open_lock_as(true)
    }

    /// Opens the lock file, creating it only if `create`. Readers never create it: the
    /// monitor (or `rm`) removes a record file by file while it holds the lock, and a reader
    /// that made a fresh lock file there would find it free, take the record for one whose
    /// monitor died, and write a state into the directory being removed: a ghost record
    /// ("monitor lost before the workload started") that `rmdir` then fails on.
    fn open_lock_as(&self, create: bool) -> Result<File, StateError> {
        let p = self.lock_path();
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| FsError::new("open", &p, e).into())
    }

    /// Takes the workload lock if no live process holds it. `None` means a monitor is alive.
    pub fn try_lock(&self) -> Result<Option<File>, StateError> {
        self.try_lock_as(true)
    }

    /// [`WorkloadDir::try_lock`] for a reader: `None` also when there is no lock file (the
    /// record is being made or removed, and either way not this reader's to change).
    pub fn try_lock_existing(&self) -> Result<Option<File>, StateError> {
        match self.try_lock_as(false) {
            Err(StateError::Fs(e)) if e.source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other,
        }
    }

    fn try_lock_as(&self, create: bool) -> Result<Option<File>, StateError> {
        let f = self.open_lock_as(create)?;
        // A plain flock, not nix's Flock guard: the lock must stay with the monitor when the
        // CLI that took it closes its own copy after forking, and a guard unlocks on drop.
        match crate::sys::flock_try_exclusive(f.as_fd()) {
            Ok(true) => Ok(Some(f)),
            Ok(false) => Ok(None),
            Err(e) => Err(FsError::new("flock", &self.lock_path(), e).into()),
        }
    }

    /// Takes the workload lock for a new monitor, waiting briefly for readers that hold it
    /// for a moment (reconciling); `None` when a live monitor holds it.
    pub fn lock_for_monitor(&self) -> Result<Option<File>, StateError> {
        for _ in 0..100 {
            if let Some(f) = self.try_lock()? {
                return Ok(Some(f));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(None)
    }

    /// True when a live monitor holds the lock. Probes with a shared lock, so concurrent
    /// readers never disturb each other or a CLI about to start a monitor.
    pub fn monitor_alive(&self) -> bool {
        let Ok(f) = self.open_lock_as(false) else {
            return false;
        };
        matches!(crate::sys::flock_try_shared(f.as_fd()), Ok(false))
    }
}

/// A process named by pid and start time, so a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcRef {
    /// Names the live process `pid`, if it exists.
    pub fn of(pid: i32) -> Option<ProcRef> {
        crate::sys::proc_start_time(pid).map(|start_time| ProcRef { pid, start_time })
    }

    /// True when this very process still exists and is not a zombie.
    pub fn alive(&self) -> bool {
        crate::sys::proc_start_time(self.pid) == Some(self.start_time)
            && !matches!(
                crate::sys::proc_state(self.pid),
                Some('Z') | Some('X') | None
            )
    }
}

/// The lifecycle of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, not yet started.
    Created,
    Running,
    /// Dumped to a generation and stopped; `restore` continues it.
    Checkpointed,
    /// A restore is under way.
    Restoring,
    /// Ended (see `exit`).
    Exited,
    /// Ended and the exit policy gave up on it (see `error`).
    Failed,
    /// Moved to another host by `stasis migrate` (`note` says where); nothing runs here.
    Migrated,
}

impl Status {
    /// True for states in which no process of the workload runs or will run by itself.
    pub fn is_final(&self) -> bool {
        matches!(self, Status::Exited | Status::Failed | Status::Migrated)
    }
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// None when the exit could not be observed (the monitor was lost).
    pub status: Option<ExitStatus>,
    /// The code `run` and `wait` return.
    pub code: i32,
    /// The kernel's OOM killer ended it (the memory limit was hit).
    #[serde(default)]
    pub oom_killed: bool,
    pub at: u64,
    /// Why, in words, when the status alone does not say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The contents of state.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadState {
    pub version: u32,
    pub name: WorkloadName,
    pub status: Status,
    pub created_at: u64,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub monitor: Option<ProcRef>,
    /// The container's init (PID 1 inside), as seen from the host.
    #[serde(default)]
    pub init: Option<ProcRef>,
    #[serde(default)]
    pub exit: Option<ExitInfo>,
    /// The last error (a failed start, a failed restore, why it ended `failed`).
    #[serde(default)]
    pub error: Option<String>,
    /// Something the reader should know that the status does not say ("monitor lost").
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub checkpoints: u32,
    #[serde(default)]
    pub restores: u32,
    #[serde(default)]
    pub restarts: u32,
    /// The generation the running process was last dumped to or restored from.
    #[serde(default)]
    pub generation: Option<u32>,
    /// The user asked it to stop; an exit policy must not bring it back.
    #[serde(default)]
    pub stop_requested: bool,
    /// A restore started then (ms since the epoch) and has not finished: CRIU's pidfile names
    /// the restored init if the monitor died meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restoring_since: Option<u64>,
    /// Bytes of output that could not be written to the log (a full disk).
    #[serde(default)]
    pub log_dropped: u64,
    /// Files the job writes that had moved on since the generation of its last restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diverged: Vec<crate::store::divergence::Diverged>,
}

/// Current state.json format.
pub const STATE_VERSION: u32 = 1;

impl WorkloadState {
    /// A freshly created workload.
    pub fn new(name: &WorkloadName) -> WorkloadState {
        WorkloadState {
            version: STATE_VERSION,
            name: name.clone(),
            status: Status::Created,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            monitor: None,
            init: None,
            exit: None,
            error: None,
            note: None,
            checkpoints: 0,
            restores: 0,
            restarts: 0,
            generation: None,
            stop_requested: false,
            restoring_since: None,
            log_dropped: 0,
            diverged: Vec::new(),
        }
    }

    /// Records an exit.
    pub fn set_exited(&mut self, exit: ExitInfo) {
        self.status = Status::Exited;
        self.finished_at = Some(exit.at);
        self.exit = Some(exit);
        self.init = None;
    }
}

/// What a reader learns about a workload: its state, reconciled with what runs.
#[derive(Debug, Clone)]
pub struct Observed {
    pub state: WorkloadState,
    pub monitor_alive: bool,
}

impl Observed {
    /// Its container runs but no monitor supervises it: a new monitor can adopt it.
    pub fn orphaned(&self) -> bool {
        !self.monitor_alive
            && self.state.status == Status::Running
            && self.state.init.is_some_and(|i| i.alive())
    }
}

/// Reads a workload's state and reconciles it with reality: when no monitor holds the lock,
/// a `running` workload is checked by pid and start time; what died is recorded (so the next
/// reader sees it too), and nothing is dropped.
pub fn observe(wd: &WorkloadDir) -> Result<Observed, StateError> {
    if !wd.exists() {
        return Err(StateError::NotFound(wd.name.clone()));
    }
    // A new workload has no state.json until its monitor writes the first one.
    let load = || match wd.load() {
        Err(StateError::NotFound(_)) if wd.exists() => Ok(WorkloadState::new(&wd.name)),
        other => other,
    };
    if wd.monitor_alive() {
        return Ok(Observed {
            state: load()?,
            monitor_alive: true,
        });
    }
    // No monitor: reconcile under the exclusive lock. If someone else holds it right now (a
    // monitor starting, another reader reconciling), or there is none (the record is being
    // removed), report what the file says.
    let Some(_lock) = wd.try_lock_existing()? else {
        let st = load()?;
        let alive = wd.monitor_alive();
        return Ok(Observed {
            state: st,
            monitor_alive: alive,
        });
    };
    let mut st = load()?;
    let restored = (st.status == Status::Restoring)
        .then(|| restored_init(wd))
        .flatten();
    if st.status == Status::Restoring {
        // The fresh /dev/shm its restore mounted on the host (the container, if restored,
        // holds its own bind of it).
        if let Some(runtime) = wd.socket.parent() {
            crate::container::shm::detach_leftover(runtime, wd.name.as_str());
        }
    }
    let restorable =
        st.status == Status::Restoring && !crate::store::generations::list(wd).is_empty();
    let mut changed = reconcile_dead_monitor(&mut st, restored, restorable);
    // Dumps CRIU finished after the monitor died are generations like any other; one that
    // ended the job (no --leave-running) leaves it checkpointed, as was asked.
    for n in crate::store::generations::recover_temps(wd) {
        changed = true;
        st.generation = Some(n);
        st.checkpoints += 1;
        let stopped = crate::store::generations::pick(wd, Some(n))
            .and_then(|g| g.manifest(wd.name.as_str()))
            .is_ok_and(|m| !m.leave_running);
        let dead = !st.init.is_some_and(|i| i.alive());
        if stopped && dead {
            st.status = Status::Checkpointed;
            st.init = None;
            st.exit = None;
            st.finished_at = None;
            st.note = Some(format!(
                "checkpointed (generation {n}) by CRIU after its monitor died"
            ));
        }
    }
    // A reader reports what it found even when it cannot record it (a full disk): the next
    // reader reconciles again.
    if changed {
        let _ = wd.save(&st);
    }
    Ok(Observed {
        state: st,
        monitor_alive: false,
    })
}

/// The init a restore interrupted by its monitor's death left running: CRIU's pidfile names
/// it (the lock, which CRIU held, is free again, so CRIU is done).
fn restored_init(wd: &WorkloadDir) -> Option<ProcRef> {
    let pid: i32 = fs::read_to_string(wd.restore_pidfile())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::store::init_copies::runs_init(pid)
        .then(|| ProcRef::of(pid))
        .flatten()
}

/// Adjusts `st` for a monitor that is gone; returns true if anything changed. `restored` is
/// the container an interrupted restore left running, if any; `restorable`: the workload has
/// a generation to come back from.
pub fn reconcile_dead_monitor(
    st: &mut WorkloadState,
    restored: Option<ProcRef>,
    restorable: bool,
) -> bool {
    const LOST: &str = "monitor lost";
    if st.status == Status::Restoring {
        st.restoring_since = None;
        st.monitor = None;
        match restored {
            Some(init) => {
                st.status = Status::Running;
                st.init = Some(init);
                st.exit = None;
                st.note = Some(format!(
                    "{LOST} during a restore: the restored workload runs as pid {} without supervision",
                    init.pid
                ));
            }
            None if restorable => {
                // CRIU finished without a restored tree: the generations are as they were.
                st.status = Status::Checkpointed;
                st.note = Some(format!("{LOST} during a restore, which did not complete"));
            }
            None => {
                // Nothing to come back from (a migration's restore, whose images were never
                // a generation here): "checkpointed" would promise a restore that cannot be.
                st.status = Status::Failed;
                st.init = None;
                st.error = Some(format!(
                    "{LOST} during a restore, which did not complete; there is no generation to restore it from"
                ));
            }
        }
        return true;
    }
    match st.status {
        Status::Running | Status::Restoring => {
            match st.init {
                Some(init) if init.alive() => {
                    let note = format!(
                        "{LOST}: the workload still runs as pid {} without supervision",
                        init.pid
                    );
                    if st.note.as_deref() != Some(note.as_str()) {
                        st.note = Some(note);
                        st.monitor = None;
                        return true;
                    }
                    false
                }
                _ => {
                    st.set_exited(ExitInfo {
                    status: None,
                    code: crate::exit::CODE_STASIS_ERROR,
                    oom_killed: false,
                    at: now_ms(),
                    reason: Some(format!("{LOST}: the workload ended while unsupervised; its exit status is unknown")),
                });
                    st.note = Some(LOST.to_string());
                    st.monitor = None;
                    true
                }
            }
        }
        Status::Created => {
            st.set_exited(ExitInfo {
                status: None,
                code: crate::exit::CODE_STASIS_ERROR,
                oom_killed: false,
                at: now_ms(),
                reason: Some(format!("{LOST} before the workload started")),
            });
            st.monitor = None;
            true
        }
        Status::Checkpointed | Status::Exited | Status::Failed | Status::Migrated => {
            if st.monitor.is_some() {
                st.monitor = None;
                return true;
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workload `a`, made, in a fresh root.
    fn made() -> (tempfile::TempDir, WorkloadDir) {
        let (d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        (d, w)
    }

    fn root() -> (tempfile::TempDir, StateRoot) {
        let d = tempfile::tempdir().unwrap();
        let r = StateRoot::from_flag(Some(d.path().to_path_buf()));
        r.ensure().unwrap();
        (d, r)
    }

    #[test]
    fn runtime_dir_follows_the_root() {
        let r = StateRoot::from_flag(Some("/x/y".into()));
        assert_eq!(r.runtime, Path::new("/x/y/run"));
        let d = StateRoot::from_flag(Some(DEFAULT_ROOT.into()));
        assert_eq!(d.runtime, Path::new(DEFAULT_RUNTIME));
        assert_ne!(r.key(), d.key());
    }

    #[test]
    fn create_claims_a_name_once() {
        let (_d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        assert!(matches!(w.create(), Err(StateError::Exists(_))));
        assert_eq!(r.names(), vec!["a"]);
    }

    /// Issue 11: a migration's claim appears whole or not at all, and never replaces a
    /// record, not even an empty directory.
    #[test]
    fn item_11_a_staged_claim_takes_a_free_name_only() {
        let (_d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        let staged = w.dir.with_file_name(".claim-x");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("spec.json"), b"{}").unwrap();
        w.create_from(&staged).unwrap();
        assert!(w.spec_path().is_file() && !staged.exists());
        assert_eq!(r.names(), vec!["a"]);
        let b = r.workload(&crate::store::name::n("b"));
        b.create().unwrap();
        fs::create_dir(&staged).unwrap();
        assert!(matches!(b.create_from(&staged), Err(StateError::Exists(_))));
        assert!(staged.is_dir());
    }

    #[test]
    fn save_and_load() {
        let (_d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Running;
        w.save(&st).unwrap();
        assert_eq!(w.load().unwrap(), st);
        assert!(matches!(
            r.workload(&crate::store::name::n("b")).load(),
            Err(StateError::NotFound(_))
        ));
    }

    #[test]
    fn old_state_files_still_load() {
        // a state.json from before the counters existed
        let (_d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        fs::write(
            w.state_path(),
            r#"{"version":1,"name":"a","status":"exited","created_at":1}"#,
        )
        .unwrap();
        let st = w.load().unwrap();
        assert_eq!(st.status, Status::Exited);
        assert_eq!(st.restores, 0);
    }

    #[test]
    fn corrupt_state_is_reported_with_its_path() {
        let (_d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        fs::write(w.state_path(), "{nope").unwrap();
        let e = w.load().unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }

    #[test]
    fn lock_is_exclusive_between_descriptions() {
        let (_d, r) = root();
        let w = r.workload(&crate::store::name::n("a"));
        w.create().unwrap();
        let held = w.try_lock().unwrap().expect("free lock");
        assert!(w.try_lock().unwrap().is_none());
        assert!(w.monitor_alive());
        drop(held);
        assert!(!w.monitor_alive());
    }

    /// A reader that meets a record being removed (its lock already unlinked by the monitor
    /// that holds it) writes nothing there: before, it made a fresh lock, found it free, and
    /// recorded "monitor lost before the workload started" in the half-removed directory.
    #[test]
    fn a_reader_never_writes_into_a_record_being_removed() {
        let (_d, w) = made();
        let held = w.try_lock().unwrap().expect("free lock");
        w.save(&WorkloadState::new(&w.name)).unwrap();
        // the monitor's remove_dir_all, part way: the lock and the state are gone
        fs::remove_file(w.lock_path()).unwrap();
        fs::remove_file(w.state_path()).unwrap();
        assert!(!w.monitor_alive());
        let seen = observe(&w).unwrap();
        assert!(!seen.monitor_alive);
        let left: Vec<_> = fs::read_dir(&w.dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "a reader wrote {left:?}");
        drop(held);
        fs::remove_dir(&w.dir).unwrap();
    }

    /// A record whose monitor died before it wrote the first state (only the CLI's lock is
    /// there) is reconciled as before: exited, "monitor lost before the workload started".
    #[test]
    fn a_record_whose_monitor_never_wrote_a_state_is_reconciled() {
        let (_d, w) = made();
        drop(w.try_lock().unwrap().expect("free lock"));
        let seen = observe(&w).unwrap();
        assert_eq!(seen.state.status, Status::Exited);
        assert!(seen
            .state
            .exit
            .unwrap()
            .reason
            .unwrap()
            .contains("before the workload started"));
    }

    #[test]
    fn a_removed_record_goes_whole_and_leaves_nothing_aside() {
        let (_d, w) = made();
        let held = w.try_lock().unwrap().expect("free lock");
        w.save(&WorkloadState::new(&w.name)).unwrap();
        w.remove_all().unwrap();
        drop(held);
        assert!(!w.exists());
        let left: Vec<_> = fs::read_dir(w.dir.parent().unwrap())
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // gone already: not an error
        w.remove_all().unwrap();
    }

    #[test]
    fn dead_monitor_with_dead_init_means_exited_unknown() {
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Running;
        st.init = Some(ProcRef {
            pid: i32::MAX,
            start_time: 1,
        });
        assert!(reconcile_dead_monitor(&mut st, None, true));
        assert_eq!(st.status, Status::Exited);
        let exit = st.exit.unwrap();
        assert_eq!(exit.status, None);
        assert!(exit.reason.unwrap().contains("monitor lost"));
    }

    #[test]
    fn dead_monitor_with_live_init_stays_running_with_a_note() {
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Running;
        st.init = ProcRef::of(std::process::id() as i32);
        assert!(reconcile_dead_monitor(&mut st, None, true));
        assert_eq!(st.status, Status::Running);
        assert!(st.note.as_deref().unwrap().contains("monitor lost"));
        // a second look changes nothing
        assert!(!reconcile_dead_monitor(&mut st, None, true));
    }

    #[test]
    fn an_interrupted_restore_is_found_or_rolled_back() {
        // item 7: the monitor died while CRIU restored; CRIU's pidfile names the new init
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Restoring;
        st.restoring_since = Some(1);
        let me = ProcRef::of(std::process::id() as i32);
        assert!(reconcile_dead_monitor(&mut st, me, true));
        assert_eq!(st.status, Status::Running);
        assert_eq!(st.init, me);
        assert!(st.note.as_deref().unwrap().contains("during a restore"));
        // no restored tree: back to checkpointed, nothing lost
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Restoring;
        assert!(reconcile_dead_monitor(&mut st, None, true));
        assert_eq!(st.status, Status::Checkpointed);
    }

    /// Issue 11: a migration's target whose monitor was killed mid-restore said
    /// "checkpointed" with no generation to restore from.
    #[test]
    fn item_11_an_interrupted_restore_without_a_generation_is_failed_not_checkpointed() {
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Restoring;
        assert!(reconcile_dead_monitor(&mut st, None, false));
        assert_eq!(st.status, Status::Failed);
        assert!(st.error.as_deref().unwrap().contains("no generation"));
    }

    #[test]
    fn checkpointed_survives_a_dead_monitor() {
        let mut st = WorkloadState::new(&crate::store::name::n("a"));
        st.status = Status::Checkpointed;
        reconcile_dead_monitor(&mut st, None, true);
        assert_eq!(st.status, Status::Checkpointed);
    }

    #[test]
    fn a_reused_pid_is_not_the_same_process() {
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let other = ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
    }
}
