//! Every CRIU run is the leader of a process group of its own, and whatever is left in that
//! group when CRIU ends is ended with it.
//!
//! Why: at start-up CRIU probes the kernel (its kerndat cache is not kept where /run is not a
//! tmpfs, so every run probes). Two of the probes fork a child (`fork_and_ptrace_attach`, which
//! sleeps in a loop until CRIU kills it, and the breakpoint probe, which stops itself). A CRIU
//! killed during a probe leaves that child behind for good, and the child holds copies of every
//! fd CRIU had: the page channel of a migration (which then never closes, so the other side's
//! CRIU waits on it forever), the workload lock (so the workload looks supervised for ever),
//! a lazy-pages daemon's status pipe. Seen in migration's fault trials as orphan `criu
//! lazy-pages` and `criu page-server` processes and as a source whose dump never ended.
//!
//! The group is ended only while its leader is an unreaped zombie: the zombie keeps the group's
//! id from being reused, so the signal can only reach what CRIU itself left behind.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the command the leader of a new process group when it starts.
pub fn own_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

/// SIGKILLs what is left of the process group `leader` led. Call it only while `leader` is
/// our unreaped child (see the module's doc); a group already empty is not an error.
pub fn end_group(leader: i32) -> io::Result<()> {
    match nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Blocks until our child `pid` has exited, without reaping it (so [`end_group`] is safe
/// right after).
pub fn wait_exited(pid: i32) -> io::Result<()> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    loop {
        match waitid(
            Id::Pid(nix::unistd::Pid::from_raw(pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper a killed leader left in its group dies with the group; our own group is
    /// untouched.
    #[test]
    fn what_a_dead_leader_left_in_its_group_is_ended() {
        let mut c = Command::new("sh");
        // The leader starts a helper of its own (same group) and then dies.
        c.args(["-c", "sleep 1000 >/dev/null & echo $!; exit 3"])
            .stdout(std::process::Stdio::piped());
        own_group(&mut c);
        let mut child = c.spawn().unwrap();
        let leader = child.id() as i32;
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let helper: i32 = out.trim().parse().unwrap();
        wait_exited(leader).unwrap();
        assert!(std::path::Path::new(&format!("/proc/{helper}")).exists());
        end_group(leader).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3));
        // The helper was reparented away from us; wait until it is gone (or a zombie).
        let t0 = std::time::Instant::now();
        loop {
            let st = crate::sys::proc_state(helper);
            if matches!(st, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "the helper survived: {st:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
