//! Policies the monitor applies on its own: periodic checkpoints, and what to do when the
//! workload ends without being asked to (`on_exit`): nothing, a cold restart, or a restore
//! from the newest good generation (then older ones, then a cold start if allowed), with
//! exponential back-off and a limit on attempts in a row.
//!
//! "In a row" ends when the workload proves it is making progress: a periodic checkpoint
//! succeeds after a restart or restore, or it runs for `PROGRESS_AFTER`. A job that crashes
//! instantly every time therefore ends `failed`, while one killed now and then is brought
//! back every time.

use super::lifecycle::{Ev, Phase};
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
    /// A dump failed and took the job with it (why): its end is answered with a restore
    /// whatever the exit policy says.
    pub dump_killed: Option<String>,
    /// When the last dump failed: an end soon after is the dump's doing.
    pub dump_failed_at: Option<Instant>,
    /// The scheduled attempt is a restore whatever the spec's policy (a dump's casualty).
    pub forced_restore: bool,
}

/// How long after a failed dump an unasked end counts as the dump's doing.
const DUMP_BLAME: Duration = Duration::from_secs(10);

/// A signal the user sent with `stasis kill`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserKill {
    pub sig: i32,
    pub at: Instant,
}

/// Signals that ask a job to end (a job that handles one and exits did what was asked).
fn asks_to_end(sig: i32, stop_signal: i32) -> bool {
    sig == stop_signal
        || [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGKILL,
        ]
        .contains(&sig)
}

/// True when the user asked for this end: a `stop`, or a `kill` that caused it — the job died
/// of the very signal sent, or exited after being asked to end within the stop timeout. A
/// `kill -s USR1` followed later by a crash is not a requested end.
pub(crate) fn exit_was_asked(
    stop_requested: bool,
    kill: Option<&UserKill>,
    status: Option<ExitStatus>,
    stop_signal: i32,
    stop_timeout: Duration,
) -> bool {
    if stop_requested {
        return true;
    }
    let Some(k) = kill else { return false };
    match status {
        Some(ExitStatus::Signaled { signal, .. }) => signal == k.sig,
        Some(ExitStatus::Exited { .. }) => {
            asks_to_end(k.sig, stop_signal) && k.at.elapsed() <= stop_timeout
        }
        None => false,
    }
}

impl PolicyState {
    /// Forgets any scheduled attempt and periodic checkpoint (the user stopped the job).
    pub fn cancel(&mut self) {
        self.dump_killed = None;
        self.dump_failed_at = None;
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
        if self.phase != Phase::Running {
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
        let mut on = self.spec.on_exit.clone();
        let Some(exit) = self.st.exit.clone() else {
            return false;
        };
        let recent_dump_failure = self
            .policy
            .dump_failed_at
            .is_some_and(|t| t.elapsed() <= DUMP_BLAME);
        if self.policy.dump_killed.is_some() || recent_dump_failure {
            // A failed dump ended the job: bring it back from its newest good generation even
            // when its policy would leave it ended, and say why.
            let why = self
                .policy
                .dump_killed
                .take()
                .unwrap_or_else(|| "a failed checkpoint".into());
            self.policy.dump_failed_at = None;
            self.event(HistEvent::new("dump-killed-job", why));
            if !generations::list(&self.wd).is_empty() {
                on.policy = ExitPolicy::Restore;
                on.when = crate::spec::ExitWhen::Always;
                self.policy.forced_restore = true;
            }
        }
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
        let delay = if self.policy.forced_restore {
            Duration::ZERO
        } else {
            on.backoff.delay(self.policy.attempts)
        };
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
        let forced = std::mem::take(&mut self.policy.forced_restore);
        let reason = self
            .st
            .exit
            .as_ref()
            .and_then(|e| e.status)
            .map(|s| format!("crash: {s}"))
            .unwrap_or_else(|| "crash".into());
        if forced || self.spec.on_exit.policy == ExitPolicy::Restore {
            let gens: Vec<u32> = generations::list(&self.wd)
                .iter()
                .rev()
                .map(|g| g.number)
                .collect();
            for g in gens {
                let reason = if forced {
                    format!("the failed checkpoint ended it ({reason})")
                } else {
                    reason.clone()
                };
                let lazy = self.lazy_on_crash();
                match self
                    .restore(
                        RestoreOpts {
                            generation: Some(g),
                            reason,
                            lazy,
                            ..Default::default()
                        },
                        true,
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
            if forced && self.spec.on_exit.policy == ExitPolicy::None {
                self.give_up(Some(
                    "a failed checkpoint ended the job and no generation could be restored".into(),
                ))
                .await;
                return;
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
        self.user_kill = None;
        match self.launch(false).await {
            Ok(_) => {
                self.st.restarts += 1;
                self.save();
                self.go(Ev::Started);
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
        self.phase = Phase::Ended;
        self.go(Ev::GaveUp);
        self.notify_exit();
        self.cleanup_container().await;
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

    fn killed(sig: i32) -> Option<ExitStatus> {
        Some(ExitStatus::Signaled {
            signal: sig,
            core_dumped: false,
        })
    }

    #[test]
    fn only_the_end_a_kill_caused_is_asked_for() {
        let t = Duration::from_secs(10);
        let now = Instant::now();
        let usr1 = UserKill {
            sig: libc::SIGUSR1,
            at: now,
        };
        // item 14: kill -s USR1, then a real crash: not asked, the policy applies
        assert!(!exit_was_asked(
            false,
            Some(&usr1),
            killed(libc::SIGSEGV),
            libc::SIGTERM,
            t
        ));
        assert!(!exit_was_asked(
            false,
            Some(&usr1),
            Some(ExitStatus::Exited { code: 3 }),
            libc::SIGTERM,
            t
        ));
        // USR1 that kills the job (no handler) is what the user asked
        assert!(exit_was_asked(
            false,
            Some(&usr1),
            killed(libc::SIGUSR1),
            libc::SIGTERM,
            t
        ));
        let term = UserKill {
            sig: libc::SIGTERM,
            at: now,
        };
        // a job that handles TERM and exits did what was asked
        assert!(exit_was_asked(
            false,
            Some(&term),
            Some(ExitStatus::Exited { code: 0 }),
            libc::SIGTERM,
            t
        ));
        // but a TERM long ago does not cover a later exit
        assert!(!exit_was_asked(
            false,
            Some(&term),
            Some(ExitStatus::Exited { code: 0 }),
            libc::SIGTERM,
            Duration::ZERO
        ));
        assert!(!exit_was_asked(
            false,
            None,
            killed(libc::SIGKILL),
            libc::SIGTERM,
            t
        ));
        assert!(exit_was_asked(
            true,
            None,
            killed(libc::SIGKILL),
            libc::SIGTERM,
            t
        ));
    }
}
