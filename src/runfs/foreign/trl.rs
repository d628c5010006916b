//! TRL and any transformers Trainer: `trainer_state.json`, written whole at each checkpoint
//! (`checkpoint-N/trainer_state.json`) and at the end (`save_state`, in the output folder). Its
//! `log_history` is the run's metric records, one object per logging step (`loss`, `reward`,
//! `kl`, `completions/mean_length`, `eval_*`...). The newest file is read whole when it
//! changes; the rows it gives replace the earlier ones.

use super::{files_in, merge_same_steps, mtime};
use crate::runfs::metrics::{BadLines, MetricRow, MetricsPoll, row_of};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub const STATE: &str = "trainer_state.json";

/// The largest `trainer_state.json` read (a long run's history is a few MB).
const MAX_STATE: u64 = 256 << 20;

/// The newest `trainer_state.json` of an output folder: the top-level one or a checkpoint's,
/// by modification time (ties go to the higher checkpoint number).
pub fn newest_state(dir: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<(Option<SystemTime>, u64, PathBuf)> = Vec::new();
    let top = dir.join(STATE);
    if top.is_file() {
        candidates.push((mtime(&top), u64::MAX, top));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let p = e.path().join(STATE);
        if p.is_file() {
            candidates.push((mtime(&p), n, p));
        }
    }
    candidates
        .into_iter()
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|c| c.2)
}

/// Follows an output folder's newest trainer state.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    /// The file last read, its modification time and length.
    read: Option<(PathBuf, Option<SystemTime>, u64)>,
    global_step: u64,
    max_steps: Option<u64>,
    finished: bool,
}

impl Tail {
    pub fn new(dir: &Path) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            read: None,
            global_step: 0,
            max_steps: None,
            finished: false,
        }
    }

    /// All of the newest state's records when it changed since the last poll (`reset`).
    pub fn poll(&mut self, bad: &mut BadLines) -> std::io::Result<MetricsPoll> {
        let Some(path) = newest_state(&self.dir) else {
            return Ok(MetricsPoll::default());
        };
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let stamp = (path.clone(), mtime(&path), len);
        if self.read.as_ref() == Some(&stamp) {
            return Ok(MetricsPoll::default());
        }
        let text = crate::untrusted::read_small(&path, MAX_STATE)
            .map_err(|e| crate::runfs::atomic::named(&path, e))?;
        self.read = Some(stamp);
        *bad = BadLines::default();
        let rows = match self.parse(&text) {
            Ok(rows) => rows,
            Err(e) => {
                // A file caught mid-write by a copy that is not atomic: keep the last rows.
                bad.count = 1;
                bad.first = Some(format!("{}: {e}", path.display()));
                return Ok(MetricsPoll::default());
            }
        };
        Ok(MetricsPoll {
            reset: true,
            rows,
            more: false,
        })
    }

    fn parse(&mut self, text: &str) -> Result<Vec<MetricRow>, String> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))?;
        let history = v
            .get("log_history")
            .and_then(|h| h.as_array())
            .ok_or("no `log_history` array")?;
        self.global_step = v.get("global_step").and_then(|s| s.as_u64()).unwrap_or(0);
        self.max_steps = v
            .get("max_steps")
            .and_then(|s| s.as_u64())
            .filter(|&n| n > 0);
        self.finished = false;
        let mut rows = Vec::with_capacity(history.len());
        for entry in history {
            let Some(obj) = entry.as_object() else {
                continue;
            };
            // The Trainer's closing record (`train_runtime`, `train_loss`...) says it ended.
            self.finished |= obj.contains_key("train_runtime");
            if let Ok(r) = row_of(obj) {
                rows.push(r);
            }
        }
        Ok(merge_same_steps(rows))
    }

    pub fn newest_write(&self) -> Option<SystemTime> {
        let mut newest = self.read.as_ref().and_then(|r| r.1);
        for p in files_in(&self.dir, |_| true) {
            newest = newest.max(mtime(&p));
        }
        newest
    }

    pub fn total_steps(&self) -> Option<u64> {
        self.max_steps
    }

    pub fn finished(&self) -> bool {
        self.finished || self.max_steps.is_some_and(|m| self.global_step >= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE_JSON: &str = r#"{"global_step": 4, "max_steps": 10, "log_history": [
        {"loss": 0.5, "reward": 0.25, "step": 2, "epoch": 0.1},
        {"eval_loss": 0.7, "step": 2},
        {"loss": 0.4, "reward": 0.5, "kl": 0.01, "step": 4}
    ]}"#;

    #[test]
    fn the_newest_state_is_read_whole_and_rows_of_a_step_merge() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoint-4");
        std::fs::create_dir(&ck).unwrap();
        std::fs::write(ck.join(STATE), STATE_JSON).unwrap();
        let mut t = Tail::new(d.path());
        let mut bad = BadLines::default();
        let p = t.poll(&mut bad).unwrap();
        assert!(p.reset);
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[0].values["eval_loss"], Some(0.7));
        assert_eq!(p.rows[1].values["kl"], Some(0.01));
        assert_eq!(t.total_steps(), Some(10));
        assert!(!t.finished());
        // Unchanged: nothing new.
        assert!(t.poll(&mut bad).unwrap().rows.is_empty());
        // A torn state keeps the rows and counts the problem.
        std::fs::write(d.path().join(STATE), "{\"log_history\": [").unwrap();
        let p = t.poll(&mut bad).unwrap();
        assert!(!p.reset && p.rows.is_empty());
        assert_eq!(bad.count, 1);
        assert!(bad.first.unwrap().contains("trainer_state.json"));
    }
}
