//! The `cuda-checkpoint` mode: stasis run under that name speaks the command line CRIU's cuda
//! plugin (plugins/cuda/cuda_plugin.c in CRIU 4.2) uses with NVIDIA's tool of that name.
//!
//! What the plugin relies on: `-h` exits 0 and mentions `--action` (else the plugin disables
//! itself); `--get-state --pid N` prints the state word first (it compares prefixes);
//! `--get-restore-tid --pid N` prints only the number (it calls atoi); `--action
//! lock|checkpoint|restore|unlock --pid N [--timeout MS]`; and a failure is any non-zero exit.
//! The plugin reads stdout and stderr through one pipe, so a success prints nothing else, and a
//! failure prints one line, which lands in CRIU's log.

use super::driver::{self, DriverError, Op};
use super::state::ProcessState;
use std::ffi::OsString;

/// Exit status of a success.
pub const EXIT_OK: i32 = 0;
/// Exit status when the driver could not do what was asked (or could not be loaded).
pub const EXIT_FAILED: i32 = 1;
/// Exit status for a command line this mode does not accept.
pub const EXIT_USAGE: i32 = 2;

/// The help text; CRIU's plugin looks for `--action` in it.
pub const USAGE: &str = "\
usage: cuda-checkpoint --action lock|checkpoint|restore|unlock --pid PID [--timeout MS]
       cuda-checkpoint --get-state --pid PID
       cuda-checkpoint --get-restore-tid --pid PID
stasis's implementation of NVIDIA's cuda-checkpoint, on the CUDA driver's checkpoint API
(libcuda.so.1, driver 570 or newer). --timeout bounds the wait of lock, in milliseconds.";

/// A checkpoint action, in the order the plugin uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let in-flight GPU work finish and block new CUDA calls.
    Lock,
    /// Copy GPU memory to host memory and release the device.
    Checkpoint,
    /// Put GPU memory back on the device.
    Restore,
    /// Let CUDA calls run again.
    Unlock,
}

/// What one run was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Print the usage.
    Help,
    /// Print the process's CUDA state.
    GetState { pid: i32 },
    /// Print the id of the process's CUDA restore thread.
    GetRestoreTid { pid: i32 },
    /// Do an action; `timeout_ms` applies to lock.
    Action {
        action: Action,
        pid: i32,
        timeout_ms: Option<u32>,
    },
}

/// A command line this mode does not accept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("bad {flag} {value:?}: {why}")]
    BadValue {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("unknown action {0:?} (lock, checkpoint, restore or unlock)")]
    UnknownAction(String),
    #[error("give one of --action, --get-state or --get-restore-tid")]
    NoOperation,
    #[error("give only one of --action, --get-state or --get-restore-tid")]
    TwoOperations,
    #[error("--pid is needed")]
    NoPid,
}

/// Parses the arguments after `argv[0]`. `--flag value` and `--flag=value` are both accepted.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Request, UsageError> {
    enum Op0 {
        State,
        Tid,
        Act(Action),
    }
    let mut op: Option<Op0> = None;
    let mut pid: Option<i32> = None;
    let mut timeout: Option<u32> = None;
    fn set_op(o: Op0, op: &mut Option<Op0>) -> Result<(), UsageError> {
        match op.replace(o) {
            None => Ok(()),
            Some(_) => Err(UsageError::TwoOperations),
        }
    }
    let mut it = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &'static str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(UsageError::MissingValue(name))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Request::Help),
            "--get-state" => set_op(Op0::State, &mut op)?,
            "--get-restore-tid" => set_op(Op0::Tid, &mut op)?,
            "--action" => {
                let v = value("--action")?;
                let a = match v.as_str() {
                    "lock" => Action::Lock,
                    "checkpoint" => Action::Checkpoint,
                    "restore" => Action::Restore,
                    "unlock" => Action::Unlock,
                    _ => return Err(UsageError::UnknownAction(v)),
                };
                set_op(Op0::Act(a), &mut op)?;
            }
            "--pid" => {
                let v = value("--pid")?;
                pid = Some(match v.parse::<i32>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        return Err(UsageError::BadValue {
                            flag: "--pid",
                            value: v,
                            why: "not a process id",
                        })
                    }
                });
            }
            "--timeout" => {
                let v = value("--timeout")?;
                timeout = Some(v.parse::<u32>().map_err(|_| UsageError::BadValue {
                    flag: "--timeout",
                    value: v,
                    why: "not a number of milliseconds",
                })?);
            }
            _ => return Err(UsageError::Unknown(arg)),
        }
    }
    let op = op.ok_or(UsageError::NoOperation)?;
    let pid = pid.ok_or(UsageError::NoPid)?;
    Ok(match op {
        Op0::State => Request::GetState { pid },
        Op0::Tid => Request::GetRestoreTid { pid },
        Op0::Act(action) => Request::Action {
            action,
            pid,
            timeout_ms: timeout,
        },
    })
}

/// Why a request failed, as the one line the mode prints.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cuCheckpointProcessGetState for pid {pid} returned {state}, a state this stasis does not know")]
    UnknownState { pid: i32, state: i32 },
    #[error("{call} for pid {pid} returned no value")]
    NoValue { call: &'static str, pid: i32 },
}

/// The driver operation a request needs (none for help).
pub fn op_of(req: &Request) -> Option<Op> {
    Some(match *req {
        Request::Help => return None,
        Request::GetState { pid } => Op::GetState(pid),
        Request::GetRestoreTid { pid } => Op::GetRestoreTid(pid),
        Request::Action {
            action,
            pid,
            timeout_ms,
        } => match action {
            Action::Lock => Op::Lock {
                pid,
                timeout_ms: timeout_ms.unwrap_or(0),
            },
            Action::Checkpoint => Op::Checkpoint(pid),
            Action::Restore => Op::Restore(pid),
            Action::Unlock => Op::Unlock(pid),
        },
    })
}

/// What a request prints on success, given the value the driver returned for it.
pub fn success_output(req: &Request, value: Option<i32>) -> Result<String, RequestError> {
    let need = |call, pid| value.ok_or(RequestError::NoValue { call, pid });
    Ok(match *req {
        Request::Help => USAGE.to_string(),
        Request::GetState { pid } => {
            let n = need("cuCheckpointProcessGetState", pid)?;
            ProcessState::from_driver(n)
                .ok_or(RequestError::UnknownState { pid, state: n })?
                .to_string()
        }
        Request::GetRestoreTid { pid } => {
            need("cuCheckpointProcessGetRestoreThreadId", pid)?.to_string()
        }
        Request::Action { .. } => String::new(),
    })
}

/// Runs the mode with the arguments after `argv[0]`; returns the exit status.
pub fn main<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let req = match parse(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cuda-checkpoint: {e}; see cuda-checkpoint --help");
            return EXIT_USAGE;
        }
    };
    let value = match op_of(&req).map(driver::call) {
        None => Ok(None),
        Some(r) => r.map_err(RequestError::from),
    };
    match value.and_then(|v| success_output(&req, v)) {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("cuda-checkpoint: {e}");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Request, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_the_plugins_command_lines() {
        assert_eq!(p(&["-h"]), Ok(Request::Help));
        assert_eq!(
            p(&["--get-state", "--pid", "12"]),
            Ok(Request::GetState { pid: 12 })
        );
        assert_eq!(
            p(&["--get-restore-tid", "--pid", "12"]),
            Ok(Request::GetRestoreTid { pid: 12 })
        );
        assert_eq!(
            p(&["--action", "lock", "--pid", "12", "--timeout", "10000"]),
            Ok(Request::Action {
                action: Action::Lock,
                pid: 12,
                timeout_ms: Some(10000)
            })
        );
        for (word, action) in [
            ("checkpoint", Action::Checkpoint),
            ("restore", Action::Restore),
            ("unlock", Action::Unlock),
        ] {
            assert_eq!(
                p(&["--action", word, "--pid", "5"]),
                Ok(Request::Action {
                    action,
                    pid: 5,
                    timeout_ms: None
                })
            );
        }
        assert_eq!(
            p(&["--pid=5", "--action=unlock"]),
            Ok(Request::Action {
                action: Action::Unlock,
                pid: 5,
                timeout_ms: None
            })
        );
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert_eq!(p(&[]), Err(UsageError::NoOperation));
        assert_eq!(p(&["--get-state"]), Err(UsageError::NoPid));
        assert_eq!(
            p(&["--get-state", "--get-restore-tid", "--pid", "1"]),
            Err(UsageError::TwoOperations)
        );
        assert_eq!(
            p(&["--action", "toggle", "--pid", "1"]),
            Err(UsageError::UnknownAction("toggle".into()))
        );
        assert_eq!(p(&["--action"]), Err(UsageError::MissingValue("--action")));
        assert!(matches!(
            p(&["--get-state", "--pid", "0"]),
            Err(UsageError::BadValue { flag: "--pid", .. })
        ));
        assert!(matches!(
            p(&["--action", "lock", "--pid", "3", "--timeout", "-1"]),
            Err(UsageError::BadValue {
                flag: "--timeout",
                ..
            })
        ));
        assert_eq!(
            p(&["--frobnicate"]),
            Err(UsageError::Unknown("--frobnicate".into()))
        );
    }

    #[test]
    fn help_mentions_action_for_the_plugin() {
        assert!(USAGE.contains("--action"));
        assert_eq!(op_of(&Request::Help), None);
    }

    #[test]
    fn the_lock_timeout_reaches_the_driver_and_nothing_else_takes_one() {
        let lock = Request::Action {
            action: Action::Lock,
            pid: 3,
            timeout_ms: Some(500),
        };
        assert_eq!(
            op_of(&lock),
            Some(Op::Lock {
                pid: 3,
                timeout_ms: 500
            })
        );
        let unlock = Request::Action {
            action: Action::Unlock,
            pid: 3,
            timeout_ms: Some(500),
        };
        assert_eq!(op_of(&unlock), Some(Op::Unlock(3)));
    }

    #[test]
    fn outputs_are_what_the_plugin_parses() {
        let st = Request::GetState { pid: 9 };
        assert_eq!(success_output(&st, Some(1)).unwrap(), "locked");
        let e = success_output(&st, Some(7)).unwrap_err().to_string();
        assert_eq!(
            e,
            "cuCheckpointProcessGetState for pid 9 returned 7, a state this stasis does not know"
        );
        let tid = Request::GetRestoreTid { pid: 9 };
        assert_eq!(success_output(&tid, Some(4711)).unwrap(), "4711");
        let act = Request::Action {
            action: Action::Checkpoint,
            pid: 9,
            timeout_ms: None,
        };
        assert_eq!(success_output(&act, None).unwrap(), "");
    }
}
