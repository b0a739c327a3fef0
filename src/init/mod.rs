//! init: PID 1 of a workload's PID namespace, the stasis binary in a tiny synchronous mode
//! (no runtime, no threads).
//!
//! It spawns the workload and exec sessions when its monitor asks (so sessions are part of the
//! process tree CRIU dumps), making their stdio itself and keeping the outer ends (see
//! [`crate::protocol::init`]); it reaps every zombie, forwards the signals it receives to the
//! workload's process group, reports exits, and exits with the workload's status when the
//! workload ends (the kernel then ends everything else in the namespace).
//!
//! init never depends on a monitor being there: its reports are sent without blocking, and
//! what it knows (its process table) is handed whole to the next monitor that says hello.

mod child;
pub mod spawn;

use crate::exit::ExitStatus;
use crate::protocol::init::{
    FromInit, KeptFds, ProcInfo, StdioSpec, ToInit, CTL_FD, CTL_PEER_FD, MAIN_ID,
};
use crate::protocol::{self};
use crate::sys;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Output pipes get this much buffer: a fast writer rarely waits for the monitor, and a job
/// whose monitor is gone runs on this long before it blocks.
const OUT_PIPE_SIZE: usize = 1 << 20;
/// How long init waits to be asked for its workload. A monitor killed between starting the
/// container and naming init in the state leaves an init that no command can find or adopt
/// and that nothing will ever ask for a workload: it must end by itself. A live monitor asks
/// within milliseconds of the start (a restored or adopted init already has its workload).
const WORKLOAD_GRACE_MS: u64 = 60_000;
/// Kept fds live at or above this number (below it: stdio, the control pair).
const KEPT_MIN_FD: i32 = 10;

/// Signals init forwards to the workload's process group: everything a sender can mean for
/// the workload. SIGCHLD is init's own; KILL and STOP cannot be caught.
fn forwarded_signals() -> Vec<i32> {
    (1..32)
        .filter(|s| ![libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD].contains(s))
        .collect()
}

/// The outer ends init keeps for one process.
#[derive(Default)]
struct Kept {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: Option<OwnedFd>,
}

impl Kept {
    /// The kept fds in [`KeptFds`] order (stdin, stdout, stderr, tty), those present.
    fn raw(&self) -> Vec<i32> {
        [&self.stdin, &self.stdout, &self.stderr, &self.tty]
            .into_iter()
            .flatten()
            .map(|f| f.as_raw_fd())
            .collect()
    }

    fn numbers(&self) -> KeptFds {
        let n = |f: &Option<OwnedFd>| f.as_ref().map(|f| f.as_raw_fd());
        KeptFds {
            stdin: n(&self.stdin),
            stdout: n(&self.stdout),
            stderr: n(&self.stderr),
            tty: n(&self.tty),
        }
    }
}

struct Proc {
    id: String,
    pid: i32,
    kept: Kept,
    exited: Option<ExitStatus>,
}

struct Init {
    ctl: OwnedFd,
    /// The monitor's end, held so the socket (and what init sent) outlives any monitor.
    _peer: OwnedFd,
    procs: Vec<Proc>,
    main: Option<i32>,
}

/// Moves `fd` to a CLOEXEC number at or above [`KEPT_MIN_FD`].
#[allow(unsafe_code)]
fn keep(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    let n = sys::dup_above(fd.as_raw_fd(), KEPT_MIN_FD)?;
    // SAFETY: dup_above returned a fresh fd that nothing else owns.
    Ok(unsafe { sys::owned(n) })
}

/// The child's stdio (fds 0, 1, 2) and what init keeps, per `spec`.
fn make_stdio(spec: StdioSpec) -> std::io::Result<(Vec<OwnedFd>, Kept)> {
    let mut kept = Kept::default();
    match spec {
        StdioSpec::Tty { winsize } => {
            // /dev/ptmx inside the container: the pty belongs to the container's own devpts,
            // so CRIU dumps and restores the pair with it.
            let pty = nix::pty::openpty(None, None)?;
            if let Some((r, c)) = winsize {
                sys::set_winsize(pty.master.as_fd(), r, c)?;
            }
            let s = pty.slave;
            let child = vec![s.try_clone()?, s.try_clone()?, s];
            kept.tty = Some(keep(pty.master)?);
            Ok((child, kept))
        }
        StdioSpec::Pipes { stdin, merge } => {
            let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
            let (in_r, in_w) = nix::unistd::pipe2(cloexec)?;
            let (out_r, out_w) = nix::unistd::pipe2(cloexec)?;
            // A larger buffer is an optimisation; a host limit below it is no error.
            let _ = sys::set_pipe_size(out_w.as_fd(), OUT_PIPE_SIZE);
            let err_w = if merge {
                out_w.try_clone()?
            } else {
                let (err_r, err_w) = nix::unistd::pipe2(cloexec)?;
                let _ = sys::set_pipe_size(err_w.as_fd(), OUT_PIPE_SIZE);
                kept.stderr = Some(keep(err_r)?);
                err_w
            };
            if stdin {
                kept.stdin = Some(keep(in_w)?);
            } else {
                drop(in_w);
            }
            kept.stdout = Some(keep(out_r)?);
            Ok((vec![in_r, out_w, err_w], kept))
        }
    }
}

impl Init {
    /// Sends without ever blocking: a report nobody reads is dropped (the process table,
    /// handed to the next monitor in `Welcome`, still has it).
    fn report(&self, msg: &FromInit) {
        self.report_with(msg, &[]);
    }

    fn report_with(&self, msg: &FromInit, fds: &[i32]) {
        if let Ok(data) = protocol::encode(msg) {
            let _ = sys::send_with_fds(self.ctl.as_fd(), &data, fds, true);
        }
    }

    fn proc_mut(&mut self, id: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.id == id)
    }

    fn handle(&mut self, msg: ToInit, fds: Vec<OwnedFd>) -> Option<i32> {
        match msg {
            ToInit::Hello => {
                let procs = self
                    .procs
                    .iter()
                    .map(|p| ProcInfo {
                        id: p.id.clone(),
                        pid: p.pid,
                        fds: p.kept.numbers(),
                        exited: p.exited,
                    })
                    .collect();
                self.report(&FromInit::Welcome { procs });
            }
            ToInit::Spawn { id, proc, stdio } => return self.spawn(id, proc, stdio, fds),
            ToInit::Signal { id, sig } => {
                if let Some(p) = self.procs.iter().find(|p| p.id == id && p.exited.is_none()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(p.pid),
                        nix::sys::signal::Signal::try_from(sig).ok(),
                    );
                }
            }
            ToInit::CloseStdin { id } => {
                if let Some(p) = self.proc_mut(&id) {
                    p.kept.stdin = None;
                }
            }
            ToInit::Forget { id } => self.procs.retain(|p| p.id != id || p.exited.is_none()),
        }
        None
    }

    fn spawn(
        &mut self,
        id: String,
        proc: spawn::ProcSpec,
        stdio: StdioSpec,
        extra: Vec<OwnedFd>,
    ) -> Option<i32> {
        let is_main = id == MAIN_ID;
        let made = make_stdio(stdio).map_err(|e| spawn::ChildFailure {
            code: crate::exit::CODE_STASIS_ERROR,
            message: format!("make stdio: {e}"),
        });
        let result = made.and_then(|(mut child, kept)| {
            child.extend(extra);
            spawn::spawn(&proc, &child).map(|pid| (pid, kept))
        });
        match result {
            Ok((pid, kept)) => {
                let fds = kept.numbers();
                // The ends go with the answer: a process that ends at once takes init with
                // it (the workload), and fds of an exited init cannot be taken.
                self.report_with(
                    &FromInit::Spawned {
                        id: id.clone(),
                        pid,
                        fds,
                    },
                    &kept.raw(),
                );
                self.procs.push(Proc {
                    id: id.clone(),
                    pid,
                    kept,
                    exited: None,
                });
                if is_main {
                    self.main = Some(pid);
                }
                None
            }
            Err(f) => {
                self.report(&FromInit::SpawnFailed {
                    id,
                    code: f.code,
                    message: f.message,
                });
                is_main.then_some(f.code)
            }
        }
    }

    /// Reaps every zombie; returns the main process's exit code once it has ended.
    fn reap(&mut self) -> Option<i32> {
        let mut main_code = None;
        loop {
            use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) => (p.as_raw(), ExitStatus::Exited { code: c }),
                Ok(WaitStatus::Signaled(p, s, core)) => (
                    p.as_raw(),
                    ExitStatus::Signaled {
                        signal: s as i32,
                        core_dumped: core,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some(p) = self
                .procs
                .iter_mut()
                .find(|p| p.pid == pid && p.exited.is_none())
            else {
                continue; // an orphan of the container, reaped and forgotten
            };
            p.exited = Some(status);
            let id = p.id.clone();
            if Some(pid) == self.main {
                main_code = Some(status.code());
            }
            self.report(&FromInit::Exited { id, status });
        }
        main_code
    }
}

/// How long init may still wait for its workload, `grace_ms` after its start (`waited_ms`
/// ago): `None` once the workload was asked for (init then waits on it for ever), zero when
/// the wait is over.
fn workload_wait_left(main: Option<i32>, grace_ms: u64, waited_ms: u64) -> Option<u64> {
    match main {
        Some(_) => None,
        None => Some(grace_ms.saturating_sub(waited_ms)),
    }
}

/// Runs init: fds [`CTL_FD`] and [`CTL_PEER_FD`] are the control pair. Never returns. An
/// argument, if any, is the grace in milliseconds for the workload to be asked for (tests
/// shorten it; the monitor passes none).
#[allow(unsafe_code)]
pub fn main() -> ! {
    let started = std::time::Instant::now();
    let grace_ms = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(WORKLOAD_GRACE_MS);
    sys::set_name("stasis-init");
    // A vanished reader is an error to handle here, never a reason for PID 1 to die. (The
    // only signal init ignores: `spawn::IGNORED_BY_PARENT`, which its children reset.)
    sys::sigpipe(true);
    let mut sigs = forwarded_signals();
    sigs.push(libc::SIGCHLD);
    let sfd = match sys::block_into_signalfd(&sigs) {
        Ok(f) => f,
        Err(_) => sys::exit_now(crate::exit::CODE_STASIS_ERROR),
    };
    // SAFETY: fds 3 and 4 were placed by the container setup for init alone.
    let (ctl, peer) = unsafe { (sys::owned(CTL_FD), sys::owned(CTL_PEER_FD)) };
    let mut init = Init {
        ctl,
        _peer: peer,
        procs: Vec::new(),
        main: None,
    };
    loop {
        let (sig_ready, ctl_ready) = {
            let mut fds = [
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(init.ctl.as_fd(), PollFlags::POLLIN),
            ];
            let waited = started.elapsed().as_millis() as u64;
            let timeout = match workload_wait_left(init.main, grace_ms, waited) {
                None => PollTimeout::NONE,
                // Nobody asked for a workload in time: no monitor will (see the grace).
                Some(0) => sys::exit_now(crate::exit::CODE_STASIS_ERROR),
                Some(ms) => PollTimeout::try_from(ms.min(i32::MAX as u64) as i32)
                    .unwrap_or(PollTimeout::MAX),
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => sys::exit_now(crate::exit::CODE_STASIS_ERROR),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            (ready(0), ready(1))
        };
        if sig_ready {
            let mut got_chld = false;
            while let Ok(Some(sig)) = sys::read_signalfd(sfd.as_fd()) {
                if sig == libc::SIGCHLD {
                    got_chld = true;
                } else if let Some(m) = init.main {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(m),
                        nix::sys::signal::Signal::try_from(sig).ok(),
                    );
                }
            }
            if got_chld {
                if let Some(code) = init.reap() {
                    sys::exit_now(code);
                }
            }
        }
        if ctl_ready {
            // A message from another version, or garbage, is ignored: init keeps supervising
            // (the monitor learns of the mismatch from its own decode of our answers).
            if let Ok(Some((msg, fds))) = protocol::recv::<ToInit>(init.ctl.as_fd()) {
                if let Some(code) = init.handle(msg, fds) {
                    sys::exit_now(code);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_its_workload_only_for_the_grace() {
        assert_eq!(workload_wait_left(None, 60_000, 0), Some(60_000));
        assert_eq!(workload_wait_left(None, 60_000, 59_999), Some(1));
        assert_eq!(workload_wait_left(None, 60_000, 60_000), Some(0));
        assert_eq!(workload_wait_left(None, 60_000, 90_000), Some(0));
        // asked for (or restored with it): no deadline ever again
        assert_eq!(workload_wait_left(Some(2), 60_000, 90_000), None);
        assert_eq!(workload_wait_left(Some(2), 60_000, 0), None);
    }

    #[test]
    fn forwards_everything_but_its_own_signals() {
        let s = forwarded_signals();
        for own in [libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD] {
            assert!(!s.contains(&own));
        }
        for fwd in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGQUIT,
            libc::SIGWINCH,
        ] {
            assert!(s.contains(&fwd));
        }
    }

    #[test]
    fn pipes_keep_the_outer_ends_above_the_stdio() {
        let (child, kept) = make_stdio(StdioSpec::Pipes {
            stdin: true,
            merge: false,
        })
        .unwrap();
        assert_eq!(child.len(), 3);
        let n = kept.numbers();
        for fd in [n.stdin, n.stdout, n.stderr] {
            assert!(fd.unwrap() >= KEPT_MIN_FD);
        }
        assert_eq!(n.tty, None);
        // what the child writes on fd 1 arrives on the kept stdout end
        nix::unistd::write(&child[1], b"x").unwrap();
        let mut b = [0u8; 1];
        nix::unistd::read(kept.stdout.as_ref().unwrap(), &mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn merged_output_is_one_pipe_and_no_stdin_means_eof() {
        let (child, kept) = make_stdio(StdioSpec::Pipes {
            stdin: false,
            merge: true,
        })
        .unwrap();
        assert!(kept.stderr.is_none() && kept.stdin.is_none());
        nix::unistd::write(&child[1], b"a").unwrap();
        nix::unistd::write(&child[2], b"b").unwrap();
        let mut buf = [0u8; 2];
        nix::unistd::read(kept.stdout.as_ref().unwrap(), &mut buf).unwrap();
        assert_eq!(&buf, b"ab");
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(&child[0], &mut one).unwrap(), 0);
    }
}
