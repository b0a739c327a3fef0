//! The driver half of `cuda-checkpoint`: a small dynamically linked program that loads
//! libcuda.so.1, makes the calls one operation needs, and prints what the driver said.
//!
//! Why a separate program: stasis is linked statically (its binary is also every container's
//! init), and a static glibc program cannot host libcuda. A library dlopen'ed into it brings a
//! second libc.so.6 that was never initialised as a process's libc: measured with the fake
//! libcuda of tests/cuda.rs, the first `__thread` access or `pthread_create` inside the loaded
//! library segfaults, and libcuda does both in `cuInit`.
//!
//! build.rs compiles this file on its own, with nothing but std, into a dynamically linked
//! executable that stasis embeds and runs from a memfd (`super::embedded`). The crate also
//! compiles it as a test-only module so that fmt, clippy and its unit tests cover it. It stays
//! dumb on purpose: the messages, exit codes and typed errors live in stasis (`super::driver`).
//!
//! Usage: `helper OP [PID [TIMEOUT_MS]]`, OP one of `probe`, `get-state`, `get-restore-tid`,
//! `lock`, `checkpoint`, `restore`, `unlock`. Output, one record per line, always ending in
//! `end` (a missing `end` means the helper died):
//!   `lib PATH`              the libcuda file that was loaded
//!   `nolib TEXT`            dlopen failed (dlerror's text)
//!   `version N`             cuDriverGetVersion (1000 * major + 10 * minor)
//!   `missing SYMBOL`        the library lacks a symbol the operation needs
//!   `fail CALL CODE TEXT`   a driver call returned an error (TEXT from cuGetErrorString)
//!   `gpu NAME`              one device, in the driver's order (probe)
//!   `value N`               the state or thread id asked for
//! Exit status 0 once `end` is printed, 2 for arguments this file does not understand.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io::Write;

/// The library every CUDA program loads; its soname is stable across driver versions.
pub const LIBCUDA: &CStr = c"libcuda.so.1";

/// The symbols of the checkpoint API (drivers 570 and newer); `probe` reports each missing one.
pub const CHECKPOINT_SYMBOLS: [&CStr; 6] = [
    c"cuCheckpointProcessGetState",
    c"cuCheckpointProcessGetRestoreThreadId",
    c"cuCheckpointProcessLock",
    c"cuCheckpointProcessCheckpoint",
    c"cuCheckpointProcessRestore",
    c"cuCheckpointProcessUnlock",
];

const RTLD_NOW: c_int = 2;

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}

/// `CUcheckpointLockArgs` of cuda.h: a timeout, then fields reserved for later drivers that
/// must be zero.
#[repr(C)]
#[derive(Default)]
struct LockArgs {
    timeout_ms: c_uint,
    reserved0: c_uint,
    reserved1: [u64; 7],
}

/// `CUcheckpointCheckpointArgs`, `...RestoreArgs`, `...UnlockArgs`: 64 bytes that newer drivers
/// give meanings to (a GPU remapping for restore); all zero asks for today's behaviour.
#[repr(C)]
#[derive(Default)]
struct ReservedArgs {
    reserved: [u64; 8],
}

type InitFn = unsafe extern "C" fn(c_uint) -> c_int;
type IntOutFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
type DeviceGetFn = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type DeviceNameFn = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type PidOutFn = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
type LockFn = unsafe extern "C" fn(c_int, *mut LockArgs) -> c_int;
type PidArgsFn = unsafe extern "C" fn(c_int, *mut ReservedArgs) -> c_int;

/// libcuda.so.1, loaded for the life of this process (it is never unloaded: the driver does
/// not support it, and the process exits after one operation).
struct Libcuda {
    handle: *mut c_void,
}

impl Libcuda {
    fn open() -> Result<Libcuda, String> {
        // SAFETY: a valid NUL-terminated name; dlopen runs the library's constructors, which is
        // what loading libcuda means.
        let handle = unsafe { dlopen(LIBCUDA.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            // SAFETY: dlerror returns null or a NUL-terminated message valid until the next
            // dl* call on this thread; it is copied at once.
            let msg = unsafe {
                let e = dlerror();
                if e.is_null() {
                    "unknown dlopen error".to_string()
                } else {
                    CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            return Err(msg);
        }
        Ok(Libcuda { handle })
    }

    fn addr(&self, name: &CStr) -> *mut c_void {
        // SAFETY: the handle is a live dlopen handle and the name a NUL-terminated string.
        unsafe { dlsym(self.handle, name.as_ptr()) }
    }

    /// The symbol `name` as a function of type `F`, or `None` when the library lacks it.
    ///
    /// # Safety
    /// `F` must be an `extern "C"` function pointer type matching the symbol's C declaration.
    unsafe fn func<F: Copy>(&self, name: &CStr) -> Option<F> {
        const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
        let p = self.addr(name);
        if p.is_null() {
            None
        } else {
            // SAFETY: same size (asserted), and the caller vouches for the signature.
            Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
        }
    }

    fn error_string(&self, code: c_int) -> String {
        // SAFETY: cuGetErrorString's declaration in cuda.h.
        let Some(f) = (unsafe { self.func::<ErrorStringFn>(c"cuGetErrorString") }) else {
            return "-".into();
        };
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: s is a valid out-pointer; on success the driver points it at a static string.
        if unsafe { f(code, &mut s) } != 0 || s.is_null() {
            return "-".into();
        }
        // SAFETY: a NUL-terminated static string of the driver.
        unsafe { CStr::from_ptr(s) }
            .to_string_lossy()
            .replace('\n', " ")
    }
}

/// What one run prints, collected so the record order stays the same on every path.
struct Out(Vec<String>);

impl Out {
    fn rec(&mut self, line: String) {
        self.0.push(line);
    }

    /// Records a failed call when `code` is not CUDA_SUCCESS; true when the call succeeded.
    fn check(&mut self, lib: &Libcuda, call: &str, code: c_int) -> bool {
        if code != 0 {
            let text = lib.error_string(code);
            self.rec(format!("fail {call} {code} {text}"));
        }
        code == 0
    }
}

fn version(lib: &Libcuda, out: &mut Out) {
    // SAFETY: cuDriverGetVersion's declaration in cuda.h.
    match unsafe { lib.func::<IntOutFn>(c"cuDriverGetVersion") } {
        Some(f) => {
            let mut v: c_int = 0;
            // SAFETY: v is a valid out-pointer.
            if out.check(lib, "cuDriverGetVersion", unsafe { f(&mut v) }) {
                out.rec(format!("version {v}"));
            }
        }
        None => out.rec("missing cuDriverGetVersion".into()),
    }
}

fn loaded_path() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libcuda.so"))
        .map(str::to_string)
}

fn init(lib: &Libcuda, out: &mut Out) -> bool {
    // SAFETY: cuInit's declaration in cuda.h.
    match unsafe { lib.func::<InitFn>(c"cuInit") } {
        // SAFETY: flags must be 0.
        Some(f) => out.check(lib, "cuInit", unsafe { f(0) }),
        None => {
            out.rec("missing cuInit".into());
            false
        }
    }
}

fn probe(lib: &Libcuda, out: &mut Out) {
    version(lib, out);
    for s in CHECKPOINT_SYMBOLS {
        if lib.addr(s).is_null() {
            out.rec(format!("missing {}", s.to_string_lossy()));
        }
    }
    if !init(lib, out) {
        return;
    }
    // SAFETY: the declarations of cuDeviceGetCount, cuDeviceGet and cuDeviceGetName in cuda.h.
    let (count, get, name) = unsafe {
        (
            lib.func::<IntOutFn>(c"cuDeviceGetCount"),
            lib.func::<DeviceGetFn>(c"cuDeviceGet"),
            lib.func::<DeviceNameFn>(c"cuDeviceGetName"),
        )
    };
    let (Some(count), Some(get), Some(name)) = (count, get, name) else {
        return;
    };
    let mut n: c_int = 0;
    // SAFETY: n is a valid out-pointer.
    if !out.check(lib, "cuDeviceGetCount", unsafe { count(&mut n) }) {
        return;
    }
    for i in 0..n {
        let mut dev: c_int = 0;
        // SAFETY: dev is a valid out-pointer; i is below the count the driver gave.
        if !out.check(lib, "cuDeviceGet", unsafe { get(&mut dev, i) }) {
            return;
        }
        let mut buf = [0 as c_char; 256];
        // SAFETY: the driver writes at most len bytes, NUL included, into buf.
        if !out.check(lib, "cuDeviceGetName", unsafe {
            name(buf.as_mut_ptr(), buf.len() as c_int, dev)
        }) {
            return;
        }
        // SAFETY: the buffer was zeroed and the driver NUL-terminates within len.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        out.rec(format!("gpu {}", s.to_string_lossy().trim()));
    }
}

/// The checkpoint API call an operation makes, by its name in cuda.h.
pub fn symbol_of(op: &str) -> Option<&'static CStr> {
    Some(match op {
        "get-state" => c"cuCheckpointProcessGetState",
        "get-restore-tid" => c"cuCheckpointProcessGetRestoreThreadId",
        "lock" => c"cuCheckpointProcessLock",
        "checkpoint" => c"cuCheckpointProcessCheckpoint",
        "restore" => c"cuCheckpointProcessRestore",
        "unlock" => c"cuCheckpointProcessUnlock",
        _ => return None,
    })
}

fn process_call(lib: &Libcuda, out: &mut Out, op: &str, pid: c_int, timeout_ms: c_uint) {
    let Some(sym) = symbol_of(op) else { return };
    let name = sym.to_string_lossy().into_owned();
    // A driver without the checkpoint API is "too old": say which symbol and which version.
    if lib.addr(sym).is_null() {
        out.rec(format!("missing {name}"));
        version(lib, out);
        return;
    }
    if !init(lib, out) {
        return;
    }
    // SAFETY (every call below): the function type is the symbol's declaration in cuda.h; the
    // out-pointers and argument structs live on this stack frame for the whole call.
    let code = unsafe {
        match op {
            "get-state" | "get-restore-tid" => {
                let f = lib.func::<PidOutFn>(sym);
                let mut v: c_int = -1;
                let code = f.map_or(-1, |f| f(pid, &mut v));
                if code == 0 {
                    out.rec(format!("value {v}"));
                }
                code
            }
            "lock" => {
                let mut args = LockArgs {
                    timeout_ms,
                    ..Default::default()
                };
                lib.func::<LockFn>(sym).map_or(-1, |f| f(pid, &mut args))
            }
            _ => {
                let mut args = ReservedArgs::default();
                lib.func::<PidArgsFn>(sym).map_or(-1, |f| f(pid, &mut args))
            }
        }
    };
    out.check(lib, &name, code);
}

/// Runs one operation as argv asks; returns the process's exit status.
pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let op = args.first().map(String::as_str).unwrap_or("");
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok());
    let pid = num(1).and_then(|p| c_int::try_from(p).ok());
    let timeout = num(2).and_then(|t| c_uint::try_from(t).ok()).unwrap_or(0);
    if op != "probe" && (symbol_of(op).is_none() || pid.is_none()) {
        eprintln!("usage: helper probe | helper OP PID [TIMEOUT_MS]");
        std::process::exit(2);
    }
    let mut out = Out(Vec::new());
    match Libcuda::open() {
        Err(e) => out.rec(format!("nolib {}", e.replace('\n', " "))),
        Ok(lib) => {
            out.rec(format!(
                "lib {}",
                loaded_path().unwrap_or_else(|| LIBCUDA.to_string_lossy().into_owned())
            ));
            match pid {
                Some(pid) if op != "probe" => process_call(&lib, &mut out, op, pid, timeout),
                _ => probe(&lib, &mut out),
            }
        }
    }
    out.rec("end".into());
    let mut text = out.0.join("\n");
    text.push('\n');
    let ok = std::io::stdout().write_all(text.as_bytes()).is_ok();
    std::process::exit(if ok { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_names_a_checkpoint_symbol() {
        for op in [
            "get-state",
            "get-restore-tid",
            "lock",
            "checkpoint",
            "restore",
            "unlock",
        ] {
            let s = symbol_of(op).unwrap();
            assert!(CHECKPOINT_SYMBOLS.contains(&s), "{op}");
        }
        assert_eq!(symbol_of("probe"), None);
        assert_eq!(symbol_of("toggle"), None);
    }

    #[test]
    fn argument_structs_have_the_driver_layout() {
        // cuda.h: CUcheckpointLockArgs is 4 + 4 + 7 * 8 bytes, the others 8 * 8.
        assert_eq!(std::mem::size_of::<LockArgs>(), 64);
        assert_eq!(std::mem::size_of::<ReservedArgs>(), 64);
    }
}
