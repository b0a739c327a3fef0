//! Post-copy and streaming pieces of CRIU: `criu lazy-pages` (the daemon that fills a
//! restored job's memory on fault and in the background through userfaultfd, from local
//! images or from a remote page server), `criu page-server` (which receives a dump's pages
//! and writes them as images), the features they need, and the userfaultfds a lazy-pages
//! daemon holds.
//!
//! Every page channel is handed to CRIU as an already connected socket (`--ps-socket FD`):
//! stasis chooses how the bytes travel (an ssh channel between hosts), CRIU never opens a
//! port.

use std::path::{Path, PathBuf};

/// Where CRIU finds the page channel (an fd number above CRIU's own and below its service fds).
pub const PS_SOCKET_FD: i32 = 91;
/// `--status-fd` of a lazy-pages daemon: it writes a byte and closes it once it listens.
pub const STATUS_FD: i32 = 92;

/// `criu check --feature` names: userfaultfd for post-copy, dirty tracking for pre-copy.
pub const FEATURE_UFFD: &str = "uffd-noncoop";
pub const FEATURE_DIRTY: &str = "mem_dirty_track";

/// The oldest CRIU a migration works with (its TCP dumps on current kernels, its lazy pages).
pub const MIN_VERSION: (u32, u32) = (4, 2);

/// The pipe size CRIU's lazy page server asks for (`PIPE_MAX_SIZE` pages of 4 KiB: 819).
pub const LAZY_DUMP_PIPE: u64 = 819 * 4096;

/// Whether a lazy dump can serve its pages here. CRIU's page server tees each requested
/// range through a pipe it grows to [`LAZY_DUMP_PIPE`] bytes; without `CAP_SYS_RESOURCE`
/// that fails above `fs.pipe-max-size` (1 MiB by default), CRIU ignores the failure and the
/// first page request then fails ("page-pipe: splice: Bad file descriptor").
pub fn lazy_dump_possible() -> Result<(), String> {
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if max >= LAZY_DUMP_PIPE || has_cap_sys_resource() {
        return Ok(());
    }
    Err(format!(
        "post-copy needs fs.pipe-max-size >= {LAZY_DUMP_PIPE} on the source (it is {max}; CRIU's lazy page server needs pipes that large without CAP_SYS_RESOURCE): `sysctl fs.pipe-max-size=4194304`, or use --mode stream"
    ))
}

fn has_cap_sys_resource() -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        // Bit 24: CAP_SYS_RESOURCE.
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// True when `version` ("4.2.1") is at least [`MIN_VERSION`].
pub fn new_enough(version: &str) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    (major, minor) >= MIN_VERSION
}

/// `criu lazy-pages` for the images in `images`: from the page channel at [`PS_SOCKET_FD`]
/// when `remote`, else from the pages images beside them.
pub fn lazy_pages_argv(images: &Path, log: &Path, remote: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "lazy-pages".into(),
        "--images-dir".into(),
        images.display().to_string(),
        "--log-file".into(),
        log.display().to_string(),
        super::argv::verbosity(0),
        "--status-fd".into(),
        STATUS_FD.to_string(),
    ];
    if remote {
        a.extend([
            "--page-server".into(),
            "--ps-socket".into(),
            PS_SOCKET_FD.to_string(),
        ]);
    }
    a
}

/// `criu page-server` writing the pages it receives on [`PS_SOCKET_FD`] into `images`.
pub fn page_server_argv(images: &Path, log: &Path) -> Vec<String> {
    vec![
        "page-server".into(),
        "--images-dir".into(),
        images.display().to_string(),
        "--log-file".into(),
        log.display().to_string(),
        super::argv::verbosity(0),
        "--ps-socket".into(),
        PS_SOCKET_FD.to_string(),
    ]
}

/// Extra `criu dump` flags of a migration's dump: pages to the page channel (stream), or
/// kept to be served lazily over it once the dump is over (post-copy).
pub fn dump_extra(lazy: bool) -> Vec<String> {
    let mut a = vec![];
    if lazy {
        a.push("--lazy-pages".into());
    } else {
        a.push("--page-server".into());
    }
    a.extend(["--ps-socket".into(), PS_SOCKET_FD.to_string()]);
    a
}

/// The fds of `pid` that are userfaultfds (a lazy-pages daemon holds one per restored task).
pub fn userfaultfds(pid: i32) -> Vec<i32> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut v: Vec<i32> = rd
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().contains("userfaultfd"))
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

/// Bytes a lazy dump left to be served, from its log ("Pagemap generated: N pages (M lazy)"
/// per task).
pub fn lazy_bytes_in_log(log: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(log) else {
        return 0;
    };
    text.lines()
        .filter(|l| l.contains("Pagemap generated:"))
        .filter_map(|l| {
            let open = l.rfind('(')?;
            l[open + 1..].split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(new_enough("4.2.1") && new_enough("4.2") && new_enough("5.0"));
        assert!(!new_enough("4.1.1") && !new_enough("3.17.1") && !new_enough("garbage"));
    }

    #[test]
    fn argv_hands_criu_the_channel() {
        let a = lazy_pages_argv(Path::new("/i"), Path::new("/l"), true).join(" ");
        assert!(a.contains("--page-server --ps-socket 91"), "{a}");
        assert!(a.contains("--status-fd 92"), "{a}");
        let a = lazy_pages_argv(Path::new("/i"), Path::new("/l"), false).join(" ");
        assert!(!a.contains("--page-server"), "{a}");
        assert_eq!(dump_extra(true)[0], "--lazy-pages");
        assert_eq!(dump_extra(false)[0], "--page-server");
        assert!(page_server_argv(Path::new("/i"), Path::new("/l"))
            .join(" ")
            .contains("page-server --images-dir /i"));
    }

    #[test]
    fn lazy_bytes_come_from_the_dump_log() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dump.log");
        std::fs::write(&p, "(00.1) Pagemap generated: 10 pages (3 lazy) 0 holes\nx\n(00.2) Pagemap generated: 5 pages (2 lazy) 1 holes\n").unwrap();
        assert_eq!(lazy_bytes_in_log(&p), 5 * 4096);
        assert_eq!(lazy_bytes_in_log(&d.path().join("none")), 0);
    }

    #[test]
    fn no_userfaultfds_in_a_plain_process() {
        assert!(userfaultfds(std::process::id() as i32).is_empty());
    }
}
