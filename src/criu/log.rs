//! Reading a failed CRIU run's log: the lines that say why, in plain words where we know
//! better ones.

use std::fs;
use std::path::Path;

/// Lines of every CRIU run that are not problems (root without CAP_SYS_RESOURCE here).
pub(crate) fn is_noise(line: &str) -> bool {
    line.contains("RLIMIT_NOFILE")
}

/// The lines of a CRIU log that say why it failed, without CRIU's timestamps and source
/// locations. Where a line names a cause we know, only the known causes are kept, in plain
/// words: CRIU's follow-on lines ("Can't sent fd", "Restoring FAILED") only repeat that it
/// failed. Otherwise the first lines (CRIU logs the root cause first), at most four.
pub fn failure_reasons(log: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut known: Vec<String> = Vec::new();
    for line in text
        .lines()
        .filter(|l| (l.contains("Error (") || l.contains("Timeout reached")) && !is_noise(l))
    {
        let msg = line
            .find("): ")
            .map(|i| line[i + 3..].trim())
            .unwrap_or(line)
            .to_string();
        if let Some(e) = explain(&msg) {
            if !known.contains(&e) {
                known.push(e);
            }
        } else if !out.contains(&msg) {
            out.push(msg);
        }
    }
    if !known.is_empty() {
        return known;
    }
    if out.is_empty() {
        // No error logged (CRIU killed, say): the last line, unless it is only a warning,
        // which never says why a run failed.
        match text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !is_noise(l))
        {
            Some(last) if !is_warning(last) => out.push(last.trim().to_string()),
            _ => out.push("its log names no error".to_string()),
        }
    }
    // CRIU logs the root cause first and the consequences after it.
    out.truncate(4);
    out
}

/// CRIU's warning lines: "(00.012) Warn  (criu/file.c:12): ...".
fn is_warning(line: &str) -> bool {
    line.split_once(") ")
        .is_some_and(|(_, rest)| rest.trim_start().starts_with("Warn "))
}

/// Plain words for the CRIU failures users meet most.
fn explain(msg: &str) -> Option<String> {
    if let Some(rest) = msg
        .strip_prefix("File ")
        .filter(|_| msg.contains("has bad size"))
    {
        // CRIU prints paths relative to the container's root: give them their `/` back.
        let file = rest.split(" has bad size").next().unwrap_or(rest);
        let slash = if file.starts_with('/') { "" } else { "/" };
        return Some(format!(
            "file {slash}{file} changed size since the checkpoint (it must be the same at restore)"
        ));
    }
    if msg.starts_with("Timeout reached") || msg.starts_with("Unable to freeze cgroup") {
        return Some(
            "CRIU could not freeze the job's tasks within its freeze timeout (a loaded host, or very many threads); raise it with `checkpoint --freeze-timeout 60s` or `criu: {freeze_timeout: 60s}` in the spec".into(),
        );
    }
    if msg.contains("Can't lookup mount") {
        return Some(format!(
            "{msg} (the workload holds a file outside the container's mounts)"
        ));
    }
    if msg.contains("Can't fork for") && msg.contains("File exists") {
        return Some(format!("{msg} (a pid the workload needs is taken)"));
    }
    if msg.contains("External socket is used")
        || msg.contains("Can't dump half of stream unix connection")
    {
        return Some(format!(
            "{msg} (the workload holds a unix socket connected outside the container)"
        ));
    }
    None
}

/// True when the log says a write failed for lack of space.
pub fn log_says_no_space(log: &Path) -> bool {
    fs::read_to_string(log)
        .map(|t| t.contains("No space left on device") || t.contains("ENOSPC"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `failure_reasons` of a log holding `text`.
    fn reasons_of(text: &str) -> Vec<String> {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("criu.log");
        fs::write(&log, text).unwrap();
        failure_reasons(&log)
    }

    #[test]
    fn reasons_drop_noise_and_explain() {
        let text = "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.02) Info  something\n\
             (00.03) Error (criu/files-reg.c:2192): File /tmp/data.bin has bad size 10 (expect 20)\n\
             (00.04) Error (criu/cr-restore.c:2320): Restoring FAILED.\n";
        let r = reasons_of(text);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("/tmp/data.bin changed size since the checkpoint"),
            "{r:?}"
        );
    }

    /// A run killed before it logged an error: a warning is not given as the reason.
    #[test]
    fn a_log_without_errors_never_blames_a_warning() {
        let text = "(00.01) Warn  (criu/cr-restore.c:1050): Set CLONE_PARENT | CLONE_NEWPID but it might cause restore problem\n";
        assert_eq!(reasons_of(text), vec!["its log names no error"]);
        assert_eq!(reasons_of(""), vec!["its log names no error"]);
        assert_eq!(
            reasons_of("(00.01) Unfreezing tasks into 1\n"),
            vec!["(00.01) Unfreezing tasks into 1"]
        );
    }

    /// Issue 8: a relative path gets its `/`, and CRIU's follow-on lines go.
    #[test]
    fn a_changed_file_is_named_whole_and_alone() {
        let text =
            "(00.03) Error (criu/files-reg.c:2175): File tmp/ccX.s has bad size 10 (expect 20)\n\
             (00.03) Error (criu/files.c:1104): Can't sent fd 1 to 7\n\
             (00.04) Error (criu/cr-restore.c:2320): Restoring FAILED.\n";
        assert_eq!(
            reasons_of(text),
            ["file /tmp/ccX.s changed size since the checkpoint (it must be the same at restore)"]
        );
    }

    /// Issue 8: the freeze timeout says what happened and what to raise.
    #[test]
    fn a_freeze_timeout_is_explained() {
        let text = "(10.00) Error (criu/cr-dump.c:1655): Timeout reached. Try to interrupt: 0\n\
             (10.01) Error (criu/seize.c:635): Unable to freeze cgroup /sys/fs/cgroup/freezer/x (99 x 100ms attempts, timeout: 10s)\n";
        let r = reasons_of(text);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("--freeze-timeout") && r[0].contains("freeze_timeout"),
            "{r:?}"
        );
    }
}
