//! The CLI's conveniences, end to end, as root: shell completion in a real bash, man pages
//! rendered by man, `logs` by time and lines, `events --follow`, `stats` against the
//! cgroup's own files, progress under a real pty and never in a pipe, and the JSON shape of
//! every `--format json` output against tests/snapshots/.

mod common;

use common::shape::{check_shape, shape};
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// PATH with the binary under test first, so scripts that call `stasis` find it.
fn path_with_bin() -> String {
    let dir = bin().parent().expect("bin dir").display().to_string();
    format!(
        "{dir}:{}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    )
}

/// A process whose stdin, stdout and stderr are a real pty; what it writes is collected.
struct Pty {
    child: Child,
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        let ws = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None).expect("openpty");
        // openpty(3) leaves both ends inheritable: a child would keep a copy of the slave
        // beside its stdio and hand it on to the monitor it forks (which keeps it for life)
        for fd in [&p.master, &p.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .expect("cloexec");
        }
        let slave: OwnedFd = p.slave;
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("spawn under a pty");
        // the parent's copies of the slave must go, or the master never sees the end
        drop(cmd);
        let master = std::fs::File::from(p.master);
        let mut rd = master.try_clone().expect("dup master");
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every slave fd is closed
            while let Ok(n) = rd.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            master,
            out,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("lock")).into_owned()
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).expect("write to pty");
    }

    fn wait_for(&self, what: &str, t: Duration, f: impl Fn(&str) -> bool) {
        let t0 = Instant::now();
        while !f(&self.text()) {
            assert!(
                t0.elapsed() < t,
                "timed out waiting for {what}; the pty shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its code and all it wrote.
    fn finish(mut self, t: Duration) -> (i32, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if t0.elapsed() > t {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("timed out; the pty shows:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // the reader ends when the last holder of the slave is gone; a monitor forked by
        // the command lets go of it right after the fork
        let t0 = Instant::now();
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && t0.elapsed() < t {
            std::thread::sleep(Duration::from_millis(10));
        }
        (status.code().unwrap_or(-1), self.text())
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        // ours, by pid
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `stasis --root ROOT ARGS…` for a pty: a terminal's environment.
fn tty_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = env.cmd(args);
    c.env("TERM", "xterm");
    c
}

fn json(env: &Env, args: &[&str]) -> Value {
    let out = env.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("stasis {args:?}: {e}: {out}"))
}

/// A job that prints `before`, waits for the file `go`, then prints `after` and exits.
fn gated(env: &Env, name: &str, before: &str, after: &str) -> PathBuf {
    let go = env.root().join(format!("{name}.go"));
    let script = format!(
        "printf '{before}'; while [ ! -e {} ]; do sleep 0.02; done; printf '{after}'",
        go.display()
    );
    env.ok(&["run", "-d", "--name", name, "--", "sh", "-c", &script]);
    go
}

fn logs_of(env: &Env, args: &[&str]) -> String {
    let mut a = vec!["logs"];
    a.extend_from_slice(args);
    env.ok(&a)
}

// ---------------------------------------------------------------------------------------
// completion and man pages

#[test]
fn bash_completes_workload_names_from_the_root_on_the_line() {
    let env = Env::new();
    for n in ["alpha", "beta", "bravo"] {
        env.ok(&["run", "--name", n, "--", "true"]);
    }
    std::fs::write(env.root().join("job.yaml"), "command: [true]\n").expect("spec file");
    let root = env.root().display().to_string();
    // complete -C as bash runs it: the registered command, with COMP_LINE and COMP_POINT
    let script = r#"
        source <(stasis completion bash) || exit 1
        spec=$(complete -p stasis) || exit 1
        case "$spec" in *"-C "*) ;; *) echo "not a -C completion: $spec"; exit 1;; esac
        cmd=${spec#*-C }; cmd=${cmd% stasis}; eval "cmd=$cmd"
        COMP_LINE="stasis --root $R logs b" COMP_POINT=${#COMP_LINE} $cmd stasis b logs
        echo ---
        COMP_LINE="stasis --root $R che" COMP_POINT=${#COMP_LINE} $cmd stasis che --root
        echo ---
        COMP_LINE="stasis --root $R run -f $R/jo" COMP_POINT=${#COMP_LINE} $cmd stasis "$R/jo" -f
        echo ---
        COMP_LINE="stasis --root $R logs zz" COMP_POINT=${#COMP_LINE} $cmd stasis zz logs
    "#;
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script])
        .env("PATH", path_with_bin())
        .env("R", &root)
        .output()
        .expect("bash");
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let answers: Vec<&str> = out.split("---\n").collect();
    let [names, subs, file, none] = answers[..] else {
        panic!("four answers: {out}");
    };
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, vec!["beta", "bravo"], "{out}");
    let mut subs: Vec<&str> = subs.lines().collect();
    subs.sort();
    assert_eq!(subs, vec!["check", "checkpoint", "checkpoints"]);
    // a file argument lists files; a name that matches nothing lists nothing
    assert_eq!(file, format!("{root}/job.yaml\n"));
    assert_eq!(none, "");

    // and in an interactive bash, where readline does the rest: TAB completes a unique name
    let mut c = Command::new("bash");
    c.args(["--norc", "--noprofile", "-i"])
        .env_clear()
        .env("PATH", path_with_bin())
        .env("TERM", "dumb")
        .env("INPUTRC", "/dev/null")
        .env("PS1", "$ ")
        .env("STASIS_ROOT", &root);
    let mut sh = Pty::spawn(c);
    sh.send("source <(stasis completion bash); echo loaded\n");
    sh.wait_for("the script to load", Duration::from_secs(10), |t| {
        t.contains("loaded\r\n")
    });
    // STASIS_ROOT from the environment, as the CLI reads it
    sh.send("stasis inspect al\t");
    sh.wait_for("alpha to be completed", Duration::from_secs(10), |t| {
        t.contains("inspect alpha")
    });
    sh.send("\x15exit\n");
    let (code, _) = sh.finish(Duration::from_secs(10));
    assert_eq!(code, 0);
}

#[test]
fn man_renders_stasis_checkpoint() {
    let d = tempfile::tempdir().expect("tmp");
    let o = Command::new(bin())
        .arg("man")
        .arg(d.path())
        .output()
        .expect("stasis man");
    assert!(o.status.success(), "{}", stderr(&o));
    let page = d.path().join("stasis-checkpoint.1");
    assert!(stdout(&o).contains(&page.display().to_string()));
    assert!(d.path().join("stasis.1").exists());
    // groff with every warning on: none may come
    let g = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff (scripts/install-deps.sh installs groff-base)");
    assert!(g.status.success() && g.stderr.is_empty(), "{}", stderr(&g));
    let m = Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man (scripts/install-deps.sh installs man-db)");
    let text = stdout(&m);
    assert!(m.status.success(), "{}", stderr(&m));
    assert!(stderr(&m).is_empty(), "{}", stderr(&m));
    for want in [
        "stasis-checkpoint",
        "--leave-running",
        "Keep the workload running",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    // stasis-check documents its exit codes (issue 12) and --target
    let page = d.path().join("stasis-check.1");
    let g = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff");
    assert!(g.status.success() && g.stderr.is_empty(), "{}", stderr(&g));
    let m = Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man");
    let text = stdout(&m);
    assert!(
        m.status.success() && stderr(&m).is_empty(),
        "{}",
        stderr(&m)
    );
    for want in [
        "Exit status",
        "will not checkpoint",
        "125",
        "--target",
        "STASIS_SSH_COMMAND",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------
// logs and events

#[test]
fn logs_by_lines_and_time_with_timestamps() {
    let env = Env::new();
    let go = gated(&env, "g", "one\\ntwo\\n", "three\\nfour\\nfive");
    env.wait_until("two", Duration::from_secs(10), || {
        logs_of(&env, &["g"]).contains("two")
    });
    // "two" is in the log before the gate opens, "three" is written after: the time between
    // splits them whatever the scheduler does
    let gate = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    std::fs::write(&go, "").expect("open the gate");
    env.wait_status("g", "exited");
    let stamped = logs_of(&env, &["--timestamps", "g"]);
    let mut times = vec![];
    for l in stamped.lines() {
        let (ts, text) = l.split_once(' ').expect("a timestamp, a space, the line");
        assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
        times.push((ts.to_string(), text.to_string()));
    }
    let texts: Vec<&str> = times.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, vec!["one", "two", "three", "four", "five"]);
    // RFC 3339 in UTC sorts as text
    assert!(times.windows(2).all(|w| w[0].0 <= w[1].0), "{times:?}");

    assert_eq!(logs_of(&env, &["--tail", "2", "g"]), "four\nfive");
    assert_eq!(logs_of(&env, &["-n", "3", "g"]), "three\nfour\nfive");
    assert_eq!(logs_of(&env, &["-n", "0", "g"]), "");
    assert_eq!(
        logs_of(&env, &["-n", "99", "g"]),
        "one\ntwo\nthree\nfour\nfive"
    );

    // --since/--until: RFC 3339 (the gate's time, with an offset) and durations
    let t = rfc3339_with_offset(gate);
    assert_eq!(logs_of(&env, &["--since", &t, "g"]), "three\nfour\nfive");
    assert_eq!(logs_of(&env, &["--until", &t, "g"]), "one\ntwo\n");
    assert_eq!(logs_of(&env, &["--until", &t, "-n", "1", "g"]), "two\n");
    assert_eq!(
        logs_of(&env, &["--since", "1h", "g"]),
        "one\ntwo\nthree\nfour\nfive"
    );
    assert_eq!(logs_of(&env, &["--until", "1h", "g"]), "");
    let bad = env.run(&["logs", "--since", "yesterday", "g"]);
    assert_eq!(code(&bad), 125);
    assert!(stderr(&bad).contains("--since"), "{}", stderr(&bad));
}

/// `gate` (ns since the epoch) as RFC 3339 at +01:30, to exercise offsets.
fn rfc3339_with_offset(ns: u64) -> String {
    let shifted = ns + 90 * 60 * 1_000_000_000;
    let z = stasis::api::logs::rfc3339_ns(shifted);
    format!("{}+01:30", z.trim_end_matches('Z'))
}

#[test]
fn logs_follow_from_the_tail() {
    let env = Env::new();
    let go = gated(&env, "f", "a\\nb\\n", "c\\n");
    env.wait_until("b", Duration::from_secs(10), || {
        logs_of(&env, &["f"]).contains('b')
    });
    let mut follower = env
        .cmd(&["logs", "-f", "--tail", "1", "f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let mut out = follower.stdout.take().expect("stdout");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"b\n") {
        let n = out.read(&mut buf).expect("read");
        assert!(n > 0, "logs -f ended early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    std::fs::write(&go, "").expect("open the gate");
    out.read_to_end(&mut got).expect("read");
    let o = wait_output(follower, Duration::from_secs(20), "logs -f");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&got), "b\nc\n");
}

#[test]
fn events_follow_as_json_lines_and_since() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "e", "--", "sleep", "1000"]);
    env.wait_status("e", "running");
    let all = json(&env, &["events", "--format", "json", "e"]);
    let kinds: Vec<&str> = all
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, vec!["start"]);
    let follower = env
        .cmd(&["events", "--follow", "--format", "json", "e"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("events -f");
    // stopping the job ends the follow by itself once the monitor is gone
    env.ok(&["stop", "-t", "60", "e"]);
    let o = wait_output(follower, Duration::from_secs(30), "events --follow");
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert!(kinds.contains(&"exit"), "{kinds:?}");
    // since the exit: the start is left out
    let exit_at = lines
        .iter()
        .find(|e| e["kind"] == "exit")
        .and_then(|e| e["at"].as_u64())
        .expect("exit time");
    let since = stasis::api::logs::rfc3339_ns(exit_at * 1_000_000);
    let later = json(
        &env,
        &["events", "--format", "json", "--since", &since, "e"],
    );
    let kinds: Vec<&str> = later
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !kinds.contains(&"start") && kinds.contains(&"exit"),
        "{kinds:?}"
    );
}

// ---------------------------------------------------------------------------------------
// stats

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn v2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The cgroup's own memory and task figures: (memory, pids).
fn cgroup_figures(env: &Env, name: &str) -> (u64, u64) {
    let key = stasis::store::state::StateRoot::from_flag(Some(env.root().to_path_buf())).key();
    let rel = format!("stasis/{key}/{name}");
    if v2() {
        let d = Path::new("/sys/fs/cgroup").join(rel);
        (
            read_u64(&d.join("memory.current")),
            read_u64(&d.join("pids.current")),
        )
    } else {
        (
            read_u64(
                &Path::new("/sys/fs/cgroup/memory")
                    .join(&rel)
                    .join("memory.usage_in_bytes"),
            ),
            read_u64(
                &Path::new("/sys/fs/cgroup/pids")
                    .join(&rel)
                    .join("pids.current"),
            ),
        )
    }
}

/// The container's tasks and CPU ticks (with reaped children) summed from /proc.
fn proc_figures(init: i32) -> (u64, u64) {
    let mut pids = vec![init];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(c.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
        i += 1;
    }
    let (mut tasks, mut ticks) = (0, 0);
    for p in pids {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).expect("stat");
        let f: Vec<u64> = s[s.rfind(')').expect(")") + 2..]
            .split_whitespace()
            .map(|v| v.parse::<i64>().unwrap_or(0).max(0) as u64)
            .collect();
        ticks += f[11] + f[12] + f[13] + f[14];
        tasks += f[17];
    }
    (tasks, ticks)
}

fn stats_of(env: &Env, name: &str) -> Value {
    let v = json(env, &["stats", "--no-stream", "--format", "json", name]);
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{v}");
    rows[0].clone()
}

fn between(what: &str, v: u64, a: u64, b: u64) {
    assert!(
        a.min(b) <= v && v <= a.max(b),
        "{what}: stats says {v}, the files said {a} then {b}"
    );
}

#[test]
fn stats_agree_with_the_cgroup_and_proc() {
    let env = Env::new();
    // limited: memory and tasks from the cgroup
    env.ok(&[
        "run",
        "-d",
        "--name",
        "lim",
        "--memory",
        "64m",
        "--pids",
        "50",
        "--",
        "sh",
        "-c",
        "sleep 1000",
    ]);
    // unlimited: no cgroup, everything from /proc
    env.ok(&[
        "run",
        "-d",
        "--name",
        "free",
        "--",
        "sh",
        "-c",
        "sleep 1000 & sleep 1000 & wait",
    ]);
    env.wait_status("lim", "running");
    env.wait_status("free", "running");
    let init = env.init_pid("free");
    env.wait_until("the sleeps to start", Duration::from_secs(10), || {
        proc_figures(init).0 == 4
    });

    // read the files just before and just after: stats' figures lie in between
    let before = cgroup_figures(&env, "lim");
    let s = stats_of(&env, "lim");
    let after = cgroup_figures(&env, "lim");
    assert_eq!(s["sources"]["memory"], "cgroup", "{s}");
    assert_eq!(s["sources"]["pids"], "cgroup", "{s}");
    between(
        "memory",
        s["memory_bytes"].as_u64().expect("memory"),
        before.0,
        after.0,
    );
    between("pids", s["pids"].as_u64().expect("pids"), before.1, after.1);
    assert_eq!(s["memory_limit"], 64 << 20);
    assert_eq!(s["pids_limit"], 50);
    assert_eq!(s["pid"], env.init_pid("lim"));

    let before = proc_figures(init);
    let s = stats_of(&env, "free");
    let after = proc_figures(init);
    assert_eq!(s["sources"]["pids"], "proc", "{s}");
    assert_eq!(s["sources"]["cpu"], "proc", "{s}");
    assert_eq!(s["memory_limit"], Value::Null);
    between(
        "tasks",
        s["pids"].as_u64().expect("pids"),
        before.0,
        after.0,
    );
    let tick_ns = 1_000_000_000 / 100;
    between(
        "cpu",
        s["cpu_ns"].as_u64().expect("cpu"),
        before.1 * tick_ns,
        after.1 * tick_ns,
    );
    assert!(s["memory_bytes"].as_u64().expect("memory") > 0);

    // the table, every running job by default
    let table = env.ok(&["stats", "--no-stream"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("\nfree ") && table.contains("\nlim "),
        "{table}"
    );
    let o = env.run(&["stats", "--no-stream", "nosuch"]);
    assert_eq!(code(&o), 125);

    // live on a terminal: the screen is redrawn until interrupted
    let live = Pty::spawn(tty_cmd(&env, &["stats", "--interval", "100ms", "lim"]));
    live.wait_for("two refreshes", Duration::from_secs(10), |t| {
        t.matches("\x1b[2J").count() >= 2 && t.contains("lim")
    });
}

// ---------------------------------------------------------------------------------------
// progress

#[test]
fn progress_shows_on_a_pty_and_never_in_a_pipe() {
    require_criu();
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "p", "--", "sleep", "1000"]);
    env.wait_status("p", "running");

    let (c, text) = Pty::spawn(tty_cmd(&env, &["checkpoint", "--leave-running", "p"]))
        .finish(Duration::from_secs(60));
    assert_eq!(c, 0, "{text}");
    assert!(text.contains("checkpointing p"), "{text:?}");
    assert!(text.contains("checkpointed generation 1"), "{text:?}");

    let o = env.run(&["checkpoint", "--leave-running", "p"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "progress in a pipe: {:?}", stderr(&o));

    // an export, then an import whose restore forks a monitor after the progress ends
    let archive = env.root().join("p.tar.zst");
    let a = archive.display().to_string();
    let (c, text) = Pty::spawn(tty_cmd(
        &env,
        &["checkpoint", "--leave-running", "--export", &a, "p"],
    ))
    .finish(Duration::from_secs(60));
    assert_eq!(c, 0, "{text}");
    assert!(text.contains("exporting p"), "{text:?}");
    let (c, text) = Pty::spawn(tty_cmd(&env, &["restore", "--import", &a, "--name", "q"]))
        .finish(Duration::from_secs(60));
    assert_eq!(c, 0, "{text}");
    assert!(text.contains("importing"), "{text:?}");
    assert!(text.contains("restoring q"), "{text:?}");
    assert!(text.contains("q: restored from generation"), "{text:?}");
    env.wait_status("q", "running");

    // --all: a counter above which the result lines appear
    let (c, text) = Pty::spawn(tty_cmd(&env, &["checkpoint", "--all", "--leave-running"]))
        .finish(Duration::from_secs(60));
    assert_eq!(c, 0, "{text}");
    assert!(text.contains("/2"), "{text:?}");
    assert!(
        text.contains("p: checkpointed generation") && text.contains("q: checkpointed generation"),
        "{text:?}"
    );
    let o = env.run(&["checkpoint", "--all", "--leave-running"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "progress in a pipe: {:?}", stderr(&o));
    // -q on a terminal: nothing at all
    let (c, text) = Pty::spawn(tty_cmd(&env, &["checkpoint", "-q", "--leave-running", "p"]))
        .finish(Duration::from_secs(60));
    assert_eq!(c, 0, "{text}");
    assert!(text.is_empty(), "{text:?}");
}

// ---------------------------------------------------------------------------------------
// diagnostics

#[test]
fn monitor_log_has_levels_and_times_and_inspect_points_to_it() {
    let env = Env::new();
    let mut c = env.cmd(&["run", "-d", "--name", "d", "--", "sleep", "1000"]);
    c.env("STASIS_LOG", "debug");
    let o = c.output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    env.wait_status("d", "running");
    let i = env.inspect("d");
    let path = i["monitor_log"].as_str().expect("monitor_log").to_string();
    assert!(env.ok(&["inspect", "d"]).contains(&path));
    env.wait_until("a debug line", Duration::from_secs(10), || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("DEBUG"))
    });
    let text = std::fs::read_to_string(&path).expect("monitor.log");
    let first = text.lines().next().expect("a line");
    // 2026-05-01T12:00:00.123456Z  INFO started: init pid 123
    assert!(
        first.as_bytes().get(4) == Some(&b'-') && first.contains('Z'),
        "{first}"
    );
    assert!(
        text.contains(" INFO ") && text.contains("started: init pid"),
        "{text}"
    );
    // the default level leaves the debug lines out
    env.ok(&["run", "-d", "--name", "i", "--", "sleep", "1000"]);
    env.wait_status("i", "running");
    let p = env.inspect("i")["monitor_log"]
        .as_str()
        .expect("path")
        .to_string();
    env.wait_until("an info line", Duration::from_secs(10), || {
        std::fs::read_to_string(&p).is_ok_and(|t| t.contains("started"))
    });
    assert!(!std::fs::read_to_string(&p).expect("log").contains("DEBUG"));
}

// ---------------------------------------------------------------------------------------
// JSON shapes

#[test]
fn json_field_names_stay_stable() {
    require_criu();
    let env = Env::new();
    let mut failures = vec![];
    env.ok(&[
        "run",
        "-d",
        "--name",
        "j",
        "--memory",
        "64m",
        "--",
        "sh",
        "-c",
        "sleep 1000",
    ]);
    env.wait_status("j", "running");
    env.ok(&["exec", "-d", "j", "--", "true"]);
    env.wait_until("the session to exit", Duration::from_secs(10), || {
        json(&env, &["exec", "--list", "--format", "json", "j"])[0]["status"] == "exited"
    });
    let ck = json(
        &env,
        &["checkpoint", "--leave-running", "--format", "json", "j"],
    );
    check_shape("checkpoint", &ck, &mut failures);
    check_shape(
        "checkpoint-all",
        &json(
            &env,
            &["checkpoint", "--all", "--leave-running", "--format", "json"],
        ),
        &mut failures,
    );
    env.ok(&["checkpoint", "j"]);
    check_shape(
        "restore",
        &json(&env, &["restore", "--format", "json", "j"]),
        &mut failures,
    );
    env.wait_status("j", "running");
    check_shape(
        "ps",
        &json(&env, &["ps", "--format", "json"]),
        &mut failures,
    );
    check_shape("inspect", &env.inspect("j"), &mut failures);
    check_shape(
        "checkpoints",
        &json(&env, &["checkpoints", "--format", "json", "j"]),
        &mut failures,
    );
    // a job that exited adds an event with a code: j's and x's together have every field
    env.run(&["run", "--name", "x", "--", "sh", "-c", "exit 3"]);
    let mut events = json(&env, &["events", "--format", "json", "j"]);
    let more = json(&env, &["events", "--format", "json", "x"]);
    if let (Some(a), Some(b)) = (events.as_array_mut(), more.as_array()) {
        a.extend(b.iter().cloned());
    }
    check_shape("events", &events, &mut failures);
    check_shape(
        "exec-list",
        &json(&env, &["exec", "--list", "--format", "json", "j"]),
        &mut failures,
    );
    check_shape(
        "stats",
        &json(&env, &["stats", "--no-stream", "--format", "json", "j"]),
        &mut failures,
    );
    // check fails on a host that lacks something; its shape is the same
    let o = env.run(&["check", "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("check json");
    check_shape("check", &v, &mut failures);
    // check NAME: a job with an established connection has an obstacle, and a note with
    // --tcp-established; the shape of both together
    env.ok(&[
        "run", "-d", "--network", "none", "--name", "k", "--", "python3", "-c",
        "import socket, time\nl=socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\nc=socket.create_connection(l.getsockname()); a, _=l.accept()\nprint('ready', flush=True); time.sleep(1000)",
    ]);
    env.wait_until("k to be ready", Duration::from_secs(20), || {
        String::from_utf8_lossy(&env.logs("k")).contains("ready")
    });
    let o = env.run(&["check", "--format", "json", "k"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut job: Value = serde_json::from_slice(&o.stdout).expect("check NAME json");
    let o = env.run(&["check", "--tcp-established", "--format", "json", "k"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let with: Value = serde_json::from_slice(&o.stdout).expect("check NAME json");
    job["notes"] = with["notes"].clone();
    check_shape("check-job", &job, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_shape_of_a_value_names_every_path() {
    let v: Value =
        serde_json::from_str(r#"[{"a": 1, "b": {"c": null}}, {"a": 2.5, "b": {"c": "x"}}]"#)
            .expect("json");
    assert_eq!(
        shape(&v),
        ".: array\n[]: object\n[].a: number\n[].b: object\n[].b.c: null|string\n"
    );
}

/// Issue 12: every flag and argument of every command (the hidden `host-facts` too) has help
/// text in `--help`, so `man stasis-CMD` documents it as well. An entry with help has its
/// text on its own line (clap's short format) or on the next, deeper-indented one.
#[test]
fn every_flag_and_argument_has_help() {
    let help = |args: &[&str]| {
        let o = Command::new(bin())
            .args(args)
            .env_clear()
            .output()
            .expect("stasis --help");
        assert!(o.status.success(), "stasis {}", args.join(" "));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let mut cmds: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(cmds.len() >= 19, "commands: {cmds:?}");
    cmds.push("host-facts".into());
    let mut bare = vec![];
    let mut entries = 0;
    for cmd in &cmds {
        let text = help(&[cmd, "--help"]);
        let lines: Vec<&str> = text.lines().collect();
        let mut section = "";
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with(' ') && l.ends_with(':') {
                section = l;
                continue;
            }
            if !matches!(section, "Arguments:" | "Options:") {
                continue;
            }
            // an entry: `  -s, --long <V>`, `      --long`, `  <ARG>`, `  [ARG]...`
            let t = l.trim_start();
            let indent = l.len() - t.len();
            if !((2..=6).contains(&indent) && t.starts_with(['-', '<', '['])) {
                continue;
            }
            entries += 1;
            // the short format has the text on the entry's line, after two spaces
            let inline = t
                .split_once("  ")
                .is_some_and(|(_, t)| !t.trim().is_empty());
            let described = inline
                || lines
                    .get(i + 1)
                    .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            if !described {
                bare.push(format!("stasis {cmd}: {}", l.trim()));
            }
        }
    }
    assert!(
        entries > 100,
        "only {entries} entries parsed: the help format changed?"
    );
    assert!(bare.is_empty(), "without help text:\n{}", bare.join("\n"));
}
