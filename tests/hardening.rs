//! Regression tests for the adversarial pass (issue "Hardening"): one test per defect, named
//! after its item number, each reproducing what broke and asserting it no longer does.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Item 1: `rm`, `inspect` and `logs` validate names; nothing outside the state root is ever
/// touched, and an empty name or `.` never means "everything".
#[test]
fn item_01_names_are_validated_before_any_path_is_made() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "keep", "--", "sleep", "1000"]);
    let outside = tempfile::tempdir().expect("tmp");
    let victim = outside.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    // a path from the workloads directory up to the victim
    let up = format!(
        "../../../../../../../../..{}",
        victim.to_str().expect("utf-8 path")
    );
    for args in [
        vec!["rm", "-f", up.as_str()],
        vec!["rm", "-f", ""],
        vec!["rm", "-f", "."],
        vec!["rm", "-f", ".."],
        vec!["inspect", up.as_str()],
        vec!["logs", up.as_str()],
        vec!["logs", ""],
        vec!["kill", "."],
    ] {
        let o = env.run(&args);
        assert_eq!(code(&o), 125, "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("invalid name") && e.lines().count() == 1,
            "{args:?}: {e}"
        );
    }
    assert!(
        victim.is_dir(),
        "rm deleted a directory outside the state root"
    );
    assert_eq!(
        env.status("keep"),
        "running",
        "a bad name touched a workload"
    );
    // an exec session id names files too
    let o = env.run(&["logs", "--exec", "../../spec", "keep"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("invalid exec session id"),
        "{}",
        stderr(&o)
    );
}

/// Rewrites the header of an export archive with `f`.
fn rewrite_archive(src: &Path, dst: &Path, f: impl Fn(&mut serde_json::Value)) {
    let data = std::fs::read(src).expect("read archive");
    let tar_bytes = zstd::decode_all(data.as_slice()).expect("zstd");
    let mut ar = tar::Archive::new(tar_bytes.as_slice());
    let mut out = tar::Builder::new(Vec::new());
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").to_path_buf();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut body).expect("body");
        if path == Path::new("stasis-export.json") {
            let mut v: serde_json::Value = serde_json::from_slice(&body).expect("header");
            f(&mut v);
            body = serde_json::to_vec(&v).expect("json");
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        out.append_data(&mut h, &path, body.as_slice())
            .expect("append");
    }
    let tar_bytes = out.into_inner().expect("tar");
    std::fs::write(
        dst,
        zstd::encode_all(tar_bytes.as_slice(), 3).expect("zstd"),
    )
    .expect("write");
}

/// Item 2: an import never writes where the archive says: the init copy is named by its own
/// build-id inside this host's store, checked before anything is written; a damaged archive
/// gives one printable line.
#[test]
fn item_02_import_writes_nothing_outside_the_store() {
    require_criu();
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "src", "--", "sleep", "1000"]);
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.tar.zst");
    env.ok(&[
        "checkpoint",
        "src",
        "--export",
        good.to_str().expect("utf-8"),
    ]);
    let evil_dir = dir.path().join("etc/cron.d");
    let evil = dir.path().join("evil.tar.zst");
    let target = evil_dir.join("stasis-init-x");
    rewrite_archive(&good, &evil, |v| {
        v["manifest"]["init_path"] = serde_json::json!(target);
    });
    let o = env.run(&[
        "restore",
        "--import",
        evil.to_str().expect("utf-8"),
        "--name",
        "imported",
    ]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("keeps init copies in"),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.path().join("etc").exists(),
        "the import created directories outside the store"
    );
    assert_eq!(
        env.status("imported"),
        "",
        "a refused import left a workload"
    );
    // random bytes: one printable line, no binary
    let junk = dir.path().join("junk.tar.zst");
    let mut bytes = vec![0x28u8, 0xb5, 0x2f, 0xfd, 0x00, 0x58];
    bytes.extend((0..20000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&junk, &bytes).expect("write junk");
    let o = env.run(&["restore", "--import", junk.to_str().expect("utf-8")]);
    assert_eq!(code(&o), 125);
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e:?}");
    assert!(
        e.trim_end().chars().all(|c| !c.is_control()),
        "binary in the error line: {e:?}"
    );
    // the good archive still imports
    env.ok(&[
        "restore",
        "--import",
        good.to_str().expect("utf-8"),
        "--name",
        "copy",
    ]);
    env.wait_until("copy to run", Duration::from_secs(20), || {
        env.status("copy") == "running"
    });
}

/// Item 3: with stdout and stderr one file description (`> f 2>&1`), every line of `run` and
/// `exec` reaches the file, in the order it was written, every time.
#[test]
fn item_03_one_file_for_stdout_and_stderr_keeps_every_line_in_order() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "box", "--", "sleep", "100000"]);
    let out = env.root().join("f");
    let bin = bin();
    let root = env.root().to_str().expect("utf-8").to_string();
    let script = format!(
        "for i in $(seq 1000); do {{ echo first; '{b}' --root '{root}' run --rm -- sh -c 'echo a; echo b >&2; echo c; echo d >&2'; echo after; }} >> '{f}' 2>&1; done; \
         for i in $(seq 200); do {{ echo first; '{b}' --root '{root}' exec box -- sh -c 'echo a; echo b >&2; echo c; echo d >&2'; echo after; }} >> '{f}' 2>&1; done",
        b = bin.display(),
        f = out.display()
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).expect("read f");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1200 * 6, "lines lost");
    for (i, chunk) in lines.chunks(6).enumerate() {
        assert_eq!(
            chunk,
            ["first", "a", "b", "c", "d", "after"],
            "round {i} out of order or lost"
        );
    }
}

/// Item 4: `run -- yes | head -1` ends like `yes | head -1` does: 141, at once, and the job
/// with it (its log does not grow on).
#[test]
fn item_04_a_closed_reader_ends_the_client_with_141() {
    let env = Env::new();
    let bin = bin();
    let root = env.root().to_str().expect("utf-8").to_string();
    for (what, cmd) in [
        (
            "run",
            format!("'{}' --root '{root}' run --name y -- yes", bin.display()),
        ),
        (
            "exec",
            format!("'{}' --root '{root}' exec box -- yes", bin.display()),
        ),
    ] {
        if what == "exec" {
            env.ok(&["run", "-d", "--name", "box", "--", "sleep", "100000"]);
        }
        let t0 = std::time::Instant::now();
        let o = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("{cmd} | head -1; echo ${{PIPESTATUS[0]}} >&2"),
            ])
            .output()
            .expect("bash");
        assert_eq!(stdout(&o), "y\n", "{what}");
        assert_eq!(stderr(&o).trim(), "141", "{what}: {}", stderr(&o));
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{what} took {:?}",
            t0.elapsed()
        );
    }
    // the job got SIGPIPE too
    env.wait_status("y", "exited");
    assert_eq!(env.inspect("y")["state"]["exit"]["code"], 141);
}

/// Item 6: CLI output into a closed pipe ends the CLI quietly (SIGPIPE), never a panic.
#[test]
fn item_06_output_into_a_closed_pipe_is_quiet() {
    let env = Env::new();
    for i in 0..3 {
        env.ok(&[
            "run",
            "-d",
            "--name",
            &format!("p{i}"),
            "--",
            "sleep",
            "1000",
        ]);
    }
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    let o = env
        .cmd(&["ps", "-a"])
        .stdout(std::process::Stdio::from(w))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("ps");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{:?}", o.status);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// Item 5: a stopped client (Ctrl-Z, SIGSTOP) never holds back the job or its log; once it
/// runs again it gets every byte, from the log where it fell behind.
#[test]
fn item_05_a_stopped_client_never_holds_back_the_job() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "fast",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 400000 ]; do echo $i; i=$((i+1)); done; sleep 1000",
    ]);
    let mut client = env
        .cmd(&["attach", "--no-stdin", "fast"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("attach");
    let pid = nix::unistd::Pid::from_raw(client.id() as i32);
    // read the client's output as it comes (the client, not this reader, will be stopped)
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = client.stdout.take().expect("stdout");
    let sink = got.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    env.wait_until("the client to be attached", Duration::from_secs(20), || {
        !got.lock().expect("lock").is_empty()
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop the client");
    // the job writes 400000 lines (2.6 MB, far more than any pipe holds) and its log has them
    env.wait_until(
        "the job to finish writing with its client stopped",
        Duration::from_secs(60),
        || counter_values(&env.logs("fast")).last() == Some(&399_999),
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("resume the client");
    // a grace period long enough that SIGTERM, not the SIGKILL after it, ends the job: 143
    env.ok(&["stop", "-t", "60", "fast"]);
    let status = wait_output(client, Duration::from_secs(60), "attach").status;
    assert_eq!(status.code(), Some(143), "{status:?}");
    reader.join().expect("reader");
    let vals = counter_values(&got.lock().expect("lock"));
    // it attached somewhere in the stream: from there on, nothing is missing
    let first = *vals.first().expect("the client got output");
    let want: Vec<u64> = (first..400_000).collect();
    if let Some(i) = (0..want.len()).find(|&i| vals.get(i) != Some(&want[i])) {
        panic!(
            "the client lost or reordered output: at line {i} it got {:?} where {} was due ({} lines in all)",
            vals.get(i..(i + 3).min(vals.len())),
            want[i],
            vals.len()
        );
    }
    assert_eq!(
        vals.len(),
        want.len(),
        "the client got more than was written"
    );
}

/// Item 10: a job that writes survives its monitor's SIGKILL: it waits on its pipe instead of
/// dying of SIGPIPE, the next command adopts it, and its log goes on without a gap.
#[test]
fn item_10_a_writing_job_survives_its_monitors_death() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "w", "--", "sh", "-c", COUNTER]);
    env.wait_until("output", Duration::from_secs(20), || {
        counter_values(&env.logs("w")).len() > 5
    });
    let monitor = env.inspect("w")["state"]["monitor"]["pid"]
        .as_i64()
        .expect("monitor pid") as i32;
    let init = env.init_pid("w");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the monitor");
    env.wait_until("the monitor to be gone", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{monitor}")).exists()
            || stasis::sys::proc_state(monitor) == Some('Z')
    });
    // the job goes on writing into the pipes init keeps
    let before = std::fs::metadata(format!("/proc/{init}")).is_ok();
    assert!(before, "the job died with its monitor");
    // any command that touches it adopts it
    let st = env.inspect("w");
    assert_eq!(st["state"]["status"], "running");
    assert_eq!(st["state"]["init"]["pid"], init);
    assert!(st["monitor_alive"].as_bool().unwrap_or(false), "{st}");
    let n = counter_values(&env.logs("w")).len();
    env.wait_until(
        "the log to grow under the new monitor",
        Duration::from_secs(20),
        || counter_values(&env.logs("w")).len() > n + 10,
    );
    assert_counter_continuous(&counter_values(&env.logs("w")));
    // the new monitor checkpoints and restores it like the old one
    env.ok(&["checkpoint", "w"]);
    env.ok(&["restore", "w"]);
    let n = counter_values(&env.logs("w")).len();
    env.wait_until("output after the restore", Duration::from_secs(20), || {
        counter_values(&env.logs("w")).len() > n + 5
    });
    assert_counter_continuous(&counter_values(&env.logs("w")));
}

/// A raw connection to a workload's monitor, as another version of stasis would open it.
fn monitor_conn(env: &Env, name: &str) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let path = env.root().join("run").join(format!("{name}.sock"));
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(&path).expect("addr"),
    )
    .expect("connect to the monitor");
    fd
}

fn send_raw(fd: &std::os::fd::OwnedFd, msg: &[u8]) -> nix::Result<usize> {
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        msg,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
}

fn recv_raw(fd: &std::os::fd::OwnedFd) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Item 12: CRIU's per-operation logs go with their generations, and `rm -f` leaves nothing of
/// the job anywhere (its directory, its runtime files, the init store's shared files only).
#[test]
fn item_12_criu_logs_are_pruned_with_their_generations() {
    let env = Env::new();
    env.ok(&[
        "run", "-d", "--name", "p", "--keep", "3", "--", "sleep", "100000",
    ]);
    for _ in 0..30 {
        env.ok(&["checkpoint", "--leave-running", "p"]);
    }
    env.ok(&["checkpoint", "p"]);
    env.ok(&["restore", "p"]);
    let gens: Vec<u32> = std::fs::read_dir(env.root().join("workloads/p/checkpoints"))
        .expect("checkpoints")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(gens.len(), 3, "{gens:?}");
    let logs_dir = env.root().join("workloads/p/criu");
    env.wait_until(
        "pruned generations' logs to go",
        Duration::from_secs(20),
        || {
            std::fs::read_dir(&logs_dir)
                .map(|rd| {
                    rd.flatten().all(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        // dump-N.log / restore-N.log of a kept generation only
                        n.trim_end_matches(".log")
                            .rsplit('-')
                            .next()
                            .and_then(|g| g.parse::<u32>().ok())
                            .is_some_and(|g| gens.contains(&g))
                    })
                })
                .unwrap_or(false)
        },
    );
    let init_store = std::env::var("STASIS_INIT_DIR").unwrap_or("/var/lib/stasis/init".into());
    let before: Vec<_> = std::fs::read_dir(&init_store)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    env.ok(&["checkpoint", "p"]);
    env.ok(&["rm", "-f", "p"]);
    assert!(
        !env.root().join("workloads/p").exists(),
        "rm left the job's directory"
    );
    let run: Vec<_> = std::fs::read_dir(env.root().join("run"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        run.iter().all(|n| !n.to_string_lossy().starts_with("p.")),
        "rm left runtime files: {run:?}"
    );
    let after: Vec<_> = std::fs::read_dir(&init_store)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        after
            .iter()
            .all(|n| before.contains(n) && !n.to_string_lossy().contains("-p")),
        "rm left files in the init store: {after:?}"
    );
}

/// Item 13: a spec with 50k environment variables is refused at once, in one line naming the
/// sizes and the limit, and leaves no record; a large but sane environment works.
#[test]
fn item_13_a_huge_environment_is_refused_up_front() {
    let env = Env::new();
    let mut yaml = String::from("name: big\ncommand: [sh, -c, 'echo $V49999']\nenv:\n");
    for i in 0..50_000 {
        yaml.push_str(&format!("  V{i}: x{i}\n"));
    }
    let spec = env.root().join("big.yaml");
    std::fs::write(&spec, &yaml).expect("spec");
    let t0 = std::time::Instant::now();
    let o = env.run(&["run", "-f", spec.to_str().expect("p")]);
    let err = stderr(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("50000 variables") && err.contains("128 KiB"),
        "{err}"
    );
    assert!(env.ok(&["ps", "-a"]).lines().all(|l| !l.starts_with("big")));
    eprintln!("refused in {:?}", t0.elapsed());
    // 2000 variables are fine, and every one reaches the job
    let mut yaml = String::from("name: fine\ncommand: [sh, -c, 'echo $V1999']\nenv:\n");
    for i in 0..2000 {
        yaml.push_str(&format!("  V{i}: x{i}\n"));
    }
    std::fs::write(&spec, &yaml).expect("spec");
    let o = env.run(&["run", "--rm", "-f", spec.to_str().expect("p")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "x1999");
}

/// Item 17: every request, not only Start, is checked for its protocol version: a checkpoint,
/// an exec or a stop from another version is answered with one clear line and does nothing.
#[test]
fn item_17_requests_from_another_protocol_version_are_refused() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "v", "--", "sleep", "100000"]);
    let init = env.init_pid("v");
    for old in [
        r#"{"op":"checkpoint","opts":{"leave_running":true}}"#.to_string(),
        r#"{"v":1,"op":"stop","timeout_ms":0}"#.to_string(),
        r#"{"v":99,"op":"exec","req":{"command":["true"]}}"#.to_string(),
    ] {
        let c = monitor_conn(&env, "v");
        send_raw(&c, old.as_bytes()).expect("send");
        let reply = recv_raw(&c);
        assert!(
            reply.contains("speaks protocol") && reply.contains("this stasis speaks 2"),
            "{old} got {reply}"
        );
    }
    assert_eq!(env.status("v"), "running");
    assert_eq!(env.init_pid("v"), init);
    assert!(!env.root().join("workloads/v/checkpoints/1").exists());
}

/// Item 18: a client that never reads its replies cannot stall the monitor: other clients of
/// the same job are answered, and the job's log goes on.
#[test]
fn item_18_a_client_that_never_reads_cannot_stall_the_monitor() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "s", "--", "sh", "-c", COUNTER]);
    let status = stasis::protocol::encode(&stasis::protocol::Request::Status).expect("encode");
    let deaf = monitor_conn(&env, "s");
    // Requests until the socket buffer is full: the monitor's replies pile up unread.
    let mut sent = 0;
    while sent < 100_000 && send_raw(&deaf, &status).is_ok() {
        sent += 1;
    }
    for _ in 0..5 {
        assert_eq!(env.status("s"), "running");
    }
    let n = counter_values(&env.logs("s")).len();
    env.wait_until("the log to grow", Duration::from_secs(20), || {
        counter_values(&env.logs("s")).len() > n + 5
    });
    env.ok(&["exec", "s", "--", "true"]);
    drop(deaf);
}
