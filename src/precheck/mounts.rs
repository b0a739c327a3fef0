//! The job's mounts, as a dump will meet them: which mount every held file is on, whether
//! CRIU can name that mount, and whether the checkpoint will take it away first.
//!
//! CRIU looks each held file's mount up (by the `mnt_id` of its fdinfo) in the mount tables
//! of the namespaces it dumps: a file on a mount of another namespace ("Can't lookup mount")
//! or on a mount hidden under another ("overmounted") fails the dump. And before a dump of a
//! job on the host's tree, stasis unmounts from the container what the host has unmounted
//! since the job started (see `monitor::checkpoint`), so a file still open there is left on a
//! detached mount, which CRIU cannot find either.

use super::findings::{Finding, Holder, Place};
use super::procs::{proc_path, Proc};
use super::InspectError;
use crate::container::mounts::{self, Layout, MountEntry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Every mount of the job's mount namespaces, and what a dump will make of each.
#[derive(Debug, Default, Clone)]
pub struct MountView {
    pub by_id: HashMap<u32, MountEntry>,
    /// Mounts the checkpoint unmounts first (gone from the host).
    pub gone: HashSet<u32>,
    /// Mounts hidden under another mount.
    pub covered: HashSet<u32>,
}

/// True when `sub` is `path` or one of its parent directories (CRIU's `issubpath`).
fn covers(sub: &Path, path: &Path) -> bool {
    path.starts_with(sub)
}

/// The mounts of one table that are hidden, as CRIU's `mnt_is_overmounted` decides: a
/// sibling is mounted over it (or over a directory above it), a child is mounted at its own
/// mount point, or its parent is hidden (so the top of a stack counts too).
pub fn covered(table: &[MountEntry]) -> HashSet<u32> {
    let by_id: HashMap<u32, &MountEntry> = table.iter().map(|m| (m.id, m)).collect();
    fn hidden(
        m: &MountEntry,
        table: &[MountEntry],
        by_id: &HashMap<u32, &MountEntry>,
        memo: &mut HashMap<u32, bool>,
        depth: usize,
    ) -> bool {
        if let Some(&h) = memo.get(&m.id) {
            return h;
        }
        let mut h = false;
        if let Some(parent) = by_id.get(&m.parent).filter(|p| p.id != m.id) {
            h = (depth < table.len() && hidden(parent, table, by_id, memo, depth + 1))
                || table
                    .iter()
                    .any(|t| t.id != m.id && t.parent == m.parent && covers(&t.point, &m.point));
        }
        h = h
            || table
                .iter()
                .any(|c| c.parent == m.id && c.id != m.id && c.point == m.point);
        memo.insert(m.id, h);
        h
    }
    let mut memo = HashMap::new();
    table
        .iter()
        .filter(|m| hidden(m, table, &by_id, &mut memo, 0))
        .map(|m| m.id)
        .collect()
}

impl MountView {
    /// From the mount tables of the job's namespaces (the root task's first) and the mount
    /// points the checkpoint would unmount from the root task's namespace.
    pub fn build(tables: &[Vec<MountEntry>], gone: &[PathBuf]) -> MountView {
        let mut v = MountView::default();
        for (i, t) in tables.iter().enumerate() {
            v.covered.extend(covered(t));
            for m in t {
                if i == 0 && gone.contains(&m.point) {
                    v.gone.insert(m.id);
                }
                v.by_id.insert(m.id, m.clone());
            }
        }
        v
    }

    /// What a dump makes of a file at `path` on mount `mnt_id`, held at `at`.
    pub fn judge(&self, at: &Place, path: &Path, mnt_id: i32) -> Option<Finding> {
        let Some(m) = u32::try_from(mnt_id)
            .ok()
            .and_then(|id| self.by_id.get(&id))
        else {
            return Some(Finding::MountUnknown {
                at: at.clone(),
                path: path.to_path_buf(),
                mnt_id,
            });
        };
        if self.gone.contains(&m.id) {
            return Some(Finding::MountGone {
                at: at.clone(),
                path: path.to_path_buf(),
                mount: m.point.clone(),
            });
        }
        if self.covered.contains(&m.id) {
            return Some(Finding::MountCovered {
                at: at.clone(),
                path: path.to_path_buf(),
                mount: m.point.clone(),
            });
        }
        None
    }
}

/// Reads the mount tables of the job's mount namespaces (one process of each), and works out
/// what the checkpoint would unmount first, as `Monitor::external_mounts` does. `binds` are
/// the container's own bind mounts (volumes, the init store). Also finds mount points the
/// checkpoint cannot name to CRIU.
pub fn read(
    procs: &[Proc],
    layout: Layout,
    binds: &[PathBuf],
) -> Result<(MountView, Vec<Finding>), InspectError> {
    let mut seen = HashSet::new();
    let mut tables = Vec::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        let ns = p.ns.get("mnt").copied().unwrap_or(0);
        if !seen.insert(ns) {
            continue;
        }
        let path = proc_path(p.pid, "mountinfo");
        match super::procs::read(&path)? {
            Some(t) => tables.push(mounts::parse_mountinfo(&t)),
            None => continue,
        }
    }
    let host_path = PathBuf::from("/proc/self/mountinfo");
    let host = super::procs::read(&host_path)?.unwrap_or_default();
    let gone = match tables.first() {
        Some(t) => mounts::gone_from_host(t, &mounts::parse_mountinfo(&host), layout, binds),
        None => vec![],
    };
    let mut findings = Vec::new();
    if let (Some(t), Some(root)) = (tables.first(), procs.first()) {
        let kept: Vec<MountEntry> = t
            .iter()
            .filter(|m| !gone.contains(&m.point))
            .cloned()
            .collect();
        if let Err(mounts::MountError::Unnamable(point)) =
            mounts::externals(&kept, layout, |p| p.to_path_buf())
        {
            findings.push(Finding::MountName {
                at: root.at(Holder::Process),
                mount: point,
            });
        }
    }
    Ok((MountView::build(&tables, &gone), findings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Vec<MountEntry> {
        mounts::parse_mountinfo(text)
    }

    const T: &str = "\
1 0 8:1 / / rw - ext4 x rw
2 1 0:5 / /proc rw - proc proc rw
3 2 0:6 / /proc rw - proc proc rw
4 1 0:9 / /data rw - tmpfs t rw
5 4 0:10 / /data/in rw - tmpfs t rw
6 1 0:11 / /data rw - tmpfs t rw
7 1 0:12 / /srv rw - tmpfs t rw
";

    #[test]
    fn hidden_mounts_are_found() {
        let c = covered(&table(T));
        // a stacked /proc: both (CRIU counts the top of a stack as hidden too); the two
        // /data siblings hide each other, and what is mounted in them
        let mut ids: Vec<u32> = c.into_iter().collect();
        ids.sort();
        assert_eq!(ids, vec![2, 3, 4, 5, 6]);
    }

    #[test]
    fn files_on_missing_gone_or_hidden_mounts_are_judged() {
        let v = MountView::build(&[table(T)], &[PathBuf::from("/srv")]);
        let at = Place::new(9, "x", Holder::Fd(3));
        let p = Path::new("/f");
        assert!(v.judge(&at, p, 1).is_none());
        assert!(matches!(
            v.judge(&at, p, 77),
            Some(Finding::MountUnknown { mnt_id: 77, .. })
        ));
        assert!(
            matches!(v.judge(&at, p, 7), Some(Finding::MountGone { mount, .. }) if mount == Path::new("/srv"))
        );
        assert!(matches!(
            v.judge(&at, p, 5),
            Some(Finding::MountCovered { .. })
        ));
        assert!(v.judge(&at, p, 7 - 6).is_none());
    }
}
