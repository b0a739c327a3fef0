//! The `stasis` binary: the CLI, and — when exec'd from the init store as `stasis-init` — a
//! container's init. The init check comes first so init never pays for argument parsing.
//! Run as `cuda-checkpoint` (CRIU's cuda plugin does, through `stasis::cuda::shim`), it is
//! that command.

mod cli;

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if argv0 == "stasis-init" {
        let fd = args
            .next()
            .and_then(|a| a.to_str().and_then(|s| s.parse().ok()))
            .unwrap_or(stasis::container::INIT_CTL_FD);
        stasis::init::main(fd);
    }
    if std::path::Path::new(&argv0).file_name() == Some(stasis::cuda::shim::COMMAND.as_ref()) {
        std::process::exit(stasis::cuda::cli::main(args));
    }
    std::process::exit(cli::main());
}
