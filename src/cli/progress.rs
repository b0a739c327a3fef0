//! Progress for long operations (a checkpoint, an export or import, `--all`), drawn with
//! indicatif on stderr when stderr is a terminal; in a pipe, a log file or with `-q` nothing is
//! drawn and no indicatif code runs.
//!
//! A spinner that ticks by itself runs a thread. A CLI that forks a monitor must be
//! single-threaded at the fork, so ticking is only ever started once the request is with a
//! monitor ([`stasis::api::Pending`]) and the thread is joined before anything else happens.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Whether progress may be drawn.
pub fn wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

const SPINNER: &str = "{spinner} {msg} {elapsed}";
const COUNTER: &str = "{msg} {pos}/{len} [{bar:30}] {elapsed}";
const BYTES: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}";
const BYTES_OPEN: &str = "{spinner} {msg} {bytes} {bytes_per_sec}";

fn style(template: &str) -> ProgressStyle {
    // the templates are constants: a bad one is a bug caught by the unit test below
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar(len: Option<u64>, template: &str, msg: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    pb.set_style(style(template));
    pb.set_message(msg);
    // drawn at once, so even an operation that ends within a tick shows what it did
    pb.tick();
    pb
}

/// A spinner with the elapsed time for one operation; cleared when finished.
pub struct Activity(Option<ProgressBar>);

impl Activity {
    /// Shows `msg` (nothing unless [`wanted`]); a thread keeps the spinner and the elapsed
    /// time moving, so the caller must not fork before [`Activity::done`].
    pub fn start(msg: String, quiet: bool) -> Activity {
        if !wanted(quiet) {
            return Activity(None);
        }
        let pb = bar(None, SPINNER, msg);
        pb.enable_steady_tick(Duration::from_millis(100));
        Activity(Some(pb))
    }

    /// Clears the spinner and joins its thread.
    pub fn done(self) {
        if let Some(pb) = self.0 {
            pb.disable_steady_tick();
            pb.finish_and_clear();
        }
    }
}

/// A `k/total` bar for `--all`; lines printed through [`Counter::println`] appear above it.
pub struct Counter(Option<ProgressBar>);

impl Counter {
    /// A bar for `total` workloads (nothing unless [`wanted`]).
    pub fn new(total: usize, verb: &str, quiet: bool) -> Counter {
        if !wanted(quiet) || total == 0 {
            return Counter(None);
        }
        let pb = bar(Some(total as u64), COUNTER, verb.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        Counter(Some(pb))
    }

    /// Counts one more done.
    pub fn inc(&self) {
        if let Some(pb) = &self.0 {
            pb.inc(1);
        }
    }

    /// Prints a result line on stdout without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.0 {
            Some(pb) => pb.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Clears the bar and joins its thread.
    pub fn done(self) {
        if let Some(pb) = self.0 {
            pb.disable_steady_tick();
            pb.finish_and_clear();
        }
    }
}

/// A byte count (against `total` when known) for an export or import; it draws as the bytes
/// pass, without a thread.
pub fn bytes(total: Option<u64>, msg: String, quiet: bool) -> Option<ProgressBar> {
    if !wanted(quiet) {
        return None;
    }
    Some(match total {
        Some(_) => bar(total, BYTES, msg),
        None => bar(None, BYTES_OPEN, msg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for t in [SPINNER, COUNTER, BYTES, BYTES_OPEN] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
