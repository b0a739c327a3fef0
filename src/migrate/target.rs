//! The target's side, run by ssh: `stasis __migrate-target` (the control channel on its
//! stdin and stdout), `stasis __migrate-pages NAME TOKEN` (the page channel) and
//! `stasis __migrate-resume NAME` (a source that lost the control channel after its commit).
//!
//! `__migrate-target` checks that this host can take the job (protocol, name, CRIU and its
//! version, userfaultfd), claims the name, receives the files into a staging directory and
//! starts a new monitor that restores the job held (see `monitor::migrate`). Until the
//! source commits, every failure here removes the claimed record again.

use super::wire::{self, Wire, PROTO};
use crate::api;
use crate::criu::lazy;
use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::migrate::{InOpts, Mode, Step};
use crate::protocol::{self, Request};
use crate::store::name::WorkloadName;
use crate::store::state::{StateRoot, Status, WorkloadDir, WorkloadState};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `__migrate-pages` → `__migrate-target`: the page channel of migration `token` (its
/// socket goes with the message).
#[derive(serde::Serialize, serde::Deserialize)]
struct PagesHello {
    token: String,
}

/// A stream stage's manifest (a dot-name: not an image).
const STAGE_MANIFEST: &str = ".migrate-manifest.json";

/// In a claimed workload's directory: the token of the migration that claimed it, so an
/// abort the source sends later over `__migrate-resume` removes only what that migration
/// left (a dot-name: never sent on by a later migration).
const TOKEN_FILE: &str = ".migrate-token";

/// How long `__migrate-resume` waits, for an abort, until nothing holds the workload any
/// more (a monitor undoing its restore, a CRIU finishing): under the source's own wait.
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// The token file of a workload directory.
pub(crate) fn token_path(wd: &WorkloadDir) -> PathBuf {
    wd.dir.join(TOKEN_FILE)
}

/// Where a claim by migration `token` is prepared before it takes the name (a dot-name:
/// never a workload).
fn staged_claim(wd: &WorkloadDir, token: &str) -> WorkloadDir {
    WorkloadDir {
        name: wd.name.clone(),
        dir: wd.dir.with_file_name(format!(".claim-{token}")),
        socket: wd.socket.clone(),
    }
}

/// A token as [`super::token`] makes them (it names a directory here).
fn valid_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True when `wd` exists and was claimed by migration `token`.
fn claimed_by(wd: &WorkloadDir, token: &str) -> bool {
    std::fs::read_to_string(token_path(wd)).is_ok_and(|t| t == token)
}

/// How long the target waits for the page channel.
const PAGES_WAIT: Duration = Duration::from_secs(30);

/// This host's name, for messages the source shows.
fn host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "the target".into())
}

fn pages_socket(root: &StateRoot, name: &WorkloadName) -> PathBuf {
    root.runtime.join(format!("{name}.pages.sock"))
}

fn resume_socket(root: &StateRoot, name: &WorkloadName) -> PathBuf {
    root.runtime.join(format!("{name}.resume.sock"))
}

/// `stasis __migrate-target`: serves one migration on its stdin and stdout.
pub fn serve(root: &StateRoot) -> i32 {
    crate::sys::sigpipe(true);
    let mut inp = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    match receive(root, &mut inp, &mut out) {
        Ok(Some(taken)) => {
            drop(inp);
            taken.relay(out)
        }
        Ok(None) => 0,
        Err(reason) => {
            let _ = wire::send(&mut out, &Wire::Refuse { reason });
            CODE_STASIS_ERROR
        }
    }
}

/// A job whose files are here and whose monitor restores it.
struct Taken {
    link: OwnedFd,
    conn: OwnedFd,
}

/// Removes a claimed record unless disarmed (a monitor owns it then).
struct Claim {
    wd: WorkloadDir,
    armed: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.wd.remove_all() {
                eprintln!("stasis: {e}");
            }
        }
    }
}

fn receive(
    root: &StateRoot,
    inp: &mut impl BufRead,
    out: &mut impl Write,
) -> Result<Option<Taken>, String> {
    let host = host();
    let (name, token, init_path) = match wire::recv(inp) {
        Ok(Some(Wire::Hello {
            proto,
            name,
            token,
            init_path,
            ..
        })) => {
            if proto != PROTO {
                return Err(format!(
                    "the stasis on {host} speaks migration protocol {PROTO}, the source {proto}"
                ));
            }
            (name, token, init_path)
        }
        Ok(Some(_)) | Err(_) => return Err("expected a migration hello".into()),
        Ok(None) => return Ok(None),
    };
    let name = WorkloadName::parse(&name).map_err(|e| e.to_string())?;
    if !valid_token(&token) {
        return Err("a malformed migration token".into());
    }
    root.ensure().map_err(|e| format!("{host}: {e}"))?;
    let wd = root.workload(&name);
    if wd.dir.exists() {
        return Err(format!("a workload named {name} already exists on {host}"));
    }
    let criu = api::locate_criu(root).map_err(|e| format!("{host}: {e}"))?;
    if !lazy::new_enough(&criu.version) {
        return Err(format!(
            "criu {} on {host} is older than {}.{}, which migration needs",
            criu.version,
            lazy::MIN_VERSION.0,
            lazy::MIN_VERSION.1
        ));
    }
    let feats = criu.features(&[lazy::FEATURE_UFFD, lazy::FEATURE_DIRTY]);
    let from = std::env::var("SSH_CLIENT")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "the source".into());
    let welcome = Wire::Welcome {
        proto: PROTO,
        criu: criu.version.clone(),
        uffd: feats.first().is_some_and(|f| f.1),
        dirty_track: feats.get(1).is_some_and(|f| f.1),
        has_init: Path::new(&init_path).is_file(),
        from: from.clone(),
    };
    wire::send(out, &welcome).map_err(|e| e.to_string())?;
    let (mode, mut spec) = match wire::recv(inp) {
        Ok(Some(Wire::Start { mode, spec })) => (mode, spec),
        _ => return Ok(None),
    };
    // The name is claimed now: a second migration of the same name is refused from here.
    // The claim appears whole (the token, the spec, the placeholder record): killed while it
    // was made, this process left a bare directory, which a reader then took for a job that
    // never started ("exited: monitor lost before the workload started"), which no abort
    // could tell from another's claim.
    spec.name = Some(name.clone());
    let mut st = WorkloadState::new(&name);
    st.status = Status::Failed;
    st.error = Some(format!("its migration from {from} did not complete"));
    let staged = staged_claim(&wd, &token);
    let staging = || -> Result<(), String> {
        if staged.dir.exists() {
            std::fs::remove_dir_all(&staged.dir).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir(&staged.dir).map_err(|e| format!("{}: {e}", staged.dir.display()))?;
        crate::store::atomic::write_atomic(&token_path(&staged), token.as_bytes())
            .map_err(|e| e.to_string())?;
        // The record is born with its lock file: no one else ever has to make one there (an
        // abort or a reader that made one in a record being removed would keep it there).
        staged.open_lock().map_err(|e| e.to_string())?;
        crate::store::atomic::write_json_atomic(&staged.spec_path(), &spec)
            .map_err(|e| e.to_string())?;
        staged.save(&st).map_err(|e| e.to_string())
    };
    let claimed = staging().and_then(|()| {
        wd.create_from(&staged.dir).map_err(|e| match e {
            crate::store::state::StateError::Exists(_) => {
                format!("a workload named {name} already exists on {host}")
            }
            other => other.to_string(),
        })
    });
    if let Err(why) = claimed {
        if let Err(e) = std::fs::remove_dir_all(&staged.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("stasis: remove {}: {e}", staged.dir.display());
            }
        }
        return Err(why);
    }
    let mut claim = Claim {
        wd: wd.clone(),
        armed: true,
    };
    let stdin = std::io::stdin();
    let mut pages = Some(accept_pages(
        &pages_socket(root, &name),
        &token,
        stdin.as_fd(),
    )?);
    let stage = wd.dir.join(".migrate-stage");
    crate::store::atomic::mkdir_in(&stage, 0o700).map_err(|e| e.to_string())?;
    let mut server = None;
    if mode == Mode::Stream {
        let log = wd.criu_logs().join("page-server.log");
        crate::store::atomic::mkdir_in(&wd.criu_logs(), 0o700).map_err(|e| e.to_string())?;
        let Some(ch) = pages.take() else {
            return Err("no page channel".into());
        };
        server = Some(PageServer::start(&criu.path, &stage, log, ch, &host)?);
    }
    wire::send(out, &Wire::Prepared).map_err(|e| e.to_string())?;
    if let Some(s) = server {
        // The source's dump streams its pages now and has the page server end before its
        // images are done, so nothing else arrives until then: wait for it here.
        s.finish(&host)?;
    }
    let manifest = loop {
        match wire::recv(inp) {
            Ok(Some(Wire::File { path, size })) => {
                receive_file(inp, &wd, &stage, &init_path, &path, size)?
            }
            Ok(Some(Wire::FilesDone { manifest })) => break manifest,
            Ok(Some(Wire::Step {
                step: Step::Abort { .. },
            })) => return Ok(None),
            Ok(Some(other)) => return Err(format!("unexpected {other:?}")),
            Ok(None) | Err(_) => return Ok(None),
        }
    };
    if mode == Mode::Stream {
        // The images are complete here: should this side's monitor die after the source's
        // commit, `__migrate-resume` restores the job from them (see `recover_stream`).
        crate::store::atomic::write_json_atomic(&stage.join(STAGE_MANIFEST), &manifest)
            .map_err(|e| e.to_string())?;
    }
    if !wd.log_path().exists() {
        std::fs::File::create(wd.log_path()).map_err(|e| e.to_string())?;
    }
    let lock = api::lock_existing(&wd).map_err(|e| e.to_string())?;
    // The forked monitor must not keep a copy of the page channel: one held open there would
    // never close when CRIU's side of it ends (it gets its own with the request).
    let inherited: Vec<i32> = pages.iter().map(|p| p.as_raw_fd()).collect();
    let conn =
        api::spawn_monitor_closing(root, &wd, lock, None, &inherited).map_err(|e| e.to_string())?;
    claim.armed = false;
    let (ours, theirs) = protocol::seqpacket_pair().map_err(|e| e.to_string())?;
    let opts = InOpts {
        from,
        mode,
        token,
        stage,
        manifest: *manifest,
        criu: Some(criu),
    };
    let mut fds = vec![theirs.as_raw_fd()];
    if let Some(p) = &pages {
        fds.push(p.as_raw_fd());
    }
    protocol::send(
        conn.as_fd(),
        &Request::StartMigrateIn {
            opts: Box::new(opts),
        },
        &fds,
    )
    .map_err(|e| format!("start a monitor on {host}: {e}"))?;
    Ok(Some(Taken { link: ours, conn }))
}

/// A stream migration's `criu page-server`, writing the pages the source's dump sends over
/// the page channel into the stage.
struct PageServer {
    child: std::process::Child,
    /// The page channel as this process holds it (the server has its own copy): shut down
    /// once the server has ended.
    channel: OwnedFd,
    log: PathBuf,
}

impl PageServer {
    fn start(
        criu: &Path,
        stage: &Path,
        log: PathBuf,
        channel: OwnedFd,
        host: &str,
    ) -> Result<PageServer, String> {
        let mut cmd = std::process::Command::new(criu);
        cmd.args(lazy::page_server_argv(stage, &log))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Its own process group, ended with it (see `crate::criu::group`): a page server
        // killed while it probes the kernel leaves a child that holds the page channel.
        crate::criu::group::own_group(&mut cmd);
        let child =
            crate::sys::spawn_with_fds(&mut cmd, &[(channel.as_raw_fd(), lazy::PS_SOCKET_FD)])
                .map_err(|e| format!("run criu page-server on {host}: {e}"))?;
        Ok(PageServer {
            child,
            channel,
            log,
        })
    }

    /// Waits until the server has ended, ends what it left in its group and shuts the page
    /// channel down, so the source's dump sees it close should the server have died: held
    /// open by anything here, the channel would keep that dump (and the frozen job) waiting
    /// forever. Then reaps the server and says whether it succeeded.
    fn finish(mut self, host: &str) -> Result<(), String> {
        let pid = self.child.id() as i32;
        let waited = crate::criu::group::wait_exited(pid);
        if let Err(e) = crate::criu::group::end_group(pid) {
            eprintln!("stasis: end what criu page-server (pid {pid}) left: {e}");
        }
        if let Err(e) =
            nix::sys::socket::shutdown(self.channel.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        {
            eprintln!("stasis: shut the page channel down: {e}");
        }
        let status = waited
            .and_then(|()| self.child.wait())
            .map_err(|e| format!("criu page-server on {host}: {e}"))?;
        if status.success() {
            return Ok(());
        }
        Err(format!(
            "criu page-server on {host} failed ({status}): {}",
            crate::criu::failure_reasons(&self.log).join("; ")
        ))
    }
}

/// Waits for `__migrate-pages` to hand over the page channel, while watching the control
/// channel `control`: the source sends nothing there until the page channel is up, so
/// anything on it (its end, an abort) means the source gave up. Without that watch a source
/// that failed to open the page channel left this claim, and the name, taken for
/// [`PAGES_WAIT`].
fn accept_pages(path: &Path, token: &str, control: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let _ = std::fs::remove_file(path);
    let l = protocol::listen(path).map_err(|e| format!("listen {}: {e}", path.display()))?;
    let deadline = Instant::now() + PAGES_WAIT;
    let r = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err("the page channel did not connect".to_string());
        }
        let mut p = [
            PollFd::new(l.as_fd(), PollFlags::POLLIN),
            PollFd::new(control, PollFlags::POLLIN),
        ];
        let ms = left.as_millis().min(u16::MAX as u128) as u16;
        match nix::poll::poll(&mut p, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break Err(format!("poll: {e}")),
            Ok(_) => {}
        }
        if p[1].any() == Some(true) {
            break Err("the source went away before the page channel connected".to_string());
        }
        let Ok(c) = crate::sys::accept(l.as_fd(), false) else {
            continue;
        };
        match protocol::recv::<PagesHello>(c.as_fd()) {
            Ok(Some((h, mut fds))) if h.token == token && fds.len() == 1 => break Ok(fds.remove(0)),
            _ => continue,
        }
    };
    let _ = std::fs::remove_file(path);
    r
}

fn receive_file(
    inp: &mut impl BufRead,
    wd: &WorkloadDir,
    stage: &Path,
    init_path: &str,
    rel: &str,
    size: u64,
) -> Result<(), String> {
    if !wire::allowed(rel) {
        return Err(format!("refused a file named {rel}"));
    }
    let dst = if let Some(img) = rel.strip_prefix("images/") {
        stage.join(img)
    } else if rel == "init" {
        PathBuf::from(init_path)
    } else {
        wd.dir.join(rel)
    };
    let parent = dst.parent().unwrap_or(Path::new("/"));
    crate::store::atomic::mkdir_p(parent, 0o700).map_err(|e| e.to_string())?;
    let tmp = parent.join(format!(
        ".{}.part",
        dst.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let n = std::io::copy(&mut inp.take(size), &mut f).map_err(|e| e.to_string())?;
    if n != size {
        let _ = std::fs::remove_file(&tmp);
        return Err("the connection closed during a file".into());
    }
    if rel == "init" {
        use std::os::unix::fs::PermissionsExt;
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o555));
        f.sync_all().map_err(|e| e.to_string())?;
    }
    drop(f);
    std::fs::rename(&tmp, &dst).map_err(|e| format!("{}: {e}", dst.display()))
}

impl Taken {
    /// Relays steps between the source (stdin, stdout) and the new monitor until the monitor
    /// is done with the link.
    fn relay(self, mut out: impl Write) -> i32 {
        let Ok(up) = self.link.try_clone() else {
            return CODE_STASIS_ERROR;
        };
        std::thread::spawn(move || {
            let mut inp = std::io::stdin().lock();
            loop {
                match wire::recv(&mut inp) {
                    Ok(Some(Wire::Step { step })) => {
                        if protocol::send(up.as_fd(), &step, &[]).is_err() {
                            break;
                        }
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            // The source is gone: the monitor reads the end and waits for a resume.
            let _ = nix::sys::socket::shutdown(up.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        });
        while let Ok(Some((step, _))) = protocol::recv::<Step>(self.link.as_fd()) {
            let _ = wire::send(&mut out, &Wire::Step { step });
        }
        drop(self.conn);
        0
    }
}

/// `stasis __migrate-pages NAME TOKEN`: hands this ssh session over as the page channel.
pub fn pages(root: &StateRoot, name: &WorkloadName, token: &str) -> i32 {
    crate::sys::sigpipe(true);
    let path = pages_socket(root, name);
    // The target's `__migrate-target` listens once it has claimed the name. Meanwhile the
    // source sends nothing here (its CRIU starts only once the channel is up), so input or
    // its end means the source gave up: this session ends rather than wait on.
    let deadline = Instant::now() + PAGES_WAIT;
    let stdin = std::io::stdin();
    let conn = loop {
        match protocol::connect(&path) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("stasis: page channel {}: {e}", path.display());
                return CODE_STASIS_ERROR;
            }
            Err(_) => {
                use nix::poll::{PollFd, PollFlags, PollTimeout};
                let mut p = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
                match nix::poll::poll(&mut p, PollTimeout::from(20u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                    Ok(_) => {
                        eprintln!("stasis: the source went away before the page channel connected");
                        return CODE_STASIS_ERROR;
                    }
                    Err(e) => {
                        eprintln!("stasis: poll the page channel: {e}");
                        return CODE_STASIS_ERROR;
                    }
                }
            }
        }
    };
    let (a, b) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("stasis: socketpair: {e}");
            return CODE_STASIS_ERROR;
        }
    };
    if let Err(e) = protocol::send(
        conn.as_fd(),
        &PagesHello {
            token: token.to_string(),
        },
        &[b.as_raw_fd()],
    ) {
        eprintln!("stasis: page channel: {e}");
        return CODE_STASIS_ERROR;
    }
    drop(b);
    drop(conn);
    let Ok(mut a_in) = a.try_clone() else {
        return CODE_STASIS_ERROR;
    };
    std::thread::spawn(move || {
        let mut inp = std::io::stdin().lock();
        let _ = std::io::copy(&mut inp, &mut a_in);
        let _ = a_in.shutdown(std::net::Shutdown::Write);
    });
    let mut out = std::io::stdout().lock();
    let mut a_out = a;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match a_out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    0
}

/// `stasis __migrate-resume NAME [TOKEN]`: a source that committed but lost its control
/// channel tells the held restore to go on, then waits until the job runs; a source that
/// rolled migration TOKEN back has whatever of it is left here dropped.
pub fn resume(root: &StateRoot, name: &WorkloadName, token: Option<&str>) -> i32 {
    let mut inp = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let msg = match (wire::recv(&mut inp), token) {
        (Ok(Some(Wire::Step { step: Step::Commit })), _) => match resume_commit(root, name) {
            Ok(pid) => Wire::Step {
                step: Step::Running {
                    pid,
                    restore_ms: 0.0,
                    page_bytes: 0,
                    resumed_ms_ago: 0.0,
                },
            },
            Err(reason) => Wire::Refuse { reason },
        },
        (
            Ok(Some(Wire::Step {
                step: Step::Abort { reason },
            })),
            Some(token),
        ) => match resume_abort(root, name, token, reason) {
            Ok(()) => Wire::Step {
                step: Step::Dropped,
            },
            Err(reason) => Wire::Refuse { reason },
        },
        _ => Wire::Refuse {
            reason: "expected a commit, or an abort with its migration's token".into(),
        },
    };
    match wire::send(&mut out, &msg) {
        Ok(()) => 0,
        Err(_) => CODE_STASIS_ERROR,
    }
}

/// The source rolled migration `token` back (the job runs there): whatever of it is left
/// here goes. A monitor still waiting for its verdict gets the abort and undoes its restore
/// itself; then, once nothing holds the workload (that monitor, a CRIU still running after
/// its monitor was killed), a record this migration claimed is removed, placeholder,
/// half-restored or kept "unconfirmed" alike. A record of another migration or job of the
/// same name is left alone, and so, defensively, is one that runs.
fn resume_abort(
    root: &StateRoot,
    name: &WorkloadName,
    token: &str,
    reason: String,
) -> Result<(), String> {
    if !valid_token(token) {
        return Err("a malformed migration token".into());
    }
    let wd = root.workload(name);
    // A claim still being prepared when its maker was killed.
    let staged = staged_claim(&wd, token);
    if let Err(e) = std::fs::remove_dir_all(&staged.dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(format!("remove {}: {e}", staged.dir.display()));
        }
    }
    let deadline = Instant::now() + ABORT_WAIT;
    let mut told = false;
    loop {
        if !claimed_by(&wd, token) {
            return Ok(());
        }
        if !told {
            if let Ok(c) = protocol::connect(&resume_socket(root, name)) {
                let abort = Step::Abort {
                    reason: reason.clone(),
                };
                told = protocol::send(c.as_fd(), &abort, &[]).is_ok();
            }
        }
        // A record is removed whole (renamed aside first), so a lock made here can only be
        // made in a record that is there, whole (one claimed by an older stasis has none).
        let lock = match wd.try_lock() {
            Ok(l) => l,
            // Removed meanwhile (its monitor undid it): nothing of it is left.
            Err(_) if !claimed_by(&wd, token) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(_lock) = lock {
            // Checked again under the lock: nothing can start on it meanwhile.
            if !claimed_by(&wd, token) {
                return Ok(());
            }
            if let Ok(st) = wd.load() {
                if st.status == Status::Running && st.init.is_some_and(|i| i.alive()) {
                    return Err(format!(
                        "{name} runs on {} although its migration was rolled back",
                        host()
                    ));
                }
            }
            wd.remove_all().map_err(|e| e.to_string())?;
            let cg = crate::container::cgroup::Cgroup::for_workload(&root.key(), name.as_str());
            if let Err(e) = cg.try_remove() {
                eprintln!("stasis: {e}");
            }
            return Ok(());
        }
        busy_wait(name, deadline)?;
    }
}

/// Between two looks at a workload something else still holds: a short sleep, or once
/// `deadline` (set [`ABORT_WAIT`] ahead) has passed, the error that says so.
fn busy_wait(name: &WorkloadName, deadline: Instant) -> Result<(), String> {
    if Instant::now() >= deadline {
        return Err(format!(
            "{name} is still busy on {} after {} s",
            host(),
            ABORT_WAIT.as_secs()
        ));
    }
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

fn resume_commit(root: &StateRoot, name: &WorkloadName) -> Result<i32, String> {
    let c = match protocol::connect(&resume_socket(root, name)) {
        Ok(c) => c,
        Err(e) => {
            return recover_stream(root, name)
                .map_err(|why| format!("no migration of {name} waits on {} ({e}): {why}", host()))
        }
    };
    protocol::send(c.as_fd(), &Step::Commit, &[]).map_err(|e| e.to_string())?;
    let wd = root.workload(name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(st) = wd.load() {
            if st.status == Status::Running {
                if let Some(i) = st.init {
                    return Ok(i.pid);
                }
            }
            if st.status.is_final() {
                break;
            }
        } else {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{name} did not start on {}", host()))
}

/// The source committed a stream migration but nothing here waits for it any more (this
/// side's monitor died, or gave up waiting): the images are all here, so the job is restored
/// from them, as the commit says it must run here.
fn recover_stream(root: &StateRoot, name: &WorkloadName) -> Result<i32, String> {
    let wd = root.workload(name);
    // Until the record says the job runs, whatever still holds the workload (its monitor
    // finishing the restore it was told to let go, or, that monitor killed, its CRIU giving
    // up at a gate nobody answers) decides what happened: wait for one or the other. Only
    // then is the record the truth (reconciled on reading) and a restore possible.
    let deadline = Instant::now() + ABORT_WAIT;
    let mut st = loop {
        let o = crate::store::state::observe(&wd).map_err(|e| e.to_string())?;
        if o.state.status == Status::Running {
            if let Some(i) = o.state.init.filter(|i| i.alive()) {
                return Ok(i.pid);
            }
        }
        if !o.monitor_alive {
            break o.state;
        }
        busy_wait(name, deadline)?;
    };
    let stage = wd.dir.join(".migrate-stage");
    let mpath = stage.join(STAGE_MANIFEST);
    if mpath.is_file() {
        let data = std::fs::read(&mpath).map_err(|e| e.to_string())?;
        let mut m: crate::store::generations::Manifest =
            serde_json::from_slice(&data).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&mpath);
        let files = crate::store::generations::file_entries(&stage).map_err(|e| e.to_string())?;
        m.stats.size = files.iter().map(|f| f.size).sum();
        m.files = files;
        let g = crate::store::generations::commit(&wd, &stage, &m).map_err(|e| e.to_string())?;
        st.generation = Some(g.number);
    } else if st.status != Status::Checkpointed || st.generation.is_none() {
        return Err(format!("{name} has no complete images here"));
    }
    st.status = Status::Checkpointed;
    st.init = None;
    st.error = None;
    st.note = None;
    wd.save(&st).map_err(|e| e.to_string())?;
    let opts = crate::protocol::RestoreOpts {
        generation: st.generation,
        reason: "migrated (restored by the source's late commit)".into(),
        ..Default::default()
    };
    match api::restore(root, name, opts) {
        Ok(crate::protocol::Reply::Restored { pid, .. }) => Ok(pid),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
