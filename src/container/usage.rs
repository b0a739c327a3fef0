//! What a container uses now: CPU time, memory, tasks and block IO, read from its cgroup where
//! it has one (v1: memory.usage_in_bytes, cpuacct.usage, pids.current, blkio; v2:
//! memory.current, cpu.stat, pids.current, io.stat), and otherwise summed over its processes
//! from /proc. A workload joins a cgroup only for the limits it asks for (see `cgroup`), so
//! most figures of an unlimited job come from /proc.

use crate::container::cgroup::{Cgroup, Mode};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Beyond this a v1 limit means "none" (the kernel writes its page-rounded i64 max).
const V1_UNLIMITED: u64 = 1 << 62;

/// Where a figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The workload's cgroup.
    Cgroup,
    /// A sum over the container's processes in /proc.
    Proc,
    /// Nowhere: the figure is unknown.
    None,
}

/// The source of each figure of a [`Usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub cpu: Source,
    pub memory: Source,
    pub pids: Source,
    pub io: Source,
}

/// A container's resource use at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// CPU time used, user and system, in ns (from /proc: of the live processes and the
    /// children they have reaped).
    pub cpu_ns: u64,
    /// Memory in use: the cgroup's charge (page cache included), or the processes' summed
    /// resident sets.
    pub memory_bytes: u64,
    pub memory_limit: Option<u64>,
    /// Tasks (threads) in the container.
    pub pids: u64,
    pub pids_limit: Option<u64>,
    /// Bytes read from and written to block devices.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub sources: Sources,
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A limit file: a number, or `max` (none).
fn read_limit(p: &Path) -> Option<u64> {
    read_u64(p).filter(|v| *v < V1_UNLIMITED)
}

/// `key value` lines (cpu.stat, /proc/PID/io).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once([' ', ':'])?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The directory of `controller` for this cgroup if the workload has joined it (v1), or its
/// one directory (v2).
fn dir(cg: &Cgroup, controller: &str) -> Option<PathBuf> {
    let d = match cg.mode {
        Mode::V2 => Path::new(CGROUP_ROOT).join(&cg.rel),
        Mode::V1 => Path::new(CGROUP_ROOT).join(controller).join(&cg.rel),
    };
    d.is_dir().then_some(d)
}

/// Read and written bytes from v1 blkio (`MAJ:MIN Read N` lines) or v2 io.stat
/// (`MAJ:MIN rbytes=N wbytes=N ...`), summed over devices.
fn io_bytes(cg: &Cgroup) -> Option<(u64, u64)> {
    let d = dir(cg, "blkio")?;
    let (mut r, mut w) = (0, 0);
    match cg.mode {
        Mode::V1 => {
            let t = ["blkio.throttle.io_service_bytes", "blkio.io_service_bytes"]
                .iter()
                .find_map(|f| fs::read_to_string(d.join(f)).ok())?;
            for l in t.lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                if let [_, op, n] = f[..] {
                    let n: u64 = n.parse().unwrap_or(0);
                    match op {
                        "Read" => r += n,
                        "Write" => w += n,
                        _ => {}
                    }
                }
            }
        }
        Mode::V2 => {
            let t = fs::read_to_string(d.join("io.stat")).ok()?;
            for kv in t.split_whitespace() {
                if let Some(n) = kv.strip_prefix("rbytes=") {
                    r += n.parse::<u64>().unwrap_or(0);
                } else if let Some(n) = kv.strip_prefix("wbytes=") {
                    w += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Some((r, w))
}

/// Figures from the cgroup's own files; None where the workload has no cgroup for them.
#[derive(Debug, Default)]
struct FromCgroup {
    cpu_ns: Option<u64>,
    memory: Option<(u64, Option<u64>)>,
    pids: Option<(u64, Option<u64>)>,
    io: Option<(u64, u64)>,
}

fn from_cgroup(cg: &Cgroup) -> FromCgroup {
    let mut f = FromCgroup::default();
    match cg.mode {
        Mode::V1 => {
            // cpuacct is its own hierarchy, or mounted with cpu ("cpu,cpuacct")
            f.cpu_ns = ["cpuacct", "cpu"]
                .iter()
                .filter_map(|c| dir(cg, c))
                .find_map(|d| read_u64(&d.join("cpuacct.usage")));
            f.memory = dir(cg, "memory").and_then(|d| {
                let used = read_u64(&d.join("memory.usage_in_bytes"))?;
                Some((used, read_limit(&d.join("memory.limit_in_bytes"))))
            });
            f.pids = dir(cg, "pids").and_then(|d| {
                let n = read_u64(&d.join("pids.current"))?;
                Some((n, read_limit(&d.join("pids.max"))))
            });
        }
        Mode::V2 => {
            if let Some(d) = dir(cg, "") {
                f.cpu_ns = fs::read_to_string(d.join("cpu.stat"))
                    .ok()
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .map(|us| us * 1000);
                f.memory = read_u64(&d.join("memory.current"))
                    .map(|m| (m, read_limit(&d.join("memory.max"))));
                f.pids =
                    read_u64(&d.join("pids.current")).map(|n| (n, read_limit(&d.join("pids.max"))));
            }
        }
    }
    f.io = io_bytes(cg);
    f
}

/// Figures summed over processes from /proc.
#[derive(Debug, Default, PartialEq)]
struct FromProc {
    cpu_ns: u64,
    rss: u64,
    tasks: u64,
    read: u64,
    write: u64,
    /// /proc/PID/io was readable for every process.
    io_ok: bool,
}

/// Nanoseconds per clock tick of /proc/PID/stat.
fn ns_per_tick() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => 1_000_000_000 / t as u64,
        // USER_HZ is 100 on every architecture Linux runs containers on
        _ => 10_000_000,
    }
}

/// Parses /proc/PID/stat: (utime + stime + cutime + cstime in ticks, threads).
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    // the command name may hold spaces and parentheses: fields start after the last ')'
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14-17 (utime, stime, cutime, cstime) and 20 (num_threads), 1-based, with the
    // pid and the name (1, 2) gone
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<i64>().ok());
    let ticks = [14, 15, 16, 17]
        .iter()
        .map(|&i| n(i).map(|v| v.max(0) as u64))
        .sum::<Option<u64>>()?;
    Some((ticks, n(20)?.max(0) as u64))
}

fn from_proc(pids: &[i32]) -> FromProc {
    let tick = ns_per_tick();
    let mut f = FromProc {
        io_ok: !pids.is_empty(),
        ..Default::default()
    };
    for pid in pids {
        let base = PathBuf::from(format!("/proc/{pid}"));
        // a process that ends meanwhile adds nothing
        let Some((ticks, threads)) = fs::read_to_string(base.join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        else {
            continue;
        };
        f.cpu_ns += ticks * tick;
        f.tasks += threads;
        if let Ok(t) = fs::read_to_string(base.join("status")) {
            // "VmRSS:\t  1234 kB" (kernel threads have none)
            let kb: u64 = t
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            f.rss += kb * 1024;
        }
        match fs::read_to_string(base.join("io")) {
            Ok(t) => {
                f.read += keyed(&t, "read_bytes").unwrap_or(0);
                f.write += keyed(&t, "write_bytes").unwrap_or(0);
            }
            Err(_) => f.io_ok = false,
        }
    }
    f
}

/// Measures the container of `cg` whose init is host pid `init` (None: nothing runs, so only
/// cgroup figures are known).
pub fn measure(cg: &Cgroup, init: Option<i32>) -> Usage {
    let c = from_cgroup(cg);
    let need_proc = c.cpu_ns.is_none() || c.memory.is_none() || c.pids.is_none() || c.io.is_none();
    let p = match init {
        Some(pid) if need_proc => Some(from_proc(&crate::container::tree::pids(pid))),
        _ => None,
    };
    let pick = |cg: bool| {
        if cg {
            Source::Cgroup
        } else if p.is_some() {
            Source::Proc
        } else {
            Source::None
        }
    };
    let io_src = if c.io.is_some() {
        Source::Cgroup
    } else if p.as_ref().is_some_and(|p| p.io_ok) {
        Source::Proc
    } else {
        Source::None
    };
    let io =
        c.io.or_else(|| p.as_ref().filter(|p| p.io_ok).map(|p| (p.read, p.write)));
    Usage {
        cpu_ns: c.cpu_ns.or(p.as_ref().map(|p| p.cpu_ns)).unwrap_or(0),
        memory_bytes: c
            .memory
            .map(|m| m.0)
            .or(p.as_ref().map(|p| p.rss))
            .unwrap_or(0),
        memory_limit: c.memory.and_then(|m| m.1),
        pids: c
            .pids
            .map(|m| m.0)
            .or(p.as_ref().map(|p| p.tasks))
            .unwrap_or(0),
        pids_limit: c.pids.and_then(|m| m.1),
        io_read_bytes: io.map(|i| i.0),
        io_write_bytes: io.map(|i| i.1),
        sources: Sources {
            cpu: pick(c.cpu_ns.is_some()),
            memory: pick(c.memory.is_some()),
            pids: pick(c.pids.is_some()),
            io: io_src,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice num_threads ...
        let s = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 11 2 20 0 5 0 123";
        assert_eq!(parse_stat(s), Some((23, 5)));
    }

    #[test]
    fn keyed_lines() {
        assert_eq!(
            keyed("usage_usec 1500\nuser_usec 1000\n", "usage_usec"),
            Some(1500)
        );
        assert_eq!(
            keyed(
                "rchar: 10\nread_bytes: 4096\nwrite_bytes: 0\n",
                "read_bytes"
            ),
            Some(4096)
        );
    }

    #[test]
    fn own_process_is_measured_from_proc() {
        let me = std::process::id() as i32;
        let p = from_proc(&[me]);
        assert!(p.tasks >= 1 && p.rss > 0, "{p:?}");
        // a gone process adds nothing
        assert_eq!(from_proc(&[i32::MAX]).tasks, 0);
    }

    #[test]
    fn a_cgroup_that_does_not_exist_leaves_proc_figures() {
        let cg = Cgroup {
            mode: crate::container::cgroup::detect(),
            rel: "stasis/no-such-key/no-such-job".into(),
        };
        let u = measure(&cg, Some(std::process::id() as i32));
        assert_eq!(u.sources.memory, Source::Proc);
        assert_eq!(u.sources.pids, Source::Proc);
        assert!(u.memory_bytes > 0 && u.pids >= 1);
        assert_eq!(u.memory_limit, None);
        let none = measure(&cg, None);
        assert_eq!(none.sources.cpu, Source::None);
    }
}
