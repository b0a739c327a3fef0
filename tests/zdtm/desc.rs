//! The selection of zdtm tests and each test's `.desc` file, read the way CRIU's zdtm.py reads
//! them, and how a test's CRIU options become `stasis checkpoint` flags.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// One static test and what its `.desc` says about how to run it.
#[derive(Debug, Clone, Default)]
pub struct TestDesc {
    pub name: String,
    /// CRIU options for dump and restore, dump only, restore only.
    pub opts: String,
    pub dopts: String,
    pub ropts: String,
    pub flags: Vec<String>,
    /// zdtm's flavours the test may run in ("h ns uns" when the file says nothing).
    pub flavor: String,
    pub feature: Vec<String>,
    pub arch: Option<String>,
    /// Seconds zdtm gives the test to start and to end.
    pub timeout: u64,
}

impl TestDesc {
    pub fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    pub fn runs_in_host_flavour(&self) -> bool {
        self.flavor.split_whitespace().any(|f| f == "h")
    }

    /// zdtm runs these alone: `excl`, and every test whose options say --link-remap, because
    /// link-remap files land in the shared test directory where another test could see them.
    pub fn exclusive(&self) -> bool {
        self.flag("excl") || self.link_remap()
    }

    pub fn link_remap(&self) -> bool {
        [&self.opts, &self.dopts, &self.ropts]
            .iter()
            .any(|o| o.split_whitespace().any(|t| t == "--link-remap"))
    }
}

/// The test names in a selection file: one a line, `#` starts a comment.
pub fn read_selection(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read the zdtm selection {}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The `.desc` files of `names`, evaluated by Python as zdtm.py does (`eval` of the file, an
/// empty dict when there is none): some are expressions, not plain literals.
pub fn load(test_dir: &Path, names: &[String]) -> Vec<TestDesc> {
    const PY: &str = r#"
import json, os, sys
out = {}
for name in sys.argv[1:]:
    p = 'zdtm/static/' + name + '.desc'
    d = {}
    if os.access(p, os.F_OK) and os.path.getsize(p) > 0:
        with open(p) as f:
            d = eval(f.read())
    out[name] = d
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .args(names)
        .current_dir(test_dir)
        .env("PATH", super::SYSTEM_PATH)
        .output()
        .expect("run python3 to read the .desc files");
    assert!(
        out.status.success(),
        "reading the .desc files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Value = serde_json::from_slice(&out.stdout).expect("desc json");
    names
        .iter()
        .map(|n| from_json(n, &all[n.as_str()]))
        .collect()
}

fn from_json(name: &str, v: &Value) -> TestDesc {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let words = |k: &str| s(k).split_whitespace().map(str::to_string).collect();
    let flavor = s("flavor");
    TestDesc {
        name: name.to_string(),
        opts: s("opts"),
        dopts: s("dopts"),
        ropts: s("ropts"),
        flags: words("flags"),
        flavor: if flavor.trim().is_empty() {
            "h ns uns".into()
        } else {
            flavor
        },
        feature: words("feature"),
        arch: Some(s("arch")).filter(|a| !a.is_empty()),
        timeout: s("timeout").parse().unwrap_or(30),
    }
}

/// The flags `stasis checkpoint --help` lists, so that a test whose CRIU options stasis cannot
/// express yet is reported as such instead of running with different options.
pub fn checkpoint_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// How one test runs under stasis: its checkpoint flags, and what differs from raw CRIU.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub checkpoint: Vec<String>,
    pub notes: Vec<String>,
}

/// CRIU options that only choose how CRIU finds a ghost file's holes, not what is dumped, and
/// whether each is CRIU's default: stasis may run with the default when it has no flag.
const IMPLEMENTATION_ONLY: &[(&str, bool)] =
    &[("--ghost-fiemap", true), ("--no-ghost-fiemap", false)];

/// CRIU's on/off options that stasis has flags for. Where stasis's default differs from
/// CRIU's (link-remap, file-locks: on), `--no-X` keeps the configuration zdtm.py gives CRIU.
const SWITCHES: &[&str] = &[
    "--link-remap",
    "--file-locks",
    "--tcp-established",
    "--ext-unix-sk",
];

/// CRIU's ghost limit when zdtm.py sets none; stasis sizes its own to the job's deleted files,
/// which would turn a test that expects the dump to fail (ghost_holes_large01) into a success.
const CRIU_GHOST_LIMIT: &str = "1M";

/// Maps a test's CRIU options onto `stasis checkpoint` flags, so that stasis runs CRIU with the
/// configuration zdtm.py gives it. Restore needs none: it takes them from the generation's
/// manifest. Err names an option stasis cannot express (yet).
pub fn plan(d: &TestDesc, have: &BTreeSet<String>) -> Result<Plan, String> {
    let mut p = Plan::default();
    let dump: Vec<&str> = d
        .opts
        .split_whitespace()
        .chain(d.dopts.split_whitespace())
        .collect();
    let need = |flag: &str| -> Result<(), String> {
        if have.contains(flag) {
            Ok(())
        } else {
            Err(format!("stasis checkpoint has no {flag} yet"))
        }
    };
    let mut ghost_limit = false;
    let mut it = dump.iter();
    while let Some(&tok) = it.next() {
        let (opt, inline) = match tok.split_once('=') {
            Some((o, v)) => (o, Some(v)),
            None => (tok, None),
        };
        match opt {
            o if SWITCHES.contains(&o) => {
                need(o)?;
                p.checkpoint.push(o.to_string());
            }
            "--ghost-limit" => {
                need(opt)?;
                let v = match inline {
                    Some(v) => v.to_string(),
                    None => it.next().ok_or("--ghost-limit without a size")?.to_string(),
                };
                p.checkpoint.push(opt.to_string());
                p.checkpoint.push(v);
                ghost_limit = true;
            }
            o if IMPLEMENTATION_ONLY.iter().any(|(x, _)| *x == o) => {
                let is_default = IMPLEMENTATION_ONLY.iter().any(|(x, d)| *x == o && *d);
                if have.contains(o) {
                    p.checkpoint.push(o.to_string());
                } else if !is_default {
                    p.notes.push(format!(
                        "ran with CRIU's default instead of {o} (stasis has no such flag)"
                    ));
                }
            }
            o => return Err(format!("CRIU option {o} has no stasis checkpoint flag")),
        }
    }
    for s in SWITCHES {
        let off = format!("--no-{}", &s[2..]);
        if !dump.contains(s) && have.contains(&off) {
            p.checkpoint.push(off);
        }
    }
    if !ghost_limit && have.contains("--ghost-limit") {
        p.checkpoint.push("--ghost-limit".into());
        p.checkpoint.push(CRIU_GHOST_LIMIT.into());
    }
    for tok in d.ropts.split_whitespace() {
        if tok.starts_with("--") && !dump.contains(&tok) {
            return Err(format!(
                "restore option {tok} has no stasis equivalent (restore takes its options from the generation)"
            ));
        }
    }
    Ok(p)
}
