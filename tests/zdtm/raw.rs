//! Raw CRIU: CRIU's own `test/zdtm.py run` over the selection, and its TAP report turned into
//! one outcome per test.

use super::report::Outcome;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs zdtm.py in `flavor` ("h" or "ns") over `names`, `jobs` at a time, writing its output to
/// `log` and its report under `report_dir`; kills it (its process group: it is ours) after
/// `limit`. Returns what the TAP report says of each test.
pub fn run(
    test_dir: &Path,
    names: &[String],
    flavor: &str,
    jobs: usize,
    report_dir: &Path,
    log: &Path,
    limit: Duration,
) -> BTreeMap<String, Outcome> {
    if names.is_empty() {
        return BTreeMap::new();
    }
    let criu = which_criu();
    // zdtm.py keeps a failed test's images in dump/NAME/PID and gives up once 100 such
    // directories exist; each run starts clean, as does its report.
    let _ = std::fs::remove_dir_all(test_dir.join("dump"));
    let _ = std::fs::remove_dir_all(report_dir);
    let out = std::fs::File::create(log).expect("raw zdtm log");
    let err = out.try_clone().expect("dup log");
    let mut cmd = Command::new("python3");
    cmd.arg("zdtm.py")
        // --ignore-taint: zdtm.py aborts the whole run when the kernel's taint flags change;
        // with two tests at a time a taint names no test, and the other outcomes still count.
        .args(["run", "-f", flavor, "--keep-going", "--ignore-taint"])
        .arg("--criu-bin")
        .arg(&criu)
        .arg("--report")
        .arg(report_dir)
        .args(["-p", &jobs.to_string()]);
    for n in names {
        cmd.arg("-t").arg(format!("zdtm/static/{n}"));
    }
    cmd.current_dir(test_dir)
        .env_clear()
        .env("PATH", super::SYSTEM_PATH)
        .env("LANG", "C.UTF-8")
        // Root here lacks CAP_SYS_RESOURCE, so CRIU cannot read the rlimits of a task that
        // switched to another uid ("Can't get rlimit 0"). zdtm.py switches every test not
        // flagged suid to uid 18943 unless ZDTM_ROOTLESS is set; set, the tests stay root.
        .env("ZDTM_ROOTLESS", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn zdtm.py");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait zdtm.py").is_some() {
            break;
        }
        if t0.elapsed() > limit {
            // zdtm.py's tests live in zdtm_ct's PID namespaces: they die with its group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tap = std::fs::read_to_string(report_dir.join("criu-testreport.tap")).unwrap_or_default();
    let mut got = parse_tap(&tap);
    for n in names {
        got.entry(n.clone()).or_insert_with(|| {
            Outcome::Fail(format!(
                "zdtm.py reported nothing (limit {limit:?}; see {})",
                log.display()
            ))
        });
    }
    got
}

fn which_criu() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v criu"])
        .env("PATH", super::SYSTEM_PATH)
        .output()
        .expect("look for criu");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "no criu on PATH: run scripts/install-criu.sh"
    );
    p
}

/// zdtm.py's TAP: `ok N - zdtm/static/T`, `ok N - zdtm/static/T # SKIP why`, and
/// `not ok N - zdtm/static/T # flavor F` followed by the test's output, in which zdtm.py says
/// "Test zdtm/static/T FAIL at STEP" and shows CRIU's errors and the test's own FAIL line.
pub fn parse_tap(tap: &str) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    // the failing test whose output is being read, and that output
    let mut failing: Option<(String, Vec<&str>)> = None;
    for line in tap.lines().chain(std::iter::once("ok 0 - end")) {
        let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else {
            if let Some((_, lines)) = failing.as_mut() {
                lines.push(line);
            }
            continue;
        };
        if let Some((name, lines)) = failing.take() {
            out.insert(name, Outcome::Fail(failure_detail(&lines)));
        }
        let Some((_, rest)) = rest.split_once(" - ") else {
            continue;
        };
        let (name, comment) = match rest.split_once(" # ") {
            Some((n, c)) => (n, Some(c)),
            None => (rest, None),
        };
        let name = name.trim().trim_start_matches("zdtm/static/").to_string();
        match (ok, comment) {
            (true, Some(c)) if c.starts_with("SKIP") => {
                out.insert(
                    name,
                    Outcome::Skip(c.trim_start_matches("SKIP").trim().into()),
                );
            }
            (true, _) if name != "end" => {
                out.insert(name, Outcome::Pass);
            }
            (true, _) => {}
            (false, _) => failing = Some((name, Vec::new())),
        }
    }
    out
}

/// "FAIL at STEP: first CRIU error; the test's FAIL line", from one failed test's output.
fn failure_detail(lines: &[&str]) -> String {
    let step = lines
        .iter()
        .find_map(|l| l.find(" FAIL at ").map(|i| &l[i + 9..]))
        // a block scalar ends the step at the "####" rule; an escaped string at "\n"
        .map(|s| s.split(['#', '\\', '"']).next().unwrap_or(s).trim())
        .unwrap_or("an unknown step");
    let mut why = vec![format!("FAIL at {step}")];
    let criu_error = lines
        .iter()
        .filter(|l| l.contains("Error (") && !l.contains("RLIMIT_NOFILE"))
        .find_map(|l| l.split_once("): ").map(|(_, m)| unquote(m)));
    if let Some(e) = criu_error {
        why.push(e.to_string());
    }
    if let Some(f) = lines
        .iter()
        .find_map(|l| l.split_once(" FAIL: ").map(|(_, m)| unquote(m)))
    {
        why.push(f.to_string());
    }
    why.join("; ")
}

/// One message out of a line of the report: zdtm.py writes a test's output as a YAML block
/// or, when it holds odd characters, as one escaped string with "\n" between lines.
fn unquote(m: &str) -> &str {
    m.split("\\n")
        .next()
        .unwrap_or(m)
        .trim_end_matches(['"', '\'', ' ', '\\'])
        .trim()
}
