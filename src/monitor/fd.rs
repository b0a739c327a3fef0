//! A non-blocking fd registered with the monitor's runtime: reads, writes, splices and
//! seqpacket messages that wait for readiness instead of blocking the event loop.
//!
//! The fds are the monitor's own (client connections, fresh pipes a client made for it) or
//! duplicates of the outer ends the container's init keeps. Setting O_NONBLOCK changes the
//! description that init's copy shares, which is harmless: init never reads or writes them.

use crate::protocol;
use crate::sys;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// A gate the output and input pumps pass before every read or write of a workload's pipes.
/// Closed around a dump: whatever is in the container's pipes then is in the dump exactly
/// once, never also read into the log and replayed by a restore.
#[derive(Default)]
pub struct Gate {
    closed: Cell<bool>,
    opened: Notify,
}

impl Gate {
    pub fn close(&self) {
        self.closed.set(true);
    }
    pub fn open(&self) {
        self.closed.set(false);
        self.opened.notify_waiters();
    }
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
    /// Waits until the gate is open.
    pub async fn passable(&self) {
        while self.closed.get() {
            let n = self.opened.notified();
            if !self.closed.get() {
                return;
            }
            n.await;
        }
    }
}

/// A non-blocking fd registered with the runtime.
pub struct Fd {
    inner: AsyncFd<OwnedFd>,
    /// Kind of file: pipes splice, ttys do not.
    pub is_pipe: bool,
}

impl Fd {
    /// Registers `fd` (sets O_NONBLOCK on its description).
    #[allow(unsafe_code)]
    pub fn new(fd: OwnedFd) -> io::Result<Fd> {
        sys::set_nonblocking(fd.as_fd())?;
        let is_pipe = nix::sys::stat::fstat(&fd)
            .map(|s| (s.st_mode & libc::S_IFMT) == libc::S_IFIFO)
            .unwrap_or(false);
        // SAFETY: an OwnedFd is a valid open fd that stays open, and keeps naming the same
        // description, for as long as the AsyncFd owns it.
        let inner = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Fd { inner, is_pipe })
    }

    pub fn borrow(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }

    /// Reads some bytes once `gate` is open; 0 at end of file. A pty master whose slave is
    /// gone reads EIO: that is its end of file.
    pub async fn read_gated(&self, buf: &mut [u8], gate: &Gate) -> io::Result<usize> {
        loop {
            gate.passable().await;
            let mut g = self.inner.readable().await?;
            // No await between this check and the read: the gate cannot close in between.
            if gate.is_closed() {
                continue;
            }
            match g.try_io(|i| nix::unistd::read(i.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Reads some bytes; 0 at end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_gated(buf, &Gate::default()).await
    }

    /// Writes what the fd takes now, without waiting; `WouldBlock` if nothing.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.inner.get_ref(), data) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes all of `data` once `gate` is open.
    pub async fn write_all_gated(&self, mut data: &[u8], gate: &Gate) -> io::Result<()> {
        while !data.is_empty() {
            gate.passable().await;
            let mut g = self.inner.writable().await?;
            if gate.is_closed() {
                continue;
            }
            match g.try_io(|i| nix::unistd::write(i.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        self.write_all_gated(data, &Gate::default()).await
    }

    /// Moves up to `len` bytes from this pipe to `out` (a pipe) without copying, once `gate`
    /// is open; 0 at end of file.
    pub async fn splice_to(&self, out: &Fd, len: usize, gate: &Gate) -> io::Result<usize> {
        loop {
            gate.passable().await;
            let mut rg = self.inner.readable().await?;
            let mut wg = out.inner.writable().await?;
            if gate.is_closed() {
                continue;
            }
            match sys::splice(
                self.borrow(),
                out.borrow(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            ) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Either side may be the one not ready: an empty source or a full sink
                    // (full by the pipe's slots, not its bytes). Each is asked as it is now,
                    // and only a side that is not ready loses its readiness. Guessing the
                    // sink from a source found non-empty lost every wakeup when the job wrote
                    // between the splice and the look: an empty sink never signals again, and
                    // the session's last output stayed in its pipe, its client waiting for
                    // end-of-file for good.
                    if !sys::ready_now(self.borrow(), libc::POLLIN) {
                        rg.clear_ready();
                    }
                    if !sys::ready_now(out.borrow(), libc::POLLOUT) {
                        wg.clear_ready();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies up to `len` bytes of this pipe into `out` (a pipe) without consuming them, once
    /// `gate` is open; 0 at end of file.
    pub async fn tee_to(&self, out: BorrowedFd<'_>, len: usize, gate: &Gate) -> io::Result<usize> {
        loop {
            gate.passable().await;
            let mut g = self.inner.readable().await?;
            if gate.is_closed() {
                continue;
            }
            match sys::tee(self.borrow(), out, len, libc::SPLICE_F_NONBLOCK) {
                // tee reports 0 at end of file (empty, every writer gone). Bytes there all
                // the same came after the look: take them on the next round (clearing the
                // readiness of a pipe with bytes in it could wait for good).
                Ok(0) if sys::bytes_readable(self.borrow()).unwrap_or(0) > 0 => {}
                Ok(n) => return Ok(n),
                // Only a pipe that is still empty now loses its readiness (see `splice_to`).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::ready_now(self.borrow(), libc::POLLIN) {
                        g.clear_ready();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes `n` bytes that are in this pipe (known from a `tee`) and throws them away.
    pub fn discard(&self, mut n: usize, devnull: BorrowedFd<'_>) -> io::Result<()> {
        while n > 0 {
            match sys::splice(self.borrow(), devnull, n, libc::SPLICE_F_NONBLOCK) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => n -= k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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

    /// Receives a raw message (with fds) from a seqpacket socket; `None` at end of stream.
    pub async fn recv_raw(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            let mut g = self.inner.readable().await?;
            match g.try_io(|i| sys::recv_datagram(i.get_ref().as_fd(), true, protocol::MAX_MSG)) {
                Ok(Ok((buf, fds))) if buf.is_empty() && fds.is_empty() => return Ok(None),
                Ok(Ok(m)) => return Ok(Some(m)),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Receives a message (with fds) from a seqpacket socket; `None` at end of stream.
    pub async fn recv_msg<T: DeserializeOwned>(&self) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        match self.recv_raw().await? {
            None => Ok(None),
            Some((buf, fds)) => Ok(Some((protocol::decode(&buf)?, fds))),
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

/// A pipe with both ends CLOEXEC, its buffer grown to `size` when possible.
#[cfg(test)]
pub fn pipe(size: Option<usize>) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    if let Some(s) = size {
        let _ = sys::set_pipe_size(w.as_fd(), s);
    }
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_gate_holds_reads_until_it_opens() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (r, w) = pipe(None).unwrap();
                let r = Rc::new(Fd::new(r).unwrap());
                let gate = Rc::new(Gate::default());
                gate.close();
                nix::unistd::write(&w, b"data").unwrap();
                let (r2, g2) = (r.clone(), gate.clone());
                let t = tokio::task::spawn_local(async move {
                    let mut b = [0u8; 16];
                    r2.read_gated(&mut b, &g2).await.unwrap()
                });
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                assert!(!t.is_finished(), "read through a closed gate");
                assert_eq!(sys::bytes_readable(r.borrow()).unwrap(), 4);
                gate.open();
                assert_eq!(t.await.unwrap(), 4);
            })
            .await;
    }

    /// A session's output pumped to its client's pipe: the job writes in small bursts and
    /// exits while the pump runs. Every byte arrives and the pump sees end-of-file. (A pump
    /// that blamed the sink for a source that was empty at its splice but not at its next
    /// look waited on the sink for good: the session's last lines stayed behind, and its
    /// client hung. The race is narrow, so many bursts.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_pump_into_a_pipe_never_loses_its_wakeup() {
        const BURSTS: usize = 20_000;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (sr, sw) = pipe(None).unwrap();
                let (kr, kw) = pipe(None).unwrap();
                let writer = std::thread::spawn(move || {
                    for i in 0..BURSTS {
                        nix::unistd::write(&sw, &b"abc"[..1 + i % 3]).unwrap();
                        if i % 7 == 0 {
                            std::thread::yield_now();
                        }
                    }
                });
                let reader = std::thread::spawn(move || {
                    let mut f = std::fs::File::from(kr);
                    let mut all = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut all).unwrap();
                    all.len()
                });
                let src = Fd::new(sr).unwrap();
                let sink = Fd::new(kw).unwrap();
                let gate = Gate::default();
                let pumped = async {
                    let mut n = 0;
                    loop {
                        match src.splice_to(&sink, 1 << 20, &gate).await.unwrap() {
                            0 => return n,
                            k => n += k,
                        }
                    }
                };
                // A hang is the failure: bounded, so that it reports rather than stalls.
                let n = tokio::time::timeout(Duration::from_secs(30), pumped)
                    .await
                    .expect("the pump lost a wakeup");
                drop(sink);
                writer.join().unwrap();
                let want: usize = (0..BURSTS).map(|i| 1 + i % 3).sum();
                assert_eq!(n, want);
                assert_eq!(reader.join().unwrap(), want);
            })
            .await;
    }

    /// A client that sends its last request and exits without reading our reply: the request
    /// is still delivered, then end-of-file (not a lost request behind ECONNRESET).
    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_closing_with_unread_replies_still_delivers_its_last_request() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let ours = Fd::new(ours).unwrap();
        nix::unistd::write(ours.borrow(), b"reply never read").unwrap();
        nix::unistd::write(&theirs, b"last request").unwrap();
        drop(theirs);
        let got = ours.recv_raw().await.unwrap().expect("the request");
        assert_eq!(got.0, b"last request");
        assert!(ours.recv_raw().await.unwrap().is_none());
    }
}
