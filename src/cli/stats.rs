//! `stats`: CPU, memory, tasks and block IO of running workloads, refreshed live on a
//! terminal like `podman stats`.

use super::{usage, Failure, Format};
use clap::Args;
use stasis::api::stats::{host_memory, Stats};
use stasis::api::{self, ApiError};
use stasis::spec::Dur;
use stasis::store::name::WorkloadName;
use stasis::store::state::{StateRoot, Status};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print one sample and exit (what happens anyway when stdout is not a terminal, or
    /// with --format json).
    #[arg(long = "no-stream")]
    pub no_stream: bool,
    /// How often the live view refreshes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = |s: &str| Dur::parse(s))]
    pub interval: Dur,
    /// Output format: a table, or one JSON array of every workload's figures.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The workloads (every running one by default).
    #[arg(value_name = "NAME")]
    pub names: Vec<WorkloadName>,
}

/// Sizes as podman prints them: 1.5MiB, 12kB with binary units.
fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn running(root: &StateRoot) -> Vec<WorkloadName> {
    api::list(root)
        .into_iter()
        .filter_map(|(n, o)| {
            o.ok()
                .filter(|o| {
                    o.state.status == Status::Running && o.state.init.is_some_and(|i| i.alive())
                })
                .map(|_| n)
        })
        .collect()
}

/// One sample of each workload. Named workloads must run (`strict`); in the live view a
/// workload that ends drops out.
fn sample(
    root: &StateRoot,
    names: &[WorkloadName],
    prev: &HashMap<WorkloadName, Stats>,
    strict: bool,
) -> Result<Vec<Stats>, Failure> {
    let mut v = Vec::new();
    for n in names {
        match api::stats::stats(root, n, prev.get(n)) {
            Ok(s) => v.push(s),
            Err(ApiError::NotRunning(_)) if !strict => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(v)
}

fn table(rows: &[Stats]) -> String {
    let host = host_memory();
    let mut s = format!(
        "{:<24} {:>7} {:>21} {:>7} {:>6} {:>21}\n",
        "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS", "BLOCK I/O"
    );
    for r in rows {
        let u = &r.usage;
        let limit = u
            .memory_limit
            .or(host)
            .map(size)
            .unwrap_or_else(|| "-".into());
        let io = match (u.io_read_bytes, u.io_write_bytes) {
            (Some(rd), Some(wr)) => format!("{} / {}", size(rd), size(wr)),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{:<24} {:>6.2}% {:>21} {:>6.2}% {:>6} {:>21}\n",
            r.name.as_str(),
            r.cpu_percent,
            format!("{} / {limit}", size(u.memory_bytes)),
            r.memory_percent,
            u.pids,
            io
        ));
    }
    s
}

pub fn stats(root: &StateRoot, a: StatsArgs) -> Result<i32, Failure> {
    let named = !a.names.is_empty();
    let live = !a.no_stream && a.format == Format::Table && std::io::stdout().is_terminal();
    let mut prev: HashMap<WorkloadName, Stats> = HashMap::new();
    loop {
        let names = if named {
            a.names.clone()
        } else {
            running(root)
        };
        let rows = sample(root, &names, &prev, named && !live)?;
        if a.format == Format::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).map_err(|e| usage(e.to_string()))?
            );
            return Ok(0);
        }
        let text = table(&rows);
        if !live {
            print!("{text}");
            return Ok(0);
        }
        let mut o = std::io::stdout().lock();
        // home and clear, then the table: the screen holds the newest sample only
        if write!(o, "\x1b[H\x1b[2J{text}")
            .and_then(|_| o.flush())
            .is_err()
        {
            return Ok(0);
        }
        drop(o);
        prev = rows.into_iter().map(|s| (s.name.clone(), s)).collect();
        std::thread::sleep(a.interval.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_podman() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(1536), "1.5KiB");
        assert_eq!(size(64 << 20), "64.0MiB");
    }
}
