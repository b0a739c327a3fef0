//! The workload spec: what to run and how, as a YAML file (`stasis run -f job.yaml`) whose keys
//! are named after the long flags of `stasis run`, so every flag can live in a file and every
//! file can be overridden by a flag.
//!
//! Parsing rejects unknown keys with their name and line, because a misspelt key that is
//! silently ignored (`memroy: 1g`) is a limit the user believes in and does not have.

use crate::exit::parse_signal;
use crate::store::name::WorkloadName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A spec that cannot be used, with the reason in one line.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("cannot read spec {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid {field}: {msg}")]
    Invalid { field: &'static str, msg: String },
}

mod files;
pub use files::{OnDivergence, Snapshot};

fn invalid(field: &'static str, msg: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        msg: msg.into(),
    }
}

/// Network isolation of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Share the host's network namespace.
    #[default]
    Host,
    /// A new network namespace with only `lo`, up.
    None,
}

/// What the monitor does when the host shuts it down (SIGTERM to the monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownAction {
    /// Stop the workload (stop signal, then SIGKILL after the stop timeout).
    #[default]
    Stop,
    /// Checkpoint the workload, then stop; `stasis restore --all` brings it back.
    Checkpoint,
}

/// A duration written as `500ms`, `10s`, `10m`, `1h` (or a bare number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `500ms`, `10s`, `10m`, `1h`, `2d` or a bare number of seconds.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (use 500ms, 10s, 10m or 1h)"))?;
        let mult = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            u => {
                return Err(format!(
                    "unknown unit {u:?} in duration {s:?} (use ms, s, m or h)"
                ))
            }
        };
        let secs = n * mult;
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("{s:?} is not a duration"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n >= 0.0 && n.is_finite() => Ok(Dur(Duration::from_secs_f64(n))),
            Raw::N(n) => Err(serde::de::Error::custom(format!("{n} is not a duration"))),
            Raw::S(s) => Dur::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A size in bytes written as `512m`, `1g`, `64MiB` or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `1048576`, `512k`, `64m`, `64MiB`, `1g`, `1G` (powers of 1024).
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (use 512m or 1g)"))?;
        let unit = unit.trim().to_ascii_lowercase();
        let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(format!("unknown unit in size {s:?} (use k, m or g)")),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `checkpoint:` in the spec: periodic checkpoints and retention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPolicy {
    /// Take a checkpoint this often (the monitor does it; the job keeps running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Dur>,
    /// Keep this many generations; older ones are pruned after each new checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Periodic checkpoints leave the job running (the default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_running: Option<bool>,
}

/// Which process exits count for `on_exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExitWhen {
    /// Only a crash: a non-zero code, a signal or an OOM kill.
    #[default]
    Failure,
    /// Every exit not asked for by the user.
    Always,
}

/// What the monitor does when the workload ends without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExitPolicy {
    /// Leave it ended.
    #[default]
    None,
    /// Start it again from zero.
    Restart,
    /// Restore it from its newest good checkpoint (then older ones, then a cold start).
    Restore,
}

/// Exponential back-off between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "Backoff::default_initial")]
    pub initial: Dur,
    #[serde(default = "Backoff::default_max")]
    pub max: Dur,
}

impl Backoff {
    fn default_initial() -> Dur {
        Dur(Duration::from_secs(1))
    }
    fn default_max() -> Dur {
        Dur(Duration::from_secs(60))
    }
    /// The delay before attempt `n` (1-based): initial, 2×initial, 4×initial… capped at max.
    pub fn delay(&self, attempt: u32) -> Duration {
        let f = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let d = self.initial.0.as_secs_f64() * f;
        Duration::from_secs_f64(d.min(self.max.0.as_secs_f64()))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Self::default_initial(),
            max: Self::default_max(),
        }
    }
}

/// `on_exit:` in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OnExit {
    #[serde(default)]
    pub policy: ExitPolicy,
    #[serde(default)]
    pub when: ExitWhen,
    /// Attempts allowed in a row before the workload ends `failed` (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Whether a restore policy may fall back to a cold start when no generation restores
    /// (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<bool>,
    #[serde(default)]
    pub backoff: Backoff,
}

impl OnExit {
    /// Attempts allowed in a row before giving up.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(5)
    }
}

/// A workload spec. Every field is optional in the file; defaults are documented per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Unique name under the state root (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<WorkloadName>,
    /// The argv of the workload; never run through a shell.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment (`-e K=V`), on top of the clean base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of the caller's variables passed through (`--env-pass K`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_pass: Vec<String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `UID[:GID]` or a user name from the container's /etc/passwd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Supplementary groups added to the user's own (`--group-add`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub network: Network,
    /// A root filesystem: adds a mount namespace, pivot_root, private /proc, /dev and /tmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// Bind mounts `SRC:DST[:ro]`. Without a rootfs, DST is a host path that must exist.
    #[serde(default, alias = "volume", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Memory limit (`512m`, `1g`); the workload is OOM-killed above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Limit on the number of tasks in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU limit in cores (`0.5`, `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Give the workload a pty instead of pipes.
    #[serde(default)]
    pub tty: bool,
    /// Keep the workload's stdin open for an attached client.
    #[serde(default)]
    pub stdin: bool,
    /// rlimits, `nofile=1024[:2048]`.
    #[serde(default, alias = "ulimit", skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<String>,
    /// File mode creation mask, octal (default 0022).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<String>,
    /// Capabilities added to the default set (`NET_ADMIN`, or `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set (`ALL` removes every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Set no_new_privs so setuid binaries cannot gain privileges (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privs: Option<bool>,
    /// Signal `stop` sends first (default TERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long `stop` waits before SIGKILL (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Dur>,
    /// Remove the workload once it has exited.
    #[serde(default)]
    pub rm: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub checkpoint: CheckpointPolicy,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_exit: OnExit,
    /// What a host shutdown (SIGTERM to the monitor) does.
    #[serde(default)]
    pub on_shutdown: ShutdownAction,
    /// Log rotation: `{max_size: 64m, max_files: 4}` by default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub log: crate::store::log::Rotation,
    /// CRIU options for this workload's checkpoints (see `crate::criu::CriuOptions`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub criu: crate::criu::CriuOptions,
    /// What a restore does when files the job writes moved on since the checkpoint.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_divergence: OnDivergence,
    /// Files copied with each generation and put back by its restore.
    #[serde(default, skip_serializing_if = "is_default")]
    pub snapshot: Snapshot,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// Flags of `stasis run` that override a spec file; `None`/empty means "not given".
#[derive(Debug, Clone, Default)]
pub struct SpecOverrides {
    pub name: Option<WorkloadName>,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub env_pass: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub group_add: Vec<u32>,
    pub hostname: Option<String>,
    pub network: Option<Network>,
    pub rootfs: Option<PathBuf>,
    pub volumes: Vec<String>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub tty: Option<bool>,
    pub stdin: Option<bool>,
    pub ulimits: Vec<String>,
    pub umask: Option<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privs: Option<bool>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<Dur>,
    pub rm: Option<bool>,
    pub checkpoint_every: Option<Dur>,
    pub keep: Option<u32>,
    pub on_exit_policy: Option<ExitPolicy>,
    pub max_attempts: Option<u32>,
    pub on_shutdown: Option<ShutdownAction>,
    pub log_max_size: Option<ByteSize>,
    pub log_max_files: Option<u32>,
    pub on_divergence: Option<OnDivergence>,
    /// `--snapshot` flags: `rootfs`, or paths (replace the file's list).
    pub snapshot: Vec<String>,
}

impl Spec {
    /// Parses a YAML spec; `origin` names the file in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Spec, SpecError> {
        // An empty file is an empty mapping, not an error: every key has a default.
        if text.trim().is_empty() {
            return Ok(Spec::default());
        }
        serde_yaml::from_str(text).map_err(|e| SpecError::Parse {
            path: origin.to_string(),
            msg: one_line(&e.to_string()),
        })
    }

    /// Reads and parses a YAML spec file.
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Spec::from_yaml(&text, &path.display().to_string())
    }

    /// Applies flags given on the command line: scalars replace the file's value, `-e` keys
    /// replace the file's keys, list flags add to the file's lists, a command replaces it.
    pub fn apply(&mut self, o: SpecOverrides) -> Result<(), SpecError> {
        if o.name.is_some() {
            self.name = o.name;
        }
        if !o.command.is_empty() {
            self.command = o.command;
        }
        for kv in o.env {
            let (k, v) = parse_env_kv(&kv)?;
            self.env.insert(k, v);
        }
        self.env_pass.extend(o.env_pass);
        macro_rules! set {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        set!(
            workdir,
            user,
            hostname,
            rootfs,
            memory,
            pids,
            cpus,
            umask,
            no_new_privs,
            stop_signal,
            stop_timeout
        );
        self.group_add.extend(o.group_add);
        self.volumes.extend(o.volumes);
        self.ulimits.extend(o.ulimits);
        self.cap_add.extend(o.cap_add);
        self.cap_drop.extend(o.cap_drop);
        if let Some(n) = o.network {
            self.network = n;
        }
        if let Some(t) = o.tty {
            self.tty = t;
        }
        if let Some(i) = o.stdin {
            self.stdin = i;
        }
        if let Some(r) = o.rm {
            self.rm = r;
        }
        if o.checkpoint_every.is_some() {
            self.checkpoint.every = o.checkpoint_every;
        }
        if o.keep.is_some() {
            self.checkpoint.keep = o.keep;
        }
        if let Some(p) = o.on_exit_policy {
            self.on_exit.policy = p;
        }
        if o.max_attempts.is_some() {
            self.on_exit.max_attempts = o.max_attempts;
        }
        if let Some(s) = o.on_shutdown {
            self.on_shutdown = s;
        }
        if let Some(s) = o.log_max_size {
            self.log.max_size = s;
        }
        if let Some(n) = o.log_max_files {
            self.log.max_files = n;
        }
        if let Some(d) = o.on_divergence {
            self.on_divergence = d;
        }
        if !o.snapshot.is_empty() {
            self.snapshot = Snapshot::from_flags(&o.snapshot)?;
        }
        Ok(())
    }

    /// Puts equivalent specs in one form: `rootfs: /` is the host's tree, which every
    /// container without a rootfs already has (with its own /proc and mounts).
    pub fn normalize(&mut self) {
        if self
            .rootfs
            .as_deref()
            .is_some_and(|r| r.components().all(|c| c == std::path::Component::RootDir))
        {
            self.rootfs = None;
        }
    }

    /// Checks everything that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.command.is_empty() {
            return Err(invalid("command", "the command is empty"));
        }
        if self.command[0].is_empty() {
            return Err(invalid("command", "the program name is empty"));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(invalid("command", "an argument contains a NUL byte"));
        }
        for (k, v) in &self.env {
            validate_env_key(k)?;
            if v.contains('\0') {
                return Err(invalid(
                    "env",
                    format!("the value of {k} contains a NUL byte"),
                ));
            }
        }
        for k in &self.env_pass {
            validate_env_key(k)?;
        }
        check_args_env(&self.command, &self.env)?;
        self.snapshot.validate(self.rootfs.as_deref())?;
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(invalid("workdir", format!("{w:?} is not an absolute path")));
            }
        }
        if let Some(u) = &self.user {
            parse_user(u)?;
        }
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        for v in &self.volumes {
            Volume::parse(v)?;
        }
        if self.pids == Some(0) {
            return Err(invalid("pids", "the limit must be at least 1"));
        }
        if let Some(c) = self.cpus {
            if !(c > 0.0 && c.is_finite()) {
                return Err(invalid(
                    "cpus",
                    format!("{c} is not a positive number of cores"),
                ));
            }
        }
        if let Some(m) = self.memory {
            if m.0 < 1 << 20 {
                return Err(invalid("memory", "the limit must be at least 1m"));
            }
        }
        for u in &self.ulimits {
            Ulimit::parse(u)?;
        }
        if let Some(m) = &self.umask {
            parse_umask(m)?;
        }
        for c in self.cap_add.iter().chain(&self.cap_drop) {
            parse_cap(c)?;
        }
        if let Some(s) = &self.stop_signal {
            parse_signal(s)
                .ok_or_else(|| invalid("stop_signal", format!("unknown signal {s:?}")))?;
        }
        if let Some(k) = self.checkpoint.keep {
            if k == 0 {
                return Err(invalid("checkpoint.keep", "keep must be at least 1"));
            }
        }
        if let Some(e) = self.checkpoint.every {
            if e.0 < Duration::from_millis(100) {
                return Err(invalid(
                    "checkpoint.every",
                    "the period must be at least 100ms",
                ));
            }
        }
        if self.on_exit.max_attempts == Some(0) {
            return Err(invalid("on_exit.max_attempts", "must be at least 1"));
        }
        if self.on_exit.backoff.initial > self.on_exit.backoff.max {
            return Err(invalid("on_exit.backoff", "initial is longer than max"));
        }
        self.criu.validate().map_err(|e| invalid("criu", e))?;
        if self.log.max_size.0 < 4096 {
            return Err(invalid("log.max_size", "the limit must be at least 4k"));
        }
        Ok(())
    }

    /// The signal `stop` sends first.
    pub fn stop_signal(&self) -> i32 {
        self.stop_signal
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM)
    }

    /// How long `stop` waits before SIGKILL.
    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10))
    }

    /// Whether no_new_privs is set for the workload.
    pub fn no_new_privs(&self) -> bool {
        self.no_new_privs.unwrap_or(true)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn validate_env_key(k: &str) -> Result<(), SpecError> {
    if k.is_empty() || k.contains('=') || k.contains('\0') {
        return Err(invalid("env", format!("{k:?} is not a variable name")));
    }
    Ok(())
}

fn validate_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            format!("{h:?} is not a valid host name"),
        ))
    }
}

/// What one process's arguments and environment may take together, as they travel: a spec
/// goes to its monitor, and an exec request to init, in one message of at most
/// [`crate::protocol::MAX_MSG`] bytes of JSON. The kernel would take more (a quarter of the
/// stack limit), but 128 KiB leaves room for the rest of the message and for what stasis adds
/// (PATH, HOME, TERM, ...), and is far above any real job's needs.
pub const MAX_ARGS_ENV: usize = 128 * 1024;

/// Checks that `argv` and `env` fit in [`MAX_ARGS_ENV`] (counted as JSON strings), in time
/// linear in their size; the error names the sizes and the limit.
pub fn check_args_env<'a>(
    argv: &[String],
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), SpecError> {
    let json_len = |s: &str| serde_json::to_string(s).map_or(s.len() * 6 + 2, |j| j.len());
    let args: usize = argv.iter().map(|a| json_len(a) + 1).sum();
    let (mut vars, mut bytes) = (0usize, 0usize);
    for (k, v) in env {
        vars += 1;
        bytes += json_len(k) + json_len(v) + 2;
    }
    if args + bytes > MAX_ARGS_ENV {
        return Err(invalid(
            if bytes >= args { "env" } else { "command" },
            format!(
                "the command ({} arguments, {args} bytes) and its environment ({vars} variables, {bytes} bytes) take more than the {} KiB a job may have",
                argv.len(),
                MAX_ARGS_ENV / 1024
            ),
        ));
    }
    Ok(())
}

/// Splits `K=V` (a `-e` flag).
pub fn parse_env_kv(kv: &str) -> Result<(String, String), SpecError> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| invalid("env", format!("{kv:?} is not K=V")))?;
    validate_env_key(k)?;
    Ok((k.to_string(), v.to_string()))
}

/// A user as written in a spec: numeric `UID[:GID]` or a name with an optional group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id { uid: u32, gid: Option<u32> },
    Name { name: String, group: Option<String> },
}

/// Parses `--user`: `1000`, `1000:1000`, `alice`, `alice:staff`.
pub fn parse_user(s: &str) -> Result<UserRef, SpecError> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if u.is_empty() || g == Some("") {
        return Err(invalid(
            "user",
            format!("{s:?} is not UID[:GID] or NAME[:GROUP]"),
        ));
    }
    match u.parse::<u32>() {
        Ok(uid) => {
            let gid = match g {
                Some(g) => Some(g.parse::<u32>().map_err(|_| {
                    invalid("user", format!("group {g:?} in {s:?} is not a number"))
                })?),
                None => None,
            };
            Ok(UserRef::Id { uid, gid })
        }
        Err(_) => Ok(UserRef::Name {
            name: u.to_string(),
            group: g.map(str::to_string),
        }),
    }
}

/// A bind mount into the container's rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

impl Volume {
    /// Parses `SRC:DST[:ro|rw]`; both paths absolute.
    pub fn parse(s: &str) -> Result<Volume, SpecError> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            _ => return Err(invalid("volumes", format!("{s:?} is not SRC:DST[:ro]"))),
        };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(invalid(
                "volumes",
                format!("{s:?}: both paths must be absolute"),
            ));
        }
        if dst == "/"
            || Path::new(dst)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(invalid(
                "volumes",
                format!("{s:?}: destination {dst:?} is not allowed"),
            ));
        }
        Ok(Volume {
            src: src.into(),
            dst: dst.into(),
            readonly: ro,
        })
    }
}

/// One rlimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

const RLIMITS: &[(&str, u32)] = &[
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

impl Ulimit {
    /// Parses `nofile=1024` or `nofile=1024:2048` (`unlimited` or `-1` for no limit).
    pub fn parse(s: &str) -> Result<Ulimit, SpecError> {
        let bad = |why: String| invalid("ulimits", why);
        let (name, vals) = s
            .split_once('=')
            .ok_or_else(|| bad(format!("{s:?} is not NAME=SOFT[:HARD]")))?;
        let resource = RLIMITS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r as i32)
            .ok_or_else(|| bad(format!("unknown resource {name:?}")))?;
        let num = |v: &str| -> Result<u64, SpecError> {
            match v {
                "unlimited" | "-1" => Ok(libc::RLIM_INFINITY),
                _ => v
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{v:?} in {s:?} is not a number"))),
            }
        };
        let (soft, hard) = match vals.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(vals)?, num(vals)?),
        };
        if soft > hard {
            return Err(bad(format!(
                "{s:?}: the soft limit is above the hard limit"
            )));
        }
        Ok(Ulimit {
            resource,
            soft,
            hard,
        })
    }
}

/// Parses an octal umask (`022`, `0027`).
pub fn parse_umask(s: &str) -> Result<u32, SpecError> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| invalid("umask", format!("{s:?} is not an octal mask")))
}

/// Parses a capability name (`NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`); `ALL` yields `None`.
pub fn parse_cap(s: &str) -> Result<Option<caps::Capability>, SpecError> {
    let up = s.to_ascii_uppercase();
    if up == "ALL" {
        return Ok(None);
    }
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    full.parse::<caps::Capability>()
        .map(Some)
        .map_err(|_| invalid("cap", format!("unknown capability {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Spec, SpecError> {
        Spec::from_yaml(y, "job.yaml")
    }

    #[test]
    fn full_spec_parses() {
        let s = parse(
            "name: train\ncommand: [python3, train.py]\nenv: {A: '1'}\nenv_pass: [HOME]\nworkdir: /srv\n\
             user: '1000:1000'\nhostname: box\nnetwork: none\nmemory: 512m\npids: 100\ncpus: 1.5\n\
             tty: false\nstdin: true\nulimits: [nofile=1024]\numask: '027'\ncap_drop: [ALL]\n\
             checkpoint: {every: 10m, keep: 3, leave_running: true}\n\
             on_exit: {policy: restore, when: failure, max_attempts: 5, backoff: {initial: 1s, max: 1m}}\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.command, vec!["python3", "train.py"]);
        assert_eq!(s.memory, Some(ByteSize(512 << 20)));
        assert_eq!(s.network, Network::None);
        assert_eq!(s.checkpoint.every, Some(Dur(Duration::from_secs(600))));
        assert_eq!(s.on_exit.policy, ExitPolicy::Restore);
        assert_eq!(s.on_exit.backoff.max, Dur(Duration::from_secs(60)));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = parse("command: [true]\nmemroy: 1g\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse("command: [true]\ncheckpoint: {evry: 1s}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("evry") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_one_line() {
        let e = parse("command: [true\n  - x: :").unwrap_err().to_string();
        assert!(e.starts_with("job.yaml: "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn empty_command_is_rejected() {
        assert!(parse("name: a\n").unwrap().validate().is_err());
        assert!(parse("command: ['']\n").unwrap().validate().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Dur::parse("10s").unwrap().0, Duration::from_secs(10));
        assert_eq!(Dur::parse("10m").unwrap().0, Duration::from_secs(600));
        assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
        assert_eq!(Dur::parse("2").unwrap().0, Duration::from_secs(2));
        assert!(Dur::parse("10 parsecs").is_err());
        assert!(Dur::parse("ms").is_err());
        assert_eq!(Dur::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Dur::parse("2m").unwrap().to_string(), "2m");
        assert_eq!(Dur::parse("250ms").unwrap().to_string(), "250ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512m").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("1G").unwrap().0, 1 << 30);
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("1x").is_err());
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut s = parse(
            "command: [sleep, '1']\nenv: {A: file, B: file}\nvolumes: ['/a:/a']\nmemory: 1g\n",
        )
        .unwrap();
        s.apply(SpecOverrides {
            env: vec!["A=flag".into()],
            volumes: vec!["/b:/b:ro".into()],
            memory: Some(ByteSize(64 << 20)),
            command: vec!["true".into()],
            tty: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.env["A"], "flag");
        assert_eq!(s.env["B"], "file");
        assert_eq!(s.volumes, vec!["/a:/a", "/b:/b:ro"]);
        assert_eq!(s.memory, Some(ByteSize(64 << 20)));
        assert_eq!(s.command, vec!["true"]);
        assert!(s.tty);
    }

    #[test]
    fn users() {
        assert_eq!(
            parse_user("1000").unwrap(),
            UserRef::Id {
                uid: 1000,
                gid: None
            }
        );
        assert_eq!(
            parse_user("1000:50").unwrap(),
            UserRef::Id {
                uid: 1000,
                gid: Some(50)
            }
        );
        assert_eq!(
            parse_user("bob").unwrap(),
            UserRef::Name {
                name: "bob".into(),
                group: None
            }
        );
        assert!(parse_user(":1").is_err());
        assert!(parse_user("1:").is_err());
        assert!(parse_user("1:x").is_err());
    }

    #[test]
    fn volumes_ulimits_caps_umask() {
        assert!(Volume::parse("/a:/b:ro").unwrap().readonly);
        assert!(Volume::parse("a:/b").is_err());
        assert!(Volume::parse("/a:/").is_err());
        assert!(Volume::parse("/a:/b/../c").is_err());
        let u = Ulimit::parse("nofile=100:200").unwrap();
        assert_eq!((u.soft, u.hard), (100, 200));
        assert_eq!(
            Ulimit::parse("core=unlimited").unwrap().hard,
            libc::RLIM_INFINITY
        );
        assert!(Ulimit::parse("nofile=200:100").is_err());
        assert!(Ulimit::parse("bogus=1").is_err());
        assert_eq!(
            parse_cap("net_admin").unwrap(),
            Some(caps::Capability::CAP_NET_ADMIN)
        );
        assert_eq!(parse_cap("ALL").unwrap(), None);
        assert!(parse_cap("FLY").is_err());
        assert_eq!(parse_umask("027").unwrap(), 0o27);
        assert!(parse_umask("9").is_err());
    }

    #[test]
    fn rootfs_slash_is_the_host_tree() {
        let mut s = parse("command: [x]\nrootfs: /\nvolumes: ['/a:/b']\n").unwrap();
        s.validate().unwrap();
        s.normalize();
        assert_eq!(s.rootfs, None);
        let mut s = parse("command: [x]\nrootfs: /srv/r\n").unwrap();
        s.normalize();
        assert_eq!(s.rootfs.as_deref(), Some(std::path::Path::new("/srv/r")));
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff {
            initial: Dur(Duration::from_secs(1)),
            max: Dur(Duration::from_secs(5)),
        };
        let d: Vec<u64> = (1..=5).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn the_shipped_examples_parse_and_validate() {
        for (name, text) in [
            ("config/job.yaml", include_str!("../../config/job.yaml")),
            ("config/train.yaml", include_str!("../../config/train.yaml")),
        ] {
            let s = Spec::from_yaml(text, name).unwrap_or_else(|e| panic!("{e}"));
            s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s =
            parse("command: [a]\ncheckpoint: {every: 1s}\non_exit: {policy: restart}\n").unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Spec>(&j).unwrap(), s);
    }
}
