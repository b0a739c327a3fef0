//! What the inspections find in a running job: plain facts, each with the place it was seen.
//!
//! A finding says nothing about whether the job can be checkpointed: an established TCP
//! connection is fine with `--tcp-established` and fatal without it. [`super::verdict`] turns
//! findings and the dump options into obstacles, so the rules are tested with made-up
//! findings, and the inspections are tested against real processes.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// What in a process holds the thing found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Holder {
    /// An open file descriptor.
    Fd(i32),
    /// The working directory.
    Cwd,
    /// The root directory.
    Root,
    /// The executable.
    Exe,
    /// A memory mapping starting at this address.
    Map(u64),
    /// The process itself (its state, namespaces, session).
    Process,
}

/// A process of the job and what in it holds a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// Host pid.
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
    pub holder: Holder,
}

impl Place {
    pub fn new(pid: i32, comm: &str, holder: Holder) -> Place {
        Place {
            pid,
            comm: comm.to_string(),
            holder,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)?;
        match &self.holder {
            Holder::Fd(n) => write!(f, " fd {n}"),
            Holder::Cwd => write!(f, " cwd"),
            Holder::Root => write!(f, " root"),
            Holder::Exe => write!(f, " exe"),
            Holder::Map(a) => write!(f, " mapping at {a:#x}"),
            Holder::Process => Ok(()),
        }
    }
}

/// The kind of a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixKind {
    Stream,
    Dgram,
    Seqpacket,
}

/// The state of a TCP socket, as CRIU sorts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    Listen,
    /// Never connected, or closed.
    Closed,
    /// Connected, connecting, or half closed (the kernel's name for the state).
    Connected(String),
}

/// Whether a job uses a GPU, and whether this host can dump it (from
/// [`crate::cuda::preflight::before_dump`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Gpu {
    /// A GPU job this host can dump; `detail` names the GPUs a restore needs.
    Ready { user: String, detail: String },
    /// A GPU job and no cuda plugin for CRIU.
    NoPlugin { user: String, why: String },
    /// A GPU job and a driver that cannot checkpoint it.
    Driver { user: String, why: String },
}

/// One fact about the job that a dump may care about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "finding")]
pub enum Finding {
    /// A TCP socket (every state: the CRIU version check needs them all).
    Tcp {
        at: Place,
        state: TcpState,
        local: String,
        remote: String,
        /// For a listening socket, connections not yet accepted.
        backlog: u32,
    },
    /// A unix socket whose peer no process of the job holds.
    UnixExternal {
        at: Place,
        ino: u64,
        kind: UnixKind,
        peer: u64,
        /// The peer's bound name, when it has one.
        peer_name: Option<String>,
    },
    /// A netlink socket with data waiting to be read.
    NetlinkQueued {
        at: Place,
        protocol: u32,
        bytes: u64,
    },
    /// A socket of a family or protocol CRIU does not dump (`proto` as the kernel names it).
    SocketFamily { at: Place, proto: String },
    /// A socket found in none of the job's network namespaces.
    SocketElsewhere { at: Place, ino: u64 },
    /// A file of a kind CRIU does not dump (`what` as /proc shows it, e.g.
    /// `anon_inode:[io_uring]`).
    UnsupportedFile { at: Place, what: String },
    /// A pidfd of a process outside the job's process tree (`target` is its host pid).
    PidfdOutside { at: Place, target: i32 },
    /// A pidfd opened with PIDFD_THREAD.
    PidfdThread { at: Place },
    /// A file whose name was removed while it is held. `bytes` is what CRIU compares with the
    /// ghost limit (allocated blocks); `linked` when other names of it remain.
    Deleted {
        at: Place,
        path: PathBuf,
        bytes: u64,
        linked: bool,
    },
    /// A held file whose path now names another file.
    PathReused { at: Place, path: PathBuf },
    /// A held file on a mount the checkpoint takes away first (the host no longer has it).
    MountGone {
        at: Place,
        path: PathBuf,
        mount: PathBuf,
    },
    /// A held file on a mount the job cannot see (another mount namespace, a detached mount).
    MountUnknown {
        at: Place,
        path: PathBuf,
        mnt_id: i32,
    },
    /// A held file on a mount hidden under another mount.
    MountCovered {
        at: Place,
        path: PathBuf,
        mount: PathBuf,
    },
    /// A mount point the checkpoint cannot name to CRIU (`]`, `:` or `,` in it).
    MountName { at: Place, mount: PathBuf },
    /// A device file CRIU cannot dump (`major:minor`).
    Device {
        at: Place,
        path: PathBuf,
        major: u32,
        minor: u32,
    },
    /// A mapping CRIU cannot dump (a device, an io_uring ring, VM_IO memory).
    Mapping { at: Place, what: String },
    /// A uprobes area (CRIU wants `--allow-uprobes`, which stasis does not pass).
    Uprobes { at: Place },
    /// A terminal that is not the container's: a pty whose master no process of the job
    /// holds, or one opened outside the container. `why` says which.
    ForeignTty {
        at: Place,
        path: PathBuf,
        why: String,
    },
    /// A process being traced (strace, gdb) by `tracer` (host pid).
    Traced { at: Place, tracer: i32 },
    /// A process in a namespace of its own inside the job (`kind`: pid, uts, ipc…).
    NestedNamespace { at: Place, kind: String },
    /// A process whose session leader is outside the container (it was entered with
    /// nsenter or setns, not forked inside).
    SessionOutside { at: Place, sid: i32 },
    /// A file lock held by the job.
    FileLock { at: Place, path: PathBuf },
    /// GPU use.
    Gpu(Gpu),
}

impl Finding {
    /// Where it was seen (a GPU finding names its process in its own text).
    pub fn place(&self) -> Option<&Place> {
        use Finding::*;
        match self {
            Tcp { at, .. }
            | UnixExternal { at, .. }
            | NetlinkQueued { at, .. }
            | SocketFamily { at, .. }
            | SocketElsewhere { at, .. }
            | UnsupportedFile { at, .. }
            | PidfdOutside { at, .. }
            | PidfdThread { at }
            | Deleted { at, .. }
            | PathReused { at, .. }
            | MountGone { at, .. }
            | MountUnknown { at, .. }
            | MountCovered { at, .. }
            | MountName { at, .. }
            | Device { at, .. }
            | Mapping { at, .. }
            | Uprobes { at }
            | ForeignTty { at, .. }
            | Traced { at, .. }
            | NestedNamespace { at, .. }
            | SessionOutside { at, .. }
            | FileLock { at, .. } => Some(at),
            Gpu(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_read_as_text() {
        let p = Place::new(42, "python3", Holder::Fd(7));
        assert_eq!(p.to_string(), "pid 42 (python3) fd 7");
        let p = Place::new(42, "python3", Holder::Map(0x7f00));
        assert_eq!(p.to_string(), "pid 42 (python3) mapping at 0x7f00");
        assert_eq!(
            Place::new(1, "sh", Holder::Process).to_string(),
            "pid 1 (sh)"
        );
    }
}
