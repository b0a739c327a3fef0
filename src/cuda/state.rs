//! The checkpoint state of a CUDA process (`CUprocessState` in cuda.h), and the words
//! `cuda-checkpoint --get-state` prints for it, which CRIU's cuda plugin matches by prefix.

use std::fmt;

/// Where a CUDA process is in the lock → checkpoint → restore → unlock cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// CUDA calls run normally.
    Running,
    /// CUDA calls block; work in flight has finished.
    Locked,
    /// GPU memory has been copied to host memory and the device released.
    Checkpointed,
    /// A checkpoint or restore failed and left the process unusable.
    Failed,
}

impl ProcessState {
    /// The state for the driver's number, if it is one this stasis knows.
    pub fn from_driver(n: i32) -> Option<ProcessState> {
        Some(match n {
            0 => ProcessState::Running,
            1 => ProcessState::Locked,
            2 => ProcessState::Checkpointed,
            3 => ProcessState::Failed,
            _ => return None,
        })
    }

    /// The word `--get-state` prints; CRIU's plugin knows running, locked and checkpointed,
    /// and treats anything else as an error.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Locked => "locked",
            ProcessState::Checkpointed => "checkpointed",
            ProcessState::Failed => "failed",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_numbers_map_to_the_plugins_words() {
        let words: Vec<_> = (0..4)
            .map(|n| ProcessState::from_driver(n).unwrap().to_string())
            .collect();
        assert_eq!(words, ["running", "locked", "checkpointed", "failed"]);
        assert_eq!(ProcessState::from_driver(4), None);
        assert_eq!(ProcessState::from_driver(-1), None);
    }
}
