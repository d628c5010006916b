//! verl's file logger (`trainer.logger=[..., "file"]`): one file
//! `$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl` (or `$VERL_FILE_LOGGER_PATH`), lines
//! `{"step": N, "data": {"actor/entropy": ..., "critic/score/mean": ...}}`, appended. A folder
//! holding such a file is a run; with several, the most recently written is read. Its generation
//! dumps (`trainer.rollout_data_dir`, `trainer.validation_data_dir`: `<step>.jsonl` of `input`,
//! `output`, `score`) are its samples where they are in the run's `rollouts/` or `validation/`.

use super::{files_in, first_line, flatten, mtime};
use crate::runfs::metrics::{BadLines, MAX_STEP, MetricRow, MetricsPoll};
use crate::runfs::records::Sample;
use crate::runfs::tail::TailReader;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// File names of a run folder that are never verl logs.
const NOT_LOGS: [&str; 3] = ["metrics.jsonl", "samples.jsonl", "bookmarks.jsonl"];

/// Whether a line is a verl file-logger record.
fn is_record(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .is_some_and(|v| v.get("step").is_some_and(|s| s.is_u64()) && v["data"].is_object())
}

/// The verl log of a folder: the most recently written `*.jsonl` whose first line is a record.
pub fn log_file(dir: &Path) -> Option<PathBuf> {
    files_in(dir, |n| n.ends_with(".jsonl") && !NOT_LOGS.contains(&n))
        .into_iter()
        .filter(|p| first_line(p).is_some_and(|l| is_record(&l)))
        .max_by_key(|p| mtime(p))
}

/// One record as a row.
pub fn parse(line: &str) -> Result<MetricRow, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let step = v
        .get("step")
        .and_then(|s| s.as_u64())
        .ok_or("missing or negative `step`")?;
    if step > MAX_STEP {
        return Err(format!("`step` {step} is out of range (at most 2^53)"));
    }
    let data = v
        .get("data")
        .filter(|d| d.is_object())
        .ok_or("no `data` object")?;
    let mut values = Default::default();
    flatten("", data, &mut values, 0);
    Ok(MetricRow {
        step,
        time: None,
        values,
    })
}

/// Follows a folder's verl log (a newer log in the folder replaces it: reset).
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    tail: Option<TailReader>,
}

impl Tail {
    pub fn new(dir: &Path) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            tail: None,
        }
    }

    pub fn poll(
        &mut self,
        deadline: Option<Instant>,
        bad: &mut BadLines,
    ) -> std::io::Result<MetricsPoll> {
        let mut out = MetricsPoll::default();
        let Some(file) = log_file(&self.dir) else {
            return Ok(out);
        };
        if self.tail.as_ref().is_none_or(|t| t.path() != file) {
            self.tail = Some(TailReader::new(&file));
            *bad = BadLines::default();
            out.reset = true;
        }
        let tail = self.tail.as_mut().expect("set above");
        let first = tail.line_no;
        let p = tail.poll(deadline)?;
        if p.reset {
            *bad = BadLines::default();
            out.reset = true;
        }
        let base = if p.reset { 0 } else { first };
        for (i, line) in p.lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse(line) {
                Ok(r) => out.rows.push(r),
                Err(e) => {
                    bad.count += 1;
                    if bad.first.is_none() {
                        bad.first =
                            Some(format!("{}:{}: {e}", file.display(), base + i as u64 + 1));
                    }
                }
            }
        }
        out.more = p.more;
        Ok(out)
    }

    pub fn newest_write(&self) -> Option<SystemTime> {
        self.tail.as_ref().and_then(|t| mtime(t.path()))
    }
}

/// The generation dumps of a verl run folder, oldest step first, with their steps.
pub fn sample_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for sub in ["rollouts", "validation"] {
        for p in files_in(&dir.join(sub), |n| n.ends_with(".jsonl")) {
            let step = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok());
            if let Some(step) = step {
                out.push((p, step));
            }
        }
    }
    out.sort_by_key(|(_, s)| *s);
    // The newest dumps are what the samples view shows.
    let keep = out.len().saturating_sub(16);
    out.drain(..keep);
    out
}

/// One line of a generation dump (`input`, `output`, `score`, `gts`, extra reward fields).
pub fn sample(line: &str, step: u64) -> Option<Vec<Sample>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    let text = |k: &str| {
        o.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let reward = o.get("score").and_then(|s| s.as_f64()).unwrap_or(0.0);
    let mut rewards: std::collections::BTreeMap<String, f64> = o
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "score" | "step"))
        .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
        .collect();
    rewards.insert("score".into(), reward);
    let answer = match o.get("gts") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) if !other.is_null() => other.to_string(),
        _ => String::new(),
    };
    Some(vec![Sample {
        step: o.get("step").and_then(|s| s.as_u64()).unwrap_or(step),
        prompt: text("input"),
        completion: text("output"),
        answer,
        rewards,
        reward,
        ..Sample::default()
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_rows_and_bad_lines_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("exp1.jsonl");
        std::fs::write(
            &log,
            "{\"step\": 1, \"data\": {\"actor/entropy\": 1.2, \"critic/score/mean\": 0.1}}\n{\"step\": 2, \"da\n{\"step\": 3, \"data\": {\"actor/entropy\": 1.0}}\n",
        )
        .unwrap();
        std::fs::write(d.path().join("notes.jsonl"), "{\"x\": 1}\n").unwrap();
        assert_eq!(log_file(d.path()), Some(log.clone()));
        let mut t = Tail::new(d.path());
        let mut bad = BadLines::default();
        let p = t.poll(None, &mut bad).unwrap();
        assert!(p.reset);
        let steps: Vec<u64> = p.rows.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 3]);
        assert_eq!(p.rows[0].values["critic/score/mean"], Some(0.1));
        assert_eq!(bad.count, 1);
        assert!(bad.first.unwrap().contains("exp1.jsonl:2:"));
    }

    #[test]
    fn a_dump_line_is_a_sample() {
        let s = sample(
            r#"{"input": "2+2?", "output": "<answer>4</answer>", "gts": "4", "score": 1.0, "acc": 1.0, "step": 7}"#,
            0,
        )
        .unwrap();
        assert_eq!(s[0].step, 7);
        assert_eq!(s[0].answer, "4");
        assert_eq!(s[0].reward, 1.0);
        assert_eq!(s[0].rewards["acc"], 1.0);
    }
}
