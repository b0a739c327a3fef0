//! Checkpoints through the API: dump, restore (through the monitor, or a new one), export and
//! import archives, and what a workload's generations say.

use super::*;
use crate::store::generations;

/// Finds CRIU in the caller's environment and checks it (once per boot).
pub fn locate_criu(root: &StateRoot) -> Result<crate::criu::Criu, ApiError> {
    root.ensure()?;
    Ok(crate::criu::locate_checked(&crate::criu::cache_dir(root))?)
}

/// A request a monitor is working on: its reply is still to come. Between the request and
/// [`Pending::wait`] nothing forks, so a caller may show progress from another thread.
pub struct Pending {
    conn: OwnedFd,
}

impl Pending {
    /// Waits for the monitor's reply.
    pub fn wait(self) -> Result<Reply, ApiError> {
        next_reply(&self.conn)
    }
}

/// Takes a checkpoint.
pub fn checkpoint(
    root: &StateRoot,
    name: &WorkloadName,
    opts: CheckpointOpts,
) -> Result<Reply, ApiError> {
    start_checkpoint(root, name, opts)?.wait()
}

/// Asks the monitor of `name` for a checkpoint (adopting the workload first if its monitor
/// died) and returns without waiting for the dump.
pub fn start_checkpoint(
    root: &StateRoot,
    name: &WorkloadName,
    mut opts: CheckpointOpts,
) -> Result<Pending, ApiError> {
    let o = supervised(root, name)?;
    if !o.monitor_alive {
        return Err(not_running_or_orphan(&o, name));
    }
    opts.criu = Some(locate_criu(root)?);
    let c = connect(root, name)?;
    protocol::send(c.as_fd(), &Request::Checkpoint { opts }, &[])
        .map_err(io_err("send to the monitor"))?;
    Ok(Pending { conn: c })
}

/// Restores a workload: through its monitor if it has one, else by starting a new monitor.
pub fn restore(
    root: &StateRoot,
    name: &WorkloadName,
    opts: RestoreOpts,
) -> Result<Reply, ApiError> {
    start_restore(root, name, opts)?.wait()
}

/// Asks for a restore (starting a monitor for it if the workload has none) and returns
/// without waiting for CRIU. The caller must be single-threaded: this may fork a monitor.
pub fn start_restore(
    root: &StateRoot,
    name: &WorkloadName,
    mut opts: RestoreOpts,
) -> Result<Pending, ApiError> {
    let wd = root.workload(name);
    supervised(root, name)?;
    let o = settled(&wd)?;
    opts.criu = Some(locate_criu(root)?);
    if o.monitor_alive {
        let c = connect(root, name)?;
        protocol::send(c.as_fd(), &Request::Restore { opts }, &[])
            .map_err(io_err("send to the monitor"))?;
        return Ok(Pending { conn: c });
    }
    if o.state.status == Status::Running {
        return Err(not_running_or_orphan(&o, name));
    }
    if o.state.status == Status::Migrated {
        // Its generations stay here, but the job runs elsewhere: a restore would double it.
        return Err(ApiError::Monitor {
            code: CODE_STASIS_ERROR,
            message: format!(
                "{name} was {}: restoring it here would make a second copy (remove it with `stasis rm {name}`)",
                o.state.note.as_deref().unwrap_or("migrated")
            ),
        });
    }
    // Check before starting a monitor, so a refusal leaves nothing changed.
    let g = generations::pick(&wd, opts.generation)?;
    g.verify(name.as_str())?;
    let lock = lock_existing(&wd)?;
    let conn = spawn_monitor(root, &wd, lock, None)?;
    protocol::send(conn.as_fd(), &Request::StartRestore { opts }, &[])
        .map_err(io_err("send to the monitor"))?;
    Ok(Pending { conn })
}

/// Exports generation `gen` (newest when None) of a workload to `out`.
pub fn export(
    root: &StateRoot,
    name: &WorkloadName,
    gen: Option<u32>,
    out: impl std::io::Write,
) -> Result<u32, ApiError> {
    let wd = root.workload(name);
    if !wd.exists() {
        return Err(StateError::NotFound(name.clone()).into());
    }
    let g = generations::pick(&wd, gen)?;
    crate::store::archive::export(&wd, &g, out)?;
    Ok(g.number)
}

/// Imports an export archive as a checkpointed workload named `name` (or the archive's).
pub fn import(
    root: &StateRoot,
    input: impl std::io::Read,
    origin: &str,
    name: Option<WorkloadName>,
) -> Result<WorkloadName, ApiError> {
    root.ensure()?;
    let staging = root
        .root
        .join("workloads")
        .join(format!(".import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    crate::store::atomic::mkdir_p(&staging, 0o700)?;
    let res = (|| -> Result<WorkloadName, ApiError> {
        let imp = crate::store::archive::import(
            input,
            origin,
            &staging,
            &crate::store::init_copies::dir(),
        )?;
        let name = match name {
            Some(n) => n,
            None => {
                WorkloadName::parse(&imp.header.name).map_err(|e| CheckpointError::Archive {
                    path: origin.to_string(),
                    why: e.to_string(),
                })?
            }
        };
        let mut spec = imp.header.manifest.spec.clone();
        spec.name = Some(name.clone());
        let wd = root.workload(&name);
        wd.create()?;
        let inner = (|| -> Result<(), ApiError> {
            imp.install_init()?;
            crate::store::atomic::write_json_atomic(&wd.spec_path(), &spec)?;
            crate::store::atomic::mkdir_p(&wd.checkpoints(), 0o700)?;
            let gen = imp.header.manifest.generation;
            let dst = wd.checkpoints().join(gen.to_string());
            std::fs::rename(&imp.images, &dst)
                .map_err(io_err(format!("move images to {}", dst.display())))?;
            // The segments keep their global offsets; the monitor starts a fresh current one
            // where the last ends.
            for (start, part) in &imp.log {
                let dst = wd.dir.join(format!("log.{start}"));
                std::fs::rename(part, &dst)
                    .map_err(io_err(format!("move log to {}", dst.display())))?;
            }
            std::fs::File::create(wd.log_path())
                .map_err(io_err(format!("create {}", wd.log_path().display())))?;
            // The sessions in the dumped tree come with their records, so `exec --list` and
            // the restore know them as the exporting side did.
            for e in &imp.header.manifest.sessions {
                if let Some(rec) = &e.record {
                    crate::store::sessions::save(&wd, rec)?;
                }
            }
            let mut st = WorkloadState::new(&name);
            st.status = Status::Checkpointed;
            st.generation = Some(gen);
            wd.save(&st)?;
            generations::Generation {
                number: gen,
                dir: dst,
            }
            .verify(name.as_str())?;
            Ok(())
        })();
        if let Err(e) = inner {
            let _ = std::fs::remove_dir_all(&wd.dir);
            return Err(e);
        }
        Ok(name)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    res
}
