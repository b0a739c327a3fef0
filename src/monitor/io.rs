//! Moving bytes in the monitor: from a workload's or session's output to its log and to the
//! attached clients' pipes, and from a client's stdin pipe to the workload.
//!
//! Every fd here is one the monitor created or one a client created for it (fresh pipes), so
//! setting O_NONBLOCK never leaks into a description someone else shares. Pipe-to-pipe copies
//! use splice with SPLICE_F_NONBLOCK: the data moves between kernel buffers without a copy.

use crate::protocol;
use crate::store::log::{LogWriter, Stream};
use crate::sys;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

/// A non-blocking fd registered with the runtime.
pub struct Fd {
    inner: AsyncFd<OwnedFd>,
    /// Kind of file: pipes splice, ttys do not.
    pub is_pipe: bool,
}

impl Fd {
    /// Registers an fd the monitor owns alone (sets O_NONBLOCK on it).
    #[allow(unsafe_code)]
    pub fn new(fd: OwnedFd) -> io::Result<Fd> {
        sys::set_nonblocking(fd.as_fd())?;
        let is_pipe = nix::sys::stat::fstat(&fd)
            .map(|s| (s.st_mode & libc::S_IFMT) == libc::S_IFIFO)
            .unwrap_or(false);
        // SAFETY: an OwnedFd is a valid open fd that stays open, and keeps naming the same
        // description, for as long as the AsyncFd owns it.
        let inner =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(io::Error::from)?;
        Ok(Fd { inner, is_pipe })
    }

    pub fn borrow(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }

    /// Reads some bytes; 0 at end of file. A pty master whose slave is gone reads EIO: that is
    /// its end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut g = self.inner.readable().await?;
            match g.try_io(|i| nix::unistd::read(i.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut g = self.inner.writable().await?;
            match g.try_io(|i| nix::unistd::write(i.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Moves up to `len` bytes from this pipe to `out` (a pipe) without copying; 0 at end of
    /// file.
    pub async fn splice_to(&self, out: &Fd, len: usize) -> io::Result<usize> {
        loop {
            let mut rg = self.inner.readable().await?;
            let mut wg = out.inner.writable().await?;
            match sys::splice(
                self.borrow(),
                out.borrow(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            ) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Either side may be the one not ready: an empty source or a full sink.
                    if sys::bytes_readable(self.borrow()).unwrap_or(0) == 0 {
                        rg.clear_ready();
                    } else {
                        wg.clear_ready();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a message (with fds) on a seqpacket socket.
    pub async fn send_msg<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> io::Result<()> {
        let data = protocol::encode(msg)?;
        loop {
            let mut g = self.inner.writable().await?;
            match g.try_io(|i| sys::send_with_fds(i.get_ref().as_fd(), &data, fds, true)) {
                Ok(r) => return r.map(|_| ()),
                Err(_) => continue,
            }
        }
    }

    /// Receives a message (with fds) from a seqpacket socket; `None` at end of stream.
    pub async fn recv_msg<T: DeserializeOwned>(&self) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        loop {
            let mut g = self.inner.readable().await?;
            match g.try_io(|i| sys::recv_datagram(i.get_ref().as_fd(), true, protocol::MAX_MSG)) {
                Ok(Ok((buf, fds))) if buf.is_empty() && fds.is_empty() => return Ok(None),
                Ok(Ok((buf, fds))) => return Ok(Some((protocol::decode(&buf)?, fds))),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Accepts a connection on a listening socket.
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        loop {
            let mut g = self.inner.readable().await?;
            match g.try_io(|i| sys::accept(i.get_ref().as_fd(), true)) {
                Ok(r) => return r,
                Err(_) => continue,
            }
        }
    }
}

/// The clients' pipes an output stream is copied to.
pub type Sinks = Rc<RefCell<Vec<Rc<Fd>>>>;

/// Tells an output pump that its writer has exited: drain what is left, but stop waiting for
/// end-of-file after `grace` if a surviving background process keeps the pipe open — once
/// every byte that was in the pipe at the exit has been delivered.
#[derive(Default)]
pub struct Finish {
    at: Cell<Option<Instant>>,
    notify: tokio::sync::Notify,
}

impl Finish {
    pub fn new() -> Rc<Finish> {
        Rc::new(Finish::default())
    }
    /// The writer exited now.
    pub fn exited(&self) {
        if self.at.get().is_none() {
            self.at.set(Some(Instant::now()));
            self.notify.notify_waiters();
            self.notify.notify_one();
        }
    }
}

/// How long a pump keeps waiting for end-of-file after its writer exited.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Copies one output stream to the log (if any) and to every sink until end of file (or the
/// finish rule above). Returns the bytes moved.
/// The log a pump writes to: `None` inside means "not logging right now" (an exec session
/// with a client attached).
pub type SharedLog = Rc<RefCell<Option<LogWriter>>>;

pub async fn pump_output(
    src: Rc<Fd>,
    stream: Stream,
    log: Option<SharedLog>,
    sinks: Sinks,
    finish: Rc<Finish>,
) -> u64 {
    // 32 KiB: output mostly comes in small writes, and every monitor holds two of these.
    let mut buf = vec![0u8; 32 * 1024];
    let mut total: u64 = 0;
    let mut pending_at_exit: Option<u64> = None; // total + bytes in the pipe at exit
    let mut deadline_passed = false;
    loop {
        if pending_at_exit.is_none() {
            if let Some(_at) = finish.at.get() {
                pending_at_exit =
                    Some(total + sys::bytes_readable(src.borrow()).unwrap_or(0) as u64);
            }
        }
        if deadline_passed && pending_at_exit.is_some_and(|p| total >= p) {
            break;
        }
        let deadline = finish.at.get().map(|t| t + DRAIN_GRACE);
        // Fast path: nothing to log and one pipe to feed: splice without copying.
        let logging = log.as_ref().is_some_and(|l| l.borrow().is_some());
        let single = if !logging && src.is_pipe {
            sinks
                .borrow()
                .first()
                .filter(|s| s.is_pipe)
                .cloned()
                .filter(|_| sinks.borrow().len() == 1)
        } else {
            None
        };
        let step = async {
            if let Some(sink) = &single {
                match src.splice_to(sink, 1 << 20).await {
                    Ok(n) => Ok((n, true)),
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                        sinks.borrow_mut().retain(|s| !Rc::ptr_eq(s, sink));
                        Ok((usize::MAX, true))
                    }
                    Err(e) => Err(e),
                }
            } else {
                src.read(&mut buf).await.map(|n| (n, false))
            }
        };
        let res = tokio::select! {
            r = step => r,
            _ = finish.notify.notified(), if finish.at.get().is_none() => continue,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !deadline_passed => {
                deadline_passed = true;
                continue;
            }
        };
        let n = match res {
            Ok((0, _)) | Err(_) => break,
            Ok((usize::MAX, _)) => continue, // the sink went away; carry on with the others
            Ok((n, true)) => n,
            Ok((n, false)) => {
                let data = &buf[..n];
                if let Some(l) = &log {
                    if let Some(w) = l.borrow_mut().as_mut() {
                        // A full disk must not stop the workload's output reaching clients.
                        let _ = w.append(stream, data);
                    }
                }
                let current: Vec<Rc<Fd>> = sinks.borrow().clone();
                for s in current {
                    if s.write_all(data).await.is_err() {
                        sinks.borrow_mut().retain(|x| !Rc::ptr_eq(x, &s));
                    }
                }
                n
            }
        };
        total += n as u64;
    }
    total
}

/// The workload's current stdin, which a restore replaces.
pub type StdinTarget = tokio::sync::watch::Receiver<Option<Rc<Fd>>>;

/// Copies a client's stdin pipe into the workload's current stdin until the client's end of
/// file. Returns true if it ended by end of file (false if the target went away for good).
pub async fn pump_stdin(src: Fd, mut target: StdinTarget) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let t = target.borrow().clone();
        let Some(t) = t else {
            // No workload to write to right now (checkpointed): wait for a restore.
            if target.changed().await.is_err() {
                return false;
            }
            continue;
        };
        let r = if t.is_pipe && src.is_pipe {
            tokio::select! {
                r = src.splice_to(&t, 1 << 20) => r,
                _ = target.changed() => continue,
            }
        } else {
            let n = tokio::select! {
                r = src.read(&mut buf) => r,
                _ = target.changed() => continue,
            };
            match n {
                Ok(0) => Ok(0),
                Ok(n) => t.write_all(&buf[..n]).await.map(|_| n),
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(0) => return true,
            Ok(_) => {}
            // The workload's stdin closed (it exited, or was checkpointed): wait for the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                if target.changed().await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// A pipe with both ends CLOEXEC, its buffer grown to `size` when possible.
pub fn pipe(size: Option<usize>) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    if let Some(s) = size {
        let _ = sys::set_pipe_size(w.as_fd(), s);
    }
    Ok((r, w))
}
