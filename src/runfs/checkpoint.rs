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

/// The last complete checkpoint of a run folder, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let checkpoints = run_dir.join(super::CHECKPOINTS);
    let name = std::fs::read_to_string(checkpoints.join(LATEST)).ok()?;
    let dir = checkpoints.join(name.trim());
    dir.is_dir().then_some(dir)
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
}
