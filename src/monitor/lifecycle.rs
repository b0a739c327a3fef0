//! The monitor's lifecycle as one enum and pure functions: which requests a phase admits, and
//! which phase an event leads to. No I/O here, so every rule is unit-tested without root.
//!
//! A checkpoint or a restore runs inline in the event loop (requests that arrive meanwhile wait
//! in the channel), so they are not phases: they start and end in `Running`/`Checkpointed`.

/// Where the monitor's workload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing started yet: the first request decides (start, restore, adopt).
    New,
    /// A container runs.
    Running,
    /// The user asked it to stop: the stop signal is sent, SIGKILL follows at the deadline.
    Stopping,
    /// The container is gone; its output is being drained before the exit is recorded.
    Draining,
    /// Dumped and stopped: nothing runs until a restore.
    Checkpointed,
    /// The exit policy scheduled a restart or a restore.
    Retrying,
    /// Ended for good (exited or failed); the monitor leaves once everyone is told.
    Ended,
    /// Handed over to another monitor (an upgrade); the container runs on without us.
    Released,
}

/// What a client asks of the workload, for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Checkpoint,
    Restore,
    Exec,
    Attach,
    Signal,
    Stop,
    Release,
    Shutdown,
    Migrate,
}

/// Why a request is refused in this phase, in words that follow the workload's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// Whether `op` may run in `phase`.
pub fn admit(phase: Phase, op: Op) -> Result<(), Refusal> {
    use Op::*;
    use Phase::*;
    match (phase, op) {
        (Running, Checkpoint | Exec | Signal | Stop | Release | Attach | Migrate) => Ok(()),
        (Stopping, Signal | Stop | Attach) => Ok(()),
        (Checkpointed | Retrying, Restore | Stop | Attach) => Ok(()),
        (Checkpointed | Retrying, Checkpoint | Exec | Signal | Release | Migrate) => {
            Err(Refusal("is checkpointed"))
        }
        (Ended | Released | New | Draining, Shutdown) => Ok(()),
        (Checkpointed, Shutdown) => Ok(()),
        (Running | Stopping, Restore) => Err(Refusal("is running")),
        (Running | Stopping | Retrying, Shutdown) => Err(Refusal("is running")),
        (Stopping, Checkpoint | Exec | Release | Migrate) => Err(Refusal("is stopping")),
        (Draining, _) => Err(Refusal("is ending")),
        (Ended, _) => Err(Refusal("is not running")),
        (Released, _) => Err(Refusal("was handed over to another monitor")),
        (New, _) => Err(Refusal("has not started")),
    }
}

/// Something that changes the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ev {
    Started,
    StartFailed,
    StopAsked,
    /// The container's init exited (for any reason).
    ContainerGone,
    /// Its output is drained; `retry`: the exit policy scheduled another attempt.
    Drained {
        retry: bool,
    },
    /// A dump succeeded; `stopped`: the tree is gone (no --leave-running).
    Dumped {
        stopped: bool,
    },
    Restored,
    /// A restore failed; nothing runs.
    RestoreFailed,
    /// The policy gave up, or a stop cancelled a scheduled attempt.
    GaveUp,
    /// Another monitor took the container over.
    HandedOver,
}

/// The phase after `ev` in `phase`.
pub fn next(phase: Phase, ev: Ev) -> Phase {
    use Ev::*;
    use Phase::*;
    match (phase, ev) {
        (_, Started | Restored) => Running,
        (_, HandedOver) => Phase::Released,
        (Running | Stopping, Dumped { stopped: true }) => Checkpointed,
        (p, Dumped { .. }) => p,
        (Running, StopAsked) => Stopping,
        (Checkpointed | Retrying, StopAsked) => Ended,
        (p, StopAsked) => p,
        (_, ContainerGone) => Draining,
        (_, Drained { retry: true }) => Retrying,
        (_, Drained { retry: false }) => Ended,
        (New, StartFailed | RestoreFailed) => Ended,
        (p, StartFailed) => p,
        (Retrying, RestoreFailed) => Retrying,
        (p, RestoreFailed) => p,
        (_, GaveUp) => Ended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_takes_every_verb_but_restore() {
        for op in [
            Op::Checkpoint,
            Op::Exec,
            Op::Attach,
            Op::Signal,
            Op::Stop,
            Op::Release,
        ] {
            assert_eq!(admit(Phase::Running, op), Ok(()), "{op:?}");
        }
        assert_eq!(
            admit(Phase::Running, Op::Restore),
            Err(Refusal("is running"))
        );
        assert!(admit(Phase::Running, Op::Shutdown).is_err());
    }

    #[test]
    fn a_checkpointed_job_restores_but_never_execs_or_dumps() {
        assert_eq!(admit(Phase::Checkpointed, Op::Restore), Ok(()));
        assert_eq!(
            admit(Phase::Checkpointed, Op::Exec),
            Err(Refusal("is checkpointed"))
        );
        assert!(admit(Phase::Checkpointed, Op::Checkpoint).is_err());
        assert_eq!(admit(Phase::Checkpointed, Op::Stop), Ok(()));
    }

    #[test]
    fn nothing_but_waiting_after_the_end() {
        for op in [Op::Checkpoint, Op::Restore, Op::Exec, Op::Signal, Op::Stop] {
            assert!(admit(Phase::Ended, op).is_err(), "{op:?}");
            assert!(admit(Phase::Draining, op).is_err(), "{op:?}");
        }
    }

    #[test]
    fn a_stop_ends_what_does_not_run_at_once() {
        assert_eq!(next(Phase::Running, Ev::StopAsked), Phase::Stopping);
        assert_eq!(next(Phase::Checkpointed, Ev::StopAsked), Phase::Ended);
        assert_eq!(next(Phase::Retrying, Ev::StopAsked), Phase::Ended);
    }

    #[test]
    fn the_ways_out_of_running() {
        assert_eq!(
            next(Phase::Running, Ev::Dumped { stopped: true }),
            Phase::Checkpointed
        );
        assert_eq!(
            next(Phase::Running, Ev::Dumped { stopped: false }),
            Phase::Running
        );
        assert_eq!(next(Phase::Running, Ev::ContainerGone), Phase::Draining);
        assert_eq!(
            next(Phase::Draining, Ev::Drained { retry: true }),
            Phase::Retrying
        );
        assert_eq!(
            next(Phase::Draining, Ev::Drained { retry: false }),
            Phase::Ended
        );
        assert_eq!(next(Phase::Running, Ev::HandedOver), Phase::Released);
    }

    #[test]
    fn failed_restores_keep_what_was_there() {
        assert_eq!(
            next(Phase::Checkpointed, Ev::RestoreFailed),
            Phase::Checkpointed
        );
        assert_eq!(next(Phase::Retrying, Ev::RestoreFailed), Phase::Retrying);
        assert_eq!(next(Phase::New, Ev::RestoreFailed), Phase::Ended);
        assert_eq!(next(Phase::Checkpointed, Ev::Restored), Phase::Running);
    }
}
