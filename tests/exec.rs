//! Exec sessions end to end, as root: ssh-like semantics, ttys, fds, identity, lifecycle,
//! errors, and sessions that survive a checkpoint and restore of their workload.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn workload(env: &Env, name: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sleep", "100000"]);
    env.ok(&args);
}

fn sessions(env: &Env, name: &str) -> Vec<Value> {
    let out = env.ok(&["exec", "--list", "--format", "json", name]);
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn exit_table_for_exec() {
    let env = Env::new();
    workload(&env, "w", &[]);
    for (cmd, want) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 32"], 32),
        (vec!["/no/such"], 127),
        (vec!["/etc"], 126),
    ] {
        let mut args = vec!["exec", "w", "--"];
        args.extend(cmd.iter().copied());
        let o = env.run(&args);
        assert_eq!(code(&o), want, "{cmd:?}: {}", stderr(&o));
        if want >= 126 {
            let e = stderr(&o);
            assert_eq!(e.trim_end().lines().count(), 1, "{e:?}");
            assert!(e.contains(cmd[0]), "{e:?}");
        }
    }
    let o = env.run(&["exec", "w", "--"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));
    // killed by a signal: 128+n
    let o = env.run(&["exec", "w", "--", "sh", "-c", "kill -USR1 $$; sleep 5"]);
    assert_eq!(code(&o), 128 + 10);
}

/// A session (and the workload) starts as a fresh program would: no signal blocked or
/// ignored, although init ignores SIGPIPE and blocks the signals it forwards.
#[test]
fn a_session_starts_with_no_signal_blocked_or_ignored() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let masks = |status: &str| -> Vec<String> {
        status
            .lines()
            .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigIgn:"))
            .map(str::to_string)
            .collect()
    };
    let want = vec![
        "SigBlk:\t0000000000000000".to_string(),
        "SigIgn:\t0000000000000000".to_string(),
    ];
    let out = env.ok(&["exec", "w", "--", "cat", "/proc/self/status"]);
    assert_eq!(masks(&out), want, "{out}");
    let out = env.ok(&["run", "--rm", "--", "cat", "/proc/self/status"]);
    assert_eq!(masks(&out), want, "{out}");
    env.ok(&["rm", "-f", "w"]);
}

/// The 21 catchable signals a user can mean for a session (not KILL/STOP, not CHLD, not the
/// fault signals SEGV/BUS/FPE/ILL, not job control TSTP/TTIN/TTOU).
const SIGNALS: [(&str, i32); 21] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("TRAP", 5),
    ("ABRT", 6),
    ("USR1", 10),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CONT", 18),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

#[test]
fn twenty_one_signals_in_random_order_reach_the_session() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let traps: String = SIGNALS
        .iter()
        .map(|(_, n)| format!("trap 'echo got-{n}' {n}; "))
        .collect();
    let script = format!("{traps}echo ready; while :; do sleep 0.05; done");
    let mut client = env
        .cmd(&["exec", "w", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = client.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut read_until = |needle: &str, seen: &mut String| {
        let t0 = Instant::now();
        let mut buf = [0u8; 256];
        while !seen.contains(needle) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {needle:?} in {seen:?}"
            );
            let n = out.read(&mut buf).expect("read");
            assert!(n > 0, "client output ended before {needle:?}: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until("ready", &mut seen);
    // a random order, seeded from the clock; half the signals named, half given by number
    let mut order: Vec<usize> = (0..SIGNALS.len()).collect();
    let mut x = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64)
        | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let pid = nix::unistd::Pid::from_raw(client.id() as i32);
    for (k, i) in order.iter().enumerate() {
        let (name, num) = SIGNALS[*i];
        if k % 2 == 0 {
            let sig = format!("SIG{name}")
                .parse::<nix::sys::signal::Signal>()
                .expect("signal name");
            nix::sys::signal::kill(pid, sig).expect("kill by name");
        } else {
            assert_eq!(kill_by_number(client.id() as i32, num), 0);
        }
        read_until(&format!("got-{num}\n"), &mut seen);
    }
    for (_, n) in SIGNALS {
        assert!(
            seen.contains(&format!("got-{n}\n")),
            "signal {n} never arrived: {seen}"
        );
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("end client");
    let _ = client.wait();
}

/// kill(2) with a signal given by number.
fn kill_by_number(pid: i32, sig: i32) -> i32 {
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::try_from(sig).ok(),
    ) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

#[test]
fn stdin_and_output_arrive_byte_for_byte() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let data: Vec<u8> = (0..(32u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = sha256(&data);
    let mut child = env
        .cmd(&["exec", "-i", "w", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut w = child.stdin.take().expect("stdin");
    let feed = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&feed).expect("feed"));
    let o = wait_output(child, Duration::from_secs(60), "exec sha256sum");
    writer.join().expect("writer");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&want), "{} vs {want}", stdout(&o));
    let file = env.root().join("data");
    for size in [20 * 1024, 32 << 20] {
        std::fs::write(&file, &data[..size]).expect("write");
        let o = env.run(&["exec", "w", "--", "cat", file.to_str().expect("p")]);
        assert_eq!(o.stdout.len(), size);
        assert_eq!(
            sha256(&o.stdout),
            sha256(&data[..size]),
            "{size} bytes differ"
        );
    }
}

#[test]
fn twenty_five_sequential_and_concurrent_cats() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let cat = |n: usize| {
        let mut c = env
            .cmd(&["exec", "-i", "w", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(format!("abc{n}\n").as_bytes())
            .expect("write");
        c
    };
    for n in 0..25 {
        let o = wait_output(cat(n), Duration::from_secs(10), "cat");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("abc{n}\n"));
    }
    let children: Vec<_> = (0..25).map(cat).collect();
    for (n, c) in children.into_iter().enumerate() {
        let o = wait_output(c, Duration::from_secs(30), "concurrent cat");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("abc{n}\n"));
    }
}

struct Pty {
    master: OwnedFd,
}

impl Pty {
    /// A pty whose slave becomes the client's stdio, sized rows x cols.
    fn new(rows: u16, cols: u16) -> (Pty, OwnedFd) {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None).expect("openpty");
        (Pty { master: p.master }, p.slave)
    }

    fn resize(&self, rows: u16, cols: u16) {
        stasis::sys::set_winsize(self.master.as_fd(), rows, cols).expect("TIOCSWINSZ");
    }

    fn write(&self, data: &[u8]) {
        nix::unistd::write(&self.master, data).expect("write to the pty");
    }

    /// Reads whatever comes within `t` (appended to `acc`); false once the pty is closed.
    fn read_for(&self, t: Duration, acc: &mut String) -> bool {
        let t0 = Instant::now();
        let mut buf = [0u8; 1024];
        while let Some(left) = t.checked_sub(t0.elapsed()) {
            let mut fds = [nix::poll::PollFd::new(
                self.master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap_or(0) == 0 {
                continue;
            }
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => acc.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        true
    }

    /// Reads until `needle` shows up (returns everything read).
    fn read_until(&self, needle: &str, acc: &mut String) {
        let t0 = Instant::now();
        let mut buf = [0u8; 1024];
        while !acc.contains(needle) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {needle:?} in {acc:?}"
            );
            let mut fds = [nix::poll::PollFd::new(
                self.master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                continue;
            }
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(0) | Err(_) => panic!("pty closed before {needle:?}: {acc:?}"),
                Ok(n) => acc.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }
}

fn spawn_on_pty(env: &Env, slave: &OwnedFd, args: &[&str], term: &str) -> std::process::Child {
    let dup = || Stdio::from(slave.try_clone().expect("dup slave"));
    env.cmd(args)
        .env("TERM", term)
        .stdin(dup())
        .stdout(dup())
        .stderr(dup())
        .spawn()
        .expect("spawn on pty")
}

#[test]
fn exec_t_gets_a_tty_term_and_window_size() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let (pty, slave) = Pty::new(30, 100);
    // After the first size, it answers every line it reads with the size it sees then, and
    // ends once that is the new one.
    let script = "test -t 0 && echo is-a-tty; echo TERM=$TERM; echo size=$(stty size); while read x; do s=$(stty size); echo size2=$s; [ \"$s\" = '40 120' ] && exit 0; done; exit 1";
    let mut client = spawn_on_pty(
        &env,
        &slave,
        &["exec", "-t", "w", "--", "sh", "-c", script],
        "xterm-test",
    );
    drop(slave);
    let mut acc = String::new();
    pty.read_until("size=30 100", &mut acc);
    assert!(acc.contains("is-a-tty"), "{acc}");
    assert!(acc.contains("TERM=xterm-test"), "{acc}");
    pty.resize(40, 120);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .expect("winch");
    // The resize travels client -> monitor -> the session's tty with nothing to wait on from
    // here: ask for the size until the new one shows up (it never does if the resize is lost).
    let t0 = Instant::now();
    while !acc.contains("size2=40 120") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the new size never reached the session: {acc}"
        );
        pty.write(b"go\r");
        if !pty.read_for(Duration::from_millis(100), &mut acc) {
            break;
        }
    }
    assert!(
        acc.contains("size2=40 120"),
        "the session ended without seeing the new size: {acc}"
    );
    let st = client.wait().expect("wait");
    assert_eq!(st.code(), Some(0), "{acc}");
}

#[test]
fn detach_keys_leave_the_session_running() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let (pty, slave) = Pty::new(24, 80);
    let script = "echo started; i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.1; done";
    let mut client = spawn_on_pty(
        &env,
        &slave,
        &["exec", "-t", "w", "--", "sh", "-c", script],
        "xterm",
    );
    drop(slave);
    let mut acc = String::new();
    pty.read_until("tick2", &mut acc);
    pty.write(&[0x10, 0x11]); // ctrl-p ctrl-q
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = client.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the client did not detach: {acc}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(0));
    let list = sessions(&env, "w");
    let s = list
        .iter()
        .find(|s| s["tty"] == true)
        .expect("the session")
        .clone();
    assert_eq!(s["status"], "running", "{s}");
    let id = s["id"].as_str().expect("id").to_string();
    env.wait_until("output in the session log", Duration::from_secs(10), || {
        let o = env
            .cmd(&["logs", "--exec", &id, "w"])
            .output()
            .expect("logs");
        String::from_utf8_lossy(&o.stdout).contains("tick")
    });
    // and it can be stopped
    let o = env.run(&["exec", "--stop", &id, "--time", "1s", "w"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn preserve_fd_passes_exactly_that_fd() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let (r, w) = nix::unistd::pipe().expect("pipe");
    nix::unistd::write(&w, b"through fd 9\n").expect("write");
    drop(w);
    let mut cmd = env.cmd(&[
        "exec",
        "--preserve-fd",
        "9",
        "w",
        "--",
        "sh",
        "-c",
        "cat <&9; ls /proc/self/fd | tr '\\n' ' '",
    ]);
    let raw = r.as_raw_fd();
    // place the pipe at fd 9 in the client
    with_fd_at_9(&mut cmd, raw);
    let o = cmd.output().expect("run");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("through fd 9\n"), "{text}");
    // ls's own fds: 0-2, its directory (3), and 9
    assert_eq!(
        text.lines().nth(1).map(str::trim),
        Some("0 1 2 3 9"),
        "{text}"
    );
    drop(r);
}

/// dup2(fd, 9) in the child before exec.
fn with_fd_at_9(cmd: &mut std::process::Command, fd: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 9) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
}

#[test]
fn the_session_runs_as_the_user_in_the_workloads_cgroup_hostname_and_pid_namespace() {
    let env = Env::new();
    workload(&env, "w", &["--hostname", "sessbox", "--pids", "200"]);
    let init = env.init_pid("w");
    let o = env.run(&[
        "exec",
        "--user",
        "1000:1000",
        "w",
        "--",
        "sh",
        "-c",
        "id -u; id -g; hostname; readlink /proc/self/ns/pid; grep pids /proc/self/cgroup",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(&lines[..3], &["1000", "1000", "sessbox"]);
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).expect("ns");
    assert_eq!(lines[3], ns.to_string_lossy());
    let cg = std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("cgroup");
    let init_pids = cg
        .lines()
        .find(|l| l.contains(":pids:"))
        .expect("pids line");
    assert_eq!(
        lines[4], init_pids,
        "session and workload in different cgroups"
    );
}

#[test]
fn a_background_writer_never_hangs_exec() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let child = env
        .cmd(&["exec", "w", "--", "sh", "-c", "echo done; yes &"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let o = wait_output(
        child,
        Duration::from_secs(2),
        "exec with a background writer",
    );
    assert_eq!(code(&o), 0);
    assert!(o.stdout.starts_with(b"done\n"));
}

#[test]
fn errors_are_125_and_leave_no_record() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let before = sessions(&env, "w").len();
    for (args, needle) in [
        (vec!["exec", "w", "--"], "empty"),
        (
            vec!["exec", "--user", "nosuchuser", "w", "--", "true"],
            "nosuchuser",
        ),
        (vec!["exec", "ghost", "--", "true"], "ghost"),
    ] {
        let o = env.run(&args);
        assert_eq!(code(&o), 125, "{args:?}");
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(needle), "{e}");
    }
    assert_eq!(
        sessions(&env, "w").len(),
        before,
        "a failed exec left a record"
    );
    env.ok(&["run", "--name", "gone", "--", "true"]);
    let o = env.run(&["exec", "gone", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("gone"), "{}", stderr(&o));
    assert!(sessions(&env, "gone").is_empty());
}

#[test]
fn lifecycle_detached_list_stop_remove_inspect() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let id = env
        .ok(&[
            "exec",
            "-d",
            "w",
            "--",
            "sh",
            "-c",
            "echo out; sleep 0.3; exit 4",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 12, "{id}");
    let s = sessions(&env, "w");
    assert_eq!(s[0]["id"], id.as_str());
    assert_eq!(s[0]["status"], "running");
    env.wait_until("the session to end", Duration::from_secs(10), || {
        sessions(&env, "w")[0]["status"] == "exited"
    });
    assert_eq!(sessions(&env, "w")[0]["exit_code"], 4);
    assert_eq!(env.ok(&["logs", "--exec", &id, "w"]), "out\n");
    let long = env
        .ok(&[
            "exec",
            "-d",
            "w",
            "--",
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 0.05; done",
        ])
        .trim()
        .to_string();
    let t0 = Instant::now();
    let o = env.run(&["exec", "--stop", &long, "--time", "500ms", "w"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(t0.elapsed() >= Duration::from_millis(450));
    assert_eq!(stdout(&o).trim(), "137");
    let o = env.run(&["exec", "--rm", &id, "w"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let i = env.inspect("w");
    let ids: Vec<&str> = i["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, vec![long.as_str()]);
    let o = env.run(&["exec", "--rm", &id, "w"]);
    assert_eq!(code(&o), 125);
}

#[test]
fn sessions_survive_checkpoint_and_restore() {
    require_criu();
    let env = Env::new();
    workload(&env, "w", &[]);
    let detached = env
        .ok(&[
            "exec",
            "-d",
            "w",
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 40 ]; do echo d$i; i=$((i+1)); sleep 0.05; done; exit 5",
        ])
        .trim()
        .to_string();
    let attached = Streaming::spawn(env.cmd(&[
        "exec",
        "w",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 40 ]; do echo a$i; i=$((i+1)); sleep 0.05; done; exit 6",
    ]));
    // Both sessions are under way (and the attached one exists) when the dump is taken.
    env.wait_until("both sessions to print", Duration::from_secs(20), || {
        attached.stdout_so_far().contains("a2\n")
            && env.ok(&["logs", "--exec", &detached, "w"]).contains("d2\n")
    });
    env.ok(&["checkpoint", "w"]);
    assert_eq!(env.status("w"), "checkpointed");
    env.ok(&["restore", "w"]);
    let o = attached.wait(Duration::from_secs(30), "attached session");
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    let want: String = (0..40).map(|i| format!("a{i}\n")).collect();
    assert_eq!(
        stdout(&o),
        want,
        "the attached session's output has a gap or repeat"
    );
    env.wait_until(
        "the detached session to end",
        Duration::from_secs(20),
        || {
            sessions(&env, "w")
                .iter()
                .any(|s| s["id"] == detached.as_str() && s["status"] == "exited")
        },
    );
    let s = sessions(&env, "w");
    let d = s
        .iter()
        .find(|s| s["id"] == detached.as_str())
        .expect("detached");
    assert_eq!(d["exit_code"], 5);
    let log = env.ok(&["logs", "--exec", &detached, "w"]);
    let want: String = (0..40).map(|i| format!("d{i}\n")).collect();
    assert_eq!(log, want);
}

#[test]
fn a_detached_session_can_be_attached_again() {
    let env = Env::new();
    workload(&env, "w", &[]);
    let id = env.ok(&["exec", "-d", "w", "--", "sh", "-c", "sleep 0.5; i=0; while [ $i -lt 5 ]; do echo late$i; i=$((i+1)); sleep 0.1; done; exit 9"]).trim().to_string();
    let child = env
        .cmd(&["exec", "--attach", &id, "w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach");
    let o = wait_output(child, Duration::from_secs(10), "exec --attach");
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(stdout(&o).contains("late4\n"), "{}", stdout(&o));
    let o = env.run(&["exec", "--attach", "nosuchid", "w"]);
    assert_eq!(code(&o), 125);
}

/// Issue 8: exec sessions travel with their job through export and import into another state
/// root: a writing one and an idle one are both listed there, and the writing one's output
/// goes on from where it was, without a gap.
#[test]
fn sessions_travel_through_export_and_import() {
    require_criu();
    let env = Env::new();
    let other = Env::new();
    workload(&env, "w", &[]);
    let session = |args: &[&str]| {
        let mut a = vec!["exec", "-d", "w", "--"];
        a.extend_from_slice(args);
        env.ok(&a).trim().to_string()
    };
    let writer = session(&[
        "sh",
        "-c",
        "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done",
    ]);
    let idle = session(&["sleep", "100000"]);
    env.wait_until("the writer's output", Duration::from_secs(20), || {
        counter_values(env.ok(&["logs", "--exec", &writer, "w"]).as_bytes()).len() > 3
    });
    let archive = env.root().join("w.tar.zst");
    env.ok(&["checkpoint", "w", "--export", archive.to_str().expect("p")]);
    let exported = counter_values(env.ok(&["logs", "--exec", &writer, "w"]).as_bytes());
    env.ok(&["rm", "w"]);
    other.ok(&["restore", "--import", archive.to_str().expect("p")]);
    let listed = sessions(&other, "w");
    for id in [&writer, &idle] {
        assert!(
            listed
                .iter()
                .any(|s| s["id"] == id.as_str() && s["status"] == "running"),
            "session {id} is not running after the import: {listed:?}"
        );
    }
    other.wait_until("the writer to go on", Duration::from_secs(20), || {
        counter_values(other.ok(&["logs", "--exec", &writer, "w"]).as_bytes()).len() > 5
    });
    let after = counter_values(other.ok(&["logs", "--exec", &writer, "w"]).as_bytes());
    let last = *exported.last().expect("output before the export");
    assert_eq!(
        after[0],
        last + 1,
        "the writer restarted or lost output: {exported:?} then {after:?}"
    );
    for w in after.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap or repeat after the import: {after:?}");
    }
    other.ok(&["exec", "--stop", &idle, "--time", "0s", "w"]);
}
