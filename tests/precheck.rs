//! `stasis check NAME` against real dumps: for every kind of job in the table, the pre-check's
//! verdict must be what a real `stasis checkpoint --leave-running` of the same job, with the
//! same CRIU flags, then does. No false "will checkpoint" is allowed; a false "will not"
//! would have to be listed in KNOWN_FALSE_WILL_NOT (and explained in the README). Each row
//! also names the outcome it expects, so a job that failed to set up what it claims (an
//! io_uring it could not create) fails the test instead of passing trivially.
//!
//! The table is written to `target/…/tmp/precheck-table.md` (the README's copy comes from it).

mod common;

use common::shape::check_shape;
use common::*;
use serde_json::Value;
use std::any::Any;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Rows whose pre-check says "will not" while a real dump succeeds. None today.
const KNOWN_FALSE_WILL_NOT: &[&str] = &[];

/// A python job: runs `code`, prints "ready" once set up, then sleeps.
fn py(code: &str) -> Vec<String> {
    let body = format!("{code}\nprint('ready', flush=True)\nimport time\ntime.sleep(1000)\n");
    vec!["python3".into(), "-c".into(), body]
}

fn sh(script: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("{script}; echo ready; exec sleep 1000"),
    ]
}

type Guards = Vec<Box<dyn Any>>;
/// Starts a row's job (and whatever it needs) in a directory of its own.
type Start = Box<dyn Fn(&Env, &Path, &str) -> Guards>;

/// One kind of job.
struct Row {
    name: &'static str,
    what: &'static str,
    /// CRIU flags, for both the check and the dump.
    flags: &'static [&'static str],
    /// What a real dump does.
    dumps: bool,
    /// The obstacle the check must name when it does not.
    kind: Option<&'static str>,
    /// Starts the job (and whatever it needs); returns what must live until the row ends.
    start: Start,
}

fn row(
    name: &'static str,
    what: &'static str,
    flags: &'static [&'static str],
    kind: Option<&'static str>,
    start: impl Fn(&Env, &Path, &str) -> Guards + 'static,
) -> Row {
    Row {
        name,
        what,
        flags,
        dumps: kind.is_none(),
        kind,
        start: Box::new(start),
    }
}

/// `run -d --name NAME EXTRA… -- CMD…`, then waits for "ready" in its log.
fn job(env: &Env, name: &str, extra: &[&str], cmd: Vec<String>) {
    let mut args: Vec<String> = ["run", "-d", "--name", name]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    args.push("--".into());
    args.extend(cmd);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    env.ok(&a);
    wait_ready(env, name);
}

fn wait_ready(env: &Env, name: &str) {
    let t0 = std::time::Instant::now();
    while !String::from_utf8_lossy(&env.logs(name)).contains("ready") {
        if t0.elapsed() > Duration::from_secs(20) || env.status(name) != "running" {
            let err = env.cmd(&["logs", name]).output().expect("logs");
            panic!(
                "{name} did not get ready ({}): {}{}",
                env.status(name),
                String::from_utf8_lossy(&err.stdout),
                String::from_utf8_lossy(&err.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn simple(
    extra: &'static [&'static str],
    cmd: fn(&Path) -> Vec<String>,
) -> impl Fn(&Env, &Path, &str) -> Guards {
    move |env, dir, name| {
        job(env, name, extra, cmd(dir));
        vec![]
    }
}

/// An exec session holding `fd` as its fd 50 (`--preserve-fd 50`).
fn session_with_fd(env: &Env, name: &str, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    let mut cmd = env.cmd(&[
        "exec",
        "-d",
        "--preserve-fd",
        "50",
        name,
        "--",
        "sleep",
        "1000",
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 50) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = wait_output(cmd.spawn().expect("exec"), Duration::from_secs(30), "exec");
    assert!(o.status.success(), "exec --preserve-fd: {}", stderr(&o));
}

/// Unmounts (lazily) when dropped, so a failed row leaves no mount behind.
/// A child process of the test, killed (by pid: it is ours) and reaped when dropped.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TCP_PAIR: &str = "import socket\nl=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(4)\nc=socket.create_connection(l.getsockname()); a,_=l.accept()";
const TCP_UNACCEPTED: &str = "import socket\nl=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(4)\nc=socket.create_connection(l.getsockname())";
const SYSV: &str = "import ctypes\nlibc=ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype=ctypes.c_void_p\nshm=libc.shmget(0, 1<<20, 0o1600); a=libc.shmat(shm, None, 0); ctypes.memset(a, 7, 1<<20)\nsem=libc.semget(0, 2, 0o1600); msg=libc.msgget(0, 0o1600)\nassert min(shm, sem, msg) >= 0";
const EVENTS: &str = "import os, select, signal, ctypes\nlibc=ctypes.CDLL(None, use_errno=True)\ne=os.eventfd(0); ep=select.epoll(); ep.register(e, select.EPOLLIN)\nt=libc.timerfd_create(1, 0); its=(ctypes.c_long*4)(1, 0, 1, 0); libc.timerfd_settime(t, 0, its, None)\ni=libc.inotify_init1(0); libc.inotify_add_watch(i, b'/tmp', 0x100)\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1]); m=(ctypes.c_ulong*16)(); m[0]=1<<(signal.SIGUSR1-1)\ns=libc.signalfd(-1, m, 0)\nassert min(t, i, s) >= 0";
const IO_URING: &str = "import ctypes\nlibc=ctypes.CDLL(None, use_errno=True)\np=(ctypes.c_ubyte*120)()\nassert libc.syscall(425, 8, p) >= 0, ctypes.get_errno()";
const MQUEUE: &str = "import ctypes, os\nrt=ctypes.CDLL('librt.so.1', use_errno=True)\nassert rt.mq_open(b'/stasis-precheck', os.O_CREAT|os.O_RDWR, 0o600, None) >= 0";
const NETLINK_QUEUED: &str = "import socket, struct\ns=socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE); s.bind((0, 0))\ns.send(struct.pack('=LHHLL', 32, 18, 0x301, 1, 0)+struct.pack('=BxHiII', 0, 0, 0, 0, 0))";

fn rows() -> Vec<Row> {
    vec![
        // plain jobs of each kind the other tests run
        row(
            "pipes",
            "a shell counter on pipes",
            &[],
            None,
            simple(&[], |_| {
                sh("i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done")
            }),
        ),
        row(
            "tty",
            "a job on a pty (-t)",
            &[],
            None,
            simple(&["-t"], |_| sh("true")),
        ),
        row(
            "sessions",
            "live exec sessions, one on a pty",
            &[],
            None,
            |env, dir, name| {
                job(env, name, &[], sh("true"));
                env.ok(&["exec", "-d", name, "--", "sh", "-c", "echo s; sleep 1000"]);
                env.ok(&["exec", "-d", "-t", name, "--", "sleep", "1000"]);
                let _ = dir;
                vec![]
            },
        ),
        row(
            "rootfs",
            "a busybox rootfs with a volume",
            &[],
            None,
            |env, dir, name| {
                let rootfs = busybox_rootfs(dir);
                let vol = dir.join("vol");
                std::fs::create_dir_all(&vol).expect("vol");
                let v = format!("{}:/data", vol.display());
                let r = rootfs.display().to_string();
                job(
                    env,
                    name,
                    &["--rootfs", &r, "-v", &v],
                    sh("echo x > /data/f"),
                );
                vec![]
            },
        ),
        row(
            "netns",
            "its own network namespace (--network none)",
            &[],
            None,
            simple(&["--network", "none"], |_| sh("true")),
        ),
        row(
            "mntns",
            "a process in a mount namespace of its own",
            &[],
            None,
            simple(&["--cap-add", "ALL"], |_| {
                vec![
                    "unshare".into(),
                    "-m".into(),
                    "sh".into(),
                    "-c".into(),
                    "echo ready; exec sleep 1000".into(),
                ]
            }),
        ),
        row(
            "sysv",
            "SysV shared memory, semaphores, message queue",
            &[],
            None,
            simple(&[], |_| py(SYSV)),
        ),
        row(
            "posix-shm",
            "POSIX shared memory in /dev/shm, mapped",
            &[],
            None,
            simple(&[], |_| {
                py("import mmap\nf=open('/dev/shm/st-pre', 'w+b'); f.truncate(1<<20); m=mmap.mmap(f.fileno(), 1<<20); m[0:4]=b'abcd'")
            }),
        ),
        row(
            "locks",
            "flock and POSIX locks held",
            &[],
            None,
            simple(&[], |d| {
                let mut v = py("import fcntl, sys\nf=open(sys.argv[1]+'/a', 'w'); fcntl.flock(f, fcntl.LOCK_EX)\ng=open(sys.argv[1]+'/b', 'w'); fcntl.lockf(g, fcntl.LOCK_EX)");
                v.push(d.display().to_string());
                v
            }),
        ),
        row(
            "events",
            "eventfd, epoll, timerfd, inotify, signalfd",
            &[],
            None,
            simple(&[], |_| py(EVENTS)),
        ),
        row(
            "memfd-threads",
            "a memfd, threads, a zombie child",
            &[],
            None,
            simple(&[], |_| {
                py("import os, threading, time\nm=os.memfd_create('x'); os.write(m, b'a'*4096)\nthreading.Thread(target=lambda: time.sleep(1000), daemon=True).start()\nif os.fork()==0: os._exit(0)")
            }),
        ),
        row(
            "pidfd-inside",
            "a pidfd of its own child",
            &[],
            None,
            simple(&[], |_| {
                py("import os, subprocess\np=subprocess.Popen(['sleep', '1000']); fd=os.pidfd_open(p.pid)")
            }),
        ),
        row(
            "tcp-listen",
            "a listening TCP socket (host network)",
            &[],
            None,
            simple(&[], |_| {
                py("import socket\nl=socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(4)")
            }),
        ),
        row(
            "udp",
            "a bound UDP socket and a raw socket",
            &[],
            None,
            simple(&["--network", "none"], |_| {
                py("import socket\nu=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))\nr=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)")
            }),
        ),
        row(
            "netlink",
            "a netlink socket with nothing to read",
            &[],
            None,
            simple(&[], |_| {
                py("import socket\ns=socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE); s.bind((0, 0))")
            }),
        ),
        row(
            "ghost-auto",
            "a 6 MiB deleted file held open (automatic ghost limit)",
            &[],
            None,
            simple(&[], |d| {
                let mut v = py("import os, sys\np=sys.argv[1]+'/ghost'; f=open(p, 'w+b'); f.write(os.urandom(6<<20)); f.flush(); os.unlink(p)");
                v.push(d.display().to_string());
                v
            }),
        ),
        row(
            "unlinked-linked",
            "an unlinked file whose other name remains",
            &[],
            None,
            simple(&[], |d| {
                let mut v = py("import os, sys\na=sys.argv[1]+'/a1'; f=open(a, 'w'); f.write('x'); f.flush(); os.link(a, sys.argv[1]+'/a2'); os.unlink(a)");
                v.push(d.display().to_string());
                v
            }),
        ),
        // obstacles
        row(
            "tcp-est",
            "an established TCP connection",
            &[],
            Some("tcp-established"),
            simple(&["--network", "none"], |_| py(TCP_PAIR)),
        ),
        row(
            "tcp-est-flag",
            "an established TCP connection, --tcp-established",
            &["--tcp-established"],
            None,
            simple(&["--network", "none"], |_| py(TCP_PAIR)),
        ),
        row(
            "tcp-host",
            "a TCP connection to a server outside the job, --tcp-established",
            &["--tcp-established"],
            None,
            |env, _dir, name| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
                let port = l.local_addr().expect("addr").port().to_string();
                let mut cmd = py("import socket, sys\nc=socket.create_connection(('127.0.0.1', int(sys.argv[1])))");
                cmd.push(port);
                job(env, name, &[], cmd);
                let (s, _) = l.accept().expect("accept");
                vec![Box::new(l), Box::new(s)]
            },
        ),
        row(
            "tcp-backlog",
            "a listener with a connection not yet accepted, --tcp-established",
            &["--tcp-established"],
            Some("tcp-backlog"),
            simple(&["--network", "none"], |_| py(TCP_UNACCEPTED)),
        ),
        row(
            "unix-stream-out",
            "a unix stream socket connected outside the job, --ext-unix-sk",
            &["--ext-unix-sk"],
            Some("unix-external"),
            |env, dir, name| {
                let p = dir.join("ext.sock");
                let l = std::os::unix::net::UnixListener::bind(&p).expect("bind");
                let mut cmd = py(
                    "import socket, sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                );
                cmd.push(p.display().to_string());
                job(env, name, &[], cmd);
                let (s, _) = l.accept().expect("accept");
                vec![Box::new(l), Box::new(s)]
            },
        ),
        row(
            "unix-dgram-out",
            "a unix datagram socket connected outside the job",
            &[],
            Some("unix-external"),
            unix_dgram_out,
        ),
        row(
            "unix-dgram-flag",
            "the same, --ext-unix-sk",
            &["--ext-unix-sk"],
            None,
            unix_dgram_out,
        ),
        row(
            "io-uring",
            "an io_uring instance",
            &[],
            Some("io-uring"),
            simple(&[], |_| py(IO_URING)),
        ),
        row(
            "pidfd-out",
            "a pidfd of a process outside the job (exec --preserve-fd)",
            &[],
            Some("pidfd-outside"),
            |env, _dir, name| {
                job(env, name, &[], sh("true"));
                let outside = Child(
                    std::process::Command::new("sleep")
                        .arg("1000")
                        .spawn()
                        .expect("sleep"),
                );
                let fd = stasis::sys::pidfd_open(outside.0.id() as i32).expect("pidfd_open");
                session_with_fd(env, name, &fd);
                vec![Box::new(outside), Box::new(fd)]
            },
        ),
        row(
            "tty-out",
            "a terminal from outside the container (exec --preserve-fd)",
            &[],
            Some("foreign-tty"),
            |env, _dir, name| {
                job(env, name, &[], sh("true"));
                let pty = nix::pty::openpty(None, None).expect("openpty");
                session_with_fd(env, name, &pty.slave);
                vec![Box::new(pty.master)]
            },
        ),
        row(
            "mount-gone",
            "a file on a host mount unmounted since the job started",
            &[],
            Some("mount-gone"),
            |env, dir, name| {
                let m = dir.join("hostmnt");
                let guard = Tmpfs::mount_as(&m, "tmpfs", None);
                std::fs::write(m.join("f"), "x").expect("write");
                job(env, name, &[], sh(&format!("exec 7<{}/f", m.display())));
                nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).expect("umount");
                vec![Box::new(guard)]
            },
        ),
        row(
            "ghost-limit",
            "a 6 MiB deleted file held open, --ghost-limit 1M",
            &["--ghost-limit", "1M"],
            Some("ghost-limit"),
            simple(&[], |d| {
                let mut v = py("import os, sys\np=sys.argv[1]+'/ghost'; f=open(p, 'w+b'); f.write(os.urandom(6<<20)); f.flush(); os.unlink(p)");
                v.push(d.display().to_string());
                v
            }),
        ),
        row(
            "ghost-exe",
            "its own executable (6.5 MiB) deleted while it runs",
            &[],
            Some("ghost-limit"),
            deleted_exe,
        ),
        row(
            "ghost-exe-flag",
            "the same, --ghost-limit 16M",
            &["--ghost-limit", "16M"],
            None,
            deleted_exe,
        ),
        row(
            "link-remap-off",
            "an unlinked file whose other name remains, --no-link-remap",
            &["--no-link-remap"],
            Some("link-remap"),
            simple(&[], |d| {
                let mut v = py("import os, sys\na=sys.argv[1]+'/a1'; f=open(a, 'w'); f.write('x'); f.flush(); os.link(a, sys.argv[1]+'/a2'); os.unlink(a)");
                v.push(d.display().to_string());
                v
            }),
        ),
        row(
            "locks-off",
            "flock held, --no-file-locks",
            &["--no-file-locks"],
            Some("file-lock"),
            simple(&[], |d| {
                let mut v = py("import fcntl, sys\nf=open(sys.argv[1]+'/a', 'w'); fcntl.flock(f, fcntl.LOCK_EX)");
                v.push(d.display().to_string());
                v
            }),
        ),
        row(
            "netlink-queued",
            "a netlink socket with an unread answer",
            &[],
            Some("netlink-queued"),
            simple(&[], |_| py(NETLINK_QUEUED)),
        ),
        row(
            "mptcp",
            "an MPTCP socket",
            &[],
            Some("socket-family"),
            simple(&["--network", "none"], |_| {
                py("import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)")
            }),
        ),
        row(
            "mqueue",
            "a POSIX message queue",
            &[],
            Some("unsupported-file"),
            simple(&[], |_| py(MQUEUE)),
        ),
        row(
            "device",
            "/dev/fuse held open",
            &[],
            Some("device"),
            simple(&[], |_| py("f=open('/dev/fuse', 'rb', buffering=0)")),
        ),
        row(
            "traced",
            "a process traced by strace",
            &[],
            Some("traced"),
            simple(&["--cap-add", "ALL"], |_| {
                vec![
                    "strace".into(),
                    "-f".into(),
                    "-o".into(),
                    "/dev/null".into(),
                    "sh".into(),
                    "-c".into(),
                    "echo ready; exec sleep 1000".into(),
                ]
            }),
        ),
        row(
            "nested-uts",
            "a process in a UTS namespace of its own",
            &[],
            Some("nested-namespace"),
            simple(&["--cap-add", "ALL"], |_| {
                vec![
                    "unshare".into(),
                    "-u".into(),
                    "sh".into(),
                    "-c".into(),
                    "echo ready; exec sleep 1000".into(),
                ]
            }),
        ),
        row(
            "nsenter",
            "a process entered with nsenter, left behind in the container",
            &[],
            Some("session-outside"),
            |env, _dir, name| {
                job(env, name, &[], sh("true"));
                let pid = env.init_pid(name).to_string();
                let o = std::process::Command::new("nsenter")
                    .args([
                        "-t",
                        &pid,
                        "-a",
                        "--",
                        "sh",
                        "-c",
                        "sleep 1000 </dev/null >/dev/null 2>&1 &",
                    ])
                    .output()
                    .expect("nsenter");
                assert!(o.status.success(), "nsenter: {o:?}");
                // the left-behind sleep is the job's until the container ends
                env.wait_until(
                    "the entered process to be in the tree",
                    Duration::from_secs(10),
                    || {
                        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                            .map(|c| c.split_whitespace().count() >= 2)
                            .unwrap_or(false)
                    },
                );
                vec![]
            },
        ),
    ]
}

fn unix_dgram_out(env: &Env, dir: &Path, name: &str) -> Guards {
    let p = dir.join(format!("{name}.dgram"));
    let s = std::os::unix::net::UnixDatagram::bind(&p).expect("bind");
    let mut cmd = py("import socket, sys\ns=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(sys.argv[1])");
    cmd.push(p.display().to_string());
    job(env, name, &[], cmd);
    vec![Box::new(s)]
}

fn deleted_exe(env: &Env, dir: &Path, name: &str) -> Guards {
    let real = std::fs::canonicalize("/usr/bin/python3").expect("python3");
    let exe = dir.join(format!("{name}-py"));
    std::fs::copy(&real, &exe).expect("copy python");
    let mut cmd = py("pass");
    cmd[0] = exe.display().to_string();
    job(env, name, &[], cmd);
    std::fs::remove_file(&exe).expect("rm");
    vec![]
}

/// CRIU's first reason in a failed checkpoint's message.
fn criu_reason(msg: &str) -> String {
    let r = msg
        .split_once("exited with code 1: ")
        .map(|(_, r)| r)
        .unwrap_or(msg);
    let r = r.split(" (log: ").next().unwrap_or(r);
    let r = r.split(" (the workload holds").next().unwrap_or(r);
    let first = r.split("; ").next().unwrap_or(r).trim();
    format!("\"{}\"", first.replace('|', "\\|"))
}

/// The pre-check's answer: (checkpointable, obstacle kinds).
fn precheck(env: &Env, name: &str, flags: &[&str]) -> (bool, Vec<String>, i32) {
    let mut args = vec!["check", "--format", "json"];
    args.extend_from_slice(flags);
    args.push(name);
    let o = env.run(&args);
    let c = code(&o);
    assert!(c == 0 || c == 1, "check {name}: exit {c}: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("check json");
    let kinds = v["obstacles"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (v["checkpointable"] == true, kinds, c)
}

#[test]
fn verdicts_match_real_dumps() {
    require_criu();
    let env = Env::new();
    let dir = env.root().join("files");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut table = vec![
        "| job | CRIU flags | pre-check | obstacles named | real dump |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    let mut wrong = vec![];
    for r in rows() {
        let rdir = dir.join(r.name);
        std::fs::create_dir_all(&rdir).expect("mkdir");
        let guards = (r.start)(&env, &rdir, r.name);
        let (will, kinds, code) = precheck(&env, r.name, r.flags);
        let mut args = vec!["checkpoint", "--leave-running"];
        args.extend_from_slice(r.flags);
        args.push(r.name);
        let dump = env.run(&args);
        let dumped = dump.status.success();
        let word = |b: bool| if b { "will checkpoint" } else { "will not" };
        let mut named = kinds.clone();
        named.dedup();
        table.push(format!(
            "| {} | {} | {} | {} | {} |",
            r.what,
            if r.flags.is_empty() {
                "–".to_string()
            } else {
                format!("`{}`", r.flags.join(" "))
            },
            word(will),
            if named.is_empty() {
                "–".to_string()
            } else {
                named.join(", ")
            },
            if dumped {
                "dumped".to_string()
            } else {
                format!("fails: {}", criu_reason(&stderr(&dump)))
            }
        ));
        if will && !dumped {
            wrong.push(format!(
                "{}: FALSE \"will checkpoint\"; the dump failed: {}",
                r.name,
                stderr(&dump)
            ));
        }
        if !will && dumped && !KNOWN_FALSE_WILL_NOT.contains(&r.name) {
            wrong.push(format!(
                "{}: false \"will not\" ({kinds:?}), the dump succeeded",
                r.name
            ));
        }
        if dumped != r.dumps {
            wrong.push(format!(
                "{}: the row expects the dump to {}, it did not ({})",
                r.name,
                if r.dumps { "succeed" } else { "fail" },
                stderr(&dump)
            ));
        }
        if let Some(k) = r.kind {
            if !kinds.iter().any(|x| x == k) {
                wrong.push(format!("{}: the check did not name {k}: {kinds:?}", r.name));
            }
        }
        assert_eq!(
            code,
            if will { 0 } else { 1 },
            "{}: exit code and verdict disagree",
            r.name
        );
        env.run(&["rm", "-f", r.name]);
        drop(guards);
    }
    let text = table.join("\n");
    println!("{text}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("precheck-table.md");
    let _ = std::fs::write(&out, format!("{text}\n"));
    assert!(table.len() - 2 >= 20, "fewer than 20 rows");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn check_of_something_not_running_is_an_error() {
    let env = Env::new();
    let o = env.run(&["check", "nosuch"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    env.ok(&["run", "--name", "done", "--", "true"]);
    let o = env.run(&["check", "done"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
}

/// `v` with a blank line in each empty `obstacles` and `notes` array: which lines a host has
/// depends on the host, their shape does not (and an empty array has none to compare).
fn with_lines(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for (k, e) in o.iter_mut() {
                    if k == "obstacles" || k == "notes" {
                        if let Value::Array(a) = e {
                            if a.is_empty() {
                                a.push(serde_json::json!(
                                    {"kind": "", "at": "", "problem": "", "fix": ""}
                                ));
                            }
                        }
                    }
                    walk(e);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// `--target`: the host questions asked of host B of the two-host bed over ssh (B runs the
/// stasis under test through its sshd), from host A, where the job runs.
#[test]
fn check_target_asks_the_other_host_over_ssh() {
    require_criu();
    let bed = common::hosts::Bed::new();
    bed.a.ok(&[
        "run",
        "-d",
        "--name",
        "t",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    let b = bed.b.alias.as_str();
    let o = bed
        .a
        .run(&["check", "--target", b, "--format", "json", "t"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let t = &v["target"];
    assert_eq!(t["host"], b);
    assert_eq!(t["facts"]["cpuinfo"]["ok"], true, "{t}");
    assert!(t["facts"]["criu"]["version"]
        .as_str()
        .is_some_and(|s| s.starts_with('4')));
    assert!(t["facts"]["criu"]["features"]
        .as_object()
        .is_some_and(|f| !f.is_empty()));
    assert_eq!(t["obstacles"].as_array().map(Vec::len), Some(0), "{t}");
    // B's /run is this machine's: the note that it is not a tmpfs comes from B too
    let run_tmpfs = on_tmpfs(Path::new("/run"));
    assert_eq!(t["facts"]["run_tmpfs"], run_tmpfs, "{t}");
    let noted = t["notes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|l| l["kind"] == "target-run-not-tmpfs"));
    assert_eq!(noted, !run_tmpfs, "{t}");
    let mut failures = vec![];
    check_shape("check-job-target", &with_lines(v.clone()), &mut failures);
    // the table says what the target is
    let o = bed.a.run(&["check", "--target", b, "t"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("target {b}: stasis ")),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("CPU ok"), "{}", stdout(&o));
    // without a job: the target's readiness
    let o = bed.a.run(&["check", "--target", b]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(&format!("target {b}: ready")),
        "{}",
        stdout(&o)
    );
    let o = bed.a.run(&["check", "--target", b, "--format", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["host"], b);
    check_shape("check-target", &with_lines(v), &mut failures);
    // what B answers (the hidden host-facts), asked the way --target asks it
    let o = bed
        .b
        .ssh_from(&bed.a, "stasis host-facts --format json")
        .output()
        .expect("ssh");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("host-facts json");
    check_shape("host-facts", &v, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // a target without a working CRIU cannot restore: "will not", with the target's obstacle
    let no_criu = format!(
        "{} -o SetEnv=STASIS_CRIU=/nonexistent/criu",
        bed.a.ssh_command()
    );
    for mut args in [
        vec!["check", "--target", b, "t"],
        vec!["check", "--target", b],
    ] {
        args.extend(["--format", "json"]);
        let child = bed
            .a
            .cmd(&args)
            .env("STASIS_SSH_COMMAND", &no_criu)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stasis");
        let o = wait_output(child, Duration::from_secs(60), "check --target (no CRIU)");
        assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        if args.contains(&"t") {
            assert_eq!(v["checkpointable"], false, "{v}");
        }
        let named = v["obstacles"].as_array().is_some_and(|a| {
            a.iter()
                .any(|l| l["kind"] == "target-criu" && l["at"] == format!("target {b}"))
        });
        assert!(named, "{v}");
    }
    // a host ssh cannot reach is an error of the check, not a "will not"
    let o = bed.a.run(&["check", "--target", "nosuchhost.invalid", "t"]);
    assert_eq!(code(&o), 125, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("--target nosuchhost.invalid"),
        "{}",
        stderr(&o)
    );
    let o = bed
        .a
        .run(&["check", "--target", "-oProxyCommand=true", "t"]);
    assert_eq!(code(&o), 125);
}

/// Whether `dir` is on a tmpfs, as the test sees it.
fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or_else(|e| panic!("statfs {}: {e}", dir.display()))
}

/// `stasis --root ROOT ARGS…` in a private mount namespace whose /run is what `mount`
/// (mount(8)'s arguments before the mount point, shell words) puts there: the host's /run
/// is never touched, and the namespace ends with the command.
fn with_run(env: &Env, mount: &str, args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("mount {mount} /run && exec \"$@\""))
        .arg("sh")
        .arg(bin())
        .arg("--root")
        .arg(env.root())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    wait_output(child, Duration::from_secs(60), "stasis under another /run")
}

/// The host check's `run` line: (ok, detail).
fn run_line(o: &std::process::Output) -> (bool, String) {
    let v: Value = serde_json::from_slice(&o.stdout).expect("check json");
    let l = v["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == "run"))
        .unwrap_or_else(|| panic!("no run line: {v}"))
        .clone();
    (
        l["ok"] == true,
        l["detail"].as_str().unwrap_or_default().to_string(),
    )
}

/// Whether `check NAME`'s JSON has the note that /run is not a tmpfs.
fn has_run_note(o: &std::process::Output) -> bool {
    let v: Value = serde_json::from_slice(&o.stdout).expect("check NAME json");
    v["notes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|l| l["kind"] == "run-not-tmpfs"))
}

/// FACTS: CRIU keeps its kernel-probe cache (/run/criu.kdat) only when /run is a tmpfs, and
/// without it every dump and restore re-probes the kernel. `stasis check` says which /run
/// this host has, and `check NAME` notes it (a note: the dump still works). Both kinds of
/// /run are made in private mount namespaces, so the test means the same on any host.
#[test]
fn check_says_when_run_is_not_a_tmpfs() {
    require_criu();
    let env = Env::new();
    // a directory on a disk, for a /run that is not a tmpfs
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("disk dir");
    assert!(
        !on_tmpfs(disk.path()),
        "{} is a tmpfs: the test needs a directory on a disk",
        disk.path().display()
    );
    let bind = format!("--bind '{}'", disk.path().display());
    let tmpfs = "-t tmpfs stasis-test-run";
    // the host's own /run, as it is
    let o = env.run(&["check", "--format", "json"]);
    let (ok, detail) = run_line(&o);
    assert!(ok, "a /run that is not a tmpfs is a note, never a failure");
    assert_eq!(
        detail.contains("is not a tmpfs"),
        !on_tmpfs(Path::new("/run")),
        "{detail}"
    );
    // both kinds
    let o = with_run(&env, tmpfs, &["check", "--format", "json"]);
    let (ok, detail) = run_line(&o);
    assert!(ok && detail.contains("is a tmpfs"), "{detail}");
    let o = with_run(&env, &bind, &["check", "--format", "json"]);
    let (ok, detail) = run_line(&o);
    assert!(ok && detail.contains("is not a tmpfs"), "{detail}");
    assert!(detail.contains("mount a tmpfs on /run"), "{detail}");
    let o = with_run(&env, &bind, &["check"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("note") && l.contains("is not a tmpfs")),
        "{}",
        stdout(&o)
    );
    // check NAME: a note, and the job still will checkpoint
    env.ok(&[
        "run",
        "-d",
        "--name",
        "r",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    env.wait_status("r", "running");
    let o = with_run(&env, &bind, &["check", "--format", "json", "r"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(has_run_note(&o), "{}", stdout(&o));
    let o = with_run(&env, &bind, &["check", "r"]);
    assert!(
        stdout(&o).contains("run-not-tmpfs") && stdout(&o).contains("fix: mount a tmpfs on /run"),
        "{}",
        stdout(&o)
    );
    let o = with_run(&env, tmpfs, &["check", "--format", "json", "r"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!has_run_note(&o), "{}", stdout(&o));
    env.run(&["rm", "-f", "r"]);
}

/// A mount namespace whose /dev has an `nvidiactl` (a copy of /dev/null's node): an overlay
/// over the host's /dev, its pts, shm and mqueue moved across, so the host's /dev is never
/// touched. A holder process keeps the namespace; every command runs in it through nsenter.
struct FakeGpuDev {
    holder: std::process::Child,
    /// The overlay's upper and work directories live on a tmpfs mounted here, in the namespace.
    _dir: tempfile::TempDir,
}

impl FakeGpuDev {
    fn new() -> FakeGpuDev {
        let dir = tempfile::Builder::new()
            .prefix("stgpu")
            .tempdir_in("/tmp")
            .expect("dir");
        let script = r#"set -e
t="$1"
mount -t tmpfs stasis-test-gpu "$t"
mkdir "$t/u" "$t/w" "$t/keep"
for m in pts shm mqueue; do
  if mountpoint -q "/dev/$m"; then mkdir "$t/keep/$m"; mount --move "/dev/$m" "$t/keep/$m"; fi
done
mount -t overlay overlay -o "lowerdir=/dev,upperdir=$t/u,workdir=$t/w" /dev
for m in pts shm mqueue; do
  if [ -d "$t/keep/$m" ]; then mount --move "$t/keep/$m" "/dev/$m"; fi
done
mknod /dev/nvidiactl c 1 3
echo ready
exec sleep 100000"#;
        let mut holder = std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut first = String::new();
        let out = holder.stdout.take().expect("stdout");
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut first);
        let g = FakeGpuDev { holder, _dir: dir };
        assert_eq!(
            first.trim(),
            "ready",
            "the fake GPU namespace did not come up"
        );
        g
    }

    /// `stasis --root ROOT ARGS…` in the namespace, with a clean environment plus `envs`.
    fn run(&self, env: &Env, envs: &[(&str, &Path)], args: &[&str]) -> std::process::Output {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg(bin())
            .arg("--root")
            .arg(env.root())
            .args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c.spawn().expect("nsenter");
        wait_output(child, Duration::from_secs(60), &args.join(" "))
    }
}

impl Drop for FakeGpuDev {
    fn drop(&mut self) {
        // the holder is this test's own process
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Issue 12's "a GPU without the plugin", end to end without a GPU: a job holding
/// /dev/nvidiactl (a stand-in node, in a mount namespace of the test's) is a GPU job to the
/// pre-check and to the checkpoint alike. Without CRIU's cuda plugin the check names
/// gpu-plugin and the real dump fails; with a plugin but no NVIDIA driver (no libcuda) it
/// names gpu-driver and the dump fails too.
#[test]
fn gpu_jobs_without_plugin_or_driver_match_real_dumps() {
    require_criu();
    let env = Env::new();
    let gpu = FakeGpuDev::new();
    let empty = env.root().join("no-plugin");
    let fake = env.root().join("fake-plugin");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::create_dir_all(&fake).expect("mkdir");
    std::fs::write(fake.join("cuda_plugin.so"), b"").expect("plugin");
    let code_ =
        "f = open('/dev/nvidiactl')\nprint('ready', flush=True)\nimport time\ntime.sleep(1000)";
    for (name, dir, kind) in [
        ("noplugin", &empty, "gpu-plugin"),
        ("nodriver", &fake, "gpu-driver"),
    ] {
        let envs = [("CRIU_LIBS_DIR", dir.as_path())];
        let o = gpu.run(
            &env,
            &envs,
            &["run", "-d", "--name", name, "--", "python3", "-c", code_],
        );
        assert!(o.status.success(), "run {name}: {}", stderr(&o));
        env.wait_until("the job to hold the GPU", Duration::from_secs(20), || {
            String::from_utf8_lossy(&env.logs(name)).contains("ready")
        });
        let o = gpu.run(&env, &envs, &["check", "--format", "json", name]);
        assert_eq!(code(&o), 1, "{name}: {}{}", stdout(&o), stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("check json");
        let kinds: Vec<&str> = v["obstacles"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["kind"].as_str()).collect())
            .unwrap_or_default();
        assert!(kinds.contains(&kind), "{name}: {kinds:?}: {v}");
        let o = gpu.run(&env, &envs, &["checkpoint", "--leave-running", name]);
        assert!(
            !o.status.success(),
            "{name}: the dump succeeded: a false \"will not\""
        );
        assert!(stderr(&o).contains("a GPU job"), "{name}: {}", stderr(&o));
        assert_eq!(
            env.status(name),
            "running",
            "a failed dump leaves the job running"
        );
        env.run(&["rm", "-f", name]);
    }
}
