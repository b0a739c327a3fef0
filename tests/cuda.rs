//! stasis's `cuda-checkpoint` mode against a fake libcuda.so.1 (tests/fake_libcuda.c, built
//! here with `cc`): the fake records every driver call with its arguments and returns the
//! states and errors the test scripts through its environment. The real CUDA path is checked
//! on a GPU machine by scripts/gpu-check.sh.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const FAKE_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_libcuda.c");

/// A temp dir with the fake library (current and pre-570 driver), a `cuda-checkpoint` link to
/// stasis, and the call log. Removed when dropped.
struct Fake {
    dir: tempfile::TempDir,
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    calls: Vec<String>,
}

fn cc(dir: &Path, out: &str, extra: &[&str]) {
    let out = dir.join(out);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(FAKE_SRC)
        .args(extra)
        .status()
        .expect("cc is needed to build the fake libcuda (scripts/install-deps.sh installs gcc)");
    assert!(st.success(), "building {}", out.display());
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        cc(dir.path(), "new/libcuda.so.1", &["-lpthread"]);
        cc(
            dir.path(),
            "old/libcuda.so.1",
            &["-DOLD_DRIVER", "-lpthread"],
        );
        // A libcuda that cannot load: it needs a library nobody has. (An absent libcuda cannot
        // be arranged on a host that has a real one; this fails the same dlopen.)
        fs::create_dir_all(dir.path().join("broken")).unwrap();
        let dep = dir.path().join("broken/libstasis-test-absent.so");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-x", "c", "-", "-o"])
            .arg(&dep)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(dir.path().join("broken/libcuda.so.1"))
            .arg(FAKE_SRC)
            .arg(format!("-L{}", dir.path().join("broken").display()))
            .args(["-Wl,--no-as-needed", "-lstasis-test-absent", "-lpthread"])
            .status()
            .unwrap();
        assert!(st.success());
        fs::remove_file(&dep).unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        symlink(common::bin(), dir.path().join("bin/cuda-checkpoint")).unwrap();
        Fake { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs `cuda-checkpoint ARGS` with the fake found in `lib` and the fake's `env`.
    fn run_with(&self, lib: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let _ = fs::remove_file(self.path("calls"));
        let mut c = Command::new(self.path("bin/cuda-checkpoint"));
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LD_LIBRARY_PATH", self.path(lib))
            .env("FAKE_CUDA_LOG", self.path("calls"))
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        let out = c.output().unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            calls: self.calls(),
        }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        self.run_with("new", args, env)
    }
}

#[test]
fn help_mentions_action_and_loads_nothing() {
    let f = Fake::new();
    for flag in ["-h", "--help"] {
        let r = f.run_with("broken", &[flag], &[]);
        assert_eq!(r.code, Some(0));
        assert!(r.stdout.contains("--action"), "{}", r.stdout);
        assert!(r.calls.is_empty(), "{:?}", r.calls);
    }
}

#[test]
fn get_state_prints_the_word_the_plugin_matches() {
    let f = Fake::new();
    for (n, word) in [
        (0, "running"),
        (1, "locked"),
        (2, "checkpointed"),
        (3, "failed"),
    ] {
        let r = f.run(
            &["--get-state", "--pid", "42"],
            &[("FAKE_CUDA_STATE", &n.to_string())],
        );
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(0), format!("{word}\n").as_str(), "")
        );
        assert_eq!(r.calls, ["cuInit 0", "cuCheckpointProcessGetState 42"]);
    }
    let r = f.run(&["--get-state", "--pid", "42"], &[("FAKE_CUDA_STATE", "7")]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "cuda-checkpoint: cuCheckpointProcessGetState for pid 42 returned 7, a state this stasis does not know\n"
    );
}

#[test]
fn get_restore_tid_prints_only_the_number() {
    let f = Fake::new();
    let r = f.run(
        &["--get-restore-tid", "--pid", "42"],
        &[("FAKE_CUDA_TID", "4711")],
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (Some(0), "4711\n", "")
    );
    assert_eq!(
        r.calls,
        ["cuInit 0", "cuCheckpointProcessGetRestoreThreadId 42"]
    );
}

#[test]
fn the_plugins_dump_and_restore_sequence_reaches_the_driver() {
    // The command lines of CRIU 4.2's cuda plugin, in its order: pause (lock with CRIU's
    // timeout), checkpoint, then after restore: restore and unlock.
    let f = Fake::new();
    let steps: [(&[&str], &str); 4] = [
        (
            &["--action", "lock", "--pid", "42", "--timeout", "10000"],
            "cuCheckpointProcessLock 42 timeout=10000 reserved=zero",
        ),
        (
            &["--action", "checkpoint", "--pid", "42"],
            "cuCheckpointProcessCheckpoint 42 reserved=zero",
        ),
        (
            &["--action", "restore", "--pid", "42"],
            "cuCheckpointProcessRestore 42 reserved=zero",
        ),
        (
            &["--action", "unlock", "--pid", "42"],
            "cuCheckpointProcessUnlock 42 reserved=zero",
        ),
    ];
    for (args, call) in steps {
        let r = f.run(args, &[]);
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(0), "", ""),
            "{args:?}"
        );
        assert_eq!(r.calls, ["cuInit 0", call]);
    }
    let r = f.run(&["--action", "lock", "--pid", "42"], &[]);
    assert_eq!(
        r.calls[1],
        "cuCheckpointProcessLock 42 timeout=0 reserved=zero"
    );
}

#[test]
fn a_driver_error_is_one_line_with_its_string() {
    let f = Fake::new();
    let r = f.run(
        &["--action", "lock", "--pid", "42", "--timeout", "500"],
        &[("FAKE_CUDA_FAIL", "cuCheckpointProcessLock:2")],
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "cuda-checkpoint: cuCheckpointProcessLock for pid 42 failed: out of memory (CUDA error 2)\n"
    );
    // the plugin's --get-restore-tid on a process without CUDA: an error, and no number
    let r = f.run(
        &["--get-restore-tid", "--pid", "1"],
        &[("FAKE_CUDA_FAIL", "cuCheckpointProcessGetRestoreThreadId:3")],
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(1), ""));
    assert_eq!(r.stderr, "cuda-checkpoint: cuCheckpointProcessGetRestoreThreadId for pid 1 failed: initialization error (CUDA error 3)\n");
    // a failed cuInit stops before the checkpoint API is called
    let r = f.run(
        &["--action", "checkpoint", "--pid", "42"],
        &[("FAKE_CUDA_FAIL", "cuInit:304")],
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(r.calls, ["cuInit 0"]);
    assert_eq!(r.stderr, "cuda-checkpoint: cuInit failed: OS call failed or operation not supported on this OS (CUDA error 304)\n");
}

#[test]
fn a_driver_without_the_checkpoint_api_is_too_old() {
    let f = Fake::new();
    let r = f.run_with(
        "old",
        &["--action", "lock", "--pid", "42"],
        &[("FAKE_CUDA_VERSION", "12040")],
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "cuda-checkpoint: driver too old: libcuda.so.1 (CUDA 12.4) has no cuCheckpointProcessLock; checkpointing GPU state needs NVIDIA driver 570 or newer (CUDA 12.8)\n"
    );
    assert_eq!(r.calls, ["cuDriverGetVersion"], "nothing else is called");
}

#[test]
fn a_libcuda_that_cannot_load_is_one_line() {
    let f = Fake::new();
    let r = f.run_with("broken", &["--get-state", "--pid", "42"], &[]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr
            .starts_with("cuda-checkpoint: cannot load libcuda.so.1: ")
            && r.stderr.contains("libstasis-test-absent.so")
            && r.stderr.ends_with("(is the NVIDIA driver installed?)\n")
            && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );
    assert!(r.calls.is_empty());
}

#[test]
fn a_crash_inside_the_driver_is_reported_not_shared() {
    let f = Fake::new();
    let r = f.run(
        &["--action", "checkpoint", "--pid", "42"],
        &[("FAKE_CUDA_ABORT", "cuCheckpointProcessCheckpoint")],
    );
    assert_eq!(r.code, Some(1), "stasis itself survives: {}", r.stderr);
    assert!(
        r.stderr
            .starts_with("cuda-checkpoint: the libcuda helper failed: it ended (signal: 6")
            && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_load_nothing() {
    let f = Fake::new();
    for args in [
        &[][..],
        &["--get-state"][..],
        &["--action", "toggle", "--pid", "3"][..],
        &["--pid", "x", "--get-state"][..],
        &["--get-state", "--pid", "3", "--verbose"][..],
    ] {
        let r = f.run(args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}");
        assert!(
            r.stderr.starts_with("cuda-checkpoint: ") && r.stderr.lines().count() == 1,
            "{}",
            r.stderr
        );
        assert!(r.calls.is_empty(), "{args:?}");
    }
}

#[test]
fn the_helper_probes_the_driver_for_facts() {
    let f = Fake::new();
    let mut h = stasis::cuda::embedded::command(&["probe".into()]).unwrap();
    let out = h
        .cmd
        .env("LD_LIBRARY_PATH", f.path("new"))
        .env("FAKE_CUDA_LOG", f.path("calls"))
        .env(
            "FAKE_CUDA_GPUS",
            "NVIDIA H100 80GB HBM3;NVIDIA H100 80GB HBM3",
        )
        .output()
        .unwrap();
    let r = stasis::cuda::driver::Reply::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!(r.lib.as_ref().unwrap().starts_with(f.path("new")));
    assert_eq!(r.version.unwrap().to_string(), "CUDA 12.8");
    assert!(r.missing.is_empty());
    assert_eq!(r.gpus, ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]);
    let mut facts = stasis::cuda::facts::GpuFacts::default();
    facts.merge_probe(&r);
    assert_eq!(facts.describe(), "2 x NVIDIA H100 80GB HBM3");

    let mut h = stasis::cuda::embedded::command(&["probe".into()]).unwrap();
    let out = h
        .cmd
        .env("LD_LIBRARY_PATH", f.path("old"))
        .output()
        .unwrap();
    let r = stasis::cuda::driver::Reply::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(r.missing.len(), 6, "{r:?}");
    let e = stasis::cuda::preflight::usable_driver((facts, Ok(r))).unwrap_err();
    assert!(e.to_string().starts_with("driver too old"), "{e}");
}

/// Why the driver calls run in a dynamically linked helper: a statically linked glibc program
/// (as stasis is) that dlopens a library which starts a thread or uses thread-local storage
/// (as libcuda does) crashes. If this test ever fails, glibc learnt to do it and the helper
/// could go.
#[test]
fn a_static_program_cannot_host_a_threaded_library() {
    let f = Fake::new();
    let src = f.path("host.c");
    fs::write(
        &src,
        "#include <dlfcn.h>\nint main(void) { void *h = dlopen(\"libcuda.so.1\", RTLD_NOW);\n\
         if (!h) return 3; int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, \"cuInit\");\n\
         return init(0) == 0 ? 0 : 4; }\n",
    )
    .unwrap();
    let exe = f.path("host");
    let st = Command::new("cc")
        .args(["-static", "-o"])
        .arg(&exe)
        .arg(&src)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "cc -static (glibc's libc.a is needed)");
    let st = Command::new(&exe)
        .env("LD_LIBRARY_PATH", f.path("new"))
        .env("FAKE_CUDA_LOG", f.path("calls"))
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
}

/// The whole chain with the real CRIU and its cuda plugin: CRIU finds `cuda-checkpoint` on
/// the PATH stasis's shim gives it, asks `-h`, then asks each process for its restore thread.
/// The fake answers as the driver does for a process without CUDA, so the plugin lets the
/// dump go on. CRIU_FAULT=138 (FI_PLUGIN_CUDA_FORCE_ENABLE) enables the plugin on a host
/// without a GPU.
#[test]
fn criu_with_its_cuda_plugin_runs_stasis_as_cuda_checkpoint() {
    common::require_root();
    common::require_criu();
    let plugin = stasis::cuda::plugin::locate()
        .expect("CRIU's cuda plugin is needed for this test: run scripts/install-criu.sh");
    let f = Fake::new();
    let libdir = f.path("plugins");
    fs::create_dir_all(&libdir).unwrap();
    symlink(&plugin.path, libdir.join("cuda_plugin.so")).unwrap();
    let shim_dir = f.path("shim");
    // The test binary stands in for the running stasis; point the link at stasis itself.
    let link = stasis::cuda::shim::install_for(&shim_dir, &common::bin()).unwrap();
    assert_eq!(link, shim_dir.join("cuda-checkpoint"));

    let mut sleeper = Command::new("setsid")
        .args(["sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = sleeper.id();
    let _guard = Kill(&mut sleeper);
    let images = f.path("images");
    fs::create_dir_all(&images).unwrap();
    let out = Command::new("criu")
        .args(["dump", "--leave-running", "-v4", "-o", "dump.log", "-t"])
        .arg(pid.to_string())
        .arg("-D")
        .arg(&images)
        .env(
            "PATH",
            stasis::cuda::shim::criu_path(&shim_dir, std::env::var_os("PATH")),
        )
        .env("CRIU_LIBS_DIR", &libdir)
        .env("CRIU_FAULT", "138")
        .env("LD_LIBRARY_PATH", f.path("new"))
        .env("FAKE_CUDA_LOG", f.path("calls"))
        .env("FAKE_CUDA_FAIL", "cuCheckpointProcessGetRestoreThreadId:3")
        .output()
        .unwrap();
    let log = fs::read_to_string(images.join("dump.log")).unwrap_or_default();
    assert!(out.status.success(), "criu dump failed: {log}");
    assert!(log.contains("cuda_plugin: initialized"), "{log}");
    assert!(
        log.contains(&format!(
            "cuda_plugin: no need to pause devices on pid {pid}"
        )),
        "{log}"
    );
    let calls = f.calls();
    assert!(
        calls.contains(&format!("cuCheckpointProcessGetRestoreThreadId {pid}")),
        "{calls:?}"
    );
}

/// A host with a fake NVIDIA GPU, as far as stasis and CRIU can tell: a private mount
/// namespace whose /dev is a tmpfs holding the host's basic devices plus `nvidiactl` and
/// `nvidia0` (plain files a job can hold open), entered by every command through `nsenter`.
/// libcuda is the fake; CRIU_FAULT=138 makes CRIU's cuda plugin act without a real GPU.
struct FakeGpuHost {
    holder: std::process::Child,
    fake: Fake,
}

impl FakeGpuHost {
    fn new() -> FakeGpuHost {
        let fake = Fake::new();
        let old = fake.path("olddev");
        fs::create_dir_all(&old).unwrap();
        let script = format!(
            "set -e; mount --rbind /dev {old}; mount -t tmpfs -o mode=755 fakedev /dev; \
             for n in null zero full random urandom tty ptmx; do touch /dev/$n; mount --bind {old}/$n /dev/$n; done; \
             mkdir -p /dev/pts /dev/shm /dev/net; mount --rbind {old}/pts /dev/pts; \
             touch /dev/net/tun; mount --bind {old}/net/tun /dev/net/tun; \
             mount -t tmpfs shm /dev/shm; umount -l {old}; touch /dev/nvidiactl /dev/nvidia0; \
             echo ready; exec sleep 100000",
            old = old.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let host = FakeGpuHost { holder, fake };
        assert_eq!(line.trim(), "ready", "setting up the fake GPU host failed");
        host
    }

    /// `stasis --root ROOT ARGS` on this host, with the fake driver reporting `gpus`.
    fn stasis(&self, env: &common::Env, gpus: &str, args: &[&str]) -> std::process::Output {
        self.stasis_with(env, gpus, &[], args)
    }

    /// [`Self::stasis`] with more environment (`LIB` names the fake's variant: new, old,
    /// broken).
    fn stasis_with(
        &self,
        env: &common::Env,
        gpus: &str,
        more: &[(&str, &str)],
        args: &[&str],
    ) -> std::process::Output {
        let lib = more
            .iter()
            .find(|(k, _)| *k == "LIB")
            .map_or("new", |(_, v)| *v);
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--"])
            .arg(common::bin())
            .arg("--root")
            .arg(env.root())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LD_LIBRARY_PATH", self.fake.path(lib))
            .env("FAKE_CUDA_LOG", self.fake.path("calls"))
            .env("FAKE_CUDA_GPUS", gpus)
            .env("CRIU_FAULT", "138")
            .envs(more.iter().filter(|(k, _)| *k != "LIB").copied())
            .stdin(Stdio::null());
        common::wait_output(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            std::time::Duration::from_secs(60),
            &format!("stasis {}", args.join(" ")),
        )
    }

    fn ok(&self, env: &common::Env, gpus: &str, args: &[&str]) -> String {
        let o = self.stasis(env, gpus, args);
        assert!(
            o.status.success(),
            "stasis {} failed: {}",
            args.join(" "),
            common::stderr(&o)
        );
        common::stdout(&o)
    }

    /// The driver calls made for pid `pid` since the last look.
    fn calls_for(&self, pid: i32) -> Vec<String> {
        let calls = self.fake.calls();
        let _ = fs::remove_file(self.fake.path("calls"));
        calls
            .into_iter()
            .filter(|c| c.ends_with(&format!(" {pid}")) || c.contains(&format!(" {pid} ")))
            .collect()
    }
}

impl Drop for FakeGpuHost {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Issue 10: a job holding the GPU is checkpointed and restored through CRIU's cuda plugin,
/// which stasis loads for it alone, with stasis as `cuda-checkpoint`; the generation records
/// the GPUs, an import onto another GPU model is refused in one line, and onto the same model
/// it runs. (The driver is the fake; the real one is checked on a GPU by gpu-check.sh.)
#[test]
fn a_gpu_job_goes_through_the_plugin_and_restores_only_onto_the_same_gpus() {
    common::require_root();
    common::require_criu();
    stasis::cuda::plugin::locate()
        .expect("CRIU's cuda plugin is needed for this test: run scripts/install-criu.sh");
    let host = FakeGpuHost::new();
    let env = common::Env::new();
    let other = common::Env::new();
    const GPU: &str = "Fake GPU 9000";
    // One long-lived process: the fake answers for every pid as the driver does for a CUDA
    // process, and CRIU's plugin cannot lock a process that exits while it works.
    host.ok(
        &env,
        GPU,
        &[
            "run",
            "-d",
            "--name",
            "g",
            "--",
            "sh",
            "-c",
            "exec 7</dev/nvidia0; exec sleep 100000",
        ],
    );
    let holds_gpu = || {
        let init = env.init_pid("g");
        let job =
            fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
        job.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                fs::read_link(format!("/proc/{p}/fd/7"))
                    .is_ok_and(|t| t == Path::new("/dev/nvidia0"))
            })
    };
    env.wait_until(
        "the job to hold the GPU",
        std::time::Duration::from_secs(20),
        || holds_gpu().is_some(),
    );
    let job = holds_gpu().unwrap();
    let _ = fs::remove_file(host.fake.path("calls"));

    host.ok(&env, GPU, &["checkpoint", "--leave-running", "g"]);
    let calls = host.calls_for(job);
    for want in [
        "cuCheckpointProcessLock",
        "cuCheckpointProcessCheckpoint",
        "cuCheckpointProcessRestore",
        "cuCheckpointProcessUnlock",
    ] {
        assert!(
            calls.iter().any(|c| c.starts_with(want)),
            "{want} missing: {calls:?}"
        );
    }
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(env.root().join("workloads/g/checkpoints/1/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["gpu"]["gpus"], serde_json::json!([GPU]), "{m}");
    assert_eq!(env.status("g"), "running");

    let archive = env.root().join("g.tar.zst");
    host.ok(
        &env,
        GPU,
        &["checkpoint", "g", "--export", archive.to_str().unwrap()],
    );
    assert!(host
        .calls_for(job)
        .iter()
        .any(|c| c.starts_with("cuCheckpointProcessCheckpoint")));
    let o = host.stasis(
        &other,
        "Other GPU",
        &["restore", "--import", archive.to_str().unwrap()],
    );
    let err = common::stderr(&o);
    assert_eq!(common::code(&o), 125, "{err}");
    assert!(
        err.contains("1 x Fake GPU 9000")
            && err.contains("1 x Other GPU")
            && err.lines().count() == 1,
        "{err}"
    );
    host.ok(
        &other,
        GPU,
        &["restore", "--import", archive.to_str().unwrap()],
    );
    assert_eq!(other.status("g"), "running");
    let restored = fs::read_to_string(host.fake.path("calls")).unwrap_or_default();
    assert!(
        restored.contains("cuCheckpointProcessRestore")
            && restored.contains("cuCheckpointProcessUnlock"),
        "{restored}"
    );
    for e in [&env, &other] {
        let _ = host.stasis(e, GPU, &["rm", "-f", "--all"]);
    }
}

/// Issue 10: jobs that hold no GPU pay nothing: CRIU is not told to load the cuda plugin.
#[test]
fn a_job_without_a_gpu_never_loads_the_plugin() {
    common::require_root();
    common::require_criu();
    let env = common::Env::new();
    // CRIU's debug log (the monitor inherits the variable from `run`), so the log would name
    // a plugin it loaded.
    let o = env
        .cmd(&["run", "-d", "--name", "plain", "--", "sleep", "100000"])
        .env(stasis::criu::argv::LOG_LEVEL_ENV, "4")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    env.ok(&["checkpoint", "--leave-running", "plain"]);
    let log = fs::read_to_string(env.root().join("workloads/plain/criu/dump-1.log")).unwrap();
    assert!(log.contains("Dumping finished successfully"), "{log}");
    assert!(
        !log.contains("--libdir") && !log.contains("cuda_plugin"),
        "{log}"
    );
}

/// Issue 10: each way a GPU job cannot be checkpointed or restored here is one line, exit 125,
/// and leaves the job as it was: no plugin, a driver without the checkpoint API, no libcuda
/// at restore.
#[test]
fn gpu_failures_are_one_line_and_leave_the_job_alone() {
    common::require_root();
    common::require_criu();
    let host = FakeGpuHost::new();
    let env = common::Env::new();
    let other = common::Env::new();
    const GPU: &str = "Fake GPU 9000";
    let job = ["--", "sh", "-c", "exec 7</dev/nvidia0; exec sleep 100000"];
    let no_plugins = host.fake.path("no-plugins");
    fs::create_dir_all(&no_plugins).unwrap();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 2] = [
        (
            "noplugin",
            vec![("CRIU_LIBS_DIR", no_plugins.to_str().unwrap())],
            "cuda plugin (cuda_plugin.so) is not installed",
        ),
        ("olddriver", vec![("LIB", "old")], "driver too old"),
    ];
    for (name, more, want) in &cases {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(job);
        let o = host.stasis_with(&env, GPU, more, &args);
        assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
        env.wait_until(
            "the job to start",
            std::time::Duration::from_secs(20),
            || {
                let init = env.init_pid(name);
                fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
                    .is_ok_and(|c| !c.trim().is_empty())
            },
        );
        let o = host.stasis_with(&env, GPU, more, &["checkpoint", name]);
        let err = common::stderr(&o);
        assert_eq!(common::code(&o), 125, "{name}: {err}");
        assert!(
            err.contains(want) && err.contains("(a GPU job)") && err.lines().count() == 1,
            "{name}: {err}"
        );
        assert_eq!(env.status(name), "running", "{name}");
    }
    // libcuda missing where the checkpoint is restored
    host.ok(
        &env,
        GPU,
        &[
            "run",
            "-d",
            "--name",
            "moves",
            "--",
            "sh",
            "-c",
            "exec 7</dev/nvidia0; exec sleep 100000",
        ],
    );
    let archive = env.root().join("moves.tar.zst");
    env.wait_until(
        "the job to start",
        std::time::Duration::from_secs(20),
        || {
            let init = env.init_pid("moves");
            fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
                .is_ok_and(|c| !c.trim().is_empty())
        },
    );
    host.ok(
        &env,
        GPU,
        &[
            "checkpoint",
            "--leave-running",
            "moves",
            "--export",
            archive.to_str().unwrap(),
        ],
    );
    let o = host.stasis_with(
        &other,
        GPU,
        &[("LIB", "broken")],
        &["restore", "--import", archive.to_str().unwrap()],
    );
    let err = common::stderr(&o);
    assert_eq!(common::code(&o), 125, "{err}");
    assert!(
        err.contains("holds GPU state")
            && err.contains("cannot load libcuda.so.1")
            && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        other.run(&["inspect", "moves"]).status.code() != Some(0),
        "a refused import left a record"
    );
    assert_eq!(env.status("moves"), "running");
    for e in [&env, &other] {
        let _ = host.stasis(e, GPU, &["rm", "-f", "--all"]);
    }
}
