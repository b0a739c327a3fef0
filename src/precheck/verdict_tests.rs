//! The verdict's rules, with made-up findings: every obstacle names its fix, and options
//! that fix one turn it into nothing or a note.

use super::*;
use crate::criu::options::CriuOptions;
use crate::precheck::findings::{Holder, Place};
use crate::precheck::host::{Check, CriuFacts};
use std::path::PathBuf;

fn at(fd: i32) -> Place {
    Place::new(42, "job", Holder::Fd(fd))
}

fn good_host() -> HostFacts {
    HostFacts {
        hostname: "here".into(),
        kernel: "6.18.0".into(),
        criu: Some(CriuFacts {
            version: "4.2.1".into(),
            check: Check {
                ok: true,
                detail: "Looks good".into(),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn opts(o: CriuOptions, largest_ghost: u64) -> Options {
    Options {
        flags: o.resolve(largest_ghost),
        ghost_limit_set: o.ghost_limit.is_some(),
    }
}

fn kinds(v: &[Line]) -> Vec<&str> {
    v.iter().map(|l| l.kind.as_str()).collect()
}

fn tcp(state: TcpState) -> Finding {
    Finding::Tcp {
        at: at(3),
        state,
        local: "127.0.0.1:40000".into(),
        remote: "127.0.0.1:8080".into(),
        backlog: 0,
    }
}

#[test]
fn established_tcp_needs_the_flag() {
    let f = [tcp(TcpState::Connected("established".into()))];
    let v = judge(&f, &opts(CriuOptions::default(), 0), &good_host());
    assert_eq!(kinds(&v.obstacles), vec!["tcp-established"]);
    assert!(v.obstacles[0].fix.contains("--tcp-established"));
    assert!(v.obstacles[0].fix.contains("criu.tcp_established"));
    assert_eq!(v.obstacles[0].at, "pid 42 (job) fd 3");
    let with = CriuOptions {
        tcp_established: Some(true),
        ..Default::default()
    };
    let v = judge(&f, &opts(with, 0), &good_host());
    assert!(v.obstacles.is_empty());
    assert_eq!(kinds(&v.notes), vec!["tcp-established"]);
    // listening and closed sockets are fine; a listener with unaccepted connections is not
    let quiet = [tcp(TcpState::Listen), tcp(TcpState::Closed)];
    assert_eq!(
        judge(&quiet, &opts(CriuOptions::default(), 0), &good_host()),
        Verdict::default()
    );
    let busy = [Finding::Tcp {
        at: at(3),
        state: TcpState::Listen,
        local: "0.0.0.0:8080".into(),
        remote: "0.0.0.0:0".into(),
        backlog: 2,
    }];
    let v = judge(&busy, &opts(CriuOptions::default(), 0), &good_host());
    assert_eq!(kinds(&v.obstacles), vec!["tcp-backlog"]);
}

#[test]
fn external_unix_sockets_follow_criu() {
    let sock = |kind, name: Option<&str>| Finding::UnixExternal {
        at: at(4),
        ino: 900,
        kind,
        peer: 901,
        peer_name: name.map(str::to_string),
    };
    let ext = CriuOptions {
        ext_unix_sk: Some(true),
        ..Default::default()
    };
    let plain = opts(CriuOptions::default(), 0);
    let flagged = opts(ext, 0);
    let dgram = [sock(UnixKind::Dgram, Some("/dev/log"))];
    let v = judge(&dgram, &plain, &good_host());
    assert!(v.obstacles[0].fix.contains("--ext-unix-sk"));
    let v = judge(&dgram, &flagged, &good_host());
    assert!(v.obstacles.is_empty() && v.notes.len() == 1);
    // a stream connection is refused even with --ext-unix-sk
    let stream = [sock(UnixKind::Stream, Some("/run/x.sock"))];
    let v = judge(&stream, &flagged, &good_host());
    assert_eq!(kinds(&v.obstacles), vec!["unix-external"]);
    assert!(v.obstacles[0].fix.starts_with(NOTHING));
    // unless it is declared external by inode
    let declared = CriuOptions {
        external: vec!["unix[900]".into()],
        ..Default::default()
    };
    assert!(judge(&stream, &opts(declared, 0), &good_host())
        .obstacles
        .is_empty());
}

#[test]
fn ghosts_compare_with_the_limit_the_dump_would_use() {
    let ghost = |bytes, holder| Finding::Deleted {
        at: Place::new(42, "job", holder),
        path: PathBuf::from("/data/big"),
        bytes,
        linked: false,
    };
    // held open: the automatic limit grows with it
    let f = [ghost(6 << 20, Holder::Fd(5))];
    assert!(
        judge(&f, &opts(CriuOptions::default(), 6 << 20), &good_host())
            .obstacles
            .is_empty()
    );
    // mapped only: the automatic limit stays at 1 MiB
    let f = [ghost(6 << 20, Holder::Exe)];
    let v = judge(&f, &opts(CriuOptions::default(), 0), &good_host());
    assert_eq!(kinds(&v.obstacles), vec!["ghost-limit"]);
    assert!(v.obstacles[0].fix.contains("--ghost-limit 6M"));
    assert!(v.obstacles[0].fix.contains("counts only files held open"));
    // an explicit limit below the file
    let low = CriuOptions {
        ghost_limit: Some(crate::spec::ByteSize(1 << 20)),
        ..Default::default()
    };
    let f = [ghost(8 << 20, Holder::Fd(5))];
    let v = judge(&f, &opts(low, 8 << 20), &good_host());
    assert!(!v.obstacles[0].fix.contains("counts only"));
    // unlinked with other names left: needs --link-remap, which is the default
    let linked = [Finding::Deleted {
        at: at(6),
        path: "/data/a".into(),
        bytes: 10,
        linked: true,
    }];
    assert!(
        judge(&linked, &opts(CriuOptions::default(), 0), &good_host())
            .obstacles
            .is_empty()
    );
    let no = CriuOptions {
        link_remap: Some(false),
        ..Default::default()
    };
    let v = judge(&linked, &opts(no, 0), &good_host());
    assert_eq!(kinds(&v.obstacles), vec!["link-remap"]);
}

#[test]
fn locks_matter_only_without_file_locks() {
    let f = [Finding::FileLock {
        at: at(7),
        path: "/var/db".into(),
    }];
    assert!(judge(&f, &opts(CriuOptions::default(), 0), &good_host())
        .obstacles
        .is_empty());
    let off = CriuOptions {
        file_locks: Some(false),
        ..Default::default()
    };
    let v = judge(&f, &opts(off, 0), &good_host());
    assert!(v.obstacles[0].fix.contains("--file-locks"));
}

#[test]
fn a_gpu_job_needs_the_plugin() {
    let no_plugin = [Finding::Gpu(Gpu::NoPlugin {
        user: "pid 7 holds /dev/nvidia0".into(),
        why: "CRIU's cuda plugin (cuda_plugin.so) is not installed".into(),
    })];
    let v = judge(&no_plugin, &opts(CriuOptions::default(), 0), &good_host());
    assert_eq!(kinds(&v.obstacles), vec!["gpu-plugin"]);
    assert!(v.obstacles[0].fix.contains("scripts/install-criu.sh"));
    assert!(v.obstacles[0].problem.contains("/dev/nvidia0"));
    let ready = [Finding::Gpu(Gpu::Ready {
        user: "pid 7 holds /dev/nvidia0".into(),
        detail: "1 x NVIDIA H100 80GB HBM3".into(),
    })];
    let v = judge(&ready, &opts(CriuOptions::default(), 0), &good_host());
    assert!(v.obstacles.is_empty());
    assert!(v.notes[0].fix.contains("H100"));
}

#[test]
fn every_refusal_has_a_fix_line() {
    let p = PathBuf::from("/x");
    let all = vec![
        Finding::NetlinkQueued {
            at: at(1),
            protocol: 0,
            bytes: 10,
        },
        Finding::SocketFamily {
            at: at(2),
            proto: "AF_VSOCK".into(),
        },
        Finding::SocketElsewhere { at: at(3), ino: 5 },
        Finding::UnsupportedFile {
            at: at(4),
            what: "anon_inode:[io_uring]".into(),
        },
        Finding::UnsupportedFile {
            at: at(5),
            what: "anon_inode:[userfaultfd]".into(),
        },
        Finding::PidfdOutside {
            at: at(6),
            target: 1,
        },
        Finding::PidfdThread { at: at(7) },
        Finding::PathReused {
            at: at(8),
            path: p.clone(),
        },
        Finding::MountGone {
            at: at(9),
            path: p.clone(),
            mount: "/mnt".into(),
        },
        Finding::MountUnknown {
            at: at(10),
            path: p.clone(),
            mnt_id: 9,
        },
        Finding::MountCovered {
            at: at(11),
            path: p.clone(),
            mount: "/mnt".into(),
        },
        Finding::MountName {
            at: at(12),
            mount: "/a:b".into(),
        },
        Finding::Device {
            at: at(13),
            path: "/dev/fuse".into(),
            major: 10,
            minor: 229,
        },
        Finding::Mapping {
            at: at(14),
            what: "device /dev/fb0".into(),
        },
        Finding::Uprobes { at: at(15) },
        Finding::ForeignTty {
            at: at(16),
            path: "/dev/pts/3".into(),
            why: "x".into(),
        },
        Finding::Traced {
            at: at(17),
            tracer: 9,
        },
        Finding::NestedNamespace {
            at: at(18),
            kind: "pid".into(),
        },
        Finding::SessionOutside { at: at(19), sid: 3 },
        Finding::Gpu(Gpu::Driver {
            user: "pid 1".into(),
            why: "too old".into(),
        }),
    ];
    let v = judge(&all, &opts(CriuOptions::default(), 0), &good_host());
    assert_eq!(v.obstacles.len(), all.len());
    let k = kinds(&v.obstacles);
    assert!(k.contains(&"io-uring") && k.contains(&"pidfd-outside") && k.contains(&"foreign-tty"));
    assert!(v
        .obstacles
        .iter()
        .all(|l| !l.fix.is_empty() && !l.problem.is_empty()));
}

#[test]
fn one_file_held_twice_is_one_line() {
    let f = |pid| Finding::MountGone {
        at: Place::new(pid, "sh", Holder::Fd(7)),
        path: "/data/f".into(),
        mount: "/data".into(),
    };
    let v = judge(
        &[f(1), f(2)],
        &opts(CriuOptions::default(), 0),
        &good_host(),
    );
    assert_eq!(v.obstacles.len(), 1);
    assert_eq!(v.obstacles[0].at, "pid 1 (sh) fd 7, pid 2 (sh) fd 7");
}

#[test]
fn the_host_can_be_the_obstacle() {
    let mut h = good_host();
    h.criu = None;
    h.criu_error = Some("criu not found".into());
    let v = judge(&[], &opts(CriuOptions::default(), 0), &h);
    assert_eq!(kinds(&v.obstacles), vec!["criu"]);
    let mut old = good_host();
    if let Some(c) = old.criu.as_mut() {
        c.version = "4.1.1".into();
    }
    let f = [tcp(TcpState::Listen)];
    let v = judge(&f, &opts(CriuOptions::default(), 0), &old);
    assert_eq!(kinds(&v.obstacles), vec!["criu-tcp"]);
    assert!(judge(&[], &opts(CriuOptions::default(), 0), &old)
        .obstacles
        .is_empty());
}

#[test]
fn a_run_that_is_not_tmpfs_is_a_note_never_an_obstacle() {
    let o = opts(CriuOptions::default(), 0);
    let mut h = good_host();
    assert!(judge(&[], &o, &h).notes.is_empty());
    h.run_tmpfs = Some(true);
    assert!(judge(&[], &o, &h).notes.is_empty());
    h.run_tmpfs = Some(false);
    let v = judge(&[], &o, &h);
    assert!(v.obstacles.is_empty());
    assert_eq!(kinds(&v.notes), vec!["run-not-tmpfs"]);
    assert!(v.notes[0].fix.contains("tmpfs on /run"));
    assert_eq!(v.notes[0].at, "host here");
}
