//! `stasis run` and the workload lifecycle, end to end, as root: exit codes, signals,
//! isolation, reaping, output integrity, limits, a lost monitor, bad input.

mod common;

use common::*;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn exit_table() {
    let env = Env::new();
    for (cmd, want) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 32"], 32),
        (vec!["/no/such"], 127),
        (vec!["/etc"], 126),
    ] {
        let mut args = vec!["run", "--rm", "--"];
        args.extend(cmd.iter().copied());
        let o = env.run(&args);
        assert_eq!(code(&o), want, "{cmd:?}: {}", stderr(&o));
        if want >= 126 {
            let e = stderr(&o);
            assert_eq!(e.lines().count(), 1, "one-line message expected: {e:?}");
            assert!(e.contains(cmd[0]), "message should name the command: {e:?}");
        }
    }
    let o = env.run(&["run", "--"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("command is empty"), "{}", stderr(&o));
    // `run -d` of a command that cannot start fails right away with the same code.
    let o = env.run(&["run", "-d", "--name", "nf", "--", "/no/such"]);
    assert_eq!(code(&o), 127, "{}", stderr(&o));
    assert_eq!(env.inspect("nf")["state"]["exit"]["code"], 127);
}

/// `run --rm` returns once the job is gone: no record, no socket, and the name is free for
/// the next `run` at once (before, the record went after the client had its exit, and a
/// second `run --rm --name` right behind the first could find the name taken).
#[test]
fn run_rm_returns_with_the_name_free_and_nothing_left() {
    let env = Env::new();
    for i in 0..30 {
        let o = env.run(&["run", "--rm", "--name", "again", "--", "sh", "-c", "exit 3"]);
        assert_eq!(code(&o), 3, "run {i}: {}", stderr(&o));
        for sub in ["workloads", "run"] {
            let left: Vec<_> = std::fs::read_dir(env.root().join(sub))
                .expect("read the state root")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert!(left.is_empty(), "run {i} left {left:?} in {sub}/");
        }
    }
}

/// Signals whose default action ends a process.
const KILLING: [i32; 23] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27, 29, 30, 31,
];

#[test]
fn killed_by_signal_gives_128_plus_n_from_run_and_wait() {
    let env = Env::new();
    // no core dumps: they are slow and land who knows where
    for sig in KILLING {
        let name = format!("s{sig}");
        let mut run = env
            .cmd(&[
                "run", "--name", &name, "--ulimit", "core=0", "--", "sleep", "1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        env.wait_until(&format!("{name} to run"), Duration::from_secs(30), || {
            if let Ok(Some(st)) = run.try_wait() {
                let mut e = String::new();
                let _ = std::io::Read::read_to_string(run.stderr.as_mut().expect("stderr"), &mut e);
                panic!(
                    "run of {name} ended early ({st}): {e} / {}",
                    env.ok(&["inspect", &name])
                );
            }
            env.status(&name) == "running"
        });
        env.ok(&["kill", "-s", &sig.to_string(), &name]);
        let out = wait_output(run, Duration::from_secs(20), "run");
        assert_eq!(
            code(&out),
            128 + sig,
            "signal {sig} via run: {}",
            stderr(&out)
        );
        let w = env.run(&["wait", &name]);
        assert_eq!(code(&w), 128 + sig, "signal {sig} via wait");
        assert_eq!(stdout(&w).trim(), (128 + sig).to_string());
        env.ok(&["rm", &name]);
    }
}

#[test]
fn signal_names_and_numbers_reach_a_detached_workload() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "w", "--", "sleep", "1000"]);
    env.ok(&["kill", "-s", "SIGUSR2", "w"]);
    let w = env.run(&["wait", "w"]);
    assert_eq!(code(&w), 128 + 12);
}

const TRAPPER: &str = "for s in INT TERM USR1 USR2 HUP; do trap \"echo got-$s\" $s; done; echo ready; while :; do sleep 0.05; done";

#[test]
fn signals_sent_to_the_client_reach_the_workload() {
    let env = Env::new();
    let client = env
        .cmd(&["run", "--name", "t", "--", "sh", "-c", TRAPPER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log_has = |s: &str| String::from_utf8_lossy(&env.logs("t")).contains(s);
    env.wait_until("ready", Duration::from_secs(10), || log_has("ready"));
    let pid = nix::unistd::Pid::from_raw(client.id() as i32);
    use nix::sys::signal::{kill, Signal::*};
    for (sig, name) in [
        (SIGINT, "INT"),
        (SIGTERM, "TERM"),
        (SIGUSR1, "USR1"),
        (SIGUSR2, "USR2"),
        (SIGHUP, "HUP"),
    ] {
        kill(pid, sig).expect("signal the client");
        env.wait_until(&format!("got-{name}"), Duration::from_secs(10), || {
            log_has(&format!("got-{name}"))
        });
    }
    env.ok(&["kill", "t"]);
    let out = wait_output(client, Duration::from_secs(10), "client");
    assert_eq!(code(&out), 137);
    let text = stdout(&out);
    for s in ["got-INT", "got-TERM", "got-USR1", "got-USR2", "got-HUP"] {
        assert!(text.contains(s), "client output lacks {s}: {text:?}");
    }
}

#[test]
fn signals_sent_with_stasis_kill_reach_the_workload() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "t", "--", "sh", "-c", TRAPPER]);
    let log_has = |s: &str| String::from_utf8_lossy(&env.logs("t")).contains(s);
    env.wait_until("ready", Duration::from_secs(10), || log_has("ready"));
    for name in ["INT", "TERM", "USR1", "USR2", "HUP"] {
        env.ok(&["kill", "-s", name, "t"]);
        env.wait_until(&format!("got-{name}"), Duration::from_secs(10), || {
            log_has(&format!("got-{name}"))
        });
    }
    env.ok(&["kill", "-s", "KILL", "t"]);
    assert_eq!(code(&env.run(&["wait", "t"])), 137);
}

#[test]
fn isolation_pid_namespace_hostname_fds_environment() {
    let env = Env::new();
    let script = "echo pid=$$; grep NSpid /proc/self/status; hostname; echo fds=$(ls /proc/self/fd | tr '\\n' ' '); env";
    let out = env
        .cmd(&[
            "run",
            "--rm",
            "--hostname",
            "box",
            "-e",
            "DECLARED=1",
            "--env-pass",
            "PASSED",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("SECRET_OF_CALLER", "leak")
        .env("PASSED", "yes")
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    // PID 1 is init; the shell is the first process it started.
    assert!(text.contains("pid=2\n"), "{text}");
    // The container's /proc is its own: it shows the pid in the container's namespace only.
    let nspid = text
        .lines()
        .find(|l| l.starts_with("NSpid"))
        .expect("NSpid line");
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        vec!["NSpid:", "3"],
        "own PID namespace and /proc expected: {nspid}"
    );
    assert!(text.lines().any(|l| l == "box"), "hostname: {text}");
    // ls's own fds: 0-2 and the directory it reads; nothing else leaked in.
    let fds = text
        .lines()
        .find(|l| l.starts_with("fds="))
        .expect("fds line");
    assert_eq!(fds.trim(), "fds=0 1 2 3", "{text}");
    assert!(
        !text.contains("SECRET_OF_CALLER"),
        "caller environment leaked: {text}"
    );
    assert!(text.contains("PASSED=yes"), "{text}");
    assert!(text.contains("DECLARED=1"), "{text}");
    assert!(text.contains("PATH=/usr/local/sbin"), "{text}");
    assert!(text.contains("HOME=/root"), "{text}");
}

/// Every process of a workload: its init and all of init's descendants.
fn container_pids(env: &Env, name: &str) -> Vec<i32> {
    let Some(init) = env.inspect(name)["state"]["init"]["pid"]
        .as_i64()
        .map(|p| p as i32)
    else {
        return vec![];
    };
    let mut all = vec![init];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let kids =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        all.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
        i += 1;
    }
    all
}

#[test]
fn orphans_are_reaped_and_stop_ends_the_whole_tree() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "z",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4; do (sleep 0.1 &); (sleep 1000 &); done; sleep 1000",
    ]);
    // The short-lived orphans exit and are reaped (no zombie left): init, the shell, its
    // sleep and the four long orphans remain. A reaper that never reaps times this out.
    let pids = env.wait_for(
        "the orphans to be reaped, with no zombie left",
        Duration::from_secs(10),
        || {
            let pids = container_pids(&env, "z");
            let zombies: Vec<String> = pids
                .iter()
                .filter_map(|p| {
                    let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let state = st.rsplit(')').next()?.split_whitespace().next()?;
                    (state == "Z").then(|| st.clone())
                })
                .collect();
            if pids.len() == 7 && zombies.is_empty() {
                Ok(pids)
            } else {
                Err(format!(
                    "{} processes {pids:?}, zombies {zombies:?}",
                    pids.len()
                ))
            }
        },
    );
    let o = env.run(&["stop", "-t", "2", "z"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true),
            "pid {p} survived stop"
        );
    }
    assert_eq!(env.status("z"), "exited");
    assert_eq!(env.inspect("z")["state"]["exit"]["code"], 143);
}

#[test]
fn stop_kills_after_the_timeout() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.05; done",
    ]);
    env.wait_status("stubborn", "running");
    let t0 = Instant::now();
    env.ok(&["stop", "-t", "1", "stubborn"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "stop returned before its timeout"
    );
    assert_eq!(env.inspect("stubborn")["state"]["exit"]["code"], 137);
}

fn data_file(dir: &std::path::Path, size: usize) -> (std::path::PathBuf, String) {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9E3779B97F4A7C15 ^ size as u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let p = dir.join(format!("data-{size}"));
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(&data))
        .expect("write data");
    (p, sha256(&data))
}

#[test]
fn output_arrives_byte_for_byte_in_logs_and_the_client() {
    let env = Env::new();
    for size in [20 * 1024, 32 << 20] {
        let (path, want) = data_file(env.root(), size);
        let name = format!("o{size}");
        let out = env.run(&[
            "run",
            "--name",
            &name,
            "--",
            "cat",
            path.to_str().expect("path"),
        ]);
        assert_eq!(code(&out), 0);
        assert_eq!(
            out.stdout.len(),
            size,
            "client got {} of {size} bytes",
            out.stdout.len()
        );
        assert_eq!(sha256(&out.stdout), want, "client output differs");
        let logged = env.logs(&name);
        assert_eq!(
            sha256(&logged),
            want,
            "log differs ({} bytes)",
            logged.len()
        );
    }
}

#[test]
fn stderr_stays_stderr() {
    let env = Env::new();
    let out = env.run(&[
        "run",
        "--name",
        "e",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    let l = env.cmd(&["logs", "e"]).output().expect("logs");
    assert_eq!(stdout(&l), "out\n");
    assert_eq!(stderr(&l), "err\n");
}

#[test]
fn a_background_writer_never_hangs_the_client() {
    let env = Env::new();
    let child = env
        .cmd(&["run", "--rm", "--", "sh", "-c", "echo done; yes &"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // the acceptance: back within 2 s, with "done"
    let out = wait_output(
        child,
        Duration::from_secs(2),
        "run with a background writer",
    );
    assert_eq!(code(&out), 0);
    assert!(
        out.stdout.starts_with(b"done\n"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(40)])
    );
}

#[test]
fn stdin_flows_with_dash_i() {
    let env = Env::new();
    let mut child = env
        .cmd(&["run", "--rm", "-i", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let data: Vec<u8> = (0..(4 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    let want = sha256(&data);
    let mut w = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        w.write_all(&data).expect("feed");
    });
    let out = wait_output(child, Duration::from_secs(30), "sha256sum");
    writer.join().expect("writer");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&want),
        "{} vs {want}",
        stdout(&out)
    );
}

#[test]
fn memory_limit_ooms_and_inspect_says_so() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--name",
        "oom",
        "--memory",
        "32m",
        "--",
        "python3",
        "-c",
        "b = bytearray(256 << 20); print(len(b))",
    ]);
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    let i = env.inspect("oom");
    assert_eq!(i["state"]["exit"]["oom_killed"], true, "{i}");
    let text = env.ok(&["inspect", "oom"]);
    assert!(text.contains("OOM"), "{text}");
}

#[test]
fn pids_limit_makes_fork_fail() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--name",
        "p",
        "--pids",
        "6",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; wait; echo finished",
    ]);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        text.to_lowercase().contains("fork"),
        "no fork failure: {text}"
    );
}

#[test]
fn a_killed_monitor_is_reported_and_rm_f_cleans_up() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "m", "--", "sleep", "1000"]);
    let i = env.inspect("m");
    let mon = i["state"]["monitor"]["pid"].as_i64().expect("monitor pid") as i32;
    let init = env.init_pid("m");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill monitor");
    env.wait_until("the monitor to die", Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{mon}")).exists()
            || std::fs::read_to_string(format!("/proc/{mon}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    });
    let ps = env.ok(&["ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&ps).expect("json");
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "m"))
        .expect("m listed")
        .clone();
    assert_eq!(row["status"], "running", "{row}");
    assert_eq!(row["monitor"], false, "{row}");
    assert!(
        row["note"].as_str().unwrap_or("").contains("monitor lost"),
        "{row}"
    );
    // the truth after the workload dies too: exited, status unknown
    let o = env.run(&["rm", "-f", "m"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !std::path::Path::new(&format!("/proc/{init}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{init}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true),
        "init {init} survived rm -f"
    );
    assert!(!env.root().join("workloads/m").exists());
}

#[test]
fn a_workload_that_dies_without_its_monitor_is_marked() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "m", "--", "sleep", "1000"]);
    let mon = env.monitor("m");
    let init = env.init_pid("m");
    use nix::sys::signal::{kill, Signal::SIGKILL};
    kill(nix::unistd::Pid::from_raw(mon.pid), SIGKILL).expect("kill monitor");
    // Only a monitor that is really gone cannot see init die and record the exit itself.
    env.wait_monitor_gone(&mon);
    kill(nix::unistd::Pid::from_raw(init), SIGKILL).expect("kill init");
    env.wait_until("init to go", Duration::from_secs(5), || {
        env.status("m") == "exited"
    });
    let st = env.inspect("m")["state"].clone();
    assert!(
        st["exit"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("monitor lost"),
        "{st}"
    );
    assert!(env.ok(&["ps", "-a"]).contains("m "));
}

fn assert_nothing_left(env: &Env) {
    let names: Vec<_> = std::fs::read_dir(env.root().join("workloads"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "left behind: {names:?}");
}

fn assert_one_line_125(o: &std::process::Output, needle: &str) {
    assert_eq!(code(o), 125, "{}", stderr(o));
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e:?}");
    assert!(e.contains(needle), "{e:?} does not name {needle:?}");
}

#[test]
fn bad_input_is_one_line_125_and_leaves_nothing() {
    let env = Env::new();
    let spec = env.root().join("job.yaml");
    std::fs::write(&spec, "command: [true\n  oops: :\n").expect("write");
    assert_one_line_125(
        &env.run(&["run", "-f", spec.to_str().expect("p")]),
        "job.yaml",
    );
    std::fs::write(&spec, "command: [true]\nmemroy: 1g\n").expect("write");
    let o = env.run(&["run", "-f", spec.to_str().expect("p")]);
    assert_one_line_125(&o, "memroy");
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    assert_one_line_125(&env.run(&["run", "--name", "a/b", "--", "true"]), "a/b");
    assert_one_line_125(&env.run(&["run", "--name", "..", "--", "true"]), "..");
    assert_one_line_125(
        &env.run(&["run", "--rootfs", "/no/such/rootfs", "--", "true"]),
        "/no/such/rootfs",
    );
    assert_one_line_125(
        &env.run(&["run", "--user", "nosuchuser", "--", "true"]),
        "nosuchuser",
    );
    for verb in [
        vec!["kill", "ghost"],
        vec!["stop", "ghost"],
        vec!["wait", "ghost"],
        vec!["inspect", "ghost"],
        vec!["logs", "ghost"],
        vec!["rm", "ghost"],
        vec!["checkpoint", "ghost"],
        vec!["restore", "ghost"],
    ] {
        assert_one_line_125(&env.run(&verb), "ghost");
    }
    assert_nothing_left(&env);
    assert!(cgroup_dirs_of(env.root()).is_empty());
    env.ok(&["run", "-d", "--name", "dup", "--", "sleep", "100"]);
    assert_one_line_125(&env.run(&["run", "--name", "dup", "--", "true"]), "dup");
}

#[test]
fn spec_file_and_flags_override_it() {
    let env = Env::new();
    let spec = env.root().join("job.yaml");
    std::fs::write(&spec, "# a job\nname: fromfile\ncommand: [sh, -c, 'echo $A $B; hostname']\nenv: {A: file, B: file}\nhostname: filehost\n").expect("write");
    let o = env.run(&[
        "run",
        "-f",
        spec.to_str().expect("p"),
        "-e",
        "B=flag",
        "--hostname",
        "flaghost",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "file flag\nflaghost\n");
    assert_eq!(env.status("fromfile"), "exited");
}

#[test]
fn rm_refuses_a_running_workload_without_force() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "r", "--", "sleep", "100"]);
    let o = env.run(&["rm", "r"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));
    env.ok(&["rm", "-f", "r"]);
    assert_nothing_left(&env);
}

#[test]
fn user_and_workdir_and_umask() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "-w",
        "/tmp",
        "--umask",
        "077",
        "--",
        "sh",
        "-c",
        "id -u; id -g; pwd; umask",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "1000\n1000\n/tmp\n0077\n");
}

#[test]
fn capabilities_are_reduced_and_no_new_privs_set() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--rm",
        "--",
        "sh",
        "-c",
        "grep -E '^(Cap(Bnd|Eff|Prm|Inh)|NoNewPrivs)' /proc/self/status",
    ]);
    let text = stdout(&o);
    let cap = |text: &str, k: &str| {
        u64::from_str_radix(
            text.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("0"),
            16,
        )
        .unwrap_or(0)
    };
    // the default set lacks CAP_SYS_ADMIN (21)
    assert_eq!(cap(&text, "CapBnd:") & (1 << 21), 0, "{text}");
    assert_ne!(cap(&text, "CapEff:") & 1, 0, "CAP_CHOWN expected: {text}");
    // exactly docker's default set, in the bounding, effective, permitted and inheritable sets
    for set in ["CapBnd:", "CapEff:", "CapPrm:", "CapInh:"] {
        assert_eq!(cap(&text, set), 0xa804_25fb, "{set} {text}");
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    let o = env.run(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "--no-new-privs",
        "false",
        "--",
        "sh",
        "-c",
        "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status",
    ]);
    let text = stdout(&o);
    assert_ne!(cap(&text, "CapBnd:") & (1 << 21), 0, "{text}");
    assert!(text.contains("NoNewPrivs:\t0"), "{text}");
}

#[test]
fn ulimits_apply() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=512:1024",
        "--",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn",
    ]);
    assert_eq!(stdout(&o), "512\n1024\n", "{}", stderr(&o));
}

#[test]
fn network_none_has_only_loopback_up() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags",
    ]);
    let text = stdout(&o);
    // /sys is the host's without a mount namespace; the namespace's own view is in /proc.
    let o2 = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--",
        "cat",
        "/proc/net/dev",
    ]);
    let dev = stdout(&o2);
    let ifs: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifs, vec!["lo"], "{dev} / {text}");
    let o3 = env.run(&["run", "--rm", "--network", "none", "--", "python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); c=socket.create_connection(s.getsockname()); print('lo up')"]);
    assert_eq!(stdout(&o3), "lo up\n", "{}", stderr(&o3));
}

#[test]
fn a_tty_workload_sees_a_terminal() {
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--rm",
        "-t",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo tty",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "tty");
}

#[test]
fn rootfs_with_volumes() {
    let env = Env::new();
    let rootfs = busybox_rootfs(env.root());
    let vol = env.root().join("vol");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::write(vol.join("hello"), "from the host\n").expect("hello");
    let v = format!("{}:/data:ro", vol.display());
    let o = env.run(&[
        "run",
        "--rm",
        "--rootfs",
        rootfs.to_str().expect("p"),
        "-v",
        &v,
        "--",
        "/bin/sh",
        "-c",
        "cat /data/hello; ls /; ps | wc -l; touch /data/x 2>/dev/null || echo read-only",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("from the host\n"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(
        !text.contains("vmlinuz") && !text.contains("lost+found"),
        "host root visible: {text}"
    );
}

#[test]
fn logs_follow_until_the_workload_ends() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "f",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.2; done",
    ]);
    let child = env
        .cmd(&["logs", "-f", "f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let o = wait_output(child, Duration::from_secs(10), "logs -f");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "line1\nline2\nline3\n");
}

#[test]
fn check_reports_what_the_host_has() {
    require_criu();
    let env = Env::new();
    let o = env.run(&["check"]);
    let text = stdout(&o);
    assert_eq!(code(&o), 0, "{text}");
    for what in ["kernel", "cgroup", "criu check", "init store"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(what)),
            "no ok line for {what}: {text}"
        );
    }
    // with a CRIU that does not exist, check says so and fails
    let o = env
        .cmd(&["check"])
        .env("STASIS_CRIU", "/no/such/criu")
        .output()
        .expect("check");
    assert_eq!(code(&o), 125);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("criu")),
        "{}",
        stdout(&o)
    );
}
