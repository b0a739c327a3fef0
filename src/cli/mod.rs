//! The `stasis` command line: clap argument structs and one small function per verb that maps
//! arguments onto the library's API and its errors onto exit codes.

mod complete;
mod control;
mod cr;
mod exec;
mod logs;
mod man;
mod migrate;
mod precheck;
mod progress;
mod query;
mod run;
mod stats;

use clap::{Parser, Subcommand};
use stasis::exit::CODE_STASIS_ERROR;
use stasis::store::state::StateRoot;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "stasis",
    version,
    about = "Run workloads in lightweight containers; checkpoint and restore them with CRIU, keeping their stdio",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// State root (default /var/lib/stasis; or STASIS_ROOT).
    #[arg(long, global = true, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Each command's arguments are built only when it is the one invoked (`defer`): building
/// all of them took about 0.2 ms of every CLI call, a tenth of an `exec true`'s own cost.
/// Whatever walks the whole definition (help checks, man pages, completion) calls `build()`.
#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Cmd {
    /// Run a workload in a new container (attached, like ssh, unless -d).
    Run(Box<run::RunArgs>),
    /// List workloads.
    Ps(query::PsArgs),
    /// Show everything about a workload.
    Inspect(query::InspectArgs),
    /// Print a workload's output.
    Logs(logs::LogsArgs),
    /// Attach to a running workload's stdio.
    Attach(control::AttachArgs),
    /// Send a signal to a workload.
    Kill(control::KillArgs),
    /// Stop a workload: its stop signal, then SIGKILL to the whole container after a timeout.
    Stop(control::StopArgs),
    /// Wait for a workload to end; print and return its exit code.
    Wait(control::NameArg),
    /// Remove workloads.
    Rm(control::RmArgs),
    /// Run a command inside a running workload, or manage exec sessions.
    Exec(exec::ExecArgs),
    /// Checkpoint a workload (or every running one) with CRIU.
    Checkpoint(cr::CheckpointArgs),
    /// Restore a workload (or every checkpointed one) from a checkpoint.
    Restore(cr::RestoreArgs),
    /// List a workload's checkpoint generations.
    Checkpoints(query::InspectArgs),
    /// Show a workload's history: checkpoints, restores, restarts.
    Events(logs::EventsArgs),
    /// Show CPU, memory, tasks and block IO of running workloads (live on a terminal).
    Stats(stats::StatsArgs),
    /// Check what stasis needs from this host, or whether a running workload will
    /// checkpoint (and what to change if not), without stopping it.
    #[command(after_long_help = CHECK_EXIT_STATUS)]
    Check(query::CheckArgs),
    /// Take over running workloads whose monitor is gone (or, with --replace, hand them from
    /// their monitor to this version of stasis).
    Adopt(control::AdoptArgs),
    /// Move a running workload to another host over ssh (post-copy or streamed; rolls back
    /// on failure).
    Migrate(Box<migrate::MigrateArgs>),
    /// (internal) The target's side of a migration, run by ssh.
    #[command(name = "__migrate-target", hide = true)]
    MigrateTarget,
    /// (internal) The page channel of a migration, run by ssh.
    #[command(name = "__migrate-pages", hide = true)]
    MigratePages(migrate::PagesArgs),
    /// (internal) A source's late commit, run by ssh.
    #[command(name = "__migrate-resume", hide = true)]
    MigrateResume(migrate::ResumeArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completion(complete::CompletionArgs),
    /// Write the man pages (stasis.1, stasis-COMMAND.1) into a directory.
    Man(man::ManArgs),
    /// This host's stasis, CRIU and CPU check, for `check --target` on another host.
    #[command(name = "host-facts", hide = true)]
    HostFacts(precheck::HostFactsArgs),
}

/// The exit codes of `check`, in its long help and so in `man stasis-check`.
const CHECK_EXIT_STATUS: &str = "Exit status: 0 when NAME will checkpoint (notes may still be printed), or, without NAME, when the host or --target HOST is ready; 1 when NAME will not checkpoint (one line per obstacle, each with what fixes it) or --target HOST is not ready; 125 when the check itself fails: no such workload, one that is not running, --target HOST unreachable, or (without NAME) a host that lacks what stasis needs.

--target HOST runs `ssh HOST stasis host-facts`; STASIS_SSH_COMMAND replaces the ssh command and its options, e.g. \"ssh -F ./ssh_config\".";

/// `--format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts; field names are stable.
    Json,
}

/// A failure of a verb: the code to exit with and a one-line message (empty: already said).
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<stasis::api::ApiError> for Failure {
    fn from(e: stasis::api::ApiError) -> Failure {
        Failure {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<stasis::attach::ClientError> for Failure {
    fn from(e: stasis::attach::ClientError) -> Failure {
        match e {
            stasis::attach::ClientError::Refused { code, message } => Failure { code, message },
            other => Failure {
                code: CODE_STASIS_ERROR,
                message: other.to_string(),
            },
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure {
            code: CODE_STASIS_ERROR,
            message: e.to_string(),
        }
    }
}

/// A usage error (exit 125).
pub fn usage(msg: impl Into<String>) -> Failure {
    Failure {
        code: CODE_STASIS_ERROR,
        message: msg.into(),
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    // Output into a closed pipe (`stasis ps | head -1`) ends the CLI quietly, as it ends any
    // Unix filter; the attach relays handle EPIPE themselves.
    stasis::sys::sigpipe(false);
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(complete::HELPER) {
        return complete::helper(&args.collect::<Vec<_>>());
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    CODE_STASIS_ERROR
                } else {
                    0
                };
            }
            // clap's message, on one line, and docker's code for a usage error.
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            eprintln!("stasis: {first}");
            return CODE_STASIS_ERROR;
        }
    };
    let root = StateRoot::from_flag(cli.root.clone());
    let r = match cli.cmd {
        Cmd::Run(a) => run::run(&root, *a),
        Cmd::Ps(a) => query::ps(&root, a),
        Cmd::Inspect(a) => query::inspect(&root, a),
        Cmd::Logs(a) => logs::logs(&root, a),
        Cmd::Attach(a) => control::attach(&root, a),
        Cmd::Kill(a) => control::kill(&root, a),
        Cmd::Stop(a) => control::stop(&root, a),
        Cmd::Wait(a) => control::wait(&root, a),
        Cmd::Rm(a) => control::rm(&root, a),
        Cmd::Exec(a) => exec::exec(&root, a),
        Cmd::Checkpoint(a) => cr::checkpoint(&root, a),
        Cmd::Restore(a) => cr::restore(&root, a),
        Cmd::Checkpoints(a) => query::checkpoints(&root, a),
        Cmd::Events(a) => logs::events(&root, a),
        Cmd::Stats(a) => stats::stats(&root, a),
        Cmd::Check(a) => query::check(&root, a),
        Cmd::Adopt(a) => control::adopt(&root, a),
        Cmd::Migrate(a) => migrate::migrate(&root, *a),
        Cmd::MigrateTarget => Ok(stasis::migrate::target::serve(&root)),
        Cmd::MigratePages(a) => Ok(stasis::migrate::target::pages(&root, &a.name, &a.token)),
        Cmd::MigrateResume(a) => Ok(stasis::migrate::target::resume(
            &root,
            &a.name,
            a.token.as_deref(),
        )),
        Cmd::Completion(a) => complete::completion(a),
        Cmd::Man(a) => man::man(a),
        Cmd::HostFacts(a) => precheck::host_facts(&root, a),
    };
    match r {
        Ok(code) => code,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!(
                    "stasis: {}",
                    f.message.lines().collect::<Vec<_>>().join(" ")
                );
            }
            f.code
        }
    }
}

/// Formats milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn fmt_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // civil-from-days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A short "how long ago": `5s`, `3m`, `2h`, `4d`.
pub fn ago(ms: u64) -> String {
    let now = stasis::store::state::now_ms();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format() {
        assert_eq!(fmt_time(0), "-");
        assert_eq!(fmt_time(86_400_000), "1970-01-02 00:00:00");
        assert_eq!(fmt_time(1_795_000_000_000), "2026-11-18 11:06:40");
    }

    /// With `defer`, an argument struct's doc comment would replace its command's about
    /// text (it is applied after the variant's): every command's about must be the doc
    /// comment of its variant in `Cmd`.
    #[test]
    fn each_command_is_described_by_its_own_variant() {
        use clap::CommandFactory;
        let src = include_str!("mod.rs");
        let enum_src = &src[src.find("pub enum Cmd {").expect("Cmd")..];
        let enum_src = &enum_src[..enum_src.find("\n}\n").expect("end of Cmd")];
        let mut c = Cli::command();
        c.build();
        let mut seen = 0;
        for sub in c.get_subcommands().filter(|s| s.get_name() != "help") {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            let head: String = about.chars().take(40).collect();
            assert!(
                enum_src.contains(&format!("/// {head}")),
                "{}: about {about:?} is not its variant's doc comment",
                sub.get_name()
            );
            seen += 1;
        }
        assert!(seen > 20, "{seen} commands");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Every command, flag and argument says what it is in --help, the man pages and the
    /// completions.
    #[test]
    fn everything_has_help() {
        use clap::CommandFactory;
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                if a.get_help().is_none() && !a.is_hide_set() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in c.get_subcommands() {
                let p = format!("{path} {}", s.get_name());
                if s.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        let mut missing = vec![];
        let mut c = Cli::command();
        c.build();
        assert!(
            c.find_subcommand("exec")
                .is_some_and(|e| e.get_arguments().any(|a| a.get_id() == "detach")),
            "the walk sees every command's arguments"
        );
        walk(&c, "stasis", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
