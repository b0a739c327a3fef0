//! Where CRIU's cuda plugin (`cuda_plugin.so`, from `make cuda_plugin` in CRIU's source) is,
//! and what CRIU must be told to load it.
//!
//! CRIU loads every plugin of one directory: `--libdir DIR`, else `$CRIU_LIBS_DIR`, else the
//! directory compiled in (`/usr/lib/criu/` for a `make criu` build). scripts/install-criu.sh
//! installs the plugin in `/usr/local/lib/criu`, where CRIU's own `make install` puts it and
//! where CRIU does not look by itself: only GPU jobs are dumped with `--libdir` naming it, so no
//! other dump pays for the plugin's probing of every process.

use std::path::{Path, PathBuf};

/// The plugin's file name.
pub const FILE: &str = "cuda_plugin.so";
/// The directory CRIU loads plugins from when told nothing.
pub const CRIU_DEFAULT_DIR: &str = "/usr/lib/criu";
/// Where CRIU's own `make install` puts plugins (PREFIX=/usr/local).
pub const INSTALL_DIR: &str = "/usr/local/lib/criu";
/// The environment variable CRIU reads for its plugin directory.
pub const ENV_DIR: &str = "CRIU_LIBS_DIR";

/// A cuda plugin CRIU can load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaPlugin {
    /// The plugin file.
    pub path: PathBuf,
    /// Set when CRIU would not look there by itself: pass it as `--libdir`.
    pub libdir: Option<PathBuf>,
}

impl CudaPlugin {
    /// The CRIU arguments that make it load this plugin (none when it would anyway).
    pub fn criu_args(&self) -> Vec<String> {
        match &self.libdir {
            Some(d) => vec!["--libdir".into(), d.display().to_string()],
            None => Vec::new(),
        }
    }
}

/// No cuda plugin in any directory CRIU could load it from.
#[derive(Debug, thiserror::Error)]
#[error("CRIU's cuda plugin ({FILE}) is not installed (looked in {}): run scripts/install-criu.sh", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct NoPlugin {
    /// The directories searched, in order.
    pub searched: Vec<PathBuf>,
}

/// Finds the plugin the way CRIU run by this process would: `$CRIU_LIBS_DIR` when set (CRIU
/// then looks nowhere else), else CRIU's default directory, else `/usr/local/lib/criu`.
pub fn locate() -> Result<CudaPlugin, NoPlugin> {
    let env = std::env::var_os(ENV_DIR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    locate_in(
        env.as_deref(),
        Path::new(CRIU_DEFAULT_DIR),
        Path::new(INSTALL_DIR),
    )
}

/// [`locate`] over given directories.
pub fn locate_in(
    env_dir: Option<&Path>,
    default_dir: &Path,
    install_dir: &Path,
) -> Result<CudaPlugin, NoPlugin> {
    let found = |d: &Path| d.join(FILE).is_file();
    if let Some(d) = env_dir {
        return if found(d) {
            Ok(CudaPlugin {
                path: d.join(FILE),
                libdir: None,
            })
        } else {
            Err(NoPlugin {
                searched: vec![d.to_path_buf()],
            })
        };
    }
    if found(default_dir) {
        return Ok(CudaPlugin {
            path: default_dir.join(FILE),
            libdir: None,
        });
    }
    if found(install_dir) {
        return Ok(CudaPlugin {
            path: install_dir.join(FILE),
            libdir: Some(install_dir.to_path_buf()),
        });
    }
    Err(NoPlugin {
        searched: vec![default_dir.to_path_buf(), install_dir.to_path_buf()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn prefers_what_criu_loads_by_itself() {
        let t = tempfile::tempdir().unwrap();
        let (env, def, inst) = (
            t.path().join("env"),
            t.path().join("def"),
            t.path().join("inst"),
        );
        for d in [&env, &def, &inst] {
            fs::create_dir_all(d).unwrap();
        }
        let e = locate_in(None, &def, &inst).unwrap_err();
        assert_eq!(e.searched, [def.clone(), inst.clone()]);
        assert!(e.to_string().contains("run scripts/install-criu.sh"), "{e}");

        fs::write(inst.join(FILE), b"").unwrap();
        let p = locate_in(None, &def, &inst).unwrap();
        assert_eq!(p.libdir.as_deref(), Some(inst.as_path()));
        assert_eq!(p.criu_args(), ["--libdir", inst.to_str().unwrap()]);

        fs::write(def.join(FILE), b"").unwrap();
        let p = locate_in(None, &def, &inst).unwrap();
        assert_eq!(p.path, def.join(FILE));
        assert!(p.criu_args().is_empty());

        // CRIU_LIBS_DIR replaces the default: a plugin elsewhere is not loaded then.
        assert!(locate_in(Some(&env), &def, &inst).is_err());
        fs::write(env.join(FILE), b"").unwrap();
        assert_eq!(
            locate_in(Some(&env), &def, &inst).unwrap().path,
            env.join(FILE)
        );
    }
}
