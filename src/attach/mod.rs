//! The attached client (`run` in the foreground, `attach`, `exec`): it feels like ssh.
//!
//! The client makes fresh pipes for the streams it attaches and hands their far ends to the
//! monitor (so the monitor never touches the user's terminal or a shared description), then
//! relays between those pipes and its own stdio — with splice when both sides are pipes, so
//! `stasis exec job dd ... | wc -c` moves data without copying. It forwards the signals it
//! receives, passes window-size changes for a tty, puts the terminal in raw mode (always
//! restored), watches for the detach keys, and exits with the code the monitor reports once
//! every byte has arrived.

use crate::protocol::{self, AttachSpec, Reply, Request};
use crate::sys;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, IsTerminal};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Errors of an attached session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("lost the connection to the monitor of {0}")]
    Lost(String),
    #[error("{message}")]
    Refused { code: i32, message: String },
}

/// Signals the client forwards: all a user can mean for the workload. CHLD is the client's
/// own; KILL and STOP cannot be caught; SEGV, BUS, FPE and ILL are faults of the client itself.
pub fn forwarded_signals() -> Vec<i32> {
    let own = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
    ];
    (1..32).filter(|s| !own.contains(s)).collect()
}

/// Parses detach keys ("ctrl-p,ctrl-q"; "" disables them).
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() {
        return Ok(vec![]);
    }
    s.split(',')
        .map(|k| {
            let k = k.trim();
            if let Some(c) = k.strip_prefix("ctrl-") {
                let c = c.as_bytes();
                match c {
                    [b] if b.is_ascii_alphabetic() => Ok(b.to_ascii_lowercase() - b'a' + 1),
                    b"@" => Ok(0),
                    b"[" => Ok(27),
                    b"\\" => Ok(28),
                    b"]" => Ok(29),
                    b"^" => Ok(30),
                    b"_" => Ok(31),
                    _ => Err(format!("bad detach key {k:?}")),
                }
            } else if k.len() == 1 {
                Ok(k.as_bytes()[0])
            } else {
                Err(format!(
                    "bad detach key {k:?} (use ctrl-X or a single character)"
                ))
            }
        })
        .collect()
}

/// Default detach keys, as docker and podman.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// How the client attaches.
#[derive(Debug, Clone, Default)]
pub struct AttachOpts {
    /// Send our stdin.
    pub stdin: bool,
    /// The far side is a tty: raw mode, window size, detach keys.
    pub tty: bool,
    /// Detach keys (empty: none).
    pub detach_keys: Vec<u8>,
    /// Which exec session (for resize and signals), if any.
    pub session: Option<crate::store::sessions::SessionId>,
    /// Name of the workload, for messages.
    pub name: String,
    /// This client started the workload or session (`run` in the foreground, `exec`): when
    /// its reader goes away (`| head -1`), the process it started gets SIGPIPE, as a remote
    /// command does when an ssh client's output is closed.
    pub owner: bool,
}

/// How an attached session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The workload (or session) ended with this reply (`Reply::Exit`).
    Ended(Reply),
    /// The user detached.
    Detached,
    /// Whoever read our output went away (a closed pipe): the caller should end the way a
    /// Unix filter does then, by SIGPIPE.
    ReaderGone,
}

/// The AttachSpec and the far ends of fresh relay pipes for it, plus our near ends.
pub struct Relays {
    pub spec: AttachSpec,
    /// Far ends, in the order the monitor expects (stdin read end, stdout and stderr write ends).
    pub far: Vec<OwnedFd>,
    stdin_w: Option<OwnedFd>,
    out_r: OwnedFd,
    err_r: Option<OwnedFd>,
}

/// Creates relay pipes for an attach.
pub fn relays(o: &AttachOpts) -> io::Result<Relays> {
    let mut far = Vec::new();
    let mut stdin_w = None;
    if o.stdin {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        far.push(r);
        stdin_w = Some(w);
    }
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let _ = sys::set_pipe_size(out_w.as_fd(), 1 << 20);
    far.push(out_w);
    let mut err_r = None;
    if !o.tty && !sys::same_description(1, 2) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        far.push(w);
        err_r = Some(r);
    }
    let winsize = if o.tty {
        sys::get_winsize(io::stdin().as_fd())
            .or_else(|_| sys::get_winsize(io::stdout().as_fd()))
            .ok()
    } else {
        None
    };
    // `> f 2>&1`: one file description for both: one pipe, one writer, order kept.
    let merge = !o.tty && sys::same_description(1, 2);
    let spec = AttachSpec {
        stdin: o.stdin,
        stdout: true,
        stderr: !o.tty && !merge,
        winsize,
        merge_output: merge,
    };
    Ok(Relays {
        spec,
        far,
        stdin_w,
        out_r,
        err_r,
    })
}

/// Restores the terminal's mode when dropped.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enter(tty: bool) -> RawMode {
        if !tty || !io::stdin().is_terminal() {
            return RawMode { saved: None };
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(io::stdin()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(io::stdin(), nix::sys::termios::SetArg::TCSADRAIN, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ =
                nix::sys::termios::tcsetattr(io::stdin(), nix::sys::termios::SetArg::TCSADRAIN, s);
        }
    }
}

/// Copies `from` to `to` until end of file: splice when the kernel can, else read and write.
pub fn copy_fd(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<u64> {
    let mut total = 0u64;
    let mut use_splice = true;
    // Only where splice cannot work: zeroing 64 KiB for every relay was a measurable part of
    // a short `exec`.
    let mut buf = Vec::new();
    loop {
        if use_splice {
            match sys::splice(from, to, 1 << 20, libc::SPLICE_F_MOVE) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n as u64;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => use_splice = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if buf.is_empty() {
            buf = vec![0u8; 64 * 1024];
        }
        let n = match nix::unistd::read(from, &mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            match nix::unistd::write(to, data) {
                Ok(w) => data = &data[w..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        total += n as u64;
    }
}

/// Relays `from` to our fd `to`; a closed reader on `to` (EPIPE) is reported on `wake`.
fn spawn_copy(from: OwnedFd, to: RawFd, wake: Arc<OwnedFd>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(to) = dup_stdio(to) else { return };
        if let Err(e) = copy_fd(from.as_fd(), to.as_fd()) {
            if e.raw_os_error() == Some(libc::EPIPE) {
                let _ = nix::unistd::write(&*wake, b"p");
            }
        }
    })
}

fn dup_stdio(fd: RawFd) -> io::Result<OwnedFd> {
    match fd {
        1 => io::stdout().as_fd().try_clone_to_owned(),
        2 => io::stderr().as_fd().try_clone_to_owned(),
        _ => io::stdin().as_fd().try_clone_to_owned(),
    }
}

/// Reads the terminal and writes to the stdin relay, watching for the detach keys; returns
/// true if the user detached.
fn stdin_relay(to: OwnedFd, keys: Vec<u8>, tty: bool) -> bool {
    let Ok(stdin) = dup_stdio(0) else {
        return false;
    };
    if !tty || keys.is_empty() {
        let _ = copy_fd(stdin.as_fd(), to.as_fd());
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut matched = 0usize;
    loop {
        let n = match nix::unistd::read(&stdin, &mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if b == keys[matched] {
                matched += 1;
                if matched == keys.len() {
                    return true;
                }
                continue;
            }
            // A partial match that did not complete is passed on as typed.
            out.extend_from_slice(&keys[..matched]);
            matched = 0;
            if b == keys[0] {
                matched = 1;
            } else {
                out.push(b);
            }
        }
        if !out.is_empty() && nix::unistd::write(&to, &out).is_err() {
            return false;
        }
    }
}

/// Sends `first` (with the relay pipes attached), then relays until the workload or session
/// ends or the user detaches. `first_reply` gets the monitor's answer to `first` (`Started`,
/// `ExecStarted`, `Ok`); an `Error` answer ends the call with `Refused`.
pub fn attach(
    conn: &OwnedFd,
    first: &Request,
    relays: Relays,
    o: &AttachOpts,
    mut first_reply: impl FnMut(&Reply),
) -> Result<Outcome, ClientError> {
    let sigs = forwarded_signals();
    let sfd = sys::block_into_signalfd(&sigs)?;
    let far: Vec<RawFd> = relays.far.iter().map(|f| f.as_raw_fd()).collect();
    protocol::send(conn.as_fd(), first, &far)?;
    drop(relays.far);
    let raw = RawMode::enter(o.tty);
    let (wake_r, wake_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let wake_w = Arc::new(wake_w);
    let out_t = spawn_copy(relays.out_r, 1, wake_w.clone());
    let err_t = relays.err_r.map(|e| spawn_copy(e, 2, wake_w.clone()));
    if let Some(w) = relays.stdin_w {
        let keys = o.detach_keys.clone();
        let tty = o.tty;
        let wake = wake_w.clone();
        std::thread::spawn(move || {
            if stdin_relay(w, keys, tty) {
                let _ = nix::unistd::write(&*wake, b"d");
            }
        });
    }
    let mut got_first = false;
    // The session signals and resizes are for: given, or learnt from `ExecStarted`.
    let mut session = o.session.clone();
    // Until an exec's session exists, its signals wait here (they are not the workload's).
    let starting_exec = matches!(first, Request::Exec { .. });
    let mut held: Vec<Request> = Vec::new();
    let finish = |out_t: JoinHandle<()>, err_t: Option<JoinHandle<()>>| {
        let _ = out_t.join();
        if let Some(t) = err_t {
            let _ = t.join();
        }
    };
    loop {
        let (conn_ready, sig_ready, wake_ready) = {
            let mut fds = [
                PollFd::new(conn.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake_r.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ClientError::Io(e.into())),
            }
            let r = |i: usize| fds[i].revents().map(|r| !r.is_empty()).unwrap_or(false);
            (r(0), r(1), r(2))
        };
        if wake_ready {
            let mut why = [0u8; 1];
            let _ = nix::unistd::read(&wake_r, &mut why);
            if why[0] == b'p' {
                if o.owner {
                    let _ = protocol::send(
                        conn.as_fd(),
                        &Request::Signal {
                            sig: libc::SIGPIPE,
                            session: session.clone(),
                        },
                        &[],
                    );
                } else {
                    let _ = protocol::send(conn.as_fd(), &Request::Detach, &[]);
                }
                drop(raw);
                return Ok(Outcome::ReaderGone);
            }
            let _ = protocol::send(conn.as_fd(), &Request::Detach, &[]);
            drop(raw);
            return Ok(Outcome::Detached);
        }
        if sig_ready {
            while let Ok(Some(sig)) = sys::read_signalfd(sfd.as_fd()) {
                let req = if sig == libc::SIGWINCH && o.tty {
                    match sys::get_winsize(io::stdin().as_fd())
                        .or_else(|_| sys::get_winsize(io::stdout().as_fd()))
                    {
                        Ok((rows, cols)) => Request::Resize {
                            rows,
                            cols,
                            session: session.clone(),
                        },
                        Err(_) => continue,
                    }
                } else {
                    Request::Signal {
                        sig,
                        session: session.clone(),
                    }
                };
                if starting_exec && session.is_none() {
                    held.push(req);
                    continue;
                }
                let _ = protocol::send(conn.as_fd(), &req, &[]);
            }
        }
        if conn_ready {
            match protocol::recv::<Reply>(conn.as_fd()) {
                Ok(Some((reply, _))) => match reply {
                    Reply::Error { code, message } if !got_first => {
                        drop(raw);
                        return Err(ClientError::Refused { code, message });
                    }
                    r @ Reply::Exit { .. } => {
                        // Every byte is in our relay pipes (the monitor closed them before
                        // replying): wait for the relays to reach end-of-file.
                        finish(out_t, err_t);
                        drop(raw);
                        return Ok(Outcome::Ended(r));
                    }
                    Reply::Notice { message } => {
                        if io::stderr().is_terminal() {
                            let nl = if o.tty { "\r\n" } else { "\n" };
                            eprint!("stasis: {message}{nl}");
                        }
                    }
                    other => {
                        if !got_first {
                            got_first = true;
                            if let Reply::ExecStarted { id } = &other {
                                session = Some(id.clone());
                                for mut req in held.drain(..) {
                                    match &mut req {
                                        Request::Signal { session: s, .. }
                                        | Request::Resize { session: s, .. } => {
                                            *s = session.clone()
                                        }
                                        _ => {}
                                    }
                                    let _ = protocol::send(conn.as_fd(), &req, &[]);
                                }
                            }
                            first_reply(&other);
                        }
                    }
                },
                Ok(None) | Err(_) => {
                    drop(raw);
                    return Err(ClientError::Lost(o.name.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_detach_keys("ctrl-a,x").unwrap(), vec![1, b'x']);
        assert!(parse_detach_keys("ctrl-").is_err());
        assert!(parse_detach_keys("meta-x").is_err());
    }

    #[test]
    fn forwards_the_signals_users_send() {
        let s = forwarded_signals();
        assert_eq!(s.len(), 24);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGWINCH,
        ] {
            assert!(s.contains(&sig));
        }
        assert!(!s.contains(&libc::SIGCHLD));
    }

    #[test]
    fn copy_fd_moves_everything_between_pipes() {
        let (a_r, a_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (b_r, b_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let writer = std::thread::spawn(move || {
            let data = vec![42u8; 300_000];
            let mut f = std::fs::File::from(a_w);
            std::io::Write::write_all(&mut f, &data).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(b_r), &mut v).unwrap();
            v.len()
        });
        assert_eq!(copy_fd(a_r.as_fd(), b_w.as_fd()).unwrap(), 300_000);
        drop(b_w);
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), 300_000);
    }

    /// splice refuses a file opened for appending (EINVAL): the copy goes on by read and
    /// write, byte for byte.
    #[test]
    fn copy_fd_falls_back_where_splice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let (a_r, a_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut std::fs::File::from(a_w), &sent).unwrap();
        });
        assert_eq!(copy_fd(a_r.as_fd(), out.as_fd()).unwrap(), 200_000);
        writer.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
