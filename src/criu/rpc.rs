//! A dump, or a lazy restore, through CRIU's RPC mode (`criu swrk FD`) instead of its
//! command line.
//!
//! Why: with `--action-script`, CRIU forks and execs the script at every stage of a dump:
//! pre-dump, post-dump (inside the frozen window) and, for a job with its own network
//! namespace, network lock and unlock. Each costs CRIU a fork of itself plus an exec, about
//! 2 ms here, so 4 to 8 ms of a small job's 25 ms checkpoint. In RPC mode CRIU asks over its
//! socket instead (`notify_scripts`), and the monitor answers in microseconds.
//!
//! The options are the very ones of the command line: the request names a configuration file
//! that CRIU parses with its command-line parser (`config_file`, which overrides the request's
//! own settings), so one argv (see [`super::argv`]) serves both modes. Only the log level and
//! the pid travel in the request, as CRIU's RPC mode takes them from there.
//!
//! A lazy restore uses the mode for another reason: CRIU takes about 7 ms here to start (its
//! libraries and set-up) before it does anything, and `criu swrk` can do that while the
//! lazy-pages daemon, itself a CRIU starting up, gets ready to listen. The request goes once
//! it does (a restore connects to the daemon early on).
//!
//! The messages are CRIU's `rpc.proto` (criu_req, criu_resp, criu_notify). The few fields
//! stasis uses are written and read here by hand rather than through a protobuf code
//! generator: nine fields do not justify a build step.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// `criu_req_type`: DUMP.
const REQ_DUMP: u64 = 1;
/// `criu_req_type`: RESTORE.
const REQ_RESTORE: u64 = 2;
/// `criu_req_type`: NOTIFY (a stage CRIU reached; it waits for the answer).
const REQ_NOTIFY: u64 = 6;
/// The largest message CRIU sends stasis (a notify or a dump response with its error text).
const MAX_MSG: usize = 64 * 1024;

/// Errors of the RPC conversation.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(
        "criu option {option}: the value {value:?} cannot be written to a CRIU configuration file"
    )]
    Unrepresentable { option: String, value: String },
    #[error("criu argv: {0:?} is not an option")]
    NotAnOption(String),
    #[error("criu rpc: malformed message ({0})")]
    Malformed(&'static str),
    #[error("criu rpc: {0}")]
    Io(#[from] io::Error),
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_uint(b: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(b, field << 3);
    put_varint(b, v);
}

/// An `int32`: negative values are sign-extended to ten bytes, as protobuf does.
fn put_int32(b: &mut Vec<u8>, field: u64, v: i32) {
    put_uint(b, field, i64::from(v) as u64);
}

fn put_bytes(b: &mut Vec<u8>, field: u64, v: &[u8]) {
    put_varint(b, (field << 3) | 2);
    put_varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

/// A request: criu_req { type, opts = { images_dir_fd = -1 (the directory is in the
/// configuration file), pid (a dump's), log_level, notify_scripts (where the command line
/// would have run an action script), config_file } }.
fn request(kind: u64, pid: Option<i32>, log_level: u8, notify: bool, config: &str) -> Vec<u8> {
    let mut opts = Vec::new();
    put_int32(&mut opts, 1, -1);
    if let Some(pid) = pid {
        put_int32(&mut opts, 2, pid);
    }
    put_int32(&mut opts, 9, i32::from(log_level));
    if notify {
        put_uint(&mut opts, 12, 1);
    }
    put_bytes(&mut opts, 51, config.as_bytes());
    let mut req = Vec::new();
    put_uint(&mut req, 1, kind);
    put_bytes(&mut req, 2, &opts);
    req
}

/// The dump request for the tree of `pid`, its stages notified.
pub fn dump_request(pid: i32, log_level: u8, config_file: &str) -> Vec<u8> {
    request(REQ_DUMP, Some(pid), log_level, true, config_file)
}

/// The answer to a notification: criu_req { type = NOTIFY, notify_success }.
pub fn notify_reply(ok: bool) -> Vec<u8> {
    let mut req = Vec::new();
    put_uint(&mut req, 1, REQ_NOTIFY);
    put_uint(&mut req, 3, u64::from(ok));
    req
}

/// What stasis reads of a criu_resp.
#[derive(Debug, Default, PartialEq)]
pub struct Response {
    pub kind: u64,
    pub success: bool,
    /// A notification's stage (`notify.script`): "pre-dump", "post-dump", "network-lock"...
    pub script: Option<String>,
    pub errmsg: Option<String>,
}

fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, RpcError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or(RpcError::Malformed("truncated varint"))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(RpcError::Malformed("varint too long"))
}

/// Walks a message's fields: `f(field, Some(varint), None)` or `f(field, None, Some(bytes))`;
/// fixed-width fields are skipped.
fn fields(b: &[u8], mut f: impl FnMut(u64, Option<u64>, Option<&[u8]>)) -> Result<(), RpcError> {
    let mut at = 0;
    while at < b.len() {
        let key = get_varint(b, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => f(field, Some(get_varint(b, &mut at)?), None),
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(get_varint(b, &mut at)?)
                    .map_err(|_| RpcError::Malformed("length"))?;
                let end = at
                    .checked_add(len)
                    .filter(|e| *e <= b.len())
                    .ok_or(RpcError::Malformed("truncated field"))?;
                f(field, None, Some(&b[at..end]));
                at = end;
            }
            _ => return Err(RpcError::Malformed("unknown wire type")),
        }
    }
    if at > b.len() {
        return Err(RpcError::Malformed("truncated fixed field"));
    }
    Ok(())
}

pub fn parse_response(b: &[u8]) -> Result<Response, RpcError> {
    let mut r = Response::default();
    let mut notify: Option<Vec<u8>> = None;
    fields(b, |field, v, bytes| match (field, v, bytes) {
        (1, Some(v), _) => r.kind = v,
        (2, Some(v), _) => r.success = v != 0,
        (5, _, Some(n)) => notify = Some(n.to_vec()),
        (9, _, Some(s)) => r.errmsg = Some(String::from_utf8_lossy(s).into_owned()),
        _ => {}
    })?;
    if let Some(n) = notify {
        fields(&n, |field, _, bytes| {
            if let (1, Some(s)) = (field, bytes) {
                r.script = Some(String::from_utf8_lossy(s).into_owned());
            }
        })?;
    }
    Ok(r)
}

/// The configuration file for a dump's or a restore's argv (as [`super::DumpOpts::argv`] and
/// [`super::RestoreOpts::argv`] build them): one option per line, its value after a space, or
/// joined by `=` where the argv joined it (an optional argument, which CRIU's parser takes only
/// that way). The leading command and `-vN` are left out (the request carries the level), and
/// so is `--action-script`: in RPC mode CRIU would run it as well as notifying.
///
/// CRIU's parser of these files cuts a value at the first `#` (even in quotes), and a space in
/// a quoted value can make it refuse the line, or CRIU exit before it logs anything. So a value
/// with whitespace, `#`, a quote or a backslash, or an empty one, is an error, and the caller
/// uses the command line instead.
pub fn config_from_argv(argv: &[String]) -> Result<String, RpcError> {
    fn plain(name: &str, v: &str) -> Result<(), RpcError> {
        if v.is_empty() || v.contains(|c: char| c.is_whitespace() || "#\"\\".contains(c)) {
            return Err(RpcError::Unrepresentable {
                option: name.to_string(),
                value: v.to_string(),
            });
        }
        Ok(())
    }
    let mut out = String::new();
    let mut it = argv
        .iter()
        .skip_while(|a| *a == "dump" || *a == "restore")
        .peekable();
    while let Some(a) = it.next() {
        if a.starts_with("-v") && !a.starts_with("--") {
            continue;
        }
        let Some(name) = a.strip_prefix("--") else {
            return Err(RpcError::NotAnOption(a.clone()));
        };
        if let Some((n, v)) = name.split_once('=') {
            plain(n, v)?;
            out.push_str(name);
            out.push('\n');
            continue;
        }
        let value = it.next_if(|v| !v.starts_with('-'));
        if name == "action-script" {
            continue;
        }
        out.push_str(name);
        if let Some(v) = value {
            plain(name, v)?;
            out.push(' ');
            out.push_str(v);
        }
        out.push('\n');
    }
    Ok(out)
}

/// How a dump's or a restore's conversation ended.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// CRIU's answer to the request, if it got that far.
    pub success: Option<bool>,
    pub errmsg: Option<String>,
    /// The stages CRIU notified, in order.
    pub stages: Vec<String>,
    /// What the first failed stage said (its answer to CRIU was "failed").
    pub stage_error: Option<String>,
}

/// Sends `request` on `sock` and answers CRIU's notifications with `on_stage` until CRIU
/// answers the request or closes the socket (it died, or it is done).
pub fn converse(
    sock: &OwnedFd,
    request: &[u8],
    mut on_stage: impl FnMut(&str) -> Result<(), String>,
) -> Result<Outcome, RpcError> {
    crate::sys::send_with_fds(sock.as_fd(), request, &[], false)?;
    let mut out = Outcome::default();
    loop {
        // CRIU passes an fd only with stages stasis does not ask for; it is closed on drop.
        let (buf, _fds) = crate::sys::recv_datagram(sock.as_fd(), false, MAX_MSG)?;
        if buf.is_empty() {
            return Ok(out);
        }
        let r = parse_response(&buf)?;
        if r.kind != REQ_NOTIFY {
            out.success = Some(r.success);
            out.errmsg = r.errmsg;
            return Ok(out);
        }
        let stage = r.script.unwrap_or_default();
        let answer = on_stage(&stage);
        out.stages.push(stage);
        let ok = answer.is_ok();
        if let Err(e) = answer {
            out.stage_error.get_or_insert(e);
        }
        crate::sys::send_with_fds(sock.as_fd(), &notify_reply(ok), &[], false)?;
    }
}

/// Where CRIU finds its end of the socket (`criu swrk 89`).
pub const FD_IN_CRIU: i32 = 89;

/// What the caller keeps while CRIU runs in RPC mode.
pub struct Swrk {
    /// CRIU's end of the socket, to hand it at [`FD_IN_CRIU`]. The caller closes it once CRIU
    /// has exited: a CRIU that died without answering then ends the conversation.
    pub criu_end: OwnedFd,
    /// The configuration file, a memfd that CRIU opens through `/proc`; open until CRIU exits.
    pub config: OwnedFd,
}

/// stasis's side of the socket and its request, for a thread of its own.
pub struct Conversation {
    ours: OwnedFd,
    request: Vec<u8>,
}

impl Conversation {
    /// Runs the conversation (blocking), see [`converse`].
    pub fn run(
        self,
        on_stage: impl FnMut(&str) -> Result<(), String>,
    ) -> Result<Outcome, RpcError> {
        converse(&self.ours, &self.request, on_stage)
    }
}

/// CRIU's command line in RPC mode.
pub fn swrk_argv() -> Vec<String> {
    vec!["swrk".into(), FD_IN_CRIU.to_string()]
}

/// Prepares the dump or restore that `argv` (as [`super::DumpOpts::argv`] and
/// [`super::RestoreOpts::argv`] build them) describes: a dump's pid and the log level go into
/// the request, everything else into the configuration file. CRIU notifies its stages only
/// where the argv names an action script (which it then does not run).
pub fn prepare(argv: &[String]) -> Result<(Swrk, Conversation), RpcError> {
    use std::io::Write;
    let text = config_from_argv(argv)?;
    let (kind, pid) = match argv.first().map(String::as_str) {
        Some("dump") => {
            let tree = argv
                .iter()
                .position(|a| a == "--tree")
                .and_then(|i| argv.get(i + 1))
                .and_then(|p| p.parse::<i32>().ok())
                .ok_or(RpcError::Malformed("no --tree in the dump's argv"))?;
            (REQ_DUMP, Some(tree))
        }
        Some("restore") => (REQ_RESTORE, None),
        _ => return Err(RpcError::Malformed("neither a dump nor a restore")),
    };
    let notify = argv.iter().any(|a| a == "--action-script");
    let level = argv
        .iter()
        .find_map(|a| a.strip_prefix("-v").and_then(|l| l.parse::<u8>().ok()))
        .unwrap_or(2);
    let config =
        nix::sys::memfd::memfd_create(c"stasis-criu.conf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(io::Error::from)?;
    let mut f = std::fs::File::from(config);
    f.write_all(text.as_bytes())?;
    let config = OwnedFd::from(f);
    let path = format!("/proc/{}/fd/{}", std::process::id(), config.as_raw_fd());
    let (ours, criu_end) = crate::protocol::seqpacket_pair()?;
    Ok((
        Swrk { criu_end, config },
        Conversation {
            ours,
            request: request(kind, pid, level, notify, &path),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn a_dump_argv_becomes_a_config_file_without_command_level_or_script() {
        let c = config_from_argv(&args(
            "dump --tree 42 --images-dir /g/.tmp-3 --log-file /w/dump.log -v2 --external mnt[/sys]:m0 --leave-running --ghost-limit 4194304 --action-script /h --libdir /usr/lib/criu",
        ))
        .expect("config");
        assert_eq!(
            c,
            "tree 42\nimages-dir /g/.tmp-3\nlog-file /w/dump.log\nexternal mnt[/sys]:m0\nleave-running\nghost-limit 4194304\nlibdir /usr/lib/criu\n"
        );
        let optional =
            config_from_argv(&args("dump --manage-cgroups=soft --root /")).expect("config");
        assert_eq!(optional, "manage-cgroups=soft\nroot /\n");
    }

    /// The request `prepare` makes of `argv`: its type, and its options' varint fields.
    fn prepared(argv: &[String]) -> (u64, Vec<(u64, Option<u64>)>) {
        let (_swrk, talk) = prepare(argv).expect("prepare");
        let (mut kind, mut opts) = (0, vec![]);
        fields(&talk.request, |f, v, b| match (f, v, b) {
            (1, Some(v), _) => kind = v,
            (2, _, Some(o)) => opts = o.to_vec(),
            _ => {}
        })
        .expect("request");
        let mut seen = vec![];
        fields(&opts, |f, v, _| seen.push((f, v))).expect("opts");
        (kind, seen)
    }

    #[test]
    fn a_prepared_dump_carries_its_pid_and_level_in_the_request_and_the_rest_in_its_config() {
        let argv = args("dump --tree 7 --images-dir /g/3 --log-file /w/r.log -v4 --inherit-fd fd[5]:pipe:[77] --action-script /h --lazy-pages");
        let (kind, seen) = prepared(&argv);
        assert_eq!(kind, REQ_DUMP);
        assert!(seen.contains(&(2, Some(7))), "pid 7 in {seen:?}");
        assert!(seen.contains(&(9, Some(4))), "log level 4 in {seen:?}");
        assert!(seen.contains(&(12, Some(1))), "notify_scripts in {seen:?}");
        assert_eq!(
            config_from_argv(&argv).expect("config"),
            "tree 7\nimages-dir /g/3\nlog-file /w/r.log\ninherit-fd fd[5]:pipe:[77]\nlazy-pages\n"
        );
        assert!(prepare(&args("dump --images-dir /d")).is_err());
        assert!(prepare(&args("check --images-dir /d")).is_err());
    }

    #[test]
    fn a_prepared_restore_carries_no_pid_and_asks_no_stage_without_a_script() {
        let argv = args("restore --images-dir /g/3 --log-file /w/r.log -v2 --restore-detached --restore-sibling --pidfile /r/p --root / --manage-cgroups=soft --lazy-pages");
        let (kind, seen) = prepared(&argv);
        assert_eq!(kind, REQ_RESTORE);
        assert!(!seen.iter().any(|(f, _)| *f == 2), "a pid in {seen:?}");
        assert!(!seen.iter().any(|(f, _)| *f == 12), "notify in {seen:?}");
        assert!(seen.contains(&(9, Some(2))), "log level 2 in {seen:?}");
        assert_eq!(
            config_from_argv(&argv).expect("config"),
            "images-dir /g/3\nlog-file /w/r.log\nrestore-detached\nrestore-sibling\npidfile /r/p\nroot /\nmanage-cgroups=soft\nlazy-pages\n"
        );
        let (_, seen) = prepared(&args("restore --images-dir /g/3 --action-script /h"));
        assert!(seen.contains(&(12, Some(1))), "notify_scripts in {seen:?}");
    }

    #[test]
    fn a_value_criu_cannot_read_back_is_refused() {
        for v in ["/a\"b", "/a b", "/srv/a#b", "/a\\b", "/a\tb", "/a\nb", ""] {
            let bad = vec!["--images-dir".to_string(), v.to_string()];
            assert!(
                matches!(
                    config_from_argv(&bad),
                    Err(RpcError::Unrepresentable { .. })
                ),
                "{v:?}"
            );
        }
        assert!(matches!(
            config_from_argv(&["--manage-cgroups=so ft".to_string()]),
            Err(RpcError::Unrepresentable { .. })
        ));
        assert!(matches!(
            config_from_argv(&["stray".to_string()]),
            Err(RpcError::NotAnOption(_))
        ));
    }

    #[test]
    fn the_request_is_protobuf_as_criu_reads_it() {
        let r = dump_request(300, 2, "/c");
        // type = 1 (DUMP); opts: images_dir_fd = -1 as ten bytes, pid = 300, log_level = 2,
        // notify_scripts = 1, config_file = "/c".
        let mut want = vec![0x08, 0x01, 0x12, 23, 0x08];
        want.extend_from_slice(&[0xff; 9]);
        want.push(0x01);
        want.extend_from_slice(&[0x10, 0xac, 0x02, 0x48, 0x02, 0x60, 0x01]);
        want.extend_from_slice(&[0x9a, 0x03, 0x02, b'/', b'c']);
        assert_eq!(r, want);
        assert_eq!(notify_reply(true), vec![0x08, 0x06, 0x18, 0x01]);
        assert_eq!(notify_reply(false), vec![0x08, 0x06, 0x18, 0x00]);
    }

    fn notify(stage: &str) -> Vec<u8> {
        let mut n = Vec::new();
        put_bytes(&mut n, 1, stage.as_bytes());
        let mut m = Vec::new();
        put_uint(&mut m, 1, REQ_NOTIFY);
        put_uint(&mut m, 2, 1);
        put_bytes(&mut m, 5, &n);
        m
    }

    #[test]
    fn responses_are_read_and_unknown_fields_skipped() {
        let r = parse_response(&notify("post-dump")).expect("parse");
        assert_eq!(r.kind, REQ_NOTIFY);
        assert_eq!(r.script.as_deref(), Some("post-dump"));
        let mut m = Vec::new();
        put_uint(&mut m, 1, REQ_DUMP);
        put_uint(&mut m, 2, 0);
        put_bytes(&mut m, 3, &[0x08, 0x00]);
        put_int32(&mut m, 7, -5);
        m.extend_from_slice(&[0x65, 1, 2, 3, 4]); // a fixed32 field 12
        put_bytes(&mut m, 9, b"freeze timed out");
        let r = parse_response(&m).expect("parse");
        assert_eq!(
            r,
            Response {
                kind: REQ_DUMP,
                success: false,
                script: None,
                errmsg: Some("freeze timed out".into()),
            }
        );
        assert!(parse_response(&[0x0a, 0x05, 1]).is_err());
        assert!(parse_response(&[0x08]).is_err());
    }

    /// A stand-in for CRIU's side of the socket: stasis's half of the conversation.
    #[test]
    fn a_conversation_answers_each_stage_and_ends_with_the_dump_answer() {
        let (ours, theirs) = crate::protocol::seqpacket_pair().expect("pair");
        let peer = std::thread::spawn(move || {
            let (req, _) =
                crate::sys::recv_datagram(theirs.as_fd(), false, MAX_MSG).expect("request");
            assert_eq!(req, dump_request(7, 2, "/c"));
            let mut answers = vec![];
            for stage in ["pre-dump", "post-dump"] {
                crate::sys::send_with_fds(theirs.as_fd(), &notify(stage), &[], false)
                    .expect("notify");
                let (a, _) =
                    crate::sys::recv_datagram(theirs.as_fd(), false, MAX_MSG).expect("answer");
                answers.push(a);
            }
            let mut done = Vec::new();
            put_uint(&mut done, 1, REQ_DUMP);
            put_uint(&mut done, 2, 0);
            put_bytes(&mut done, 9, b"post-dump failed");
            crate::sys::send_with_fds(theirs.as_fd(), &done, &[], false).expect("done");
            answers
        });
        let out = converse(&ours, &dump_request(7, 2, "/c"), |s| match s {
            "post-dump" => Err("shm busy".into()),
            _ => Ok(()),
        })
        .expect("converse");
        let answers = peer.join().expect("peer");
        assert_eq!(answers, vec![notify_reply(true), notify_reply(false)]);
        assert_eq!(
            out,
            Outcome {
                success: Some(false),
                errmsg: Some("post-dump failed".into()),
                stages: vec!["pre-dump".into(), "post-dump".into()],
                stage_error: Some("shm busy".into()),
            }
        );
    }

    #[test]
    fn a_peer_that_closes_ends_the_conversation_without_an_answer() {
        let (ours, theirs) = crate::protocol::seqpacket_pair().expect("pair");
        drop(theirs);
        // The request itself fails (EPIPE) or the read sees the end: never a hang.
        match converse(&ours, &dump_request(7, 2, "/c"), |_| Ok(())) {
            Ok(o) => assert_eq!(o.success, None),
            Err(RpcError::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
