//! A two-host test bed on one machine: two network namespaces joined by a veth pair, an sshd
//! (Debian's openssh-server) in each with keys made for the bed, and a state root each. The
//! hosts share the filesystem (as a host-filesystem job needs: the same files at the same
//! paths), so the stasis under test runs on both sides.
//!
//! `bed.a.cmd(&["run", …])` runs stasis "on host A": inside A's network namespace, with A's
//! state root, and with `STASIS_SSH_COMMAND` naming the bed's ssh client configuration, in
//! which `bed.a.alias` and `bed.b.alias` are the two hosts (`root@` with the bed's key). Over
//! ssh, each sshd gives its sessions that host's `STASIS_ROOT` and a PATH that finds the
//! stasis under test first, so `ssh HOST stasis …` is stasis on that host. A client may send
//! `STASIS_CRIU` (`ssh -o SetEnv=STASIS_CRIU=…`), to give that host another CRIU or none. A
//! target holds a restored job 3 s (not 20) for a late commit (`STASIS_MIGRATE_GRACE`), so
//! fault trials settle quickly.
//!
//! Everything is torn down on drop, also after a failed assertion: the workloads of both
//! roots (`rm -f --all`, bounded), then, by pid, whatever process of the bed is still alive
//! (see [`Bed::processes`]: stasis should leave none, and a test can assert that), the sshds
//! and their sessions, the namespaces (and with them the veth pair).
#![allow(dead_code)]

use super::{bin, cgroup_dirs_of, require_root, wait_output};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Address of host A and host B inside the bed (each bed's namespaces see only each other,
/// so every bed can use the same pair).
pub const ADDR_A: &str = "10.231.0.1";
pub const ADDR_B: &str = "10.231.0.2";

static BEDS: AtomicU32 = AtomicU32::new(0);

/// One host of the bed.
pub struct Host {
    /// The ssh alias the bed's ssh configuration knows this host by.
    pub alias: String,
    /// Its network namespace (under /run/netns).
    pub ns: String,
    pub addr: &'static str,
    /// Its state root.
    pub root: PathBuf,
    /// The bed's ssh client command (`ssh -F CONFIG`).
    ssh: String,
    sshd: Option<Child>,
}

/// Two hosts joined by a veth pair, each with an sshd and a state root.
pub struct Bed {
    pub a: Host,
    pub b: Host,
    /// The ssh client configuration (`ssh -F` it to reach either host).
    pub ssh_config: PathBuf,
    /// Keys, configurations, logs and both state roots; removed last (fields drop in order).
    pub dir: tempfile::TempDir,
    /// One bed at a time in a test binary: each holds two sshds, two roots and CRIU runs on
    /// both sides, and several at once on two cores starve each other. (Under that load a
    /// post-copy move was once seen to fail cleanly with "the page channel closed before the
    /// target was ready"; the job stayed on the source. That is the source's view of a
    /// target that failed first; the message now names the target's reason too.)
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static BED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sh(cmd: &mut Command, what: &str) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ip(args: &[&str]) {
    sh(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    );
}

/// openssh-server must be installed (scripts/install-deps.sh does it).
pub fn require_sshd() {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "the two-host tests need Debian's openssh-server (/usr/sbin/sshd): run scripts/install-deps.sh"
    );
}

impl Bed {
    /// Makes the namespaces, the veth pair, the keys, both sshds and both state roots.
    pub fn new() -> Bed {
        // A test that panicked with its bed still tore it down: the lock is free to take.
        let one_at_a_time = BED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        require_root();
        require_sshd();
        let n = BEDS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let dir = tempfile::Builder::new()
            .prefix("stbed")
            .tempdir_in("/tmp")
            .expect("bed dir");
        let d = dir.path().to_path_buf();
        let (ns_a, ns_b) = (format!("stbed{tag}a"), format!("stbed{tag}b"));
        let (if_a, if_b) = (format!("sv{tag}a"), format!("sv{tag}b"));
        // The bed is registered for teardown before anything that could fail is made.
        let mut bed = Bed {
            a: Host::new(&format!("hosta-{tag}"), &ns_a, ADDR_A, d.join("root-a")),
            b: Host::new(&format!("hostb-{tag}"), &ns_b, ADDR_B, d.join("root-b")),
            ssh_config: d.join("ssh_config"),
            dir,
            _one_at_a_time: one_at_a_time,
        };
        for ns in [&ns_a, &ns_b] {
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link", "add", &if_a, "netns", &ns_a, "type", "veth", "peer", "name", &if_b, "netns",
            &ns_b,
        ]);
        for (ns, ifc, addr) in [(&ns_a, &if_a, ADDR_A), (&ns_b, &if_b, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifc]);
            ip(&["-n", ns, "link", "set", ifc, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let keygen = |path: &Path| {
            sh(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(path),
                "ssh-keygen",
            )
        };
        keygen(&d.join("user_key"));
        keygen(&d.join("host_key"));
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let host_pub: String = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            d.join("known_hosts"),
            format!("{ADDR_A} {host_pub}\n{ADDR_B} {host_pub}\n"),
        )
        .expect("known_hosts");
        let mut cfg = String::new();
        for h in [&bed.a, &bed.b] {
            cfg.push_str(&format!(
                "Host {}\n  HostName {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n",
                h.alias,
                h.addr,
                d.join("user_key").display(),
                d.join("known_hosts").display()
            ));
        }
        std::fs::write(&bed.ssh_config, cfg).expect("ssh_config");
        let ssh = format!("ssh -F {}", bed.ssh_config.display());
        bed.a.ssh = ssh.clone();
        bed.b.ssh = ssh;
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        raise_pipe_max_size();
        let bin_dir = bin().parent().expect("bin dir").to_path_buf();
        for h in [&mut bed.a, &mut bed.b] {
            std::fs::create_dir_all(&h.root).expect("state root");
            h.start_sshd(&d, &bin_dir);
        }
        bed
    }

    /// Both hosts.
    pub fn hosts(&self) -> [&Host; 2] {
        [&self.a, &self.b]
    }

    /// The live processes of this bed, the sshd listeners and this test process left out:
    /// every process whose command line, environment (`STASIS_ROOT`, which the sshds give
    /// their sessions), open files or working directory name the bed's directory, or whose
    /// cgroup is one stasis made for either root. Workloads, monitors, CRIU runs (and what
    /// they fork), migration processes and ssh clients all show up here; once every workload
    /// is removed, nothing should.
    pub fn processes(&self) -> Vec<Proc> {
        let dir = self.dir.path().display().to_string();
        let env = format!("STASIS_ROOT={dir}");
        let keys: Vec<String> = [&self.a, &self.b]
            .iter()
            .map(|h| {
                format!(
                    "/stasis/{}/",
                    stasis::store::state::StateRoot::from_flag(Some(h.root.clone())).key()
                )
            })
            .collect();
        let skip: Vec<i32> = [&self.a, &self.b]
            .iter()
            .filter_map(|h| h.sshd_pid())
            .chain([std::process::id() as i32])
            .collect();
        procs()
            .into_iter()
            .filter(|p| p.state != 'Z' && !skip.contains(&p.pid))
            .filter(|p| {
                let has = |t: &str| t.contains(&dir);
                if has(&p.cmd) {
                    return true;
                }
                let environ = std::fs::read(format!("/proc/{}/environ", p.pid))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if environ.split('\0').any(|v| v.starts_with(&env)) {
                    return true;
                }
                let cg =
                    std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
                if keys.iter().any(|k| cg.contains(k.as_str())) {
                    return true;
                }
                let link = |l: std::path::PathBuf| has(&l.display().to_string());
                if std::fs::read_link(format!("/proc/{}/cwd", p.pid)).is_ok_and(link) {
                    return true;
                }
                std::fs::read_dir(format!("/proc/{}/fd", p.pid)).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| std::fs::read_link(e.path()).is_ok_and(link))
                })
            })
            .collect()
    }

    /// Waits (up to `t`) until `f` holds for the bed's live processes; returns them.
    pub fn wait_processes(&self, t: Duration, f: impl Fn(&[Proc]) -> bool) -> (bool, Vec<Proc>) {
        let t0 = std::time::Instant::now();
        loop {
            let ps = self.processes();
            if f(&ps) {
                return (true, ps);
            }
            if t0.elapsed() > t {
                return (false, ps);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for h in [&self.a, &self.b] {
            h.remove_all();
        }
        // What stasis left behind (it should leave nothing: tests that care assert it while
        // the bed is up); ended here by pid so that one failure does not leak into the next
        // test, and said on stderr.
        let left = self.processes();
        if !left.is_empty() {
            eprintln!("bed teardown: ending what is left of the bed: {left:#?}");
            for p in &left {
                kill9(p.pid);
            }
        }
    }
}

/// CRIU's lazy page server (post-copy's source) needs pipes of 3.2 MiB, above the default
/// `fs.pipe-max-size` of 1 MiB for a root without CAP_SYS_RESOURCE (as here): the bed raises
/// the limit, as the README tells users to. Raising it is harmless to everything else.
pub fn raise_pipe_max_size() {
    let p = "/proc/sys/fs/pipe-max-size";
    let cur: u64 = std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if cur < 4 << 20 {
        std::fs::write(p, "4194304").expect("raise fs.pipe-max-size");
    }
}

impl Host {
    fn new(alias: &str, ns: &str, addr: &'static str, root: PathBuf) -> Host {
        Host {
            alias: alias.into(),
            ns: ns.into(),
            addr,
            root,
            ssh: String::new(),
            sshd: None,
        }
    }

    /// Starts this host's sshd inside its namespace and waits until it listens.
    fn start_sshd(&mut self, d: &Path, bin_dir: &Path) {
        let cfg = d.join(format!("sshd_config-{}", self.alias));
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress {addr}:22\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\nMaxStartups 100\nMaxSessions 100\nAcceptEnv STASIS_CRIU\nSetEnv STASIS_MIGRATE_GRACE=3 STASIS_ROOT={root} PATH={bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
                addr = self.addr,
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
                root = self.root.display(),
                bin = bin_dir.display(),
            ),
        )
        .expect("sshd_config");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["--", "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sshd");
        let err = child.stderr.take().expect("sshd stderr");
        let log = d.join(format!("sshd-{}.log", self.alias));
        self.sshd = Some(child);
        // sshd says when it listens; the rest of its log goes to a file (the pipe must never
        // fill, or sshd would block).
        let mut lines = BufReader::new(err).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(l)) => {
                    let ready = l.contains("Server listening");
                    seen.push(l);
                    if ready {
                        break;
                    }
                }
                _ => panic!("sshd on {} did not start: {seen:?}", self.alias),
            }
        }
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log).ok();
            for l in lines.map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
            }
        });
    }

    /// The pid of this host's sshd (its listener).
    pub fn sshd_pid(&self) -> Option<i32> {
        self.sshd.as_ref().map(|c| c.id() as i32)
    }

    /// The bed's ssh client command line (`ssh -F CONFIG`).
    pub fn ssh_command(&self) -> &str {
        &self.ssh
    }

    /// `stasis --root ROOT ARGS…` on this host: inside its network namespace, with a clean
    /// environment (PATH, and `STASIS_SSH_COMMAND` for reaching the other host).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(bin())
            .arg("--root")
            .arg(&self.root)
            .args(args);
        c.env_clear();
        c.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        );
        c.env("STASIS_SSH_COMMAND", &self.ssh);
        c.stdin(Stdio::null());
        c
    }

    /// A command run over ssh on this host, from the other side of the bed (`ssh ALIAS
    /// ARGS…`, from inside `from`'s namespace).
    pub fn ssh_from(&self, from: &Host, remote: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", from.ns)).arg("--");
        c.args(self.ssh.split_whitespace())
            .arg(&self.alias)
            .arg(remote);
        c.stdin(Stdio::null());
        c
    }

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
        wait_output(
            child,
            t,
            &format!("{}: stasis {}", self.alias, args.join(" ")),
        )
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{}: stasis {} failed ({:?}): {}{}",
            self.alias,
            args.join(" "),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `inspect --format json`, or Null when the workload does not exist here.
    pub fn inspect(&self, name: &str) -> Value {
        let o = self.run(&["inspect", "--format", "json", name]);
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// The workload's status here ("" when it does not exist).
    pub fn status(&self, name: &str) -> String {
        self.inspect(name)["state"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The workload's stdout from its log here.
    pub fn logs(&self, name: &str) -> Vec<u8> {
        self.cmd(&["logs", name]).output().expect("logs").stdout
    }

    /// The host pid of the workload's init here.
    pub fn init_pid(&self, name: &str) -> Option<i32> {
        self.inspect(name)["state"]["init"]["pid"]
            .as_i64()
            .map(|p| p as i32)
    }
}

/// A process, as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// Its state letter (`Z` for a zombie).
    pub state: char,
    pub comm: String,
    /// Its command line, words joined by spaces.
    pub cmd: String,
}

/// Every process on this machine.
pub fn procs() -> Vec<Proc> {
    let mut v = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 2..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        v.push(Proc {
            pid,
            ppid,
            state,
            comm: stat[open + 1..close].to_string(),
            cmd: cmd.trim_end().to_string(),
        });
    }
    v
}

/// Pids of the children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    procs()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

impl Host {
    /// `rm -f --all` on this host, bounded: a teardown must never hang on a stuck
    /// workload (what it leaves is ended by pid afterwards).
    fn remove_all(&self) {
        if !self.root.is_dir() {
            return;
        }
        let child = Command::new(bin())
            .arg("--root")
            .arg(&self.root)
            .args(["rm", "-f", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return };
        let t0 = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t0.elapsed() > Duration::from_secs(60) => {
                    eprintln!("bed teardown: `rm -f --all` on {} hangs: ended", self.alias);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.root.is_dir() {
            self.remove_all();
            for d in cgroup_dirs_of(&self.root) {
                let _ = std::fs::remove_dir(&d);
            }
        }
        if let Some(mut sshd) = self.sshd.take() {
            // The listener's children serve connections (and theirs run the sessions): end
            // them, deepest first, then the listener. All of them are the bed's own.
            let listener = sshd.id() as i32;
            let mut stack = vec![listener];
            let mut all = Vec::new();
            while let Some(p) = stack.pop() {
                for c in children(p) {
                    all.push(c);
                    stack.push(c);
                }
            }
            for p in all.iter().rev() {
                kill9(*p);
            }
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        if !self.ns.is_empty() {
            // Deleting the namespace takes the veth end in it (and so the pair) along.
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
