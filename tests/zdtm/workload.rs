//! stasis: each test started as a stasis workload in its own state root, checkpointed and
//! restored once, then sent SIGTERM; its own verdict (PASS in its outfile) is the result.

use super::desc::{plan, TestDesc};
use super::report::{Outcome, Stasis};
use crate::common::Env;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// zdtm tests daemonize: `make NAME.pid` returns once the test is ready and its parent has
/// exited, leaving the test daemon (reparented to the container's init) and a pidfile. The
/// workload must last as long as that daemon, so this wrapper announces readiness on stdout
/// and then lives while the pid in the pidfile does (the daemon removes its pidfile on exit).
const WRAPPER: &str = r#"make --no-print-directory "$1.pid" || exit 125
echo zdtm-ready
while kill -0 "$(cat "$1.pid" 2>/dev/null)" 2>/dev/null; do sleep 0.05; done"#;

const READY: &str = "zdtm-ready";

/// What every test's run shares.
pub struct Ctx {
    pub static_dir: PathBuf,
    /// `stasis checkpoint --help`'s flags.
    pub flags: BTreeSet<String>,
    /// Where a failed test's CRIU logs and workload log are kept.
    pub logs_dir: PathBuf,
    /// `criu check --feature` results, shared between workers.
    features: Mutex<BTreeMap<String, bool>>,
}

impl Ctx {
    pub fn new(static_dir: PathBuf, flags: BTreeSet<String>, logs_dir: PathBuf) -> Ctx {
        Ctx {
            static_dir,
            flags,
            logs_dir,
            features: Mutex::new(BTreeMap::new()),
        }
    }

    fn feature(&self, f: &str) -> bool {
        let mut m = self.features.lock().expect("features lock");
        *m.entry(f.to_string()).or_insert_with(|| {
            Command::new("criu")
                .args(["check", "--no-default-config", "--feature", f])
                .env("PATH", super::SYSTEM_PATH)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
    }
}

/// Runs every test: `jobs` at a time, then one by one those zdtm runs alone (excl, link-remap)
/// and those that open ptys.
pub fn run_all(ctx: &Ctx, descs: &[TestDesc], jobs: usize) -> BTreeMap<String, Stasis> {
    let (alone, shared): (Vec<&TestDesc>, Vec<&TestDesc>) = descs
        .iter()
        .partition(|d| d.exclusive() || opens_ptys(&ctx.static_dir, &d.name));
    let results = Mutex::new(BTreeMap::new());
    let queue = Mutex::new(shared.into_iter().collect::<VecDeque<_>>());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let Some(d) = queue.lock().expect("queue lock").pop_front() else {
                    break;
                };
                let r = run_one(ctx, d);
                results
                    .lock()
                    .expect("results lock")
                    .insert(d.name.clone(), r);
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    for d in alone {
        results.insert(d.name.clone(), run_one(ctx, d));
    }
    results
}

/// Whether the test opens ptys. Without a rootfs a stasis container shares the host's devpts,
/// where zdtm_ct gives each raw test its own instance; CRIU restores a pty at its old index, so
/// a pty test beside another one can find its index taken between dump and restore.
fn opens_ptys(static_dir: &Path, name: &str) -> bool {
    std::fs::read_to_string(static_dir.join(format!("{name}.c")))
        .map(|src| {
            ["/dev/ptmx", "openpty", "posix_openpt"]
                .iter()
                .any(|p| src.contains(p))
        })
        .unwrap_or(false)
}

/// One test, timed, with zdtm.py's reasons to skip it checked first.
pub fn run_one(ctx: &Ctx, d: &TestDesc) -> Stasis {
    let t0 = Instant::now();
    let (outcome, notes) = match prepare(ctx, d) {
        Err(o) => (o, vec![]),
        Ok(mut p) => {
            let o = round_trip(ctx, d, &p.checkpoint, &mut p.notes);
            (o, p.notes)
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "zdtm stasis: {:<32} {} {:.1}s",
        d.name,
        outcome.word(),
        secs
    );
    Stasis {
        outcome,
        notes,
        secs,
    }
}

/// zdtm.py's checks before it starts a test (arch, features, checkskip), then whether stasis
/// can express the test's CRIU options.
fn prepare(ctx: &Ctx, d: &TestDesc) -> Result<super::desc::Plan, Outcome> {
    if let Some(a) = &d.arch {
        // zdtm.py compares the whole string, so "x86_64 aarch64" skips on x86_64 too.
        if a != std::env::consts::ARCH {
            return Err(Outcome::Skip(format!("arch {a}")));
        }
    }
    for f in &d.feature {
        if !ctx.feature(f) {
            return Err(Outcome::Skip(format!("no {f} feature")));
        }
    }
    let checkskip = ctx.static_dir.join(format!("{}.checkskip", d.name));
    if is_executable(&checkskip) {
        let ok = Command::new(&checkskip)
            .current_dir(
                ctx.static_dir
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(&ctx.static_dir),
            )
            .env("PATH", super::SYSTEM_PATH)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(Outcome::Skip("checkskip failed".into()));
        }
    }
    if is_executable(&ctx.static_dir.join(format!("{}.hook", d.name))) {
        return Err(Outcome::CannotRun(
            "the test has a zdtm hook, which this runner does not call".into(),
        ));
    }
    if d.flag("crlib") {
        return Err(Outcome::CannotRun("needs CRIU's --libdir".into()));
    }
    plan(d, &ctx.flags).map_err(Outcome::CannotRun)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a stasis command with a bound; an overrun kills it (our child) and is an error.
fn bounded(mut cmd: Command, t: Duration) -> Result<Output, String> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(t) {
        Ok(r) => r.map_err(|e| format!("wait: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!("no answer within {t:?}"))
        }
    }
}

fn failed(what: &str, o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    let text = if err.trim().is_empty() { out } else { err };
    format!(
        "{what} exited {}: {}",
        o.status.code().unwrap_or(-1),
        text.trim().replace('\n', " / ")
    )
}

/// The container's view of a test: PATH etc. from stasis, the rest as zdtm.py sets it.
fn run_args(d: &TestDesc, static_dir: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        "z".into(),
        "-w".into(),
        static_dir.display().to_string(),
        // zdtm.py runs each test in zdtm_ct's own network namespace (lo up); this is stasis's.
        "--network".into(),
        "none".into(),
        // zdtm.py's tests run as root with root's capabilities and without no_new_privs;
        // stasis's defaults (a reduced set, no_new_privs) would fail fanotify_init and
        // /proc/PID/map_files (CAP_SYS_ADMIN) before any checkpoint.
        "--cap-add".into(),
        "ALL".into(),
        "--no-new-privs".into(),
        "false".into(),
    ];
    let mut env = vec![
        ("TMPDIR", "/tmp"),
        // zdtm.py asks for a thread bomb when it has no kernel freezer; nor does stasis.
        ("ZDTM_THREAD_BOMB", "5"),
        // as in the raw run: keeps the tests root (see raw.rs)
        ("ZDTM_ROOTLESS", "1"),
    ];
    if !d.flag("suid") {
        env.extend([
            ("ZDTM_UID", "18943"),
            ("ZDTM_GID", "58467"),
            ("ZDTM_GROUPS", "27495 48244"),
        ]);
    }
    for (k, v) in env {
        a.push("-e".into());
        a.push(format!("{k}={v}"));
    }
    a.extend(["--", "sh", "-c", WRAPPER, "sh"].map(String::from));
    a.push(d.name.clone());
    a
}

/// The zdtm run of one test under stasis: start, wait until ready, checkpoint, restore, check
/// no link-remap file is left, SIGTERM, wait for the end, read the test's verdict. A test
/// flagged crfail must fail its checkpoint (or restore) and carry on, as under zdtm.py.
fn round_trip(ctx: &Ctx, d: &TestDesc, ckpt_flags: &[String], notes: &mut Vec<String>) -> Outcome {
    let dir = &ctx.static_dir;
    let cleanout = Command::new("make")
        .args(["--no-print-directory", "-C"])
        .arg(dir)
        .arg(format!("{}.cleanout", d.name))
        .env("PATH", super::SYSTEM_PATH)
        .output();
    if !cleanout
        .as_ref()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        return Outcome::Fail(format!("make {}.cleanout failed: {cleanout:?}", d.name));
    }
    let env = Env::new();
    let r = steps(&env, ctx, d, ckpt_flags, notes);
    if !matches!(r, Outcome::Pass | Outcome::Skip(_)) {
        keep_logs(&env, ctx, d);
    }
    // Env's drop removes the workload (rm -f --all) and its cgroups, whatever happened.
    r
}

fn steps(
    env: &Env,
    ctx: &Ctx,
    d: &TestDesc,
    ckpt_flags: &[String],
    notes: &mut Vec<String>,
) -> Outcome {
    let t = Duration::from_secs(d.timeout);
    let run = |args: &[&str], t: Duration| bounded(env.cmd(args), t);
    let dir = &ctx.static_dir;
    let args = run_args(d, dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args, Duration::from_secs(30)) {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Outcome::Fail(failed("stasis run", &o)),
        Err(e) => return Outcome::Fail(format!("stasis run: {e}")),
    }
    if let Err(e) = wait_ready(env, t) {
        return Outcome::Fail(format!("start: {e}; {}", test_output(dir, &d.name)));
    }
    let mut ck: Vec<&str> = vec!["checkpoint"];
    ck.extend(ckpt_flags.iter().map(String::as_str));
    ck.push("z");
    let crfail = d.flag("crfail");
    let cr = Duration::from_secs(60);
    let dumped = match run(&ck, cr) {
        Ok(o) if o.status.success() => true,
        Ok(o) if crfail => {
            // the expected failure; stasis promises that the job keeps running
            let st = env.status("z");
            if st != "running" {
                return Outcome::Fail(format!(
                    "checkpoint failed as expected, but the workload is {st:?}, not running ({})",
                    failed("checkpoint", &o)
                ));
            }
            notes.push(format!("crfail: {}", failed("checkpoint", &o)));
            false
        }
        Ok(o) => return Outcome::Fail(failed("checkpoint", &o)),
        Err(e) => return Outcome::Fail(format!("checkpoint: {e}")),
    };
    if dumped {
        match run(&["restore", "z"], cr) {
            Ok(o) if o.status.success() => {}
            // zdtm.py counts an expected restore failure as the test's pass
            Ok(o) if crfail => {
                notes.push(format!("crfail: {}", failed("restore", &o)));
                return Outcome::Pass;
            }
            Ok(o) => return Outcome::Fail(failed("restore", &o)),
            Err(e) => return Outcome::Fail(format!("restore: {e}")),
        }
        if d.link_remap() {
            let left = link_remap_files(dir);
            if !left.is_empty() {
                return Outcome::Fail(format!("link-remap files left after restore: {left:?}"));
            }
        }
    }
    match stop_and_verdict(env, dir, &d.name, t) {
        Outcome::Pass if crfail && dumped => Outcome::Fail(
            "unexpected success: checkpoint and restore worked for a crfail test".into(),
        ),
        v => v,
    }
}

/// Waits until the wrapper says the test is ready, or the workload ends (a failed start).
fn wait_ready(env: &Env, t: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let logs = bounded(env.cmd(&["logs", "z"]), Duration::from_secs(10))?;
        if String::from_utf8_lossy(&logs.stdout)
            .lines()
            .any(|l| l == READY)
        {
            return Ok(());
        }
        let st = env.status("z");
        if st != "running" {
            let text = String::from_utf8_lossy(&logs.stdout).into_owned();
            return Err(format!(
                "the workload is {st:?} before the test was ready: {}",
                text.trim().replace('\n', " / ")
            ));
        }
        if t0.elapsed() > t {
            return Err(format!("not ready within {t:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to the test, as zdtm.py sends it: kill(pid) of the test daemon alone (its pidfile
/// holds its pid inside the container), then its verdict once the workload has ended, read as
/// zdtm.py reads it: PASS on the outfile's last line. Not `stasis kill`: that signals the
/// workload's process group, which holds a test's helper processes too (socket-tcp's client
/// would die of it). The exec session is detached: it cannot report its own exit when the
/// container ends with the test a few milliseconds later.
fn stop_and_verdict(env: &Env, dir: &Path, name: &str, t: Duration) -> Outcome {
    let pid = match std::fs::read_to_string(dir.join(format!("{name}.pid"))) {
        Ok(p) if p.trim().parse::<u32>().is_ok() => p.trim().to_string(),
        other => {
            return Outcome::Fail(format!(
                "the test is gone after the restore (pidfile: {other:?}); {}",
                test_output(dir, name)
            ))
        }
    };
    let kill = [
        "exec",
        "-d",
        "z",
        "--",
        "sh",
        "-c",
        r#"kill -TERM "$1""#,
        "sh",
        &pid,
    ];
    match bounded(env.cmd(&kill), Duration::from_secs(30)) {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Outcome::Fail(failed("SIGTERM through stasis exec -d", &o)),
        Err(e) => return Outcome::Fail(format!("SIGTERM through stasis exec -d: {e}")),
    }
    if let Err(e) = bounded(env.cmd(&["wait", "z"]), t) {
        return Outcome::Fail(format!(
            "the test did not end after SIGTERM: {e}; {}",
            test_output(dir, name)
        ));
    }
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
    let last = out.lines().last().unwrap_or("");
    if last.split_whitespace().any(|w| w == "PASS") {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("result check: {}", test_output(dir, name)))
    }
}

/// The test's own account: its outfile, or the one it writes while running.
fn test_output(dir: &Path, name: &str) -> String {
    for suffix in [".out", ".out.inprogress"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(format!("{name}{suffix}"))) {
            let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
            return format!("test output: {tail}");
        }
    }
    "no test output".into()
}

/// What zdtm.py looks for after a --link-remap restore: link_remap.* files CRIU should have
/// removed from the test directory.
fn link_remap_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("link_remap"))
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps what explains a failure beyond the state root's life: CRIU's logs and the workload's
/// log, under the report's directory.
fn keep_logs(env: &Env, ctx: &Ctx, d: &TestDesc) {
    let dest = ctx.logs_dir.join(&d.name);
    let _ = std::fs::remove_dir_all(&dest);
    let _ = std::fs::create_dir_all(&dest);
    let criu_dir = env.root().join("workloads/z/criu");
    if let Ok(rd) = std::fs::read_dir(&criu_dir) {
        for e in rd.flatten() {
            let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
        }
    }
    let wd = env.root().join("workloads/z");
    for f in ["monitor.log", "events.jsonl", "state.json"] {
        let _ = std::fs::copy(wd.join(f), dest.join(f));
    }
    let _ = std::fs::write(dest.join("workload.log"), env.logs("z"));
}
