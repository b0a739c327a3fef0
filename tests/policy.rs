//! Policies end to end, as root with the real CRIU: periodic checkpoints, restore-on-crash
//! with fallbacks, back-off and a limit, user stops, maintenance (`--all`), host shutdown.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn setup() -> Env {
    require_criu();
    Env::new()
}

fn spec_file(env: &Env, name: &str, yaml: &str) -> String {
    let p = env.root().join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).expect("write spec");
    p.to_str().expect("path").to_string()
}

fn counter_spec(name: &str, extra: &str) -> String {
    format!("name: {name}\ncommand: [sh, -c, '{COUNTER}']\n{extra}")
}

fn events(env: &Env, name: &str) -> Vec<Value> {
    let out = env.ok(&["events", "--format", "json", name]);
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn kinds(ev: &[Value], kind: &str) -> Vec<Value> {
    ev.iter().filter(|e| e["kind"] == kind).cloned().collect()
}

/// The workload's main process (init's only child), as seen from the host.
fn main_pid(env: &Env, name: &str) -> i32 {
    let init = env.init_pid(name);
    let kids =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    kids.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no main process under init {init}"))
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

/// (stream, payload) of every record of a workload's log, in order.
fn log_records(env: &Env, name: &str) -> Vec<(stasis::store::log::Stream, Vec<u8>)> {
    let mut r = stasis::store::log::LogReader::open(
        &env.root().join("workloads").join(name).join("log"),
        0,
    )
    .expect("log");
    let mut v = vec![];
    while let Some(rec) = r.next_record().expect("record") {
        v.push((rec.stream, rec.data));
    }
    v
}

/// The last counter value written before `offset` in the log.
fn value_before(env: &Env, name: &str, offset: u64) -> Option<u64> {
    let mut r = stasis::store::log::LogReader::open(
        &env.root().join("workloads").join(name).join("log"),
        0,
    )
    .expect("log");
    let mut out = Vec::new();
    while r.offset() < offset {
        match r.next_record().expect("record") {
            Some(rec) if rec.stream == stasis::store::log::Stream::Stdout => out.extend(rec.data),
            Some(_) => {}
            None => break,
        }
    }
    counter_values(&out).last().copied()
}

fn manifest(env: &Env, name: &str, gen: u64) -> Option<Value> {
    let p = env
        .root()
        .join(format!("workloads/{name}/checkpoints/{gen}/manifest.json"));
    std::fs::read(p)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
}

fn newest_generation(env: &Env, name: &str) -> u64 {
    let out = env.ok(&["checkpoints", "--format", "json", name]);
    let v: Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .and_then(|a| a.last())
        .and_then(|g| g["generation"].as_u64())
        .unwrap_or(0)
}

#[test]
fn twenty_crashes_each_come_back_from_a_generation() {
    let env = setup();
    let spec = spec_file(&env, "c", &counter_spec("c", "checkpoint: {every: 300ms, keep: 3}\non_exit: {policy: restore, backoff: {initial: 0s, max: 1s}}\n"));
    env.ok(&["run", "-d", "-f", &spec]);
    let mut seed: u64 =
        Instant::now().elapsed().as_nanos() as u64 ^ 0x2545F4914F6CDD1D ^ std::process::id() as u64;
    for round in 1..=20u64 {
        // wait for a checkpoint taken by this incarnation (progress), at a random moment
        let base = newest_generation(&env, "c");
        env.wait_until("a new checkpoint", Duration::from_secs(20), || {
            newest_generation(&env, "c") > base
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 250));
        let gen = newest_generation(&env, "c");
        let m = manifest(&env, "c", gen).expect("manifest of the newest generation");
        let floor = value_before(&env, "c", m["log_offset"].as_u64().expect("offset"))
            .expect("a value before the checkpoint");
        let restores_before = env.inspect("c")["state"]["restores"].as_u64().unwrap_or(0);
        let records_before = log_records(&env, "c").len();
        kill9(main_pid(&env, "c"));
        env.wait_until(
            &format!("restore #{round}"),
            Duration::from_secs(20),
            || {
                env.inspect("c")["state"]["restores"].as_u64().unwrap_or(0) > restores_before
                    && env.status("c") == "running"
            },
        );
        // the first value after the restore continues the restored generation's count
        let mut first_after = None;
        env.wait_until("output after the restore", Duration::from_secs(10), || {
            let recs = log_records(&env, "c");
            let marker = recs[records_before..]
                .iter()
                .position(|(s, _)| *s == stasis::store::log::Stream::Marker);
            if let Some(i) = marker {
                let after: Vec<u8> = recs[records_before + i..]
                    .iter()
                    .filter(|(s, _)| *s == stasis::store::log::Stream::Stdout)
                    .flat_map(|(_, d)| d.clone())
                    .collect();
                first_after = counter_values(&after).first().copied();
            }
            first_after.is_some()
        });
        let first_after = first_after.expect("value");
        // `floor` is the last value logged before the generation's log offset, which for a
        // job left running may include a line written just after CRIU thawed it (in flight):
        // the restored job may print that one again, never anything older.
        assert!(first_after >= floor, "round {round}: counter went back to {first_after}, below the last checkpointed value {floor}");
    }
    let st = env.inspect("c")["state"].clone();
    assert_eq!(st["restores"], 20, "{st}");
    assert_eq!(kinds(&events(&env, "c"), "restore").len(), 20);
}

#[test]
fn a_corrupt_newest_generation_falls_back_to_the_one_before() {
    let env = setup();
    let spec = spec_file(
        &env,
        "f",
        &counter_spec(
            "f",
            "on_exit: {policy: restore, backoff: {initial: 0s, max: 1s}}\n",
        ),
    );
    env.ok(&["run", "-d", "-f", &spec]);
    env.wait_until("output", Duration::from_secs(10), || {
        counter_values(&env.logs("f")).len() > 3
    });
    env.ok(&["checkpoint", "--leave-running", "f"]);
    env.ok(&["checkpoint", "--leave-running", "f"]);
    corrupt(&env.root().join("workloads/f/checkpoints/2"));
    kill9(main_pid(&env, "f"));
    env.wait_until("the restore", Duration::from_secs(20), || {
        env.inspect("f")["state"]["restores"] == 1
    });
    let ev = events(&env, "f");
    let failed = kinds(&ev, "restore-failed");
    assert_eq!(failed.len(), 1, "{ev:?}");
    assert_eq!(failed[0]["generation"], 2);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("corrupt"),
        "{failed:?}"
    );
    let restored = kinds(&ev, "restore");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["generation"], 1);
    assert!(
        restored[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("crash"),
        "{restored:?}"
    );
    assert_eq!(env.status("f"), "running");
}

fn corrupt(gen: &Path) {
    let core = std::fs::read_dir(gen)
        .expect("gen")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("core-"))
        .expect("core image")
        .path();
    let mut d = std::fs::read(&core).expect("read");
    let n = d.len() / 2;
    d[n] ^= 0x55;
    std::fs::write(&core, d).expect("write");
}

#[test]
fn every_generation_corrupt_means_cold_start_or_failed() {
    let env = setup();
    for (name, cold) in [("cold", true), ("nocold", false)] {
        let spec = spec_file(&env, name, &counter_spec(name, &format!("on_exit: {{policy: restore, cold_start: {cold}, max_attempts: 2, backoff: {{initial: 0s, max: 1s}}}}\n")));
        env.ok(&["run", "-d", "-f", &spec]);
        env.wait_until("output", Duration::from_secs(10), || {
            counter_values(&env.logs(name)).len() > 10
        });
        env.ok(&["checkpoint", "--leave-running", name]);
        env.ok(&["checkpoint", "--leave-running", name]);
        for g in ["1", "2"] {
            corrupt(&env.root().join(format!("workloads/{name}/checkpoints/{g}")));
        }
        kill9(main_pid(&env, name));
        if cold {
            env.wait_until("a cold start", Duration::from_secs(20), || {
                env.inspect(name)["state"]["restarts"] == 1 && env.status(name) == "running"
            });
            assert_eq!(kinds(&events(&env, name), "restore-failed").len(), 2);
            // counting starts again from zero after the newest output
            env.wait_until("fresh output", Duration::from_secs(10), || {
                let v = counter_values(&env.logs(name));
                v.len() > 2 && v.windows(2).any(|w| w[1] == 0)
            });
        } else {
            env.wait_status(name, "failed");
            let st = env.inspect(name)["state"].clone();
            assert!(
                st["error"].as_str().unwrap_or("").contains("cold start"),
                "{st}"
            );
            assert_eq!(st["restarts"], 0);
        }
    }
}

#[test]
fn an_instant_crasher_ends_failed_with_growing_back_off() {
    let env = setup();
    let spec = spec_file(&env, "crash", "name: crash\ncommand: [sh, -c, 'exit 7']\non_exit: {policy: restart, max_attempts: 3, backoff: {initial: 200ms, max: 1s}}\n");
    let t0 = Instant::now();
    env.ok(&["run", "-d", "-f", &spec]);
    env.wait_status("crash", "failed");
    assert!(
        t0.elapsed() >= Duration::from_millis(200 + 400 + 800),
        "back-off too short: {:?}",
        t0.elapsed()
    );
    let ev = events(&env, "crash");
    let exits: Vec<u64> = kinds(&ev, "exit")
        .iter()
        .map(|e| e["at"].as_u64().expect("at"))
        .collect();
    let restarts: Vec<u64> = kinds(&ev, "restart")
        .iter()
        .map(|e| e["at"].as_u64().expect("at"))
        .collect();
    assert_eq!(restarts.len(), 3, "{ev:?}");
    assert_eq!(exits.len(), 4, "{ev:?}");
    let gaps: Vec<u64> = restarts.iter().zip(&exits).map(|(r, e)| r - e).collect();
    for (gap, want) in gaps.iter().zip([200u64, 400, 800]) {
        assert!(*gap >= want && *gap < want + 600, "back-off gaps {gaps:?}");
    }
    let st = env.inspect("crash")["state"].clone();
    assert_eq!(st["exit"]["code"], 7);
    assert!(
        st["error"].as_str().unwrap_or("").contains("3 attempts"),
        "{st}"
    );
    assert_eq!(kinds(&ev, "failed").len(), 1);
    assert_eq!(code(&env.run(&["wait", "crash"])), 7);
}

#[test]
fn user_stop_and_kill_never_trigger_a_restore() {
    let env = setup();
    for (name, verb) in [
        ("s", vec!["stop", "-t", "2"]),
        ("k", vec!["kill", "-s", "KILL"]),
        ("t", vec!["kill", "-s", "TERM"]),
    ] {
        let spec = spec_file(&env, name, &counter_spec(name, "checkpoint: {every: 200ms}\non_exit: {policy: restore, when: always, backoff: {initial: 0s, max: 1s}}\n"));
        env.ok(&["run", "-d", "-f", &spec]);
        env.wait_until("a checkpoint", Duration::from_secs(10), || {
            newest_generation(&env, name) >= 1
        });
        let monitor = env.monitor(name);
        let mut args = verb.clone();
        args.push(name);
        env.ok(&args);
        env.wait_status(name, "exited");
        // "exited" is written before the policy decides; the monitor leaves only once the job
        // is final, and stays to restore it if the policy (wrongly) schedules a restore.
        env.wait_monitor_gone(&monitor);
        assert_eq!(
            env.status(name),
            "exited",
            "{name} came back after {verb:?}"
        );
        assert!(
            kinds(&events(&env, name), "restore").is_empty(),
            "{verb:?} triggered a restore"
        );
        assert_eq!(env.inspect(name)["state"]["restores"], 0);
    }
}

#[test]
fn periodic_checkpoints_leave_the_job_running() {
    let env = setup();
    let spec = spec_file(
        &env,
        "p",
        &counter_spec("p", "checkpoint: {every: 300ms, keep: 2}\n"),
    );
    env.ok(&["run", "-d", "-f", &spec]);
    let pid = {
        env.wait_status("p", "running");
        env.init_pid("p")
    };
    env.wait_until("4 periodic checkpoints", Duration::from_secs(20), || {
        newest_generation(&env, "p") >= 4
    });
    assert_eq!(env.init_pid("p"), pid, "the job was restarted");
    assert_eq!(env.status("p"), "running");
    let n = counter_values(&env.logs("p")).len();
    env.wait_until("more output", Duration::from_secs(10), || {
        counter_values(&env.logs("p")).len() > n + 3
    });
    assert_counter_continuous(&counter_values(&env.logs("p")));
    let gens = env.ok(&["checkpoints", "--format", "json", "p"]);
    let v: Value = serde_json::from_str(&gens).expect("json");
    assert_eq!(
        v.as_array().map(|a| a.len()),
        Some(2),
        "keep: 2 not applied: {v}"
    );
    assert!(kinds(&events(&env, "p"), "checkpoint")
        .iter()
        .all(|e| e["reason"] == "periodic"));
}

#[test]
fn checkpoint_all_then_restore_all_survives_dead_monitors() {
    let env = setup();
    let names: Vec<String> = (0..10).map(|i| format!("j{i}")).collect();
    for n in &names {
        env.ok(&["run", "-d", "--name", n, "--", "sh", "-c", COUNTER]);
    }
    for n in &names {
        env.wait_until("output", Duration::from_secs(10), || {
            counter_values(&env.logs(n)).len() > 2
        });
    }
    let out = env.ok(&["checkpoint", "--all"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("checkpointed generation 1"))
            .count(),
        10,
        "{out}"
    );
    let before: Vec<usize> = names
        .iter()
        .map(|n| counter_values(&env.logs(n)).len())
        .collect();
    for n in &names {
        assert_eq!(env.status(n), "checkpointed");
        let mon = env.inspect(n)["state"]["monitor"]["pid"]
            .as_i64()
            .expect("monitor") as i32;
        kill9(mon);
    }
    env.wait_until("monitors gone", Duration::from_secs(10), || {
        names
            .iter()
            .all(|n| !env.inspect(n)["monitor_alive"].as_bool().unwrap_or(true))
    });
    let out = env.ok(&["restore", "--all"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("restored from generation 1"))
            .count(),
        10,
        "{out}"
    );
    for (n, b) in names.iter().zip(before) {
        assert_eq!(env.status(n), "running");
        env.wait_until("output after restore", Duration::from_secs(10), || {
            counter_values(&env.logs(n)).len() > b + 2
        });
        assert_counter_continuous(&counter_values(&env.logs(n)));
    }
}

#[test]
fn checkpoint_all_reports_failures_by_name() {
    let env = setup();
    env.ok(&["run", "-d", "--name", "good", "--", "sh", "-c", COUNTER]);
    let sock = env.root().join("x.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    env.ok(&["run", "-d", "--name", "bad", "--", "python3", "-c", &format!("import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ntime.sleep(100)\n", sock.to_str().expect("p"))]);
    let _c = l.accept().expect("accept");
    env.wait_status("good", "running");
    let o = env.run(&["checkpoint", "--all", "--leave-running"]);
    assert_eq!(code(&o), 125);
    assert!(stdout(&o).contains("good: checkpointed"), "{}", stdout(&o));
    assert!(stdout(&o).contains("bad: FAILED"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("bad") && !stderr(&o).contains("good"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn host_shutdown_checkpoints_marked_jobs_and_boot_restores_them() {
    let env = setup();
    let spec = spec_file(
        &env,
        "keepme",
        &counter_spec("keepme", "on_shutdown: checkpoint\n"),
    );
    env.ok(&["run", "-d", "-f", &spec]);
    env.ok(&["run", "-d", "--name", "plain", "--", "sh", "-c", COUNTER]);
    for n in ["keepme", "plain"] {
        env.wait_until("output", Duration::from_secs(10), || {
            counter_values(&env.logs(n)).len() > 2
        });
    }
    for n in ["keepme", "plain"] {
        let mon = env.inspect(n)["state"]["monitor"]["pid"]
            .as_i64()
            .expect("monitor") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(mon),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("term");
    }
    env.wait_status("keepme", "checkpointed");
    env.wait_status("plain", "exited");
    env.wait_until("monitors gone", Duration::from_secs(10), || {
        !env.inspect("keepme")["monitor_alive"]
            .as_bool()
            .unwrap_or(true)
    });
    let out = env.ok(&["restore", "--all"]);
    assert!(out.contains("keepme: restored"), "{out}");
    assert!(!out.contains("plain"), "{out}");
    assert_eq!(env.status("keepme"), "running");
    assert_eq!(env.status("plain"), "exited");
}

#[test]
fn a_session_in_the_checkpoint_comes_back_with_a_crash_restore() {
    let env = setup();
    let spec = spec_file(&env, "s", "name: s\ncommand: [sleep, '100000']\non_exit: {policy: restore, backoff: {initial: 0s, max: 1s}}\n");
    env.ok(&["run", "-d", "-f", &spec]);
    let id = env
        .ok(&[
            "exec",
            "-d",
            "s",
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 30 ]; do echo n$i; i=$((i+1)); sleep 0.1; done; exit 3",
        ])
        .trim()
        .to_string();
    let lines = || env.ok(&["logs", "--exec", &id, "s"]).lines().count();
    // The session is under way when the dump is taken...
    env.wait_until("the session to print", Duration::from_secs(20), || {
        lines() > 2
    });
    env.ok(&["checkpoint", "--leave-running", "s"]);
    // ...and has gone on past it when the crash comes, so the restore takes it back.
    let at_dump = lines();
    env.wait_until(
        "the session to go on after the dump",
        Duration::from_secs(20),
        || lines() > at_dump,
    );
    kill9(main_pid(&env, "s"));
    env.wait_until("the restore", Duration::from_secs(20), || {
        env.inspect("s")["state"]["restores"] == 1
    });
    let status = |env: &Env| -> Value {
        let l: Value = serde_json::from_str(&env.ok(&["exec", "--list", "--format", "json", "s"]))
            .expect("json");
        l.as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == id.as_str()).cloned())
            .unwrap_or(Value::Null)
    };
    env.wait_until(
        "the session to finish after the restore",
        Duration::from_secs(20),
        || status(&env)["status"] == "exited" && status(&env)["exit_code"] == 3,
    );
    let log = env.ok(&["logs", "--exec", &id, "s"]);
    assert!(log.ends_with("n29\n"), "{log}");
}

/// Issue 9, item 14: `stasis kill -s USR1` is not a requested exit: a real crash after it is
/// still restored under the policy.
#[test]
fn item_14_a_signal_that_did_not_end_the_job_never_cancels_restore_on_crash() {
    let env = setup();
    let job = format!("trap 'echo usr1' USR1; {COUNTER}");
    let spec = spec_file(
        &env,
        "u",
        &format!("name: u\ncommand: [sh, -c, \"{job}\"]\non_exit: {{policy: restore, backoff: {{initial: 0s, max: 1s}}}}\n"),
    );
    env.ok(&["run", "-d", "-f", &spec]);
    env.wait_until("output", Duration::from_secs(20), || {
        counter_values(&env.logs("u")).len() > 2
    });
    env.ok(&["checkpoint", "--leave-running", "u"]);
    env.ok(&["kill", "-s", "USR1", "u"]);
    env.wait_until("the trap to run", Duration::from_secs(20), || {
        String::from_utf8_lossy(&env.logs("u")).contains("usr1")
    });
    assert_eq!(env.status("u"), "running");
    kill9(main_pid(&env, "u"));
    env.wait_until("restore-on-crash", Duration::from_secs(30), || {
        env.inspect("u")["state"]["restores"].as_u64().unwrap_or(0) == 1
            && env.status("u") == "running"
    });
    assert_eq!(kinds(&events(&env, "u"), "restore").len(), 1);
}
