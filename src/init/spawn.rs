//! The spawn builder, in the spirit of libvirt's virCommand: one description of a process to
//! start inside a container (argv, never a shell string; a clean environment; user and groups;
//! rlimits; umask; capabilities; no_new_privs; working directory; exactly the declared fds) and
//! the child side that applies it ([`super::child`]). The workload and every exec session are
//! started through it, by the container's init.

use crate::spec::{self, Spec, Ulimit, UserRef};
use serde::{Deserialize, Serialize};

pub use super::child::{decode_failure, spawn, ChildFailure, IGNORED_BY_PARENT};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The PATH a workload gets unless its spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities a workload keeps by default (docker's and podman's default set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors resolving a spawn description.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("unknown user {0:?} (not in {1})")]
    UnknownUser(String, String),
    #[error("unknown group {0:?} (not in {1})")]
    UnknownGroup(String, String),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
}

/// A fully resolved process description, sent from the monitor to init.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcSpec {
    pub argv: Vec<String>,
    /// `K=V` entries: the complete environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    pub rlimits: Vec<Ulimit>,
    /// Capability names to keep; `None` keeps every one.
    pub caps: Option<Vec<String>>,
    pub no_new_privs: bool,
    /// fd 0 is a tty: make it the controlling terminal of the new session.
    pub tty: bool,
    /// Target fd number of each fd attached to the spawn message, in order.
    pub fds: Vec<i32>,
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: String,
}

fn etc(rootfs: Option<&Path>, file: &str) -> PathBuf {
    rootfs.unwrap_or(Path::new("/")).join("etc").join(file)
}

/// Entries of a passwd- or group-style file, split on ':'.
fn read_colon_file(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// Resolves `--user` against the container's /etc/passwd and /etc/group (read as files, not
/// through NSS, so the answer is the container's, not the host's).
pub fn resolve_user(
    user: Option<&str>,
    rootfs: Option<&Path>,
    group_add: &[u32],
) -> Result<Creds, SpawnError> {
    let passwd_path = etc(rootfs, "passwd");
    let group_path = etc(rootfs, "group");
    let passwd = read_colon_file(&passwd_path);
    let groups = read_colon_file(&group_path);
    let uref = match user {
        Some(u) => spec::parse_user(u)?,
        None => UserRef::Id { uid: 0, gid: None },
    };
    let (uid, gid_opt, name, home, primary) = match uref {
        UserRef::Id { uid, gid } => {
            let ent = passwd
                .iter()
                .find(|e| e.len() >= 6 && e[2].parse() == Ok(uid));
            let name = ent.map(|e| e[0].clone());
            let home = ent.map(|e| e[5].clone()).unwrap_or_else(|| {
                if uid == 0 {
                    "/root".into()
                } else {
                    "/".into()
                }
            });
            let primary = ent.and_then(|e| e[3].parse().ok()).unwrap_or(uid);
            (uid, gid, name, home, primary)
        }
        UserRef::Name { name, group } => {
            let ent = passwd
                .iter()
                .find(|e| e.len() >= 6 && e[0] == name)
                .ok_or_else(|| {
                    SpawnError::UnknownUser(name.clone(), passwd_path.display().to_string())
                })?;
            let uid = ent[2].parse().map_err(|_| {
                SpawnError::UnknownUser(name.clone(), passwd_path.display().to_string())
            })?;
            let primary = ent[3].parse().unwrap_or(uid);
            let gid = match group {
                Some(g) => Some(match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => groups
                        .iter()
                        .find(|e| e.len() >= 3 && e[0] == g)
                        .and_then(|e| e[2].parse().ok())
                        .ok_or_else(|| {
                            SpawnError::UnknownGroup(g.clone(), group_path.display().to_string())
                        })?,
                }),
                None => None,
            };
            (uid, gid, Some(name), ent[5].clone(), primary)
        }
    };
    let gid = gid_opt.unwrap_or(primary);
    let mut set: BTreeSet<u32> = BTreeSet::new();
    set.insert(gid);
    if let Some(n) = &name {
        for g in &groups {
            if g.len() >= 4 && g[3].split(',').any(|m| m == n) {
                if let Ok(id) = g[2].parse() {
                    set.insert(id);
                }
            }
        }
    }
    set.extend(group_add.iter().copied());
    Ok(Creds {
        uid,
        gid,
        groups: set.into_iter().collect(),
        name,
        home,
    })
}

/// The capability set a spec asks for (`None`: all of them, after `--cap-add ALL`).
pub fn resolve_caps(
    cap_add: &[String],
    cap_drop: &[String],
) -> Result<Option<Vec<String>>, SpawnError> {
    let mut set: BTreeSet<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let mut all = false;
    for c in cap_drop {
        match spec::parse_cap(c)? {
            None => set.clear(),
            Some(cap) => {
                set.remove(&cap.to_string());
            }
        }
    }
    for c in cap_add {
        match spec::parse_cap(c)? {
            None => all = true,
            Some(cap) => {
                set.insert(cap.to_string());
            }
        }
    }
    Ok(if all {
        None
    } else {
        Some(set.into_iter().collect())
    })
}

/// The clean environment: PATH, HOME, USER, LOGNAME, LANG, TERM (for a tty), then the
/// spec's own variables on top.
pub fn base_env(creds: &Creds, term: Option<&str>, extra: &[(String, String)]) -> Vec<String> {
    let user = creds.name.clone().unwrap_or_else(|| creds.uid.to_string());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), creds.home.clone()),
        ("USER".into(), user.clone()),
        ("LOGNAME".into(), user),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    if let Some(t) = term {
        env.push(("TERM".into(), t.to_string()));
    }
    // An index keeps this linear in the number of variables (issue 9, item 13).
    let mut at: std::collections::HashMap<String, usize> = env
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    for (k, v) in extra {
        match at.get(k) {
            Some(&i) => env[i].1 = v.clone(),
            None => {
                at.insert(k.clone(), env.len());
                env.push((k.clone(), v.clone()));
            }
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The workload's ProcSpec (its stdio are fds 0, 1, 2).
pub fn workload_proc(spec: &Spec, term: Option<&str>) -> Result<ProcSpec, SpawnError> {
    build_proc(
        spec,
        &Overrides {
            argv: &spec.command,
            tty: spec.tty,
            term,
            ..Overrides::default()
        },
    )
}

/// What an exec session changes from its workload's spec.
#[derive(Debug, Default)]
pub struct Overrides<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: Option<&'a str>,
    pub user: Option<&'a str>,
    pub tty: bool,
    /// The client's TERM, for a tty.
    pub term: Option<&'a str>,
    /// Extra fd numbers passed after 0, 1, 2.
    pub fds: &'a [i32],
}

/// Builds a ProcSpec from a workload's spec (user, environment, rlimits, umask, capabilities,
/// no_new_privs) with `o` on top: the workload and its exec sessions start the same way.
pub fn build_proc(spec: &Spec, o: &Overrides<'_>) -> Result<ProcSpec, SpawnError> {
    let creds = resolve_user(
        o.user.or(spec.user.as_deref()),
        spec.rootfs.as_deref(),
        &spec.group_add,
    )?;
    let mut extra: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    extra.extend(o.env.iter().cloned());
    let rlimits = spec
        .ulimits
        .iter()
        .map(|u| Ulimit::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let umask = spec
        .umask
        .as_deref()
        .map(spec::parse_umask)
        .transpose()?
        .unwrap_or(0o022);
    let term = if o.tty {
        Some(o.term.unwrap_or("xterm"))
    } else {
        None
    };
    let mut fds = vec![0, 1, 2];
    fds.extend_from_slice(o.fds);
    Ok(ProcSpec {
        argv: o.argv.to_vec(),
        env: base_env(&creds, term, &extra),
        cwd: o
            .workdir
            .map(str::to_string)
            .or_else(|| spec.workdir.clone())
            .unwrap_or_else(|| "/".into()),
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups,
        umask,
        rlimits,
        caps: resolve_caps(&spec.cap_add, &spec.cap_drop)?,
        no_new_privs: spec.no_new_privs(),
        tty: o.tty,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(d.path().join("etc/group"), group).unwrap();
        d
    }

    #[test]
    fn users_resolve_against_the_rootfs() {
        let r = rootfs_with(
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\n",
        );
        let c = resolve_user(Some("alice"), Some(r.path()), &[]).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(c.groups, vec![10, 1000]);
        let c = resolve_user(Some("1000:5"), Some(r.path()), &[77]).unwrap();
        assert_eq!((c.uid, c.gid), (1000, 5));
        assert_eq!(c.groups, vec![5, 10, 77]);
        let c = resolve_user(Some("4242"), Some(r.path()), &[]).unwrap();
        assert_eq!(
            (c.uid, c.gid, c.home.as_str(), c.name),
            (4242, 4242, "/", None)
        );
        assert!(matches!(
            resolve_user(Some("mallory"), Some(r.path()), &[]),
            Err(SpawnError::UnknownUser(..))
        ));
        assert!(matches!(
            resolve_user(Some("alice:nogroup"), Some(r.path()), &[]),
            Err(SpawnError::UnknownGroup(..))
        ));
        let c = resolve_user(None, Some(r.path()), &[]).unwrap();
        assert_eq!((c.uid, c.home.as_str()), (0, "/root"));
    }

    #[test]
    fn caps_start_from_the_default_set() {
        let c = resolve_caps(&[], &[]).unwrap().unwrap();
        assert_eq!(c.len(), DEFAULT_CAPS.len());
        let c = resolve_caps(&["NET_ADMIN".into()], &["CHOWN".into()])
            .unwrap()
            .unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()) && !c.contains(&"CAP_CHOWN".to_string()));
        assert!(resolve_caps(&[], &["ALL".into()])
            .unwrap()
            .unwrap()
            .is_empty());
        assert!(resolve_caps(&["ALL".into()], &[]).unwrap().is_none());
    }

    #[test]
    fn environment_is_clean_plus_declared() {
        let creds = Creds {
            uid: 1000,
            gid: 1000,
            groups: vec![],
            name: Some("alice".into()),
            home: "/home/alice".into(),
        };
        let env = base_env(
            &creds,
            None,
            &[("A".into(), "1".into()), ("PATH".into(), "/x".into())],
        );
        assert!(env.contains(&"USER=alice".to_string()));
        assert!(env.contains(&"HOME=/home/alice".to_string()));
        assert!(env.contains(&"PATH=/x".to_string()));
        assert!(env.contains(&"A=1".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("TERM=")));
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        let env = base_env(&creds, Some("xterm-256color"), &[]);
        assert!(env.contains(&"TERM=xterm-256color".to_string()));
    }
}
