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
