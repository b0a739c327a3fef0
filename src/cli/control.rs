//! `attach`, `kill`, `stop`, `wait`, `rm`.

use super::{usage, Failure};
use clap::Args;
use stasis::api::{self, ApiError};
use stasis::attach::{self, AttachOpts, Outcome};
use stasis::exit::parse_signal;
use stasis::protocol::{Reply, Request};
use stasis::spec::Dur;
use stasis::store::name::WorkloadName;
use stasis::store::state::{self, StateRoot};

#[derive(Args, Debug)]
pub struct NameArg {
    /// The workload.
    pub name: WorkloadName,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Keys that detach (with a tty): ctrl-p,ctrl-q by default; "" disables.
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// Do not send our stdin.
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    /// The workload.
    pub name: WorkloadName,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal, by name (TERM, SIGUSR1) or number (default KILL).
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    /// The workload.
    pub name: WorkloadName,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds (or a duration like 500ms) to wait before SIGKILL; the spec's stop_timeout by
    /// default.
    #[arg(short = 't', long = "time", value_name = "DURATION", value_parser = |s: &str| Dur::parse(s))]
    pub time: Option<Dur>,
    /// The workload.
    pub name: WorkloadName,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill it first if it runs.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove every workload.
    #[arg(long)]
    pub all: bool,
    /// The workloads.
    #[arg(value_name = "NAME")]
    pub names: Vec<WorkloadName>,
}

pub fn attach(root: &StateRoot, a: AttachArgs) -> Result<i32, Failure> {
    let wd = root.workload(&a.name);
    let spec = api::load_spec(&wd)?;
    let keys = attach::parse_detach_keys(
        a.detach_keys
            .as_deref()
            .unwrap_or(attach::DEFAULT_DETACH_KEYS),
    )
    .map_err(usage)?;
    let conn = api::connect(root, &a.name)?;
    let opts = AttachOpts {
        stdin: (spec.stdin || spec.tty) && !a.no_stdin,
        tty: spec.tty,
        detach_keys: if spec.tty { keys } else { vec![] },
        session: None,
        name: a.name.to_string(),
        owner: false,
    };
    let relays = attach::relays(&opts)?;
    let first = Request::Attach {
        attach: relays.spec.clone(),
    };
    match attach::attach(&conn, &first, relays, &opts, |_| {})? {
        Outcome::Ended(Reply::Exit { code, reason, .. }) => {
            // The job did not end: it moved (`stasis migrate`), and runs on where it went.
            if code == stasis::exit::CODE_MIGRATED {
                let r = reason.unwrap_or_else(|| "moved to another host".into());
                eprintln!("stasis: {} {r}: `stasis attach {}` there", a.name, a.name);
            }
            Ok(code)
        }
        Outcome::Ended(_) => Ok(0),
        Outcome::Detached => {
            eprintln!("stasis: detached from {}", a.name);
            Ok(0)
        }
        Outcome::ReaderGone => stasis::sys::die_of(libc::SIGPIPE),
    }
}

pub fn kill(root: &StateRoot, a: KillArgs) -> Result<i32, Failure> {
    let sig =
        parse_signal(&a.signal).ok_or_else(|| usage(format!("unknown signal {:?}", a.signal)))?;
    api::kill(root, &a.name, sig)?;
    Ok(0)
}

pub fn stop(root: &StateRoot, a: StopArgs) -> Result<i32, Failure> {
    api::stop(root, &a.name, a.time.map(|d| d.0))?;
    println!("{}", a.name);
    Ok(0)
}

pub fn wait(root: &StateRoot, a: NameArg) -> Result<i32, Failure> {
    match api::wait(root, &a.name)? {
        Reply::Exit { code, .. } => {
            println!("{code}");
            Ok(code)
        }
        other => Err(usage(format!("unexpected reply {other:?}"))),
    }
}

pub fn rm(root: &StateRoot, a: RmArgs) -> Result<i32, Failure> {
    let names = if a.all { root.names() } else { a.names.clone() };
    if names.is_empty() && !a.all {
        return Err(usage("rm needs a workload name (or --all)"));
    }
    let mut failed = None;
    for n in names {
        match api::rm(root, &n, a.force) {
            Ok(()) => println!("{n}"),
            Err(e @ ApiError::State(state::StateError::NotFound(_)))
            | Err(e @ ApiError::Running(_)) => {
                eprintln!("stasis: {e}");
                failed = Some(e.code());
            }
            Err(e) => {
                eprintln!("stasis: {n}: {e}");
                failed = Some(e.code());
            }
        }
    }
    match failed {
        Some(code) => Err(Failure {
            code,
            message: String::new(),
        }),
        None => Ok(0),
    }
}

#[derive(Args, Debug)]
pub struct AdoptArgs {
    /// Take over from a live monitor too (an older stasis after an upgrade): it hands the
    /// workload over and exits; the workload runs on.
    #[arg(long)]
    pub replace: bool,
    /// Every running workload whose monitor is gone (with --replace: every running one).
    #[arg(long)]
    pub all: bool,
    /// The workloads.
    #[arg(value_name = "NAME")]
    pub names: Vec<WorkloadName>,
}

pub fn adopt(root: &StateRoot, a: AdoptArgs) -> Result<i32, Failure> {
    let names: Vec<WorkloadName> = if a.all {
        api::list(root)
            .into_iter()
            .filter_map(|(n, o)| {
                o.ok()
                    .filter(|o| {
                        o.orphaned()
                            || (a.replace
                                && o.monitor_alive
                                && o.state.status == state::Status::Running)
                    })
                    .map(|_| n)
            })
            .collect()
    } else {
        a.names.clone()
    };
    if names.is_empty() && !a.all {
        return Err(usage("adopt needs a workload name (or --all)"));
    }
    let mut failed = None;
    for n in names {
        match api::adopt(root, &n, a.replace) {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("stasis: {e}");
                failed = Some(e.code());
            }
        }
    }
    match failed {
        Some(code) => Err(Failure {
            code,
            message: String::new(),
        }),
        None => Ok(0),
    }
}
