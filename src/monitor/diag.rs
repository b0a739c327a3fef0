//! The monitor's own diagnostics, through `tracing`, into `monitor.log` in the workload's
//! directory: one line per event with an RFC 3339 UTC timestamp and a level, filtered by
//! `STASIS_LOG` (`debug`, `warn`, or directives such as `info,stasis::monitor=trace`; `info`
//! when unset). The CLI forks the monitor, so the monitor sees the caller's `STASIS_LOG`.
//!
//! The writer is a plain file behind a mutex, written on the thread that logs: the monitor is
//! single-threaded and must stay so (it forks the container's init at any time), so no
//! background writer thread is ever started. The subscriber is built at the first event, not
//! at start-up: building it costs some 40 µs, which a `run --rm true` of 4 ms should not wait
//! for before its container starts.

use std::cell::RefCell;
use std::fs::File;
use std::sync::Mutex;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that sets the level.
pub const ENV: &str = "STASIS_LOG";

thread_local! {
    /// monitor.log until the first event installs the subscriber.
    static PENDING: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// Sends this process's diagnostics to `file`. Called once, early in the monitor.
pub(crate) fn init(file: File) {
    PENDING.with(|p| *p.borrow_mut() = Some(file));
}

/// Installs the subscriber if an event is the first.
fn ready() {
    if let Some(f) = PENDING.with(|p| p.borrow_mut().take()) {
        install(f);
    }
}

fn install(file: File) {
    let spec = std::env::var(ENV).ok();
    let parsed = spec.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(t)) => t.clone(),
        _ => Targets::new().with_default(LevelFilter::INFO),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init();
    if let (Some(s), Some(Err(e))) = (spec, parsed) {
        warn(&format!(
            "{ENV}={s:?} is not understood ({e}); logging at info"
        ));
    }
}

/// Something worth knowing happened (the default level).
pub(crate) fn diag(msg: &str) {
    ready();
    tracing::info!("{msg}");
}

/// Something failed that the monitor works around.
pub(crate) fn warn(msg: &str) {
    ready();
    tracing::warn!("{msg}");
}

/// Detail for whoever debugs the monitor (`STASIS_LOG=debug`).
pub(crate) fn debug(msg: &str) {
    ready();
    tracing::debug!("{msg}");
}

/// A failure that ends the monitor.
pub(crate) fn error(msg: &str) {
    ready();
    tracing::error!("{msg}");
}
