//! Live migration between two "hosts" of the test bed (tests/common/hosts.rs): two network
//! namespaces joined by a veth pair, an sshd and a state root each.

mod common;

use common::hosts::{Bed, Host};
use common::*;
use std::time::{Duration, Instant};

/// The bed itself: each host's sshd runs the stasis under test with that host's state root,
/// so a job started on B is what `ssh B stasis ps` lists, seen from A.
#[test]
fn the_bed_reaches_each_host_over_ssh() {
    let bed = Bed::new();
    bed.b
        .ok(&["run", "-d", "--name", "bedjob", "--", "sleep", "1000"]);
    let o = bed
        .b
        .ssh_from(&bed.a, "stasis ps --format json")
        .output()
        .expect("ssh");
    assert!(o.status.success(), "ssh to B: {}", stderr(&o));
    let ps: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ps json");
    assert!(ps.to_string().contains("bedjob"), "{ps}");
    let o = bed.a.ssh_from(&bed.b, "stasis ps").output().expect("ssh");
    assert!(o.status.success(), "ssh to A: {}", stderr(&o));
    assert!(!stdout(&o).contains("bedjob"), "A has its own root");
}

/// Waits until `f` holds (30 s at most).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the counter's log on `h` holds more than `n` values; returns them.
fn wait_counter(h: &Host, name: &str, n: usize) -> Vec<u64> {
    let mut vals = vec![];
    wait_for(&format!("{name} to count past {n} on {}", h.alias), || {
        vals = counter_values(&h.logs(name));
        vals.len() > n
    });
    vals
}

/// `stasis migrate` from `from` to `to`; returns the JSON summary.
fn migrate(from: &Host, to: &Host, name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["migrate", "--format", "json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[name, to.alias.as_str()]);
    let o = from.run(&args);
    if !o.status.success() {
        dump_criu_logs(to, name);
        panic!("migrate {name} to {}: {}", to.alias, stderr(&o));
    }
    let out = stdout(&o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary {out}: {e}"))
}

/// Prints the tails of CRIU's logs and the monitor's log of `name` on `h` (for a failure).
fn dump_criu_logs(h: &Host, name: &str) {
    let d = h.root.join("workloads").join(name);
    let mut files = vec![d.join("monitor.log")];
    if let Ok(rd) = std::fs::read_dir(d.join("criu")) {
        files.extend(rd.flatten().map(|e| e.path()));
    }
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            let lines: Vec<&str> = t.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            eprintln!("== {} ==\n{tail}", f.display());
        }
    }
}

/// The job runs on exactly one side, and each side's record says which.
fn assert_runs_on(on: &Host, off: &Host, name: &str) {
    assert_eq!(on.status(name), "running", "{name} on {}", on.alias);
    let pid = on.init_pid(name).expect("init pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let there = off.status(name);
    assert!(
        there.is_empty() || there == "migrated",
        "{name} on {} is {there:?}",
        off.alias
    );
}

fn counter_moves(mode: &str) {
    let bed = Bed::new();
    let name = format!("cnt-{mode}");
    bed.a
        .ok(&["run", "-d", "--name", &name, "--", "sh", "-c", COUNTER]);
    wait_counter(&bed.a, &name, 3);
    let mut here = &bed.a;
    let mut there = &bed.b;
    for round in 0..3 {
        let s = migrate(here, there, &name, &["--mode", mode]);
        assert_eq!(s["mode"], mode, "{s}");
        assert!(s["downtime_ms"].as_f64().unwrap_or(-1.0) >= 0.0, "{s}");
        assert_runs_on(there, here, &name);
        let before = counter_values(&there.logs(&name)).len();
        let vals = wait_counter(there, &name, before + 3);
        assert_counter_continuous(&vals);
        eprintln!("round {round}: {s}");
        // The record left behind says where the job went.
        let note = here.inspect(&name)["state"]["note"].to_string();
        assert!(note.contains("migrated to"), "{note}");
        here.ok(&["rm", &name]);
        std::mem::swap(&mut here, &mut there);
    }
}

/// A counter moves three times (A→B→A→B) with its log whole: no gap, no repeat.
#[test]
fn a_counter_moves_back_and_forth_streamed() {
    counter_moves("stream");
}

/// The same with post-copy (lazy pages over the page channel).
#[test]
fn a_counter_moves_back_and_forth_post_copy() {
    counter_moves("post-copy");
}
