//! CRIU's zdtm static tests, run twice: by CRIU's own zdtm.py (raw CRIU, host flavour; the ns
//! flavour for the few tests zdtm runs only there) and as stasis workloads with a checkpoint
//! and a restore between start and SIGTERM. Every test raw CRIU passes must pass under stasis,
//! except those scripts/zdtm-known-differences.txt explains. Both outcomes go to TSV files and
//! a side-by-side report under target/tmp/zdtm/.
//!
//! `cargo test --test zdtm -- --nocapture` (as root). It runs scripts/zdtm-build.sh first
//! (cached; the first build downloads CRIU's source and takes about a minute).
//! Knobs: STASIS_ZDTM_JOBS (tests at once, 2), STASIS_ZDTM_ONLY (comma-separated names, for
//! working on a few tests; the full-run assertions then do not apply).

mod common;
#[path = "zdtm/desc.rs"]
mod desc;
#[path = "zdtm/raw.rs"]
mod raw;
#[path = "zdtm/report.rs"]
mod report;
#[path = "zdtm/workload.rs"]
mod workload;

use report::{Outcome, Raw};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The system's PATH for zdtm.py and the tools it calls: a virtualenv's python3 first on a
/// developer's PATH may lack the protobuf module pycriu needs.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Fewer raw passes than this means the environment broke (zdtm.py, the build, CRIU), and a
/// comparison against so few would prove little.
const MIN_RAW_PASSES: usize = 100;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// scripts/zdtm-build.sh: builds (or finds in its cache) the tests; returns CRIU's test/ dir.
fn build() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/zdtm-build.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/zdtm-build.sh");
    assert!(out.status.success(), "scripts/zdtm-build.sh failed");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("zdtm.py").is_file(),
        "no zdtm.py in {}",
        dir.display()
    );
    dir
}

fn jobs() -> usize {
    std::env::var("STASIS_ZDTM_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn zdtm_static_tests_pass_under_stasis_wherever_raw_criu_passes() {
    common::require_root();
    common::require_criu();
    let test_dir = build();
    let static_dir = test_dir.join("zdtm/static");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("zdtm");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).expect("report dir");

    let mut names = desc::read_selection(&repo().join("scripts/zdtm-tests.txt"));
    let only = std::env::var("STASIS_ZDTM_ONLY").ok();
    if let Some(only) = &only {
        let keep: Vec<&str> = only.split(',').map(str::trim).collect();
        names.retain(|n| keep.contains(&n.as_str()));
    } else {
        assert!(
            names.len() >= 110,
            "the selection has {} tests",
            names.len()
        );
    }
    let descs = desc::load(&test_dir, &names);
    let known = report::read_known(&repo().join("scripts/zdtm-known-differences.txt"));

    // Raw CRIU first, then stasis: both use the tests' fixed pid and out files in one dir.
    let t0 = Instant::now();
    let (host, ns_only): (Vec<&desc::TestDesc>, Vec<&desc::TestDesc>) =
        descs.iter().partition(|d| d.runs_in_host_flavour());
    let mut raw: BTreeMap<String, Raw> = BTreeMap::new();
    for (flavor, set) in [("h", &host), ("ns", &ns_only)] {
        let set: Vec<String> = set.iter().map(|d| d.name.clone()).collect();
        let got = raw::run(
            &test_dir,
            &set,
            flavor,
            jobs(),
            &out_dir.join(format!("raw-{flavor}-report")),
            &out_dir.join(format!("raw-{flavor}.log")),
            Duration::from_secs(900),
        );
        for (n, outcome) in got {
            raw.insert(n, Raw { flavor, outcome });
        }
    }
    let raw_secs = t0.elapsed().as_secs_f64();
    write(&out_dir.join("raw.tsv"), &report::raw_tsv(&raw));

    let help = Command::new(common::bin())
        .args(["checkpoint", "--help"])
        .output()
        .expect("stasis checkpoint --help");
    let flags = desc::checkpoint_flags(&String::from_utf8_lossy(&help.stdout));
    let ctx = workload::Ctx::new(static_dir, flags, out_dir.join("stasis-logs"));
    let t1 = Instant::now();
    let st = workload::run_all(&ctx, &descs, jobs());
    let st_secs = t1.elapsed().as_secs_f64();
    write(&out_dir.join("stasis.tsv"), &report::stasis_tsv(&st));

    let cmp = report::compare(&raw, &st, &known);
    let times = format!(
        "raw CRIU run: {raw_secs:.0} s; stasis run: {st_secs:.0} s ({} tests at once)",
        jobs()
    );
    let text = report::side_by_side(&raw, &st, &known, &cmp, &times);
    write(&out_dir.join("report.md"), &text);
    println!("{text}");
    println!("(written to {})", out_dir.display());

    for n in &names {
        assert!(raw.contains_key(n), "no raw outcome for {n}");
        assert!(st.contains_key(n), "no stasis outcome for {n}");
    }
    if only.is_none() {
        let passes = raw.values().filter(|r| r.outcome == Outcome::Pass).count();
        assert!(
            passes >= MIN_RAW_PASSES,
            "raw CRIU passed only {passes} tests: the environment is broken (see {})",
            out_dir.display()
        );
        assert!(
            cmp.stale.is_empty(),
            "known differences that no longer differ (remove them from \
             scripts/zdtm-known-differences.txt): {:?}",
            cmp.stale
        );
    }
    assert!(
        cmp.unexplained.is_empty(),
        "raw CRIU passes these, stasis does not: {:?} (see {})",
        cmp.unexplained
            .iter()
            .map(|n| format!("{n}: {}", st[n].outcome.detail()))
            .collect::<Vec<_>>(),
        out_dir.join("report.md").display()
    );
}

/// The parts that need no root: zdtm.py's TAP and the option mapping.
#[test]
fn tap_report_lines_become_outcomes() {
    let tap = "TAP version 13\n1..4\nok 1 - zdtm/static/shm # SKIP no flavors\n\
               ok 2 - zdtm/static/pipe00\nnot ok 3 - zdtm/static/pid00 # flavor h\n---\n\
               \"output\": |\n  b\"(00.1) Error (criu/cr-dump.c:389): Can't get rlimit 0: \
               Operation not permitted\"\n  ####### Test zdtm/static/pid00 FAIL at CRIU dump \
               #######\n...\nok 4 - zdtm/static/env00\n";
    let got = raw::parse_tap(tap);
    assert_eq!(got["shm"], Outcome::Skip("no flavors".into()));
    assert_eq!(got["pipe00"], Outcome::Pass);
    assert_eq!(
        got["pid00"],
        Outcome::Fail("FAIL at CRIU dump; Can't get rlimit 0: Operation not permitted".into())
    );
    assert_eq!(got["env00"], Outcome::Pass);
    assert_eq!(got.len(), 4);
    // the escaped form zdtm.py's YAML dump takes for some outputs
    let tap = r#"not ok 8 - zdtm/static/x # flavor h
---
"output": "== Run zdtm/static/x\n\
  \ b'(00.1) Error (criu/files.c:1): Can't open file'\n\
  \ 22:1:    66: FAIL: x.c:9: bad\n####### Test zdtm/static/x FAIL at result check\
  \ ####\n"
...
"#;
    assert_eq!(
        raw::parse_tap(tap)["x"],
        Outcome::Fail("FAIL at result check; Can't open file; x.c:9: bad".into())
    );
}

#[test]
fn criu_options_map_onto_checkpoint_flags() {
    let have = desc::checkpoint_flags(
        "      --tcp-established      Dump established TCP connections\n\
         --ghost-limit <SIZE>  x\n  --link-remap, --no-link-remap\n",
    );
    let d = |opts: &str, dopts: &str, ropts: &str| desc::TestDesc {
        name: "t".into(),
        opts: opts.into(),
        dopts: dopts.into(),
        ropts: ropts.into(),
        ..Default::default()
    };
    let p = desc::plan(&d("", "--ghost-limit 8M --no-ghost-fiemap", ""), &have).expect("plan");
    assert_eq!(p.checkpoint, ["--ghost-limit", "8M", "--no-link-remap"]);
    assert_eq!(p.notes.len(), 1, "{p:?}");
    let p = desc::plan(&d("", "--ghost-fiemap", ""), &have).expect("plan");
    assert!(
        p.notes.is_empty(),
        "--ghost-fiemap is CRIU's default: {p:?}"
    );
    let p = desc::plan(&d("--link-remap", "", ""), &have).expect("plan");
    assert_eq!(p.checkpoint, ["--link-remap", "--ghost-limit", "1M"]);
    let p = desc::plan(&d("", "", ""), &have).expect("plan");
    assert_eq!(p.checkpoint, ["--no-link-remap", "--ghost-limit", "1M"]);
    let e = desc::plan(&d("--file-locks", "", ""), &have).expect_err("no --file-locks");
    assert!(e.contains("--file-locks"), "{e}");
    let e = desc::plan(&d("", "--tcp-established", "--tcp-close"), &have).expect_err("ropts");
    assert!(e.contains("--tcp-close"), "{e}");
    let e = desc::plan(&d("--manage-cgroups", "", ""), &have).expect_err("unknown");
    assert!(e.contains("--manage-cgroups"), "{e}");
}
