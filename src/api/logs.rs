//! Reading a workload's log by time and by lines: `--since`/`--until` as RFC 3339 times or as
//! durations back from now, `--tail N` without reading the whole log, and record times in
//! RFC 3339 for `--timestamps`. Times are the monitor's, from each record's header.

use crate::spec::Dur;
use crate::store::log::Stream;
use crate::store::log_index::{self, Header, Start};
use std::path::Path;

/// Which records `logs` prints and from where it starts.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only records written at or after this time (ns since the epoch).
    pub since_ns: Option<u64>,
    /// Only records written at or before this time.
    pub until_ns: Option<u64>,
    /// Only the last N lines (of what the other filters let through).
    pub tail: Option<usize>,
    /// stasis's own markers too.
    pub markers: bool,
}

impl LogQuery {
    /// Whether a record of `stream` written at `time_ns` is printed.
    pub fn keep(&self, stream: Stream, time_ns: u64) -> bool {
        (self.markers || stream != Stream::Marker)
            && self.since_ns.is_none_or(|s| time_ns >= s)
            && self.until_ns.is_none_or(|u| time_ns <= u)
    }

    /// Whether a record written at `time_ns` is past `--until` (nothing after it can be
    /// printed: records are appended in time order).
    pub fn past_until(&self, time_ns: u64) -> bool {
        self.until_ns.is_some_and(|u| time_ns > u)
    }

    /// Where a reader of the log at `path` starts: before the last `tail` lines, or in the
    /// segment that holds `since`, or at the beginning.
    pub fn start(&self, path: &Path) -> std::io::Result<Start> {
        if let Some(n) = self.tail {
            return log_index::tail(path, n, |h: &Header| self.keep(h.stream, h.time_ns));
        }
        if let Some(s) = self.since_ns {
            return log_index::since(path, s);
        }
        Ok(Start::default())
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Parses a time given on the command line: RFC 3339 (`2026-05-01T12:00:00Z`, with a
/// fraction and an offset such as `+02:00` if wanted; a space may stand for the `T`; no
/// offset means UTC; a date alone is its midnight UTC), or a duration back from `now_ns`
/// (`90s`, `10m`, `2h`, `1d`; a bare number is seconds).
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, String> {
    let t = s.trim();
    let b = t.as_bytes();
    if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
        return parse_rfc3339(t).ok_or_else(|| {
            format!("{s:?} is not a time (use RFC 3339, as 2026-05-01T12:00:00Z, or 10m for ten minutes ago)")
        });
    }
    let d = Dur::parse(t)?;
    Ok(now_ns.saturating_sub(d.0.as_nanos() as u64))
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn parse_rfc3339(t: &str) -> Option<u64> {
    let (date, rest) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut dp = date.split('-');
    let (y, mo, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, mo, d) * 86400;
    let mut nanos = 0i64;
    if let Some(rest) = rest {
        // the offset: Z, or +HH:MM / -HH:MM after the time
        let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = rest.rfind(['+', '-']) {
            let (c, o) = rest.split_at(i);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            (c, sign * (num(oh)? * 3600 + num(om)? * 60))
        } else {
            (rest, 0)
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (clock, None),
        };
        let mut cp = hms.split(':');
        let h = num(cp.next()?)?;
        let mi = num(cp.next()?)?;
        let s = match cp.next() {
            Some(x) => num(x)?,
            None => 0,
        };
        if cp.next().is_some() || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 9 {
                return None;
            }
            nanos = num(f)? * 10i64.pow(9 - f.len() as u32);
        }
        secs += h * 3600 + mi * 60 + s - offset;
    }
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(nanos as u64)
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC with nanoseconds, as docker's
/// `logs --timestamps` does: `2026-05-01T12:00:00.123456789Z`.
pub fn rfc3339_ns(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let frac = ns % 1_000_000_000;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rfc3339_round_trips() {
        for ns in [
            0,
            86_400 * S,
            1_795_000_000 * S + 123_456_789,
            951_782_400 * S,
        ] {
            assert_eq!(parse_time(&rfc3339_ns(ns), 0), Ok(ns), "{}", rfc3339_ns(ns));
        }
        assert_eq!(rfc3339_ns(86_400 * S), "1970-01-02T00:00:00.000000000Z");
        // 2000-02-29, a leap day
        assert_eq!(
            rfc3339_ns(951_782_400 * S),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn times_take_offsets_fractions_and_dates() {
        let base = parse_time("2026-05-01T12:00:00Z", 0).unwrap();
        assert_eq!(parse_time("2026-05-01T14:00:00+02:00", 0), Ok(base));
        assert_eq!(parse_time("2026-05-01T07:30:00-04:30", 0), Ok(base));
        assert_eq!(parse_time("2026-05-01 12:00:00", 0), Ok(base));
        assert_eq!(parse_time("2026-05-01T12:00Z", 0), Ok(base));
        assert_eq!(parse_time("2026-05-01T12:00:00.5Z", 0), Ok(base + S / 2));
        assert_eq!(parse_time("2026-05-01", 0), Ok(base - 12 * 3600 * S));
        for bad in [
            "2026-13-01",
            "2026-05-01T25:00:00Z",
            "2026-05-01Tnoon",
            "yesterday",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = 10_000 * S;
        assert_eq!(parse_time("10m", now), Ok(now - 600 * S));
        assert_eq!(parse_time("2h", now), Ok(now - 7200 * S));
        assert_eq!(parse_time("1d", now), Ok(0));
    }

    #[test]
    fn queries_filter_by_stream_and_time() {
        let q = LogQuery {
            since_ns: Some(10),
            until_ns: Some(20),
            ..Default::default()
        };
        assert!(q.keep(Stream::Stdout, 10) && q.keep(Stream::Stderr, 20));
        assert!(!q.keep(Stream::Stdout, 9) && !q.keep(Stream::Stdout, 21));
        assert!(!q.keep(Stream::Marker, 15));
        assert!(q.past_until(21) && !q.past_until(20));
    }
}
