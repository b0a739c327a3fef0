//! The job's sockets: each one's protocol (as the kernel names it), and what CRIU would make
//! of it, from the tables of the network namespace it lives in: /proc/PID/net/tcp{,6} for TCP
//! states and accept queues, /proc/PID/net/netlink for unread netlink data, and sock_diag
//! ([`super::diag`]) for the peers of unix sockets.
//!
//! CRIU dumps unix, TCP, UDP, UDP-Lite, ICMP and raw IPv4/IPv6, packet and netlink sockets,
//! and refuses: any other family or protocol (MPTCP, vsock…), a connected TCP socket without
//! `--tcp-established`, a listening TCP socket with connections not yet accepted, a netlink
//! socket with data to read, and a unix socket connected to a peer it does not dump (unless
//! `--ext-unix-sk`, and then only for datagram sockets with a named peer).

use super::diag::{self, UnixSock};
use super::fds::{FdKind, OpenFd};
use super::findings::{Finding, Holder, TcpState, UnixKind};
use super::procs::{proc_path, Proc};
use super::InspectError;
use std::collections::{HashMap, HashSet};

/// Protocols CRIU dumps without conditions.
const PLAIN: &[&str] = &[
    "UDP",
    "UDPv6",
    "UDP-Lite",
    "UDPLITEv6",
    "RAW",
    "RAWv6",
    "PING",
    "PINGv6",
    "PACKET",
];

/// One row of /proc/net/tcp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local: String,
    pub remote: String,
    /// The kernel's state number.
    pub state: u8,
    /// For a listening socket, its accept queue.
    pub rx_queue: u32,
}

/// Formats a /proc/net address (`0100007F:1F90`, or 32 hex digits for IPv6).
pub fn addr(s: &str) -> String {
    let Some((ip, port)) = s.split_once(':') else {
        return s.to_string();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    // Each 32-bit group is printed as the host reads the network-order word.
    let bytes: Vec<u8> = (0..ip.len() / 8)
        .filter_map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    match bytes.len() {
        4 => format!("{}.{}.{}.{}:{port}", bytes[0], bytes[1], bytes[2], bytes[3]),
        16 => {
            let a: [u8; 16] = bytes.try_into().unwrap_or([0; 16]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(a))
        }
        _ => s.to_string(),
    }
}

/// Parses /proc/net/tcp or tcp6, by inode.
pub fn parse_tcp(text: &str) -> HashMap<u64, TcpRow> {
    let mut out = HashMap::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(local), Some(remote), Some(st), Some(queues), Some(ino)) =
            (f.get(1), f.get(2), f.get(3), f.get(4), f.get(9))
        else {
            continue;
        };
        let Ok(ino) = ino.parse::<u64>() else {
            continue;
        };
        if ino == 0 {
            continue;
        }
        let rx = queues
            .split_once(':')
            .and_then(|(_, rx)| u32::from_str_radix(rx, 16).ok())
            .unwrap_or(0);
        out.insert(
            ino,
            TcpRow {
                local: addr(local),
                remote: addr(remote),
                state: u8::from_str_radix(st, 16).unwrap_or(0),
                rx_queue: rx,
            },
        );
    }
    out
}

/// Parses /proc/net/netlink: inode -> (protocol, bytes queued to read).
pub fn parse_netlink(text: &str) -> HashMap<u64, (u32, u64)> {
    let mut out = HashMap::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let (Some(proto), Some(rmem), Some(ino)) = (f.get(1), f.get(4), f.get(9)) {
            if let (Ok(p), Ok(r), Ok(i)) = (proto.parse(), rmem.parse(), ino.parse()) {
                out.insert(i, (p, r));
            }
        }
    }
    out
}

/// The socket tables of one network namespace.
#[derive(Debug, Clone, Default)]
pub struct NetTables {
    pub tcp: HashMap<u64, TcpRow>,
    pub netlink: HashMap<u64, (u32, u64)>,
    pub unix: HashMap<u64, UnixSock>,
}

impl NetTables {
    /// Reads the tables of the network namespace of `pid`.
    pub fn read(pid: i32) -> Result<NetTables, InspectError> {
        let mut t = NetTables::default();
        for f in ["net/tcp", "net/tcp6"] {
            if let Some(text) = super::procs::read(&proc_path(pid, f))? {
                t.tcp.extend(parse_tcp(&text));
            }
        }
        if let Some(text) = super::procs::read(&proc_path(pid, "net/netlink"))? {
            t.netlink = parse_netlink(&text);
        }
        t.unix = diag::unix_sockets(pid)?;
        Ok(t)
    }
}

/// A TCP state number as CRIU sorts it.
pub fn tcp_state(n: u8) -> TcpState {
    match n {
        10 => TcpState::Listen,
        7 => TcpState::Closed,
        1 => TcpState::Connected("established".into()),
        2 => TcpState::Connected("syn-sent".into()),
        4 => TcpState::Connected("fin-wait-1".into()),
        5 => TcpState::Connected("fin-wait-2".into()),
        8 => TcpState::Connected("close-wait".into()),
        9 => TcpState::Connected("last-ack".into()),
        11 => TcpState::Connected("closing".into()),
        n => TcpState::Connected(format!("state {n}")),
    }
}

fn unix_kind(k: u8) -> UnixKind {
    match k as i32 {
        libc::SOCK_DGRAM => UnixKind::Dgram,
        libc::SOCK_SEQPACKET => UnixKind::Seqpacket,
        _ => UnixKind::Stream,
    }
}

/// Judges one socket held at `at` with protocol `proto`; `tables` are its namespace's,
/// `ours` every socket inode the job holds.
pub fn judge(
    at: super::findings::Place,
    ino: u64,
    proto: &str,
    tables: &NetTables,
    ours: &HashSet<u64>,
) -> Option<Finding> {
    if PLAIN.contains(&proto) {
        return None;
    }
    if proto.starts_with("UNIX") {
        let Some(s) = tables.unix.get(&ino) else {
            return Some(Finding::SocketElsewhere { at, ino });
        };
        if s.peer == 0 || ours.contains(&s.peer) {
            return None;
        }
        return Some(Finding::UnixExternal {
            at,
            ino,
            kind: unix_kind(s.kind),
            peer: s.peer,
            peer_name: tables.unix.get(&s.peer).and_then(|p| p.name.clone()),
        });
    }
    match proto {
        "TCP" | "TCPv6" => Some(match tables.tcp.get(&ino) {
            Some(r) => Finding::Tcp {
                at,
                state: tcp_state(r.state),
                local: r.local.clone(),
                remote: r.remote.clone(),
                backlog: if r.state == 10 { r.rx_queue } else { 0 },
            },
            // not bound: not in the table
            None => Finding::Tcp {
                at,
                state: TcpState::Closed,
                local: String::new(),
                remote: String::new(),
                backlog: 0,
            },
        }),
        "NETLINK" => match tables.netlink.get(&ino) {
            Some(&(protocol, bytes)) if bytes > 0 => Some(Finding::NetlinkQueued {
                at,
                protocol,
                bytes,
            }),
            _ => None,
        },
        other => Some(Finding::SocketFamily {
            at,
            proto: other.to_string(),
        }),
    }
}

/// The socket findings of the job: `fds[i]` belongs to `procs[i]`.
pub fn findings(procs: &[Proc], fds: &[Vec<OpenFd>]) -> Result<Vec<Finding>, InspectError> {
    let ours: HashSet<u64> = fds
        .iter()
        .flatten()
        .filter_map(|f| match f.kind {
            FdKind::Socket(i) => Some(i),
            _ => None,
        })
        .collect();
    let mut tables: HashMap<u64, NetTables> = HashMap::new();
    let mut out = Vec::new();
    for (p, fds) in procs.iter().zip(fds) {
        let socks: Vec<(&OpenFd, u64)> = fds
            .iter()
            .filter_map(|f| match f.kind {
                FdKind::Socket(i) => Some((f, i)),
                _ => None,
            })
            .collect();
        if socks.is_empty() {
            continue;
        }
        let net = p.ns.get("net").copied().unwrap_or(0);
        let t = match tables.entry(net) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(NetTables::read(p.pid)?),
        };
        for (f, ino) in socks {
            let link = proc_path(p.pid, &format!("fd/{}", f.fd));
            // A socket closed while we look has no name left.
            let Ok(proto) = crate::sys::sock_proto_name(&link) else {
                continue;
            };
            out.extend(judge(p.at(Holder::Fd(f.fd)), ino, &proto, t, &ours));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precheck::findings::Place;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 5151 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 5252 1 0 20 4 30 10 -1
";

    #[test]
    fn tcp_rows_parse() {
        let t = parse_tcp(TCP);
        assert_eq!(t[&5151].local, "127.0.0.1:8080");
        assert_eq!((t[&5151].state, t[&5151].rx_queue), (10, 2));
        assert_eq!(t[&5252].remote, "127.0.0.1:8080");
        let v6 = addr("00000000000000000000000001000000:0050");
        assert_eq!(v6, "[::1]:80");
        let nl = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
                  ffff8d4d4a2f0000 0   4242       00000000 2304     0        0     2        0        777\n";
        assert_eq!(parse_netlink(nl)[&777], (0, 2304));
    }

    #[test]
    fn sockets_are_judged() {
        let at = Place::new(3, "job", Holder::Fd(5));
        let mut t = NetTables {
            tcp: parse_tcp(TCP),
            ..Default::default()
        };
        t.netlink.insert(9, (0, 100));
        t.unix.insert(
            20,
            UnixSock {
                ino: 20,
                kind: libc::SOCK_DGRAM as u8,
                state: 1,
                peer: 21,
                name: None,
            },
        );
        t.unix.insert(
            21,
            UnixSock {
                ino: 21,
                kind: libc::SOCK_DGRAM as u8,
                state: 7,
                peer: 0,
                name: Some("/dev/log".into()),
            },
        );
        let ours: HashSet<u64> = [20].into();
        let j = |ino, proto: &str| judge(at.clone(), ino, proto, &t, &ours);
        assert!(matches!(
            j(5151, "TCP"),
            Some(Finding::Tcp {
                state: TcpState::Listen,
                backlog: 2,
                ..
            })
        ));
        assert!(matches!(
            j(5252, "TCP"),
            Some(Finding::Tcp {
                state: TcpState::Connected(_),
                ..
            })
        ));
        assert!(matches!(
            j(9, "NETLINK"),
            Some(Finding::NetlinkQueued { bytes: 100, .. })
        ));
        assert!(matches!(
            j(20, "UNIX"),
            Some(Finding::UnixExternal {
                kind: UnixKind::Dgram,
                peer_name: Some(_),
                ..
            })
        ));
        assert!(matches!(
            j(30, "UNIX-STREAM"),
            Some(Finding::SocketElsewhere { ino: 30, .. })
        ));
        assert!(
            matches!(j(40, "MPTCP"), Some(Finding::SocketFamily { proto, .. }) if proto == "MPTCP")
        );
        assert_eq!(j(41, "UDP"), None);
    }
}
