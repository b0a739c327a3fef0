//! The spawn builder, in the spirit of libvirt's virCommand: one description of a process to
//! start inside a container (argv, never a shell string; a clean environment; user and groups;
//! rlimits; umask; capabilities; no_new_privs; working directory; exactly the declared fds) and
//! the child-side code that applies it between fork and exec. The workload and every exec
//! session are started through it, by the container's init.

use crate::exit::{CODE_CANNOT_EXECUTE, CODE_NOT_FOUND, CODE_STASIS_ERROR};
use crate::spec::{self, Spec, Ulimit, UserRef};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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

/// The pieces of a ProcSpec converted for execve before forking.
pub struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Candidate paths for argv[0] (one when it contains '/', else one per PATH entry).
    candidates: Vec<CString>,
}

impl Prepared {
    /// Converts strings; fails only on interior NULs (rejected earlier by spec validation).
    pub fn new(p: &ProcSpec) -> io::Result<Prepared> {
        let cs = |s: &str| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
        let argv = p
            .argv
            .iter()
            .map(|a| cs(a))
            .collect::<io::Result<Vec<_>>>()?;
        let env = p
            .env
            .iter()
            .map(|a| cs(a))
            .collect::<io::Result<Vec<_>>>()?;
        let prog = p.argv.first().map(String::as_str).unwrap_or("");
        let candidates = if prog.contains('/') {
            vec![cs(prog)?]
        } else {
            let path = p
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(DEFAULT_PATH);
            path.split(':')
                .map(|d| if d.is_empty() { "." } else { d })
                .map(|d| cs(&format!("{d}/{prog}")))
                .collect::<io::Result<Vec<_>>>()?
        };
        Ok(Prepared {
            argv,
            env,
            candidates,
        })
    }
}

/// Why a child failed before exec: the stage and the errno, written to the error pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildFailure {
    pub code: i32,
    pub message: String,
}

/// Decodes what a failed child wrote on its error pipe ("CODE\nMESSAGE").
pub fn decode_failure(data: &[u8]) -> Option<ChildFailure> {
    if data.is_empty() {
        return None;
    }
    let s = String::from_utf8_lossy(data);
    let (code, msg) = s.split_once('\n').unwrap_or(("125", &s));
    Some(ChildFailure {
        code: code.trim().parse().unwrap_or(CODE_STASIS_ERROR),
        message: msg.to_string(),
    })
}

fn fail(err_pipe: BorrowedFd<'_>, code: i32, msg: String) -> ! {
    let text = format!("{code}\n{msg}");
    let _ = nix::unistd::write(err_pipe, text.as_bytes());
    sys::exit_now(code)
}

fn errno_text(e: &io::Error) -> String {
    // "No such file or directory", not "No such file or directory (os error 2)"
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// In a freshly forked child: applies `p` and execs. Never returns; on failure writes the
/// reason to `err_pipe` (CLOEXEC, so a successful exec closes it and the parent reads EOF).
pub fn exec_child(p: &ProcSpec, prep: &Prepared, fds: &[OwnedFd], err_pipe: BorrowedFd<'_>) -> ! {
    sys::reset_ignored_signals(&IGNORED_BY_PARENT);
    if let Err(e) = ::nix::unistd::setsid() {
        fail(err_pipe, CODE_STASIS_ERROR, format!("setsid: {e}"));
    }
    // Move every attached fd above all targets first, so placing one never clobbers another.
    let high = p
        .fds
        .iter()
        .copied()
        .max()
        .unwrap_or(2)
        .max(err_pipe.as_raw_fd())
        + 1;
    let mut moved = Vec::with_capacity(fds.len());
    for fd in fds {
        match sys::dup_above(fd.as_raw_fd(), high.max(64)) {
            Ok(n) => moved.push(n),
            Err(e) => fail(err_pipe, CODE_STASIS_ERROR, format!("dup: {e}")),
        }
    }
    for (src, &dst) in moved.iter().zip(&p.fds) {
        if let Err(e) = sys::dup_to(*src, dst) {
            fail(
                err_pipe,
                CODE_STASIS_ERROR,
                format!("dup2 to fd {dst}: {e}"),
            );
        }
    }
    // Everything else above 2 goes at exec: only declared fds reach the program. Failing
    // that would leak init's and the monitor's fds into the workload, so it fails the spawn.
    if let Err(e) = sys::cloexec_from(3) {
        fail(err_pipe, CODE_STASIS_ERROR, format!("close_range: {e}"));
    }
    for &dst in &p.fds {
        if dst > 2 {
            if let Err(e) = sys::dup_to(dst, dst) {
                fail(
                    err_pipe,
                    CODE_STASIS_ERROR,
                    format!("keep fd {dst} across exec: {e}"),
                );
            }
        }
    }
    if p.tty {
        if let Err(e) = sys::set_controlling_tty(std::io::stdin().as_fd()) {
            fail(
                err_pipe,
                CODE_STASIS_ERROR,
                format!("set controlling terminal: {e}"),
            );
        }
    }
    ::nix::sys::stat::umask(::nix::sys::stat::Mode::from_bits_truncate(p.umask));
    for r in &p.rlimits {
        let rl = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        if let Err(e) = sys::setrlimit_raw(r.resource, &rl) {
            fail(
                err_pipe,
                CODE_STASIS_ERROR,
                format!("setrlimit {}: {}", r.resource, errno_text(&e)),
            );
        }
    }
    if let Err(m) = drop_privileges(p) {
        fail(err_pipe, CODE_STASIS_ERROR, m);
    }
    if let Err(e) = std::env::set_current_dir(&p.cwd) {
        fail(
            err_pipe,
            CODE_STASIS_ERROR,
            format!("workdir {}: {}", p.cwd, errno_text(&e)),
        );
    }
    if p.no_new_privs {
        if let Err(e) = sys::set_no_new_privs() {
            fail(err_pipe, CODE_STASIS_ERROR, format!("no_new_privs: {e}"));
        }
    }
    let mut denied: Option<io::Error> = None;
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for cand in &prep.candidates {
        let e = sys::execve(cand, &prep.argv, &prep.env);
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => last = e,
            Some(libc::EACCES) => denied = Some(e),
            _ => {
                last = e;
                denied = None;
                break;
            }
        }
    }
    let err = denied.unwrap_or(last);
    let prog = p.argv.first().cloned().unwrap_or_default();
    let code = match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => CODE_NOT_FOUND,
        _ => CODE_CANNOT_EXECUTE,
    };
    fail(
        err_pipe,
        code,
        format!("exec {prog:?}: {}", errno_text(&err)),
    )
}

/// The capabilities to keep (`None`: all). Names were validated in the spec; one that does not
/// parse here came from elsewhere (an exec request across an upgrade) and must fail the spawn,
/// never be dropped from the list: an empty list would keep nothing, a shorter one less than
/// asked, and the error says which.
fn keep_set(
    caps: Option<&[String]>,
) -> Result<Option<std::collections::HashSet<caps::Capability>>, String> {
    caps.map(|names| {
        names
            .iter()
            .map(|n| {
                n.parse::<caps::Capability>()
                    .map_err(|_| format!("unknown capability {n:?}"))
            })
            .collect()
    })
    .transpose()
}

fn drop_privileges(p: &ProcSpec) -> Result<(), String> {
    use caps::{CapSet, Capability};
    let keep = keep_set(p.caps.as_deref())?;
    if let Some(keep) = &keep {
        // The bounding set caps what any later exec (setuid binaries included) can gain.
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
            }
        }
    }
    let gids: Vec<::nix::unistd::Gid> = p
        .groups
        .iter()
        .map(|g| ::nix::unistd::Gid::from_raw(*g))
        .collect();
    ::nix::unistd::setgroups(&gids).map_err(|e| format!("setgroups {:?}: {e}", p.groups))?;
    ::nix::unistd::setresgid(
        ::nix::unistd::Gid::from_raw(p.gid),
        ::nix::unistd::Gid::from_raw(p.gid),
        ::nix::unistd::Gid::from_raw(p.gid),
    )
    .map_err(|e| format!("setgid {}: {e}", p.gid))?;
    ::nix::unistd::setresuid(
        ::nix::unistd::Uid::from_raw(p.uid),
        ::nix::unistd::Uid::from_raw(p.uid),
        ::nix::unistd::Uid::from_raw(p.uid),
    )
    .map_err(|e| format!("setuid {}: {e}", p.uid))?;
    if let Some(keep) = keep {
        // For root, setuid kept every capability: reduce them to the declared set. For any other
        // uid the kernel already cleared permitted and effective.
        // Effective first: the kernel refuses a permitted set smaller than the effective one.
        // Only what we hold can be kept (root may itself lack some capabilities).
        let held =
            caps::read(None, CapSet::Permitted).map_err(|e| format!("read capabilities: {e}"))?;
        let keep: std::collections::HashSet<Capability> =
            keep.intersection(&held).copied().collect();
        let sets: &[CapSet] = if p.uid == 0 {
            &[CapSet::Effective, CapSet::Permitted, CapSet::Inheritable]
        } else {
            &[]
        };
        for which in sets {
            caps::set(None, *which, &keep)
                .map_err(|e| format!("set {which:?} capabilities: {e}"))?;
        }
    }
    Ok(())
}

/// The only signals a spawning process ignores. init starts with every disposition at its
/// default (the container's first child resets them all before it execs init, and CRIU
/// restores what it dumped), then ignores SIGPIPE; Rust's runtime ignores SIGPIPE in the test
/// harness too. Its other handlers are caught, which execve resets by itself.
pub const IGNORED_BY_PARENT: [i32; 1] = [libc::SIGPIPE];

/// Forks a child that applies `p` and execs, from a single-threaded process (init). Returns
/// the child's pid once it has exec'd, or why it could not.
#[allow(unsafe_code)]
pub fn spawn(p: &ProcSpec, fds: &[OwnedFd]) -> Result<i32, ChildFailure> {
    let prep = Prepared::new(p).map_err(|e| ChildFailure {
        code: CODE_STASIS_ERROR,
        message: format!("bad argv or env: {e}"),
    })?;
    let (rd, wr) =
        ::nix::unistd::pipe2(::nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ChildFailure {
            code: CODE_STASIS_ERROR,
            message: format!("pipe: {e}"),
        })?;
    // SAFETY: callers are single-threaded (init), so the child may allocate and run Rust code.
    match unsafe { sys::fork() } {
        Err(e) => Err(ChildFailure {
            code: CODE_STASIS_ERROR,
            message: format!("fork: {e}"),
        }),
        Ok(None) => {
            drop(rd);
            exec_child(p, &prep, fds, wr.as_fd())
        }
        Ok(Some(pid)) => {
            drop(wr);
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(rd), &mut buf);
            match decode_failure(&buf) {
                None => Ok(pid),
                Some(f) => {
                    // the child has _exit'ed (or will): reap it so it is not reported twice
                    let _ = ::nix::sys::wait::waitpid(::nix::unistd::Pid::from_raw(pid), None);
                    Err(f)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9, item 16: an unknown capability is an error, never silently dropped.
    #[test]
    fn item_16_an_unknown_capability_fails_the_spawn() {
        let e = keep_set(Some(&["CAP_CHOWN".to_string(), "CAP_FLY".to_string()])).unwrap_err();
        assert!(e.contains("CAP_FLY"), "{e}");
        let k = keep_set(Some(&["CAP_CHOWN".to_string()])).unwrap().unwrap();
        assert!(k.contains(&caps::Capability::CAP_CHOWN) && k.len() == 1);
        assert!(keep_set(None).unwrap().is_none());
    }

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

    #[test]
    fn program_lookup_uses_the_workload_path() {
        let mut p = ProcSpec {
            argv: vec!["ls".into()],
            env: vec!["PATH=/a:/b".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            groups: vec![],
            umask: 0o22,
            rlimits: vec![],
            caps: None,
            no_new_privs: true,
            tty: false,
            fds: vec![0, 1, 2],
        };
        let prep = Prepared::new(&p).unwrap();
        let c: Vec<_> = prep
            .candidates
            .iter()
            .map(|c| c.to_str().unwrap().to_string())
            .collect();
        assert_eq!(c, vec!["/a/ls", "/b/ls"]);
        p.argv = vec!["/bin/ls".into()];
        assert_eq!(Prepared::new(&p).unwrap().candidates.len(), 1);
    }

    #[test]
    fn failures_decode() {
        assert_eq!(decode_failure(b""), None);
        let f = decode_failure(b"127\nexec \"x\": No such file or directory").unwrap();
        assert_eq!(f.code, 127);
        assert!(f.message.contains("No such file"));
    }
}
