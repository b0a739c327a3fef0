//! Lazy restores: `criu lazy-pages` fills a restored job's memory on fault and in the
//! background through userfaultfd, so the job runs again before its memory is back. Used by
//! `stasis restore --lazy`, by restore-on-crash where it is safe, and by a post-copy
//! migration's target (the pages then come from the source over the page channel).
//!
//! While the daemon works the job's memory is only partly there: should the daemon die, the
//! kernel would fill the missing pages with zeroes once the last holder of its
//! userfaultfds closes them. The monitor holds duplicates of them, so the faults wait
//! instead, and kills the job: a lost job, never a corrupt one. No dump runs meanwhile.

use super::fd::Fd;
use super::{diag, Monitor};
use crate::criu::{self, lazy};
use crate::protocol::migrate::Step;
use crate::protocol::{Reply, RestoreOpts};
use crate::store::events::Event as HistEvent;
use crate::sys;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The monitor's view of lazy restores.
#[derive(Default, Clone)]
pub(crate) struct LazyState {
    /// A daemon still fills the running job's memory.
    busy: Rc<Cell<bool>>,
    /// Whether this host's CRIU can restore lazily (asked once).
    uffd: Rc<Cell<Option<bool>>>,
    /// Why the job was killed for lack of its memory, until its exit is recorded.
    lost: Rc<RefCell<Option<String>>>,
}

impl LazyState {
    /// True while pages are still coming: no dump may run (CRIU cannot dump a task whose
    /// memory is registered with another process's userfaultfd).
    pub fn busy(&self) -> bool {
        self.busy.get()
    }

    /// Why the job was killed because its memory could not be fetched, if it was: its exit
    /// record says so rather than a bare SIGKILL.
    pub fn take_lost(&self) -> Option<String> {
        self.lost.borrow_mut().take()
    }
}

impl Monitor {
    /// Whether a restore after a crash may be lazy: CRIU supports userfaultfd here. The
    /// generation is local and verified, and a lazy restore that fails falls back to a full
    /// one of the same generation, so nothing else needs to hold.
    pub(crate) fn lazy_on_crash(&mut self) -> bool {
        if let Some(known) = self.lazy.uffd.get() {
            return known;
        }
        let Some(c) = self.criu.clone().or_else(|| criu::locate().ok()) else {
            return false;
        };
        let ok = c
            .features(&[lazy::FEATURE_UFFD])
            .first()
            .is_some_and(|(_, ok)| *ok);
        self.lazy.uffd.set(Some(ok));
        ok
    }

    /// Restores generation `number` from `dir` lazily; falls back to a full restore if the
    /// lazy one cannot start or fails.
    pub(crate) async fn restore_lazily(
        &mut self,
        dir: PathBuf,
        manifest: crate::store::generations::Manifest,
        opts: RestoreOpts,
        number: u32,
        count_it: bool,
    ) -> Result<Reply, Reply> {
        let criu = self.criu(opts.criu.as_ref()).await?;
        // The daemon starts while the restore prepares; the restore waits for it to listen
        // just before CRIU runs (and fails, so the full restore below runs, if it never does).
        let (daemon, status) = match self.spawn_lazy_daemon(&criu, &dir, None) {
            Ok(d) => d,
            Err(why) => {
                diag(&format!(
                    "lazy restore unavailable ({why}): restoring fully"
                ));
                return self
                    .restore_images(dir, manifest, opts, number, count_it)
                    .await;
            }
        };
        self.restore_extra = Some(super::migrate::RestoreExtra {
            argv: vec!["--lazy-pages".into()],
            env: vec![],
            ready: Some((status, daemon.log.clone())),
        });
        let r = self
            .restore_images(
                dir.clone(),
                manifest.clone(),
                opts.clone(),
                number,
                count_it,
            )
            .await;
        self.restore_extra = None;
        match r {
            Ok(reply) => {
                let uffds = take_fds(daemon.pid, &lazy::userfaultfds(daemon.pid));
                self.watch_lazy_daemon(daemon, uffds, None);
                Ok(reply)
            }
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(daemon.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                diag(&format!("lazy restore failed ({e:?}): restoring fully"));
                self.restore_images(dir, manifest, opts, number, count_it)
                    .await
            }
        }
    }

    /// Starts `criu lazy-pages` for `images` (its pages from `pages`, or local) and waits
    /// until it listens.
    pub(crate) async fn start_lazy_daemon(
        &mut self,
        criu: &criu::Criu,
        images: &Path,
        pages: Option<&OwnedFd>,
    ) -> Result<LazyDaemon, String> {
        let (d, status) = self.spawn_lazy_daemon(criu, images, pages)?;
        daemon_listens(&status, &d.log).await?;
        Ok(d)
    }

    /// Starts `criu lazy-pages`; returns it and its status pipe (see [`daemon_listens`]).
    pub(crate) fn spawn_lazy_daemon(
        &mut self,
        criu: &criu::Criu,
        images: &Path,
        pages: Option<&OwnedFd>,
    ) -> Result<(LazyDaemon, Fd), String> {
        let (status_r, status_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let log = self.criu_log("lazy-pages", self.st.generation.unwrap_or(0));
        let argv = lazy::lazy_pages_argv(images, &log, pages.is_some());
        let mut fds = vec![(status_w.as_raw_fd(), lazy::STATUS_FD)];
        if let Some(p) = pages {
            fds.push((p.as_raw_fd(), lazy::PS_SOCKET_FD));
        }
        let mut cmd = std::process::Command::new(&criu.path);
        cmd.args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Its own process group: a daemon killed while it probes the kernel leaves a child
        // holding the page channel and the status pipe, which the reaper ends with it.
        criu::group::own_group(&mut cmd);
        let child = sys::spawn_with_fds(&mut cmd, &fds)
            .map_err(|e| format!("run {} lazy-pages: {e}", criu.path.display()))?;
        drop(status_w);
        let pid = child.id() as i32;
        let exit = self.reaper.watch_group(pid);
        drop(child);
        let status = Fd::new(status_r).map_err(|e| e.to_string())?;
        Ok((LazyDaemon { pid, exit, log }, status))
    }

    /// Watches a lazy-pages daemon until every page is in. Should it fail first, the job is
    /// killed (its missing memory would otherwise read as zeroes) and recorded as lost.
    pub(crate) fn watch_lazy_daemon(
        &mut self,
        d: LazyDaemon,
        uffds: Vec<OwnedFd>,
        link: Option<Fd>,
    ) {
        let busy = self.lazy.busy.clone();
        let lost = self.lazy.lost.clone();
        busy.set(true);
        let pidfd = self.live.as_ref().map(|l| l.pidfd.clone());
        let wd = self.wd.clone();
        tokio::task::spawn_local(async move {
            let st = d.exit.await;
            let ok = st.as_ref().map(|s| s.success()).unwrap_or(false);
            let reason = if ok {
                String::new()
            } else {
                format!(
                    "criu lazy-pages {}: {} (log: {})",
                    st.map(|s| s.to_string())
                        .unwrap_or_else(|_| "vanished".into()),
                    criu::failure_reasons(&d.log).join("; "),
                    d.log.display()
                )
            };
            if !ok {
                // Before the kill: the exit it causes is recorded with this reason.
                *lost.borrow_mut() = Some(reason.clone());
                if let Some(p) = &pidfd {
                    let _ = sys::pidfd_send_signal(p.as_fd(), libc::SIGKILL);
                }
                diag(&format!("memory lost, job killed: {reason}"));
                crate::store::events::append(
                    &wd,
                    &HistEvent::new(
                        "lazy-pages-lost",
                        format!("the rest of its memory could not be fetched ({reason}); the job was killed rather than run on missing pages"),
                    ),
                );
            }
            drop(uffds);
            busy.set(false);
            if let Some(l) = link {
                let _ = l
                    .send_msg(
                        &Step::PagesDone {
                            ok,
                            reason,
                            bytes: 0,
                        },
                        &[],
                    )
                    .await;
            }
        });
    }
}

/// Waits until a lazy-pages daemon listens: a byte on its status pipe. End of file without
/// one: it failed.
pub(crate) async fn daemon_listens(status: &Fd, log: &Path) -> Result<(), String> {
    let mut b = [0u8; 1];
    match status.read(&mut b).await {
        Ok(1) => Ok(()),
        _ => Err(format!(
            "criu lazy-pages failed to start: {} (log: {})",
            criu::failure_reasons(log).join("; "),
            log.display()
        )),
    }
}

/// A running `criu lazy-pages`.
pub(crate) struct LazyDaemon {
    pub pid: i32,
    pub exit: tokio::sync::oneshot::Receiver<crate::exit::ExitStatus>,
    pub log: PathBuf,
}

/// Duplicates of `fds` of process `pid`.
pub(crate) fn take_fds(pid: i32, fds: &[i32]) -> Vec<OwnedFd> {
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        return vec![];
    };
    fds.iter()
        .filter_map(|f| sys::pidfd_getfd(pidfd.as_fd(), *f).ok())
        .collect()
}
