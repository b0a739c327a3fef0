//! init: PID 1 of a workload's PID namespace, the stasis binary in a tiny synchronous mode
//! (no runtime, no threads).
//!
//! It spawns the workload and exec sessions when its monitor asks (so sessions are part of the
//! process tree CRIU dumps), reaps every zombie, forwards the signals it receives to the
//! workload's process group, reports exits to the monitor, and exits with the workload's
//! status when the workload ends (the kernel then ends everything else in the namespace).

pub mod spawn;

use crate::exit::ExitStatus;
use crate::protocol::{self, FromInit, ToInit};
use crate::sys;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// The id of the workload's main process in spawn messages.
pub const MAIN_ID: &str = "main";

/// Signals init forwards to the workload's process group: everything a sender can mean for
/// the workload. SIGCHLD is init's own; KILL and STOP cannot be caught.
fn forwarded_signals() -> Vec<i32> {
    (1..32)
        .filter(|s| ![libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD].contains(s))
        .collect()
}

struct Init {
    ctl: Option<OwnedFd>,
    /// pid → spawn id, for every process init started and has not reaped.
    procs: HashMap<i32, String>,
    /// spawn id → pid (the process group id as well: children call setsid).
    ids: HashMap<String, i32>,
    main: Option<i32>,
}

impl Init {
    fn report(&mut self, msg: &FromInit) {
        if let Some(ctl) = &self.ctl {
            if protocol::send(ctl.as_fd(), msg, &[]).is_err() {
                // The monitor is gone: keep running the workload; nobody to report to.
                self.ctl = None;
            }
        }
    }

    fn handle(&mut self, msg: ToInit, fds: Vec<OwnedFd>) -> Option<i32> {
        match msg {
            ToInit::Spawn { id, proc } => {
                let is_main = id == MAIN_ID;
                match spawn::spawn(&proc, &fds) {
                    Ok(pid) => {
                        drop(fds);
                        self.procs.insert(pid, id.clone());
                        self.ids.insert(id.clone(), pid);
                        if is_main {
                            self.main = Some(pid);
                        }
                        self.report(&FromInit::Spawned { id, pid });
                    }
                    Err(f) => {
                        drop(fds);
                        self.report(&FromInit::SpawnFailed {
                            id,
                            code: f.code,
                            message: f.message,
                        });
                        if is_main {
                            return Some(f.code);
                        }
                    }
                }
            }
            ToInit::Rekey => {
                if let Some(newfd) = fds.first() {
                    if sys::dup_to(newfd.as_raw_fd(), crate::container::INIT_CTL_FD).is_ok() {
                        self.report(&FromInit::Rekeyed);
                    }
                }
            }
            ToInit::Signal { id, sig } => {
                if let Some(&pid) = self.ids.get(&id) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::try_from(sig).ok(),
                    );
                }
            }
        }
        None
    }

    /// Reaps every zombie; returns the main process's exit code once it has ended.
    fn reap(&mut self) -> Option<i32> {
        let mut main_code = None;
        loop {
            let raw;
            let pid =
                match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::Exited(p, c)) => {
                        raw = c << 8;
                        p.as_raw()
                    }
                    Ok(nix::sys::wait::WaitStatus::Signaled(p, s, core)) => {
                        raw = (s as i32) | if core { 0x80 } else { 0 };
                        p.as_raw()
                    }
                    Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                };
            let Some(id) = self.procs.remove(&pid) else {
                continue;
            };
            self.ids.remove(&id);
            let Some(status) = ExitStatus::from_raw(raw) else {
                continue;
            };
            if Some(pid) == self.main {
                main_code = Some(status.code());
            }
            self.report(&FromInit::Exited { id, status });
        }
        main_code
    }
}

/// Runs init; `ctl_fd` is the control socket to the monitor. Never returns.
#[allow(unsafe_code)]
pub fn main(ctl_fd: RawFd) -> ! {
    sys::set_name("stasis-init");
    let mut sigs = forwarded_signals();
    sigs.push(libc::SIGCHLD);
    let sfd = match sys::block_into_signalfd(&sigs) {
        Ok(f) => f,
        Err(_) => sys::exit_now(crate::exit::CODE_STASIS_ERROR),
    };
    // SAFETY: fd 3 was placed by the container setup for init alone.
    let ctl = unsafe { sys::owned(ctl_fd) };
    let mut init = Init {
        ctl: Some(ctl),
        procs: HashMap::new(),
        ids: HashMap::new(),
        main: None,
    };
    loop {
        let ctl_ready;
        let sig_ready;
        {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            if let Some(c) = &init.ctl {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => sys::exit_now(crate::exit::CODE_STASIS_ERROR),
            }
            sig_ready = fds[0].revents().map(|r| !r.is_empty()).unwrap_or(false);
            ctl_ready = fds
                .get(1)
                .and_then(|f| f.revents())
                .map(|r| !r.is_empty())
                .unwrap_or(false);
        }
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
            let got = init
                .ctl
                .as_ref()
                .map(|c| protocol::recv::<ToInit>(c.as_fd()));
            match got {
                Some(Ok(Some((msg, fds)))) => {
                    if let Some(code) = init.handle(msg, fds) {
                        sys::exit_now(code);
                    }
                }
                // The monitor closed its end or sent garbage: stop listening, keep supervising.
                _ => init.ctl = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
