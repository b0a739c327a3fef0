//! Issue 8's acceptance, end to end as root: the default container's /proc is its own before
//! and after checkpoint/restore and import; a job holding /proc/self, a pidfd, SysV and POSIX
//! shm and unlinked or deleted files round-trips; and a job's files that moved on after a
//! `--leave-running` checkpoint are named, refused or put back (sqlite, a rootfs job).

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const JOB_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fidelity_job.c");

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stfid")
        .tempdir_in("/tmp")
        .expect("data dir")
}

/// What a shell sees of /proc inside `name`, through `exec`: its own comm, and the comm of
/// every process /proc lists.
fn proc_view(env: &Env, name: &str) -> (String, Vec<String>) {
    let out = env.ok(&[
        "exec",
        name,
        "--",
        "sh",
        "-c",
        "cat /proc/$$/comm; for p in /proc/[0-9]*; do cat $p/comm; done",
    ]);
    let mut lines = out.lines().map(str::to_string);
    let own = lines.next().unwrap_or_default();
    (own, lines.collect())
}

fn assert_private_proc(env: &Env, name: &str, when: &str) {
    let (own, all) = proc_view(env, name);
    assert_eq!(own, "sh", "{when}: /proc/$$/comm of a shell");
    // the job's sleep, its shell, the exec'd shell, the loop's cat, and stasis's init
    assert!(
        all.len() <= 8 && all.iter().all(|c| c != "kthreadd" && c != "systemd"),
        "{when}: /proc lists more than the container: {all:?}"
    );
    assert!(
        all.iter().any(|c| c == "sleep"),
        "{when}: the job is not in /proc: {all:?}"
    );
}

#[test]
fn proc_is_the_containers_own_before_and_after_restore_and_import() {
    require_criu();
    let env = Env::new();
    let other = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "p",
        "--",
        "sh",
        "-c",
        "while :; do sleep 1000; done",
    ]);
    env.wait_status("p", "running");
    assert_private_proc(&env, "p", "before a checkpoint");
    env.ok(&["checkpoint", "p"]);
    env.ok(&["restore", "p"]);
    assert_private_proc(&env, "p", "after a restore");
    let archive = env.root().join("p.tar.zst");
    env.ok(&["checkpoint", "p", "--export", archive.to_str().expect("p")]);
    env.ok(&["rm", "p"]);
    other.ok(&["restore", "--import", archive.to_str().expect("p")]);
    assert_private_proc(&other, "p", "after export and import into another root");
}

fn build_job(dir: &Path) -> PathBuf {
    let bin = dir.join("fidelity-job");
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(JOB_SRC)
        .args(["-lrt"])
        .status()
        .expect("cc (install-deps.sh installs gcc)");
    assert!(st.success(), "building {JOB_SRC} failed");
    bin
}

fn wait_ticks(env: &Env, name: &str, n: usize) -> Vec<u64> {
    env.wait_until(
        &format!("{n} checks of {name}"),
        Duration::from_secs(60),
        || {
            let log = env.logs(name);
            assert!(
                !String::from_utf8_lossy(&log).contains("BAD"),
                "{}",
                String::from_utf8_lossy(&log)
            );
            counter_values(&log).len() >= n
        },
    );
    counter_values(&env.logs(name))
}

#[test]
fn proc_self_pidfd_shm_and_deleted_files_round_trip() {
    require_criu();
    let env = Env::new();
    let data = data_dir();
    let bin = build_job(data.path());
    env.ok(&[
        "run",
        "-d",
        "--name",
        "f",
        "--",
        bin.to_str().expect("p"),
        data.path().to_str().expect("p"),
        "/stasis-fidelity",
    ]);
    let mut seen = wait_ticks(&env, "f", 5).len();
    for round in 0..2 {
        env.ok(&["checkpoint", "f"]);
        env.ok(&["restore", "f"]);
        seen = wait_ticks(&env, "f", seen + 5).len();
        assert_eq!(env.status("f"), "running", "round {round}");
    }
    let vals = counter_values(&env.logs("f"));
    assert_eq!(vals.first(), Some(&1));
    for w in vals.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "the counters in shared memory jumped: {vals:?}"
        );
    }
    // the POSIX shm object lived in the container's own /dev/shm, never the host's
    assert!(!Path::new("/dev/shm/stasis-fidelity").exists());
}

/// A sqlite writer in WAL mode inserting 1, 2, 3… (an integer primary key: a repeat fails).
/// It holds the database in exclusive locking mode, so its WAL index lives in its memory, not
/// in a `-shm` file it maps: CRIU 4.2 applies POSIX locks at restore before the restorer closes
/// the fds it mapped files through, and that close drops a lock on a mapped file (sqlite's
/// `-shm` lock among them).
fn sqlite_job(env: &Env, name: &str, db: &Path, extra: &[&str]) {
    let st = Command::new("sqlite3")
        .arg(db)
        .arg("pragma journal_mode=wal; create table t(i integer primary key);")
        .output()
        .expect("sqlite3 (install-deps.sh installs it)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let script = format!(
        "{{ echo 'pragma locking_mode=exclusive;'; i=0; while :; do i=$((i+1)); \
         echo \"insert into t values($i);\"; sleep 0.01; done; }} | sqlite3 -bail {}",
        db.display()
    );
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    env.ok(&args);
}

fn query(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The writer's progress while it runs: the size of its WAL (the database is its alone).
fn wal_size(db: &Path) -> u64 {
    std::fs::metadata(db.with_file_name("db.sqlite-wal"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Waits for `frames` more commits in the WAL (each is a 4 KiB page and its header).
fn wait_wal(env: &Env, db: &Path, frames: u64) {
    let from = wal_size(db);
    env.wait_until(
        &format!("{frames} commits into {}", db.display()),
        Duration::from_secs(60),
        || wal_size(db) >= from + frames * 4096,
    );
}

/// Checkpoint with `--leave-running`, let the job write on, kill it: its files moved on.
fn checkpoint_write_on_and_kill(env: &Env, name: &str, db: &Path) {
    wait_wal(env, db, 20);
    env.ok(&["checkpoint", "--leave-running", name]);
    wait_wal(env, db, 20);
    env.ok(&["kill", "-s", "KILL", name]);
    let w = env.run(&["wait", name]);
    assert_eq!(code(&w), 137, "{}", stderr(&w));
}

fn events_of(env: &Env, name: &str, kind: &str) -> Vec<Value> {
    let all: Value =
        serde_json::from_str(&env.ok(&["events", "--format", "json", name])).expect("events json");
    all.as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

/// A file rewritten in place (same size: CRIU's own check cannot see it) after a
/// `--leave-running` checkpoint: the restore goes on and names it on stderr, in inspect and in
/// events.
#[test]
fn a_restore_names_the_files_that_moved_on_after_a_leave_running_checkpoint() {
    require_criu();
    let env = Env::new();
    let data = data_dir();
    let file = data.path().join("counter.bin");
    std::fs::write(&file, b"00000000").expect("counter file");
    let prog = format!(
        "import time\nf = open({:?}, 'r+b', buffering=0)\ni = 0\nwhile True:\n    i += 1\n    f.seek(0)\n    f.write(b'%08d' % i)\n    time.sleep(0.01)\n",
        file.display().to_string()
    );
    env.ok(&["run", "-d", "--name", "w", "--", "python3", "-c", &prog]);
    let value = || -> u64 {
        String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default())
            .parse()
            .unwrap_or(0)
    };
    env.wait_until("the writer to start", Duration::from_secs(30), || {
        value() > 5
    });
    env.ok(&["checkpoint", "--leave-running", "w"]);
    let at_dump = value();
    env.wait_until("the writer to write on", Duration::from_secs(30), || {
        value() > at_dump + 5
    });
    env.ok(&["kill", "-s", "KILL", "w"]);
    let w = env.run(&["wait", "w"]);
    assert_eq!(code(&w), 137, "{}", stderr(&w));
    let o = env.run(&["restore", "w"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    let name = file.display().to_string();
    assert!(
        err.lines().count() == 1 && err.contains("changed since generation") && err.contains(&name),
        "the warning does not name the file in one line: {err}"
    );
    let diverged = env.inspect("w")["state"]["diverged"].clone();
    assert!(
        diverged.to_string().contains(&name),
        "inspect does not name it: {diverged}"
    );
    let ev = events_of(&env, "w", "diverged");
    assert!(
        ev.iter().any(|e| e.to_string().contains(&name)),
        "no diverged event names it: {ev:?}"
    );
    // the restored writer goes on from its memory, over the file
    env.wait_until(
        "the restored writer to go on",
        Duration::from_secs(30),
        || value() > at_dump && env.status("w") == "running",
    );
}

/// A sqlite writer that wrote on after a `--leave-running` checkpoint: without a snapshot the
/// restore names the database's files (CRIU itself refuses a WAL that grew); with
/// `on_divergence: refuse` stasis refuses before CRIU runs. Either way the generation stays.
#[test]
fn a_sqlite_writer_that_wrote_on_is_named_and_on_divergence_refuse_refuses() {
    require_criu();
    let env = Env::new();
    for (name, extra) in [
        ("warn", &[][..]),
        ("refuse", &["--on-divergence", "refuse"][..]),
    ] {
        let data = data_dir();
        let db = data.path().join("db.sqlite");
        sqlite_job(&env, name, &db, extra);
        checkpoint_write_on_and_kill(&env, name, &db);
        let before = query(&db, "select count(*) from t");
        let o = env.run(&["restore", name]);
        assert_eq!(code(&o), 125, "{name}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.lines().count() == 1
                && err.contains("db.sqlite-wal")
                && err.contains("since generation 1"),
            "{name}: the failure does not name the database's WAL in one line: {err}"
        );
        assert_ne!(env.status(name), "running", "{name}");
        assert_eq!(
            query(&db, "select count(*) from t"),
            before,
            "{name}: a failed restore touched the data"
        );
        let gens: Value = serde_json::from_str(&env.ok(&["checkpoints", "--format", "json", name]))
            .expect("checkpoints json");
        assert!(
            gens.as_array()
                .is_some_and(|g| g.iter().any(|x| x["generation"] == 1 && x["ok"] == true)),
            "{name}: the generation is gone or broken: {gens}"
        );
        // a warned restore records "diverged" before CRIU runs; a refused one, its failure
        let kind = if name == "warn" {
            "diverged"
        } else {
            "restore-failed"
        };
        let ev = events_of(&env, name, kind);
        assert!(
            ev.iter().any(|e| e.to_string().contains("db.sqlite")),
            "{name}: no {kind} event names the database: {ev:?}"
        );
    }
}

#[test]
fn a_snapshot_puts_the_database_back_so_memory_and_data_match() {
    require_criu();
    let env = Env::new();
    let data = data_dir();
    let db = data.path().join("db.sqlite");
    let dir = data.path().to_str().expect("p").to_string();
    sqlite_job(&env, "s", &db, &["--snapshot", &dir]);
    checkpoint_write_on_and_kill(&env, "s", &db);
    let o = env.run(&["restore", "s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    wait_wal(&env, &db, 30);
    assert_eq!(
        env.status("s"),
        "running",
        "the writer failed after its restore"
    );
    env.ok(&["stop", "-t", "10", "s"]);
    assert_eq!(query(&db, "pragma integrity_check"), "ok");
    let count_max = query(&db, "select count(*), max(i) from t");
    let (count, max) = count_max.split_once('|').expect("count|max");
    assert_eq!(count, max, "the sequence has gaps: {count_max}");
    assert!(
        count.parse::<u64>().unwrap_or(0) >= 40,
        "too few rows: {count_max}"
    );
}
#[test]
fn a_rootfs_job_with_snapshot_rootfs_comes_back_gapless() {
    require_criu();
    let env = Env::new();
    let data = data_dir();
    let rootfs = busybox_rootfs(data.path());
    env.ok(&[
        "run",
        "-d",
        "--name",
        "rf",
        "--rootfs",
        rootfs.to_str().expect("p"),
        "--snapshot",
        "rootfs",
        "--",
        "sh",
        "-c",
        "i=0; exec 3>>/data/c.txt; while :; do i=$((i+1)); echo $i >&3; sleep 0.01; done",
    ]);
    let file = rootfs.join("data/c.txt");
    let lines = || -> Vec<u64> { counter_values(&std::fs::read(&file).unwrap_or_default()) };
    env.wait_until("the job to write", Duration::from_secs(30), || {
        lines().len() >= 20
    });
    env.ok(&["checkpoint", "--leave-running", "rf"]);
    let at_dump = lines().len();
    env.wait_until("the job to write on", Duration::from_secs(30), || {
        lines().len() >= at_dump + 20
    });
    env.ok(&["kill", "-s", "KILL", "rf"]);
    let w = env.run(&["wait", "rf"]);
    assert_eq!(code(&w), 137, "{}", stderr(&w));
    let o = env.run(&["restore", "rf"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let back = lines().len();
    env.wait_until(
        "the restored job to write on",
        Duration::from_secs(30),
        || lines().len() >= back + 20,
    );
    env.ok(&["stop", "-t", "10", "rf"]);
    let vals = lines();
    assert_eq!(vals.first(), Some(&1));
    for w in vals.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap or repeat in the rootfs file: {vals:?}");
    }
}
