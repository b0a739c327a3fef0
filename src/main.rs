//! The `stasis` binary: the CLI, and — when exec'd from the init store as `stasis-init` — a
//! container's init. The init check comes first so init never pays for argument parsing.
//! Run as `cuda-checkpoint` (CRIU's cuda plugin does, through `stasis::cuda::shim`), it is
//! that command.

mod cli;

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if argv0 == "stasis-init" {
        stasis::init::main();
    }
    // CRIU's action script: not a user command, so not in the CLI's help.
    if stasis::criu::hook::invoked_as_hook(&argv0) {
        std::process::exit(stasis::criu::hook::run());
    }
    if std::path::Path::new(&argv0).file_name() == Some(stasis::cuda::shim::COMMAND.as_ref()) {
        std::process::exit(stasis::cuda::cli::main(std::env::args_os().skip(1)));
    }
    std::process::exit(cli::main());
}
