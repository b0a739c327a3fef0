//! Outcomes of both runs, their TSV files, the side-by-side report, and the comparison that
//! the test asserts on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// What one run made of one test.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    /// Ran and failed: the step and the reason.
    Fail(String),
    /// Not run, for a reason zdtm.py shares (feature, arch, flavour, checkskip).
    Skip(String),
    /// stasis cannot express what the test needs yet (a checkpoint flag it lacks).
    CannotRun(String),
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "SKIP",
            Outcome::CannotRun(_) => "NOT-RUN",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Fail(s) | Outcome::Skip(s) | Outcome::CannotRun(s) => s,
        }
    }
}

/// A raw outcome with the zdtm flavour it ran in.
#[derive(Debug, Clone)]
pub struct Raw {
    pub flavor: &'static str,
    pub outcome: Outcome,
}

/// A stasis outcome with notes on what differed from raw CRIU's options, and its time.
#[derive(Debug, Clone)]
pub struct Stasis {
    pub outcome: Outcome,
    pub notes: Vec<String>,
    pub secs: f64,
}

/// The known-differences file: `NAME cause…` a line, `#` comments.
pub fn read_known(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read known differences {}: {e}", path.display()));
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((n, c)) => (n.to_string(), c.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// What the comparison found.
#[derive(Debug, Default)]
pub struct Comparison {
    /// raw passes, stasis does not, and no known difference explains it
    pub unexplained: Vec<String>,
    /// raw passes, stasis does not, and the known-differences file says why
    pub known: Vec<String>,
    /// listed as known differences, but stasis passes (or raw does not): the file is stale
    pub stale: Vec<String>,
    /// raw passes, stasis cannot run it yet
    pub cannot_run: Vec<String>,
    /// stasis passes where raw CRIU does not
    pub stasis_only: Vec<String>,
}

pub fn compare(
    raw: &BTreeMap<String, Raw>,
    st: &BTreeMap<String, Stasis>,
    known: &BTreeMap<String, String>,
) -> Comparison {
    let mut c = Comparison::default();
    for (name, r) in raw {
        let s = st.get(name).map(|s| &s.outcome);
        let raw_pass = r.outcome == Outcome::Pass;
        let st_pass = s == Some(&Outcome::Pass);
        match (raw_pass, s) {
            (true, Some(Outcome::CannotRun(_))) => c.cannot_run.push(name.clone()),
            (true, _) if !st_pass => {
                if known.contains_key(name) {
                    c.known.push(name.clone());
                } else {
                    c.unexplained.push(name.clone());
                }
            }
            (false, _) if st_pass => c.stasis_only.push(name.clone()),
            _ => {}
        }
        if known.contains_key(name) && (st_pass || !raw_pass) {
            c.stale.push(name.clone());
        }
    }
    for name in known.keys() {
        if !raw.contains_key(name) {
            c.stale.push(name.clone());
        }
    }
    c
}

fn tsv_field(s: &str) -> String {
    s.replace(['\t', '\n'], " ")
}

pub fn raw_tsv(raw: &BTreeMap<String, Raw>) -> String {
    let mut t = String::from("test\tflavour\tresult\tdetail\n");
    for (n, r) in raw {
        let _ = writeln!(
            t,
            "{n}\t{}\t{}\t{}",
            r.flavor,
            r.outcome.word(),
            tsv_field(r.outcome.detail())
        );
    }
    t
}

pub fn stasis_tsv(st: &BTreeMap<String, Stasis>) -> String {
    let mut t = String::from("test\tresult\tseconds\tdetail\n");
    for (n, s) in st {
        let mut detail = s.outcome.detail().to_string();
        for note in &s.notes {
            detail = if detail.is_empty() {
                note.clone()
            } else {
                format!("{detail}; {note}")
            };
        }
        let _ = writeln!(
            t,
            "{n}\t{}\t{:.2}\t{}",
            s.outcome.word(),
            s.secs,
            tsv_field(&detail)
        );
    }
    t
}

fn count(raw: &BTreeMap<String, Raw>, flavor: &str) -> (usize, usize) {
    let of: Vec<&Raw> = raw.values().filter(|r| r.flavor == flavor).collect();
    let pass = of.iter().filter(|r| r.outcome == Outcome::Pass).count();
    (pass, of.len())
}

/// The side-by-side report: counts, the differences with their causes, then every test.
pub fn side_by_side(
    raw: &BTreeMap<String, Raw>,
    st: &BTreeMap<String, Stasis>,
    known: &BTreeMap<String, String>,
    c: &Comparison,
    times: &str,
) -> String {
    let mut r = String::new();
    let total = raw.len();
    let (hp, hn) = count(raw, "h");
    let (np, nn) = count(raw, "ns");
    let sp = st.values().filter(|s| s.outcome == Outcome::Pass).count();
    let s_of = |o: fn(&Outcome) -> bool| st.values().filter(|s| o(&s.outcome)).count();
    let _ = writeln!(r, "zdtm static tests: {total} selected\n");
    let _ = writeln!(r, "| | raw CRIU (zdtm.py) | stasis |");
    let _ = writeln!(r, "|---|---|---|");
    let _ = writeln!(
        r,
        "| PASS | {} ({hp} of {hn} in the host flavour, {np} of {nn} in the ns flavour) | {sp} |",
        hp + np
    );
    let _ = writeln!(
        r,
        "| FAIL | {} | {} |",
        raw.values()
            .filter(|x| matches!(x.outcome, Outcome::Fail(_)))
            .count(),
        s_of(|o| matches!(o, Outcome::Fail(_)))
    );
    let _ = writeln!(
        r,
        "| SKIP | {} | {} |",
        raw.values()
            .filter(|x| matches!(x.outcome, Outcome::Skip(_)))
            .count(),
        s_of(|o| matches!(o, Outcome::Skip(_)))
    );
    let _ = writeln!(
        r,
        "| not run (stasis lacks a flag) | - | {} |",
        s_of(|o| matches!(o, Outcome::CannotRun(_)))
    );
    let _ = writeln!(r, "\n{times}\n");
    let line = |r: &mut String, n: &str, why: &str| {
        let raw_o = raw.get(n).map(|x| x.outcome.word()).unwrap_or("-");
        let st_o = st.get(n).map(|x| x.outcome.word()).unwrap_or("-");
        let _ = writeln!(r, "- {n} (raw {raw_o}, stasis {st_o}): {why}");
    };
    // which cause each section shows: stasis's failure, the known cause, or raw's failure
    enum Why {
        Stasis,
        Known,
        Raw,
    }
    let sections = [
        (
            "Raw CRIU passes, stasis fails, NOT explained by the known-differences file",
            &c.unexplained,
            Why::Stasis,
        ),
        (
            "Raw CRIU passes, stasis fails: known differences",
            &c.known,
            Why::Known,
        ),
        (
            "Raw CRIU passes, stasis cannot run it yet",
            &c.cannot_run,
            Why::Stasis,
        ),
        (
            "stasis passes where raw CRIU does not",
            &c.stasis_only,
            Why::Raw,
        ),
        (
            "Stale known differences (they no longer differ: remove them)",
            &c.stale,
            Why::Stasis,
        ),
    ];
    for (title, names, why) in sections {
        if names.is_empty() {
            continue;
        }
        let _ = writeln!(r, "{title}:");
        for n in names {
            let st_detail = st.get(n).map(|s| s.outcome.detail()).unwrap_or("");
            let text = match why {
                Why::Stasis => st_detail.to_string(),
                Why::Known => format!(
                    "{} [stasis: {st_detail}]",
                    known.get(n).map(String::as_str).unwrap_or("")
                ),
                Why::Raw => format!(
                    "raw: {}",
                    raw.get(n).map(|x| x.outcome.detail()).unwrap_or("")
                ),
            };
            line(&mut r, n, &text);
        }
        r.push('\n');
    }
    let _ = writeln!(r, "| test | raw CRIU | stasis | detail |");
    let _ = writeln!(r, "|---|---|---|---|");
    for (n, x) in raw {
        let s = st.get(n);
        let mut d: Vec<String> = Vec::new();
        if !x.outcome.detail().is_empty() {
            d.push(format!("raw: {}", x.outcome.detail()));
        }
        if let Some(s) = s {
            if !s.outcome.detail().is_empty() {
                d.push(format!("stasis: {}", s.outcome.detail()));
            }
            d.extend(s.notes.iter().map(|n| format!("stasis: {n}")));
        }
        let _ = writeln!(
            r,
            "| {n} | {} ({}) | {} | {} |",
            x.outcome.word(),
            x.flavor,
            s.map(|s| s.outcome.word()).unwrap_or("-"),
            d.join("; ").replace('|', "/")
        );
    }
    r
}
