//! Hardening item 11 on its own: it mounts a small tmpfs, and a container started anywhere else
//! meanwhile would carry that mount (test binaries run one after another; tests within one run
//! in parallel).

mod common;

use common::*;
use std::time::Duration;

/// A tmpfs mounted over a test's state root, unmounted (after its workloads are removed)
/// even when the test fails.
struct SmallDisk {
    root: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(env: &Env, size: &str) -> SmallDisk {
        nix::mount::mount(
            Some("tmpfs"),
            env.root(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount a tmpfs state root");
        SmallDisk {
            root: env.root().to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new(bin())
            .arg("--root")
            .arg(&self.root)
            .args(["rm", "-f", "--all"])
            .output();
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Bytes of a workload's log on disk (every segment).
fn log_bytes(env: &Env, name: &str) -> u64 {
    let dir = env.root().join("workloads").join(name);
    std::fs::read_dir(&dir)
        .expect("workload dir")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n == "log" || n.starts_with("log.")
        })
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Item 11: logs rotate within their bound; a disk the log filled keeps `ps`, `inspect`, `stop`
/// and `rm -f` working, and the dropped bytes are counted and reported.
#[test]
fn item_11_a_full_disk_never_stops_supervision() {
    let env = Env::new();
    let _disk = SmallDisk::mount(&env, "24m");
    // a chatty job with a small log bound: 30 MB written, at most 3 MiB (and a record) kept
    env.ok(&[
        "run",
        "-d",
        "--name",
        "chatty",
        "--log-max-size",
        "1m",
        "--log-max-files",
        "2",
        "--",
        "sh",
        "-c",
        "yes stasis-log-line-of-some-length | head -c 30000000; echo END; sleep 100000",
    ]);
    env.wait_until(
        "the chatty job to write 30 MB",
        Duration::from_secs(120),
        || String::from_utf8_lossy(&env.logs("chatty")).ends_with("END\n"),
    );
    let bound = 3 * (1 << 20) + (1 << 20) + 16;
    assert!(
        log_bytes(&env, "chatty") <= bound,
        "log over its bound: {}",
        log_bytes(&env, "chatty")
    );
    // a job that keeps writing, then a full disk
    env.ok(&["run", "-d", "--name", "w", "--", "sh", "-c", COUNTER]);
    let filler = env.root().join("filler");
    let fill = || {
        let _ = std::process::Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", filler.display()),
                "bs=64k",
            ])
            .output();
    };
    fill();
    env.wait_until("log writes to fail", Duration::from_secs(30), || {
        env.inspect("w")["state"]["log_dropped"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    // supervision works on the full disk
    let ps = env.run(&["ps", "-a"]);
    assert_eq!(code(&ps), 0, "{}", stderr(&ps));
    assert!(
        stdout(&ps).contains("chatty") && stdout(&ps).contains("w "),
        "{}",
        stdout(&ps)
    );
    let o = env.run(&["stop", "-t", "5", "chatty"]);
    assert_eq!(code(&o), 0, "stop on a full disk: {}", stderr(&o));
    // space again: the writes recover and the drop is in the events
    std::fs::remove_file(&filler).expect("free space");
    env.wait_until("a log-dropped event", Duration::from_secs(30), || {
        String::from_utf8_lossy(&env.run(&["events", "w"]).stdout).contains("log-dropped")
    });
    // full again: rm -f still frees it
    fill();
    let o = env.run(&["rm", "-f", "w", "chatty"]);
    assert_eq!(code(&o), 0, "rm -f on a full disk: {}", stderr(&o));
    assert!(!env.root().join("workloads/w").exists());
    let _ = std::fs::remove_file(&filler);
}
