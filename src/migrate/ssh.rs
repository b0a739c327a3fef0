//! The ssh client: stasis reaches the target as the user does, with the user's ssh (its
//! configuration, keys and agent), never a transport of its own. Each channel is one `ssh`
//! process whose stdin and stdout are both one end of a socketpair: the control channel runs
//! `stasis __migrate-target` there, the page channel `stasis __migrate-pages`, and CRIU on
//! this side gets the other end of the page channel's socketpair as its page-server socket.
//!
//! ssh's own failures (exit 255: unknown host, refused key, no route) and a missing stasis
//! on the other side (127) become one line each.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Environment: the ssh command line to use (like git's `GIT_SSH_COMMAND`).
pub const ENV_SSH: &str = "STASIS_SSH_COMMAND";

/// How to run ssh.
#[derive(Debug, Clone)]
pub struct Ssh {
    argv: Vec<String>,
}

impl Ssh {
    /// `cmd` (a command line, split on whitespace), else `STASIS_SSH_COMMAND`, else `ssh`;
    /// always non-interactive: a prompt would hang a migration with the job frozen.
    pub fn new(cmd: Option<&str>) -> Ssh {
        let line = cmd
            .map(str::to_string)
            .or_else(|| std::env::var(ENV_SSH).ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| "ssh".into());
        Ssh::from_line(&line)
    }

    fn from_line(line: &str) -> Ssh {
        let mut argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        // A path to the target that goes silent (a black-holed network) must end the
        // channel, which rolls the migration back: without keepalives ssh waits on TCP's
        // retransmissions, a quarter of an hour, while the job sits frozen on the source.
        // 60 s of silence ends it. ssh keeps the first value it gets for an option, so the
        // user's own `-o` in the command line wins.
        for o in [
            "BatchMode=yes",
            "ServerAliveInterval=10",
            "ServerAliveCountMax=6",
        ] {
            argv.extend(["-o".into(), o.into()]);
        }
        Ssh { argv }
    }

    /// The command line that runs `remote` (words, quoted for the remote shell) on `dest`.
    pub fn command_line(&self, dest: &str, remote: &[String]) -> Vec<String> {
        let mut a = self.argv.clone();
        a.extend(["-T".into(), "--".into(), dest.to_string()]);
        a.push(
            remote
                .iter()
                .map(|w| quote(w))
                .collect::<Vec<_>>()
                .join(" "),
        );
        a
    }

    /// Starts `remote` on `dest`; the channel's socket is ssh's stdin and stdout.
    pub fn open(&self, dest: &str, remote: &[String]) -> std::io::Result<Channel> {
        let (ours, theirs) = UnixStream::pair()?;
        let argv = self.command_line(dest, remote);
        let out: OwnedFd = theirs.try_clone()?.into();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(out))
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut e) = child.stderr.take() {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                if let Ok(mut b) = buf.lock() {
                    b.push_str(&s);
                }
            });
        }
        Ok(Channel {
            sock: ours,
            child,
            stderr,
            dest: dest.to_string(),
        })
    }
}

/// Quotes a word for a POSIX shell.
pub fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\\''"))
}

/// One ssh channel.
pub struct Channel {
    /// Our end: what we write reaches the remote command's stdin, its stdout comes back.
    pub sock: UnixStream,
    child: Child,
    stderr: Arc<Mutex<String>>,
    dest: String,
}

impl Channel {
    /// The pid of the ssh process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why the channel ended, in one line: ssh's own error, a missing remote stasis, or the
    /// remote command's last words.
    pub fn why_closed(&mut self) -> String {
        let st = self.wait_briefly();
        // The stderr reader ends with ssh; give it a moment to take the last line.
        for _ in 0..50 {
            if Arc::strong_count(&self.stderr) == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let err = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        classify(&self.dest, st.and_then(|s| s.code()), &err)
    }

    fn wait_briefly(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..300 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    /// Ends the channel: closes our end, ends ssh (ours, by pid) and reaps it.
    pub fn close(mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if self.wait_briefly().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One line for a channel that closed: `code` is ssh's exit status, `stderr` what it said.
pub fn classify(dest: &str, code: Option<i32>, stderr: &str) -> String {
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .trim_start_matches("stasis: ")
        .to_string();
    match code {
        Some(255) if last.is_empty() => format!("ssh to {dest} failed"),
        Some(255) => format!("ssh to {dest} failed: {last}"),
        Some(127) => format!(
            "stasis is not installed on {dest} (or not on the PATH of its ssh sessions; see --remote-stasis)"
        ),
        _ if last.contains("unrecognized subcommand") || last.contains("unexpected argument") => {
            format!("the stasis on {dest} is too old for migration (it does not know `__migrate-target`)")
        }
        _ if last.is_empty() => format!("{dest} closed the connection"),
        _ => format!("{dest}: {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_words_are_quoted() {
        assert_eq!(quote("/usr/bin/stasis"), "/usr/bin/stasis");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        let s = Ssh {
            argv: vec!["ssh".into(), "-F".into(), "cfg".into()],
        };
        let a = s.command_line("h", &["stasis".into(), "--root".into(), "/x y".into()]);
        assert_eq!(a[a.len() - 1], "stasis --root '/x y'");
        assert_eq!(a[a.len() - 2], "h");
    }

    #[test]
    fn a_silent_path_ends_the_channel_unless_the_user_says_otherwise() {
        let a = Ssh::from_line("ssh -o ServerAliveInterval=1")
            .argv
            .join(" ");
        assert!(a.starts_with("ssh -o ServerAliveInterval=1 "), "{a}");
        for o in [
            "BatchMode=yes",
            "ServerAliveInterval=10",
            "ServerAliveCountMax=6",
        ] {
            assert!(a.contains(&format!("-o {o}")), "{o} missing in {a}");
        }
    }

    #[test]
    fn failures_read_as_one_line() {
        let e = classify(
            "nowhere",
            Some(255),
            "ssh: Could not resolve hostname nowhere: Name or service not known\n",
        );
        assert_eq!(
            e,
            "ssh to nowhere failed: ssh: Could not resolve hostname nowhere: Name or service not known"
        );
        assert!(
            classify("h", Some(255), "root@h: Permission denied (publickey).\n")
                .contains("Permission denied")
        );
        assert!(classify("h", Some(127), "sh: 1: stasis: not found\n").contains("not installed"));
        assert!(classify(
            "h",
            Some(125),
            "error: unrecognized subcommand '__migrate-target'\n"
        )
        .contains("too old"));
        assert_eq!(classify("h", Some(0), ""), "h closed the connection");
    }
}
