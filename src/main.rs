//! The `stasis` binary: the CLI, and — when exec'd from the init store as `stasis-init` — a
//! container's init. The init check comes first so init never pays for argument parsing.

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
    std::process::exit(cli::main());
}
