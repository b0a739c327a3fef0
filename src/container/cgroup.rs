//! One cgroup per workload: memory, pids and CPU limits and an OOM counter. cgroup v2 where the
//! host has it; v1 (one directory per controller) where it does not, as on hosts whose v2 mount
//! holds only leftovers.
//!
//! A workload gets a cgroup only for the limits it asks for (on v1: just the limited
//! controllers). Joining one is a cgroup migration on the start path (0.2-0.3 ms each on v1
//! here), and without limits it buys nothing the PID namespace does not already give: every
//! process of the workload is inside it and ends with its init.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers stasis manages on cgroup v1.
const V1_CONTROLLERS: &[&str] = &["pids", "memory", "cpu"];

/// A cgroup operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {op} {path}: {source}")]
pub struct CgroupError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    V1,
    V2,
}

/// Detects the host's cgroup mode: v2 when /sys/fs/cgroup itself is cgroup2.
pub fn detect() -> Mode {
    match nix::sys::statfs::statfs(CGROUP_ROOT) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Mode::V2,
        _ => Mode::V1,
    }
}

/// The controllers stasis can use on this host ("unified" for cgroup v2).
pub fn available() -> Vec<String> {
    match detect() {
        Mode::V2 => vec!["unified".into()],
        Mode::V1 => V1_CONTROLLERS
            .iter()
            .filter(|c| Path::new(CGROUP_ROOT).join(c).is_dir())
            .map(|c| c.to_string())
            .collect(),
    }
}

/// Limits applied to a workload's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

/// A workload's cgroup (one directory per controller on v1, one directory on v2).
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub mode: Mode,
    /// Path relative to each hierarchy's root, e.g. `stasis/1a2b3c4d/job`.
    pub rel: String,
}

impl Cgroup {
    /// The cgroup of workload `name` under the state root keyed `key`.
    pub fn for_workload(key: &str, name: &str) -> Cgroup {
        Cgroup {
            mode: detect(),
            rel: format!("stasis/{key}/{name}"),
        }
    }

    /// Every directory this cgroup could occupy, with its controller (v1) or "" (v2).
    fn all_dirs(&self) -> Vec<(&'static str, PathBuf)> {
        match self.mode {
            Mode::V2 => vec![("", Path::new(CGROUP_ROOT).join(&self.rel))],
            Mode::V1 => V1_CONTROLLERS
                .iter()
                .filter(|c| Path::new(CGROUP_ROOT).join(c).is_dir())
                .map(|c| (*c, Path::new(CGROUP_ROOT).join(c).join(&self.rel)))
                .collect(),
        }
    }

    /// The directories this cgroup occupies now.
    pub fn dirs(&self) -> Vec<(&'static str, PathBuf)> {
        self.all_dirs()
            .into_iter()
            .filter(|(_, d)| d.is_dir())
            .collect()
    }

    /// The v1 controllers a workload with `limits` joins.
    fn wanted(limits: &Limits) -> Vec<&'static str> {
        let mut v = vec![];
        if limits.pids.is_some() {
            v.push("pids");
        }
        if limits.memory.is_some() {
            v.push("memory");
        }
        if limits.cpus.is_some() {
            v.push("cpu");
        }
        v
    }

    fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.dirs()
            .into_iter()
            .find(|(c, _)| *c == controller || self.mode == Mode::V2)
            .map(|(_, p)| p)
    }

    /// Creates the cgroup and applies the limits.
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        let wanted = Self::wanted(limits);
        if wanted.is_empty() {
            return Ok(());
        }
        if self.mode == Mode::V2 {
            self.enable_v2_controllers()?;
        }
        for (c, d) in self.all_dirs() {
            if self.mode == Mode::V2 || wanted.contains(&c) {
                fs::create_dir_all(&d).map_err(|e| err("mkdir", &d, e))?;
            }
        }
        self.apply(limits)
    }

    fn enable_v2_controllers(&self) -> Result<(), CgroupError> {
        // Each ancestor must delegate memory, pids and cpu to its children.
        let mut p = PathBuf::from(CGROUP_ROOT);
        let avail = fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<&str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| avail.split_whitespace().any(|a| a == *c))
            .collect();
        let parts: Vec<&str> = self.rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            let ctl = p.join("cgroup.subtree_control");
            for c in &want {
                let _ = fs::write(&ctl, format!("+{c}"));
            }
            p = p.join(part);
            fs::create_dir_all(&p).map_err(|e| err("mkdir", &p, e))?;
        }
        let ctl = p.join("cgroup.subtree_control");
        for c in &want {
            let _ = fs::write(&ctl, format!("+{c}"));
        }
        Ok(())
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        let Some(d) = self.dir(controller) else {
            return Err(err(
                "write",
                Path::new(controller),
                io::Error::new(io::ErrorKind::NotFound, "controller not mounted"),
            ));
        };
        let p = d.join(file);
        fs::write(&p, value).map_err(|e| err("write", &p, e))
    }

    /// Applies limits to an existing cgroup.
    pub fn apply(&self, l: &Limits) -> Result<(), CgroupError> {
        match self.mode {
            Mode::V1 => {
                if let Some(m) = l.memory {
                    self.write("memory", "memory.limit_in_bytes", &m.to_string())?;
                    // Without this the limit only binds RAM and a swapping host lets it run over.
                    if self
                        .dir("memory")
                        .map(|d| d.join("memory.memsw.limit_in_bytes").exists())
                        .unwrap_or(false)
                    {
                        self.write("memory", "memory.memsw.limit_in_bytes", &m.to_string())?;
                    }
                }
                if let Some(p) = l.pids {
                    self.write("pids", "pids.max", &p.to_string())?;
                }
                if let Some(c) = l.cpus {
                    self.write("cpu", "cpu.cfs_period_us", "100000")?;
                    self.write(
                        "cpu",
                        "cpu.cfs_quota_us",
                        &((c * 100_000.0).round() as u64).max(1000).to_string(),
                    )?;
                }
            }
            Mode::V2 => {
                if let Some(m) = l.memory {
                    self.write("", "memory.max", &m.to_string())?;
                    let _ = self.write("", "memory.swap.max", "0");
                }
                if let Some(p) = l.pids {
                    self.write("", "pids.max", &p.to_string())?;
                }
                if let Some(c) = l.cpus {
                    self.write(
                        "",
                        "cpu.max",
                        &format!("{} 100000", ((c * 100_000.0).round() as u64).max(1000)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes "0" into to join (v1: one per controller).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Moves the calling process into the cgroup.
    pub fn join_self(files: &[PathBuf]) -> io::Result<()> {
        for f in files {
            fs::write(f, "0")
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
        }
        Ok(())
    }

    /// How many times the OOM killer has killed a task in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let (d, file) = match self.mode {
            Mode::V1 => (self.dir("memory")?, "memory.oom_control"),
            Mode::V2 => (self.dir("")?, "memory.events"),
        };
        let text = fs::read_to_string(d.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut v = Vec::new();
        let d = match self.mode {
            Mode::V1 => self.dir("pids"),
            Mode::V2 => self.dir(""),
        };
        if let Some(d) = d {
            if let Ok(t) = fs::read_to_string(d.join("cgroup.procs")) {
                v.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        v
    }

    /// Arguments that place restored tasks in this cgroup (CRIU's `--cgroup-root`), so a job
    /// restored under another name or root lands in its own cgroup, not the dumped path.
    pub fn criu_restore_args(&self) -> Vec<String> {
        let mut a = vec!["--manage-cgroups=soft".to_string()];
        match self.mode {
            Mode::V2 => {
                a.push("--cgroup-root".into());
                a.push(format!("/{}", self.rel));
            }
            Mode::V1 => {
                for (c, _) in self.dirs() {
                    a.push("--cgroup-root".into());
                    a.push(format!("{c}:/{}", self.rel));
                }
            }
        }
        a
    }

    /// One attempt at removing the cgroup and its empty parents: `Ok(true)` when it is gone,
    /// `Ok(false)` while its last tasks are still exiting (EBUSY).
    pub fn try_remove(&self) -> Result<bool, CgroupError> {
        for (_, d) in self.dirs() {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                Err(e) => return Err(err("rmdir", &d, e)),
            }
            // stasis/KEY and stasis: removed when empty, kept when another workload uses them
            let mut p = d.parent().map(Path::to_path_buf);
            for _ in 0..2 {
                match p {
                    Some(ref q) if fs::remove_dir(q).is_ok() => {
                        p = q.parent().map(Path::to_path_buf)
                    }
                    _ => break,
                }
            }
        }
        Ok(true)
    }

    /// Removes the cgroup, retrying for up to a second while its last tasks finish exiting.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for _ in 0..100 {
            if self.try_remove()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.still_busy()
    }

    /// As [`Cgroup::remove`], without blocking the caller's event loop.
    pub async fn remove_async(&self) -> Result<(), CgroupError> {
        for _ in 0..100 {
            if self.try_remove()? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.still_busy()
    }

    fn still_busy(&self) -> Result<(), CgroupError> {
        match self.dirs().into_iter().next() {
            Some((_, d)) => Err(err("rmdir", &d, io::Error::from_raw_os_error(libc::EBUSY))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_is_one_directory() {
        let cg = Cgroup {
            mode: Mode::V2,
            rel: "stasis/k/job".into(),
        };
        assert_eq!(
            cg.all_dirs(),
            vec![("", PathBuf::from("/sys/fs/cgroup/stasis/k/job"))]
        );
    }

    #[test]
    fn v1_joins_only_what_is_limited() {
        assert!(Cgroup::wanted(&Limits::default()).is_empty());
        let l = Limits {
            memory: Some(1 << 20),
            pids: None,
            cpus: Some(1.0),
        };
        assert_eq!(Cgroup::wanted(&l), vec!["memory", "cpu"]);
        let l = Limits {
            pids: Some(10),
            ..Default::default()
        };
        assert_eq!(Cgroup::wanted(&l), vec!["pids"]);
    }

    #[test]
    fn restore_args_name_each_joined_controller() {
        let cg = Cgroup {
            mode: Mode::V1,
            rel: "stasis/k/job".into(),
        };
        // nothing exists for this made-up cgroup: only the mode flag
        assert_eq!(cg.criu_restore_args(), vec!["--manage-cgroups=soft"]);
    }
}
