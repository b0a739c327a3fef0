//! `criu dump` and `criu restore` command lines, built from typed options (never a shell
//! string).

use super::options::Flags;
use std::path::PathBuf;

/// The variable that sets CRIU's log level (0 to 4) for every run stasis makes.
pub const LOG_LEVEL_ENV: &str = "STASIS_CRIU_LOG_LEVEL";

/// CRIU's log level: its own default, 2 (errors and warnings, which is all stasis reads from a
/// failed run), unless `STASIS_CRIU_LOG_LEVEL` asks for more. CRIU writes each line with a
/// write of its own: at 4 (debug) a container's dump and restore log some 1200 lines each, 2
/// to 3 ms of a small job's checkpoint, much of it while the job is frozen.
pub fn log_level() -> u8 {
    level_from(std::env::var(LOG_LEVEL_ENV).ok().as_deref())
}

fn level_from(v: Option<&str>) -> u8 {
    v.and_then(|v| v.trim().parse::<u8>().ok())
        .map_or(2, |l| l.min(4))
}

/// `-vN`, at least `min`.
pub fn verbosity(min: u8) -> String {
    format!("-v{}", log_level().max(min))
}

/// Options of one `criu dump`.
#[derive(Debug, Clone, Default)]
pub struct DumpOpts {
    pub pid: i32,
    pub images: PathBuf,
    pub log: PathBuf,
    /// `--external mnt[MOUNTPOINT]:KEY` for every mount carried in from the host.
    pub ext_mounts: Vec<(String, String)>,
    pub leave_running: bool,
    pub flags: Flags,
    /// `--action-script`: run by CRIU at each stage, while the tree is frozen at post-dump.
    pub action_script: Option<String>,
    /// Extra flags: a plugin's (`--libdir` of the cuda plugin for a GPU job) or a
    /// migration's (see `lazy::dump_extra`).
    pub extra: Vec<String>,
}

fn common_flags(a: &mut Vec<String>, f: &Flags) {
    if f.tcp_established {
        a.push("--tcp-established".into());
    }
    if f.file_locks {
        a.push("--file-locks".into());
    }
    if f.ext_unix_sk {
        a.push("--ext-unix-sk".into());
    }
}

impl DumpOpts {
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "dump".into(),
            "--tree".into(),
            self.pid.to_string(),
            "--images-dir".into(),
            self.images.display().to_string(),
            "--log-file".into(),
            self.log.display().to_string(),
            // A lazy dump's log says how much it left to serve ("Pagemap generated", info).
            verbosity(if self.extra.iter().any(|a| a == "--lazy-pages") {
                3
            } else {
                0
            }),
        ];
        for (mnt, key) in &self.ext_mounts {
            a.push("--external".into());
            a.push(format!("mnt[{mnt}]:{key}"));
        }
        for e in &self.flags.external {
            a.push("--external".into());
            a.push(e.clone());
        }
        if self.leave_running {
            a.push("--leave-running".into());
        }
        common_flags(&mut a, &self.flags);
        if self.flags.link_remap {
            a.push("--link-remap".into());
        }
        a.push("--ghost-limit".into());
        a.push(self.flags.ghost_limit.to_string());
        if let Some(t) = self.flags.freeze_timeout_s {
            a.push("--timeout".into());
            a.push(t.to_string());
        }
        if let Some(s) = &self.action_script {
            a.push("--action-script".into());
            a.push(s.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// Options of one `criu restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub images: PathBuf,
    pub log: PathBuf,
    pub pidfile: PathBuf,
    /// The container's root: `/` for one on the host's tree, else its rootfs.
    pub root: PathBuf,
    /// `--external mnt[KEY]:HOST_PATH` for every carried-in mount.
    pub ext_mounts: Vec<(String, PathBuf)>,
    pub cgroup_args: Vec<String>,
    pub flags: Flags,
    /// Extra flags: a plugin's (`--libdir` of the cuda plugin for a GPU job) or a lazy or
    /// gated restore's (`--lazy-pages`, `--action-script`).
    pub extra: Vec<String>,
}

impl RestoreOpts {
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "restore".into(),
            "--images-dir".into(),
            self.images.display().to_string(),
            "--log-file".into(),
            self.log.display().to_string(),
            verbosity(0),
            // The restored init becomes the monitor's child, and criu returns at once.
            "--restore-detached".into(),
            "--restore-sibling".into(),
            "--pidfile".into(),
            self.pidfile.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
        ];
        for (key, path) in &self.ext_mounts {
            a.push("--external".into());
            a.push(format!("mnt[{key}]:{}", path.display()));
        }
        a.extend(self.cgroup_args.iter().cloned());
        common_flags(&mut a, &self.flags);
        a.extend(self.extra.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_argv_declares_mounts_and_options() {
        let o = DumpOpts {
            pid: 42,
            images: "/g/.tmp-3".into(),
            log: "/w/criu/dump-3.log".into(),
            ext_mounts: vec![("/sys".into(), "m0".into())],
            leave_running: true,
            flags: Flags {
                tcp_established: true,
                link_remap: true,
                ghost_limit: 4 << 20,
                file_locks: true,
                ext_unix_sk: false,
                freeze_timeout_s: Some(30),
                external: vec!["file[1:2]".into()],
            },
            action_script: None,
            extra: vec!["--libdir".into(), "/usr/local/lib/criu".into()],
        };
        let a = o.argv().join(" ");
        for want in [
            "dump --tree 42 --images-dir /g/.tmp-3",
            "--external mnt[/sys]:m0",
            "--external file[1:2]",
            "--leave-running",
            "--tcp-established",
            "--file-locks",
            "--link-remap",
            "--ghost-limit 4194304",
            "--timeout 30",
            "--libdir /usr/local/lib/criu",
        ] {
            assert!(a.contains(want), "{want} missing in {a}");
        }
        assert!(!a.contains("--ext-unix-sk"));
    }

    #[test]
    fn log_level_is_criu_default_unless_asked_and_a_lazy_dump_logs_its_pagemap() {
        assert_eq!(level_from(None), 2);
        assert_eq!(level_from(Some("4")), 4);
        assert_eq!(level_from(Some(" 0 ")), 0);
        assert_eq!(level_from(Some("9")), 4);
        assert_eq!(level_from(Some("debug")), 2);
        let lazy = DumpOpts {
            extra: vec!["--lazy-pages".into()],
            ..Default::default()
        }
        .argv();
        assert!(
            lazy.contains(&format!("-v{}", log_level().max(3))),
            "{lazy:?}"
        );
    }

    #[test]
    fn restore_argv_maps_mounts_back() {
        let o = RestoreOpts {
            images: "/g/3".into(),
            log: "/w/criu/restore-3.log".into(),
            pidfile: "/run/x.pid".into(),
            root: "/".into(),
            ext_mounts: vec![("m0".into(), "/sys".into())],
            cgroup_args: vec!["--manage-cgroups=soft".into()],
            flags: Flags {
                file_locks: true,
                ext_unix_sk: true,
                ..Default::default()
            },
            extra: vec!["--lazy-pages".into()],
        };
        let a = o.argv().join(" ");
        for want in [
            "--restore-detached --restore-sibling --pidfile /run/x.pid --root /",
            "--external mnt[m0]:/sys",
            "--manage-cgroups=soft",
            "--file-locks",
            "--ext-unix-sk",
            "--lazy-pages",
        ] {
            assert!(a.contains(want), "{want} missing in {a}");
        }
        assert!(!a.contains("--link-remap") && !a.contains("--tcp-established"));
    }
}
