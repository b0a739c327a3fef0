//! The CUDA driver, as stasis sees it: one operation per run of the embedded helper
//! (`super::helper`, which loads libcuda.so.1 in a dynamically linked process), its replies
//! parsed into values and typed errors.

use std::fmt;
use std::path::PathBuf;

/// The library every CUDA program loads; named in every error about it.
pub const LIBCUDA: &str = "libcuda.so.1";

/// The driver generation that brought the checkpoint API, for "too old" errors.
pub const MIN_DRIVER: &str = "NVIDIA driver 570 or newer (CUDA 12.8)";

/// One driver operation: a query of the host, or one call of the checkpoint API on a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Library, version, checkpoint API and devices.
    Probe,
    /// `cuCheckpointProcessGetState`.
    GetState(i32),
    /// `cuCheckpointProcessGetRestoreThreadId`.
    GetRestoreTid(i32),
    /// `cuCheckpointProcessLock`, waiting at most `timeout_ms` (0: no limit).
    Lock { pid: i32, timeout_ms: u32 },
    /// `cuCheckpointProcessCheckpoint`.
    Checkpoint(i32),
    /// `cuCheckpointProcessRestore`.
    Restore(i32),
    /// `cuCheckpointProcessUnlock`.
    Unlock(i32),
}

impl Op {
    /// The helper's argv for this operation.
    pub fn helper_args(&self) -> Vec<String> {
        let (name, pid, extra) = match *self {
            Op::Probe => return vec!["probe".into()],
            Op::GetState(p) => ("get-state", p, None),
            Op::GetRestoreTid(p) => ("get-restore-tid", p, None),
            Op::Lock { pid, timeout_ms } => ("lock", pid, Some(timeout_ms)),
            Op::Checkpoint(p) => ("checkpoint", p, None),
            Op::Restore(p) => ("restore", p, None),
            Op::Unlock(p) => ("unlock", p, None),
        };
        let mut a = vec![name.to_string(), pid.to_string()];
        a.extend(extra.map(|t| t.to_string()));
        a
    }

    /// The process the operation acts on.
    pub fn pid(&self) -> Option<i32> {
        match *self {
            Op::Probe => None,
            Op::GetState(p)
            | Op::GetRestoreTid(p)
            | Op::Checkpoint(p)
            | Op::Restore(p)
            | Op::Unlock(p) => Some(p),
            Op::Lock { pid, .. } => Some(pid),
        }
    }
}

/// The CUDA version libcuda implements, as `cuDriverGetVersion` encodes it (12080 is 12.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion(pub i32);

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CUDA {}.{}", self.0 / 1000, self.0 % 1000 / 10)
    }
}

/// A version for messages: the number the driver gave, or that it gave none.
fn describe(v: Option<CudaVersion>) -> String {
    v.map_or_else(|| "an unknown CUDA version".into(), |v| v.to_string())
}

/// Why a driver operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// dlopen failed: no NVIDIA driver here, or not where the loader looks.
    #[error("cannot load {LIBCUDA}: {reason} (is the NVIDIA driver installed?)")]
    NoLibrary { reason: String },
    /// The library predates the checkpoint API.
    #[error("driver too old: {LIBCUDA} ({}) has no {symbol}; checkpointing GPU state needs {MIN_DRIVER}", describe(*.version))]
    TooOld {
        symbol: String,
        version: Option<CudaVersion>,
    },
    /// A driver call returned an error.
    #[error("{call}{} failed: {text} (CUDA error {code})", .pid.map(|p| format!(" for pid {p}")).unwrap_or_default())]
    Call {
        call: String,
        pid: Option<i32>,
        code: i32,
        text: String,
    },
    /// The helper could not be started, or said something this stasis does not understand.
    #[error("the libcuda helper failed: {0}")]
    Helper(String),
}

/// What the helper printed, record by record.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reply {
    /// The libcuda file loaded.
    pub lib: Option<PathBuf>,
    /// dlopen's complaint when nothing was loaded.
    pub nolib: Option<String>,
    /// The CUDA version the library implements.
    pub version: Option<CudaVersion>,
    /// Symbols the operation needed and the library lacks.
    pub missing: Vec<String>,
    /// The first failed call: (function, code, text).
    pub fail: Option<(String, i32, String)>,
    /// Device names (probe).
    pub gpus: Vec<String>,
    /// The value asked for (a state or a thread id).
    pub value: Option<i32>,
}

impl Reply {
    /// Parses the helper's output; fails when it is cut short (no `end`) or malformed.
    pub fn parse(text: &str) -> Result<Reply, DriverError> {
        let bad = |l: &str| DriverError::Helper(format!("unexpected output {l:?}"));
        let mut r = Reply::default();
        for line in text.lines() {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "end" => return Ok(r),
                "lib" => r.lib = Some(rest.into()),
                "nolib" => r.nolib = Some(rest.into()),
                "version" => r.version = Some(CudaVersion(rest.parse().map_err(|_| bad(line))?)),
                "missing" => r.missing.push(rest.into()),
                "gpu" => r.gpus.push(rest.into()),
                "value" => r.value = Some(rest.parse().map_err(|_| bad(line))?),
                "fail" => {
                    let mut f = rest.splitn(3, ' ');
                    let call = f.next().unwrap_or_default().to_string();
                    let code = f
                        .next()
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| bad(line))?;
                    let text = match f.next().unwrap_or("-") {
                        "-" => "an error the driver does not describe".to_string(),
                        t => t.to_string(),
                    };
                    r.fail.get_or_insert((call, code, text));
                }
                _ => return Err(bad(line)),
            }
        }
        Err(DriverError::Helper(
            "it stopped before the end of its reply (crashed inside libcuda?)".into(),
        ))
    }

    /// The reply as the outcome of `op`: the value it asked for, or the first thing that went
    /// wrong, in the order it happened (load, symbols, calls).
    pub fn outcome(&self, op: &Op) -> Result<Option<i32>, DriverError> {
        if let Some(reason) = &self.nolib {
            return Err(DriverError::NoLibrary {
                reason: reason.clone(),
            });
        }
        if let Some(symbol) = self.missing.first().filter(|_| *op != Op::Probe) {
            return Err(DriverError::TooOld {
                symbol: symbol.clone(),
                version: self.version,
            });
        }
        if let Some((call, code, text)) = &self.fail {
            return Err(DriverError::Call {
                call: call.clone(),
                pid: op.pid().filter(|_| call.starts_with("cuCheckpoint")),
                code: *code,
                text: text.clone(),
            });
        }
        Ok(self.value)
    }
}

/// Runs `op` in the helper and returns what the driver answered.
pub fn run(op: &Op) -> Result<Reply, DriverError> {
    let out = super::embedded::run(&op.helper_args())
        .map_err(|e| DriverError::Helper(format!("cannot start it: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let detail = err
            .lines()
            .next()
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        return Err(DriverError::Helper(format!(
            "it ended ({}) before finishing its reply{detail}",
            out.status
        )));
    }
    Reply::parse(&String::from_utf8_lossy(&out.stdout))
}

/// Does `op`, one call of the checkpoint API, and returns the value it produced (a state or a
/// thread id for the queries, nothing for the actions).
pub fn call(op: Op) -> Result<Option<i32>, DriverError> {
    run(&op)?.outcome(&op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_become_helper_arguments() {
        assert_eq!(Op::Probe.helper_args(), ["probe"]);
        assert_eq!(Op::GetState(7).helper_args(), ["get-state", "7"]);
        assert_eq!(
            Op::Lock {
                pid: 7,
                timeout_ms: 10000
            }
            .helper_args(),
            ["lock", "7", "10000"]
        );
        assert_eq!(Op::Unlock(9).helper_args(), ["unlock", "9"]);
    }

    #[test]
    fn versions_read_as_cuda_does() {
        assert_eq!(CudaVersion(12080).to_string(), "CUDA 12.8");
        assert_eq!(CudaVersion(13000).to_string(), "CUDA 13.0");
        assert_eq!(CudaVersion(12040).to_string(), "CUDA 12.4");
    }

    #[test]
    fn a_reply_without_end_is_a_crash() {
        let e = Reply::parse("lib /x/libcuda.so.1\n").unwrap_err();
        assert!(e.to_string().contains("stopped before the end"), "{e}");
        assert!(Reply::parse("what is this\nend\n").is_err());
    }

    #[test]
    fn replies_map_to_typed_errors() {
        let op = Op::Lock {
            pid: 42,
            timeout_ms: 0,
        };
        let r = Reply::parse("nolib libcuda.so.1: cannot open shared object file\nend\n").unwrap();
        let e = r.outcome(&op).unwrap_err().to_string();
        assert_eq!(e, "cannot load libcuda.so.1: libcuda.so.1: cannot open shared object file (is the NVIDIA driver installed?)");

        let r = Reply::parse(
            "lib /l/libcuda.so.550.1\nmissing cuCheckpointProcessLock\nversion 12040\nend\n",
        )
        .unwrap();
        let e = r.outcome(&op).unwrap_err().to_string();
        assert_eq!(e, "driver too old: libcuda.so.1 (CUDA 12.4) has no cuCheckpointProcessLock; checkpointing GPU state needs NVIDIA driver 570 or newer (CUDA 12.8)");

        let r =
            Reply::parse("lib /l\nfail cuCheckpointProcessLock 2 out of memory\nend\n").unwrap();
        let e = r.outcome(&op).unwrap_err().to_string();
        assert_eq!(
            e,
            "cuCheckpointProcessLock for pid 42 failed: out of memory (CUDA error 2)"
        );

        let r = Reply::parse("lib /l\nfail cuInit 100 -\nend\n").unwrap();
        let e = r.outcome(&op).unwrap_err().to_string();
        assert_eq!(
            e,
            "cuInit failed: an error the driver does not describe (CUDA error 100)"
        );

        let r = Reply::parse("lib /l\nvalue 4242\nend\n").unwrap();
        assert_eq!(r.outcome(&Op::GetRestoreTid(42)).unwrap(), Some(4242));
    }

    #[test]
    fn a_probe_collects_everything() {
        let r = Reply::parse(
            "lib /usr/lib/libcuda.so.580.1\nversion 13000\ngpu NVIDIA H100 80GB HBM3\ngpu NVIDIA H100 80GB HBM3\nend\n",
        )
        .unwrap();
        assert_eq!(r.version, Some(CudaVersion(13000)));
        assert_eq!(r.gpus.len(), 2);
        assert_eq!(r.gpus[0], "NVIDIA H100 80GB HBM3");
        assert_eq!(r.outcome(&Op::Probe).unwrap(), None);
    }
}
