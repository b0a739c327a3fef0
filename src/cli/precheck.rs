//! `check NAME` (will this job checkpoint?) and the hidden `host-facts` that `check --target`
//! runs on the other host over ssh.

use super::cr::CriuFlags;
use super::{usage, Failure, Format};
use clap::Args;
use stasis::exit::{CODE_STASIS_ERROR, CODE_WILL_NOT_CHECKPOINT};
use stasis::precheck::{self, host, target, verdict::Line};
use stasis::store::name::WorkloadName;
use stasis::store::state::StateRoot;
use std::io::Read;

// `stasis host-facts`: this host's stasis, CRIU and (for an image on stdin) CPU check.
#[derive(Args, Debug)]
pub struct HostFactsArgs {
    /// Output format (JSON is what `check --target` reads).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// A `criu cpuinfo dump` image to check this CPU against (FILE, or - for stdin).
    #[arg(long, value_name = "FILE")]
    pub cpuinfo: Option<String>,
}

fn print_lines(tag: &str, lines: &[Line]) {
    for l in lines {
        let at = if l.at.is_empty() {
            String::new()
        } else {
            format!("{}: ", l.at)
        };
        println!("  {tag:<8} {}: {at}{}", l.kind, l.problem);
        println!("  {:<8} fix: {}", "", l.fix);
    }
}

/// `stasis check NAME [--target HOST] [CRIU flags]`.
pub fn check_job(
    root: &StateRoot,
    name: &WorkloadName,
    criu: &CriuFlags,
    target: Option<&str>,
    format: Format,
) -> Result<i32, Failure> {
    let r = precheck::check(root, name, &criu.options(), target).map_err(|e| Failure {
        code: e.code(),
        message: e.to_string(),
    })?;
    let code = if r.checkpointable {
        0
    } else {
        CODE_WILL_NOT_CHECKPOINT
    };
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| usage(e.to_string()))?
        );
        return Ok(code);
    }
    let n = r.obstacles.len();
    let summary = if r.checkpointable {
        "will checkpoint".to_string()
    } else {
        format!(
            "will not checkpoint ({n} obstacle{})",
            if n == 1 { "" } else { "s" }
        )
    };
    println!(
        "{}: {summary}; {} process{}, init pid {}",
        r.name,
        r.processes,
        if r.processes == 1 { "" } else { "es" },
        r.pid
    );
    if let Some(t) = &r.target {
        let f = &t.facts;
        let criu = f
            .criu
            .as_ref()
            .map(|c| format!("CRIU {} ({})", c.version, c.check.detail))
            .unwrap_or_else(|| "no CRIU".into());
        let cpu = match &f.cpuinfo {
            Some(c) if c.ok => "CPU ok",
            Some(_) => "CPU differs",
            None => "CPU not checked",
        };
        println!(
            "target {}: stasis {}, {criu}, {cpu}",
            t.host, f.stasis_version
        );
    }
    print_lines("obstacle", &r.obstacles);
    print_lines("note", &r.notes);
    Ok(code)
}

/// `stasis check --target HOST` without a job: the target's readiness for this host's jobs.
pub fn check_target(root: &StateRoot, host_name: &str, format: Format) -> Result<i32, Failure> {
    let local = host::gather(&stasis::criu::cache_dir(root), false);
    let t = target::ask(host_name, &local, false, false).map_err(|e| Failure {
        code: CODE_STASIS_ERROR,
        message: e.to_string(),
    })?;
    let ok = t.obstacles.is_empty();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&t).map_err(|e| usage(e.to_string()))?
        );
    } else {
        println!(
            "target {}: {}",
            t.host,
            if ok {
                "ready for this host's checkpoints"
            } else {
                "not ready"
            }
        );
        print_lines("obstacle", &t.obstacles);
        print_lines("note", &t.notes);
    }
    Ok(if ok { 0 } else { CODE_WILL_NOT_CHECKPOINT })
}

/// `stasis host-facts`.
pub fn host_facts(root: &StateRoot, a: HostFactsArgs) -> Result<i32, Failure> {
    let mut facts = host::gather(&stasis::criu::cache_dir(root), true);
    if let Some(src) = &a.cpuinfo {
        let mut image = Vec::new();
        if src == "-" {
            std::io::stdin().read_to_end(&mut image)?;
        } else {
            image = std::fs::read(src).map_err(|e| usage(format!("--cpuinfo {src}: {e}")))?;
        }
        facts.cpuinfo = Some(match stasis::criu::locate() {
            Ok(c) => host::cpuinfo_check(&c, &image),
            Err(e) => host::Check {
                ok: false,
                detail: e.to_string(),
            },
        });
    }
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&facts).map_err(|e| usage(e.to_string()))?
        );
    } else {
        println!("host     {}", facts.hostname);
        println!(
            "stasis   {} (protocol {}, checkpoint format {})",
            facts.stasis_version, facts.protocol, facts.manifest
        );
        println!("kernel   {} {}", facts.kernel, facts.arch);
        match &facts.criu {
            Some(c) => println!("criu     {} {} ({})", c.path, c.version, c.check.detail),
            None => println!("criu     {}", facts.criu_error.unwrap_or_default()),
        }
        if let Some(c) = &facts.cpuinfo {
            println!("cpuinfo  {}", c.detail);
        }
        if let Some(t) = facts.run_tmpfs {
            println!(
                "run      {} {}",
                host::KDAT_DIR,
                if t {
                    "is a tmpfs (CRIU caches its kernel probes)"
                } else {
                    "is not a tmpfs (CRIU re-probes the kernel on every run)"
                }
            );
        }
    }
    Ok(0)
}
