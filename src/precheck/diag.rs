//! Unix sockets of a network namespace through netlink sock_diag (what `ss -x` reads): each
//! socket's inode, type, state, bound name and the inode of its peer. /proc/net/unix lacks
//! the peer, and the peer is what tells a socket connected outside the job.
//!
//! sock_diag answers for the network namespace the netlink socket was made in, so for a job
//! with its own network namespace the socket is made by a short-lived thread that entered it
//! (setns of a network namespace affects only the calling thread; the socket keeps its
//! namespace after the thread ends). Nothing is sent to the job or changed in it.

use super::InspectError;
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const UNIX_DIAG_MSG_LEN: usize = 16;

/// One unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSock {
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub kind: u8,
    /// TCP_ESTABLISHED, TCP_LISTEN, TCP_CLOSE…
    pub state: u8,
    /// The peer's inode (0: none).
    pub peer: u64,
    /// Its bound name; an abstract one as `@name`.
    pub name: Option<String>,
}

/// The dump request for every unix socket with its name and peer.
pub fn request() -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + 24);
    let len = (NLMSG_HDRLEN + 24) as u32;
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                              // struct unix_diag_req
    b.push(libc::AF_UNIX as u8);
    b.push(0); // protocol
    b.extend_from_slice(&0u16.to_ne_bytes()); // pad
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b.extend_from_slice(&0u32.to_ne_bytes()); // ino
    b.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    b.extend_from_slice(&[0u8; 8]); // cookie
    b
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Parses one datagram of the answer into `out`. `Ok(true)` once the dump is done;
/// `Err(errno)` for an error message.
pub fn parse(buf: &[u8], out: &mut Vec<UnixSock>) -> Result<bool, i32> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off).unwrap_or(0) as usize;
        let ty = u16_at(buf, off + 4).unwrap_or(0);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let e = u32_at(msg, 0).map(|v| v as i32).unwrap_or(-libc::EIO);
                return Err(-e);
            }
            SOCK_DIAG_BY_FAMILY if msg.len() >= UNIX_DIAG_MSG_LEN => {
                let mut s = UnixSock {
                    ino: u32_at(msg, 4).unwrap_or(0) as u64,
                    kind: msg[1],
                    state: msg[2],
                    peer: 0,
                    name: None,
                };
                let mut a = UNIX_DIAG_MSG_LEN;
                while a + 4 <= msg.len() {
                    let alen = u16_at(msg, a).unwrap_or(0) as usize;
                    let aty = u16_at(msg, a + 2).unwrap_or(0);
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    let data = &msg[a + 4..a + alen];
                    match aty {
                        UNIX_DIAG_PEER => s.peer = u32_at(data, 0).unwrap_or(0) as u64,
                        UNIX_DIAG_NAME if !data.is_empty() => {
                            s.name = Some(match data.split_first() {
                                Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
                                _ => String::from_utf8_lossy(data)
                                    .trim_end_matches('\0')
                                    .to_string(),
                            })
                        }
                        _ => {}
                    }
                    a += (alen + 3) & !3;
                }
                out.push(s);
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// A sock_diag socket in the network namespace of `pid`.
fn diag_socket(pid: i32) -> Result<OwnedFd, InspectError> {
    let err = move |op: &'static str| {
        move |e: nix::errno::Errno| InspectError::Diag {
            pid,
            op,
            source: e.into(),
        }
    };
    let make = move || {
        socket::socket(
            AddressFamily::Netlink,
            socket::SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(err("socket(AF_NETLINK, NETLINK_SOCK_DIAG)"))
    };
    let path = super::procs::proc_path(pid, "ns/net");
    let ns = std::fs::File::open(&path).map_err(|source| InspectError::Read {
        path: path.clone(),
        source,
    })?;
    let ours = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    let theirs = ns.metadata().map(|m| m.ino()).ok();
    if ours.is_some() && ours == theirs {
        return make();
    }
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(err("setns(CLONE_NEWNET)"))?;
        make()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(InspectError::Diag {
            pid,
            op: "setns thread",
            source: std::io::Error::other("the thread panicked"),
        })
    })
}

/// Every unix socket of the network namespace of `pid`, by inode.
pub fn unix_sockets(pid: i32) -> Result<HashMap<u64, UnixSock>, InspectError> {
    let fd = diag_socket(pid)?;
    let err = |op: &'static str| {
        move |e: nix::errno::Errno| InspectError::Diag {
            pid,
            op,
            source: e.into(),
        }
    };
    socket::sendto(
        fd.as_raw_fd(),
        &request(),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(err("sendto(SOCK_DIAG_BY_FAMILY)"))?;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(err("recv(SOCK_DIAG_BY_FAMILY)"))?;
        if n == 0 {
            break;
        }
        match parse(&buf[..n], &mut all) {
            Ok(true) => break,
            Ok(false) => {}
            Err(errno) => {
                return Err(InspectError::Diag {
                    pid,
                    op: "SOCK_DIAG_BY_FAMILY answer",
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
    Ok(all.into_iter().map(|s| (s.ino, s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn message(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn answers_parse() {
        let mut body = vec![libc::AF_UNIX as u8, libc::SOCK_STREAM as u8, 1, 0];
        body.extend_from_slice(&4242u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"\0abstract"));
        body.extend(attr(UNIX_DIAG_PEER, &77u32.to_ne_bytes()));
        let mut buf = message(SOCK_DIAG_BY_FAMILY, &body);
        buf.extend(message(NLMSG_DONE, &[0u8; 4]));
        let mut out = vec![];
        assert_eq!(parse(&buf, &mut out), Ok(true));
        assert_eq!(
            out,
            vec![UnixSock {
                ino: 4242,
                kind: libc::SOCK_STREAM as u8,
                state: 1,
                peer: 77,
                name: Some("@abstract".into()),
            }]
        );
        let err = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse(&err, &mut out), Err(libc::EPERM));
        assert_eq!(request().len(), 40);
    }

    #[test]
    fn a_socketpair_of_ours_is_listed_with_its_peer() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = std::process::id() as i32;
        let ino = |fd: i32| crate::sys::fd_inode(me, fd).unwrap();
        let (ia, ib) = (ino(a.as_raw_fd()), ino(b.as_raw_fd()));
        let all = unix_sockets(me).unwrap();
        assert_eq!(all[&ia].peer, ib);
        assert_eq!(all[&ib].peer, ia);
    }
}
