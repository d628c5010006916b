//! Checkpoint folders inside a run: `checkpoints/step-000200/`, each written under a temporary
//! name and renamed when complete, and `checkpoints/latest`, a one-line file naming the last
//! complete one (rewritten atomically after the rename). What goes inside a checkpoint is the
//! model code's business (`crate::model::checkpoint`).

use super::atomic::{self, TempDir};
use std::io;
use std::path::{Path, PathBuf};

/// Name of the pointer file.
pub const LATEST: &str = "latest";

/// Folder name for a step.
pub fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Write a checkpoint for `step`: `fill` writes files into the given folder; on success the
/// folder is published and `latest` points at it. Older checkpoints beyond `keep` are removed.
pub fn save(
    checkpoints: &Path,
    step: u64,
    keep: usize,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(checkpoints)?;
    let name = step_name(step);
    let tmp = TempDir::new(&checkpoints.join(&name))?;
    fill(tmp.path())?;
    let dir = tmp.publish()?;
    atomic::write_file(&checkpoints.join(LATEST), format!("{name}\n").as_bytes())?;
    prune(checkpoints, keep, &name)?;
    Ok(dir)
}

fn prune(checkpoints: &Path, keep: usize, current: &str) -> io::Result<()> {
    let mut steps: Vec<String> = std::fs::read_dir(checkpoints)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    for name in steps.into_iter().take(excess) {
        if name != current {
            std::fs::remove_dir_all(checkpoints.join(name))?;
        }
    }
    Ok(())
}

/// Whether `name` is a checkpoint folder's name (`step-` and digits): one path component, so
/// a `latest` pointer can never lead outside its run's checkpoints.
fn is_step_name(name: &str) -> bool {
    name.strip_prefix("step-")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The newest `step-N` folder in `checkpoints` (complete by construction: a checkpoint is
/// written under a temporary name and renamed).
fn newest(checkpoints: &Path) -> Option<PathBuf> {
    std::fs::read_dir(checkpoints)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_step_name(n))
        .max_by_key(|n| n["step-".len()..].parse::<u64>().unwrap_or(0))
        .map(|n| checkpoints.join(n))
}

/// What is wrong with a run's `checkpoints/latest`, if anything: it names something that is
/// not one of this run's checkpoints (a path, a missing folder). [`latest`] then falls back to
/// the newest complete checkpoint.
pub fn latest_problem(run_dir: &Path) -> Option<String> {
    let checkpoints = run_dir.join(super::CHECKPOINTS);
    let pointer = checkpoints.join(LATEST);
    let name = crate::untrusted::read_small(&pointer, 4096).ok()?;
    let name = name.trim();
    if !is_step_name(name) {
        return Some(format!(
            "{} names `{}`, which is not a checkpoint of this run",
            pointer.display(),
            name.escape_debug()
        ));
    }
    (!checkpoints.join(name).is_dir())
        .then(|| format!("{} names `{name}`, which does not exist", pointer.display()))
}

/// The last complete checkpoint of a run folder, if any: the one `checkpoints/latest` names,
/// or the newest complete one when the pointer is missing or names no checkpoint of this run.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let checkpoints = run_dir.join(super::CHECKPOINTS);
    let named = crate::untrusted::read_small(&checkpoints.join(LATEST), 4096)
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| is_step_name(n))
        .map(|n| checkpoints.join(n))
        .filter(|d| d.is_dir());
    named.or_else(|| newest(&checkpoints))
}

/// Remove what a process that died mid-write left in a run folder or its checkpoints:
/// `.step-N.tmp-PID` folders and `.latest.tmp-PID`, `.run.json.tmp-PID`… files whose PID is
/// gone; returns how many were removed.
pub fn remove_abandoned(run_dir: &Path) -> usize {
    let mut removed = 0;
    for dir in [run_dir.to_path_buf(), run_dir.join(super::CHECKPOINTS)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.<name>.tmp-<pid>`: a folder or file of `atomic` whose writer died before the rename.
            let pid = name
                .strip_prefix('.')
                .and_then(|r| r.rsplit_once(".tmp-"))
                .and_then(|(_, pid)| pid.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if super::status::pid_alive(pid) {
                continue;
            }
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
            removed += usize::from(gone.is_ok());
        }
    }
    removed
}

/// A path given on the command line: a checkpoint folder, or a run folder (its latest).
pub fn resolve(path: &Path) -> Option<PathBuf> {
    if path.join(super::RUN_JSON).is_file() || path.join(super::CHECKPOINTS).is_dir() {
        latest(path)
    } else if path.is_dir() {
        Some(path.to_path_buf())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_points_at_the_last_complete_checkpoint_and_old_ones_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        for step in [10, 20, 30] {
            save(&ck, step, 2, |p| {
                std::fs::write(p.join("w"), step.to_string())?;
                Ok(())
            })
            .unwrap();
        }
        let l = latest(d.path()).unwrap();
        assert!(l.ends_with("step-000030"));
        assert!(!ck.join("step-000010").exists());
        assert!(ck.join("step-000020").exists());
        // A failing fill leaves latest alone and no folder behind.
        let r = save(&ck, 40, 2, |_| anyhow::bail!("disk full"));
        assert!(r.is_err());
        assert!(latest(d.path()).unwrap().ends_with("step-000030"));
        assert!(!ck.join("step-000040").exists());
    }

    #[test]
    fn a_latest_pointer_outside_the_run_is_refused_for_the_newest_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        for step in [10, 20] {
            save(&ck, step, 5, |_| Ok(())).unwrap();
        }
        assert_eq!(latest_problem(d.path()), None);
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("checkpoints/step-000099")).unwrap();
        for bad in [
            "../../other-run/checkpoints/step-000099",
            "/etc",
            "step-000015",
        ] {
            std::fs::write(ck.join(LATEST), bad).unwrap();
            assert!(latest(d.path()).unwrap().ends_with("step-000020"), "{bad}");
            assert!(latest_problem(d.path()).is_some(), "{bad}");
        }
    }

    #[test]
    fn folders_of_dead_writers_are_removed_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        let dead = ck.join(".step-000030.tmp-4194312");
        let live = ck.join(format!(".step-000040.tmp-{}", std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        // Temp files of atomic writes, in the checkpoints folder and the run folder.
        let dead_latest = ck.join(".latest.tmp-4194313");
        let dead_status = d.path().join(".run.json.tmp-4194314");
        std::fs::write(&dead_latest, "step-000030\n").unwrap();
        std::fs::write(&dead_status, "{").unwrap();
        assert_eq!(remove_abandoned(d.path()), 3);
        assert!(!dead.exists() && live.exists());
        assert!(!dead_latest.exists() && !dead_status.exists());
    }
}
