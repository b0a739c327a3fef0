//! `logs` and `events`: a workload's output and its history, filtered by time, followed as
//! they grow.

use super::{fmt_time, usage, Failure, Format};
use clap::Args;
use stasis::api;
use stasis::api::logs::{parse_time, rfc3339_ns, LogQuery};
use stasis::store::log::{LogReader, Stream};
use stasis::store::name::WorkloadName;
use stasis::store::sessions::SessionId;
use stasis::store::state::{self, StateRoot, WorkloadDir};
use std::io::Write;
use std::time::Duration;

/// A time flag: RFC 3339, or a duration back from now.
fn time_arg(s: &str) -> Result<u64, String> {
    parse_time(s, api::logs::now_ns())
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing what the workload writes until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (then, with -f, what follows).
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only output written since TIME: RFC 3339 (2026-05-01T12:00:00Z) or a duration back
    /// from now (10m, 2h).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<u64>,
    /// Only output written until TIME (as --since); -f stops there.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<u64>,
    /// Start each line with the time it was written (RFC 3339, UTC, in ns).
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Also print stasis's markers (restores, rolled-back time) on stderr.
    #[arg(long)]
    pub markers: bool,
    /// The log of exec session ID (its output while no client was attached).
    #[arg(long = "exec", value_name = "ID")]
    pub exec: Option<SessionId>,
    /// The workload.
    pub name: WorkloadName,
}

fn existing(root: &StateRoot, name: &WorkloadName) -> Result<WorkloadDir, Failure> {
    let wd = root.workload(name);
    if !wd.exists() {
        return Err(api::ApiError::from(state::StateError::NotFound(name.clone())).into());
    }
    Ok(wd)
}

/// Writes records to stdout and stderr, a timestamp at the start of each line if asked.
struct Printer {
    timestamps: bool,
    /// The next byte of stdout / stderr starts a line.
    at_line_start: [bool; 2],
}

impl Printer {
    /// Writes one record's bytes; Err when the reader is gone (`| head`).
    fn write(&mut self, stream: Stream, time_ns: u64, data: &[u8]) -> std::io::Result<()> {
        let (mut out, i): (Box<dyn Write>, usize) = match stream {
            Stream::Stdout => (Box::new(std::io::stdout().lock()), 0),
            Stream::Stderr => (Box::new(std::io::stderr().lock()), 1),
            Stream::Marker => {
                let text = String::from_utf8_lossy(data);
                let mut e = std::io::stderr().lock();
                if self.timestamps {
                    write!(e, "{} ", rfc3339_ns(time_ns))?;
                }
                return writeln!(e, "--- stasis: {text} ---");
            }
        };
        if !self.timestamps {
            return out.write_all(data);
        }
        let ts = rfc3339_ns(time_ns);
        for piece in data.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start[i] {
                write!(out, "{ts} ")?;
            }
            out.write_all(piece)?;
            self.at_line_start[i] = piece.ends_with(b"\n");
        }
        Ok(())
    }
}

pub fn logs(root: &StateRoot, a: LogsArgs) -> Result<i32, Failure> {
    let wd = existing(root, &a.name)?;
    let path = match &a.exec {
        Some(id) => stasis::store::sessions::log_path(&wd, id),
        None => wd.log_path(),
    };
    let q = LogQuery {
        since_ns: a.since,
        until_ns: a.until,
        tail: a.tail,
        markers: a.markers,
    };
    let bad = |e: std::io::Error| usage(format!("{}: {e}", path.display()));
    let (mut reader, mut skip) = loop {
        let start = q.start(&path);
        match start.and_then(|s| Ok((LogReader::open(&path, s.offset)?, s))) {
            // a start in a segment rotated away meanwhile begins at the oldest record left
            Ok((r, s)) => {
                let skip = if r.offset() == s.offset { s.skip } else { 0 };
                break (r, skip);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && a.follow => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(bad(e)),
        }
    };
    let mut p = Printer {
        timestamps: a.timestamps,
        at_line_start: [true, true],
    };
    // Prints what is there; true when --until is passed and nothing more may be printed.
    let mut drain = |reader: &mut LogReader, p: &mut Printer| -> Result<(bool, bool), Failure> {
        let mut wrote = false;
        while let Some(rec) = reader.next_record().map_err(bad)? {
            wrote = true;
            if q.past_until(rec.time_ns) {
                return Ok((wrote, true));
            }
            let from = std::mem::take(&mut skip).min(rec.data.len());
            if !q.keep(rec.stream, rec.time_ns) {
                continue;
            }
            if p.write(rec.stream, rec.time_ns, &rec.data[from..]).is_err() {
                // the reader went away (`| head`)
                return Ok((wrote, true));
            }
        }
        let _ = std::io::stdout().lock().flush();
        Ok((wrote, false))
    };
    loop {
        let (wrote, end) = drain(&mut reader, &mut p)?;
        if end || !a.follow {
            return Ok(0);
        }
        if !wrote {
            if q.past_until(api::logs::now_ns()) {
                return Ok(0);
            }
            // Follow until the workload (or session) is over and nothing more can come.
            let done = match &a.exec {
                Some(id) => stasis::store::sessions::load(&wd, id)
                    .is_none_or(|r| r.status == stasis::store::sessions::SessionStatus::Exited),
                None => state::observe(&wd)
                    .map(|o| o.state.status.is_final() && !o.monitor_alive)
                    .unwrap_or(true),
            };
            if done {
                drain(&mut reader, &mut p)?;
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing events as they happen, until the workload has ended (with --format
    /// json: one JSON object a line).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events since TIME: RFC 3339 (2026-05-01T12:00:00Z) or a duration back from now
    /// (10m, 2h).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<u64>,
    /// Output format: a table, or JSON (an array; JSON lines with --follow).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The workload.
    pub name: WorkloadName,
}

pub fn events(root: &StateRoot, a: EventsArgs) -> Result<i32, Failure> {
    let wd = existing(root, &a.name)?;
    let since_ms = a.since.map(|ns| ns / 1_000_000).unwrap_or(0);
    let (ev, mut at) = stasis::store::events::read_from(&wd, 0);
    let ev: Vec<_> = ev.into_iter().filter(|e| e.at >= since_ms).collect();
    if a.format == Format::Json && !a.follow {
        println!(
            "{}",
            serde_json::to_string_pretty(&ev).map_err(|e| usage(e.to_string()))?
        );
        return Ok(0);
    }
    // false once the reader has gone away (`| head`): that ends a follow quietly
    let print = |ev: &stasis::store::events::Event| -> bool {
        let line = if a.format == Format::Json {
            serde_json::to_string(ev).unwrap_or_default()
        } else {
            let ms = ev.at % 1000;
            let g = ev
                .generation
                .map(|g| format!(" gen={g}"))
                .unwrap_or_default();
            let c = ev.code.map(|c| format!(" code={c}")).unwrap_or_default();
            format!(
                "{}.{ms:03}  {:<20}{g}{c}  {}",
                fmt_time(ev.at),
                ev.kind,
                ev.reason
            )
        };
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}").and_then(|_| o.flush()).is_ok()
    };
    if !ev.iter().all(&print) {
        return Ok(0);
    }
    if !a.follow {
        return Ok(0);
    }
    loop {
        let (new, next) = stasis::store::events::read_from(&wd, at);
        at = next;
        if !new.iter().filter(|e| e.at >= since_ms).all(&print) {
            return Ok(0);
        }
        if new.is_empty() {
            let done = state::observe(&wd)
                .map(|o| o.state.status.is_final() && !o.monitor_alive)
                .unwrap_or(true);
            if done {
                // the last events may have landed since the read above
                let (new, _) = stasis::store::events::read_from(&wd, at);
                let _ = new.iter().filter(|e| e.at >= since_ms).all(&print);
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
