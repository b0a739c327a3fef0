//! Whether a process tree uses an NVIDIA GPU: some process holds a `/dev/nvidia*` file open or
//! mapped, or has libcuda mapped.
//!
//! A checkpoint asks this of every job, so it must cost a job without a GPU nothing: on a host
//! without the NVIDIA driver it is one `stat`, and elsewhere it reads the fd links and maps of
//! the tree's processes and stops at the first sign of a GPU.

use std::fs;
use std::path::Path;

/// The device file every CUDA process holds; it exists only where the NVIDIA driver is loaded.
pub const NVIDIACTL: &str = "/dev/nvidiactl";

/// The first sign of GPU use found in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuUse {
    /// The process that shows it.
    pub pid: i32,
    /// What it holds: a device path, or the library mapped.
    pub evidence: String,
}

impl std::fmt::Display for GpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} holds {}", self.pid, self.evidence)
    }
}

/// True when the NVIDIA driver is loaded on this host, i.e. a GPU job is possible at all.
pub fn driver_loaded() -> bool {
    Path::new(NVIDIACTL).exists()
}

/// The first process of the tree rooted at `root` (itself and its descendants) that uses a
/// GPU; `None` at once on a host without the NVIDIA driver.
pub fn tree_uses_gpu(root: i32) -> Option<GpuUse> {
    if !driver_loaded() {
        return None;
    }
    tree_uses_gpu_in(Path::new("/proc"), root)
}

/// [`tree_uses_gpu`] over a given proc directory, without the driver check.
pub fn tree_uses_gpu_in(proc: &Path, root: i32) -> Option<GpuUse> {
    let mut todo = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(evidence) = process_uses_gpu(proc, pid) {
            return Some(GpuUse { pid, evidence });
        }
        todo.extend(children(proc, pid));
    }
    None
}

/// The children of every thread of `pid` (a process that vanished has none).
fn children(proc: &Path, pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(proc.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// What in `pid`'s fds or maps shows GPU use, if anything.
fn process_uses_gpu(proc: &Path, pid: i32) -> Option<String> {
    let dir = proc.join(pid.to_string());
    if let Ok(fds) = fs::read_dir(dir.join("fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if is_gpu_device(&t) {
                    return Some(t.into_owned());
                }
            }
        }
    }
    let maps = fs::read_to_string(dir.join("maps")).ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| is_gpu_device(p) || is_libcuda(p))
        .map(str::to_string)
}

/// `/dev/nvidia0`, `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-caps/...`: CRIU cannot
/// dump any of them without the plugin.
fn is_gpu_device(path: &str) -> bool {
    path.starts_with("/dev/nvidia")
}

fn is_libcuda(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("libcuda.so"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn recognises_gpu_files() {
        for p in ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"] {
            assert!(is_gpu_device(p), "{p}");
        }
        for p in ["/dev/null", "/tmp/dev/nvidia0"] {
            assert!(!is_gpu_device(p), "{p}");
        }
        assert!(is_libcuda(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04"
        ));
        assert!(is_libcuda("/usr/local/nvidia/lib64/libcuda.so.1"));
        assert!(!is_libcuda("/usr/lib/libcudart.so.12"));
    }

    /// A fake /proc: pid 1 with children 2 and 3 (3 through its second thread), 3 with
    /// child 4.
    fn fake_proc() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mk = |pid: i32, tasks: &[(i32, &str)]| {
            let p = d.path().join(pid.to_string());
            fs::create_dir_all(p.join("fd")).unwrap();
            symlink("/dev/null", p.join("fd/0")).unwrap();
            symlink("pipe:[123]", p.join("fd/1")).unwrap();
            fs::write(
                p.join("maps"),
                "55d0-55d1 r-xp 00000000 08:01 1234 /usr/bin/python3\n7f00-7f01 rw-p 00000000 00:00 0 \n",
            )
            .unwrap();
            for (tid, kids) in tasks {
                let t = p.join("task").join(tid.to_string());
                fs::create_dir_all(&t).unwrap();
                fs::write(t.join("children"), kids).unwrap();
            }
            p
        };
        mk(1, &[(1, "2 3 ")]);
        mk(2, &[(2, "")]);
        mk(3, &[(3, ""), (30, "4 ")]);
        mk(4, &[(4, "")]);
        d
    }

    #[test]
    fn a_tree_without_gpu_files_uses_no_gpu() {
        let d = fake_proc();
        assert_eq!(tree_uses_gpu_in(d.path(), 1), None);
        // a vanished process is no GPU user either
        assert_eq!(tree_uses_gpu_in(d.path(), 99), None);
    }

    #[test]
    fn finds_an_open_device_deep_in_the_tree() {
        let d = fake_proc();
        symlink("/dev/nvidia0", d.path().join("4/fd/7")).unwrap();
        let u = tree_uses_gpu_in(d.path(), 1).unwrap();
        assert_eq!(
            u,
            GpuUse {
                pid: 4,
                evidence: "/dev/nvidia0".into()
            }
        );
        assert_eq!(u.to_string(), "pid 4 holds /dev/nvidia0");
        // below the root only: the parent's GPU is not the subtree's
        assert_eq!(tree_uses_gpu_in(d.path(), 2), None);
    }

    #[test]
    fn finds_a_mapped_libcuda() {
        let d = fake_proc();
        fs::write(
            d.path().join("2/maps"),
            "7f10-7f20 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04\n",
        )
        .unwrap();
        let u = tree_uses_gpu_in(d.path(), 1).unwrap();
        assert_eq!(u.pid, 2);
        assert!(u.evidence.ends_with("libcuda.so.580.159.04"));
    }

    #[test]
    fn this_test_process_uses_no_gpu() {
        let me = std::process::id() as i32;
        assert_eq!(tree_uses_gpu_in(Path::new("/proc"), me), None);
    }
}
