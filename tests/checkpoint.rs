//! Checkpoint and restore with the real CRIU, end to end, as root: the workload's stdio
//! plumbing survives (log, attached clients, stdin), rounds repeat, exit statuses after a
//! restore are real, jobs move between state roots, and failures lose nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn setup() -> Env {
    require_criu();
    Env::new()
}

fn counter(env: &Env, name: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", COUNTER]);
    env.ok(&args);
    wait_counter(env, name, 3);
}

/// Waits until the counter's log holds more than `n` values.
fn wait_counter(env: &Env, name: &str, n: usize) -> Vec<u64> {
    let mut vals = vec![];
    env.wait_until(
        &format!("{name} to count past {n}"),
        Duration::from_secs(20),
        || {
            vals = counter_values(&env.logs(name));
            vals.len() > n
        },
    );
    vals
}

fn generation_count(env: &Env, name: &str) -> usize {
    let out = env.ok(&["checkpoints", "--format", "json", name]);
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("json")
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0)
}

#[test]
fn counter_survives_three_rounds_without_gap_or_repeat() {
    let env = setup();
    counter(&env, "c", &[]);
    for round in 1..=3 {
        let out = env.ok(&["checkpoint", "c"]);
        assert!(out.contains(&format!("generation {round}")), "{out}");
        assert_eq!(env.status("c"), "checkpointed");
        let before = counter_values(&env.logs("c")).len();
        // A window, not a wait: this checks an absence (no output while checkpointed), and the
        // job has no process to wait on. 200 ms is four counter ticks; were the job still
        // running, its output would show within it.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            counter_values(&env.logs("c")).len(),
            before,
            "output while checkpointed"
        );
        env.ok(&["restore", "c"]);
        assert_eq!(env.status("c"), "running");
        wait_counter(&env, "c", before + 3);
    }
    let vals = counter_values(&env.logs("c"));
    assert_counter_continuous(&vals);
    let i = env.inspect("c");
    assert_eq!(i["state"]["restores"], 3);
    assert_eq!(i["state"]["checkpoints"], 3);
}

#[test]
fn leave_running_never_stops_the_job() {
    let env = setup();
    counter(&env, "lr", &[]);
    let pid = env.init_pid("lr");
    for _ in 0..3 {
        let out = env.ok(&["checkpoint", "--leave-running", "lr"]);
        assert!(out.contains("left running"), "{out}");
        assert_eq!(env.status("lr"), "running");
        assert_eq!(env.init_pid("lr"), pid, "the job was restarted");
    }
    let n = counter_values(&env.logs("lr")).len();
    wait_counter(&env, "lr", n + 3);
    assert_counter_continuous(&counter_values(&env.logs("lr")));
    assert_eq!(generation_count(&env, "lr"), 3);
    // and a leave-running generation restores (after the job is gone)
    env.ok(&["kill", "lr"]);
    env.wait_status("lr", "exited");
    env.ok(&["restore", "lr"]);
    assert_eq!(env.status("lr"), "running");
}

#[test]
fn a_tty_job_round_trips() {
    let env = setup();
    counter(&env, "t", &["-t"]);
    for _ in 0..2 {
        env.ok(&["checkpoint", "t"]);
        env.ok(&["restore", "t"]);
        let n = counter_values(&env.logs("t")).len();
        wait_counter(&env, "t", n + 2);
    }
    let text = String::from_utf8_lossy(&env.logs("t")).into_owned();
    // a pty turns \n into \r\n
    assert!(text.contains("\r\n"), "not a tty: {text:?}");
    assert_counter_continuous(&counter_values(text.as_bytes()));
    let o = env.run(&[
        "exec",
        "-T",
        "t",
        "--",
        "sh",
        "-c",
        "test -t 0 || echo notty; ls -l /proc/1/fd/ >/dev/null; echo ok",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn an_attached_client_stays_attached_through_checkpoint_and_restore() {
    let env = setup();
    let client = env
        .cmd(&["run", "--name", "a", "--", "sh", "-c", COUNTER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_counter(&env, "a", 3);
    env.ok(&["checkpoint", "a"]);
    env.ok(&["restore", "a"]);
    let n = counter_values(&env.logs("a")).len();
    wait_counter(&env, "a", n + 3);
    env.ok(&["checkpoint", "--leave-running", "a"]);
    env.ok(&["kill", "-s", "TERM", "a"]);
    let out = wait_output(client, Duration::from_secs(20), "attached client");
    assert_eq!(code(&out), 143, "{}", stderr(&out));
    let seen = counter_values(&out.stdout);
    assert_counter_continuous(&seen);
    assert!(
        seen.len() > n,
        "the client saw {} values, the log {n}+",
        seen.len()
    );
    assert_eq!(
        seen,
        counter_values(&env.logs("a")),
        "client and log differ"
    );
}

#[test]
fn a_stdin_reader_keeps_reading_after_restore() {
    let env = setup();
    env.ok(&["run", "-d", "-i", "--name", "cat", "--", "cat"]);
    let mut att = env
        .cmd(&["attach", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach");
    let mut w = att.stdin.take().expect("stdin");
    let mut r = BufReader::new(att.stdout.take().expect("stdout"));
    let mut line = String::new();
    w.write_all(b"one\n").expect("write");
    r.read_line(&mut line).expect("read");
    assert_eq!(line, "one\n");
    env.ok(&["checkpoint", "cat"]);
    // written while the job is checkpointed: delivered after the restore
    w.write_all(b"two\n").expect("write");
    env.ok(&["restore", "cat"]);
    w.write_all(b"three\n").expect("write");
    for want in ["two\n", "three\n"] {
        line.clear();
        r.read_line(&mut line).expect("read");
        assert_eq!(line, want);
    }
    // a second round, then end of input ends the job
    env.ok(&["checkpoint", "cat"]);
    env.ok(&["restore", "cat"]);
    w.write_all(b"four\n").expect("write");
    line.clear();
    r.read_line(&mut line).expect("read");
    assert_eq!(line, "four\n");
    drop(w);
    let out = wait_output(att, Duration::from_secs(10), "attach");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&env.logs("cat")),
        "one\ntwo\nthree\nfour\n"
    );
}

#[test]
fn exit_statuses_after_restore_are_real() {
    let env = setup();
    counter(&env, "k", &[]);
    env.ok(&["checkpoint", "k"]);
    env.ok(&["restore", "k"]);
    env.ok(&["kill", "-s", "KILL", "k"]);
    let w = env.run(&["wait", "k"]);
    assert_eq!(code(&w), 137);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "three",
        "--",
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    env.ok(&["checkpoint", "three"]);
    env.ok(&["restore", "three"]);
    let w = env.run(&["wait", "three"]);
    assert_eq!(code(&w), 3, "{}", stderr(&w));
}

const TCP_PAIR: &str = r#"
import socket, threading, time, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
def serve():
    c, _ = srv.accept()
    while True:
        d = c.recv(64)
        if not d: return
        c.sendall(d)
threading.Thread(target=serve, daemon=True).start()
cl = socket.create_connection(srv.getsockname())
i = 0
while True:
    cl.sendall(b"%d\n" % i)
    got = cl.recv(64)
    print(got.decode().strip(), flush=True)
    i += 1
    time.sleep(0.05)
"#;

#[test]
fn tcp_over_loopback_in_a_private_network_survives() {
    let env = setup();
    env.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "tcp",
        "--",
        "python3",
        "-c",
        TCP_PAIR,
    ]);
    wait_counter(&env, "tcp", 3);
    let o = env.run(&["checkpoint", "--tcp-established", "tcp"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    env.ok(&["restore", "tcp"]);
    let n = counter_values(&env.logs("tcp")).len();
    wait_counter(&env, "tcp", n + 5);
    assert_counter_continuous(&counter_values(&env.logs("tcp")));
    assert_eq!(env.status("tcp"), "running");
}

#[test]
fn export_on_one_root_import_on_another() {
    let a = setup();
    let b = Env::new();
    counter(&a, "mover", &[]);
    let archive = a.root().join("mover.tar.zst");
    a.ok(&[
        "checkpoint",
        "mover",
        "--export",
        archive.to_str().expect("p"),
    ]);
    let before = counter_values(&a.logs("mover"));
    a.ok(&["rm", "mover"]);
    let o = b.run(&[
        "restore",
        "--import",
        archive.to_str().expect("p"),
        "--name",
        "moved",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(b.status("moved"), "running");
    wait_counter(&b, "moved", before.len() + 3);
    let after = counter_values(&b.logs("moved"));
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the log did not travel"
    );
    assert_counter_continuous(&after);
    // stdin export/import (`-`) works too
    let mut exp = b
        .cmd(&["checkpoint", "moved", "--export", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("export");
    let data = {
        let mut v = Vec::new();
        std::io::Read::read_to_end(exp.stdout.as_mut().expect("stdout"), &mut v).expect("read");
        v
    };
    assert!(exp.wait().expect("wait").success());
    let mut imp = a
        .cmd(&["restore", "--import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("import");
    imp.stdin
        .take()
        .expect("stdin")
        .write_all(&data)
        .expect("feed");
    let o = wait_output(imp, Duration::from_secs(30), "import from stdin");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(a.status("moved"), "running");
}

#[test]
fn two_jobs_with_the_same_pids_restore_side_by_side() {
    let env = setup();
    counter(&env, "x", &[]);
    counter(&env, "y", &[]);
    env.ok(&["checkpoint", "x"]);
    env.ok(&["checkpoint", "y"]);
    env.ok(&["restore", "x"]);
    env.ok(&["restore", "y"]);
    assert_ne!(env.init_pid("x"), env.init_pid("y"));
    for n in ["x", "y"] {
        let k = counter_values(&env.logs(n)).len();
        wait_counter(&env, n, k + 2);
        assert_counter_continuous(&counter_values(&env.logs(n)));
    }
}

#[test]
fn a_missing_or_old_criu_is_explained() {
    let env = setup();
    counter(&env, "nc", &[]);
    let o = env
        .cmd(&["checkpoint", "nc"])
        .env("STASIS_CRIU", "/no/such/criu")
        .output()
        .expect("run");
    assert_eq!(code(&o), 125);
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("install-criu.sh"), "no hint: {e}");
    let fake = env.root().join("old-criu");
    std::fs::write(&fake, "#!/bin/sh\necho 'Version: 3.17.1'\n").expect("write");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let o = env
        .cmd(&["checkpoint", "nc"])
        .env("STASIS_CRIU", &fake)
        .output()
        .expect("run");
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("3.17.1") && stderr(&o).contains(">= 4"),
        "{}",
        stderr(&o)
    );
    assert_eq!(env.status("nc"), "running");
    assert_eq!(generation_count(&env, "nc"), 0);
}

#[test]
fn a_failed_dump_leaves_the_job_running_and_no_generation() {
    let env = setup();
    let sock = env.root().join("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let script = format!("import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ni=0\nwhile True:\n print(i, flush=True); i+=1; time.sleep(0.05)\n", sock.to_str().expect("p"));
    env.ok(&["run", "-d", "--name", "ext", "--", "python3", "-c", &script]);
    let (_conn, _) = listener.accept().expect("accept");
    wait_counter(&env, "ext", 3);
    counter(&env, "ok", &[]);
    env.ok(&["checkpoint", "--leave-running", "ok"]);
    let o = env.run(&["checkpoint", "ext"]);
    assert_eq!(code(&o), 125);
    let e = stderr(&o);
    assert!(e.contains("unix socket"), "CRIU's reason missing: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert_eq!(env.status("ext"), "running");
    assert_eq!(generation_count(&env, "ext"), 0);
    let n = counter_values(&env.logs("ext")).len();
    wait_counter(&env, "ext", n + 3);
    assert_counter_continuous(&counter_values(&env.logs("ext")));
    assert!(
        !env.root()
            .join("workloads/ext/checkpoints")
            .read_dir()
            .map(|mut d| d.any(|e| e
                .map(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
                .unwrap_or(false)))
            .unwrap_or(false),
        "temp dir left behind"
    );
}

#[test]
fn a_full_disk_fails_the_dump_and_keeps_the_previous_generation() {
    let env = setup();
    counter(&env, "full", &[]);
    let ckdir = env.root().join("workloads/full/checkpoints");
    let fs = Tmpfs::mount(&ckdir, "3m");
    env.ok(&["checkpoint", "--leave-running", "full"]);
    // fill the disk
    let filler = ckdir.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let o = env.run(&["checkpoint", "full"]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("full") || stderr(&o).contains("space"),
        "{}",
        stderr(&o)
    );
    assert_eq!(env.status("full"), "running");
    let gens = env.ok(&["checkpoints", "--format", "json", "full"]);
    let gens: serde_json::Value = serde_json::from_str(&gens).expect("json");
    assert_eq!(gens.as_array().map(|a| a.len()), Some(1), "{gens}");
    assert_eq!(gens[0]["ok"], true);
    let n = counter_values(&env.logs("full")).len();
    wait_counter(&env, "full", n + 3);
    // free space: the old generation still restores
    std::fs::remove_file(&filler).expect("rm filler");
    env.ok(&["kill", "full"]);
    env.wait_status("full", "exited");
    env.ok(&["restore", "full"]);
    assert_eq!(env.status("full"), "running");
    env.ok(&["kill", "full"]);
    env.wait_status("full", "exited");
    drop(fs);
    env.ok(&["rm", "-f", "full"]);
}

#[test]
fn a_corrupted_generation_is_refused_and_left_in_place() {
    let env = setup();
    counter(&env, "bad", &[]);
    env.ok(&["checkpoint", "--leave-running", "bad"]);
    env.ok(&["checkpoint", "bad"]);
    let gen2 = env.root().join("workloads/bad/checkpoints/2");
    let core = std::fs::read_dir(&gen2)
        .expect("gen 2")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("core-"))
        .expect("a core image")
        .path();
    let mut data = std::fs::read(&core).expect("read");
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&core, &data).expect("corrupt");
    let o = env.run(&["restore", "bad"]);
    assert_eq!(code(&o), 125);
    let e = stderr(&o);
    assert!(e.contains("corrupt") && e.contains("core-"), "{e}");
    assert_eq!(env.status("bad"), "checkpointed");
    assert!(
        core.exists() && gen2.join("manifest.json").exists(),
        "the generation was touched"
    );
    // the older generation still works
    let o = env.run(&["restore", "--generation", "1", "bad"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(env.status("bad"), "running");
    let text = env
        .cmd(&["logs", "--markers", "bad"])
        .output()
        .expect("logs");
    assert!(
        stderr(&text).contains("restored from generation 1"),
        "{}",
        stderr(&text)
    );
}

#[test]
fn keep_prunes_old_generations() {
    let env = setup();
    counter(&env, "keep", &["--keep", "2"]);
    for _ in 0..4 {
        env.ok(&["checkpoint", "--leave-running", "keep"]);
    }
    let out = env.ok(&["checkpoints", "--format", "json", "keep"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let gens: Vec<u64> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|g| g["generation"].as_u64().expect("n"))
        .collect();
    assert_eq!(gens, vec![3, 4]);
}

#[test]
fn checkpoint_of_something_not_running_is_an_error() {
    let env = setup();
    env.ok(&["run", "--name", "done", "--", "true"]);
    let o = env.run(&["checkpoint", "done"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    let o = env.run(&["restore", "done"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("no checkpoint"), "{}", stderr(&o));
}

#[test]
fn a_rootfs_container_with_a_volume_round_trips() {
    let env = setup();
    let rootfs = busybox_rootfs(env.root());
    let vol = env.root().join("vol");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::write(vol.join("f"), "host\n").expect("write");
    let v = format!("{}:/data", vol.display());
    let script = "i=0; while :; do echo $i; i=$((i+1)); cat /data/f >/dev/null; sleep 0.05; done";
    env.ok(&[
        "run",
        "-d",
        "--name",
        "rf",
        "--rootfs",
        rootfs.to_str().expect("p"),
        "-v",
        &v,
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    wait_counter(&env, "rf", 3);
    for _ in 0..2 {
        env.ok(&["checkpoint", "rf"]);
        env.ok(&["restore", "rf"]);
        let n = counter_values(&env.logs("rf")).len();
        wait_counter(&env, "rf", n + 3);
    }
    assert_counter_continuous(&counter_values(&env.logs("rf")));
    let o = env.run(&["exec", "rf", "--", "cat", "/data/f"]);
    assert_eq!(stdout(&o), "host\n", "{}", stderr(&o));
}

/// A copy of the stasis binary with a different GNU build-id: what an upgrade looks like to
/// the init store.
fn upgraded_binary(dir: &Path) -> PathBuf {
    let mut data = std::fs::read(bin()).expect("read binary");
    let id = std::process::Command::new("readelf")
        .args(["-n"])
        .arg(bin())
        .output()
        .expect("readelf (binutils)");
    let text = String::from_utf8_lossy(&id.stdout);
    let hex = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build id")
        .trim()
        .to_string();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let at = data
        .windows(bytes.len())
        .position(|w| w == bytes.as_slice())
        .expect("the build id in the binary");
    data[at] ^= 0xff;
    let p = dir.join("stasis-upgraded");
    std::fs::write(&p, data).expect("write");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    p
}

#[test]
fn a_checkpoint_survives_an_upgrade_of_stasis() {
    let env = setup();
    let store = env.root().join("init-store");
    let new_bin = upgraded_binary(env.root());
    let with = |b: &Path, args: &[&str]| {
        let mut c = std::process::Command::new(b);
        c.arg("--root")
            .arg(env.root())
            .args(args)
            .env("STASIS_INIT_DIR", &store)
            .stdin(Stdio::null());
        c.output().expect("run stasis")
    };
    let o = with(
        &bin(),
        &["run", "-d", "--name", "old", "--", "sh", "-c", COUNTER],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    wait_counter(&env, "old", 3);
    let old_init = std::fs::read_link(format!("/proc/{}/exe", env.init_pid("old"))).expect("exe");
    assert!(old_init.starts_with(&store), "{old_init:?}");
    let o = with(&bin(), &["checkpoint", "old"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // the "upgraded" stasis restores it, from the init copy the checkpoint was taken with
    let o = with(&new_bin, &["restore", "old"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let n = counter_values(&env.logs("old")).len();
    wait_counter(&env, "old", n + 3);
    assert_counter_continuous(&counter_values(&env.logs("old")));
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", env.init_pid("old"))).expect("exe"),
        old_init
    );
    // while new workloads run from the new binary's own copy
    let o = with(
        &new_bin,
        &["run", "-d", "--name", "new", "--", "sleep", "1000"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let new_init = std::fs::read_link(format!("/proc/{}/exe", env.init_pid("new"))).expect("exe");
    assert!(
        new_init.starts_with(&store) && new_init != old_init,
        "{new_init:?} vs {old_init:?}"
    );
}

/// A network namespace made and deleted by `ip netns` (a mount on a file under /run/netns).
struct Netns(String);

impl Netns {
    fn add(name: &str) -> Netns {
        let st = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Netns(name.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The host drops mounts the container carried (a tmpfs on a directory, a network namespace
/// on a file) between the dump and the restore: the restore goes on without them, as the host
/// is now, and the job runs on.
#[test]
fn host_mounts_gone_by_the_restore_are_left_out() {
    let env = setup();
    let dir = tempfile::Builder::new()
        .prefix("stgone")
        .tempdir_in("/tmp")
        .expect("dir");
    let point = dir.path().join("m");
    std::fs::create_dir(&point).expect("mkdir");
    let tmpfs = Tmpfs::mount(&point, "1m");
    let ns = Netns::add(&format!("stgone{}", std::process::id()));
    counter(&env, "g", &[]);
    wait_counter(&env, "g", 3);
    env.ok(&["checkpoint", "g"]);
    drop(tmpfs);
    std::fs::remove_dir(&point).expect("rmdir the mount point");
    drop(ns);
    env.ok(&["restore", "g"]);
    let n = counter_values(&env.logs("g")).len();
    wait_counter(&env, "g", n + 3);
    assert_counter_continuous(&counter_values(&env.logs("g")));
    assert!(!point.exists(), "the stand-in was left on the host");
}

/// The manifest of generation `gen` of `name`.
fn manifest(env: &Env, name: &str, gen: u32) -> serde_json::Value {
    let p = env
        .root()
        .join(format!("workloads/{name}/checkpoints/{gen}/manifest.json"));
    serde_json::from_slice(&std::fs::read(&p).expect("manifest")).expect("json")
}

#[test]
fn dev_shm_is_made_afresh_when_empty_and_dumped_when_used() {
    let env = setup();
    for (name, extra) in [("shm-host", vec![]), ("shm-rootfs", vec!["--rootfs"])] {
        let mut args = vec!["run", "-d", "--name", name];
        let rootfs;
        if !extra.is_empty() {
            rootfs = busybox_rootfs(&env.root().join(format!("{name}-fs")));
            args.extend(["--rootfs", rootfs.to_str().expect("utf-8")]);
        }
        args.extend(["--", "sh", "-c", "while :; do sleep 0.1; done"]);
        env.ok(&args);
        // Empty: left out of the images, and the restored container has a fresh tmpfs there.
        env.ok(&["checkpoint", name]);
        assert!(manifest(&env, name, 1)["shm"].is_object(), "{name}");
        env.ok(&["restore", name]);
        let mounts = env.ok(&["exec", name, "cat", "/proc/self/mountinfo"]);
        assert!(
            mounts
                .lines()
                .any(|l| l.contains(" /dev/shm ") && l.contains(" - tmpfs ")),
            "{name}: {mounts}"
        );
        env.ok(&["exec", name, "sh", "-c", "echo kept > /dev/shm/seg"]);
        // In use: CRIU dumps its content, and it comes back.
        env.ok(&["checkpoint", name]);
        assert!(manifest(&env, name, 2)["shm"].is_null(), "{name}");
        env.ok(&["restore", name]);
        assert_eq!(
            env.ok(&["exec", name, "cat", "/dev/shm/seg"]).trim(),
            "kept"
        );
        env.ok(&["rm", "-f", name]);
    }
    // No staging mount is left on the host.
    let host = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = env.root().to_string_lossy().into_owned();
    assert!(
        !host.lines().any(|l| l.contains(&root)),
        "mounts left under {root}"
    );
}

#[test]
fn a_job_busy_in_dev_shm_always_checkpoints_with_its_content() {
    let env = setup();
    // It creates and removes a segment without pause: some dumps find /dev/shm empty when
    // stasis looks and not when CRIU has frozen the job, and must then dump it with it.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /dev/shm/n; rm -f /dev/shm/n; done",
    ]);
    for _ in 0..10 {
        env.ok(&["checkpoint", "--leave-running", "busy"]);
    }
    env.ok(&["checkpoint", "busy"]);
    env.ok(&["restore", "busy"]);
    assert_eq!(env.status("busy"), "running");
    env.ok(&["rm", "-f", "busy"]);
}

#[test]
fn another_restores_dev_shm_never_reaches_a_container() {
    let env = setup();
    // What a restore stages on the host for a moment: a tmpfs named stasis-shm-staging.
    let staged = env.root().join("staged-shm");
    let _guard = Tmpfs::mount_as(&staged, "stasis-shm-staging", None);
    env.ok(&["run", "-d", "--name", "b", "--", "sleep", "1000"]);
    let mounts = env.ok(&["exec", "b", "cat", "/proc/self/mountinfo"]);
    assert!(
        !mounts.contains("stasis-shm-staging"),
        "the container carries another's staged /dev/shm: {mounts}"
    );
    // and it checkpoints and restores after the staging is gone from the host
    env.ok(&["checkpoint", "b"]);
    drop(_guard);
    env.ok(&["restore", "b"]);
    assert_eq!(env.status("b"), "running");
    env.ok(&["rm", "-f", "b"]);
}

/// CRIU's configuration file (how stasis hands CRIU its options in RPC mode) cannot carry a
/// path with a space or a `#`: such a state root checkpoints and restores through CRIU's
/// command line and the action script instead, and the job comes back whole.
#[test]
fn a_state_root_criu_config_cannot_name_goes_through_the_command_line() {
    require_criu();
    let env = Env::with_prefix("st a#");
    counter(&env, "c", &[]);
    env.ok(&["checkpoint", "c"]);
    assert_eq!(env.status("c"), "checkpointed");
    env.ok(&["restore", "c"]);
    let vals = wait_counter(&env, "c", counter_values(&env.logs("c")).len() + 2);
    assert_counter_continuous(&vals);
    let log = std::fs::read_to_string(env.root().join("workloads/c/monitor.log")).expect("log");
    assert!(log.contains("criu through its command line"), "{log}");
    env.ok(&["rm", "-f", "c"]);
}
