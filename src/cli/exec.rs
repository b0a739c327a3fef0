//! `stasis exec`: run a command in a running workload, or manage its exec sessions.

use super::{fmt_time, usage, Failure, Format};
use clap::Args;
use stasis::api;
use stasis::attach::{self, AttachOpts, Outcome};
use stasis::protocol::{AttachSpec, ExecRequest, Reply, Request};
use stasis::spec::{parse_env_kv, Dur};
use stasis::store::name::WorkloadName;
use stasis::store::sessions::SessionId;
use stasis::store::state::StateRoot;
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Start the session and print its id instead of attaching.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Send our stdin to the session.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Give the session a pty (the default when stdin and stdout are terminals).
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never give the session a pty.
    #[arg(short = 'T', long = "no-tty")]
    pub no_tty: bool,
    /// Set a variable in the session (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Pass a variable of ours through to the session (repeatable).
    #[arg(long = "env-pass", value_name = "K")]
    pub env_pass: Vec<String>,
    /// Working directory of the session, inside the container (the workload's by default).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run the session as UID[:GID] or NAME[:GROUP] (the workload's user by default).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Pass our fd N to the session as fd N (repeatable).
    #[arg(long = "preserve-fd", value_name = "N")]
    pub preserve_fd: Vec<i32>,
    /// Keys that detach the client (with a tty): ctrl-p,ctrl-q by default; "" disables.
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// List the workload's exec sessions.
    #[arg(long, conflicts_with_all = ["attach", "stop", "remove"])]
    pub list: bool,
    /// Attach to a running session.
    #[arg(long, value_name = "ID")]
    pub attach: Option<SessionId>,
    /// Stop a session (TERM, then KILL after --time).
    #[arg(long, value_name = "ID")]
    pub stop: Option<SessionId>,
    /// Remove an exited session's record and log.
    #[arg(long = "rm", value_name = "ID")]
    pub remove: Option<SessionId>,
    /// With --stop: how long before KILL (10s).
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| Dur::parse(s))]
    pub time: Option<Dur>,
    /// With --list: a table, or a JSON array.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The workload.
    pub name: WorkloadName,
    /// The command and its arguments (after --).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

fn end(o: Outcome, name: &str) -> Result<i32, Failure> {
    match o {
        Outcome::Ended(Reply::Exit { code, .. }) => Ok(code),
        Outcome::Ended(_) => Ok(0),
        Outcome::Detached => {
            eprintln!("stasis: detached from a session of {name}");
            Ok(0)
        }
        Outcome::ReaderGone => stasis::sys::die_of(libc::SIGPIPE),
    }
}

pub fn exec(root: &StateRoot, a: ExecArgs) -> Result<i32, Failure> {
    if a.list {
        return list(root, &a);
    }
    if let Some(id) = &a.remove {
        api::call(root, &a.name, &Request::ExecRemove { id: id.clone() })?;
        println!("{id}");
        return Ok(0);
    }
    if let Some(id) = &a.stop {
        let c = api::connect(root, &a.name)?;
        stasis::protocol::send(
            c.as_fd(),
            &Request::ExecStop {
                id: id.clone(),
                timeout_ms: a.time.map(|d| d.0.as_millis() as u64),
            },
            &[],
        )?;
        return match api::next_reply(&c)? {
            Reply::Exit { code, .. } => {
                println!("{code}");
                Ok(0)
            }
            other => Err(usage(format!("unexpected reply {other:?}"))),
        };
    }
    let keys = attach::parse_detach_keys(
        a.detach_keys
            .as_deref()
            .unwrap_or(attach::DEFAULT_DETACH_KEYS),
    )
    .map_err(usage)?;
    let interactive_terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let tty = if a.tty {
        true
    } else if a.no_tty {
        false
    } else {
        interactive_terminal && !a.detach
    };
    if let Some(id) = &a.attach {
        let conn = api::connect(root, &a.name)?;
        let opts = AttachOpts {
            stdin: true,
            tty,
            detach_keys: if tty { keys } else { vec![] },
            session: Some(id.clone()),
            name: a.name.to_string(),
            owner: false,
        };
        let relays = attach::relays(&opts)?;
        let first = Request::ExecAttach {
            id: id.clone(),
            attach: relays.spec.clone(),
        };
        return end(
            attach::attach(&conn, &first, relays, &opts, |_| {})?,
            a.name.as_str(),
        );
    }
    let mut env = Vec::new();
    for kv in &a.env {
        env.push(parse_env_kv(kv).map_err(|e| usage(e.to_string()))?);
    }
    for k in &a.env_pass {
        if let Ok(v) = std::env::var(k) {
            env.push((k.clone(), v));
        }
    }
    stasis::spec::check_args_env(&a.command, env.iter().map(|(k, v)| (k, v)))
        .map_err(|e| usage(e.to_string()))?;
    for fd in &a.preserve_fd {
        if *fd < 3 {
            return Err(usage(format!(
                "--preserve-fd {fd}: fds 0-2 are the session's stdio"
            )));
        }
        borrow_checked(*fd)?;
    }
    let stdin = a.interactive || tty;
    let req = |attach: AttachSpec| ExecRequest {
        command: a.command.clone(),
        env: env.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty,
        stdin,
        detach: a.detach,
        preserve_fds: a.preserve_fd.clone(),
        term: std::env::var("TERM").ok(),
        attach,
    };
    let conn = api::connect(root, &a.name)?;
    let extra: Vec<i32> = a.preserve_fd.clone();
    if a.detach {
        stasis::protocol::send(
            conn.as_fd(),
            &Request::Exec {
                req: req(AttachSpec::default()),
            },
            &extra,
        )?;
        return match api::next_reply(&conn)? {
            Reply::ExecStarted { id } => {
                println!("{id}");
                Ok(0)
            }
            other => Err(usage(format!("unexpected reply {other:?}"))),
        };
    }
    let opts = AttachOpts {
        stdin,
        tty,
        detach_keys: if tty { keys } else { vec![] },
        session: None,
        name: a.name.to_string(),
        owner: true,
    };
    let mut relays = attach::relays(&opts)?;
    for fd in &extra {
        relays.far.push(borrow_checked(*fd)?.try_clone_to_owned()?);
    }
    let first = Request::Exec {
        req: req(relays.spec.clone()),
    };
    let r = attach::attach(&conn, &first, relays, &opts, |_| {})?;
    end(r, a.name.as_str())
}

/// Borrows one of our own fds by number, after checking it is open.
fn borrow_checked(fd: i32) -> Result<BorrowedFd<'static>, Failure> {
    stasis::sys::borrow_open_fd(fd).map_err(|e| usage(format!("--preserve-fd {fd}: {e}")))
}

fn list(root: &StateRoot, a: &ExecArgs) -> Result<i32, Failure> {
    let wd = root.workload(&a.name);
    if !wd.exists() {
        return Err(
            api::ApiError::from(stasis::store::state::StateError::NotFound(a.name.clone())).into(),
        );
    }
    let sessions = stasis::store::sessions::list(&wd);
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&sessions).map_err(|e| usage(e.to_string()))?
        );
        return Ok(0);
    }
    println!(
        "{:<14} {:<8} {:>6}  {:<19}  COMMAND",
        "ID", "STATUS", "CODE", "CREATED"
    );
    for s in sessions {
        let code = s
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<8} {:>6}  {:<19}  {}",
            s.id,
            format!("{:?}", s.status).to_lowercase(),
            code,
            fmt_time(s.created_at),
            s.command.join(" ")
        );
    }
    Ok(0)
}
