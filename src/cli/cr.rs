//! `checkpoint` and `restore`, one workload or all of them.

use super::{usage, Failure};
use clap::Args;
use stasis::api::{self, ApiError};
use stasis::protocol::{CheckpointOpts, Reply, RestoreOpts};
use stasis::store::name::WorkloadName;
use stasis::store::state::{StateRoot, Status};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    pub name: Option<WorkloadName>,
}

/// CRIU options for one checkpoint, on top of the spec's `criu:` (see `stasis help` and
/// config/job.yaml for what each does and its default).
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
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub name: Option<WorkloadName>,
}

/// Shows elapsed time on a terminal while a long operation runs.
struct Progress {
    done: Arc<AtomicBool>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(what: String, quiet: bool) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let t = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let d = done.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut shown = false;
                while !d.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if t0.elapsed() > Duration::from_millis(500) {
                        eprint!("\r{what}... {:.1}s", t0.elapsed().as_secs_f64());
                        shown = true;
                    }
                }
                if shown {
                    eprint!("\r\x1b[K");
                }
            })
        });
        Progress { done, t }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f` over `names` with at most `parallel` at a time; prints one line per name and a
/// progress count on a terminal; returns the names that failed.
fn for_all(
    names: Vec<WorkloadName>,
    parallel: usize,
    quiet: bool,
    verb: &str,
    f: impl Fn(&WorkloadName) -> Result<String, ApiError> + Sync,
) -> Vec<(WorkloadName, String)> {
    let total = names.len();
    let queue = Mutex::new(names.into_iter());
    let failed = Mutex::new(Vec::new());
    let done = AtomicUsize::new(0);
    let tty = !quiet && std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some(n) = next else { return };
                let r = f(&n);
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                match r {
                    Ok(line) => {
                        if !quiet {
                            println!("{n}: {line}");
                        }
                    }
                    Err(e) => {
                        println!("{n}: FAILED: {e}");
                        if let Ok(mut f) = failed.lock() {
                            f.push((n.clone(), e.to_string()));
                        }
                    }
                }
                if tty {
                    eprint!("\r{verb} {k}/{total}\x1b[K");
                    if k == total {
                        eprintln!();
                    }
                }
            });
        }
    });
    failed.into_inner().unwrap_or_default()
}

fn summary(verb: &str, failed: Vec<(WorkloadName, String)>) -> Result<i32, Failure> {
    if failed.is_empty() {
        return Ok(0);
    }
    let names: Vec<String> = failed.into_iter().map(|(n, _)| n.to_string()).collect();
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
        let failed = for_all(names, a.parallel, a.quiet, "checkpointed", |n| {
            api::checkpoint(root, n, opts.clone()).map(|r| describe_checkpoint(&r))
        });
        // Maintenance path: make every new generation durable before the host goes down.
        nix::unistd::sync();
        return summary("checkpoint", failed);
    }
    let name = a
        .name
        .clone()
        .ok_or_else(|| usage("checkpoint needs a workload name (or --all)"))?;
    let r = {
        let _p = Progress::start(format!("checkpointing {name}"), a.quiet);
        api::checkpoint(root, &name, opts)?
    };
    let gen = match &r {
        Reply::Checkpointed { generation, .. } => Some(*generation),
        _ => None,
    };
    if let Some(dest) = &a.export {
        export_to(root, &name, gen, dest)?;
    }
    if !a.quiet && a.export.as_deref() != Some("-") {
        println!("{}", describe_checkpoint(&r));
    }
    Ok(0)
}

fn export_to(
    root: &StateRoot,
    name: &WorkloadName,
    gen: Option<u32>,
    dest: &str,
) -> Result<(), Failure> {
    if dest == "-" {
        let out = std::io::stdout().lock();
        api::export(root, name, gen, out)?;
        return Ok(());
    }
    let path = PathBuf::from(dest);
    let tmp = path.with_extension("partial");
    let f =
        std::fs::File::create(&tmp).map_err(|e| usage(format!("create {}: {e}", tmp.display())))?;
    let mut w = std::io::BufWriter::new(f);
    let r = api::export(root, name, gen, &mut w);
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

fn restore_in_child(
    root: &StateRoot,
    name: &WorkloadName,
    opts: &RestoreOpts,
) -> Result<String, ApiError> {
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
        Ok(format!(
            "restored from generation {} (pid {})",
            st.state.generation.unwrap_or(0),
            st.state.init.map(|i| i.pid).unwrap_or(0)
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

fn describe_restore(r: &Reply) -> String {
    match r {
        Reply::Restored { generation, pid } => {
            format!("restored from generation {generation} (pid {pid})")
        }
        other => format!("{other:?}"),
    }
}

pub fn restore(root: &StateRoot, a: RestoreArgs) -> Result<i32, Failure> {
    let opts = RestoreOpts {
        generation: a.generation,
        criu: None,
        reason: String::new(),
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
        let failed = for_all(names, a.parallel, a.quiet, "restored", |n| {
            restore_in_child(root, n, &opts)
        });
        return summary("restore", failed);
    }
    let name = match &a.import {
        Some(src) => {
            let imported = if src == "-" {
                api::import(root, std::io::stdin().lock(), "stdin", a.new_name.clone())?
            } else {
                let f = std::fs::File::open(src).map_err(|e| usage(format!("{src}: {e}")))?;
                api::import(root, std::io::BufReader::new(f), src, a.new_name.clone())?
            };
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
    let r = {
        let _p = Progress::start(format!("restoring {name}"), a.quiet);
        api::restore(root, &name, opts)?
    };
    if !a.quiet {
        println!("{name}: {}", describe_restore(&r));
    }
    Ok(0)
}
