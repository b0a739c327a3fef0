//! The job's processes as /proc shows them from the host: who they are, whether something
//! traces them, which namespaces they are in, where their session leader is.
//!
//! CRIU seizes every task with ptrace (a traced task cannot be seized), dumps only the mount
//! and network namespaces of tasks below the root task (any other namespace of a task's own
//! is "nested" and refused), and wants every session leader inside the dumped PID namespace.

use super::findings::{Finding, Holder, Place};
use super::InspectError;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Namespaces CRIU dumps only for the root task: a task below it in another one is refused.
/// (`time_for_children` differs from `time` in a task that unshared a time namespace.)
const ROOT_ONLY_NS: &[&str] = &["pid", "uts", "ipc", "user", "cgroup", "time"];

/// Reads a /proc file; `Ok(None)` when the process is gone (it may exit while we look).
pub(super) fn read(path: &Path) -> Result<Option<String>, InspectError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if gone(&e) => Ok(None),
        Err(source) => Err(InspectError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// True for the errors /proc gives for a process (or fd) that no longer exists.
pub(super) fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// `/proc/PID/...`.
pub(super) fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// One process of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    /// Host pids of the tracers of its threads (0: none).
    pub tracers: Vec<i32>,
    /// Its session id in its own PID namespace (0: the leader is outside it).
    pub ns_sid: Option<i32>,
    /// Its session id as the host sees it.
    pub sid: i32,
    /// Namespace inodes by kind (`net`, `mnt`, `pid`…).
    pub ns: BTreeMap<String, u64>,
    pub zombie: bool,
}

impl Proc {
    /// A place in this process.
    pub fn at(&self, holder: Holder) -> Place {
        Place::new(self.pid, &self.comm, holder)
    }
}

/// The fields of /proc/PID/status we use: TracerPid, the last NSsid entry (the session id in
/// the process's own PID namespace) and State.
pub fn parse_status(text: &str) -> (i32, Option<i32>, bool) {
    let mut tracer = 0;
    let mut ns_sid = None;
    let mut zombie = false;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("TracerPid:") {
            tracer = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("NSsid:") {
            ns_sid = v.split_whitespace().last().and_then(|s| s.parse().ok());
        } else if let Some(v) = l.strip_prefix("State:") {
            zombie = v.trim_start().starts_with('Z');
        }
    }
    (tracer, ns_sid, zombie)
}

/// The session id (field 6) of /proc/PID/stat.
pub fn parse_stat_sid(text: &str) -> Option<i32> {
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Reads one process; `None` when it has gone.
pub fn read_proc(pid: i32) -> Result<Option<Proc>, InspectError> {
    let Some(comm) = read(&proc_path(pid, "comm"))? else {
        return Ok(None);
    };
    let Some(status) = read(&proc_path(pid, "status"))? else {
        return Ok(None);
    };
    let Some(stat) = read(&proc_path(pid, "stat"))? else {
        return Ok(None);
    };
    let (tracer, ns_sid, zombie) = parse_status(&status);
    let mut tracers = vec![tracer];
    // Threads are seized one by one, and each can be traced on its own.
    if let Ok(rd) = std::fs::read_dir(proc_path(pid, "task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                tracers.push(parse_status(&s).0);
            }
        }
    }
    tracers.retain(|t| *t != 0);
    tracers.sort_unstable();
    tracers.dedup();
    let mut ns = BTreeMap::new();
    for kind in ROOT_ONLY_NS
        .iter()
        .chain(&["net", "mnt", "time_for_children"])
    {
        // A zombie has no namespaces left; a kernel without one simply lacks the link.
        if let Ok(meta) = std::fs::metadata(proc_path(pid, &format!("ns/{kind}"))) {
            use std::os::unix::fs::MetadataExt;
            ns.insert(kind.to_string(), meta.ino());
        }
    }
    Ok(Some(Proc {
        pid,
        comm: comm.trim_end().to_string(),
        tracers,
        ns_sid,
        sid: parse_stat_sid(&stat).unwrap_or(0),
        ns,
        zombie,
    }))
}

/// Every process of the tree rooted at `init` (init first) that still exists.
pub fn read_tree(init: i32) -> Result<Vec<Proc>, InspectError> {
    let mut out = Vec::new();
    for pid in crate::container::tree::pids(init) {
        if let Some(p) = read_proc(pid)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// What CRIU would refuse about the processes themselves: tracers, nested namespaces,
/// session leaders outside the container. `procs[0]` is the root of the dump.
pub fn findings(procs: &[Proc]) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(root) = procs.first() else {
        return out;
    };
    for p in procs {
        for &t in &p.tracers {
            out.push(Finding::Traced {
                at: p.at(Holder::Process),
                tracer: t,
            });
        }
        if p.zombie || p.pid == root.pid {
            continue;
        }
        for kind in ROOT_ONLY_NS {
            if let (Some(a), Some(b)) = (p.ns.get(*kind), root.ns.get(*kind)) {
                if a != b {
                    out.push(Finding::NestedNamespace {
                        at: p.at(Holder::Process),
                        kind: kind.to_string(),
                    });
                }
            }
        }
        if let (Some(t), Some(c)) = (p.ns.get("time"), p.ns.get("time_for_children")) {
            let said = |f: &Finding| matches!(f, Finding::NestedNamespace { at, kind } if at.pid == p.pid && kind == "time");
            if t != c && !out.iter().any(said) {
                out.push(Finding::NestedNamespace {
                    at: p.at(Holder::Process),
                    kind: "time".into(),
                });
            }
        }
        // 0: the session leader is not in the container's PID namespace at all. (A leader
        // that has exited is fine: CRIU restores the session with a helper task.)
        if p.ns_sid == Some(0) {
            out.push(Finding::SessionOutside {
                at: p.at(Holder::Process),
                sid: p.sid,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, sid: i32, ns: &[(&str, u64)]) -> Proc {
        Proc {
            pid,
            comm: format!("p{pid}"),
            tracers: vec![],
            ns_sid: Some(1),
            sid,
            ns: ns.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            zombie: false,
        }
    }

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tsleep\nState:\tS (sleeping)\nTracerPid:\t4242\nNSpid:\t900\t3\nNSsid:\t880\t0\n";
        assert_eq!(parse_status(s), (4242, Some(0), false));
        let s = "State:\tZ (zombie)\nTracerPid:\t0\nNSsid:\t7\n";
        assert_eq!(parse_status(s), (0, Some(7), true));
        let stat = "123 (a b) c) S 1 120 110 0 -1 4194560 100";
        assert_eq!(parse_stat_sid(stat), Some(110));
    }

    #[test]
    fn nested_namespaces_tracers_and_outside_sessions_are_found() {
        let root = proc(10, 10, &[("pid", 1), ("uts", 2), ("mnt", 3), ("net", 4)]);
        let child = proc(11, 10, &[("pid", 1), ("uts", 2), ("mnt", 30), ("net", 40)]);
        let nested = proc(12, 10, &[("pid", 1), ("uts", 99), ("mnt", 3), ("net", 4)]);
        let mut traced = proc(13, 10, &[("pid", 1), ("uts", 2)]);
        traced.tracers = vec![77];
        let mut entered = proc(14, 500, &[("pid", 1), ("uts", 2)]);
        entered.ns_sid = Some(0);
        let f = findings(&[root.clone(), child, nested, traced, entered]);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(
            matches!(&f[0], Finding::NestedNamespace { at, kind } if at.pid == 12 && kind == "uts")
        );
        assert!(matches!(&f[1], Finding::Traced { at, tracer: 77 } if at.pid == 13));
        assert!(matches!(&f[2], Finding::SessionOutside { at, sid: 500 } if at.pid == 14));
        // mount and network namespaces of their own are fine
        assert!(findings(&[root]).is_empty());
    }

    #[test]
    fn this_process_reads_back() {
        let me = read_proc(std::process::id() as i32).unwrap().unwrap();
        assert!(!me.comm.is_empty() && me.ns.contains_key("mnt"));
        assert!(read_proc(i32::MAX).unwrap().is_none());
    }
}
