//! Thin wrappers over the syscalls nix does not cover (clone3, pidfds, close_range, splice
//! flags, pivot_root, prctl), so that every `unsafe` block of the crate sits here with the
//! reason it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Result of [`clone3_fork`] in the parent: the child's pid and a pidfd for it.
pub struct Cloned {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks into new namespaces with `clone3(CLONE_PIDFD | flags)`. Returns `None` in the child.
///
/// # Safety
/// Like `fork`: the caller must be single-threaded, and the child must only do what is safe
/// after fork in that caller before it execs or exits.
pub unsafe fn clone3_fork(ns_flags: i32) -> io::Result<Option<Cloned>> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: (ns_flags as u64) | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: args is a valid clone_args of the size we pass; stack 0 means the child runs on a
    // copy of our stack, as with fork. The caller guarantees fork-safety.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = cvt(r)? as i32;
    if pid == 0 {
        return Ok(None);
    }
    // SAFETY: the kernel stored a fresh pidfd, owned by nobody else.
    Ok(Some(Cloned {
        pid,
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
    }))
}

/// Plain fork. Returns `None` in the child.
///
/// # Safety
/// The caller must be single-threaded (or the child must only call async-signal-safe code).
pub unsafe fn fork() -> io::Result<Option<i32>> {
    // SAFETY: forwarded to the caller's contract.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        p => Ok(Some(p)),
    }
}

/// Runs `child` in a new process that shares this one's memory, and blocks this thread until
/// the child has exec'd or exited (`clone(CLONE_VM | CLONE_VFORK)`, as glibc's posix_spawn
/// does). No page table is copied and no page is copied on write, on either side: that is
/// most of what a fork costs a small process, and an exec session pays it on its way in.
/// Returns the child's pid.
///
/// # Safety
/// The caller must be single-threaded. `child` runs on a stack of its own but on this
/// process's heap and globals, with its own fd table, credentials and signal dispositions: it
/// must end in execve or `_exit` without unwinding (should it return, the child `_exit`s with
/// 127), and any memory it writes is seen here afterwards.
pub unsafe fn vfork_run(child: &mut dyn FnMut()) -> io::Result<i32> {
    const STACK: usize = 256 * 1024;
    const GUARD: usize = 4096;
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: arg points at the `&mut dyn FnMut` below, alive while the parent waits.
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut()) };
        f();
        exit_now(127)
    }
    // SAFETY: a fresh private anonymous mapping that nothing else refers to.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUARD + STACK,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the range lies inside the mapping just made; its lowest page stays PROT_NONE, a
    // guard against the child's stack overflowing into whatever is mapped below.
    let opened = unsafe {
        libc::mprotect(
            base.cast::<u8>().add(GUARD).cast(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    let pid = if opened == 0 {
        let mut f: &mut dyn FnMut() = child;
        // SAFETY: the stack is ours and grows down from its top; CLONE_VFORK keeps `f` and the
        // stack alive until the child no longer uses them (it exec'd or exited).
        unsafe {
            libc::clone(
                trampoline,
                base.cast::<u8>().add(GUARD + STACK).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut f as *mut &mut dyn FnMut()).cast(),
            )
        }
    } else {
        -1
    };
    let err = io::Error::last_os_error();
    // SAFETY: the mapping is ours, and no process runs on it any more.
    unsafe { libc::munmap(base, GUARD + STACK) };
    if pid == -1 {
        return Err(err);
    }
    Ok(pid)
}

/// Gives the heap's free pages back to the kernel (`malloc_trim(0)`). The monitor is forked
/// from the CLI, whose argument parsing leaves freed memory behind: every monitor would keep
/// it as private pages for as long as its job runs.
pub fn trim_heap() {
    // SAFETY: no arguments beyond the pad size; glibc's allocator is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `pidfd_getfd(pidfd, fd)`: a duplicate (CLOEXEC) of fd number `fd` of the process the
/// pidfd names. This is how a monitor takes the ends of a container's stdio and control
/// socket that the container's init keeps: after a start, after a restore, and when it adopts
/// a container whose monitor died.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// True when our fds `a` and `b` refer to the same open file description (`kcmp`), as a
/// shell's `> f 2>&1` makes them: output for both must then go through one writer.
pub fn same_description(a: RawFd, b: RawFd) -> bool {
    let me = std::process::id() as libc::c_long;
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            me,
            me,
            KCMP_FILE,
            a as libc::c_long,
            b as libc::c_long,
        )
    };
    r == 0
}

/// Ignores SIGPIPE (`ignore`) or restores its default action. The CLI dies quietly of SIGPIPE
/// when its reader goes away, like any Unix filter; the monitor and the attach relays ignore
/// it and handle EPIPE themselves.
pub fn sigpipe(ignore: bool) {
    let h = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installs no code of ours.
    unsafe { libc::signal(libc::SIGPIPE, h) };
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// True when the peer of the connected socket `fd` has closed (or shut down) its end:
/// asked without waiting.
pub fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    poll_now(fd, libc::POLLRDHUP)
        .is_some_and(|r| r & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
}

/// True when `fd` is ready for `events` (`POLLIN`, `POLLOUT`) right now, or will not block
/// because it is at its end or failed (a hang-up or an error is ready too): asked without
/// waiting. A poll that fails answers "ready": a needless retry costs nothing, a readiness
/// dropped wrongly can hang its waiter.
pub fn ready_now(fd: BorrowedFd<'_>, events: libc::c_short) -> bool {
    poll_now(fd, events).is_none_or(|r| r & (events | libc::POLLHUP | libc::POLLERR) != 0)
}

/// The events `fd` has now among `events` (plus hang-up and error), without waiting; None
/// when poll itself fails.
fn poll_now(fd: BorrowedFd<'_>, events: libc::c_short) -> Option<libc::c_short> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    match unsafe { libc::poll(&mut p, 1, 0) } {
        n if n >= 0 => Some(p.revents),
        _ => None,
    }
}

/// Ends the process by `sig` with its default action (the way `yes` ends when its reader
/// closes the pipe: the shell sees 128+sig and no message).
pub fn die_of(sig: i32) -> ! {
    // SAFETY: restores the default action and unblocks the signal, then raises it; nothing of
    // ours runs in between.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    exit_now(128 + sig)
}

/// `pidfd_send_signal(pidfd, sig)`: signals exactly the process the pidfd refers to, even if
/// its pid has since been reused.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: null siginfo is allowed; the fd is borrowed for the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Marks every fd from `first` up as close-on-exec (`close_range(first, ~0, CLOEXEC)`).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })?;
    Ok(())
}

/// Closes every fd from `first` up.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: plain syscall; the caller owns the whole fd table range it asks to close (used
    // only in a fresh child before exec or at start-up).
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) })?;
    Ok(())
}

/// Makes this process a child subreaper: orphans below it are reparented to it.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// Asks for `sig` when the parent dies.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// Sets no_new_privs.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// The capability sets of this thread, as capget(2) reports them (version 3: 64 bits each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// capget(2) for this thread, without allocating (a vfork child calls it).
pub fn caps_get() -> io::Result<CapSets> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: a v3 header and the two data structs that version reads and writes.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) })?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(d[0].effective, d[1].effective),
        permitted: join(d[0].permitted, d[1].permitted),
        inheritable: join(d[0].inheritable, d[1].inheritable),
    })
}

/// capset(2) for this thread, without allocating.
pub fn caps_set(c: CapSets) -> io::Result<()> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(c.effective);
    let (p0, p1) = split(c.permitted);
    let (i0, i1) = split(c.inheritable);
    let d = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: a v3 header and the two data structs that version reads.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) })?;
    Ok(())
}

/// Removes capability number `cap` from this thread's bounding set.
pub fn caps_bound_drop(cap: u8) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) }
            as libc::c_long,
    )?;
    Ok(())
}

/// Marks this process dumpable (`PR_SET_DUMPABLE`), which a credential change clears.
pub fn set_dumpable() {
    // SAFETY: prctl with integer arguments; it cannot fail for the value 1.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
}

/// Keeps permitted capabilities across setuid (re-dropped explicitly afterwards).
pub fn set_keep_caps(on: bool) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) } as libc::c_long,
    )?;
    Ok(())
}

/// Sets the process name shown by `ps` (comm).
pub fn set_name(name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: PR_SET_NAME reads at most 16 bytes from a valid NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

/// `splice(fd_in, fd_out, len, flags)` without offsets; `Ok(0)` is end of input.
/// `tee(fd_in, fd_out, len, flags)`: copies up to `len` bytes from one pipe to another
/// without consuming them.
pub fn tee(
    fd_in: BorrowedFd<'_>,
    fd_out: BorrowedFd<'_>,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    // SAFETY: plain syscall on borrowed fds.
    let r = unsafe { libc::tee(fd_in.as_raw_fd(), fd_out.as_raw_fd(), len, flags) };
    Ok(cvt(r as libc::c_long)? as usize)
}

pub fn splice(
    fd_in: BorrowedFd<'_>,
    fd_out: BorrowedFd<'_>,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    // SAFETY: null offsets mean "use and update the file positions"; the fds are borrowed.
    let r = unsafe {
        libc::splice(
            fd_in.as_raw_fd(),
            std::ptr::null_mut(),
            fd_out.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    Ok(cvt(r as libc::c_long)? as usize)
}

/// Grows (or shrinks) a pipe's buffer; returns the size the kernel chose.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    // SAFETY: fcntl with integer arguments.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok(cvt(r as libc::c_long)? as usize)
}

/// Bytes waiting to be read in a pipe or socket (`FIONREAD`).
pub fn bytes_readable(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into n.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } as libc::c_long)?;
    Ok(n.max(0) as usize)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let a = cpath(new_root)?;
    let b = cpath(put_old)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) })?;
    Ok(())
}

fn cpath(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Window size of a terminal: (rows, cols).
pub fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    // SAFETY: winsize is plain old data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } as libc::c_long)?;
    Ok((ws.ws_row, ws.ws_col))
}

/// Sets the window size of a terminal (the pty sends SIGWINCH to its foreground group).
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } as libc::c_long)?;
    Ok(())
}

/// Brings the loopback interface up in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket() call; the fd is owned right away.
    let s = cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )?;
    // SAFETY: s is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(s as RawFd) };
    // SAFETY: ifreq is plain old data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } as libc::c_long)?;
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } as libc::c_long)?;
    Ok(())
}

/// The GNU build-id of the running executable, as hex, if the linker recorded one.
///
/// It names the init copy in the init store: two binaries with the same build-id are the same
/// program, which is exactly what CRIU checks at restore.
pub fn own_build_id() -> Option<String> {
    struct Found(Option<Vec<u8>>);
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes valid info for each loaded object; the first object
        // is the main program; data is our Found.
        unsafe {
            let found = &mut *(data as *mut Found);
            let info = &*info;
            for i in 0..info.dlpi_phnum as isize {
                let ph = &*info.dlpi_phdr.offset(i);
                if ph.p_type != libc::PT_NOTE {
                    continue;
                }
                let mut p = (info.dlpi_addr + ph.p_vaddr) as *const u8;
                let end = p.add(ph.p_memsz as usize);
                while p.add(12) <= end {
                    let namesz = *(p as *const u32) as usize;
                    let descsz = *(p.add(4) as *const u32) as usize;
                    let ntype = *(p.add(8) as *const u32);
                    let name = p.add(12);
                    let desc = name.add((namesz + 3) & !3);
                    if desc.add(descsz) > end {
                        break;
                    }
                    if ntype == 3 && namesz == 4 && std::slice::from_raw_parts(name, 4) == b"GNU\0"
                    {
                        found.0 = Some(std::slice::from_raw_parts(desc, descsz).to_vec());
                        return 1;
                    }
                    p = desc.add((descsz + 3) & !3);
                }
            }
            1 // only the main program
        }
    }
    let mut found = Found(None);
    // SAFETY: the callback only reads the headers the loader hands it.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut found as *mut Found as *mut libc::c_void) };
    found
        .0
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
}

/// `execve` with pre-built C strings; returns only on failure.
pub fn execve(path: &CString, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: all pointers point into CStrings that outlive the call; both arrays end in NULL.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// `execve` through NULL-terminated pointer arrays built in advance (a vfork child must not
/// allocate); returns only on failure.
pub fn execve_prepared(
    path: &std::ffi::CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last().is_some_and(|p| p.is_null()) && envp.last().is_some_and(|p| p.is_null()) {
        // SAFETY: both arrays end in NULL, and the caller's pointers point into C strings that
        // outlive the call.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        io::Error::last_os_error()
    } else {
        io::Error::from_raw_os_error(libc::EINVAL)
    }
}

/// chdir(2) to a prepared C string, without allocating.
pub fn chdir_c(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::chdir(path.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// setgroups(2), without allocating.
pub fn setgroups_raw(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: a pointer and length of gids.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// Makes the terminal on fd 0 this session's controlling terminal.
pub fn set_controlling_tty_stdin() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, not a pointer.
    cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } as libc::c_long)?;
    Ok(())
}

/// `_exit(code)`: leaves a forked child without running the parent's atexit handlers or
/// flushing buffers that belong to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Blocks `sigs` for this thread and returns a signalfd (CLOEXEC, NONBLOCK) reading them.
pub fn block_into_signalfd(sigs: &[i32]) -> io::Result<OwnedFd> {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in sigs {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(*s) {
            set.add(sig);
        }
    }
    set.thread_block().map_err(io::Error::from)?;
    // SAFETY: signalfd with a valid set; -1 creates a new fd.
    let r = cvt(unsafe {
        libc::signalfd(
            -1,
            set.as_ref() as *const libc::sigset_t,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        )
    } as libc::c_long)?;
    // SAFETY: a fresh fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Reads one pending signal number from a signalfd, if any.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain old data of the size the kernel writes.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut info as *mut _ as *mut libc::c_void,
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(info.ssi_signo as i32))
}

/// Unblocks every signal and resets only `ignored` to their default action, for a child of a
/// process that knows which signals it ignores: execve resets caught signals itself and keeps
/// only ignored ones, so this is all the resetting such a child needs (and 60-odd fewer
/// syscalls on the way to every exec session than [`reset_signals`]).
pub fn reset_ignored_signals(ignored: &[i32]) {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    for &s in ignored {
        // SAFETY: resetting to SIG_DFL installs no code of ours.
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
}

/// A fresh random value from the kernel (getrandom(2), no file to open).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into b.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    cvt(got as libc::c_long)?;
    if got as usize != N {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    Ok(b)
}

/// Unblocks every signal and resets every disposition to its default (for a child before
/// exec), signals 32 and 33 included. glibc's `signal()` refuses those two (it uses them
/// itself), and its `posix_spawn` leaves them *ignored* in the children of a threaded parent
/// (Rust's `Command` is one), and an ignored signal stays ignored across exec: without the raw
/// syscall, a job started by such a parent ran with them ignored.
pub fn reset_signals() {
    // The kernel's struct sigaction, not glibc's (whose mask is 128 bytes).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for s in 1..=64 {
        if s == libc::SIGKILL || s == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs SIG_DFL (no code of ours) through a struct of the kernel's layout.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                s,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// Sets O_NONBLOCK on a description we created ourselves (never on one a caller handed us:
/// that flag is shared with every other holder of the description).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    cvt(fl as libc::c_long)?;
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) }
            as libc::c_long,
    )?;
    Ok(())
}

/// `dup3(old, new, 0)`: puts `old` at fd number `new` (without CLOEXEC).
pub fn dup_to(old: RawFd, new: RawFd) -> io::Result<()> {
    if old == new {
        // dup3 refuses equal fds; clear CLOEXEC instead so the fd survives exec.
        // SAFETY: fcntl with integer arguments.
        cvt(unsafe { libc::fcntl(old, libc::F_SETFD, 0) } as libc::c_long)?;
        return Ok(());
    }
    // SAFETY: dup3 with integer arguments; `new` is replaced atomically.
    cvt(unsafe { libc::dup3(old, new, 0) } as libc::c_long)?;
    Ok(())
}

/// Duplicates `fd` to the lowest number >= `min`, with CLOEXEC.
pub fn dup_above(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl with integer arguments.
    let r = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) } as libc::c_long)?;
    Ok(r as RawFd)
}

/// Takes ownership of a raw fd number.
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub unsafe fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: forwarded to the caller's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Borrows a raw fd number for the duration of a call.
///
/// # Safety
/// `fd` must stay open while the borrow is used.
pub unsafe fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: forwarded to the caller's contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); with the
/// pid it names a process uniquely, so a recorded pid is never confused with a reused one.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The state letter of a process (field 3 of /proc/PID/stat): 'R', 'S', 'Z'…
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// Sends one datagram (a seqpacket message) with `fds` attached as SCM_RIGHTS.
/// `MSG_DONTWAIT` is used when `nonblock` is set; `MSG_NOSIGNAL` always (a vanished peer is an
/// error to handle, not a reason to die).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[RawFd],
    nonblock: bool,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let cmsg_len = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE is a pure size computation.
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut cbuf = vec![0u8; cmsg_len];
    // SAFETY: msghdr is plain old data; every pointer in it refers to buffers alive for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cmsg_len as _;
        // SAFETY: cbuf is CMSG_SPACE bytes, enough for one header and the fd array.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
        }
    }
    let flags = libc::MSG_NOSIGNAL | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: msg is fully initialised above.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one datagram into `buf`, and the fds that came with it (as owned, CLOEXEC fds).
/// Returns `Ok((0, []))` at end of stream.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblock: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    const MAX_FDS: usize = 16;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: a pure size computation.
    let cmsg_len =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize };
    let mut cbuf = vec![0u8; cmsg_len];
    // SAFETY: msghdr is plain old data; its pointers refer to buffers alive for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = cmsg_len as _;
    let flags = libc::MSG_CMSG_CLOEXEC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    let n = loop {
        // SAFETY: msg is fully initialised above.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the CMSG_* accessors.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message larger than the receive buffer",
        ));
    }
    Ok((n, fds))
}

/// Accepts a connection (CLOEXEC; non-blocking when asked).
pub fn accept(listener: BorrowedFd<'_>, nonblock: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_CLOEXEC | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    loop {
        // SAFETY: null address pointers are allowed; the returned fd is fresh.
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags,
            )
        };
        if r >= 0 {
            // SAFETY: a fresh fd we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `setrlimit` with a raw resource number.
pub fn setrlimit_raw(resource: i32, rl: &libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit reads one rlimit struct.
    cvt(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, rl) } as libc::c_long)?;
    Ok(())
}

/// Spawns `cmd` with each `(src, dst)` fd placed at number `dst` in the child (without
/// CLOEXEC), e.g. the fresh pipes `criu restore --inherit-fd fd[dst]:...` hands to a restored
/// workload. The caller reaps the child (the monitor's reaper does).
pub fn spawn_with_fds(
    cmd: &mut std::process::Command,
    fds: &[(RawFd, RawFd)],
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let fds = fds.to_vec();
    // Move every source above every target first, so placing one never clobbers another.
    let high = fds.iter().map(|(s, d)| (*s).max(*d)).max().unwrap_or(0) + 1;
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl and dup3,
    // which are async-signal-safe; it allocates nothing (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            let mut moved = [0 as RawFd; 64];
            for (i, (src, _)) in fds.iter().enumerate().take(64) {
                let r = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, high);
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = r;
            }
            for (i, (_, dst)) in fds.iter().enumerate().take(64) {
                if libc::dup3(moved[i], *dst, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Borrows an fd this process inherited (e.g. for `exec --preserve-fd N`), after checking
/// it is open. The CLI never closes such fds, so the borrow may last the process's life.
pub fn borrow_open_fd(fd: RawFd) -> io::Result<BorrowedFd<'static>> {
    // SAFETY: fcntl(F_GETFD) only queries the fd table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above) and nothing in the CLI closes it.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// `flock(LOCK_EX | LOCK_NB)`: true when taken, false when another description holds it.
pub fn flock_try_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    flock_try(fd, libc::LOCK_EX)
}

/// `flock(LOCK_SH | LOCK_NB)`, released when the fd closes: true when taken.
pub fn flock_try_shared(fd: BorrowedFd<'_>) -> io::Result<bool> {
    flock_try(fd, libc::LOCK_SH)
}

fn flock_try(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock with integer arguments on a borrowed fd.
    if unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Borrows a raw fd that the caller keeps open for the duration of the borrow (a child's
/// inherited fd between fork and exec).
pub fn borrowed(fd: &RawFd) -> BorrowedFd<'_> {
    // SAFETY: the caller owns `fd` and keeps it open while the borrow lives; the lifetime is
    // tied to the reference.
    unsafe { BorrowedFd::borrow_raw(*fd) }
}

/// The protocol name the kernel gives a socket (`TCP`, `UNIX-STREAM`, `MPTCP`, `AF_VSOCK`…),
/// read from the `system.sockprotoname` attribute of the socket a /proc/PID/fd/N link leads
/// to. It names sockets of every family, which no /proc/net table does.
pub fn sock_proto_name(path: &Path) -> io::Result<String> {
    let c = cpath(path)?;
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated; the kernel writes at most buf.len() bytes.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = cvt(n as libc::c_long)? as usize;
    let name = &buf[..n.min(buf.len())];
    let name = name.split(|b| *b == 0).next().unwrap_or(name);
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// The inode a process's fd points to, read from /proc/PID/fd/N ("socket:[INO]",
/// "pipe:[INO]").
pub fn fd_inode(pid: i32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    let start = s.find('[')? + 1;
    let end = s.find(']')?;
    s.get(start..end)?.parse().ok()
}

/// Receives one whole datagram (a seqpacket message) and its fds, in a buffer of exactly its
/// size: the length is peeked first, so a reader waiting for messages holds no big buffer.
/// An empty result with no fds is end of stream.
pub fn recv_datagram(
    sock: BorrowedFd<'_>,
    nonblock: bool,
    max: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    loop {
        match recv_datagram_once(sock, nonblock, max) {
            // A peer that closed with our messages unread leaves ECONNRESET, which a seqpacket
            // recv reports *before* the packets still queued for us (a client's last request,
            // say a SIGPIPE for the workload). Reporting clears it: read on, to those packets
            // and then end-of-file.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
            r => return r,
        }
    }
}

fn recv_datagram_once(
    sock: BorrowedFd<'_>,
    nonblock: bool,
    max: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let flags = libc::MSG_PEEK | libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    let len = loop {
        // SAFETY: a zero-length receive into no buffer; MSG_TRUNC makes it return the real size.
        let r = unsafe { libc::recv(sock.as_raw_fd(), std::ptr::null_mut(), 0, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over {max}"),
        ));
    }
    let mut buf = vec![0u8; len.max(1)];
    let (n, fds) = recv_with_fds(sock, &mut buf, nonblock)?;
    buf.truncate(n);
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_says_at_once_whether_it_can_be_read_or_written() {
        use std::os::fd::AsFd;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        assert!(!ready_now(r.as_fd(), libc::POLLIN), "empty");
        assert!(ready_now(w.as_fd(), libc::POLLOUT), "room");
        std::io::Write::write_all(&mut std::fs::File::from(w.try_clone().expect("dup")), b"x")
            .expect("write");
        assert!(ready_now(r.as_fd(), libc::POLLIN), "a byte");
        drop(w);
        assert!(
            ready_now(r.as_fd(), libc::POLLIN),
            "end of file reads at once"
        );
    }

    #[test]
    fn a_peer_that_closed_is_seen_without_waiting() {
        use std::os::fd::AsFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(!peer_closed(a.as_fd()));
        std::io::Write::write_all(&mut &b, b"x").expect("write");
        assert!(!peer_closed(a.as_fd()), "data waiting is not a close");
        drop(b);
        assert!(peer_closed(a.as_fd()));
    }

    #[test]
    fn own_process_has_a_start_time_and_state() {
        let me = std::process::id() as i32;
        assert!(proc_start_time(me).is_some());
        assert!(matches!(proc_state(me), Some('R' | 'S')));
        assert_eq!(proc_start_time(-1), None);
    }

    #[test]
    fn test_binary_has_a_build_id() {
        // rustc links through cc, which passes --build-id on Debian; the init store relies on it.
        let id = own_build_id().expect("no GNU build-id note in the test binary");
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
}
