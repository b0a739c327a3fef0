//! Moving bytes in the monitor: from a workload's or session's output to its log and to the
//! attached clients, and from a client's stdin to the workload.
//!
//! A workload's attached clients are watchers: each gets the output live while it keeps up;
//! one that falls behind (stopped with Ctrl-Z, reading slowly) is served from the log, where
//! the output already is, until it has caught up. So the job and its log never wait for a
//! client, and a client never loses a byte the log has. An exec session's own client is
//! different: it is the only reader of that session's output, as with ssh, so the session
//! waits for it.

use super::fd::{Fd, Gate};
use crate::store::log::{LogReader, LogWriter, Stream};
use crate::sys;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Output a watcher may have queued in memory before it is served from the log instead.
pub const LIVE_LIMIT: usize = 1 << 20;

/// Undelivered output of one log record.
struct Chunk {
    stream: Stream,
    data: Vec<u8>,
    /// The record's offset in the log, and how much of its payload was already delivered.
    offset: u64,
    skip: usize,
}

enum WatchState {
    Live {
        queue: VecDeque<Chunk>,
        queued: usize,
    },
    /// Behind: deliver from the log from this record on (skipping `skip` bytes of it).
    CatchUp { offset: u64, skip: usize },
}

/// A client watching the workload's output.
pub struct Watcher {
    out: Rc<Fd>,
    /// Where stderr goes; `None`: to `out` (a tty, or a client whose stdout and stderr are one).
    err: Option<Rc<Fd>>,
    log_path: PathBuf,
    log: SharedLog,
    state: RefCell<WatchState>,
    wake: Notify,
    /// The client is gone (EPIPE).
    gone: Cell<bool>,
    /// No more output will come: deliver what is due, then close.
    done: Cell<bool>,
    /// The writer is in the middle of a chunk: new output must queue behind it.
    busy: Cell<bool>,
    /// Bytes delivered so far (a client that makes progress is waited for at the end).
    pub delivered: Cell<u64>,
}

impl Watcher {
    /// A watcher for `out` (and `err`); starts its writer task, returned for the monitor to
    /// await at its end.
    pub fn new(
        out: Rc<Fd>,
        err: Option<Rc<Fd>>,
        log: SharedLog,
        log_path: PathBuf,
    ) -> (Rc<Watcher>, JoinHandle<()>) {
        let w = Rc::new(Watcher {
            out,
            err,
            log_path,
            log,
            state: RefCell::new(WatchState::Live {
                queue: VecDeque::new(),
                queued: 0,
            }),
            wake: Notify::new(),
            gone: Cell::new(false),
            done: Cell::new(false),
            busy: Cell::new(false),
            delivered: Cell::new(0),
        });
        let task = tokio::task::spawn_local(watch_writer(w.clone()));
        (w, task)
    }

    fn fd(&self, stream: Stream) -> &Rc<Fd> {
        match (stream, &self.err) {
            (Stream::Stderr, Some(e)) => e,
            _ => &self.out,
        }
    }

    pub fn is_gone(&self) -> bool {
        self.gone.get()
    }

    /// True while it is being served from the log.
    #[cfg(test)]
    pub fn catching_up(&self) -> bool {
        matches!(*self.state.borrow(), WatchState::CatchUp { .. })
    }

    /// Takes output that was just logged as the record at `offset`, without ever waiting:
    /// writes what the client's pipe accepts now and queues the rest; beyond [`LIVE_LIMIT`]
    /// the queue is dropped and the client is served from the log from its first undelivered
    /// record.
    pub fn offer(&self, stream: Stream, data: &[u8], offset: u64) {
        if self.gone.get() || data.is_empty() {
            return;
        }
        let mut st = self.state.borrow_mut();
        let WatchState::Live { queue, queued } = &mut *st else {
            return; // the log has it; the writer will get there
        };
        let mut written = 0;
        if queue.is_empty() && !self.busy.get() {
            match self.fd(stream).try_write(data) {
                Ok(n) => written = n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.gone.set(true);
                    self.wake.notify_one();
                    return;
                }
            }
            self.delivered.set(self.delivered.get() + written as u64);
        }
        if written == data.len() {
            return;
        }
        queue.push_back(Chunk {
            stream,
            data: data[written..].to_vec(),
            offset,
            skip: written,
        });
        *queued += data.len() - written;
        if *queued > LIVE_LIMIT {
            let (offset, skip) = queue
                .front()
                .map(|c| (c.offset, c.skip))
                .unwrap_or((offset, written));
            *st = WatchState::CatchUp { offset, skip };
        }
        drop(st);
        self.wake.notify_one();
    }

    /// No more output: the writer delivers what is due, then the client reads end-of-file.
    pub fn finish(&self) {
        self.done.set(true);
        self.wake.notify_one();
    }
}

/// What a watcher's writer does next.
enum Step {
    Write(Chunk),
    FromLog { offset: u64, skip: usize },
    Wait,
    Close,
}

/// Delivers a watcher's output: its queue while live, the log while catching up.
async fn watch_writer(w: Rc<Watcher>) {
    let mut reader: Option<LogReader> = None;
    loop {
        if w.gone.get() {
            return;
        }
        let step = match &mut *w.state.borrow_mut() {
            WatchState::Live { queue, queued } => match queue.pop_front() {
                Some(c) => {
                    *queued -= c.data.len();
                    Step::Write(c)
                }
                None if w.done.get() => Step::Close,
                None => Step::Wait,
            },
            WatchState::CatchUp { offset, skip } => Step::FromLog {
                offset: *offset,
                skip: *skip,
            },
        };
        match step {
            Step::Close => return,
            Step::Wait => w.wake.notified().await,
            Step::Write(c) => {
                w.busy.set(true);
                let r = w.fd(c.stream).write_all(&c.data).await;
                w.busy.set(false);
                if r.is_err() {
                    w.gone.set(true);
                } else {
                    w.delivered.set(w.delivered.get() + c.data.len() as u64);
                }
            }
            Step::FromLog { offset, skip } => {
                if reader.as_ref().map(|r| r.offset()) != Some(offset) {
                    reader = LogReader::open(&w.log_path, offset).ok();
                }
                let next = match reader.as_mut() {
                    Some(r) => r.next_record().ok(),
                    None => None,
                };
                match next {
                    Some(Some(rec)) => {
                        let data = rec.data.get(skip..).unwrap_or(&[]);
                        if rec.stream != Stream::Marker && !data.is_empty() {
                            if w.fd(rec.stream).write_all(data).await.is_err() {
                                w.gone.set(true);
                                continue;
                            }
                            w.delivered.set(w.delivered.get() + data.len() as u64);
                        }
                        let at = reader.as_ref().map(|r| r.offset()).unwrap_or(offset);
                        *w.state.borrow_mut() = WatchState::CatchUp {
                            offset: at,
                            skip: 0,
                        };
                    }
                    Some(None) => {
                        // Everything logged so far is delivered: back to live output. No await
                        // between this check and the switch, so nothing offered is missed.
                        let end = w.log.borrow().as_ref().map(|l| l.offset());
                        let at = reader.as_ref().map(|r| r.offset());
                        if end.is_none() || end == at {
                            *w.state.borrow_mut() = WatchState::Live {
                                queue: VecDeque::new(),
                                queued: 0,
                            };
                            reader = None;
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    // The log cannot be read (removed, corrupt): say so and go live again.
                    None => {
                        let note = "\n[stasis: some output of this job could not be read back from its log]\n";
                        let _ = w.out.write_all(note.as_bytes()).await;
                        *w.state.borrow_mut() = WatchState::Live {
                            queue: VecDeque::new(),
                            queued: 0,
                        };
                        reader = None;
                    }
                }
            }
        }
    }
}

/// The workload's watchers.
pub type Watchers = Rc<RefCell<Vec<Rc<Watcher>>>>;

/// An exec session's own client's pipes (it waits for them).
pub type Sinks = Rc<RefCell<Vec<Rc<Fd>>>>;

/// Waits until the watcher tasks are done: as long as they make progress, at most `idle`
/// without any.
pub async fn await_watchers(mut tasks: Vec<(JoinHandle<()>, Rc<Watcher>)>, idle: Duration) {
    let mut last = 0u64;
    let mut since = Instant::now();
    loop {
        let now: u64 = tasks.iter().map(|(_, w)| w.delivered.get()).sum();
        let Some((next, _)) = tasks.iter_mut().find(|(t, _)| !t.is_finished()) else {
            return;
        };
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            return;
        }
        // Woken by a task that ends (the usual case: at once, every byte delivered), else
        // every 5 ms to see whether the slow ones still make progress. A finished handle is
        // never polled again: `is_finished` skips it above.
        tokio::select! {
            _ = next => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// Tells an output pump that its writer has exited: drain what is left, but stop waiting for
/// end-of-file after [`DRAIN_GRACE`] if a surviving background process keeps the pipe open —
/// once every byte that was in the pipe at the exit has been delivered.
#[derive(Default)]
pub struct Finish {
    at: Cell<Option<Instant>>,
    notify: Notify,
    /// Bytes the pumps have delivered so far: how `Stdio::drain` tells a slow reader from
    /// a stuck one.
    moved: Cell<u64>,
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

/// How long a draining pump may deliver nothing before it is stopped (see `Stdio::drain`).
pub const PUMP_STALL: Duration = Duration::from_secs(5);

/// The log a pump writes to: `None` inside means "not logging right now" (an exec session
/// with a client attached).
pub type SharedLog = Rc<RefCell<Option<LogWriter>>>;

/// Who reads a stream besides the log.
#[derive(Clone)]
pub enum Readers {
    /// The workload's watchers (the job never waits for them).
    Watchers(Watchers),
    /// An exec session's own client (the session waits for it).
    Client(Sinks),
}

/// Where a pump's bytes go.
pub struct PumpTo {
    pub stream: Stream,
    pub log: Option<SharedLog>,
    pub readers: Readers,
    pub gate: Rc<Gate>,
    pub finish: Rc<Finish>,
    /// Bytes that could not be written to the log (a full disk), counted for `inspect`.
    pub log_dropped: Rc<Cell<u64>>,
    /// Told when log writes start failing (once per run of failures).
    pub events: tokio::sync::mpsc::UnboundedSender<super::Event>,
}

/// Copies one output stream to the log (if any) and to every sink until end of file (or the
/// finish rule above). Returns the bytes moved.
pub async fn pump_output(src: Rc<Fd>, to: PumpTo) -> u64 {
    // 32 KiB: output mostly comes in small writes, and every monitor holds two of these.
    let mut buf = vec![0u8; 32 * 1024];
    // Logged output of a pipe is taken exactly once even if this monitor is killed at any
    // instant: tee it (the pipe keeps it), log it as pending, then take it from the pipe and
    // confirm the record. A monitor that dies in between leaves a pending record the next one
    // settles (see `settle_pending`).
    let exact = if src.is_pipe {
        TeeScratch::new().ok()
    } else {
        None
    };
    let mut total: u64 = 0;
    let mut pending_at_exit: Option<u64> = None; // total + bytes in the pipe at exit
    let mut deadline_passed = false;
    let mut failing = false;
    let teed = Cell::new(false);
    loop {
        if pending_at_exit.is_none() && to.finish.at.get().is_some() {
            pending_at_exit = Some(total + sys::bytes_readable(src.borrow()).unwrap_or(0) as u64);
        }
        if deadline_passed && pending_at_exit.is_some_and(|p| total >= p) {
            break;
        }
        let deadline = to.finish.at.get().map(|t| t + super::stdio::DRAIN_GRACE);
        // Fast path: nothing to log and one client pipe to feed: splice without copying.
        let logging = to.log.as_ref().is_some_and(|l| l.borrow().is_some());
        let single = match &to.readers {
            Readers::Client(sinks) if !logging && src.is_pipe => match sinks.borrow().as_slice() {
                [one] if one.is_pipe => Some(one.clone()),
                _ => None,
            },
            _ => None,
        };
        let step = async {
            if let Some(sink) = &single {
                match src.splice_to(sink, 1 << 20, &to.gate).await {
                    Ok(n) => Ok((n, true)),
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                        if let Readers::Client(sinks) = &to.readers {
                            sinks.borrow_mut().retain(|s| !Rc::ptr_eq(s, sink));
                        }
                        Ok((usize::MAX, true))
                    }
                    Err(e) => Err(e),
                }
            } else if let (Some(x), true) = (&exact, logging) {
                let n = src.tee_to(x.w.as_fd(), buf.len(), &to.gate).await?;
                x.read_exact(&mut buf[..n])?;
                teed.set(true);
                Ok((n, false))
            } else {
                teed.set(false);
                src.read_gated(&mut buf, &to.gate).await.map(|n| (n, false))
            }
        };
        let res = tokio::select! {
            r = step => r,
            _ = to.finish.notify.notified(), if to.finish.at.get().is_none() => continue,
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
                let mut offset = 0;
                if let Some(l) = &to.log {
                    if let Some(w) = l.borrow_mut().as_mut() {
                        offset = w.offset();
                        let logged = if teed.get() {
                            let r = w.append_pending(to.stream, data);
                            // Taken from the pipe whether logged or not: a full disk must
                            // not block the job.
                            let taken = exact
                                .as_ref()
                                .map(|x| src.discard(n, x.null.as_fd()))
                                .unwrap_or(Ok(()));
                            if taken.is_err() {
                                break;
                            }
                            r.and_then(|at| w.confirm(at))
                        } else {
                            w.append(to.stream, data)
                        };
                        // A full disk must not stop the workload's output reaching clients.
                        match logged {
                            Ok(()) => {
                                if failing {
                                    failing = false;
                                    let _ = to.events.send(super::Event::LogRecovered);
                                }
                            }
                            Err(e) => {
                                to.log_dropped.set(to.log_dropped.get() + n as u64);
                                if !failing {
                                    failing = true;
                                    let _ = to
                                        .events
                                        .send(super::Event::LogFailing { why: e.to_string() });
                                }
                            }
                        }
                    }
                }
                match &to.readers {
                    Readers::Watchers(ws) => {
                        let current: Vec<Rc<Watcher>> = ws.borrow().clone();
                        for w in current {
                            w.offer(to.stream, data, offset);
                            if w.is_gone() {
                                ws.borrow_mut().retain(|x| !Rc::ptr_eq(x, &w));
                            }
                        }
                    }
                    Readers::Client(sinks) => {
                        let current: Vec<Rc<Fd>> = sinks.borrow().clone();
                        for s in current {
                            if s.write_all(data).await.is_err() {
                                sinks.borrow_mut().retain(|x| !Rc::ptr_eq(x, &s));
                            }
                        }
                    }
                }
                n
            }
        };
        total += n as u64;
        to.finish.moved.set(to.finish.moved.get() + n as u64);
    }
    total
}

/// A private pipe to tee output through, and /dev/null to discard it from its pipe.
struct TeeScratch {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
    null: std::os::fd::OwnedFd,
}

impl TeeScratch {
    fn new() -> std::io::Result<TeeScratch> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        sys::set_nonblocking(std::os::fd::AsFd::as_fd(&w))?;
        let _ = sys::set_pipe_size(std::os::fd::AsFd::as_fd(&w), 32 * 1024);
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(TeeScratch { r, w, null })
    }

    /// Reads back exactly what was teed in (it is all there already).
    fn read_exact(&self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match nix::unistd::read(&self.r, &mut buf[got..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Settles a record a killed monitor left pending in the log at `log_path`: if the pipe it
/// came from still starts with its bytes, they were logged but never taken, so they are taken
/// now (not logged twice); either way the mark is cleared. `pipe_of` gives the kept pipe of a
/// stream. Run before any pump reads the pipes.
pub(crate) fn settle_pending(
    log: &SharedLog,
    log_path: &std::path::Path,
    pipe_of: impl Fn(Stream) -> Option<Rc<Fd>>,
) -> std::io::Result<bool> {
    let Some((at, rec)) = crate::store::log::last_record(log_path)? else {
        return Ok(false);
    };
    if !rec.pending {
        return Ok(false);
    }
    let mut taken = false;
    if let Some(p) = pipe_of(rec.stream).filter(|p| p.is_pipe) {
        let x = TeeScratch::new()?;
        let _ = sys::set_pipe_size(std::os::fd::AsFd::as_fd(&x.w), rec.data.len().max(4096));
        let n = sys::tee(
            p.borrow(),
            std::os::fd::AsFd::as_fd(&x.w),
            rec.data.len(),
            libc::SPLICE_F_NONBLOCK,
        )
        .unwrap_or(0);
        let mut head = vec![0u8; n];
        x.read_exact(&mut head)?;
        if n == rec.data.len() && head == rec.data {
            p.discard(n, std::os::fd::AsFd::as_fd(&x.null))?;
            taken = true;
        }
    }
    if let Some(w) = log.borrow_mut().as_mut() {
        w.confirm(at)?;
    }
    Ok(taken)
}

/// The workload's current stdin, which a restore replaces.
pub type StdinTarget = tokio::sync::watch::Receiver<Option<Rc<Fd>>>;

/// Copies a client's stdin pipe into the workload's current stdin until the client's end of
/// file. Returns true if it ended by end of file (false if the target went away for good).
pub async fn pump_stdin(src: Fd, mut target: StdinTarget, gate: Rc<Gate>) -> bool {
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
                r = src.splice_to(&t, 1 << 20, &gate) => r,
                _ = target.changed() => continue,
            }
        } else {
            let n = tokio::select! {
                r = src.read(&mut buf) => r,
                _ = target.changed() => continue,
            };
            match n {
                Ok(0) => Ok(0),
                Ok(n) => t.write_all_gated(&buf[..n], &gate).await.map(|_| n),
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

/// The monitor's ends of a process's stdio: duplicates of what init keeps.
pub(crate) struct Stdio {
    /// The pty master, for window sizes.
    pub tty: Option<Rc<Fd>>,
    /// Where clients' stdin goes (the stdin pipe's write end, or the pty master).
    pub stdin: Option<Rc<Fd>>,
    /// Output to pump: stdout (or the pty master) and stderr.
    pub out: Option<Rc<Fd>>,
    pub err: Option<Rc<Fd>>,
    pub pumps: Vec<JoinHandle<u64>>,
    pub finish: Rc<Finish>,
}

impl Stdio {
    /// The writer has exited: lets the output pumps deliver what is left. A pump goes on for
    /// as long as its reader takes what it sends (a pager scrolled slowly); one that moved
    /// nothing for [`PUMP_STALL`] is stopped, which closes its client's pipe before the
    /// client is told of the exit. (Left running instead, it still held that pipe: the
    /// client waited for end-of-file for good, or, once it read on, what followed the
    /// splice in flight was thrown away.)
    pub async fn drain(self) {
        self.drain_stalling_after(PUMP_STALL).await
    }

    async fn drain_stalling_after(mut self, stall: Duration) {
        self.finish.exited();
        let finish = self.finish.clone();
        for mut p in self.pumps.drain(..) {
            loop {
                let seen = finish.moved.get();
                match tokio::time::timeout(stall, &mut p).await {
                    Ok(_) => break,
                    Err(_) if finish.moved.get() != seen => continue,
                    Err(_) => {
                        p.abort();
                        // Cancelled at its next await: its fds are closed once this returns.
                        let _ = (&mut p).await;
                        break;
                    }
                }
            }
        }
    }

    /// Stops the pumps where they are, leaving unread bytes in the pipes (they are in a dump,
    /// or stay for the next monitor).
    pub fn abandon(mut self) {
        for p in self.pumps.drain(..) {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::LogWriter;

    fn local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    /// After its writer exited, a pump whose client reads nothing for `PUMP_STALL` is
    /// stopped by the drain, and holds the client's pipe no more when the drain returns (the
    /// client is told of the exit then, and must see end-of-file). Before, the drain let it
    /// run on, detached, still holding that pipe.
    #[test]
    fn a_drain_stops_a_pump_whose_client_reads_nothing() {
        local(async {
            let (sr, sw) = super::super::fd::pipe(None).unwrap();
            let (_kr, kw) = super::super::fd::pipe(None).unwrap();
            let _ = sys::set_pipe_size(std::os::fd::AsFd::as_fd(&kw), 4096);
            // More than the client's pipe holds, and the job is gone.
            let _ = sys::set_pipe_size(std::os::fd::AsFd::as_fd(&sw), 1 << 16);
            nix::unistd::write(&sw, &[b'x'; 32 * 1024]).unwrap();
            drop(sw);
            let sink = Rc::new(Fd::new(kw).unwrap());
            let sinks: Sinks = Rc::new(RefCell::new(vec![sink.clone()]));
            let finish = Finish::new();
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let to = PumpTo {
                stream: Stream::Stdout,
                log: None,
                readers: Readers::Client(sinks.clone()),
                gate: Rc::new(Gate::default()),
                finish: finish.clone(),
                log_dropped: Rc::new(Cell::new(0)),
                events: tx,
            };
            let src = Rc::new(Fd::new(sr).unwrap());
            let pump = tokio::task::spawn_local(pump_output(src, to));
            let stdio = Stdio {
                tty: None,
                stdin: None,
                out: None,
                err: None,
                pumps: vec![pump],
                finish,
            };
            stdio.drain_stalling_after(Duration::from_millis(50)).await;
            sinks.borrow_mut().clear();
            assert_eq!(
                Rc::strong_count(&sink),
                1,
                "the stopped pump still holds the pipe"
            );
        });
    }

    #[test]
    fn a_stalled_watcher_catches_up_from_the_log_without_losing_a_byte() {
        local(async {
            let d = tempfile::tempdir().unwrap();
            let path = d.path().join("log");
            let log: SharedLog = Rc::new(RefCell::new(Some(LogWriter::open(&path).unwrap())));
            let (r, w) = super::super::fd::pipe(None).unwrap();
            let _ = sys::set_pipe_size(std::os::fd::AsFd::as_fd(&w), 4096);
            let (watcher, task) =
                Watcher::new(Rc::new(Fd::new(w).unwrap()), None, log.clone(), path);
            // nobody reads `r` yet: 3 MiB are offered without ever waiting
            let mut want = Vec::new();
            for i in 0..96u32 {
                let chunk: Vec<u8> = (0..32 * 1024).map(|j| (i * 7 + j) as u8).collect();
                let off = log.borrow().as_ref().unwrap().offset();
                log.borrow_mut()
                    .as_mut()
                    .unwrap()
                    .append(Stream::Stdout, &chunk)
                    .unwrap();
                watcher.offer(Stream::Stdout, &chunk, off);
                want.extend(chunk);
            }
            assert!(
                watcher.catching_up(),
                "a stalled client should be served from the log"
            );
            // the client wakes up and reads everything
            let reader = std::thread::spawn(move || {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut v).unwrap();
                v
            });
            watcher.finish();
            let idle = Duration::from_secs(5);
            await_watchers(vec![(task, watcher.clone())], idle).await;
            drop(watcher);
            let got = reader.join().unwrap();
            assert_eq!(got.len(), want.len(), "bytes lost or repeated");
            assert!(got == want, "output out of order");
        });
    }
}
