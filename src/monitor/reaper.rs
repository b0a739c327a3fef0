//! The monitor reaps every child and every orphan reparented to it (it is a child
//! subreaper), and hands each exit to whoever asked to watch that pid.
//!
//! One reaper for everything: with `waitpid(-1)` in one place, a watcher of init, of a CRIU
//! run and of an orphan never steal each other's statuses. An exit reaped before anyone asked
//! for it is kept, so `watch` after the fact still gets it.
//!
//! A CRIU run leads a process group of its own ([`Reaper::watch_group`]): when it has exited,
//! what is left in its group is killed before the run is reaped (see `crate::criu::group`).

use crate::exit::ExitStatus;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use tokio::sync::oneshot;

#[derive(Default)]
pub struct Reaper {
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    done: HashMap<i32, ExitStatus>,
    /// Children that lead a process group to end with them.
    groups: HashSet<i32>,
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

    /// As [`Self::watch`], for a child that leads a process group of its own (a CRIU run,
    /// `crate::criu::group::own_group`): once it has exited, whatever is left in its group
    /// is killed, before the child is reaped. Call it before anything can await, right
    /// after the spawn, so the reaper cannot have reaped the child yet.
    pub fn watch_group(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        self.inner.borrow_mut().groups.insert(pid);
        self.watch(pid)
    }

    /// Reaps every exited child now.
    pub fn reap_all(&self) {
        use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
        loop {
            // Which child exited, without reaping it yet: a group leader's zombie keeps its
            // group's id ours while the rest of the group is ended.
            let pid = match waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ) {
                Ok(ws) => match ws.pid() {
                    Some(p) => p,
                    None => return,
                },
                Err(_) => return,
            };
            if self.inner.borrow_mut().groups.remove(&pid.as_raw()) {
                if let Err(e) = crate::criu::group::end_group(pid.as_raw()) {
                    super::diag::warn(&format!(
                        "end what CRIU (pid {pid}) left in its process group: {e}"
                    ));
                }
            }
            let mut raw: libc::c_int = 0;
            // nix's waitpid cannot give back the raw status word; read it directly.
            let pid = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
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
