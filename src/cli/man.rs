//! `stasis man [DIR]`: man pages generated from the clap definitions — `stasis.1` and one
//! `stasis-COMMAND.1` per command, as git and podman ship them — so they never drift from
//! `--help`. No build step makes them: the binary writes its own.

use super::{usage, Cli, Failure};
use clap::{Args, CommandFactory};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Where to write the pages (a man1 directory, such as /usr/local/share/man/man1).
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// Writes every page into `dir`; returns their paths, `stasis.1` first.
pub fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    // subcommands get their display names (stasis-checkpoint) and the global options
    cmd.build();
    let page = |c: clap::Command| {
        clap_mangen::Man::new(c)
            .source(format!("stasis {}", env!("CARGO_PKG_VERSION")))
            .manual("stasis manual")
            .generate_to(dir)
    };
    let mut written = vec![page(cmd.clone())?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(page(sub.clone())?);
    }
    Ok(written)
}

pub fn man(a: ManArgs) -> Result<i32, Failure> {
    let written = write_pages(&a.dir).map_err(|e| usage(format!("{}: {e}", a.dir.display())))?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_command() {
        let d = tempfile::tempdir().unwrap();
        let pages = write_pages(d.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "stasis.1");
        for want in ["stasis-checkpoint.1", "stasis-logs.1", "stasis-stats.1"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let ck = std::fs::read_to_string(d.path().join("stasis-checkpoint.1")).unwrap();
        assert!(ck.contains("leave\\-running"), "{ck}");
    }
}
