//! `stasis run`.

use super::{usage, Failure};
use clap::Args;
use stasis::api;
use stasis::attach::{self, AttachOpts, Outcome};
use stasis::protocol::{self, Reply, Request};
use stasis::spec::{ByteSize, Dur, ExitPolicy, Network, ShutdownAction, Spec, SpecOverrides};
use stasis::store::name::WorkloadName;
use stasis::store::state::StateRoot;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Start it and return (print the name) instead of attaching.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Spec file (YAML); flags given beside it override it.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name the workload (job-XXXXXX by default).
    #[arg(long)]
    pub name: Option<WorkloadName>,
    /// Give the workload a pty.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep the workload's stdin open and attach ours to it.
    #[arg(short = 'i', long = "stdin", visible_alias = "interactive")]
    pub stdin: bool,
    /// Remove the workload once it has exited.
    #[arg(long)]
    pub rm: bool,
    /// Set a variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Pass a variable of ours through (repeatable).
    #[arg(long = "env-pass", value_name = "K")]
    pub env_pass: Vec<String>,
    /// Working directory of the workload (the caller's by default).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// UID[:GID] or NAME[:GROUP].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// An extra supplementary group (repeatable).
    #[arg(long = "group-add", value_name = "GID")]
    pub group_add: Vec<u32>,
    /// Hostname inside the container (its own UTS namespace).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network: the host's, or none (an own network namespace with only lo).
    #[arg(long, value_enum)]
    pub network: Option<Network>,
    /// A root filesystem for the container (adds a mount namespace).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Bind mount SRC:DST[:ro] (needs --rootfs; repeatable).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volumes: Vec<String>,
    /// Memory limit (512m, 1g).
    #[arg(short = 'm', long, value_parser = |s: &str| ByteSize::parse(s))]
    pub memory: Option<ByteSize>,
    /// Limit on the number of tasks.
    #[arg(long)]
    pub pids: Option<u64>,
    /// CPU limit in cores.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// rlimit NAME=SOFT[:HARD] (repeatable).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// File mode creation mask, in octal (022).
    #[arg(long)]
    pub umask: Option<String>,
    /// Keep a capability beyond the default set (repeatable; ALL for every one).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the default set (repeatable; ALL for every one).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Set no_new_privs (default true).
    #[arg(long = "no-new-privs", value_name = "BOOL")]
    pub no_new_privs: Option<bool>,
    /// The signal `stop` sends first (TERM by default).
    #[arg(long = "stop-signal", value_name = "SIG")]
    pub stop_signal: Option<String>,
    /// How long `stop` waits before SIGKILL (10s).
    #[arg(long = "stop-timeout", value_name = "DURATION", value_parser = |s: &str| Dur::parse(s))]
    pub stop_timeout: Option<Dur>,
    /// Take a checkpoint this often (the job keeps running).
    #[arg(long = "checkpoint-every", value_parser = |s: &str| Dur::parse(s), value_name = "DURATION")]
    pub checkpoint_every: Option<Dur>,
    /// Generations to keep.
    #[arg(long)]
    pub keep: Option<u32>,
    /// What to do when it ends without being asked to.
    #[arg(long = "on-exit", value_parser = parse_policy, value_name = "none|restart|restore")]
    pub on_exit: Option<ExitPolicy>,
    /// How many restarts or restores in a row --on-exit may try before the job is failed.
    #[arg(long = "max-attempts", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// What a host shutdown does to it.
    #[arg(long = "on-shutdown", value_enum)]
    pub on_shutdown: Option<ShutdownAction>,
    /// Rotate the log when it reaches SIZE (64m by default).
    #[arg(long = "log-max-size", value_name = "SIZE", value_parser = |s: &str| ByteSize::parse(s))]
    pub log_max_size: Option<ByteSize>,
    /// Rotated log files to keep besides the current one (4 by default).
    #[arg(long = "log-max-files", value_name = "N")]
    pub log_max_files: Option<u32>,
    /// What a restore does when files the job writes changed since the checkpoint: warn
    /// (name them) or refuse.
    #[arg(long = "on-divergence", value_enum, value_name = "warn|refuse")]
    pub on_divergence: Option<stasis::spec::OnDivergence>,
    /// Copy PATH (as the job sees it) with each checkpoint and put it back at restore
    /// (repeatable); `rootfs` copies a --rootfs job's whole root.
    #[arg(long = "snapshot", value_name = "PATH|rootfs")]
    pub snapshot: Vec<String>,
    /// Keys that detach the client (with -t): ctrl-p,ctrl-q by default.
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// The command and its arguments (after --).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

fn parse_policy(s: &str) -> Result<ExitPolicy, String> {
    match s {
        "none" => Ok(ExitPolicy::None),
        "restart" => Ok(ExitPolicy::Restart),
        "restore" => Ok(ExitPolicy::Restore),
        _ => Err(format!("{s:?} is not none, restart or restore")),
    }
}

/// The spec from `-f` and the flags.
pub fn build_spec(a: &RunArgs) -> Result<Spec, Failure> {
    let mut spec = match &a.file {
        Some(f) => Spec::from_file(f).map_err(|e| usage(e.to_string()))?,
        None => Spec::default(),
    };
    let flag = |b: bool| if b { Some(true) } else { None };
    spec.apply(SpecOverrides {
        name: a.name.clone(),
        command: a.command.clone(),
        env: a.env.clone(),
        env_pass: a.env_pass.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        group_add: a.group_add.clone(),
        hostname: a.hostname.clone(),
        network: a.network,
        rootfs: a.rootfs.clone(),
        volumes: a.volumes.clone(),
        memory: a.memory,
        pids: a.pids,
        cpus: a.cpus,
        tty: flag(a.tty),
        stdin: flag(a.stdin),
        ulimits: a.ulimits.clone(),
        umask: a.umask.clone(),
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        no_new_privs: a.no_new_privs,
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        rm: flag(a.rm),
        checkpoint_every: a.checkpoint_every,
        keep: a.keep,
        on_exit_policy: a.on_exit,
        max_attempts: a.max_attempts,
        on_shutdown: a.on_shutdown,
        log_max_size: a.log_max_size,
        log_max_files: a.log_max_files,
        on_divergence: a.on_divergence,
        snapshot: a.snapshot.clone(),
    })
    .map_err(|e| usage(e.to_string()))?;
    if let Some(r) = &spec.rootfs {
        spec.rootfs = Some(std::path::absolute(r).unwrap_or_else(|_| r.clone()));
    }
    Ok(spec)
}

pub fn run(root: &StateRoot, a: RunArgs) -> Result<i32, Failure> {
    let spec = build_spec(&a)?;
    let keys = attach::parse_detach_keys(
        a.detach_keys
            .as_deref()
            .unwrap_or(attach::DEFAULT_DETACH_KEYS),
    )
    .map_err(usage)?;
    let tty = spec.tty;
    let stdin = spec.stdin;
    let api::Created {
        wd,
        lock,
        spec,
        state,
    } = api::create(root, spec)?;
    let conn = api::spawn_monitor(root, &wd, lock, Some((spec, state)))?;
    let term = std::env::var("TERM").ok();
    if a.detach {
        protocol::send(conn.as_fd(), &Request::Start { attach: None, term }, &[])?;
        return match api::next_reply(&conn) {
            Ok(Reply::Started { .. }) => {
                println!("{}", wd.name);
                Ok(0)
            }
            Ok(other) => Err(usage(format!("unexpected reply {other:?}"))),
            Err(e) => Err(e.into()),
        };
    }
    let opts = AttachOpts {
        stdin,
        tty,
        detach_keys: if tty { keys } else { vec![] },
        session: None,
        name: wd.name.to_string(),
        owner: true,
    };
    let relays = attach::relays(&opts)?;
    let first = Request::Start {
        attach: Some(relays.spec.clone()),
        term,
    };
    match attach::attach(&conn, &first, relays, &opts, |_| {})? {
        Outcome::Ended(Reply::Exit {
            code, oom_killed, ..
        }) => {
            if oom_killed && std::io::stderr().is_terminal() {
                eprintln!("stasis: {} was OOM-killed (memory limit)", wd.name);
            }
            Ok(code)
        }
        Outcome::Ended(_) => Ok(0),
        Outcome::Detached => {
            eprintln!("stasis: detached from {}", wd.name);
            Ok(0)
        }
        Outcome::ReaderGone => stasis::sys::die_of(libc::SIGPIPE),
    }
}
