//! A checkpoint's `criu dump` in CRIU's RPC mode (see [`crate::criu::rpc`]). CRIU notifies each
//! stage over its socket and waits for the answer; the post-dump work
//! ([`crate::criu::hook::post_dump`]) runs here, in a thread of the monitor, while the tree is
//! frozen. The action script that CRIU would fork and exec at every stage is then not needed.

use super::{diag, Monitor};
use crate::criu::{self, Criu};
use std::collections::HashMap;
use std::os::fd::AsRawFd;

impl Monitor {
    /// Runs the dump that `argv` describes (with `env` for CRIU and for the post-dump work);
    /// as [`Self::run_criu`] (the workload lock goes to CRIU too). An argv that CRIU's
    /// configuration file cannot carry runs through the command line, with the action script.
    pub(crate) async fn run_criu_dump(
        &self,
        criu: &Criu,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(), String> {
        let (swrk, talk) = match criu::rpc::prepare(argv) {
            Ok(p) => p,
            Err(e) => {
                diag(&format!("criu dump through its command line: {e}"));
                return self.run_criu(criu, argv, &[], Some(env), true).await;
            }
        };
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let talk = tokio::task::spawn_blocking(move || {
            talk.run(|stage| match stage {
                "post-dump" => criu::hook::post_dump(|k| vars.get(k).cloned()),
                _ => Ok(()),
            })
        });
        let fds = [(swrk.criu_end.as_raw_fd(), criu::rpc::FD_IN_CRIU)];
        let ran = self
            .run_criu(criu, &criu::rpc::swrk_argv(), &fds, Some(env), true)
            .await;
        // CRIU is gone: a conversation still waiting for its answer now reads the end.
        drop(swrk);
        match talk.await {
            Ok(Ok(out)) => {
                if let Some(e) = &out.stage_error {
                    diag(&format!("criu dump: the post-dump work failed: {e}"));
                }
                if let (Err(_), Some(m)) = (&ran, &out.errmsg) {
                    diag(&format!("criu dump: {m}"));
                }
            }
            Ok(Err(e)) => diag(&format!("criu dump: {e}")),
            Err(e) => diag(&format!("criu dump: the rpc thread: {e}")),
        }
        ran
    }
}
