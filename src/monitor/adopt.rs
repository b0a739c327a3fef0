//! Adoption: a new monitor takes over a running container whose monitor is gone (killed, or
//! handing over to a newer stasis). Nothing of the container's plumbing lived only in the old
//! monitor: init kept the outer ends of every pipe and pty, so the job never saw its output
//! fail (it waited on a full pipe at worst), and the new monitor picks everything up: the
//! control socket, the workload's and the sessions' stdio (and what they wrote meanwhile), the
//! log, the policies.

use super::lifecycle::{Ev, Phase};
use super::{diag, err_reply, Monitor};
use crate::exit::CODE_STASIS_ERROR;
use crate::protocol::Reply;
use crate::store::events::Event as HistEvent;
use crate::store::state::{ProcRef, Status};
use crate::sys;

impl Monitor {
    /// `Adopt` (a new monitor's first request): takes over the container recorded in the
    /// state, or the one a restore interrupted by the old monitor's death left behind.
    pub(crate) async fn adopt(&mut self) -> Reply {
        if self.phase != Phase::New {
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} is already supervised", self.wd.name),
            );
        }
        let Some(init) = self.st.init.filter(|i| i.alive()) else {
            self.phase = Phase::Ended;
            return err_reply(
                CODE_STASIS_ERROR,
                format!("{} has no running container to adopt", self.wd.name),
            );
        };
        match self.adopt_pid(init).await {
            Ok(()) => Reply::Started { pid: init.pid },
            Err(e) => {
                self.phase = Phase::Ended;
                err_reply(
                    CODE_STASIS_ERROR,
                    format!("adopt {} (init pid {}): {e}", self.wd.name, init.pid),
                )
            }
        }
    }

    async fn adopt_pid(&mut self, init: ProcRef) -> Result<(), String> {
        let pidfd = sys::pidfd_open(init.pid).map_err(|e| format!("pidfd_open: {e}"))?;
        // The pid is pinned now: check it is still the process the state names.
        if !init.alive() {
            return Err("it ended while being adopted".into());
        }
        let procs = self
            .take_container(init.pid, pidfd, false)
            .await
            .map_err(|(_, m)| m)?;
        let problems = self.take_sessions(&procs);
        for p in &problems {
            diag(p);
        }
        let main = procs
            .iter()
            .find(|p| p.id == crate::protocol::init::MAIN_ID);
        if main.is_none() {
            // The old monitor died between starting the container and its workload: there is
            // nothing to supervise, and the container must not linger.
            if let Some(live) = self.live.take() {
                let _ =
                    sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&*live.pidfd), libc::SIGKILL);
            }
            self.record_exit(crate::store::state::ExitInfo {
                status: None,
                code: crate::exit::CODE_STASIS_ERROR,
                oom_killed: false,
                at: crate::store::state::now_ms(),
                reason: Some("its monitor died before the workload started".into()),
            });
            self.cleanup_container().await;
            return Err(
                "its monitor died before the workload started; the container was removed".into(),
            );
        }
        // An interrupted restore's pidfile led here: it has served.
        let _ = std::fs::remove_file(self.wd.restore_pidfile());
        if let Some(l) = self.log.borrow_mut().as_mut() {
            let _ = l.marker("adopted by a new monitor: the output continues");
        }
        self.st.status = Status::Running;
        self.st.restoring_since = None;
        self.st.init = Some(init);
        self.st.note = None;
        self.save();
        self.go(Ev::Started);
        self.event(HistEvent::new("adopt", format!("init pid {}", init.pid)));
        self.policy_started();
        diag(&format!("adopted the container of init pid {}", init.pid));
        Ok(())
    }

    /// `Release`: leaves the container to another monitor (an upgrade). The pumps stop where
    /// they are; what is unread stays in the pipes init keeps, for the next monitor.
    pub(crate) async fn release(&mut self) -> Reply {
        if let Some(live) = self.live.take() {
            live.link.reader.abort();
        }
        self.stdin_tx.send_replace(None);
        if let Some(s) = self.stdio.take() {
            s.abandon();
        }
        for s in self.sessions.values_mut() {
            if let Some(st) = s.stdio.take() {
                st.abandon();
            }
        }
        self.policy.cancel();
        self.notice(&format!(
            "{} is handed over to another monitor: attach again with `stasis attach {}`",
            self.wd.name, self.wd.name
        ));
        let targets: Vec<u64> = self.attached.drain().collect();
        for cid in targets {
            self.reply(
                cid,
                err_reply(
                    CODE_STASIS_ERROR,
                    format!("{} moved to another monitor; attach again", self.wd.name),
                ),
            );
        }
        self.st.monitor = None;
        self.save();
        self.event(HistEvent::new("release", "handed over to another monitor"));
        self.go(Ev::HandedOver);
        Reply::Ok
    }
}
