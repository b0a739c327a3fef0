//! Live migration between two "hosts" of the test bed (tests/common/hosts.rs): two network
//! namespaces joined by a veth pair, an sshd and a state root each.

mod common;

use common::hosts::{procs, Bed, Host, Proc};
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
fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_for_or(what, f, || {});
}

/// As [`wait_for`]; `explain` says what it can before a timeout fails the test.
fn wait_for_or(what: &str, mut f: impl FnMut() -> bool, explain: impl FnOnce()) {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() >= Duration::from_secs(30) {
            explain();
            panic!("timed out waiting for {what}");
        }
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

/// Starts the counter job `name` on `h` and waits until it counts; returns its init's pid.
fn counting(h: &Host, name: &str) -> i32 {
    h.ok(&["run", "-d", "--name", name, "--", "sh", "-c", COUNTER]);
    wait_counter(h, name, 2);
    h.init_pid(name).expect("pid")
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
        if mode == "stream" {
            // The images arrived whole: they are the target's first generation (what a
            // restore that fails after the hand-over tries again from).
            let g = there.inspect(&name)["generations"].clone();
            assert!(
                g.as_array().is_some_and(|g| !g.is_empty()),
                "no generation on {}: {g}",
                there.alias
            );
        }
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

/// Writes an executable script.
fn script(path: &std::path::Path, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

/// Each bad destination gives one clear line and exit 125, and the job goes on untouched:
/// same init, still counting, nothing left on the target.
#[test]
fn bad_destinations_leave_the_job_untouched() {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    let pid = counting(a, "stay");
    let d = bed.dir.path();
    // A key the target does not know.
    let o = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("stranger"))
        .output()
        .expect("ssh-keygen");
    assert!(o.status.success());
    let cfg = std::fs::read_to_string(&bed.ssh_config)
        .expect("config")
        .replace(
            &d.join("user_key").display().to_string(),
            &d.join("stranger").display().to_string(),
        );
    std::fs::write(d.join("stranger_config"), cfg).expect("config");
    let stranger = format!("ssh -F {}", d.join("stranger_config").display());
    let old = script(
        &d.join("old-stasis"),
        "#!/bin/sh\necho \"error: unrecognized subcommand '$1'\" >&2\nexit 2\n",
    );
    let other_proto = script(
        &d.join("proto99"),
        "#!/usr/bin/python3\nimport sys,struct,json\nn=struct.unpack('>I',sys.stdin.buffer.read(4))[0]\nsys.stdin.buffer.read(n)\nb=json.dumps({'t':'welcome','proto':99,'criu':'4.2.1','uffd':True,'dirty_track':False,'has_init':True,'from':'x'}).encode()\nsys.stdout.buffer.write(struct.pack('>I',len(b))+b)\nsys.stdout.flush()\n",
    );
    let old_criu = script(
        &d.join("old-criu"),
        "#!/bin/sh\ncase \"$1\" in --version) echo 'Version: 4.1.1';; check) echo 'Looks good.';; esac\nexit 0\n",
    );
    b.ok(&["run", "-d", "--name", "taken", "--", "sleep", "1000"]);
    let bin = bin().display().to_string();
    let no_criu = format!("env STASIS_CRIU=/nonexistent/criu {bin}");
    let with_old_criu = format!("env STASIS_CRIU={old_criu} {bin}");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "unknown host",
            vec!["stay".into(), "nosuchhost.invalid".into()],
            "ssh to nosuchhost.invalid failed",
        ),
        (
            "auth refused",
            vec!["--ssh".into(), stranger, "stay".into(), b.alias.clone()],
            "Permission denied",
        ),
        (
            "no stasis",
            vec![
                "--remote-stasis".into(),
                "/nonexistent/stasis".into(),
                "stay".into(),
                b.alias.clone(),
            ],
            "stasis is not installed",
        ),
        (
            "old stasis",
            vec![
                "--remote-stasis".into(),
                old,
                "stay".into(),
                b.alias.clone(),
            ],
            "too old for migration",
        ),
        (
            "other protocol",
            vec![
                "--remote-stasis".into(),
                other_proto,
                "stay".into(),
                b.alias.clone(),
            ],
            "protocol 99",
        ),
        (
            "no criu",
            vec![
                "--remote-stasis".into(),
                no_criu,
                "stay".into(),
                b.alias.clone(),
            ],
            "criu",
        ),
        (
            "old criu",
            vec![
                "--remote-stasis".into(),
                with_old_criu,
                "stay".into(),
                b.alias.clone(),
            ],
            "criu 4.1.1 on vm is older than 4.2",
        ),
        (
            "name taken",
            vec!["taken".into(), b.alias.clone()],
            "already exists",
        ),
    ];
    // "taken" must run on A too for the last case.
    a.ok(&["run", "-d", "--name", "taken", "--", "sleep", "1000"]);
    for (what, args, want) in cases {
        let mut v = vec!["migrate"];
        v.extend(args.iter().map(String::as_str));
        let o = a.run(&v);
        let err = stderr(&o);
        assert_eq!(code(&o), 125, "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.contains(want), "{what}: {err:?} lacks {want:?}");
        assert!(err.contains("keeps running here"), "{what}: {err}");
        eprintln!("{what}: {}", err.trim());
        assert_eq!(a.status("stay"), "running", "{what}");
        assert_eq!(a.init_pid("stay"), Some(pid), "{what}: the job was touched");
        assert_eq!(b.status("stay"), "", "{what}: the target kept a record");
    }
    let ev = a.ok(&["events", "--format", "json", "stay"]);
    assert!(
        ev.matches("migrate-failed").count() >= 7,
        "the failures are not in the events: {ev}"
    );
    assert_eq!(b.status("taken"), "running");
    assert_eq!(a.status("taken"), "running");
    assert_counter_continuous(&wait_counter(
        a,
        "stay",
        counter_values(&a.logs("stay")).len() + 2,
    ));
}

/// A `-t` job with a live exec session moves (post-copy, the default here): both keep
/// counting on the target without a gap, and `attach` there reaches the job.
#[test]
fn a_tty_job_with_a_live_exec_session_moves() {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    a.ok(&["run", "-d", "-t", "--name", "tj", "--", "sh", "-c", COUNTER]);
    wait_counter(a, "tj", 2);
    let sess = a
        .ok(&["exec", "-d", "tj", "--", "sh", "-c", COUNTER])
        .trim()
        .to_string();
    let exec_vals = |h: &Host| {
        counter_values(
            &h.cmd(&["logs", "--exec", &sess, "tj"])
                .output()
                .expect("logs")
                .stdout,
        )
    };
    wait_for("the session to count", || exec_vals(a).len() > 2);
    // A client attached on the source is told where the job went.
    let watcher = a
        .cmd(&["attach", "--no-stdin", "tj"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("attach on A");
    let s = migrate(a, b, "tj", &[]);
    let o = wait_output(watcher, Duration::from_secs(20), "attach on the source");
    assert_eq!(code(&o), 124, "attached client: {}", stderr(&o));
    assert!(stderr(&o).contains(&b.alias), "{}", stderr(&o));
    assert_eq!(s["mode"], "post-copy", "{s}");
    assert_runs_on(b, a, "tj");
    let n = counter_values(&b.logs("tj")).len();
    assert_counter_continuous(&wait_counter(b, "tj", n + 3));
    let n = exec_vals(b).len();
    wait_for("the session to count on the target", || {
        exec_vals(b).len() > n + 3
    });
    assert_counter_continuous(&exec_vals(b));
    // attach on the target reaches the job (it prints what the job prints next).
    let child = b
        .cmd(&["attach", "--no-stdin", "tj"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("attach");
    let pid = child.id() as i32;
    let at = counter_values(&b.logs("tj")).len();
    let out = std::thread::spawn(move || child.wait_with_output().expect("attach output"));
    wait_for("attach to show output", || {
        // The attach client prints the job's live output; give it a few values.
        counter_values(&b.logs("tj")).len() > at + 6
    });
    // SIGKILL: the client cannot forward it to the job.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let o = out.join().expect("attach thread");
    assert!(
        !counter_values(&o.stdout).is_empty(),
        "attach on the target showed nothing: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A small random number generator (the trials print their seed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// What a fault trial kills.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// One of the migrating command's ssh processes (control or page channel).
    Ssh,
    /// The target's stasis: `__migrate-target`, `__migrate-pages` or the new monitor.
    TargetStasis,
    /// The target's CRIU (restore, lazy-pages or page-server).
    TargetCriu,
}

impl Fault {
    /// The kinds of process it kills: each trial picks one, so that a short-lived kind (a
    /// restore) is hit as often as a long-lived one.
    fn kinds(self) -> &'static [&'static str] {
        match self {
            Fault::Ssh => &["control", "pages"],
            Fault::TargetStasis => &["__migrate-target", "__migrate-pages", "monitor"],
            Fault::TargetCriu => &[
                "page-server or lazy-pages",
                "restore",
                "restore at its gate",
            ],
        }
    }
}

/// This trial's candidates to kill: the bed's own processes of `kind` (see [`Fault::kinds`]).
/// `root` and every process under it, in `ps`.
fn descendants(ps: &[Proc], root: i32) -> Vec<i32> {
    let mut under = vec![root];
    let mut i = 0;
    while i < under.len() {
        let p = under[i];
        under.extend(ps.iter().filter(|x| x.ppid == p).map(|x| x.pid));
        i += 1;
    }
    under
}

/// True when `p` is a live CRIU running `verb` ("dump", "restore") for the state root `root`
/// (a migration runs CRIU through its command line).
fn criu_for(p: &Proc, root: &str, verb: &str) -> bool {
    p.comm == "criu"
        && p.state != 'Z'
        && p.cmd.contains(root)
        && p.cmd.contains(&format!(" {verb} "))
}

fn victims(f: Fault, kind: &str, migrate_pid: i32, b: &Host) -> Vec<Proc> {
    let root_b = b.root.display().to_string();
    let ps = procs();
    let under_b = descendants(&ps, b.sshd_pid().unwrap_or(-1));
    ps.iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| match (f, kind) {
            (Fault::Ssh, "control") => {
                p.ppid == migrate_pid && p.comm == "ssh" && p.cmd.contains("__migrate-target")
            }
            (Fault::Ssh, _) => {
                p.ppid == migrate_pid && p.comm == "ssh" && p.cmd.contains("__migrate-pages")
            }
            (Fault::TargetStasis, "monitor") => {
                p.comm == "stasis-monitor"
                    && std::fs::read_link(format!("/proc/{}/cwd", p.pid)).is_ok()
                    && under_b.contains(&p.ppid)
            }
            (Fault::TargetStasis, _) => {
                under_b.contains(&p.pid) && p.comm != "stasis-monitor" && p.cmd.contains(kind)
            }
            (Fault::TargetCriu, "restore") => criu_for(p, &root_b, "restore"),
            // Its tasks are restored (the restored init is the monitor's child, beside CRIU):
            // the job is held for the verdict (or, the verdict given, about to run).
            (Fault::TargetCriu, "restore at its gate") => {
                criu_for(p, &root_b, "restore")
                    && ps
                        .iter()
                        .any(|c| c.ppid == p.ppid && c.comm == "stasis-init" && c.state != 'Z')
            }
            (Fault::TargetCriu, _) => {
                p.comm == "criu"
                    && p.cmd.contains(&root_b)
                    && (p.cmd.contains(" page-server ") || p.cmd.contains(" lazy-pages "))
            }
        })
        .cloned()
        .collect()
}

/// What one side says about a job: `inspect`'s state (Null: no record) and `ps`'s row.
struct Side {
    alias: String,
    state: serde_json::Value,
    ps: Option<serde_json::Value>,
}

impl Side {
    fn of(h: &Host, name: &str) -> Side {
        let o = h.run(&["ps", "-a", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        Side {
            alias: h.alias.clone(),
            state: h.inspect(name)["state"].clone(),
            ps: rows.into_iter().find(|r| r["name"] == name),
        }
    }

    /// The status ("" without a record).
    fn status(&self) -> &str {
        self.state["status"].as_str().unwrap_or_default()
    }

    /// It says the job runs here, and its init is alive.
    fn runs(&self) -> bool {
        self.status() == "running"
            && self.state["init"]["pid"]
                .as_i64()
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    }

    /// `ps` agrees with `inspect`: the same status and pid, or neither has a record.
    fn ps_agrees(&self) -> Result<(), String> {
        match &self.ps {
            None if self.state.is_null() => Ok(()),
            Some(r)
                if r["status"] == self.state["status"] && r["pid"] == self.state["init"]["pid"] =>
            {
                Ok(())
            }
            r => Err(format!(
                "on {}: ps says {r:?}, inspect says {}",
                self.alias, self.state
            )),
        }
    }
}

/// Where the job ended up, once nothing of its migration runs any more: on exactly one side
/// (with the other side's record not claiming it, and the command's exit code agreeing), or,
/// post-copy only, lost after the hand-over with both sides and the command saying so.
/// Anything else (zero or two sides, a record that lies, an exit code that lies, `ps` and
/// `inspect` disagreeing) is why not.
fn outcome(a: &Side, b: &Side, mode: &str, code: i32, err: &str) -> Result<&'static str, String> {
    a.ps_agrees()?;
    b.ps_agrees()?;
    let (sa, sb) = (a.status(), b.status());
    match (a.runs(), b.runs()) {
        (true, true) => Err("the job runs on both sides".into()),
        (true, false) if sb == "running" || sb == "restoring" => {
            Err(format!("the job runs on A but B says {sb}"))
        }
        // A rollback drops whatever the target held of the attempt (a placeholder, a
        // half-restored record, "unconfirmed" images), or says that it could not.
        (true, false) if !sb.is_empty() && !err.contains("may still hold a record") => Err(
            format!("the job runs on A but B keeps a record ({sb}) and migrate did not say so"),
        ),
        // "Rolled back: the job keeps running here" must be true, and only then.
        (true, false) if code != CODE_ROLLED_BACK => {
            Err(format!("the job runs on A but migrate exited {code}"))
        }
        (true, false) => Ok("a"),
        (false, true) if sa != "migrated" => Err(format!("the job runs on B but A says {sa}")),
        (false, true) if code != 0 && code != CODE_LOST => {
            Err(format!("the job runs on B but migrate exited {code}"))
        }
        (false, true) => Ok("b"),
        // Post-copy's window: handed over, then lost; both sides must say so (B's record
        // with why: never "checkpointed", for there is nothing to restore).
        (false, false) if mode == "post-copy" && code == CODE_LOST && sa == "migrated" => {
            let why = b.state.to_string();
            if sb == "running" || sb == "restoring" || sb == "checkpointed" {
                Err(format!("the job runs nowhere but B says {sb}"))
            } else if !sb.is_empty() && !why.contains("memory") && !why.contains("lost") {
                Err(format!("the job was lost but B does not say why: {why}"))
            } else {
                Ok("lost")
            }
        }
        (false, false) => Err(format!(
            "the job runs nowhere (A says {sa:?}, B says {sb:?}, migrate exited {code})"
        )),
    }
}

/// `migrate`'s exit codes (see `stasis::migrate`).
const CODE_ROLLED_BACK: i32 = 125;
const CODE_LOST: i32 = 3;

/// Prints what both sides know about `name` (for a failed trial): the monitors' and CRIU's
/// logs, the events, and the bed's live processes.
fn report(bed: &Bed, name: &str) {
    for h in bed.hosts() {
        eprintln!("==== {} ({}) ====", h.alias, h.root.display());
        eprintln!("inspect: {}", h.inspect(name)["state"]);
        eprintln!(
            "events: {}",
            stdout(&h.run(&["events", "--format", "json", name]))
        );
        dump_criu_logs(h, name);
    }
    eprintln!("processes of the bed: {:#?}", bed.processes());
}

/// A process that belongs to a migration in flight: a `stasis __migrate-*` on the target (not
/// the monitor it forks, which keeps that command line and stays with the job), an ssh
/// client of the command, or a CRIU run on either side.
fn migrating(p: &Proc) -> bool {
    (p.cmd.contains("__migrate-") && p.comm != "stasis-monitor")
        || p.comm == "criu"
        || p.comm == "ssh"
}

fn fault_trials(f: Fault, trials: u32) {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("{f:?}: seed {seed}");
    let mut rng = Lcg(seed);
    // How long a migration takes here: the faults fall anywhere inside it.
    a.ok(&["run", "-d", "--name", "calib", "--", "sh", "-c", COUNTER]);
    wait_counter(a, "calib", 1);
    let span = migrate(a, b, "calib", &[])["total_ms"]
        .as_f64()
        .unwrap_or(2000.0) as u64;
    eprintln!("a migration takes {span} ms");
    for h in [a, b] {
        h.ok(&["rm", "-f", "calib"]);
    }
    // From here each trial starts with nothing of the bed running, and must end so.
    let (idle, left) = bed.wait_processes(Duration::from_secs(10), |ps| ps.is_empty());
    assert!(idle, "left running after the calibration: {left:#?}");
    let (mut on_a, mut on_b, mut lost) = (0, 0, 0);
    for t in 0..trials {
        let name = format!("f{t}");
        let mode = if t % 2 == 0 { "post-copy" } else { "stream" };
        a.ok(&["run", "-d", "--name", &name, "--", "sh", "-c", COUNTER]);
        wait_counter(a, &name, 1);
        let child = spawn_migrate(a, &["--mode", mode, &name, &b.alias]);
        let mpid = child.id() as i32;
        let kinds = f.kinds();
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let delay = Duration::from_millis(rng.below(span));
        let t0 = Instant::now();
        let mut killed = None;
        // The fault itself: at a random moment, the first candidate that exists then.
        while t0.elapsed() < Duration::from_secs(20) {
            if std::fs::read_to_string(format!("/proc/{mpid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
            {
                break;
            }
            if t0.elapsed() >= delay {
                let v = victims(f, kind, mpid, b);
                if !v.is_empty() {
                    let p = &v[rng.below(v.len() as u64) as usize];
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed = Some(format!("{} {}", p.pid, p.cmd));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let o = wait_output(child, Duration::from_secs(90), "migrate under a fault");
        let took = t0.elapsed();
        let err = stderr(&o);
        let code = code(&o);
        assert!(err.trim().lines().count() <= 1, "trial {t}: {err}");
        // Where the job runs is final only once nothing of its migration runs any more (a
        // target holds a restored job a grace period for a late commit, a post-copy job's
        // pages are still coming): wait for that, never for a time.
        let (done, ps) =
            bed.wait_processes(Duration::from_secs(60), |ps| !ps.iter().any(migrating));
        let (sa, sb) = (Side::of(a, &name), Side::of(b, &name));
        let at = if done {
            outcome(&sa, &sb, mode, code, &err)
        } else {
            Err(format!(
                "its migration did not end: {:#?}",
                ps.iter().filter(|p| migrating(p)).collect::<Vec<_>>()
            ))
        };
        eprintln!(
            "trial {t} ({mode}, {kind}: killed {killed:?} after {delay:?}; migrate {:.1} s, trial {:.1} s): exit {code}, {} -> {at:?}; B says {}",
            took.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            err.trim(),
            sb.state
        );
        match at {
            Ok("a") => on_a += 1,
            Ok("b") => on_b += 1,
            Ok(_) => lost += 1,
            Err(why) => {
                report(&bed, &name);
                panic!("trial {t}: not settled: {why}");
            }
        }
        for (h, side) in [(a, &sa), (b, &sb)] {
            if !side.state.is_null() {
                h.ok(&["rm", "-f", &name]);
            }
        }
        let (idle, left) = bed.wait_processes(Duration::from_secs(10), |ps| ps.is_empty());
        if !idle {
            report(&bed, &name);
            panic!("trial {t}: left running after rm on both sides: {left:#?}");
        }
        // Nor a cgroup: an undone migration's restore removes its own.
        for h in [a, b] {
            let left = cgroup_dirs_of(&h.root);
            assert!(
                left.is_empty(),
                "trial {t}: cgroups left on {}: {left:?}",
                h.alias
            );
        }
    }
    eprintln!(
        "{f:?}: {trials} trials: on A {on_a}, on B {on_b}, lost in post-copy's window {lost}"
    );
}

/// Trials per fault: 20 (issue 11's acceptance), which fit in the default run (the whole
/// binary took 2m17s to 2m39s in four runs on the project's 2-core machine).
fn trials() -> u32 {
    std::env::var("STASIS_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// ssh killed at a random moment: the job ends up on exactly one side.
#[test]
fn faults_ssh_killed() {
    fault_trials(Fault::Ssh, trials());
}

/// The target's stasis killed at a random moment.
#[test]
fn faults_target_stasis_killed() {
    fault_trials(Fault::TargetStasis, trials());
}

/// The target's CRIU killed at a random moment.
#[test]
fn faults_target_criu_killed() {
    fault_trials(Fault::TargetCriu, trials());
}

/// `stasis migrate -q ARGS` on `from`, running: its stdout dropped, its stderr kept.
fn spawn_migrate(from: &Host, args: &[&str]) -> std::process::Child {
    let mut all = vec!["migrate", "-q"];
    all.extend_from_slice(args);
    from.cmd(&all)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("migrate")
}

/// Waits until `h`'s CRIU dumps: from then on the job is frozen until a verdict.
fn wait_dump(h: &Host) {
    let root = h.root.display().to_string();
    wait_for("A's dump", || {
        procs().iter().any(|p| criu_for(p, &root, "dump"))
    });
}

/// After a rolled-back move: the job runs on `a` as before (the same init `pid`, its
/// counter going on without a gap), and `b` drops what it held of the attempt.
fn assert_back_on(a: &Host, b: &Host, name: &str, pid: i32) {
    assert_eq!(a.status(name), "running");
    assert_eq!(a.init_pid(name), Some(pid), "the same job, not a copy");
    let n = counter_values(&a.logs(name)).len();
    assert_counter_continuous(&wait_counter(a, name, n + 2));
    // This wait once failed in a few runs of the whole file: its own polling (`ps` on B) met
    // B's record half removed and wrote a ghost record there (fixed: a reader never creates
    // the lock). Should it fail again, say what B holds.
    wait_for_or(
        "B to drop the attempt",
        || b.status(name).is_empty(),
        || explain_target(b, name),
    );
}

/// Prints what B says of `name` (inspect, events, its logs) and the host's processes.
fn explain_target(b: &Host, name: &str) {
    dump_criu_logs(b, name);
    eprintln!(
        "== B inspect ==\n{}",
        stdout(&b.run(&["inspect", "--format", "json", name]))
    );
    eprintln!("== B events ==\n{}", stdout(&b.run(&["events", name])));
    let dir = b.root.join("workloads").join(name);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        eprintln!("== {} holds ==\n{names:?}", dir.display());
    }
    if let Ok(o) = std::process::Command::new("ps")
        .args(["-eo", "pid,ppid,stat,etimes,comm,args"])
        .output()
    {
        eprintln!("== ps ==\n{}", String::from_utf8_lossy(&o.stdout));
    }
}

/// A target that goes silent while the source holds the job frozen (B's sshd and every
/// session under it stopped, as if the network dropped every packet) ends the channel through
/// ssh's keepalives: the job resumes on the source, untouched, and B, once it wakes, keeps
/// nothing of the attempt. Without keepalives the source would stay frozen for as long as
/// TCP retransmits.
#[test]
fn a_target_gone_silent_lets_the_frozen_source_resume() {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    let pid = counting(a, "quiet");
    // Short keepalives for the test: an `-o` of the user's wins over stasis's minute.
    let ssh = format!(
        "{} -o ServerAliveInterval=1 -o ServerAliveCountMax=2 -o ConnectTimeout=2",
        a.ssh_command()
    );
    let child = a
        .cmd(&["migrate", "-q", "--mode", "post-copy", "quiet", &b.alias])
        .env("STASIS_SSH_COMMAND", &ssh)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("migrate");
    // From the moment A's CRIU dumps, the job is frozen until a verdict, which needs B.
    wait_dump(a);
    let silent = descendants(&procs(), b.sshd_pid().expect("B's sshd"));
    let signal = |sig| {
        for p in &silent {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
        }
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    let o = wait_output(child, Duration::from_secs(60), "migrate to a silent target");
    signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("keeps running here"), "{}", stderr(&o));
    assert_back_on(a, b, "quiet", pid);
}

/// A target whose ssh still answers but whose stasis hangs (stopped here, from the moment A
/// dumps) never says ready: past `--timeout` the move is rolled back, and the job runs on
/// A as before, the same process, with the reason in one line.
#[test]
fn a_hung_target_is_given_up_after_the_timeout() {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    let pid = counting(a, "hung");
    let child = spawn_migrate(
        a,
        &["--mode", "stream", "--timeout", "3s", "hung", &b.alias],
    );
    wait_dump(a);
    // Every stasis under B's sshd: the receiver, the page channel's helper, any monitor.
    let ps = procs();
    let under = descendants(&ps, b.sshd_pid().expect("B's sshd"));
    let hung: Vec<Stopped> = ps
        .iter()
        .filter(|p| under.contains(&p.pid) && p.comm.starts_with("stasis"))
        .map(|p| Stopped(p.pid))
        .collect();
    assert!(!hung.is_empty(), "no stasis on B");
    hung.iter().for_each(Stopped::stop);
    wait_for("A to take the job back", || {
        stdout(&a.run(&["events", "--format", "json", "hung"])).contains("migrate-failed")
    });
    assert_eq!(a.status("hung"), "running");
    assert_eq!(a.init_pid("hung"), Some(pid), "the same job, not a copy");
    // B goes on: the attempt it held is dropped, and `migrate` says so.
    drop(hung);
    let o = wait_output(child, Duration::from_secs(90), "migrate to a hung target");
    eprintln!("migrate said: {}", stderr(&o));
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("did not take the job within 3s"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert_back_on(a, b, "hung", pid);
}

/// The target's CRIU dies with the job restored and held, after the target said `Ready` but
/// before the source's commit reaches it (the source's command is stopped in between, which
/// makes the fault trials' rarest moment certain). The source may commit on that `Ready`, so
/// a stream target keeps the images until the verdict: the commit then restores the job
/// there again, and it runs on B, whole. (Before, B dropped everything while A gave the job
/// away, and it ran nowhere.)
#[test]
fn a_target_restore_dying_after_ready_waits_for_the_verdict() {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    let waits = b.root.join("workloads/late/monitor.log");
    let o = restore_dies_after_ready(&bed, "stream", || {
        std::fs::read_to_string(&waits).is_ok_and(|t| t.contains("before the source's verdict"))
    });
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_runs_on(b, a, "late");
    assert_eq!(a.status("late"), "migrated");
    let n = counter_values(&b.logs("late")).len();
    assert_counter_continuous(&wait_counter(b, "late", n + 2));
    b.ok(&["rm", "-f", "late"]);
}

/// The same moment in post-copy: the target ends its lazy-pages daemon at once, which breaks
/// the page channel, and a source that has not committed yet resumes the job: the same
/// process, on A, as if nothing had happened, and B drops the attempt.
#[test]
fn a_post_copy_restore_dying_after_ready_resumes_an_uncommitted_source() {
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    let pid = counting(a, "late");
    let o = restore_dies_after_ready(&bed, "post-copy", || {
        stdout(&a.run(&["events", "--format", "json", "late"])).contains("migrate-failed")
    });
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("keeps running here"), "{}", stderr(&o));
    assert_back_on(a, b, "late", pid);
}

/// Migrates the counter `late` (started here unless it runs) from A to B in `mode`, and kills
/// B's CRIU once the job is restored and held there, with A's `migrate` stopped so that it
/// cannot have read B's `Ready` yet; continues it once `settled` holds. Returns what
/// `migrate` said.
fn restore_dies_after_ready(
    bed: &Bed,
    mode: &str,
    mut settled: impl FnMut() -> bool,
) -> std::process::Output {
    let (a, b) = (&bed.a, &bed.b);
    if a.status("late").is_empty() {
        counting(a, "late");
    }
    let child = spawn_migrate(a, &["--mode", mode, "late", &b.alias]);
    let stopped = Stopped(child.id() as i32);
    let root_b = b.root.display().to_string();
    let restore = || {
        procs()
            .into_iter()
            .find(|p| criu_for(p, &root_b, "restore"))
    };
    // Stopped as soon as B starts the monitor that restores (once every file is there, so
    // `migrate` has nothing left to do but wait): it cannot have read B's `Ready` yet, which
    // comes only after that monitor's CRIU has probed the kernel and restored the job.
    let sshd_b = b.sshd_pid().expect("B's sshd");
    let t0 = Instant::now();
    loop {
        let ps = procs();
        let under = descendants(&ps, sshd_b);
        if ps
            .iter()
            .any(|p| p.comm == "stasis-monitor" && under.contains(&p.ppid))
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "B never restored");
        std::thread::sleep(Duration::from_millis(1));
    }
    stopped.stop();
    let held = b.root.join("workloads/late/monitor.log");
    wait_for("B to hold the restored job", || {
        std::fs::read_to_string(&held).is_ok_and(|t| t.contains("held for the source's verdict"))
    });
    let criu = restore().expect("B's criu restore");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(criu.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill B's criu");
    wait_for("the failure to settle", &mut settled);
    drop(stopped);
    let o = wait_output(child, Duration::from_secs(90), "migrate");
    dump_criu_logs(b, "late");
    o
}

/// A process this test stopped: continued when dropped, also when the test fails.
struct Stopped(i32);

impl Stopped {
    fn stop(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("SIGSTOP");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

/// A job in `--network none` whose own server and client talk over loopback keeps talking
/// after a move with `--tcp-established` (both modes).
#[test]
fn tcp_over_loopback_keeps_talking_after_the_move() {
    const TALK: &str = "import socket,threading,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',7000))\ns.listen(1)\ndef srv():\n    c,_=s.accept()\n    while True:\n        d=c.recv(64)\n        if not d: break\n        c.sendall(d)\nthreading.Thread(target=srv,daemon=True).start()\nc=socket.create_connection(('127.0.0.1',7000))\ni=0\nwhile True:\n    c.sendall(b'%d\\n'%i)\n    print(int(c.recv(64)),flush=True)\n    i+=1\n    time.sleep(0.05)\n";
    let bed = Bed::new();
    let (a, b) = (&bed.a, &bed.b);
    a.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "talk",
        "--",
        "python3",
        "-c",
        TALK,
    ]);
    wait_counter(a, "talk", 2);
    for (from, to, mode) in [(a, b, "post-copy"), (b, a, "stream")] {
        migrate(from, to, "talk", &["--tcp-established", "--mode", mode]);
        assert_runs_on(to, from, "talk");
        let n = counter_values(&to.logs("talk")).len();
        assert_counter_continuous(&wait_counter(to, "talk", n + 5));
        from.ok(&["rm", "talk"]);
    }
}

/// On a terminal `migrate` shows its phase, MiB and rate as it goes; in a pipe, nothing but
/// its result.
#[test]
fn migrate_shows_progress_on_a_terminal_and_never_in_a_pipe() {
    let bed = Bed::new();
    bed.a
        .ok(&["run", "-d", "--name", "bar", "--", "sh", "-c", COUNTER]);
    wait_counter(&bed.a, "bar", 3);
    // `script` gives the command a pty of its own and copies what it draws to stdout
    let inner = bed
        .a
        .cmd(&["migrate", "--mode", "stream", "bar", bed.b.alias.as_str()]);
    let line: Vec<String> = std::iter::once(inner.get_program())
        .chain(inner.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect();
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &line.join(" "), "/dev/null"]);
    c.env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let o = c
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("MiB/s"),
        "no progress on a terminal: {text:?}"
    );
    assert!(text.contains("migrated bar"), "{text:?}");
    assert_runs_on(&bed.b, &bed.a, "bar");
    bed.a.ok(&["rm", "bar"]);
    let o = bed
        .b
        .run(&["migrate", "--mode", "stream", "bar", bed.a.alias.as_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "progress in a pipe: {:?}", stderr(&o));
    assert_runs_on(&bed.a, &bed.b, "bar");
}
