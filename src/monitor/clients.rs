//! The monitor's clients: connections on its socket, each with a bounded queue of replies
//! written by its own task, so a client that stops reading (Ctrl-Z, a hung script) never
//! blocks the event loop, the job or any other client. A client whose queue overflows is
//! disconnected; the workload goes on.

use super::fd::Fd;
use super::{diag, Event};
use crate::protocol::{self, Reply, Request};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use tokio::sync::mpsc;

/// Replies a client may have waiting before it is considered gone.
const REPLY_QUEUE: usize = 256;

/// One connected client.
pub(crate) struct Client {
    tx: mpsc::Sender<Reply>,
}

/// Every connected client, by id.
#[derive(Default)]
pub(crate) struct Clients {
    next: u64,
    map: HashMap<u64, Client>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Registers a connection: starts its reader (requests become events) and its writer.
    pub fn add(&mut self, conn: Fd, events: mpsc::UnboundedSender<Event>) -> u64 {
        self.next += 1;
        let cid = self.next;
        let conn = Rc::new(conn);
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        tokio::task::spawn_local(reader(cid, conn.clone(), events));
        self.writers.retain(|w| !w.is_finished());
        self.writers
            .push(tokio::task::spawn_local(writer(conn, rx)));
        self.map.insert(cid, Client { tx });
        cid
    }

    /// The monitor is leaving: lets every client's writer deliver what is queued (the exit
    /// they wait for), for at most `limit`.
    pub async fn flush(&mut self, limit: std::time::Duration) {
        self.map.clear();
        let writers = std::mem::take(&mut self.writers);
        let all = async {
            for w in writers {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Queues a reply; a client whose queue is full is dropped (its connection closes once
    /// its writer sees the channel end).
    pub fn reply(&mut self, cid: u64, r: Reply) {
        let full = match self.map.get(&cid) {
            Some(c) => match c.tx.try_send(r) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            },
            None => false,
        };
        if full {
            diag(&format!("client {cid} stopped reading: disconnected"));
            self.map.remove(&cid);
        }
    }

    pub fn remove(&mut self, cid: u64) {
        self.map.remove(&cid);
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a client's reader hands the event loop.
async fn reader(cid: u64, conn: Rc<Fd>, events: mpsc::UnboundedSender<Event>) {
    loop {
        match conn.recv_raw().await {
            Ok(Some((buf, fds))) => match protocol::decode_checked::<Request>(&buf) {
                Ok(req) => {
                    if events.send(Event::Request { cid, req, fds }).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Another version's CLI: tell it why, in its own words if it can read ours.
                    let _ = events.send(Event::BadRequest {
                        cid,
                        why: e.to_string(),
                    });
                }
            },
            Ok(None) | Err(_) => {
                let _ = events.send(Event::ClientGone { cid });
                return;
            }
        }
    }
}

/// Writes a client's replies in order.
async fn writer(conn: Rc<Fd>, mut rx: mpsc::Receiver<Reply>) {
    while let Some(r) = rx.recv().await {
        if conn.send_msg(&r, &[]).await.is_err() {
            return;
        }
    }
}

/// The fds a client attached to a request, split by what it declared.
pub(crate) struct Attached {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub rest: Vec<OwnedFd>,
}

/// Splits `fds` as `a` declares them (stdin, stdout, stderr, in that order, then extras).
pub(crate) fn split_fds(
    a: &protocol::AttachSpec,
    fds: Vec<OwnedFd>,
    extra: usize,
) -> Result<Attached, String> {
    let want = a.stdin as usize + a.stdout as usize + a.stderr as usize + extra;
    if fds.len() != want {
        return Err(format!(
            "the client sent {} fds where {want} were declared",
            fds.len()
        ));
    }
    let mut it = fds.into_iter();
    let stdin = if a.stdin { it.next() } else { None };
    let stdout = if a.stdout { it.next() } else { None };
    let stderr = if a.stderr { it.next() } else { None };
    Ok(Attached {
        stdin,
        stdout,
        stderr,
        rest: it.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n).map(|_| nix::unistd::pipe().unwrap().0).collect()
    }

    #[test]
    fn fds_are_split_as_declared() {
        let a = protocol::AttachSpec {
            stdin: true,
            stdout: true,
            stderr: false,
            ..Default::default()
        };
        let s = split_fds(&a, fds(3), 1).unwrap();
        assert!(s.stdin.is_some() && s.stdout.is_some() && s.stderr.is_none());
        assert_eq!(s.rest.len(), 1);
        let e = split_fds(&a, fds(1), 0).err().unwrap();
        assert!(e.contains("1 fds where 2"), "{e}");
    }
}
