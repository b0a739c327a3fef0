//! The verdict: findings and the options a dump would run with, in; obstacles (each with the
//! flag or spec key that fixes it, or why nothing can) and notes, out. Pure, so every rule is
//! tested here with made-up findings.
//!
//! An obstacle is something that makes `stasis checkpoint` fail today; a note is something a
//! dump gets past that a restore will care about.

use super::findings::{Finding, Gpu, TcpState, UnixKind};
use super::host::{kernel_pair, HostFacts};
use crate::criu::options::Flags;
use serde::Serialize;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// A stable name for the kind of problem (`tcp-established`, `io-uring`…).
    pub kind: String,
    /// Where: `pid 42 (python3) fd 5`, or the host.
    pub at: String,
    /// What is there and why it matters.
    pub problem: String,
    /// The flag or spec key that fixes it, or why nothing can; for a note, what to know.
    pub fix: String,
}

fn line(kind: &str, at: String, problem: String, fix: &str) -> Line {
    Line {
        kind: kind.into(),
        at,
        problem,
        fix: fix.into(),
    }
}

/// What the dump would run with, and how it was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: Flags,
    /// The ghost limit was set (spec or flag), not chosen by stasis.
    pub ghost_limit_set: bool,
}

/// Obstacles and notes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub obstacles: Vec<Line>,
    pub notes: Vec<Line>,
}

const NOTHING: &str = "nothing stasis or CRIU can set";

fn mib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{b} bytes")
    }
}

/// The host's own obstacles: no CRIU, a failing `criu check`, a CRIU too old for TCP here.
pub fn host(h: &HostFacts, has_tcp: bool) -> Vec<Line> {
    let at = || format!("host {}", h.hostname);
    let mut out = vec![];
    match &h.criu {
        None => out.push(line(
            "criu",
            at(),
            h.criu_error.clone().unwrap_or_else(|| "no CRIU".into()),
            crate::criu::INSTALL_HINT,
        )),
        Some(c) if !c.check.ok => out.push(line(
            "criu-check",
            at(),
            format!("`criu check` fails: {}", c.check.detail),
            "fix what CRIU names (a kernel without checkpoint support cannot be fixed by a flag)",
        )),
        Some(_) => {}
    }
    let old = h.criu_version().is_some_and(|v| v < (4, 2));
    let new_kernel = kernel_pair(&h.kernel).is_some_and(|k| k >= (6, 16));
    if has_tcp && old && new_kernel {
        out.push(line(
            "criu-tcp",
            at(),
            "the job has TCP sockets, and CRIU before 4.2 cannot dump them on kernels 6.16 and later".into(),
            "install CRIU 4.2 or later (scripts/install-criu.sh)",
        ));
    }
    out
}

/// The host's notes: what makes its dumps and restores slower without making them fail.
pub fn host_notes(h: &HostFacts) -> Vec<Line> {
    let mut out = vec![];
    if h.run_tmpfs == Some(false) {
        out.push(line(
            "run-not-tmpfs",
            format!("host {}", h.hostname),
            format!(
                "{} is not a tmpfs: CRIU keeps no cache of its kernel probes ({}/criu.kdat) and re-probes the kernel on every dump and restore (some 25-40 ms each)",
                super::host::KDAT_DIR,
                super::host::KDAT_DIR
            ),
            "mount a tmpfs on /run (most distributions do); nothing else to change",
        ));
    }
    out
}

/// Judges the findings under the dump options.
pub fn judge(findings: &[Finding], o: &Options, host_facts: &HostFacts) -> Verdict {
    let f = &o.flags;
    let mut v = Verdict::default();
    let has_tcp = findings.iter().any(|x| matches!(x, Finding::Tcp { .. }));
    v.obstacles.extend(host(host_facts, has_tcp));
    v.notes.extend(host_notes(host_facts));
    for x in findings {
        let at = x.place().map(|p| p.to_string()).unwrap_or_default();
        let (obstacle, kind, problem, fix): (bool, &str, String, String) = match x {
            Finding::Tcp { state: TcpState::Connected(s), local, remote, .. } => {
                let problem = format!("a TCP connection {local} -> {remote} ({s})");
                if f.tcp_established {
                    (false, "tcp-established", problem, "dumped with --tcp-established: a restore needs its local address to exist there (this host, or the job's own network namespace)".into())
                } else {
                    (true, "tcp-established", problem, "checkpoint with --tcp-established (spec: criu.tcp_established: true)".into())
                }
            }
            Finding::Tcp { state: TcpState::Listen, local, backlog, .. } if *backlog > 0 => (
                true,
                "tcp-backlog",
                format!("a listening TCP socket {local} with {backlog} connection(s) not yet accepted"),
                format!("{NOTHING} (stasis does not pass CRIU's --skip-in-flight): the job must accept them first; check again in a moment"),
            ),
            Finding::Tcp { .. } => continue,
            Finding::UnixExternal { ino, kind, peer, peer_name, .. } => {
                let declared = f.external.iter().any(|e| e == &format!("unix[{ino}]"));
                let named = peer_name.as_deref().unwrap_or("an unnamed socket");
                let problem = format!("a unix {} socket connected to {named} (socket:[{peer}]), which is outside the job", kind_name(*kind));
                let dgram = *kind == UnixKind::Dgram && peer_name.is_some();
                if declared {
                    (false, "unix-external", problem, format!("declared external (unix[{ino}]): the restore must provide it"))
                } else if f.ext_unix_sk && dgram {
                    (false, "unix-external", problem, "dumped with --ext-unix-sk: it comes back unconnected and the job must reconnect".into())
                } else if dgram {
                    (true, "unix-external", problem, "checkpoint with --ext-unix-sk (spec: criu.ext_unix_sk: true); it comes back unconnected".into())
                } else {
                    (true, "unix-external", problem, format!("{NOTHING}: CRIU cannot dump one end of a {} connection (--ext-unix-sk covers datagram sockets with a named peer only); close it before the checkpoint, or run the peer inside the job", if *kind == UnixKind::Dgram { "datagram socket with an unnamed peer" } else { "stream" }))
                }
            }
            Finding::NetlinkQueued { protocol, bytes, .. } => (
                true,
                "netlink-queued",
                format!("a netlink socket (protocol {protocol}) with {bytes} bytes not yet read"),
                format!("{NOTHING}: CRIU refuses netlink sockets with data to read (lxd#4002); check again once the job has read it"),
            ),
            Finding::SocketFamily { proto, .. } => (
                true,
                "socket-family",
                format!("a socket of protocol {proto}"),
                format!("{NOTHING}: CRIU dumps only unix, TCP, UDP, ICMP, raw, packet and netlink sockets{}", if proto == "MPTCP" { " (Go programs: GODEBUG=multipathtcp=0)" } else { "" }),
            ),
            Finding::SocketElsewhere { ino, .. } => (
                true,
                "socket-elsewhere",
                format!("socket:[{ino}] is in none of the job's network namespaces (it was passed in)"),
                format!("{NOTHING}: close it before the checkpoint"),
            ),
            Finding::UnsupportedFile { what, .. } if what.contains("io_uring") => (
                true,
                "io-uring",
                "an io_uring instance".into(),
                format!("{NOTHING}: CRIU cannot dump io_uring (criu#2131); the program must not hold one at the dump (e.g. a runtime built without io_uring)"),
            ),
            Finding::UnsupportedFile { what, .. } => (
                true,
                "unsupported-file",
                format!("{what}, a kind of file CRIU cannot dump"),
                format!("{NOTHING}: close it before the checkpoint"),
            ),
            Finding::PidfdOutside { target, .. } => (
                true,
                "pidfd-outside",
                format!("a pidfd of pid {target}, which is not in the job's process tree"),
                format!("{NOTHING}: that process would not exist at restore (criu#2258); close the pidfd"),
            ),
            Finding::PidfdThread { .. } => (
                true,
                "pidfd-thread",
                "a pidfd opened with PIDFD_THREAD".into(),
                format!("{NOTHING}: CRIU 4.2 does not dump thread pidfds"),
            ),
            Finding::Deleted { path, bytes, linked: false, .. } if *bytes > f.ghost_limit => (
                true,
                "ghost-limit",
                format!("the deleted file {} ({}) is above the ghost limit ({})", path.display(), mib(*bytes), mib(f.ghost_limit)),
                format!("checkpoint with --ghost-limit {} or more (spec: criu.ghost_limit){}", ceil_mib(*bytes), if o.ghost_limit_set { "" } else { "; the limit stasis picks counts only files held open, not mapped ones" }),
            ),
            Finding::Deleted { path, linked: true, .. } if !f.link_remap => (
                true,
                "link-remap",
                format!("{} was unlinked while open, and other names of it remain", path.display()),
                "checkpoint with --link-remap (the default; spec: criu.link_remap: true)".into(),
            ),
            Finding::Deleted { .. } => continue,
            Finding::PathReused { path, .. } => (
                true,
                "path-reused",
                format!("{} now names another file than the one held", path.display()),
                format!("{NOTHING}: CRIU cannot dump a file whose name was taken by another (move the new file aside, or have the job reopen it)"),
            ),
            Finding::MountGone { path, mount, .. } => (
                true,
                "mount-gone",
                format!("{} is on {}, which the host no longer has (unmounted since the job started, or mounted by the job itself): the checkpoint detaches it and CRIU cannot dump a file there", path.display(), mount.display()),
                format!("mount {} on the host again, or have the job close the file", mount.display()),
            ),
            Finding::MountUnknown { path, mnt_id, .. } => (
                true,
                "mount-outside",
                format!("{} is on mount {mnt_id}, which is not the container's (it was opened outside, or its mount was detached)", path.display()),
                format!("{NOTHING}: a restore could not find it; close it before the checkpoint"),
            ),
            Finding::MountCovered { path, mount, .. } => (
                true,
                "mount-covered",
                format!("{} is on {}, which another mount hides", path.display(), mount.display()),
                format!("{NOTHING}: CRIU cannot dump files on overmounted mounts; unmount what covers it"),
            ),
            Finding::MountName { mount, .. } => (
                true,
                "mount-name",
                format!("the container has a mount at {}, whose name CRIU's --external cannot carry (']', ':' or ',')", mount.display()),
                "unmount it, or mount it at a plainer path".into(),
            ),
            Finding::Device { path, major, minor, .. } => (
                true,
                "device",
                format!("the device {} ({major}:{minor})", path.display()),
                format!("{NOTHING}: CRIU dumps memory devices, terminals, tun and autofs only"),
            ),
            Finding::Mapping { what, .. } => (
                true,
                "mapping",
                format!("a mapping of {what}"),
                format!("{NOTHING}: CRIU dumps mappings of files, /dev/zero and anonymous memory only"),
            ),
            Finding::Uprobes { .. } => (
                true,
                "uprobes",
                "a uprobes area (a tracer has probes in it)".into(),
                "remove the probes (CRIU's --allow-uprobes is not passed by stasis)".into(),
            ),
            Finding::ForeignTty { path, why, .. } => (
                true,
                "foreign-tty",
                format!("{} is a terminal that is not the container's: {why}", path.display().to_string().trim_end_matches(" (deleted)")),
                format!("{NOTHING}: CRIU cannot dump a pty without its master (runc#87); give the job its own terminal (run -t, exec -t)"),
            ),
            Finding::Traced { tracer, .. } => (
                true,
                "traced",
                format!("traced by pid {tracer} (strace, gdb)"),
                "detach the tracer first: CRIU cannot seize a traced process".into(),
            ),
            Finding::NestedNamespace { kind, .. } => (
                true,
                "nested-namespace",
                format!("in its own {kind} namespace, nested in the job's"),
                format!("{NOTHING}: CRIU dumps nested mount and network namespaces only"),
            ),
            Finding::SessionOutside { sid, .. } => (
                true,
                "session-outside",
                format!("its session leader (pid {sid}) is outside the container: it was entered with nsenter or setns"),
                format!("{NOTHING}: start such processes with `stasis exec` instead"),
            ),
            Finding::FileLock { path, .. } if !f.file_locks => (
                true,
                "file-lock",
                format!("holds a lock on {}", path.display()),
                "checkpoint with --file-locks (the default; spec: criu.file_locks: true)".into(),
            ),
            Finding::FileLock { .. } => continue,
            Finding::Gpu(Gpu::Ready { user, detail }) => (
                false,
                "gpu",
                format!("{user} (a GPU job)"),
                format!("dumped through CRIU's cuda plugin; it restores only onto {detail}"),
            ),
            Finding::Gpu(Gpu::NoPlugin { user, why }) => (
                true,
                "gpu-plugin",
                format!("{user} (a GPU job), but {why}"),
                "scripts/install-criu.sh builds and installs CRIU's cuda plugin".into(),
            ),
            Finding::Gpu(Gpu::Driver { user, why }) => (
                true,
                "gpu-driver",
                format!("{user} (a GPU job), but {why}"),
                "an NVIDIA driver 570 or newer (its checkpoint API)".into(),
            ),
        };
        let l = line(kind, at, problem, &fix);
        if obstacle {
            v.obstacles.push(l);
        } else {
            v.notes.push(l);
        }
    }
    v.obstacles = merged(v.obstacles);
    v.notes = merged(v.notes);
    v
}

/// One line per problem: the same file held by several processes (an inherited fd) is one
/// obstacle, with every place that holds it.
fn merged(lines: Vec<Line>) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for l in lines {
        match out
            .iter_mut()
            .find(|o| o.kind == l.kind && o.problem == l.problem && o.fix == l.fix)
        {
            Some(o) if !l.at.is_empty() && !o.at.split(", ").any(|a| a == l.at) => {
                o.at = format!("{}, {}", o.at, l.at)
            }
            Some(_) => {}
            None => out.push(l),
        }
    }
    out
}

fn kind_name(k: UnixKind) -> &'static str {
    match k {
        UnixKind::Stream => "stream",
        UnixKind::Dgram => "datagram",
        UnixKind::Seqpacket => "seqpacket",
    }
}

/// A size for `--ghost-limit` that covers `bytes`: whole MiB, rounded up.
fn ceil_mib(bytes: u64) -> String {
    format!("{}M", bytes.div_ceil(1 << 20))
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
