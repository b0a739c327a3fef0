//! `stasis migrate NAME DEST`, and the target's hidden helpers that ssh runs.

use super::cr::CriuFlags;
use super::{Failure, Format};
use clap::{Args, ValueEnum};
use stasis::migrate::{self, source};
use stasis::protocol::migrate::Mode;
use stasis::store::name::WorkloadName;
use stasis::store::state::StateRoot;
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// How memory moves (`--mode`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum ModeArg {
    /// Dump all but memory, run on the target at once, pages follow on fault and in the
    /// background (needs userfaultfd on both hosts).
    PostCopy,
    /// Stop, stream the whole dump to the target (no archive on either disk), run there.
    Stream,
    /// Iterative pre-copy (needs dirty-memory tracking on both hosts).
    PreCopy,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// How memory moves (default: post-copy where both hosts support userfaultfd, else
    /// stream).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// The stasis command line on the target, split on whitespace (default: `stasis` on its
    /// PATH).
    #[arg(long = "remote-stasis", value_name = "PATH", default_value = "stasis")]
    pub remote_stasis: String,
    /// The ssh command line (default: STASIS_SSH_COMMAND, else `ssh`).
    #[arg(long, value_name = "COMMAND")]
    pub ssh: Option<String>,
    /// The longest the job may stay frozen before the target takes it; past it the move is
    /// rolled back and the job resumes here (0: no limit).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = |s: &str| stasis::spec::Dur::parse(s))]
    pub timeout: stasis::spec::Dur,
    /// No progress; errors only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: a line of text, or a JSON summary.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The running workload.
    pub name: WorkloadName,
    /// Where to: `[user@]host`, reached with ssh.
    pub dest: String,
}

// `stasis __migrate-pages NAME TOKEN`.
#[derive(Args, Debug)]
pub struct PagesArgs {
    /// The workload arriving.
    pub name: WorkloadName,
    /// The migration's token (from its hello).
    pub token: String,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The workload whose migration the source resumes.
    pub name: WorkloadName,
    /// The migration's token: given with an abort (the source rolled it back).
    pub token: Option<String>,
}

pub fn migrate(root: &StateRoot, a: MigrateArgs) -> Result<i32, Failure> {
    // Its channels may close at any moment (ssh killed, the timeout shutting them): a write
    // then must fail with EPIPE, so the rollback runs, never end the command silently.
    stasis::sys::sigpipe(true);
    let o = source::Opts {
        dest: a.dest.clone(),
        mode: a.mode.map(|m| match m {
            ModeArg::PostCopy => Mode::PostCopy,
            ModeArg::Stream => Mode::Stream,
            ModeArg::PreCopy => Mode::PreCopy,
        }),
        options: a.criu.options(),
        remote_stasis: a.remote_stasis.clone(),
        ssh: a.ssh.clone(),
        timeout: Some(a.timeout.0),
    };
    let live = !a.quiet && std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut show = |phase: &str, bytes: u64| {
        if live {
            let s = t0.elapsed().as_secs_f64().max(1e-3);
            let mib = bytes as f64 / (1 << 20) as f64;
            let mut e = std::io::stderr();
            let _ = write!(
                e,
                "\r\x1b[K{}: {phase}, {mib:.1} MiB, {:.1} MiB/s",
                a.name,
                mib / s
            );
            let _ = e.flush();
        }
    };
    let r = source::migrate(root, &a.name, &o, &mut show);
    if live {
        eprint!("\r\x1b[K");
    }
    match r {
        Ok(s) => {
            if a.format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(std::io::Error::other)?
                );
            } else if !a.quiet {
                println!(
                    "migrated {} to {} ({}): downtime {:.1} ms, total {:.1} ms, {} bytes of images, {} bytes of memory",
                    s.name,
                    s.dest,
                    s.mode.as_str(),
                    s.downtime_ms,
                    s.total_ms,
                    s.image_bytes,
                    s.page_bytes
                );
            }
            Ok(0)
        }
        Err(e) => Err(Failure {
            code: e.code(),
            message: match &e {
                migrate::MigrateError::RolledBack(m)
                    if m.contains("keeps running here") || m.contains("being brought back") =>
                {
                    format!("migrate {} to {}: {m}", a.name, a.dest)
                }
                migrate::MigrateError::RolledBack(m) => format!(
                    "migrate {} to {}: {m}; {} keeps running here",
                    a.name, a.dest, a.name
                ),
                migrate::MigrateError::AfterHandOver(m) => format!("migrate {}: {m}", a.name),
            },
        }),
    }
}
