//! Builds the driver half of `cuda-checkpoint` (src/cuda/helper.rs) as a dynamically linked
//! program, for stasis to embed.
//!
//! stasis itself is linked statically (it is also every container's init), and a static glibc
//! program cannot host libcuda: the library's threads and thread-local storage need the
//! process's libc to be the dynamic one (see src/cuda/helper.rs). Cargo applies the crate's
//! `+crt-static` to every binary of the package, so this one file, which needs only std, is
//! compiled here with rustc directly and without it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/cuda/helper.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let exe = out.join("cuda-checkpoint-helper");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition=2021",
        "--crate-type=bin",
        "--crate-name=cuda_checkpoint_helper",
        "-Copt-level=2",
        "-Cpanic=abort",
        "-Cstrip=symbols",
        "-Ctarget-feature=-crt-static",
    ]);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.arg(format!("--target={target}"));
    }
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut a = std::ffi::OsString::from("-Clinker=");
        a.push(linker);
        cmd.arg(a);
    }
    cmd.arg("-o").arg(&exe).arg(src);
    let status = cmd
        .status()
        .expect("cannot run rustc for the cuda-checkpoint helper");
    assert!(status.success(), "building {src} failed");
}
