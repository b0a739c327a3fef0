//! Lazy restores (`stasis restore --lazy`, and restore-on-crash, which is lazy where CRIU can
//! use userfaultfd): the job runs again at once and its memory comes in on fault and in the
//! background; what it computes is what a full restore gives.

mod common;

use common::*;
use std::time::Duration;

/// 64 MiB of seeded random bytes; every SIGUSR1 prints their sha256.
const MEM_JOB: &str = "import hashlib,random,signal\nrandom.seed(7)\nbuf=bytearray(random.randbytes(64<<20))\ndef h(*_): print('sum', hashlib.sha256(buf).hexdigest(), flush=True)\nsignal.signal(signal.SIGUSR1, h)\nh()\nwhile True: signal.pause()\n";

fn sums(env: &Env, name: &str) -> Vec<String> {
    String::from_utf8_lossy(&env.logs(name))
        .lines()
        .filter_map(|l| l.strip_prefix("sum ").map(str::to_string))
        .collect()
}

/// Asks for one more sum and returns all of them.
fn one_more_sum(env: &Env, name: &str) -> Vec<String> {
    let n = sums(env, name).len();
    env.ok(&["kill", "-s", "USR1", name]);
    env.wait_until("a sum", Duration::from_secs(30), || {
        sums(env, name).len() > n
    });
    sums(env, name)
}

fn lazy_logs(env: &Env, name: &str) -> usize {
    std::fs::read_dir(env.root().join("workloads").join(name).join("criu"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("lazy-pages"))
                .count()
        })
        .unwrap_or(0)
}

/// A checkpoint right after a lazy restore is refused until the memory is all in: retry.
fn checkpoint_when_settled(env: &Env, name: &str, extra: &[&str]) {
    let mut args = vec!["checkpoint"];
    args.extend_from_slice(extra);
    args.push(name);
    env.wait_until(
        "a checkpoint to be accepted",
        Duration::from_secs(30),
        || {
            let o = env.run(&args);
            if !o.status.success() {
                assert!(
                    stderr(&o).contains("still receiving its memory"),
                    "{}",
                    stderr(&o)
                );
            }
            o.status.success()
        },
    );
}

#[test]
fn a_lazy_restore_gives_what_a_full_restore_gives() {
    require_criu();
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "mem", "--", "python3", "-c", MEM_JOB]);
    env.wait_until("the first sum", Duration::from_secs(60), || {
        !sums(&env, "mem").is_empty()
    });
    env.ok(&["checkpoint", "mem"]);
    env.ok(&["restore", "--lazy", "mem"]);
    assert_eq!(env.status("mem"), "running");
    assert_eq!(lazy_logs(&env, "mem"), 1, "the restore was not lazy");
    let s = one_more_sum(&env, "mem");
    assert_eq!(s[1], s[0], "memory differs after a lazy restore");
    checkpoint_when_settled(&env, "mem", &[]);
    env.ok(&["restore", "mem"]);
    let s = one_more_sum(&env, "mem");
    assert_eq!(s[2], s[0], "memory differs after a full restore");
}

#[test]
fn restore_on_crash_is_lazy_and_exact() {
    require_criu();
    let env = Env::new();
    let spec = env.root().join("mem.yaml");
    let cmd = serde_json::to_string(&["python3", "-c", MEM_JOB]).expect("json");
    std::fs::write(
        &spec,
        format!("name: mem\ncommand: {cmd}\non_exit: {{policy: restore, backoff: {{initial: 0s, max: 1s}}}}\n"),
    )
    .expect("spec");
    env.ok(&["run", "-d", "-f", spec.to_str().expect("path")]);
    env.wait_until("the first sum", Duration::from_secs(60), || {
        !sums(&env, "mem").is_empty()
    });
    env.ok(&["checkpoint", "--leave-running", "mem"]);
    let before = env.inspect("mem")["state"]["restores"]
        .as_u64()
        .unwrap_or(0);
    // A crash: the main process dies of a signal nobody asked stasis to send.
    let init = env.init_pid("mem");
    let kids =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    let main: i32 = kids
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("main process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    env.wait_until(
        "the restore after the crash",
        Duration::from_secs(30),
        || {
            env.inspect("mem")["state"]["restores"]
                .as_u64()
                .unwrap_or(0)
                > before
                && env.status("mem") == "running"
        },
    );
    assert_eq!(lazy_logs(&env, "mem"), 1, "restore-on-crash was not lazy");
    let s = one_more_sum(&env, "mem");
    assert_eq!(
        s.last(),
        s.first(),
        "memory differs after a lazy restore-on-crash"
    );
}

/// A lazy-pages daemon that cannot start is no failed restore: the restore goes on fully, the
/// job runs, and its events record a restore, not a `restore-failed`.
#[test]
fn a_daemon_that_cannot_start_gives_a_full_restore_and_no_failure() {
    let env = Env::new();
    let criu = stasis::criu::locate().expect("criu").path;
    // CRIU as it is, except that `criu lazy-pages` exits at once.
    let wrapper = env.root().join("criu-no-lazy");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ \"$1\" = lazy-pages ] && exit 3\nexec {} \"$@\"\n",
            criu.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod wrapper");
    let with_wrapper = |args: &[&str]| {
        let o = env
            .cmd(args)
            .env("STASIS_CRIU", &wrapper)
            .output()
            .expect("stasis");
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    with_wrapper(&["run", "-d", "--name", "d", "--", "sleep", "100000"]);
    with_wrapper(&["checkpoint", "d"]);
    with_wrapper(&["restore", "--lazy", "d"]);
    assert_eq!(env.status("d"), "running");
    let events = env.ok(&["events", "--format", "json", "d"]);
    assert!(events.contains("\"restore\""), "{events}");
    assert!(!events.contains("restore-failed"), "{events}");
    let log = std::fs::read_to_string(env.root().join("workloads/d/monitor.log")).expect("log");
    assert!(log.contains("restoring fully"), "{log}");
    env.ok(&["rm", "-f", "d"]);
}
