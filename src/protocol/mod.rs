//! Messages between the CLI and a monitor, and between a monitor and its container's init.
//!
//! Both links are `SOCK_SEQPACKET` unix sockets: one JSON document per packet (message
//! boundaries for free) with fds attached as SCM_RIGHTS when a message hands over stdio.
//! The monitor↔init link ([`init`]) is a socketpair made inside the container whose both ends
//! init holds: CRIU dumps and restores it with the container (queued messages included), and
//! a monitor works on a duplicate of one end taken with pidfd_getfd.

use crate::exit::ExitStatus;
use crate::store::sessions::SessionId;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

pub mod init;
pub mod migrate;

/// Version of the protocol on both links (CLI↔monitor and monitor↔init). 2: the container's
/// init keeps its stdio and control socket, which a monitor takes with pidfd_getfd.
pub const PROTO_VERSION: u32 = 2;
/// Largest message.
pub const MAX_MSG: usize = 256 * 1024;

/// What a client attaches to and how.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AttachSpec {
    /// The client sends stdin (one fd: the read end of a pipe it writes).
    pub stdin: bool,
    /// The client receives stdout (one fd: the write end of a pipe it reads).
    pub stdout: bool,
    /// The client receives stderr (one fd; ignored for a tty, whose output is one stream).
    pub stderr: bool,
    /// Initial terminal size (rows, cols) for a tty.
    #[serde(default)]
    pub winsize: Option<(u16, u16)>,
    /// The client's stdout and stderr are one file description (`> f 2>&1`): a process started
    /// for this client writes both streams into one pipe, so their order is kept exactly.
    #[serde(default)]
    pub merge_output: bool,
}

/// Options of a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckpointOpts {
    pub leave_running: bool,
    /// CRIU options given as flags, on top of the spec's `criu:`.
    #[serde(default)]
    pub options: crate::criu::CriuOptions,
    /// Generations to keep after this one (overrides the spec's `keep`).
    pub keep: Option<u32>,
    /// Why (recorded in the events): "user", "periodic", "shutdown".
    #[serde(default)]
    pub reason: String,
    /// The CRIU the caller located (in its own environment); the monitor finds one itself
    /// when absent (periodic checkpoints).
    #[serde(default)]
    pub criu: Option<crate::criu::Criu>,
}

/// Options of a restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestoreOpts {
    /// The generation to restore; the newest when absent.
    pub generation: Option<u32>,
    /// As in [`CheckpointOpts::criu`].
    #[serde(default)]
    pub criu: Option<crate::criu::Criu>,
    /// Why (recorded in the events): empty for a user's restore, "crash: …" for a policy's.
    #[serde(default)]
    pub reason: String,
    /// Restore lazily: the job runs at once, its memory follows on fault and in the
    /// background (`criu lazy-pages`).
    #[serde(default)]
    pub lazy: bool,
}

/// An exec session to start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    /// Keep stdin open (the client sends it).
    pub stdin: bool,
    pub detach: bool,
    /// Target fd numbers of the extra fds attached after the stdio ones.
    pub preserve_fds: Vec<i32>,
    pub term: Option<String>,
    pub attach: AttachSpec,
}

/// A request from the CLI to a monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Only on a new monitor's first connection: start the workload, with a client attached or
    /// not.
    Start {
        attach: Option<AttachSpec>,
        term: Option<String>,
    },
    /// Restore instead of start (a new monitor for a checkpointed workload).
    StartRestore {
        opts: RestoreOpts,
    },
    /// Adopt the running container whose monitor is gone (a new monitor's first request).
    Adopt,
    /// Hand the container over to another monitor and exit, leaving it running (an upgrade:
    /// `stasis adopt --replace`).
    Release,
    Attach {
        attach: AttachSpec,
    },
    Signal {
        sig: i32,
        session: Option<SessionId>,
    },
    Resize {
        rows: u16,
        cols: u16,
        session: Option<SessionId>,
    },
    Stop {
        timeout_ms: Option<u64>,
    },
    Wait,
    Checkpoint {
        opts: CheckpointOpts,
    },
    Restore {
        opts: RestoreOpts,
    },
    Exec {
        req: ExecRequest,
    },
    ExecAttach {
        id: SessionId,
        attach: AttachSpec,
    },
    ExecStop {
        id: SessionId,
        timeout_ms: Option<u64>,
    },
    ExecRemove {
        id: SessionId,
    },
    /// The client leaves (detach keys); the workload or session goes on.
    Detach,
    /// Exit the monitor once the workload is in a final or checkpointed state.
    Shutdown,
    /// The monitor's live view of the workload (counters a full disk keeps from state.json).
    Status,
    /// Move the running job to another host (fds: the page channel, the step link).
    MigrateOut {
        opts: migrate::OutOpts,
    },
    /// Only on a new monitor's first connection: take in a job migrating here (fds: the step
    /// link, then the page channel for post-copy).
    StartMigrateIn {
        opts: Box<migrate::InOpts>,
    },
}

/// Statistics of one checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DumpStats {
    /// Wall time of the dump, as stasis saw it.
    pub dump_ms: f64,
    /// How long the workload was frozen (CRIU's stats), when known.
    pub frozen_ms: Option<f64>,
    /// Bytes of the generation on disk.
    pub size: u64,
}

/// A monitor's reply or event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Started {
        pid: i32,
    },
    Error {
        code: i32,
        message: String,
    },
    Exit {
        code: i32,
        status: Option<ExitStatus>,
        oom_killed: bool,
        reason: Option<String>,
    },
    Checkpointed {
        generation: u32,
        stats: DumpStats,
        leave_running: bool,
    },
    Restored {
        generation: u32,
        pid: i32,
        /// Files the job writes that moved on since the generation was taken.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        diverged: Vec<crate::store::divergence::Diverged>,
    },
    /// The job moved to another host (`lazy_bytes`: memory it fetches from here, post-copy).
    Migrated {
        lazy_bytes: u64,
    },
    ExecStarted {
        id: SessionId,
    },
    /// Something the attached user should know ("checkpointed; waiting for restore").
    Notice {
        message: String,
    },
    /// Answer to `Status`.
    Status {
        state: Box<crate::store::state::WorkloadState>,
    },
}

/// Every message on either link travels in an envelope with the protocol version, so a
/// request that crosses an upgrade (a new CLI and an old monitor, a new monitor adopting an old
/// init) is refused with a clear line instead of being half understood.
#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    #[serde(flatten)]
    msg: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    #[serde(default)]
    v: Option<u32>,
    #[serde(flatten)]
    msg: T,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the other side speaks protocol {theirs}, this stasis speaks {PROTO_VERSION} (it was started by another version of stasis)")]
    Version { theirs: String },
    #[error("bad message: {0}")]
    Bad(String),
}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Encodes a message in its envelope.
pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(&EnvelopeOut {
        v: PROTO_VERSION,
        msg,
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a message, checking the version first.
pub fn decode_checked<T: DeserializeOwned>(data: &[u8]) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct V {
        #[serde(default)]
        v: Option<u32>,
    }
    match serde_json::from_slice::<V>(data) {
        Ok(V {
            v: Some(PROTO_VERSION),
        }) => {}
        Ok(V { v }) => {
            return Err(DecodeError::Version {
                theirs: v.map(|n| n.to_string()).unwrap_or_else(|| "1".into()),
            })
        }
        Err(e) => return Err(DecodeError::Bad(e.to_string())),
    }
    serde_json::from_slice::<EnvelopeIn<T>>(data)
        .map(|e| {
            let _ = e.v;
            e.msg
        })
        .map_err(|e| DecodeError::Bad(e.to_string()))
}

/// Decodes a message (an io error for any failure).
pub fn decode<T: DeserializeOwned>(data: &[u8]) -> io::Result<T> {
    Ok(decode_checked(data)?)
}

/// Sends a message (blocking) with fds.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let data = encode(msg)?;
    crate::sys::send_with_fds(sock, &data, fds, false)?;
    Ok(())
}

/// Receives a message (blocking); `None` at end of stream.
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let (buf, fds) = crate::sys::recv_datagram(sock, false, MAX_MSG)?;
    if buf.is_empty() && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((decode(&buf)?, fds)))
}

/// A connected pair of seqpacket sockets (both CLOEXEC).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// A unix socket address for `path`; a path too long for sun_path goes through
/// `/proc/self/fd/DIRFD/NAME`, which the kernel resolves like the real directory.
fn unix_addr(path: &Path, dirfd_holder: &mut Option<OwnedFd>) -> io::Result<UnixAddr> {
    let s = path.as_os_str();
    if s.len() < 100 {
        return UnixAddr::new(path).map_err(io::Error::from);
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = Path::new("/proc/self/fd")
        .join(fd.as_raw_fd().to_string())
        .join(name);
    *dirfd_holder = Some(fd);
    UnixAddr::new(&short).map_err(io::Error::from)
}

/// Creates a listening seqpacket socket at `path`, mode 0600.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut holder = None;
    let addr = unix_addr(path, &mut holder)?;
    // Only root (and the owner) may talk to a monitor: create the socket 0600 from the start.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let r = socket::bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    r?;
    socket::listen(&fd, socket::Backlog::new(64).map_err(io::Error::from)?)?;
    Ok(fd)
}

/// Connects to a monitor's socket.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut holder = None;
    let addr = unix_addr(path, &mut holder)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// The uid of the process at the other end of a unix socket.
pub fn peer_uid(fd: impl AsFd) -> io::Result<u32> {
    let cred = socket::getsockopt(&fd, socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn requests_round_trip() {
        let r = Request::Checkpoint {
            opts: CheckpointOpts {
                leave_running: true,
                ..Default::default()
            },
        };
        let b = encode(&r).unwrap();
        assert_eq!(decode::<Request>(&b).unwrap(), r);
        let e = Reply::Exit {
            code: 137,
            status: Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            }),
            oom_killed: true,
            reason: None,
        };
        assert_eq!(decode::<Reply>(&encode(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<Request>(b"{\"op\":\"fly\"}").is_err());
        assert!(decode::<Request>(b"\xff").is_err());
    }

    #[test]
    fn messages_carry_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut pr, pw) = std::os::unix::net::UnixStream::pair().unwrap();
        send(a.as_fd(), &Request::Wait, &[pw.as_raw_fd()]).unwrap();
        drop(pw);
        let (msg, fds) = recv::<Request>(b.as_fd()).unwrap().unwrap();
        assert_eq!(msg, Request::Wait);
        assert_eq!(fds.len(), 1);
        let mut w = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        w.write_all(b"hi").unwrap();
        drop(w);
        let mut s = String::new();
        pr.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
        drop(a);
        assert!(recv::<Request>(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn listen_and_connect_with_a_long_path() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("x".repeat(60)).join("y".repeat(40));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("workload-with-a-long-name.sock");
        assert!(path.as_os_str().len() > 108);
        let l = listen(&path).unwrap();
        let c = connect(&path).unwrap();
        let s = crate::sys::accept(l.as_fd(), false).unwrap();
        assert_eq!(peer_uid(&s).unwrap(), nix::unistd::getuid().as_raw());
        send(c.as_fd(), &Request::Detach, &[]).unwrap();
        assert_eq!(
            recv::<Request>(s.as_fd()).unwrap().unwrap().0,
            Request::Detach
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
