//! Fault suites: CRIU and the monitor killed at random moments of real dumps, restores, runs
//! and execs. After every trial: no half generation (every generation verifies), never two
//! copies of the job, `ps` truthful, and the job running (or restorable, and then restored).
//!
//! The seed of each suite is printed; `STASIS_FAULT_SEED=N` replays a run.

mod common;

use common::*;
use serde_json::Value;
use std::process::Child;
use std::time::{Duration, Instant};

/// A small xorshift generator: enough to spread kills over the phases of a dump.
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("STASIS_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        eprintln!("{what}: STASIS_FAULT_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// (pid, ppid, comm) of every process but zombies.
fn processes() -> Vec<(i32, i32, String)> {
    common::hosts::procs()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .map(|p| (p.pid, p.ppid, p.comm))
        .collect()
}

/// Copies of the job: live shells whose command line contains `token` (its monitor, forked
/// from the CLI, has the same command line but another name), not counting a shell's own
/// fork on its way to exec `sleep`.
fn copies_of(token: &str) -> usize {
    let shells: Vec<(i32, i32)> = processes()
        .into_iter()
        .filter(|(_, _, comm)| comm == "sh")
        .filter(|(pid, _, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(token))
                .unwrap_or(false)
        })
        .map(|(p, pp, _)| (p, pp))
        .collect();
    shells
        .iter()
        .filter(|(_, pp)| !shells.iter().any(|(p, _)| p == pp))
        .count()
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits until `child` has a child named `comm` (or `child` ends); its pid.
fn wait_for_child_named(parent: i32, comm: &str, cmd: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some((pid, _, _)) = processes()
            .into_iter()
            .find(|(_, ppid, c)| *ppid == parent && c == comm)
        {
            return Some(pid);
        }
        if cmd.try_wait().ok().flatten().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn monitor_pid(env: &Env, name: &str) -> Option<i32> {
    let v = env.inspect(name);
    v["monitor_alive"]
        .as_bool()
        .filter(|a| *a)
        .and(v["state"]["monitor"]["pid"].as_i64())
        .map(|p| p as i32)
}

/// Every generation verifies (none is half written).
fn generations_verify(env: &Env, name: &str) {
    let out = env.ok(&["checkpoints", name, "--format", "json"]);
    let gens: Vec<Value> = serde_json::from_str(&out).expect("checkpoints json");
    for g in &gens {
        assert_eq!(g["ok"], true, "generation does not verify: {g}");
    }
    let dir = env.root().join("workloads").join(name).join("checkpoints");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.parse::<u32>().is_ok() {
                assert!(
                    e.path().join("manifest.json").is_file(),
                    "generation {n} has no manifest"
                );
            }
        }
    }
}

/// The job runs under a live monitor, exactly once, and `ps` says so; a checkpointed job is
/// restored first (a dump that finished is what the user asked for).
fn settle_running(env: &Env, name: &str, token: &str, trial: usize) {
    let t0 = Instant::now();
    loop {
        let st = env.status(name);
        let v = env.inspect(name);
        let monitor = v["monitor_alive"].as_bool().unwrap_or(false);
        if st == "running" && monitor && copies_of(token) == 1 {
            break;
        }
        if st == "checkpointed" {
            let o = env.run(&["restore", name]);
            assert_eq!(code(&o), 0, "trial {trial}: restore: {}", stderr(&o));
            continue;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "trial {trial}: {name} did not come back: status {st}, monitor {monitor}, {} copies; {v}",
            copies_of(token)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(copies_of(token), 1, "trial {trial}: two copies of the job");
    let ps = env.ok(&["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(name) && l.contains("running")),
        "trial {trial}: ps says {ps}"
    );
}

fn token_job(env: &Env, name: &str, token: &str) {
    let script = format!("T={token}; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done");
    env.ok(&[
        "run", "-d", "--name", name, "--keep", "3", "--", "sh", "-c", &script,
    ]);
    env.wait_until("output", Duration::from_secs(20), || {
        !counter_values(&env.logs(name)).is_empty()
    });
}

/// Issue 9, item 9 (and the fault suite): `criu` SIGKILLed at 100 random moments of dumps, half of them --leave-running;
/// the job is running afterwards every time, directly or brought back from a generation.
#[test]
fn item_09_criu_killed_at_random_moments_of_dumps() {
    require_criu();
    let env = Env::new();
    let mut rng = Rng::new("criu kills");
    let token = format!("stasisfault{}", std::process::id());
    token_job(&env, "job", &token);
    // one clean generation first, so a dump that takes the job with it has one to come from
    env.ok(&["checkpoint", "--leave-running", "job"]);
    let (mut killed, mut finished) = (0, 0);
    // The moment is drawn from [0, span): a dump that ends before the kill lands shrinks the span,
    // so the kills land inside CRIU's run however fast this machine and this build dump.
    let mut span = 200_000u64;
    let mut trial = 0;
    while killed < 100 {
        assert!(
            trial < 400,
            "only {killed} of {trial} kills landed inside a dump"
        );
        trial += 1;
        let leave = trial % 2 == 0;
        let monitor = monitor_pid(&env, "job").expect("a monitor");
        let mut args = vec!["checkpoint", "job"];
        if leave {
            args.insert(1, "--leave-running");
        }
        let mut cmd = env
            .cmd(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("checkpoint");
        if let Some(criu) = wait_for_child_named(monitor, "criu", &mut cmd, Duration::from_secs(10))
        {
            std::thread::sleep(Duration::from_micros(rng.below(span)));
            if processes()
                .iter()
                .any(|(p, pp, c)| *p == criu && *pp == monitor && c == "criu")
            {
                kill9(criu);
                killed += 1;
            } else {
                finished += 1;
                span = (span * 3 / 4).max(2_000);
            }
        }
        let _ = wait_output(cmd, Duration::from_secs(120), "checkpoint");
        settle_running(&env, "job", &token, trial);
        generations_verify(&env, "job");
    }
    eprintln!("criu killed in {killed} trials, finished first in {finished}");
}

/// Hardening: the monitor SIGKILLed at 50 random moments across run, exec, checkpoint and
/// restore; the next command adopts the job (or finds it checkpointed, as asked), its log
/// continuous.
#[test]
fn monitor_killed_at_random_moments() {
    require_criu();
    let env = Env::new();
    let mut rng = Rng::new("monitor kills");
    let token = format!("stasismon{}", std::process::id());
    token_job(&env, "job", &token);
    for trial in 0..50 {
        match trial % 4 {
            // run: the monitor of a job being started
            0 => {
                let name = format!("r{trial}");
                let tok = format!("{token}r{trial}");
                let script =
                    format!("T={tok}; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done");
                let cmd = env
                    .cmd(&["run", "-d", "--name", &name, "--", "sh", "-c", &script])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("run");
                let delay = Duration::from_micros(rng.below(20_000));
                let t0 = Instant::now();
                let mon = loop {
                    let p = processes().into_iter().find(|(pid, _, c)| {
                        c == "stasis-monitor"
                            && std::fs::read(format!("/proc/{pid}/cmdline"))
                                .map(|c| {
                                    let c = String::from_utf8_lossy(&c);
                                    c.contains(&name)
                                        && c.contains(env.root().to_str().unwrap_or("-"))
                                })
                                .unwrap_or(false)
                    });
                    if let Some((pid, _, _)) = p {
                        break Some(pid);
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        break None;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                };
                std::thread::sleep(delay);
                if let Some(m) = mon {
                    kill9(m);
                }
                let _ = wait_output(cmd, Duration::from_secs(60), "run");
                // the workload started and is adopted, or it never started and says so
                env.wait_until("a truthful state", Duration::from_secs(30), || {
                    let o = env.run(&["inspect", "--format", "json", &name]);
                    if code(&o) != 0 {
                        let log = env.root().join("workloads").join(&name).join("monitor.log");
                        panic!(
                            "trial {trial}: inspect {name}: {}\nmonitor.log:\n{}",
                            stderr(&o),
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
                    let st = v["state"]["status"].as_str().unwrap_or("").to_string();
                    (st == "running" && v["monitor_alive"] == true && copies_of(&tok) == 1)
                        || (st == "exited" && copies_of(&tok) == 0)
                });
                if env.status(&name) == "running" {
                    let n = counter_values(&env.logs(&name)).len();
                    env.wait_until("its log to grow", Duration::from_secs(20), || {
                        counter_values(&env.logs(&name)).len() > n + 3
                    });
                    assert_counter_continuous(&counter_values(&env.logs(&name)));
                }
                env.ok(&["rm", "-f", &name]);
                assert_eq!(copies_of(&tok), 0, "trial {trial}: rm left the job running");
            }
            // exec, checkpoint --leave-running, restore: the long-running job's monitor
            op => {
                if op == 3 {
                    env.ok(&["checkpoint", "job"]);
                }
                let monitor = monitor_pid(&env, "job");
                let args: Vec<&str> = match op {
                    1 => vec![
                        "exec",
                        "-d",
                        "job",
                        "--",
                        "sh",
                        "-c",
                        "echo session; sleep 5",
                    ],
                    2 => vec!["checkpoint", "--leave-running", "job"],
                    _ => vec!["restore", "job"],
                };
                let cmd = env
                    .cmd(&args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("command");
                std::thread::sleep(Duration::from_micros(rng.below(60_000)));
                let target = match (op, monitor) {
                    (_, Some(m)) => Some(m),
                    // a restore starts a new monitor: find it
                    _ => monitor_pid(&env, "job"),
                };
                if let Some(m) = target {
                    kill9(m);
                }
                let _ = wait_output(cmd, Duration::from_secs(60), "command");
                settle_running(&env, "job", &token, trial);
                generations_verify(&env, "job");
            }
        }
    }
    // nothing rolled back (every restore was of the dump just taken): the whole log is one
    // continuous count, across every monitor that wrote it
    assert_counter_continuous(&counter_values(&env.logs("job")));
    // A monitor killed mid-restore leaves the fresh /dev/shm it mounted for CRIU on the host;
    // the next command (or rm) takes it away: nothing stays mounted under the root.
    env.ok(&["rm", "-f", "--all"]);
    let root = env.root().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "mounts left under {root}: {left:?}");
}

/// Hardening item 8: CRIU killed right after it killed the dumped tree (simulated by a
/// wrapper that runs the real CRIU to the end, removes its stats and dies of SIGKILL): the
/// finished images are kept as the generation, which restores.
#[test]
fn item_08_criu_killed_after_killing_the_tree_keeps_the_images() {
    require_criu();
    let env = Env::new();
    let token = format!("stasisitem8{}", std::process::id());
    token_job(&env, "job", &token);
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v criu"])
        .output()
        .expect("which criu");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let wrapper = env.root().join("criu-dies");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\"{real}\" \"$@\"; rc=$?\n[ \"$1\" = dump ] || exit $rc\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --images-dir ] && rm -f \"$2/stats-dump\"; shift; done\n\
             kill -9 $$\n"
        ),
    )
    .expect("wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let n = counter_values(&env.logs("job")).len();
    let o = env
        .cmd(&["checkpoint", "job"])
        .env("STASIS_CRIU", &wrapper)
        .output()
        .expect("checkpoint");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(env.status("job"), "checkpointed");
    assert_eq!(copies_of(&token), 0);
    generations_verify(&env, "job");
    env.ok(&["restore", "job"]);
    env.wait_until("output after the restore", Duration::from_secs(20), || {
        counter_values(&env.logs("job")).len() > n + 5
    });
    assert_counter_continuous(&counter_values(&env.logs("job")));
}

/// Issue 9, item 7: the monitor SIGKILLed while CRIU restores. CRIU finishes; the next command
/// adopts the restored job (never `checkpointed` while it runs), and a second restore is
/// refused instead of starting a second copy.
#[test]
fn item_07_monitor_killed_during_a_restore_never_makes_two_copies() {
    require_criu();
    let env = Env::new();
    let token = format!("stasisitem7x{}", std::process::id());
    token_job(&env, "job", &token);
    env.ok(&["checkpoint", "job"]);
    assert_eq!(copies_of(&token), 0);
    let monitor = monitor_pid(&env, "job").expect("the monitor stays after a checkpoint");
    let mut cmd = env
        .cmd(&["restore", "job"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restore");
    let criu = wait_for_child_named(monitor, "criu", &mut cmd, Duration::from_secs(20))
        .expect("the monitor runs criu restore");
    kill9(monitor);
    let _ = wait_output(cmd, Duration::from_secs(60), "restore");
    // CRIU outlives its parent and finishes (it holds the workload lock meanwhile).
    env.wait_until("criu to finish", Duration::from_secs(60), || {
        !std::path::Path::new(&format!("/proc/{criu}")).exists()
    });
    env.wait_until(
        "the restored job under a new monitor",
        Duration::from_secs(30),
        || {
            let v = env.inspect("job");
            v["state"]["status"] == "running" && v["monitor_alive"] == true
        },
    );
    assert_eq!(copies_of(&token), 1, "one copy after adoption");
    let ps = env.ok(&["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("job") && l.contains("running")),
        "ps says {ps}"
    );
    let o = env.run(&["restore", "job"]);
    assert_ne!(
        code(&o),
        0,
        "a second restore of a running job must be refused"
    );
    assert_eq!(copies_of(&token), 1, "a second restore made a second copy");
    let n = counter_values(&env.logs("job")).len();
    env.wait_until("its log to grow", Duration::from_secs(20), || {
        counter_values(&env.logs("job")).len() > n + 3
    });
    assert_counter_continuous(&counter_values(&env.logs("job")));
}

/// A monitor killed between starting a container and naming its init anywhere leaves an init
/// no command can find: it must end by itself once its grace for being asked for a workload
/// is over (the argument shortens the 60 s grace). Run here as a plain process, with fds 3
/// and 4 its control pair, as the container's setup leaves them.
#[test]
fn an_init_never_asked_for_its_workload_ends_by_itself() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (a, b) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
    let mut cmd = std::process::Command::new(bin());
    cmd.arg0("stasis-init").arg("200");
    // SAFETY: only async-signal-safe dup2 calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(ra, 3) < 0 || libc::dup2(rb, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn stasis-init");
    drop((a, b));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(status) => assert_eq!(status.expect("wait").code(), Some(125)),
        Err(_) => {
            kill9(pid as i32);
            panic!(
                "stasis-init (pid {pid}) still waits for a workload 30 s after its 200 ms grace"
            );
        }
    }
}
