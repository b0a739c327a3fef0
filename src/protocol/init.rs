//! The link between a monitor and its container's init.
//!
//! init holds both ends of a seqpacket socketpair made inside the container: it reads requests
//! on [`CTL_FD`] and keeps [`CTL_PEER_FD`], which a monitor duplicates with pidfd_getfd. So the
//! pair is internal to the container, CRIU dumps and restores it (queued messages included),
//! and a new monitor (after a restore, or adopting a container whose monitor died) reaches init
//! without init's help.
//!
//! init also creates each process's stdio and keeps the outer ends (the read ends of its output
//! pipes, the write end of its stdin pipe, the pty master), reporting their fd numbers; the
//! monitor reads and writes duplicates of them. While no monitor runs, the kept ends hold the
//! pipes open: a writing job blocks on a full pipe instead of dying of SIGPIPE, and its output
//! waits there for the next monitor.

use crate::exit::ExitStatus;
use crate::init::spawn::ProcSpec;
use serde::{Deserialize, Serialize};

/// init's end of the control socket.
pub const CTL_FD: i32 = 3;
/// The monitor's end of the control socket, kept by init for whichever monitor comes.
pub const CTL_PEER_FD: i32 = 4;
/// The spawn id of the workload's main process.
pub const MAIN_ID: &str = "main";

/// How init makes a process's stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StdioSpec {
    /// Three pipes. `stdin`: keep the write end for the monitor (else the process reads
    /// end-of-file at once). `merge`: stderr is the stdout pipe.
    Pipes { stdin: bool, merge: bool },
    /// A pty from the container's own devpts, with this initial size.
    Tty { winsize: Option<(u16, u16)> },
}

/// Numbers of the fds init keeps for a process (fds of init, for pidfd_getfd).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFds {
    pub stdin: Option<i32>,
    pub stdout: Option<i32>,
    pub stderr: Option<i32>,
    /// The pty master (input and output both).
    pub tty: Option<i32>,
}

/// A process init started and still knows about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub id: String,
    /// Its pid inside the container.
    pub pid: i32,
    pub fds: KeptFds,
    /// How it ended, if it has (kept until the monitor says `Forget`).
    pub exited: Option<ExitStatus>,
}

/// A request from a monitor to init.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToInit {
    /// A monitor (new or restarted) introduces itself; init answers `Welcome`.
    Hello,
    /// Make the stdio, fork and exec. Extra fds attached to the message go to
    /// `proc.fds[3..]`.
    Spawn {
        id: String,
        proc: ProcSpec,
        stdio: StdioSpec,
    },
    /// Send a signal to the process group of a spawned process.
    Signal { id: String, sig: i32 },
    /// Close the kept write end of a process's stdin (its client's stdin ended).
    CloseStdin { id: String },
    /// The monitor has everything it needs of an ended process: drop its kept fds.
    Forget { id: String },
}

/// A message from init to its monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum FromInit {
    /// Answer to `Hello`: every process init knows, and the fds it keeps for them.
    Welcome {
        procs: Vec<ProcInfo>,
    },
    /// The spawn worked; duplicates of the kept fds are attached, in [`KeptFds`] order.
    Spawned {
        id: String,
        pid: i32,
        fds: KeptFds,
    },
    SpawnFailed {
        id: String,
        code: i32,
        message: String,
    },
    Exited {
        id: String,
        status: ExitStatus,
    },
}
