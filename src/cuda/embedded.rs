//! Runs the embedded driver helper (src/cuda/helper.rs, built by build.rs) from a memfd, so
//! stasis stays one self-contained file: nothing is installed next to it, and the helper always
//! matches the binary that runs it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

/// The helper program, a dynamically linked executable.
static HELPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cuda-checkpoint-helper"));

/// `MFD_EXEC` (Linux 6.3): asks for an executable memfd even where `vm.memfd_noexec` makes
/// memfds non-executable by default. Older kernels reject the flag, and are retried without it.
const MFD_EXEC: libc::c_uint = 0x10;

fn memfd() -> io::Result<OwnedFd> {
    let name = c"cuda-checkpoint";
    for flags in [libc::MFD_CLOEXEC | MFD_EXEC, libc::MFD_CLOEXEC] {
        // SAFETY: a valid NUL-terminated name and plain flags.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a fresh fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// The helper, ready to run: a command to complete (environment, stdio) and spawn.
pub struct HelperCommand {
    /// The command: `argv[0]` `cuda-checkpoint`, the arguments given, stdin from /dev/null, and
    /// this process's environment (LD_LIBRARY_PATH is how a host, or a test, says where
    /// libcuda.so.1 is).
    pub cmd: Command,
    /// Keeps the memfd alive until the command has run.
    _exe: File,
}

/// Prepares a run of the helper with `args`.
pub fn command(args: &[String]) -> io::Result<HelperCommand> {
    let mut file = File::from(memfd()?);
    file.write_all(HELPER)?;
    // execve refuses a file that is open for writing (ETXTBSY): keep only a read-only
    // descriptor of the memfd.
    let ro = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    drop(file);
    let mut cmd = Command::new(format!("/proc/self/fd/{}", ro.as_raw_fd()));
    cmd.arg0("cuda-checkpoint").args(args).stdin(Stdio::null());
    Ok(HelperCommand { cmd, _exe: ro })
}

/// Runs the helper with `args` and returns its output.
pub fn run(args: &[String]) -> io::Result<Output> {
    command(args)?.cmd.output()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_helper_is_a_dynamically_linked_elf() {
        let h = super::HELPER;
        assert_eq!(&h[..4], b"\x7fELF");
        // A dynamic executable names its loader in PT_INTERP.
        let interp = b"/lib64/ld-linux-x86-64.so.2";
        assert!(h.windows(interp.len()).any(|w| w == interp));
    }

    #[test]
    fn runs_from_a_memfd() {
        // Without a valid operation the helper prints its usage and exits 2 before loading
        // anything, which shows it started.
        let out = super::run(&["bogus".into()]).unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: helper"));
    }
}
