//! The monitor reaps every child and every orphan reparented to it (it is a child
//! subreaper), and hands each exit to whoever asked to watch that pid.
//!
//! One reaper for everything: with `waitpid(-1)` in one place, a watcher of init, of a CRIU
//! run and of an orphan never steal each other's statuses. An exit reaped before anyone asked
//! for it is kept, so `watch` after the fact still gets it.

use crate::exit::ExitStatus;
use std::cell::RefCell;
use std::collections::HashMap;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct Reaper {
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    done: HashMap<i32, ExitStatus>,
}

/// Exits kept for pids nobody watches (orphans of a dead container) before old ones go.
const MAX_UNCLAIMED: usize = 512;

impl Reaper {
    /// A receiver that resolves when `pid` has ended.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.borrow_mut();
        match inner.done.remove(&pid) {
            Some(st) => {
                let _ = tx.send(st);
            }
            None => {
                inner.waiters.insert(pid, tx);
            }
        }
        rx
    }

    /// Reaps every exited child now.
    pub fn reap_all(&self) {
        loop {
            let mut raw: libc::c_int = 0;
            // nix's waitpid cannot give back the raw status word; read it directly.
            let pid =
                match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::Exited(p, c)) => {
                        raw = (c & 0xff) << 8;
                        p.as_raw()
                    }
                    Ok(nix::sys::wait::WaitStatus::Signaled(p, s, core)) => {
                        raw |= s as i32 | if core { 0x80 } else { 0 };
                        p.as_raw()
                    }
                    Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => return,
                    Ok(_) => continue,
                };
            let Some(st) = ExitStatus::from_raw(raw) else {
                continue;
            };
            let mut inner = self.inner.borrow_mut();
            match inner.waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(st);
                }
                None => {
                    if inner.done.len() >= MAX_UNCLAIMED {
                        inner.done.clear();
                    }
                    inner.done.insert(pid, st);
                }
            }
        }
    }
}

/// Runs the reaper on every SIGCHLD until the runtime stops.
pub async fn run(reaper: std::rc::Rc<Reaper>, mut sigchld: tokio::signal::unix::Signal) {
    loop {
        reaper.reap_all();
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}
