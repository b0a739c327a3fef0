//! `checkpoint` and `restore`, one workload or all of them.

use super::progress::{self, Activity, Counter};
use super::{usage, Failure, Format};
use clap::Args;
use serde::Serialize;
use stasis::api::{self, ApiError};
use stasis::protocol::{CheckpointOpts, Reply, RestoreOpts};
use stasis::store::name::WorkloadName;
use stasis::store::state::{StateRoot, Status};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// Keep the workload running after the dump.
    #[arg(long = "leave-running")]
    pub leave_running: bool,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Keep only the newest N generations.
    #[arg(long)]
    pub keep: Option<u32>,
    /// Also write the new generation as an archive (FILE, or - for stdout).
    #[arg(long, value_name = "FILE")]
    pub export: Option<String>,
    /// Checkpoint every running workload.
    #[arg(long)]
    pub all: bool,
    /// With --all: only workloads whose spec says `on_shutdown: checkpoint`.
    #[arg(long = "on-shutdown")]
    pub on_shutdown: bool,
    /// With --all: how many at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// No progress, no summary lines; errors only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: a line of text, or JSON (with --all: an array).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The workload (not with --all).
    pub name: Option<WorkloadName>,
}

// CRIU options for one checkpoint, on top of the spec's `criu:` (see `stasis help` and
// config/job.yaml for what each does and its default).
#[derive(Args, Debug, Default)]
pub struct CriuFlags {
    /// Dump established TCP connections; the restore brings them back (the addresses must
    /// exist where it is restored).
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Dump file locks (the default; this flag is kept for scripts written for runc).
    #[arg(long = "file-locks", conflicts_with = "no_file_locks")]
    pub file_locks: bool,
    /// Do not dump file locks: a job holding one at the dump then fails to checkpoint.
    #[arg(long = "no-file-locks")]
    pub no_file_locks: bool,
    /// Link back files unlinked while open, so they can be dumped (the default).
    #[arg(long = "link-remap", conflicts_with = "no_link_remap")]
    pub link_remap: bool,
    /// Fail on a file unlinked while open instead of linking it back.
    #[arg(long = "no-link-remap")]
    pub no_link_remap: bool,
    /// Copy deleted-but-open files up to SIZE each into the images (default: enough for
    /// the largest such file the job holds, up to 4g).
    #[arg(long = "ghost-limit", value_name = "SIZE", value_parser = |s: &str| stasis::spec::ByteSize::parse(s))]
    pub ghost_limit: Option<stasis::spec::ByteSize>,
    /// Dump unix sockets connected outside the container as external: they come back
    /// unconnected and the job must reconnect.
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// How long CRIU may take to freeze the job's whole process tree (CRIU's default: 10s).
    #[arg(long = "freeze-timeout", value_name = "DURATION", value_parser = |s: &str| stasis::spec::Dur::parse(s))]
    pub freeze_timeout: Option<stasis::spec::Dur>,
    /// Declare a resource external in CRIU's own syntax (advanced; repeatable).
    #[arg(long = "external", value_name = "SPEC")]
    pub external: Vec<String>,
}

impl CriuFlags {
    /// The options these flags set (unset ones are left to the spec and the defaults).
    pub fn options(&self) -> stasis::criu::CriuOptions {
        let pick = |on: bool, off: bool| match (on, off) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        stasis::criu::CriuOptions {
            tcp_established: self.tcp_established.then_some(true),
            link_remap: pick(self.link_remap, self.no_link_remap),
            ghost_limit: self.ghost_limit,
            file_locks: pick(self.file_locks, self.no_file_locks),
            ext_unix_sk: self.ext_unix_sk.then_some(true),
            freeze_timeout: self.freeze_timeout,
            external: self.external.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The generation to restore (the newest by default).
    #[arg(short = 'g', long)]
    pub generation: Option<u32>,
    /// Import an exported archive (FILE, or - for stdin) and restore it.
    #[arg(long, value_name = "FILE")]
    pub import: Option<String>,
    /// With --import: the name to give the imported workload.
    #[arg(long = "name", value_name = "NEW")]
    pub new_name: Option<WorkloadName>,
    /// Restore every checkpointed workload.
    #[arg(long)]
    pub all: bool,
    /// Run at once and bring the memory back on fault and in the background (CRIU's lazy
    /// pages through userfaultfd); falls back to a full restore where that cannot work.
    #[arg(long)]
    pub lazy: bool,
    /// With --all: how many at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// No progress, no summary lines; errors only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: a line of text, or JSON (with --all: an array).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The workload (not with --all; with --import, the name it must have).
    pub name: Option<WorkloadName>,
}

/// Runs `f` over `names` with at most `parallel` at a time; prints one line per name (as
/// `describe` says; none in JSON) above a progress bar on a terminal; returns each name's
/// result, in the order of `names`.
fn for_all<T: Send>(
    names: Vec<WorkloadName>,
    parallel: usize,
    quiet: bool,
    json: bool,
    verb: &str,
    f: impl Fn(&WorkloadName) -> Result<T, ApiError> + Sync,
    describe: impl Fn(&T) -> String + Sync,
) -> Vec<(WorkloadName, Result<T, String>)> {
    let bar = Counter::new(names.len(), verb, quiet);
    let queue = Mutex::new(names.into_iter().enumerate());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((i, n)) = next else { return };
                let r = f(&n).map_err(|e| e.to_string());
                match &r {
                    Ok(t) if !quiet && !json => bar.println(&format!("{n}: {}", describe(t))),
                    Err(e) if !json => bar.println(&format!("{n}: FAILED: {e}")),
                    _ => {}
                }
                bar.inc();
                if let Ok(mut v) = results.lock() {
                    v.push((i, n, r));
                }
            });
        }
    });
    bar.done();
    let mut v = results.into_inner().unwrap_or_default();
    v.sort_by_key(|(i, _, _)| *i);
    v.into_iter().map(|(_, n, r)| (n, r)).collect()
}

/// What `checkpoint --format json` prints for a workload.
#[derive(Serialize)]
struct CheckpointResult {
    name: String,
    ok: bool,
    generation: Option<u32>,
    dump_ms: Option<f64>,
    frozen_ms: Option<f64>,
    size: Option<u64>,
    leave_running: Option<bool>,
    error: Option<String>,
}

impl CheckpointResult {
    fn new(name: &WorkloadName, r: &Result<Reply, String>) -> CheckpointResult {
        let mut c = CheckpointResult {
            name: name.to_string(),
            ok: r.is_ok(),
            generation: None,
            dump_ms: None,
            frozen_ms: None,
            size: None,
            leave_running: None,
            error: r.as_ref().err().cloned(),
        };
        if let Ok(Reply::Checkpointed {
            generation,
            stats,
            leave_running,
        }) = r
        {
            c.generation = Some(*generation);
            c.dump_ms = Some(stats.dump_ms);
            c.frozen_ms = stats.frozen_ms;
            c.size = Some(stats.size);
            c.leave_running = Some(*leave_running);
        }
        c
    }
}

/// What `restore --format json` prints for a workload.
#[derive(Serialize)]
struct RestoreResult {
    name: String,
    ok: bool,
    generation: Option<u32>,
    pid: Option<i32>,
    error: Option<String>,
}

impl RestoreResult {
    fn new(name: &WorkloadName, r: &Result<(u32, i32), String>) -> RestoreResult {
        RestoreResult {
            name: name.to_string(),
            ok: r.is_ok(),
            generation: r.as_ref().ok().map(|r| r.0),
            pid: r.as_ref().ok().map(|r| r.1),
            error: r.as_ref().err().cloned(),
        }
    }
}

fn print_json(v: &impl Serialize) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| usage(e.to_string()))?
    );
    Ok(())
}

fn summary<T>(verb: &str, results: &[(WorkloadName, Result<T, String>)]) -> Result<i32, Failure> {
    let names: Vec<String> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| n.to_string())
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    Err(Failure {
        code: stasis::exit::CODE_STASIS_ERROR,
        message: format!(
            "{verb} failed for {} workload(s): {}",
            names.len(),
            names.join(", ")
        ),
    })
}

fn describe_checkpoint(r: &Reply) -> String {
    match r {
        Reply::Checkpointed {
            generation,
            stats,
            leave_running,
        } => {
            let frozen = stats
                .frozen_ms
                .map(|f| format!(", frozen {f:.1} ms"))
                .unwrap_or_default();
            let lr = if *leave_running { ", left running" } else { "" };
            format!(
                "checkpointed generation {generation} ({:.1} ms{frozen}, {} bytes{lr})",
                stats.dump_ms, stats.size
            )
        }
        other => format!("{other:?}"),
    }
}

pub fn checkpoint(root: &StateRoot, a: CheckpointArgs) -> Result<i32, Failure> {
    let opts = CheckpointOpts {
        leave_running: a.leave_running,
        options: a.criu.options(),
        keep: a.keep,
        reason: "user".into(),
        criu: None,
    };
    if a.all {
        if a.name.is_some() || a.export.is_some() {
            return Err(usage("--all takes no name and no --export"));
        }
        let names: Vec<WorkloadName> = api::list(root)
            .into_iter()
            .filter_map(|(n, o)| {
                o.ok()
                    .filter(|o| o.state.status == Status::Running && o.monitor_alive)
                    .map(|_| n)
            })
            .filter(|n| {
                !a.on_shutdown
                    || api::load_spec(&root.workload(n))
                        .is_ok_and(|s| s.on_shutdown == stasis::spec::ShutdownAction::Checkpoint)
            })
            .collect();
        let opts = CheckpointOpts {
            reason: if a.on_shutdown {
                "shutdown".into()
            } else {
                "user".into()
            },
            ..opts
        };
        let json = a.format == Format::Json;
        let results = for_all(
            names,
            a.parallel,
            a.quiet,
            json,
            "checkpointed",
            |n| api::checkpoint(root, n, opts.clone()),
            describe_checkpoint,
        );
        // Maintenance path: make every new generation durable before the host goes down.
        nix::unistd::sync();
        if json {
            let v: Vec<CheckpointResult> = results
                .iter()
                .map(|(n, r)| CheckpointResult::new(n, r))
                .collect();
            print_json(&v)?;
        }
        return summary("checkpoint", &results);
    }
    let name = a
        .name
        .clone()
        .ok_or_else(|| usage("checkpoint needs a workload name (or --all)"))?;
    // the request is with the monitor before the spinner's thread starts: asking may adopt
    // the workload, which forks
    let pending = api::start_checkpoint(root, &name, opts)?;
    let spinner = Activity::start(format!("checkpointing {name}"), a.quiet);
    let r = pending.wait();
    spinner.done();
    let r = r?;
    let gen = match &r {
        Reply::Checkpointed { generation, .. } => Some(*generation),
        _ => None,
    };
    if let Some(dest) = &a.export {
        export_to(root, &name, gen, dest, a.quiet)?;
    }
    if a.export.as_deref() == Some("-") {
        // stdout is the archive
    } else if a.format == Format::Json {
        print_json(&CheckpointResult::new(&name, &Ok(r)))?;
    } else if !a.quiet {
        println!("{}", describe_checkpoint(&r));
    }
    Ok(0)
}

fn export_to(
    root: &StateRoot,
    name: &WorkloadName,
    gen: Option<u32>,
    dest: &str,
    quiet: bool,
) -> Result<(), Failure> {
    // the archive is compressed as it is written: its size is known only at the end
    let bar = progress::bytes(None, format!("exporting {name}"), quiet);
    let r = export_with(root, name, gen, dest, bar.as_ref());
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r
}

fn export_with(
    root: &StateRoot,
    name: &WorkloadName,
    gen: Option<u32>,
    dest: &str,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), Failure> {
    if dest == "-" {
        let out = std::io::stdout().lock();
        match bar {
            Some(b) => api::export(root, name, gen, b.wrap_write(out))?,
            None => api::export(root, name, gen, out)?,
        };
        return Ok(());
    }
    let path = PathBuf::from(dest);
    let tmp = path.with_extension("partial");
    let f =
        std::fs::File::create(&tmp).map_err(|e| usage(format!("create {}: {e}", tmp.display())))?;
    let mut w = std::io::BufWriter::new(f);
    let r = match bar {
        Some(b) => api::export(root, name, gen, b.wrap_write(&mut w)),
        None => api::export(root, name, gen, &mut w),
    };
    let r = r.and_then(|g| {
        std::io::Write::flush(&mut w).map_err(|e| ApiError::Io {
            what: format!("write {}", tmp.display()),
            source: e,
        })?;
        Ok(g)
    });
    match r {
        Ok(_) => std::fs::rename(&tmp, &path)
            .map_err(|e| usage(format!("rename to {}: {e}", path.display()))),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.into())
        }
    }
}

/// Restores `name` through a `stasis restore NAME` child; returns the generation and pid.
fn restore_in_child(
    root: &StateRoot,
    name: &WorkloadName,
    opts: &RestoreOpts,
) -> Result<(u32, i32), ApiError> {
    let exe = std::env::current_exe().map_err(|e| ApiError::Io {
        what: "find own executable".into(),
        source: e,
    })?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(&root.root)
        .args(["restore", "--quiet"]);
    if let Some(g) = opts.generation {
        cmd.args(["--generation", &g.to_string()]);
    }
    if opts.lazy {
        cmd.arg("--lazy");
    }
    let out = cmd
        .arg(name.as_str())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ApiError::Io {
            what: "run stasis restore".into(),
            source: e,
        })?;
    if out.status.success() {
        let st = stasis::store::state::observe(&root.workload(name))?;
        Ok((
            st.state.generation.unwrap_or(0),
            st.state.init.map(|i| i.pid).unwrap_or(0),
        ))
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err.trim().trim_start_matches("stasis: ").to_string();
        Err(ApiError::Monitor {
            code: out.status.code().unwrap_or(stasis::exit::CODE_STASIS_ERROR),
            message: msg,
        })
    }
}

fn describe_restore((generation, pid): &(u32, i32)) -> String {
    format!("restored from generation {generation} (pid {pid})")
}

pub fn restore(root: &StateRoot, a: RestoreArgs) -> Result<i32, Failure> {
    let opts = RestoreOpts {
        generation: a.generation,
        criu: None,
        reason: String::new(),
        lazy: a.lazy,
    };
    if a.all {
        let names: Vec<WorkloadName> = api::list(root)
            .into_iter()
            .filter_map(|(n, o)| {
                o.ok()
                    .filter(|o| o.state.status == Status::Checkpointed)
                    .map(|_| n)
            })
            .collect();
        // Each restore may fork a new monitor, which a multi-threaded process must not do:
        // run every restore as its own `stasis restore NAME` process.
        let json = a.format == Format::Json;
        let results = for_all(
            names,
            a.parallel,
            a.quiet,
            json,
            "restored",
            |n| restore_in_child(root, n, &opts),
            describe_restore,
        );
        if json {
            let v: Vec<RestoreResult> = results
                .iter()
                .map(|(n, r)| RestoreResult::new(n, r))
                .collect();
            print_json(&v)?;
        }
        return summary("restore", &results);
    }
    let imported = a.import.is_some();
    let name = match &a.import {
        Some(src) => {
            let imported = import_from(root, src, a.new_name.clone(), a.quiet)?;
            if let Some(n) = &a.name {
                if *n != imported {
                    return Err(usage(format!(
                        "imported as {imported}, not {n} (use --name)"
                    )));
                }
            }
            imported
        }
        None => a
            .name
            .clone()
            .ok_or_else(|| usage("restore needs a workload name (or --all, or --import)"))?,
    };
    // may fork a monitor: the spinner's thread starts only once that is done
    let r = api::start_restore(root, &name, opts).and_then(|pending| {
        let spinner = Activity::start(format!("restoring {name}"), a.quiet);
        let r = pending.wait();
        spinner.done();
        r
    });
    // An import whose restore fails leaves nothing behind: the archive still holds it all,
    // and a leftover record would only block the next try under the same name.
    if r.is_err() && imported {
        if let Err(e) = api::rm(root, &name, true) {
            eprintln!("stasis: removing the imported {name} after its failed restore: {e}");
        }
    }
    let r = match r? {
        Reply::Restored {
            generation,
            pid,
            diverged,
        } => {
            // Said even with -q: the job's memory and its files disagree.
            if !diverged.is_empty() {
                eprintln!(
                    "stasis: warning: {name}: files changed since generation {generation} was taken: {}",
                    stasis::store::divergence::describe(&diverged)
                );
            }
            (generation, pid)
        }
        other => return Err(usage(format!("unexpected reply {other:?}"))),
    };
    if a.format == Format::Json {
        print_json(&RestoreResult::new(&name, &Ok(r)))?;
    } else if !a.quiet {
        println!("{name}: {}", describe_restore(&r));
    }
    Ok(0)
}

/// Imports an archive from a file or stdin (`-`), with a byte count on a terminal.
fn import_from(
    root: &StateRoot,
    src: &str,
    name: Option<WorkloadName>,
    quiet: bool,
) -> Result<WorkloadName, Failure> {
    let shown = std::path::Path::new(src)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| src.to_string());
    let msg = format!("importing {shown}");
    if src == "-" {
        let bar = progress::bytes(None, msg, quiet);
        let input = std::io::stdin().lock();
        let r = match &bar {
            Some(b) => api::import(root, b.wrap_read(input), "stdin", name),
            None => api::import(root, input, "stdin", name),
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        return Ok(r?);
    }
    let f = std::fs::File::open(src).map_err(|e| usage(format!("{src}: {e}")))?;
    let len = f.metadata().map(|m| m.len()).ok();
    let bar = progress::bytes(len, msg, quiet);
    let input = std::io::BufReader::new(f);
    let r = match &bar {
        Some(b) => api::import(root, b.wrap_read(input), src, name),
        None => api::import(root, input, src, name),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(r?)
}
