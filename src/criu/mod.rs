//! The CRIU driver: finds the `criu` binary, checks it once per boot, builds dump and restore
//! argv from typed options (never a shell string), and turns a failed run into the lines of
//! its log that say why.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest CRIU stasis works with: 3.x does not know the `[vvar_vclock]` mapping of
/// kernels since 6.13 and fails every dump on them.
pub const MIN_MAJOR: u32 = 4;

/// How to get a working CRIU, for error messages.
pub const INSTALL_HINT: &str = "install CRIU 4.x: run scripts/install-criu.sh (builds it from Debian's trixie source package), or set STASIS_CRIU to a criu >= 4.0";

/// Errors finding or running CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu not found on PATH (or STASIS_CRIU): {INSTALL_HINT}")]
    NotFound,
    #[error("{path} is CRIU {version}, stasis needs >= {MIN_MAJOR}.0: {INSTALL_HINT}")]
    TooOld { path: PathBuf, version: String },
    #[error("cannot run {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error("`criu check` fails on this host: {0}")]
    Check(String),
    #[error("criu {op} failed: {reasons} (log: {log})")]
    Failed {
        op: &'static str,
        reasons: String,
        log: PathBuf,
        no_space: bool,
    },
}

impl CriuError {
    /// True when the failure was a full disk (a "nothing lost" failure of its own kind).
    pub fn is_no_space(&self) -> bool {
        matches!(self, CriuError::Failed { no_space: true, .. })
    }
}

/// A located, version-checked CRIU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criu {
    pub path: PathBuf,
    pub version: String,
}

/// Parses `criu --version` output ("Version: 4.1.1").
pub fn parse_version(out: &str) -> Option<(String, u32)> {
    let v = out
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))?
        .trim()
        .to_string();
    let major = v.split('.').next()?.parse().ok()?;
    Some((v, major))
}

/// Finds CRIU: `STASIS_CRIU`, else `criu` on PATH (plus the sbin directories, which a
/// non-login root shell may lack), and checks its version.
pub fn locate() -> Result<Criu, CriuError> {
    let path = find_binary()?;
    version_of(path)
}

/// NotFound for a missing binary, else the error running it.
fn missing_or(path: &Path, source: io::Error) -> CriuError {
    if source.kind() == io::ErrorKind::NotFound {
        CriuError::NotFound
    } else {
        CriuError::Exec {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The path `locate` would check.
fn find_binary() -> Result<PathBuf, CriuError> {
    match std::env::var_os("STASIS_CRIU").filter(|v| !v.is_empty()) {
        Some(p) => Ok(PathBuf::from(p)),
        None => {
            let path_var = std::env::var_os("PATH").unwrap_or_default();
            let mut search = std::env::split_paths(&path_var).collect::<Vec<_>>();
            for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
                if !search.iter().any(|p| p == Path::new(extra)) {
                    search.push(extra.into());
                }
            }
            let joined = std::env::join_paths(search).unwrap_or_default();
            which::which_in("criu", Some(joined), "/").map_err(|_| CriuError::NotFound)
        }
    }
}

/// Asks `path --version` and checks it.
fn version_of(path: PathBuf) -> Result<Criu, CriuError> {
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| missing_or(&path, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (version, major) = parse_version(&text).ok_or_else(|| CriuError::TooOld {
        path: path.clone(),
        version: "unknown".into(),
    })?;
    if major < MIN_MAJOR {
        return Err(CriuError::TooOld { path, version });
    }
    Ok(Criu { path, version })
}

/// Where the result of `criu check` is cached: the default runtime directory, shared by every
/// state root (the answer depends only on the binary and the boot), or the root's own runtime
/// directory when that cannot be made.
pub fn cache_dir(root: &crate::store::state::StateRoot) -> PathBuf {
    let shared = Path::new(crate::store::state::DEFAULT_RUNTIME);
    if crate::store::atomic::mkdir_p(shared, 0o700).is_ok() {
        shared.to_path_buf()
    } else {
        root.runtime.clone()
    }
}

/// Finds CRIU and checks it, running `criu --version` and `criu check` only when this binary
/// (path, size, mtime) has not passed them since boot: the answer is cached in `cache_dir`.
pub fn locate_checked(cache_dir: &Path) -> Result<Criu, CriuError> {
    use std::os::unix::fs::MetadataExt;
    let path = find_binary()?;
    let meta = fs::metadata(&path).map_err(|e| missing_or(&path, e))?;
    let mut key = CheckCache {
        boot_id: boot_id(),
        path: path.clone(),
        size: meta.size(),
        mtime: meta.mtime(),
        version: String::new(),
    };
    let cache = cache_dir.join("criu-check.json");
    if let Some(hit) = fs::read(&cache)
        .ok()
        .and_then(|d| serde_json::from_slice::<CheckCache>(&d).ok())
    {
        if (CheckCache {
            version: String::new(),
            ..hit.clone()
        }) == key
        {
            return Ok(Criu {
                path,
                version: hit.version,
            });
        }
    }
    let c = version_of(path)?;
    c.check()?;
    key.version = c.version.clone();
    let _ = crate::store::atomic::write_json_atomic(&cache, &key);
    Ok(c)
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
struct CheckCache {
    boot_id: String,
    path: PathBuf,
    size: u64,
    mtime: i64,
    #[serde(default)]
    version: String,
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Criu {
    /// Runs `criu check` unless it already passed for this binary since boot (the result is
    /// cached in `cache_dir`).
    pub fn check_cached(&self, cache_dir: &Path) -> Result<(), CriuError> {
        // Same cache as locate_checked, for a CRIU located some other way.
        let c = locate_checked(cache_dir)?;
        if c.path == self.path {
            Ok(())
        } else {
            self.check()
        }
    }

    /// Runs `criu check`.
    pub fn check(&self) -> Result<(), CriuError> {
        let out = Command::new(&self.path)
            .arg("check")
            .output()
            .map_err(|source| CriuError::Exec {
                path: self.path.clone(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("Looks good") {
            Ok(())
        } else {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !is_noise(l))
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            Err(CriuError::Check(lines.join("; ")))
        }
    }

    /// Features `criu check --feature` reports for the names given: (name, supported).
    pub fn features(&self, names: &[&str]) -> Vec<(String, bool)> {
        names
            .iter()
            .map(|n| {
                let ok = Command::new(&self.path)
                    .args(["check", "--feature", n])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                (n.to_string(), ok)
            })
            .collect()
    }
}

/// A fd that crosses the container's edge, as CRIU names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExtId {
    Pipe {
        ino: u64,
    },
    /// A unix socket: the inode of the end inside the container.
    Unix {
        ino: u64,
    },
    /// A pty slave whose master the monitor holds.
    Tty {
        rdev: u64,
        dev: u64,
    },
}

impl ExtId {
    /// Argument of `--external` at dump.
    pub fn dump_arg(&self) -> String {
        match self {
            ExtId::Pipe { ino } => format!("pipe:[{ino}]"),
            ExtId::Unix { ino } => format!("unix[{ino}]"),
            ExtId::Tty { rdev, dev } => format!("tty[{rdev:x}:{dev:x}]"),
        }
    }

    /// The id part of `--inherit-fd fd[N]:ID` at restore.
    pub fn inherit_id(&self) -> String {
        match self {
            ExtId::Pipe { ino } => format!("pipe:[{ino}]"),
            ExtId::Unix { ino } => format!("socket:[{ino}]"),
            ExtId::Tty { rdev, dev } => format!("tty[{rdev:x}:{dev:x}]"),
        }
    }
}

/// Options of one `criu dump`.
#[derive(Debug, Clone, Default)]
pub struct DumpOpts {
    pub pid: i32,
    pub images: PathBuf,
    pub log: PathBuf,
    pub externals: Vec<ExtId>,
    /// `--external mnt[MOUNTPOINT]:KEY` for bind mounts from the host.
    pub ext_mounts: Vec<(String, String)>,
    pub freeze_cgroup: Option<PathBuf>,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
}

impl DumpOpts {
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "dump".into(),
            "--tree".into(),
            self.pid.to_string(),
            "--images-dir".into(),
            self.images.display().to_string(),
            "--log-file".into(),
            self.log.display().to_string(),
            "-v4".into(),
        ];
        for e in &self.externals {
            a.push("--external".into());
            a.push(e.dump_arg());
        }
        for (mnt, key) in &self.ext_mounts {
            a.push("--external".into());
            a.push(format!("mnt[{mnt}]:{key}"));
        }
        if let Some(f) = &self.freeze_cgroup {
            a.push("--freeze-cgroup".into());
            a.push(f.display().to_string());
        }
        if self.leave_running {
            a.push("--leave-running".into());
        }
        if self.tcp_established {
            a.push("--tcp-established".into());
        }
        if self.file_locks {
            a.push("--file-locks".into());
        }
        a
    }
}

/// Options of one `criu restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub images: PathBuf,
    pub log: PathBuf,
    pub pidfile: PathBuf,
    /// (fd number in criu's process, the old external it replaces).
    pub inherit: Vec<(i32, ExtId)>,
    /// `--root` for a container with its own rootfs.
    pub root: Option<PathBuf>,
    /// `--external mnt[KEY]:HOST_PATH` for bind mounts.
    pub ext_mounts: Vec<(String, PathBuf)>,
    pub cgroup_args: Vec<String>,
    pub tcp_established: bool,
    pub file_locks: bool,
}

impl RestoreOpts {
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "restore".into(),
            "--images-dir".into(),
            self.images.display().to_string(),
            "--log-file".into(),
            self.log.display().to_string(),
            "-v4".into(),
            // The restored init becomes the monitor's child again, and criu returns at once.
            "--restore-detached".into(),
            "--restore-sibling".into(),
            "--pidfile".into(),
            self.pidfile.display().to_string(),
        ];
        for (fd, id) in &self.inherit {
            a.push("--inherit-fd".into());
            a.push(format!("fd[{fd}]:{}", id.inherit_id()));
        }
        if let Some(r) = &self.root {
            a.push("--root".into());
            a.push(r.display().to_string());
        }
        for (key, path) in &self.ext_mounts {
            a.push("--external".into());
            a.push(format!("mnt[{key}]:{}", path.display()));
        }
        a.extend(self.cgroup_args.iter().cloned());
        if self.tcp_established {
            a.push("--tcp-established".into());
        }
        if self.file_locks {
            a.push("--file-locks".into());
        }
        a
    }
}

/// Lines of every CRIU run that are not problems (root without CAP_SYS_RESOURCE here).
fn is_noise(line: &str) -> bool {
    line.contains("RLIMIT_NOFILE")
}

/// The lines of a CRIU log that say why it failed, translated where we know better words:
/// at most four, most specific first, without CRIU's timestamps and source locations.
pub fn failure_reasons(log: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("Error (") && !is_noise(l))
    {
        let msg = line
            .find("): ")
            .map(|i| line[i + 3..].trim())
            .unwrap_or(line)
            .to_string();
        let msg = explain(&msg).unwrap_or(msg);
        if !out.contains(&msg) {
            out.push(msg);
        }
    }
    if out.is_empty() {
        if let Some(last) = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !is_noise(l))
        {
            out.push(last.trim().to_string());
        }
    }
    // CRIU logs the root cause first and the consequences after it.
    out.truncate(4);
    out
}

/// Plain words for the CRIU failures users meet most.
fn explain(msg: &str) -> Option<String> {
    if let Some(rest) = msg
        .strip_prefix("File ")
        .filter(|_| msg.contains("has bad size"))
    {
        let file = rest.split(" has bad size").next().unwrap_or(rest);
        return Some(format!(
            "file {file} changed size since the checkpoint (it must be the same at restore)"
        ));
    }
    if msg.contains("Can't lookup mount") {
        return Some(format!(
            "{msg} (the workload holds a file outside the container's mounts)"
        ));
    }
    if msg.contains("Can't fork for") && msg.contains("File exists") {
        return Some(format!("{msg} (a pid the workload needs is taken)"));
    }
    if msg.contains("External socket is used")
        || msg.contains("Can't dump half of stream unix connection")
    {
        return Some(format!(
            "{msg} (the workload holds a unix socket connected outside the container)"
        ));
    }
    None
}

/// True when the log says a write failed for lack of space.
pub fn log_says_no_space(log: &Path) -> bool {
    fs::read_to_string(log)
        .map(|t| t.contains("No space left on device") || t.contains("ENOSPC"))
        .unwrap_or(false)
}

/// What CRIU's stats-dump file says about a dump.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DumpTimes {
    pub freezing_us: u64,
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_written: u64,
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads `stats-dump` (service magic, stats magic, a length-prefixed `stats_entry`).
pub fn read_dump_times(path: &Path) -> Option<DumpTimes> {
    let b = fs::read(path).ok()?;
    if b.len() < 12
        || b[0..4] != 0x55105940u32.to_le_bytes()
        || b[4..8] != 0x57093306u32.to_le_bytes()
    {
        return None;
    }
    let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    let entry = b.get(12..12 + len)?;
    // stats_entry.dump (field 1, length-delimited)
    let mut i = 0;
    while i < entry.len() {
        let key = varint(entry, &mut i)?;
        if key == (1 << 3 | 2) {
            let l = varint(entry, &mut i)? as usize;
            let d = entry.get(i..i + l)?;
            let mut t = DumpTimes::default();
            let mut j = 0;
            while j < d.len() {
                let k = varint(d, &mut j)?;
                if k & 7 != 0 {
                    return None;
                }
                let v = varint(d, &mut j)?;
                match k >> 3 {
                    1 => t.freezing_us = v,
                    2 => t.frozen_us = v,
                    3 => t.memdump_us = v,
                    4 => t.memwrite_us = v,
                    7 => t.pages_written = v,
                    _ => {}
                }
            }
            return Some(t);
        }
        // skip other fields
        match key & 7 {
            0 => {
                varint(entry, &mut i)?;
            }
            2 => {
                let l = varint(entry, &mut i)? as usize;
                i += l;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("Version: 4.1.1\n"), Some(("4.1.1".into(), 4)));
        assert_eq!(
            parse_version("Version: 3.17.1\nGitID: x\n"),
            Some(("3.17.1".into(), 3))
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn dump_argv_declares_every_external() {
        let o = DumpOpts {
            pid: 42,
            images: "/g/.tmp-3".into(),
            log: "/w/criu/dump-3.log".into(),
            externals: vec![
                ExtId::Pipe { ino: 7 },
                ExtId::Unix { ino: 9 },
                ExtId::Tty {
                    rdev: 0x8800,
                    dev: 0x1a,
                },
            ],
            ext_mounts: vec![("/data".into(), "vol0".into())],
            freeze_cgroup: Some("/sys/fs/cgroup/freezer/stasis/k/j".into()),
            leave_running: true,
            tcp_established: true,
            file_locks: false,
        };
        let a = o.argv().join(" ");
        assert!(
            a.starts_with("dump --tree 42 --images-dir /g/.tmp-3 --log-file /w/criu/dump-3.log"),
            "{a}"
        );
        assert!(a.contains("--external pipe:[7]"));
        assert!(a.contains("--external unix[9]"));
        assert!(a.contains("--external tty[8800:1a]"));
        assert!(a.contains("--external mnt[/data]:vol0"));
        assert!(a.contains("--freeze-cgroup /sys/fs/cgroup/freezer/stasis/k/j"));
        assert!(
            a.contains("--leave-running")
                && a.contains("--tcp-established")
                && !a.contains("--file-locks")
        );
    }

    #[test]
    fn restore_argv_inherits_fresh_fds() {
        let o = RestoreOpts {
            images: "/g/3".into(),
            log: "/w/criu/restore.log".into(),
            pidfile: "/r/init.pid".into(),
            inherit: vec![
                (10, ExtId::Pipe { ino: 7 }),
                (11, ExtId::Unix { ino: 9 }),
                (
                    12,
                    ExtId::Tty {
                        rdev: 0x8801,
                        dev: 0x1a,
                    },
                ),
            ],
            root: Some("/rootfs".into()),
            ext_mounts: vec![("vol0".into(), "/srv/data".into())],
            cgroup_args: vec!["--manage-cgroups=soft".into()],
            ..Default::default()
        };
        let a = o.argv().join(" ");
        assert!(
            a.contains("--restore-detached --restore-sibling --pidfile /r/init.pid"),
            "{a}"
        );
        assert!(a.contains("--inherit-fd fd[10]:pipe:[7]"));
        assert!(a.contains("--inherit-fd fd[11]:socket:[9]"));
        assert!(a.contains("--inherit-fd fd[12]:tty[8801:1a]"));
        assert!(a.contains("--root /rootfs"));
        assert!(a.contains("--external mnt[vol0]:/srv/data"));
    }

    #[test]
    fn reasons_drop_noise_and_explain() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("restore.log");
        fs::write(
            &log,
            "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.02) Info  something\n\
             (00.03) Error (criu/files-reg.c:2192): File /tmp/data.bin has bad size 10 (expect 20)\n\
             (00.04) Error (criu/cr-restore.c:2320): Restoring FAILED.\n",
        )
        .unwrap();
        let r = failure_reasons(&log);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[0].contains("/tmp/data.bin changed size since the checkpoint"),
            "{r:?}"
        );
        assert_eq!(r[1], "Restoring FAILED.");
    }

    #[test]
    fn stats_dump_decodes() {
        // stats_entry { dump { freezing 5, frozen 1234, memdump 10, memwrite 20, scanned 1, skipped 0, written 300, lazy 0 } }
        let mut dump = vec![];
        for (f, v) in [
            (1u64, 5u64),
            (2, 1234),
            (3, 10),
            (4, 20),
            (5, 1),
            (6, 0),
            (7, 300),
            (9, 0),
        ] {
            dump.push((f << 3) as u8);
            let mut v = v;
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    dump.push(b);
                    break;
                }
                dump.push(b | 0x80);
            }
        }
        let mut entry = vec![(1 << 3 | 2) as u8, dump.len() as u8];
        entry.extend(&dump);
        let mut file = vec![];
        file.extend(0x55105940u32.to_le_bytes());
        file.extend(0x57093306u32.to_le_bytes());
        file.extend((entry.len() as u32).to_le_bytes());
        file.extend(&entry);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stats-dump");
        fs::write(&p, file).unwrap();
        let t = read_dump_times(&p).unwrap();
        assert_eq!(t.frozen_us, 1234);
        assert_eq!(t.pages_written, 300);
        fs::write(&p, b"nonsense").unwrap();
        assert_eq!(read_dump_times(&p), None);
    }
}
