//! How long a migrating job may stay frozen before the target takes it (`migrate --timeout`).
//!
//! ssh's keepalives end a migration whose network went silent, but not one whose target
//! still answers at the ssh level while its stasis, or CRIU there, hangs: the source then
//! waited, the job frozen, for a `Ready` that never came. The watchdog bounds that wait. It
//! is armed when the source dumps and, should the limit pass before the command commits, it
//! shuts the migration's channels down: whatever the command or the source's CRIU waits on
//! then fails, and the usual rollback resumes the job here. The commit and the watchdog race
//! for one state, so exactly one of them wins: a job is never given away after its migration
//! timed out, nor rolled back after it was committed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The default limit: generous, since a stream move of a large job is frozen for as long as
/// its memory takes to cross the network.
pub const DEFAULT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Armed,
    Committing,
    Disarmed,
    Fired,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a valid state behind: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The armed watchdog of one migration; disarmed when dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    limit: Duration,
}

impl Watchdog {
    /// Runs `on_fire` once `limit` has passed, unless [`Watchdog::try_commit`] came first or
    /// the watchdog was dropped. A zero limit never fires.
    pub fn arm(
        limit: Duration,
        on_fire: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Armed),
            cv: Condvar::new(),
        });
        let mut thread = None;
        if !limit.is_zero() {
            let s = Arc::clone(&shared);
            let t = std::thread::Builder::new().name("migrate-deadline".into());
            thread = Some(t.spawn(move || {
                let st = s.lock();
                let (mut st, _) =
                    s.cv.wait_timeout_while(st, limit, |st| *st == State::Armed)
                        .unwrap_or_else(|e| e.into_inner());
                if *st == State::Armed {
                    *st = State::Fired;
                    drop(st);
                    on_fire();
                }
            })?);
        }
        Ok(Watchdog {
            shared,
            thread,
            limit,
        })
    }

    /// Claims the migration for the commit: false when the watchdog fired first.
    pub fn try_commit(&self) -> bool {
        let mut st = self.shared.lock();
        if *st == State::Armed {
            *st = State::Committing;
            self.shared.cv.notify_all();
        }
        *st == State::Committing
    }

    /// The reason to give when it fired: what the target failed to do, and in what time.
    pub fn fired(&self, dest: &str) -> Option<String> {
        (*self.shared.lock() == State::Fired).then(|| {
            format!(
                "{dest} did not take the job within {} (migrate --timeout)",
                crate::spec::Dur(self.limit)
            )
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            if *st == State::Armed {
                *st = State::Disarmed;
            }
            self.shared.cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            // It ends at once now; a panic inside it has nothing left to report.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn flag() -> (Arc<AtomicBool>, impl FnOnce() + Send + 'static) {
        let f = Arc::new(AtomicBool::new(false));
        let g = Arc::clone(&f);
        (f, move || g.store(true, Ordering::SeqCst))
    }

    #[test]
    fn it_fires_once_the_limit_passes_and_then_no_commit_is_possible() {
        let (fired, on_fire) = flag();
        let w = Watchdog::arm(Duration::from_millis(1), on_fire).expect("arm");
        // Waits for the condition, not for a time: the thread sets the state, then the flag.
        while !fired.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert!(!w.try_commit());
        let why = w.fired("hostb").expect("fired");
        assert!(why.contains("hostb") && why.contains("1ms"), "{why}");
    }

    #[test]
    fn a_commit_first_means_it_never_fires() {
        let (fired, on_fire) = flag();
        let w = Watchdog::arm(Duration::from_secs(3600), on_fire).expect("arm");
        assert!(w.try_commit());
        assert!(w.try_commit(), "the commit keeps its claim");
        assert_eq!(w.fired("hostb"), None);
        drop(w);
        assert!(!fired.load(Ordering::SeqCst));
    }

    #[test]
    fn dropped_or_unlimited_it_never_fires() {
        let (fired, on_fire) = flag();
        drop(Watchdog::arm(Duration::from_secs(3600), on_fire).expect("arm"));
        let (fired0, on_fire0) = flag();
        let w = Watchdog::arm(Duration::ZERO, on_fire0).expect("arm");
        assert!(w.thread.is_none());
        assert!(w.try_commit());
        drop(w);
        assert!(!fired.load(Ordering::SeqCst) && !fired0.load(Ordering::SeqCst));
    }
}
