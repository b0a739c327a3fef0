//! Policies the monitor applies on its own: periodic checkpoints, and what to do when the
//! workload ends without being asked to (`on_exit`): nothing, a cold restart, or a restore
//! from the newest good generation (then older ones, then a cold start if allowed), with
//! exponential back-off and a limit on attempts in a row.
//!
//! "In a row" ends when the workload proves it is making progress: a periodic checkpoint
//! succeeds after a restart or restore, or it runs for `PROGRESS_AFTER`. A job that crashes
//! instantly every time therefore ends `failed`, while one killed now and then is brought
//! back every time.

use super::{diag, Event, Monitor};
use crate::exit::ExitStatus;
use crate::protocol::{CheckpointOpts, Reply, RestoreOpts};
use crate::spec::{ExitPolicy, ExitWhen};
use crate::store::events::Event as HistEvent;
use crate::store::generations;
use crate::store::state::{ExitInfo, Status};
use std::time::Duration;
use tokio::time::Instant;

/// Running this long counts as progress (resets the attempt count).
const PROGRESS_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct PolicyState {
    pub next_periodic: Option<Instant>,
    /// The newest generation this monitor has dumped.
    pub last_generation: u32,
    /// Restarts or restores in a row without progress.
    pub attempts: u32,
    pub started_at: Option<Instant>,
    /// Bumped to invalidate a scheduled attempt.
    token: u64,
    due_token: Option<u64>,
}

impl PolicyState {
    /// True while a restart or restore is scheduled.
    pub fn pending(&self) -> bool {
        self.due_token.is_some()
    }

    /// Forgets any scheduled attempt and periodic checkpoint (the user stopped the job).
    pub fn cancel(&mut self) {
        self.token += 1;
        self.due_token = None;
        self.next_periodic = None;
    }
}

/// True when `exit` counts as a crash for `when`.
pub(crate) fn counts(when: ExitWhen, exit: &ExitInfo) -> bool {
    match when {
        ExitWhen::Always => true,
        ExitWhen::Failure => {
            exit.oom_killed || !matches!(exit.status, Some(ExitStatus::Exited { code: 0 }))
        }
    }
}

impl Monitor {
    /// The workload (re)started or was restored: arm the periodic checkpoint.
    pub(crate) fn policy_started(&mut self) {
        self.policy.started_at = Some(Instant::now());
        self.policy.next_periodic = self.spec.checkpoint.every.map(|d| Instant::now() + d.0);
    }

    fn note_progress(&mut self) {
        if self.policy.attempts > 0 {
            diag("progress: attempt count reset");
        }
        self.policy.attempts = 0;
    }

    /// Takes a periodic checkpoint (leaving the job running unless the spec says otherwise).
    pub(crate) async fn periodic_checkpoint(&mut self) {
        self.policy.next_periodic = None;
        if self.live.is_none() || self.pending_exit.is_some() {
            return;
        }
        let leave_running = self.spec.checkpoint.leave_running.unwrap_or(true);
        let r = self
            .checkpoint(CheckpointOpts {
                leave_running,
                reason: "periodic".into(),
                ..Default::default()
            })
            .await;
        match r {
            Reply::Checkpointed { .. } => self.note_progress(),
            Reply::Error { message, .. } => diag(&format!(
                "periodic checkpoint failed (retried next period): {message}"
            )),
            _ => {}
        }
        if self.live.is_some() {
            self.policy.next_periodic = self.spec.checkpoint.every.map(|d| Instant::now() + d.0);
        }
    }

    /// Called with a recorded exit the user did not ask for: schedules a restart or restore
    /// when the policy says so (returns true), or records the end (returns false).
    pub(crate) async fn policy_wants_retry(&mut self) -> bool {
        let on = self.spec.on_exit.clone();
        let Some(exit) = self.st.exit.clone() else {
            return false;
        };
        if on.policy == ExitPolicy::None || !counts(on.when, &exit) {
            return false;
        }
        if self
            .policy
            .started_at
            .is_some_and(|t| t.elapsed() >= PROGRESS_AFTER)
        {
            self.note_progress();
        }
        self.policy.attempts += 1;
        let max = on.max_attempts();
        if self.policy.attempts > max {
            let why = format!(
                "gave up after {max} attempts in a row (last: {})",
                exit.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into())
            );
            self.st.status = Status::Failed;
            self.st.error = Some(why.clone());
            self.st.note = None;
            self.save();
            self.event(HistEvent::new("failed", why).code(exit.code));
            return false;
        }
        let delay = on.backoff.delay(self.policy.attempts);
        let what = if on.policy == ExitPolicy::Restore {
            "restore"
        } else {
            "restart"
        };
        self.st.note = Some(format!(
            "{what} in {:.1}s (attempt {} of {max})",
            delay.as_secs_f64(),
            self.policy.attempts
        ));
        self.save();
        self.policy.token += 1;
        let token = self.policy.token;
        self.policy.due_token = Some(token);
        let tx = self.tx.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::PolicyDue);
        });
        diag(&format!(
            "{what} scheduled in {delay:?} (attempt {})",
            self.policy.attempts
        ));
        true
    }

    /// A scheduled attempt is due (or a stop came in while one was pending).
    pub(crate) async fn policy_due(&mut self) {
        if self.policy.due_token.take().is_none() || self.live.is_some() {
            return;
        }
        if self.st.stop_requested {
            self.give_up(None).await;
            return;
        }
        let reason = self
            .st
            .exit
            .as_ref()
            .and_then(|e| e.status)
            .map(|s| format!("crash: {s}"))
            .unwrap_or_else(|| "crash".into());
        if self.spec.on_exit.policy == ExitPolicy::Restore {
            let gens: Vec<u32> = generations::list(&self.wd)
                .iter()
                .rev()
                .map(|g| g.number)
                .collect();
            for g in gens {
                match self
                    .restore(
                        RestoreOpts {
                            generation: Some(g),
                            reason: reason.clone(),
                            ..Default::default()
                        },
                        None,
                    )
                    .await
                {
                    Ok(_) => return,
                    Err(Reply::Error { message, .. }) => diag(&format!(
                        "restore of generation {g} after a crash failed: {message}"
                    )),
                    Err(_) => {}
                }
            }
            if !self.spec.on_exit.cold_start.unwrap_or(true) {
                self.give_up(Some(
                    "no generation could be restored and cold starts are not allowed".into(),
                ))
                .await;
                return;
            }
            diag("no generation restored; cold start");
        }
        self.cold_restart(&reason).await;
    }

    async fn cold_restart(&mut self, reason: &str) {
        self.st.status = Status::Created;
        match self.launch().await {
            Ok(_) => {
                self.st.restarts += 1;
                self.save();
                self.event(HistEvent::new("restart", reason.to_string()));
            }
            Err((code, message)) => {
                self.event(HistEvent::new("restart-failed", message.clone()).code(code));
                self.record_exit(ExitInfo {
                    status: None,
                    code,
                    oom_killed: false,
                    at: crate::store::state::now_ms(),
                    reason: Some(message),
                });
                if !self.policy_wants_retry().await {
                    self.give_up(None).await;
                }
            }
        }
    }

    /// Ends for good: tells everyone and lets the monitor exit.
    async fn give_up(&mut self, why: Option<String>) {
        if let Some(w) = why {
            self.st.status = Status::Failed;
            self.st.error = Some(w.clone());
            self.event(HistEvent::new("failed", w));
        }
        self.st.note = None;
        self.save();
        self.notify_exit().await;
        self.cleanup_container();
        self.exiting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: ExitStatus, oom: bool) -> ExitInfo {
        ExitInfo {
            status: Some(status),
            code: status.code(),
            oom_killed: oom,
            at: 0,
            reason: None,
        }
    }

    #[test]
    fn what_counts_as_a_crash() {
        let ok = exit(ExitStatus::Exited { code: 0 }, false);
        let bad = exit(ExitStatus::Exited { code: 3 }, false);
        let killed = exit(
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            },
            false,
        );
        assert!(!counts(ExitWhen::Failure, &ok));
        assert!(counts(ExitWhen::Failure, &bad));
        assert!(counts(ExitWhen::Failure, &killed));
        assert!(counts(ExitWhen::Always, &ok));
        let oom = exit(ExitStatus::Exited { code: 0 }, true);
        assert!(counts(ExitWhen::Failure, &oom));
    }
}
