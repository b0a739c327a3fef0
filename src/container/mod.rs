//! The container: namespaces, hostname, loopback, mounts, and the exec of init.
//!
//! Every container is new PID, UTS, IPC and mount namespaces (and optionally a network
//! namespace). Without a rootfs it keeps a copy of the host's mount tree with a private /proc,
//! /dev/pts, /dev/shm and /dev/mqueue ([`mounts`]); with one it pivots into it, as runc does.
//! CRIU restores either with `--root` and the carried-in mounts declared external.
//!
//! [`start`] runs in the monitor; the child half runs between clone3 and the exec of init and
//! reports any failure on a CLOEXEC pipe, so the monitor gets a reason, not just a status.

pub mod cgroup;
pub mod mounts;
pub mod shm;
pub mod tree;
pub mod usage;

use crate::protocol::init::{CTL_FD, CTL_PEER_FD};
use crate::spec::{Network, Volume};
use crate::sys;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the init store is mounted inside a rootfs container (on the container's own /dev
/// tmpfs, so a read-only rootfs needs no mount point of ours).
pub const INIT_MOUNT: &str = "/dev/.stasis";

/// Errors starting a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("clone3 into new namespaces: {0}")]
    Clone(io::Error),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("rootfs {0}: {1}")]
    Rootfs(PathBuf, String),
    #[error("volume source {0}: {1}")]
    Volume(PathBuf, String),
}

/// Everything the child needs, computed before the clone.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub hostname: Option<String>,
    pub network: Network,
    pub rootfs: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    /// `cgroup.procs` files to join before exec.
    pub cgroup_procs: Vec<PathBuf>,
    /// Host path of the init copy.
    pub init_path: PathBuf,
}

impl ContainerConfig {
    /// Namespace flags for clone3.
    pub fn clone_flags(&self) -> i32 {
        let mut f =
            libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNS;
        if self.network == Network::None {
            f |= libc::CLONE_NEWNET;
        }
        f
    }

    /// The mount layout.
    pub fn layout(&self) -> mounts::Layout {
        match self.rootfs {
            Some(_) => mounts::Layout::Rootfs,
            None => mounts::Layout::HostTree,
        }
    }

    /// Path of init as the container sees it.
    pub fn init_path_inside(&self) -> PathBuf {
        match self.rootfs {
            Some(_) => Path::new(INIT_MOUNT).join(self.init_path.file_name().unwrap_or_default()),
            None => self.init_path.clone(),
        }
    }

    /// Checks host-side preconditions, naming what is missing.
    pub fn check(&self) -> Result<(), ContainerError> {
        if let Some(r) = &self.rootfs {
            match fs::metadata(r) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ContainerError::Rootfs(r.clone(), "not a directory".into())),
                Err(e) => return Err(ContainerError::Rootfs(r.clone(), errno_text(&e))),
            }
        }
        for v in &self.volumes {
            let src = fs::metadata(&v.src)
                .map_err(|e| ContainerError::Volume(v.src.clone(), errno_text(&e)))?;
            if self.rootfs.is_none() {
                // On the host's tree a destination is a host path: never create one there.
                match fs::metadata(&v.dst) {
                    Ok(d) if d.is_dir() == src.is_dir() => {}
                    Ok(_) => {
                        return Err(ContainerError::Volume(
                            v.dst.clone(),
                            "destination is not the same kind of file as the source".into(),
                        ))
                    }
                    Err(e) => {
                        return Err(ContainerError::Volume(
                            v.dst.clone(),
                            format!(
                                "destination: {} (without --rootfs a volume is bound over an existing host path)",
                                errno_text(&e)
                            ),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

fn errno_text(e: &io::Error) -> String {
    let s = e.to_string();
    s.find(" (os error")
        .map(|i| s[..i].to_string())
        .unwrap_or(s)
}

/// A started container: its init's host pid and pidfd.
pub struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Clones into the container's namespaces and execs init, which holds both ends of its
/// control socket (fds 3 and 4, made inside the container's network namespace, where CRIU
/// looks unix sockets up). Returns once init has been exec'd (or with the child's reason for
/// failing).
///
/// Must be called from a single-threaded process (the monitor's current-thread runtime).
#[allow(unsafe_code)]
pub fn start(cfg: &ContainerConfig) -> Result<Started, ContainerError> {
    cfg.check()?;
    let init_inside = CString::new(cfg.init_path_inside().as_os_str().as_encoded_bytes())
        .map_err(|_| ContainerError::Setup("init path contains NUL".into()))?;
    let argv = [CString::new("stasis-init").unwrap_or_default()];
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ContainerError::Setup(format!("pipe: {e}")))?;
    // SAFETY: the monitor is single-threaded; the child only runs setup code and execs.
    match unsafe { sys::clone3_fork(cfg.clone_flags()) } {
        Err(e) => Err(ContainerError::Clone(e)),
        Ok(None) => {
            drop(err_r);
            let e = child(cfg, &init_inside, &argv);
            let mut f = fs::File::from(err_w);
            let _ = f.write_all(e.as_bytes());
            sys::exit_now(crate::exit::CODE_STASIS_ERROR)
        }
        Ok(Some(c)) => {
            drop(err_w);
            let mut msg = String::new();
            let _ = fs::File::from(err_r).read_to_string(&mut msg);
            if msg.is_empty() {
                Ok(Started {
                    pid: c.pid,
                    pidfd: c.pidfd,
                })
            } else {
                // the child has exited; the monitor's reaper collects it
                Err(ContainerError::Setup(msg))
            }
        }
    }
}

/// Child half: returns only with an error message.
fn child(cfg: &ContainerConfig, init: &CString, argv: &[CString]) -> String {
    sys::reset_signals();
    if let Err(e) = crate::container::cgroup::Cgroup::join_self(&cfg.cgroup_procs) {
        return format!("join cgroup: {e}");
    }
    // init is the session leader of the container: CRIU requires every session leader of the
    // dumped tree to be inside its PID namespace.
    if let Err(e) = nix::unistd::setsid() {
        return format!("setsid: {e}");
    }
    if let Some(h) = &cfg.hostname {
        if let Err(e) = nix::unistd::sethostname(h) {
            return format!("sethostname {h}: {e}");
        }
    }
    if cfg.network == Network::None {
        if let Err(e) = sys::loopback_up() {
            return format!("bring up lo: {e}");
        }
    }
    let setup = match &cfg.rootfs {
        Some(r) => setup_rootfs(r, &cfg.volumes, &cfg.init_path),
        None => setup_host_tree(&cfg.volumes, &cfg.init_path),
    };
    if let Err(e) = setup {
        return e;
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return format!("chdir /: {e}");
    }
    // init's own stdio: /dev/null opened in its final mount namespace (one from another
    // namespace makes CRIU's dump fail: "Can't lookup mount").
    match nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(null) => {
            for i in 0..3 {
                if let Err(e) = sys::dup_to(null.as_raw_fd(), i) {
                    return format!("stdio of init: {e}");
                }
            }
            if null.as_raw_fd() > 2 {
                drop(null);
            } else {
                std::mem::forget(null);
            }
        }
        Err(e) => return format!("open /dev/null: {e}"),
    }
    let (a, b) = match crate::protocol::seqpacket_pair() {
        Ok(p) => p,
        Err(e) => return format!("socketpair: {e}"),
    };
    // Above 4 first, so placing one never closes the other.
    let (a, b) = match (
        sys::dup_above(a.as_raw_fd(), 10),
        sys::dup_above(b.as_raw_fd(), 10),
    ) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => return format!("dup control socket: {e}"),
    };
    if let Err(e) = sys::dup_to(a, CTL_FD).and_then(|_| sys::dup_to(b, CTL_PEER_FD)) {
        return format!("place control socket: {e}");
    }
    // Only 0-4 survive into init; the error pipe (CLOEXEC) closes at exec.
    if let Err(e) = sys::cloexec_from(CTL_PEER_FD as u32 + 1) {
        return format!("close_range: {e}");
    }
    let e = sys::execve(init, argv, &[]);
    format!("exec init {}: {}", init.to_string_lossy(), errno_text(&e))
}

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    nix::mount::mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            src.or(fstype).unwrap_or("none"),
            target.display()
        )
    })
}

/// The mount table in one read where it fits: `read_to_string`'s growing probes take eight
/// reads of a fresh namespace's table, each walking it again.
fn read_mountinfo() -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 << 10);
    fs::File::open("/proc/self/mountinfo")?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Unmounts everything stacked at `p` (a host may have mounted twice at one point).
fn detach_all(p: &Path) -> Result<(), String> {
    for _ in 0..16 {
        match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(format!("unmount {}: {e}", p.display())),
        }
    }
    Ok(())
}

/// The host's mount tree with the filesystems of the container's own namespaces in place of
/// the host's: /proc, /dev/pts, /dev/shm and /dev/mqueue. Host mount points are never created:
/// a point the host lacks (no /dev/mqueue) is left out. The init store is bound read-only over
/// itself, so a workload cannot replace the copy every later container runs.
fn setup_host_tree(volumes: &[Volume], init_path: &Path) -> Result<(), String> {
    use nix::mount::MsFlags as F;
    // Private: nothing mounted here reaches the host, and CRIU sees no peer groups to follow.
    mount(None, Path::new("/"), None, F::MS_REC | F::MS_PRIVATE, None)?;
    // Another container's /dev/shm, staged on the host by its restore at this moment (see
    // `shm`), must not come along: this container could reach into that one's memory.
    let table = read_mountinfo().map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    // Almost always absent: parse only when the name occurs (a third of a millisecond of a
    // start went to reading and parsing the whole table).
    let staged = table
        .windows(shm::STAGING_SOURCE.len())
        .any(|w| w == shm::STAGING_SOURCE.as_bytes());
    if staged {
        let table = String::from_utf8_lossy(&table);
        for m in mounts::parse_mountinfo(&table).iter().rev() {
            if m.source == shm::STAGING_SOURCE {
                match detach_all(&m.point) {
                    // gone already (its restore finished)
                    Err(_) if !m.point.exists() => {}
                    r => r?,
                }
            }
        }
    }
    let shm = shm::ShmMount::host_tree();
    let fresh: [(&str, &str, F, Option<&str>); 4] = [
        (
            "/proc",
            "proc",
            F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            None,
        ),
        (
            "/dev/pts",
            "devpts",
            F::MS_NOSUID | F::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (shm::POINT, "tmpfs", shm.flags(), Some(shm.data.as_str())),
        (
            "/dev/mqueue",
            "mqueue",
            F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            None,
        ),
    ];
    for (point, fstype, flags, data) in fresh {
        let p = Path::new(point);
        if !p.is_dir() {
            if point == "/proc" {
                return Err("the host has no /proc directory".into());
            }
            continue;
        }
        detach_all(p)?;
        mount(Some(fstype), p, Some(fstype), flags, data)?;
    }
    let store = init_path.parent().unwrap_or(Path::new("/"));
    bind(store, store, true)?;
    for v in volumes {
        bind(&v.src, &v.dst, v.readonly)?;
    }
    Ok(())
}

fn setup_rootfs(root: &Path, volumes: &[Volume], init_path: &Path) -> Result<(), String> {
    use nix::mount::MsFlags as F;
    mount(None, Path::new("/"), None, F::MS_REC | F::MS_PRIVATE, None)?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(&root.to_string_lossy()),
        root,
        None,
        F::MS_BIND | F::MS_REC,
        None,
    )?;
    let sub = |p: &str| root.join(p.trim_start_matches('/'));
    for d in ["proc", "dev", "tmp", "sys"] {
        let p = sub(d);
        if !p.exists() {
            fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        }
    }
    mount(
        Some("proc"),
        &sub("proc"),
        Some("proc"),
        F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        None,
    )?;
    mount(
        Some("sysfs"),
        &sub("sys"),
        Some("sysfs"),
        F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC | F::MS_RDONLY,
        None,
    )?;
    mount(
        Some("tmpfs"),
        &sub("dev"),
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    // Device nodes made in the container's own /dev (not bind mounts of the host's), so CRIU
    // dumps and restores them with the tmpfs and needs no external mount for each.
    for (name, major, minor, mode) in [
        ("null", 1, 3, 0o666),
        ("zero", 1, 5, 0o666),
        ("full", 1, 7, 0o666),
        ("random", 1, 8, 0o666),
        ("urandom", 1, 9, 0o666),
        ("tty", 5, 0, 0o666),
    ] {
        let p = sub("dev").join(name);
        nix::sys::stat::mknod(
            &p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(|e| format!("mknod {}: {e}", p.display()))?;
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode));
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, sub("dev").join(link));
    }
    for d in ["pts", "shm", ".stasis"] {
        fs::create_dir(sub("dev").join(d)).map_err(|e| format!("mkdir /dev/{d}: {e}"))?;
    }
    mount(
        Some("devpts"),
        &sub("dev/pts"),
        Some("devpts"),
        F::MS_NOSUID | F::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = shm::ShmMount::rootfs();
    mount(
        Some("shm"),
        &sub("dev/shm"),
        Some("tmpfs"),
        shm.flags(),
        Some(shm.data.as_str()),
    )?;
    mount(
        Some("tmpfs"),
        &sub("tmp"),
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NODEV,
        Some("mode=1777"),
    )?;
    let store = init_path.parent().unwrap_or(Path::new("/"));
    bind(store, &sub(INIT_MOUNT), true)?;
    for v in volumes {
        let dst = sub(&v.dst.to_string_lossy());
        let is_dir = fs::metadata(&v.src).map(|m| m.is_dir()).unwrap_or(true);
        if is_dir {
            fs::create_dir_all(&dst).map_err(|e| format!("mkdir {}: {e}", dst.display()))?;
        } else if !dst.exists() {
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
            }
            fs::File::create(&dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
        }
        bind(&v.src, &dst, v.readonly)?;
    }
    if sub("dev/mqueue").is_dir() || fs::create_dir(sub("dev/mqueue")).is_ok() {
        mount(
            Some("mqueue"),
            &sub("dev/mqueue"),
            Some("mqueue"),
            F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            None,
        )?;
    }
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
    // the container's mounts.
    sys::pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| format!("pivot_root {}: {e}", root.display()))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("detach old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<(), String> {
    use nix::mount::MsFlags as F;
    mount(
        Some(&src.to_string_lossy()),
        dst,
        None,
        F::MS_BIND | F::MS_REC,
        None,
    )?;
    if readonly {
        mount(
            None,
            dst,
            None,
            F::MS_BIND | F::MS_REMOUNT | F::MS_RDONLY | F::MS_REC,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ContainerConfig {
        ContainerConfig {
            hostname: None,
            network: Network::Host,
            rootfs: None,
            volumes: vec![],
            cgroup_procs: vec![],
            init_path: "/var/lib/stasis/init/stasis-init-ab".into(),
        }
    }

    #[test]
    fn flags_follow_the_options() {
        let mut c = cfg();
        // every container has its own mount namespace (a private /proc)
        let base = libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNS;
        assert_eq!(c.clone_flags(), base);
        assert_eq!(c.layout(), mounts::Layout::HostTree);
        c.network = Network::None;
        assert_eq!(c.clone_flags(), base | libc::CLONE_NEWNET);
        c.rootfs = Some("/r".into());
        assert_eq!(c.layout(), mounts::Layout::Rootfs);
        assert_eq!(
            c.init_path_inside(),
            Path::new("/dev/.stasis/stasis-init-ab")
        );
    }

    #[test]
    fn missing_rootfs_is_named() {
        let mut c = cfg();
        c.rootfs = Some("/no/such/rootfs".into());
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("/no/such/rootfs") && e.contains("No such file"),
            "{e}"
        );
    }
}
