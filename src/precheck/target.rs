//! `--target HOST`: the host-side questions asked of another host before a migration or an
//! import. stasis runs `ssh HOST stasis host-facts --format json --cpuinfo -` with this CPU's
//! `criu cpuinfo dump` image on its stdin; HOST answers with its stasis and CRIU versions,
//! its CRIU's check and features, and `criu cpuinfo check` of that image (the check a
//! restore there makes). [`compare`] turns both hosts' facts into obstacles and notes.
//!
//! `STASIS_SSH_COMMAND` replaces the ssh command and its options (split on whitespace, like
//! `GIT_SSH_COMMAND`), e.g. `STASIS_SSH_COMMAND="ssh -F ./ssh_config"`.

use super::host::{self, HostFacts};
use super::verdict::{self, Line};
use serde::Serialize;
use std::io::Write;
use std::process::{Command, Stdio};

/// The environment variable that replaces the ssh command.
pub const ENV_SSH: &str = "STASIS_SSH_COMMAND";
/// The hidden subcommand HOST runs.
pub const SUBCOMMAND: &str = "host-facts";

/// Why the target could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--target {host}: not a host name for ssh")]
    BadHost { host: String },
    #[error("--target {host}: run `{cmd}`: {source}")]
    Spawn {
        host: String,
        cmd: String,
        source: std::io::Error,
    },
    #[error("--target {host}: `{cmd}` failed ({status}): {stderr}")]
    Failed {
        host: String,
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error(
        "--target {host}: its answer is not stasis host facts ({why}); is stasis on its PATH?"
    )]
    Answer { host: String, why: String },
}

/// What the target said, and what it means for this job.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub host: String,
    pub facts: HostFacts,
    pub obstacles: Vec<Line>,
    pub notes: Vec<Line>,
}

/// The ssh command line, without the host.
pub fn ssh_command() -> Vec<String> {
    match std::env::var(ENV_SSH) {
        Ok(s) if !s.trim().is_empty() => s.split_whitespace().map(str::to_string).collect(),
        _ => ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
            .map(str::to_string)
            .to_vec(),
    }
}

/// Compares the target's facts with this host's, for a job that uses a GPU or not and has
/// TCP sockets or not.
pub fn compare(
    host: &str,
    local: &HostFacts,
    remote: &HostFacts,
    gpu_job: bool,
    has_tcp: bool,
) -> (Vec<Line>, Vec<Line>) {
    let at = format!("target {host}");
    let mk = |kind: &str, problem: String, fix: String| Line {
        kind: kind.into(),
        at: at.clone(),
        problem,
        fix,
    };
    let mut obstacles: Vec<Line> = verdict::host(remote, has_tcp)
        .into_iter()
        .map(|mut l| {
            l.kind = format!("target-{}", l.kind);
            l.at = at.clone();
            l
        })
        .collect();
    let mut notes: Vec<Line> = verdict::host_notes(remote)
        .into_iter()
        .map(|mut l| {
            l.kind = format!("target-{}", l.kind);
            l.at = at.clone();
            l
        })
        .collect();
    if remote.arch != local.arch {
        obstacles.push(mk(
            "target-arch",
            format!("{host} is {}, this host is {}", remote.arch, local.arch),
            "nothing: a checkpoint restores only on the same architecture".into(),
        ));
    }
    match &remote.cpuinfo {
        Some(c) if !c.ok => obstacles.push(mk(
            "target-cpu",
            format!("{host}'s CPU lacks what this CPU offers the job (criu cpuinfo check: {})", c.detail),
            "nothing stasis or CRIU can set: restore on a host whose CPU has the same features (podman#17496)".into(),
        )),
        Some(_) => {}
        None if remote.criu.is_some() && local.criu.is_some() => notes.push(mk(
            "target-cpu",
            format!("{host} did not check this CPU's features"),
            "a restore there checks them".into(),
        )),
        None => {}
    }
    if remote.manifest < local.manifest {
        obstacles.push(mk(
            "target-stasis",
            format!(
                "{host} runs stasis {}, which reads checkpoints up to format {}; this one writes format {}",
                remote.stasis_version, remote.manifest, local.manifest
            ),
            format!("upgrade stasis on {host}"),
        ));
    }
    if let (Some(l), Some(r)) = (local.criu_version(), remote.criu_version()) {
        if r < l {
            notes.push(mk(
                "target-criu-version",
                format!(
                    "{host} has CRIU {}, older than this host's {}",
                    remote
                        .criu
                        .as_ref()
                        .map(|c| c.version.as_str())
                        .unwrap_or("?"),
                    local
                        .criu
                        .as_ref()
                        .map(|c| c.version.as_str())
                        .unwrap_or("?")
                ),
                "images are read by the older CRIU there; upgrade it if the restore fails".into(),
            ));
        }
    }
    if gpu_job && remote.gpus != local.gpus {
        obstacles.push(mk(
            "target-gpu",
            format!(
                "the job uses this host's GPUs ({}); {host} has {}",
                local.gpus,
                if remote.gpus.is_empty() {
                    "none"
                } else {
                    &remote.gpus
                }
            ),
            "nothing: a GPU checkpoint restores only onto the same GPU model and count".into(),
        ));
    }
    (obstacles, notes)
}

/// Asks `host` over ssh and compares, for a job that uses a GPU or not and has TCP sockets
/// or not.
pub fn ask(
    host: &str,
    local: &HostFacts,
    gpu_job: bool,
    has_tcp: bool,
) -> Result<TargetReport, TargetError> {
    if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
        return Err(TargetError::BadHost { host: host.into() });
    }
    // This CPU's description, for the target to check (none without a local CRIU; that is an
    // obstacle of its own already).
    let image = crate::criu::locate()
        .ok()
        .and_then(|c| host::cpuinfo_dump(&c).ok());
    let mut argv = ssh_command();
    argv.push(host.to_string());
    argv.extend(["stasis", SUBCOMMAND, "--format", "json"].map(str::to_string));
    if image.is_some() {
        argv.extend(["--cpuinfo", "-"].map(str::to_string));
    }
    let cmd = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| TargetError::Spawn {
            host: host.into(),
            cmd: cmd.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A target that exits early closes the pipe; its status says why.
        let _ = stdin.write_all(image.as_deref().unwrap_or_default());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| TargetError::Spawn {
            host: host.into(),
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(TargetError::Failed {
            host: host.into(),
            cmd,
            status: out.status.to_string(),
            stderr: last.join("; "),
        });
    }
    let facts: HostFacts =
        serde_json::from_slice(&out.stdout).map_err(|e| TargetError::Answer {
            host: host.into(),
            why: e.to_string(),
        })?;
    let (obstacles, notes) = compare(host, local, &facts, gpu_job, has_tcp);
    Ok(TargetReport {
        host: host.into(),
        facts,
        obstacles,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precheck::host::{Check, CriuFacts};

    fn facts(criu: &str, manifest: u32, gpus: &str) -> HostFacts {
        HostFacts {
            hostname: "h".into(),
            manifest,
            kernel: "6.18.0".into(),
            arch: "x86_64".into(),
            gpus: gpus.into(),
            criu: Some(CriuFacts {
                version: criu.into(),
                check: Check {
                    ok: true,
                    detail: "Looks good".into(),
                },
                ..Default::default()
            }),
            cpuinfo: Some(Check {
                ok: true,
                detail: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_twin_host_has_nothing_to_say() {
        let a = facts("4.2.1", 2, "");
        assert_eq!(compare("b", &a, &a.clone(), false, true), (vec![], vec![]));
    }

    #[test]
    fn cpu_criu_stasis_and_gpu_differences_are_told() {
        let here = facts("4.2.1", 2, "1 x NVIDIA H100");
        let mut there = facts("4.1.1", 1, "");
        there.cpuinfo = Some(Check {
            ok: false,
            detail: "CPU capabilities mismatch".into(),
        });
        let (o, n) = compare("b", &here, &there, true, true);
        let kinds: Vec<&str> = o.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "target-criu-tcp",
                "target-cpu",
                "target-stasis",
                "target-gpu"
            ]
        );
        assert!(o.iter().all(|l| l.at == "target b"));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, "target-criu-version");
        // without a CRIU there, that is the first thing said
        let mut none = facts("", 2, "");
        none.criu = None;
        none.criu_error = Some("criu not found".into());
        let (o, _) = compare("b", &here, &none, false, false);
        assert_eq!(o[0].kind, "target-criu");
    }

    #[test]
    fn hosts_that_look_like_options_are_refused() {
        let a = facts("4.2.1", 2, "");
        assert!(matches!(
            ask("-oProxyCommand=x", &a, false, false),
            Err(TargetError::BadHost { .. })
        ));
    }
}
