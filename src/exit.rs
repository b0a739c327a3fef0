//! How a process ended, and the exit code a shell user expects for it.
//!
//! The codes follow podman and docker: the workload's own code, 128+n when signal n killed it,
//! and 125/126/127 for failures of stasis itself, for a command that cannot be executed and for
//! one that is not found. `stasis check NAME` answers 0 or 1 (will / will not checkpoint).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Exit code for an error of stasis itself (bad flag, bad spec, unknown workload).
pub const CODE_STASIS_ERROR: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const CODE_CANNOT_EXECUTE: i32 = 126;
/// Exit code when the command is not found.
pub const CODE_NOT_FOUND: i32 = 127;
/// Exit code of `stasis check NAME` when the job will not checkpoint (0: it will; 125: the
/// check itself failed). Like `grep` or `cmp`, 1 answers "no" rather than reporting an error.
pub const CODE_WILL_NOT_CHECKPOINT: i32 = 1;
/// Exit code of a client attached to a job that moved to another host (`stasis migrate`):
/// the job did not end; its end is reported where it runs now.
pub const CODE_MIGRATED: i32 = 124;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExitStatus {
    /// It called exit with this code.
    Exited { code: i32 },
    /// A signal killed it.
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The code a shell reports for this status: the code itself, or 128+n for signal n.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Exited { code } => code,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }

    /// Decodes a raw `wait(2)` status word.
    pub fn from_raw(raw: i32) -> Option<Self> {
        if libc::WIFEXITED(raw) {
            Some(ExitStatus::Exited {
                code: libc::WEXITSTATUS(raw),
            })
        } else if libc::WIFSIGNALED(raw) {
            Some(ExitStatus::Signaled {
                signal: libc::WTERMSIG(raw),
                core_dumped: libc::WCOREDUMP(raw),
            })
        } else {
            None
        }
    }

    /// True when the process ended with code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited { code: 0 })
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited { code } => write!(f, "exited with code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(signal))?;
                if core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// The conventional name of a signal number ("SIGTERM"), or "signal N" when it has none.
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

/// Parses a signal given by name ("TERM", "SIGTERM", "term") or number ("15").
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        let max = libc::SIGRTMAX();
        return (1..=max).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_shell() {
        assert_eq!(ExitStatus::Exited { code: 0 }.code(), 0);
        assert_eq!(ExitStatus::Exited { code: 32 }.code(), 32);
        assert_eq!(
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
            .code(),
            137
        );
        assert_eq!(
            ExitStatus::Signaled {
                signal: 15,
                core_dumped: false
            }
            .code(),
            143
        );
    }

    #[test]
    fn decodes_raw_wait_status() {
        assert_eq!(
            ExitStatus::from_raw(3 << 8),
            Some(ExitStatus::Exited { code: 3 })
        );
        assert_eq!(
            ExitStatus::from_raw(9),
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        assert_eq!(
            ExitStatus::from_raw(6 | 0x80),
            Some(ExitStatus::Signaled {
                signal: 6,
                core_dumped: true
            })
        );
        // stopped, not ended
        assert_eq!(ExitStatus::from_raw(0x137f), None);
    }

    #[test]
    fn parses_signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("sigusr1"), Some(10));
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("999"), None);
    }

    #[test]
    fn display_names_the_signal() {
        let s = ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(s.to_string(), "killed by SIGKILL");
        assert_eq!(
            ExitStatus::Exited { code: 1 }.to_string(),
            "exited with code 1"
        );
    }

    #[test]
    fn serde_round_trip() {
        let s = ExitStatus::Signaled {
            signal: 15,
            core_dumped: false,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ExitStatus>(&j).unwrap(), s);
    }
}
