//! Shared fixtures for the end-to-end tests: each test gets its own state root, drives the
//! real `stasis` binary as root, and cleans up its workloads (processes, cgroups, files) when
//! it ends, even if it failed.
#![allow(dead_code)]

pub mod hosts;
pub mod shape;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stasis"))
}

/// These tests need root (namespaces, cgroups, CRIU). Say so and fail; never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (namespaces, cgroups, CRIU); run them as root"
    );
}

/// A CRIU >= 4 must be on PATH for checkpoint tests (scripts/install-criu.sh installs it).
pub fn require_criu() {
    let out = Command::new("criu").arg("--version").output();
    let ok = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("Version: 4"))
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need CRIU >= 4.0 as `criu` on PATH: run scripts/install-criu.sh ({out:?})"
    );
}

/// One isolated state root.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        require_root();
        // Short paths under /tmp keep socket paths well inside sun_path.
        let dir = tempfile::Builder::new()
            .prefix("st")
            .tempdir_in("/tmp")
            .expect("temp root");
        Env { dir }
    }

    /// A state root whose path starts with `prefix` (under /tmp).
    pub fn with_prefix(prefix: &str) -> Env {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("temp root");
        Env { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `stasis --root ROOT ARGS…`, with a clean environment apart from PATH.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--root").arg(self.root()).args(args);
        c.env_clear();
        c.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        );
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion, with a timeout.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_timeout(args, Duration::from_secs(60))
    }

    pub fn run_timeout(&self, args: &[&str], t: Duration) -> Output {
        let child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stasis");
        wait_output(child, t, &format!("stasis {}", args.join(" ")))
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "stasis {} failed ({:?}): {}{}",
            args.join(" "),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `inspect --format json`.
    pub fn inspect(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["inspect", "--format", "json", name]))
            .expect("inspect json")
    }

    /// The workload's status ("" while it does not exist yet).
    pub fn status(&self, name: &str) -> String {
        let o = self.run(&["inspect", "--format", "json", name]);
        serde_json::from_slice::<Value>(&o.stdout)
            .ok()
            .and_then(|v| v["state"]["status"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The workload's stdout from its log.
    pub fn logs(&self, name: &str) -> Vec<u8> {
        self.cmd(&["logs", name]).output().expect("logs").stdout
    }

    /// Waits until `f` is true.
    pub fn wait_until(&self, what: &str, t: Duration, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < t, "timed out after {t:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `f` returns `Ok`, and returns what it gave; on timeout, fails with the
    /// last `Err` (what was seen instead), so a failure says more than "timed out".
    pub fn wait_for<T>(
        &self,
        what: &str,
        t: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let t0 = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(seen) => assert!(
                    t0.elapsed() < t,
                    "timed out after {t:?} waiting for {what}: {seen}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The workload's monitor process (pid and start time, so a reused pid is not it).
    pub fn monitor(&self, name: &str) -> stasis::store::state::ProcRef {
        let m = self.inspect(name)["state"]["monitor"].clone();
        serde_json::from_value(m.clone()).unwrap_or_else(|e| panic!("monitor of {name}: {e}: {m}"))
    }

    /// Waits until the monitor `m` has exited (gone or a zombie). A monitor leaves only once its
    /// job is final (ended, failed, or handed over) and everyone is told: after this, nothing
    /// can bring the job back by itself.
    pub fn wait_monitor_gone(&self, m: &stasis::store::state::ProcRef) {
        self.wait_until(
            &format!("monitor {} to exit", m.pid),
            Duration::from_secs(30),
            || !m.alive(),
        );
    }

    /// Waits until the workload's status is `want`.
    pub fn wait_status(&self, name: &str, want: &str) {
        self.wait_until(
            &format!("{name} to be {want}"),
            Duration::from_secs(30),
            || self.status(name) == want,
        );
    }

    /// The host pid of the workload's init.
    pub fn init_pid(&self, name: &str) -> i32 {
        self.inspect(name)["state"]["init"]["pid"]
            .as_i64()
            .expect("init pid") as i32
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Ends only what this test started: the workloads under its own root.
        let _ = self
            .cmd(&["rm", "-f", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let key_dirs = cgroup_dirs_of(self.root());
        for d in key_dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// cgroup directories stasis made for a root (to check cleanup and to tidy after failures).
pub fn cgroup_dirs_of(root: &Path) -> Vec<PathBuf> {
    let key = stasis::store::state::StateRoot::from_flag(Some(root.to_path_buf())).key();
    let mut v = Vec::new();
    for base in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/freezer",
        "/sys/fs/cgroup",
    ] {
        let d = Path::new(base).join("stasis").join(&key);
        if d.is_dir() {
            v.push(d);
        }
    }
    v
}

/// Waits for a child with a timeout; kills it (by pid, it is ours) on timeout and panics.
pub fn wait_output(mut child: Child, t: Duration, what: &str) -> Output {
    use std::io::Read;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > t {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: ro.join().unwrap_or_default(),
        stderr: re.join().unwrap_or_default(),
    }
}

/// A client whose stdout is collected as it arrives, so a test can wait on what it has
/// printed so far and still get the whole of it at the end.
pub struct Streaming {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Streaming {
    /// Spawns `cmd` with its stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Streaming {
        use std::io::Read;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stasis");
        let mut pipe = child.stdout.take().expect("stdout");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("stdout").extend_from_slice(&buf[..n]);
            }
        });
        Streaming { child, out, reader }
    }

    /// Its stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("stdout")).into_owned()
    }

    /// Waits for it to end (see `wait_output`); the Output holds all of its stdout.
    pub fn wait(self, t: Duration, what: &str) -> Output {
        let mut o = wait_output(self.child, t, what);
        let _ = self.reader.join();
        o.stdout = std::mem::take(&mut *self.out.lock().expect("stdout"));
        o
    }
}

/// Exit code of an Output (panics on a signal).
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}", o.status))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// sha256 hex of bytes.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Numbers (one per line) in a counter job's output.
pub fn counter_values(out: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Asserts a counter's output runs 0,1,2,… without gaps or repeats.
pub fn assert_counter_continuous(vals: &[u64]) {
    assert!(!vals.is_empty(), "no counter output");
    for w in vals.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "counter jumped from {} to {} (gap or repeat)",
            w[0],
            w[1]
        );
    }
    assert_eq!(vals[0], 0, "counter did not start at 0");
}

/// A shell counter printing an increasing number every 50 ms.
pub const COUNTER: &str = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done";

/// A minimal busybox rootfs under `dir` (needs busybox-static, which install-deps.sh installs).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "data", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is needed (apt-get install busybox-static)");
    std::fs::copy(bb, rootfs.join("bin/busybox")).expect("copy busybox");
    for app in [
        "sh", "ls", "cat", "echo", "hostname", "ps", "touch", "sleep", "wc",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app));
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    rootfs
}

/// A tmpfs a test mounts (made if missing), unmounted (detached) when dropped, failure or not.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` (as mount's `size=`) on `at`.
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_as(at, "tmpfs", Some(&format!("size={size}")))
    }

    /// A tmpfs whose source (as mountinfo shows it) is `source`, with mount data `data`.
    pub fn mount_as(at: &Path, source: &str, data: Option<&str>) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir for a tmpfs");
        nix::mount::mount(
            Some(source),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            data,
        )
        .expect("mount a tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
