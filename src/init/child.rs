//! The child side of a spawn: from a [`ProcSpec`] to a running program.
//!
//! init starts the child with [`sys::vfork_run`]: the child shares init's memory until it
//! execs, so no page table is copied and no page is copied on write (about a tenth of an exec
//! session's time here). The price is discipline. Everything the child needs is built before
//! the clone ([`Prepared`]): C strings and their pointer arrays, the working directory, the
//! groups, the capability masks, room for the moved fds. On its way to exec the child only
//! makes syscalls. It allocates only to report a failure, just before `_exit`, while init
//! (single-threaded) waits in clone: that leaks a few bytes into init's heap, never corrupts it.
//!
//! CRIU cannot dump a parent waiting on a vfork child (it stops for ptrace only once the child
//! has exec'd). No dump ever meets one: the monitor handles spawn requests and dumps (checkpoint,
//! migration) one at a time on its event loop, and awaits init's answer to a spawn, sent after
//! the child's exec, before it takes the next request.

use super::spawn::{ProcSpec, DEFAULT_PATH};
use crate::exit::{CODE_CANNOT_EXECUTE, CODE_NOT_FOUND, CODE_STASIS_ERROR};
use crate::sys;
use std::ffi::{c_char, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The only signals a spawning process ignores. init starts with every disposition at its
/// default (the container's first child resets them all before it execs init, and CRIU
/// restores what it dumped), then ignores SIGPIPE; Rust's runtime ignores SIGPIPE in the test
/// harness too. Its other handlers are caught, which execve resets by itself.
pub const IGNORED_BY_PARENT: [i32; 1] = [libc::SIGPIPE];

/// A ProcSpec converted, before the clone, into what the child's syscalls take.
#[derive(Debug)]
pub struct Prepared {
    /// Owns the strings `argv_ptrs` points into (a CString's bytes stay put when it moves).
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    /// Candidate paths for argv[0] (one when it contains '/', else one per PATH entry).
    candidates: Vec<CString>,
    cwd: CString,
    groups: Vec<libc::gid_t>,
    /// What to take out of the bounding set: every capability not kept.
    bounding_drop: Vec<caps::Capability>,
    /// Capabilities to keep, as a mask of their numbers (`None`: all).
    keep: Option<u64>,
}

/// NULL-terminated pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl Prepared {
    /// Converts strings and capability names. Fails on an interior NUL (rejected earlier by
    /// spec validation) or an unknown capability.
    pub fn new(p: &ProcSpec) -> Result<Prepared, String> {
        let cs = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
        let argv = p
            .argv
            .iter()
            .map(|a| cs(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = p.env.iter().map(|a| cs(a)).collect::<Result<Vec<_>, _>>()?;
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
                .collect::<Result<Vec<_>, _>>()?
        };
        let keep = keep_set(p.caps.as_deref())?;
        let mut bounding_drop: Vec<caps::Capability> = match keep {
            Some(k) => caps::all()
                .into_iter()
                .filter(|c| k & (1u64 << c.index()) == 0)
                .collect(),
            None => Vec::new(),
        };
        bounding_drop.sort_by_key(|c| c.index());
        Ok(Prepared {
            argv_ptrs: pointers(&argv),
            _argv: argv,
            env_ptrs: pointers(&env),
            _env: env,
            candidates,
            cwd: cs(&p.cwd)?,
            groups: p.groups.clone(),
            bounding_drop,
            keep,
        })
    }
}

/// The capabilities to keep, as a mask (`None`: all). Names were validated in the spec; one
/// that does not parse here came from elsewhere (an exec request across an upgrade) and must
/// fail the spawn, never be dropped from the list: an empty list would keep nothing, a
/// shorter one less than asked, and the error says which.
fn keep_set(caps: Option<&[String]>) -> Result<Option<u64>, String> {
    caps.map(|names| {
        names.iter().try_fold(0u64, |mask, n| {
            n.parse::<caps::Capability>()
                .map(|c| mask | (1u64 << c.index()))
                .map_err(|_| format!("unknown capability {n:?}"))
        })
    })
    .transpose()
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

/// In the child: applies `p` and execs. Never returns; on failure writes the reason to
/// `err_pipe` (CLOEXEC, so a successful exec closes it and the parent reads EOF). `moved` is
/// scratch room for `fds.len()` numbers, reserved by the parent.
fn exec_child(
    p: &ProcSpec,
    prep: &Prepared,
    fds: &[OwnedFd],
    moved: &mut Vec<RawFd>,
    err_pipe: BorrowedFd<'_>,
) -> ! {
    sys::reset_ignored_signals(&IGNORED_BY_PARENT);
    if let Err(e) = nix::unistd::setsid() {
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
        if let Err(e) = sys::set_controlling_tty_stdin() {
            fail(
                err_pipe,
                CODE_STASIS_ERROR,
                format!("set controlling terminal: {e}"),
            );
        }
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(p.umask));
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
    if let Err(m) = drop_privileges(p, prep) {
        fail(err_pipe, CODE_STASIS_ERROR, m);
    }
    if let Err(e) = sys::chdir_c(&prep.cwd) {
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
        let e = sys::execve_prepared(cand, &prep.argv_ptrs, &prep.env_ptrs);
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

fn drop_privileges(p: &ProcSpec, prep: &Prepared) -> Result<(), String> {
    // The bounding set caps what any later exec (setuid binaries included) can gain.
    for cap in &prep.bounding_drop {
        sys::caps_bound_drop(cap.index())
            .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
    }
    sys::setgroups_raw(&prep.groups).map_err(|e| format!("setgroups {:?}: {e}", p.groups))?;
    let gid = nix::unistd::Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {}: {e}", p.gid))?;
    let uid = nix::unistd::Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {}: {e}", p.uid))?;
    // For root, setuid kept every capability: reduce them to the declared set. For any other
    // uid the kernel already cleared permitted and effective. Only what we hold can be kept
    // (root may itself lack some), and one capset sets effective, permitted and inheritable
    // together, so the kernel never sees an effective set wider than the permitted one.
    if let (Some(keep), 0) = (prep.keep, p.uid) {
        let held = sys::caps_get().map_err(|e| format!("read capabilities: {e}"))?;
        let k = keep & held.permitted;
        sys::caps_set(sys::CapSets {
            effective: k,
            permitted: k,
            inheritable: k,
        })
        .map_err(|e| format!("set capabilities: {e}"))?;
    }
    Ok(())
}

/// Starts a child that applies `p` and execs, from a single-threaded process (init). Returns
/// the child's pid once it has exec'd, or why it could not.
#[allow(unsafe_code)]
pub fn spawn(p: &ProcSpec, fds: &[OwnedFd]) -> Result<i32, ChildFailure> {
    let prep = Prepared::new(p).map_err(|message| ChildFailure {
        code: CODE_STASIS_ERROR,
        message,
    })?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ChildFailure {
        code: CODE_STASIS_ERROR,
        message: format!("pipe: {e}"),
    })?;
    let mut moved = Vec::with_capacity(fds.len());
    // SAFETY: init is single-threaded, and exec_child ends in execve or _exit, allocating only
    // on its way to _exit (see the module's comment).
    let started =
        unsafe { sys::vfork_run(&mut || exec_child(p, &prep, fds, &mut moved, wr.as_fd())) };
    // Only the child's copy of the write end may keep the pipe open: it closes at its exec.
    drop(wr);
    // A child that changed its uid or gid cleared the dumpable flag of the memory it shared
    // with init: init's own again, as it was.
    sys::set_dumpable();
    let pid = started.map_err(|e| ChildFailure {
        code: CODE_STASIS_ERROR,
        message: format!("clone: {e}"),
    })?;
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::fs::File::from(rd), &mut buf);
    match decode_failure(&buf) {
        None => Ok(pid),
        Some(f) => {
            // the child has _exit'ed: reap it so it is not reported twice
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Err(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_spec(argv: &[&str]) -> ProcSpec {
        ProcSpec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
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
        }
    }

    /// Issue 9, item 16: an unknown capability is an error, never silently dropped.
    #[test]
    fn item_16_an_unknown_capability_fails_the_spawn() {
        let e = keep_set(Some(&["CAP_CHOWN".to_string(), "CAP_FLY".to_string()])).unwrap_err();
        assert!(e.contains("CAP_FLY"), "{e}");
        let k = keep_set(Some(&["CAP_CHOWN".to_string()])).unwrap().unwrap();
        assert_eq!(k, 1 << caps::Capability::CAP_CHOWN.index());
        assert!(keep_set(None).unwrap().is_none());
        let mut p = proc_spec(&["true"]);
        p.caps = Some(vec!["CAP_FLY".into()]);
        assert!(Prepared::new(&p).unwrap_err().contains("CAP_FLY"));
    }

    #[test]
    fn the_bounding_set_loses_exactly_what_is_not_kept() {
        let mut p = proc_spec(&["true"]);
        assert!(Prepared::new(&p).unwrap().bounding_drop.is_empty());
        p.caps = Some(vec!["CAP_CHOWN".into(), "CAP_KILL".into()]);
        let prep = Prepared::new(&p).unwrap();
        assert_eq!(prep.bounding_drop.len(), caps::all().len() - 2);
        assert!(!prep.bounding_drop.contains(&caps::Capability::CAP_KILL));
        assert!(prep
            .bounding_drop
            .contains(&caps::Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn program_lookup_uses_the_workload_path() {
        let prep = Prepared::new(&proc_spec(&["ls", "-l"])).unwrap();
        let c: Vec<_> = prep
            .candidates
            .iter()
            .map(|c| c.to_str().unwrap().to_string())
            .collect();
        assert_eq!(c, vec!["/a/ls", "/b/ls"]);
        // argv as execve takes it: the strings, then NULL
        assert_eq!(prep.argv_ptrs.len(), 3);
        assert!(prep.argv_ptrs[2].is_null() && prep.env_ptrs[1].is_null());
        assert_eq!(
            Prepared::new(&proc_spec(&["/bin/ls"]))
                .unwrap()
                .candidates
                .len(),
            1
        );
    }

    #[test]
    fn failures_decode() {
        assert_eq!(decode_failure(b""), None);
        let f = decode_failure(b"127\nexec \"x\": No such file or directory").unwrap();
        assert_eq!(f.code, 127);
        assert!(f.message.contains("No such file"));
    }

    #[test]
    fn caps_round_trip_through_the_raw_syscalls() {
        let now = sys::caps_get().unwrap();
        // setting what is already held changes nothing and must be accepted
        sys::caps_set(now).unwrap();
        assert_eq!(sys::caps_get().unwrap(), now);
    }
}
