//! CRIU runs in its RPC mode (see [`crate::criu::rpc`]): a checkpoint's dump, and a lazy
//! restore. CRIU notifies each stage of a dump over its socket and waits for the answer,
//! which [`crate::criu::hook::answer`] gives here, in a thread of the monitor: the post-dump
//! work while the tree is frozen. The action script that CRIU would fork and exec at every
//! stage is then not needed. A lazy restore's request waits for its gate (the lazy-pages
//! daemon listening) while CRIU starts up.
//!
//! A migration's gated dump and restore were run this way too, and it took 20 to 30 ms off
//! post-copy's downtime. A migration
//! still runs CRIU through the command line, though: so run, a post-copy move of
//! tests/migrate.rs hung in 2 of 13 runs of the suite (the source's monitor stopped answering),
//! and the cause is not found yet.

use super::{diag, Monitor};
use crate::criu::{self, Criu};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl Monitor {
    /// Runs the dump or restore that `argv` describes, with `fds` and `env` for CRIU (and
    /// `env` for the stages' answers too), the workload lock handed on, as
    /// [`Self::run_criu_bounded`]. CRIU starts at once; its request goes when `gate` is
    /// passed, and if the gate fails CRIU is sent nothing (it exits) and its error is this
    /// run's. An argv that CRIU's configuration file cannot carry (or a thread that cannot be
    /// had) runs through the command line after the gate, where its `--action-script`, if
    /// any, answers the stages instead.
    pub(crate) async fn run_criu_rpc(
        &self,
        criu: &Criu,
        argv: &[String],
        fds: &[(i32, i32)],
        env: &[(String, String)],
        deadline: Option<Duration>,
        gate: impl std::future::Future<Output = Result<(), String>>,
    ) -> Result<(), String> {
        let cli = || self.run_criu_bounded(criu, argv, fds, Some(env), true, deadline);
        let (swrk, talk) = match criu::rpc::prepare(argv) {
            Ok(p) => p,
            Err(e) => {
                diag(&format!("criu through its command line: {e}"));
                gate.await?;
                return cli().await;
            }
        };
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        // Set once CRIU failed: a post-dump stage still at work then must not mark the images
        // complete (the monitor has already judged them, and a retry may reuse the directory).
        let abandoned = Arc::new(Mutex::new(false));
        let gone = abandoned.clone();
        // A thread of its own, not tokio's blocking pool: a CRIU that dies while a stage
        // waits at a migration's gate leaves that stage waiting for the verdict, as its
        // action script would, and nothing must wait for it (the runtime's shutdown would).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("criu-rpc".into())
            .spawn(move || {
                // A gate that failed (or a caller gone) sends nothing: dropping our end of
                // the socket makes CRIU exit.
                if !go_rx.recv().unwrap_or(false) {
                    return;
                }
                let mark = |dir: &Path| {
                    let gone = gone.lock().map_err(|_| "a poisoned lock".to_string())?;
                    if *gone {
                        return Err("CRIU ended before its post-dump stage was answered".into());
                    }
                    criu::hook::mark_complete(dir)
                };
                let out =
                    talk.run(|stage| criu::hook::answer(stage, |k| vars.get(k).cloned(), &mark));
                let _ = tx.send(out);
            });
        if let Err(e) = spawned {
            diag(&format!(
                "criu through its command line: a thread for its rpc: {e}"
            ));
            gate.await?;
            return cli().await;
        }
        let mut all = fds.to_vec();
        all.push((swrk.criu_end.as_raw_fd(), criu::rpc::FD_IN_CRIU));
        let opened = async {
            let r = gate.await;
            let _ = go_tx.send(r.is_ok());
            r
        };
        let swrk_argv = criu::rpc::swrk_argv();
        let (ran, opened) = tokio::join!(
            self.run_criu_bounded(criu, &swrk_argv, &all, Some(env), true, deadline),
            opened
        );
        opened?;
        // CRIU is gone: a conversation still waiting for its answer now reads the end.
        drop(swrk);
        if ran.is_err() {
            match abandoned.lock() {
                Ok(mut g) => *g = true,
                Err(e) => *e.into_inner() = true,
            }
        }
        // A CRIU that succeeded answered the request before it exited, so the conversation
        // ends now. After a failure its words only add to the log, and a stage may still be
        // held at a gate: waited for briefly, for the diagnostics alone.
        let said = match &ran {
            Ok(()) => rx.await.ok(),
            Err(_) => tokio::time::timeout(Duration::from_millis(100), rx)
                .await
                .ok()
                .and_then(Result::ok),
        };
        match said {
            Some(Ok(out)) => {
                if let Some(e) = &out.stage_error {
                    diag(&format!("criu {}: {e}", argv[0]));
                }
                if let (Err(_), Some(m)) = (&ran, &out.errmsg) {
                    diag(&format!("criu {}: {m}", argv[0]));
                }
            }
            Some(Err(e)) => diag(&format!("criu {}: {e}", argv[0])),
            None => {}
        }
        ran
    }
}
