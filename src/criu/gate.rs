//! The action script's side of a gated CRIU run: at `post-dump` (a migration's dump: every
//! image written, the tree still frozen) and at `post-restore` (a migration's restore: the
//! tree restored, not yet resumed) the script tells the monitor it waits, and exits with the
//! monitor's verdict. CRIU treats a failing script as a failed run: a dump resumes the tree,
//! a restore kills what it restored. A monitor that dies meanwhile closes the socket, which
//! fails the run the same way: the safe direction in both cases.

use crate::protocol::migrate::GateMsg;
use std::os::fd::AsFd;
use std::path::Path;

/// Environment: the socket of the monitor gating this run.
pub const ENV_GATE: &str = "STASIS_GATE";

/// The stages a gate holds.
pub fn gated(action: &str) -> bool {
    matches!(action, "post-dump" | "post-restore")
}

/// At `post-resume`: tells the monitor at `sock` when the job resumed, and never fails (the
/// job runs already; a failing script would only make CRIU report an error).
pub fn resumed(sock: &Path) -> i32 {
    let msg = GateMsg::Resumed {
        mono_ns: crate::sys::monotonic_ns(),
    };
    let sent =
        crate::protocol::connect(sock).and_then(|c| crate::protocol::send(c.as_fd(), &msg, &[]));
    if let Err(e) = sent {
        eprintln!("stasis criu-hook: gate {}: {e}", sock.display());
    }
    0
}

/// Waits at `action` for the verdict of the monitor listening at `sock`; the script's exit
/// code (0: go on).
pub fn wait(sock: &Path, action: &str) -> i32 {
    let conn = match crate::protocol::connect(sock) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stasis criu-hook: gate {}: {e}", sock.display());
            return 1;
        }
    };
    let msg = GateMsg::Waiting {
        action: action.to_string(),
    };
    if let Err(e) = crate::protocol::send(conn.as_fd(), &msg, &[]) {
        eprintln!("stasis criu-hook: gate {}: {e}", sock.display());
        return 1;
    }
    match crate::protocol::recv::<GateMsg>(conn.as_fd()) {
        Ok(Some((GateMsg::Go, _))) => 0,
        Ok(Some((other, _))) => {
            eprintln!("stasis criu-hook: gate says {other:?} at {action}");
            1
        }
        Ok(None) => {
            eprintln!("stasis criu-hook: the monitor went away at {action}");
            1
        }
        Err(e) => {
            eprintln!("stasis criu-hook: gate {}: {e}", sock.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_passes_only_on_go() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.sock");
        for (verdict, want) in [(Some(GateMsg::Go), 0), (Some(GateMsg::Stop), 1), (None, 1)] {
            let l = crate::protocol::listen(&p).unwrap();
            let p2 = p.clone();
            let t = std::thread::spawn(move || wait(&p2, "post-dump"));
            let c = crate::sys::accept(l.as_fd(), false).unwrap();
            let (m, _) = crate::protocol::recv::<GateMsg>(c.as_fd())
                .unwrap()
                .unwrap();
            assert_eq!(
                m,
                GateMsg::Waiting {
                    action: "post-dump".into()
                }
            );
            if let Some(v) = verdict {
                crate::protocol::send(c.as_fd(), &v, &[]).unwrap();
            }
            drop(c);
            assert_eq!(t.join().unwrap(), want);
        }
        assert!(gated("post-restore") && !gated("pre-dump"));
    }

    #[test]
    fn post_resume_says_when_and_never_fails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.sock");
        assert_eq!(resumed(&p), 0, "nobody listening is no failure");
        let l = crate::protocol::listen(&p).unwrap();
        let before = crate::sys::monotonic_ns();
        assert_eq!(resumed(&p), 0);
        let c = crate::sys::accept(l.as_fd(), false).unwrap();
        let (m, _) = crate::protocol::recv::<GateMsg>(c.as_fd())
            .unwrap()
            .unwrap();
        let GateMsg::Resumed { mono_ns } = m else {
            panic!("{m:?}")
        };
        assert!(before <= mono_ns && mono_ns <= crate::sys::monotonic_ns());
    }
}
