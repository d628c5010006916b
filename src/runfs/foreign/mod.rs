//! Runs other RL frameworks write, read as they are and tailed live: TRL (any transformers
//! Trainer's `trainer_state.json`), verl's file logger, prime-rl's file monitor and TensorBoard
//! event files. A folder holding any of them is a run; this module says which format it is,
//! turns its records into the same [`MetricRow`]s a stageloop log gives, its episodes into
//! [`Sample`]s, and describes it with a [`RunStatus`] made from what the files say (no stage
//! writes one for it).
//!
//! | format | metrics | samples | status |
//! |---|---|---|---|
//! | TRL | the newest `trainer_state.json` (top level or `checkpoint-*/`): `log_history` | — | `global_step` / `max_steps` |
//! | verl | `<experiment>.jsonl`: `{"step", "data": {...}}` lines | `rollouts/`, `validation/` dumps (`<step>.jsonl`) | last step |
//! | prime-rl | `metrics.jsonl` (rows with `"step": null` are time-keyed gauges, skipped) | `traces/step_N/<kind>/traces.jsonl` | last step; done at `final_summary.json` |
//! | TensorBoard | `events.out.tfevents.*`: scalar summaries | — | last step |

pub mod primerl;
pub mod tfevents;
pub mod trl;
pub mod verl;

use super::metrics::{BadLines, Columns, MetricRow, MetricsPoll};
use super::records::Sample;
use super::status::{Progress, RunStatus, Status, recent};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// The samples a foreign run's reader keeps (the newest).
pub const MAX_SAMPLES: usize = 4096;

/// The format of a run folder another framework wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Trl,
    Verl,
    PrimeRl,
    TensorBoard,
}

impl Format {
    /// The name shown as the run's stage and in `runs --json`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Trl => "trl",
            Format::Verl => "verl",
            Format::PrimeRl => "prime-rl",
            Format::TensorBoard => "tensorboard",
        }
    }

    /// Whether the metrics come from a `metrics.jsonl` (read by the ordinary tail).
    pub fn uses_metrics_jsonl(self) -> bool {
        self == Format::PrimeRl
    }
}

/// The format of the run in `dir`, or `None` for a stageloop run (it has `run.json`), a plain
/// `metrics.jsonl`/`metrics.csv` of another program, or a folder that is not a run. Reads at most
/// a folder listing and the first 64 KiB of a few files.
pub fn detect(dir: &Path) -> Option<Format> {
    if dir.join(super::RUN_JSON).is_file() {
        return None;
    }
    if dir.join(super::METRICS).is_file() {
        return primerl::is_primerl(dir).then_some(Format::PrimeRl);
    }
    if trl::newest_state(dir).is_some() {
        return Some(Format::Trl);
    }
    if !tfevents::event_files(dir).is_empty() {
        return Some(Format::TensorBoard);
    }
    if verl::log_file(dir).is_some() {
        return Some(Format::Verl);
    }
    None
}

/// Follows one foreign run's metric records.
#[derive(Debug)]
pub struct Tail {
    pub format: Format,
    inner: Inner,
    /// Records that did not parse since the last reset, and the first problem.
    pub bad: BadLines,
}

#[derive(Debug)]
enum Inner {
    Trl(trl::Tail),
    Verl(verl::Tail),
    PrimeRl(super::metrics::MetricsTail),
    TensorBoard(tfevents::Tail),
}

impl Tail {
    pub fn new(dir: &Path, format: Format) -> Tail {
        let inner = match format {
            Format::Trl => Inner::Trl(trl::Tail::new(dir)),
            Format::Verl => Inner::Verl(verl::Tail::new(dir)),
            Format::PrimeRl => {
                Inner::PrimeRl(super::metrics::MetricsTail::new(dir.join(super::METRICS)))
            }
            Format::TensorBoard => Inner::TensorBoard(tfevents::Tail::new(dir)),
        };
        Tail {
            format,
            inner,
            bad: BadLines::default(),
        }
    }

    /// The rows written since the last poll (`reset`: start over with these), reading until
    /// `deadline` at most.
    pub fn poll(&mut self, deadline: Option<Instant>) -> std::io::Result<MetricsPoll> {
        match &mut self.inner {
            Inner::Trl(t) => t.poll(&mut self.bad),
            Inner::Verl(t) => t.poll(deadline, &mut self.bad),
            Inner::TensorBoard(t) => t.poll(deadline, &mut self.bad),
            Inner::PrimeRl(t) => {
                let p = t.poll(deadline)?;
                self.bad.count = t.bad_lines;
                self.bad.first = t.last_error.clone();
                Ok(p)
            }
        }
    }

    /// The newest modification time among the files the metrics come from.
    pub fn newest_write(&self) -> Option<SystemTime> {
        match &self.inner {
            Inner::Trl(t) => t.newest_write(),
            Inner::Verl(t) => t.newest_write(),
            Inner::TensorBoard(t) => t.newest_write(),
            Inner::PrimeRl(t) => mtime(t.path()),
        }
    }

    /// The total number of steps, where the files say it (TRL's `max_steps`).
    pub fn total_steps(&self) -> Option<u64> {
        match &self.inner {
            Inner::Trl(t) => t.total_steps(),
            _ => None,
        }
    }

    /// Whether the files say the run finished (TRL: `global_step` reached `max_steps`, or
    /// the Trainer's closing `train_runtime` record; prime-rl: the `final_summary.json` its
    /// file monitor writes at the end).
    pub fn finished(&self) -> bool {
        match &self.inner {
            Inner::Trl(t) => t.finished(),
            Inner::PrimeRl(t) => t
                .path()
                .parent()
                .is_some_and(|d| d.join(primerl::FINAL_SUMMARY).is_file()),
            _ => false,
        }
    }
}

/// Every row of a foreign run as columns, the records that did not parse, and its status.
pub fn read_all(dir: &Path, format: Format) -> std::io::Result<(Columns, BadLines, RunStatus)> {
    let mut tail = Tail::new(dir, format);
    let mut cols = Columns::default();
    loop {
        let p = tail.poll(None)?;
        if p.reset {
            cols = Columns::default();
        }
        for r in p.rows {
            cols.push(r);
        }
        if !p.more {
            let names: Vec<&str> = cols.values.keys().map(String::as_str).collect();
            let last = cols.steps.last().copied().unwrap_or(0);
            let st = status(dir, &tail, last, &names);
            return Ok((cols, tail.bad, st));
        }
    }
}

/// What the notebook and `runs` show for a foreign run: its folder name as id, the format as
/// stage, `grpo` where it logs rewards (else `train`), its progress, and `running` while its
/// files changed within [`super::status::LIVE_WINDOW`], `done` when they say it finished, else `idle`.
pub fn status(dir: &Path, tail: &Tail, last_step: u64, metric_names: &[&str]) -> RunStatus {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let experiment = dir
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rl = metric_names.iter().any(|n| {
        matches!(*n, "reward" | "critic/score/mean" | "reward/all/mean")
            || n.starts_with("rewards/")
    });
    let newest = tail.newest_write();
    let live = recent(newest);
    let total = tail.total_steps().unwrap_or(0);
    let status = if tail.finished() || (total > 0 && last_step >= total) {
        Status::Done
    } else if live {
        Status::Running
    } else {
        Status::Idle
    };
    let started = created(dir);
    RunStatus {
        id,
        experiment,
        stage: tail.format.name().to_string(),
        kind: if rl { "grpo" } else { "train" }.to_string(),
        status,
        pid: None,
        started,
        ended: (status != Status::Running)
            .then(|| newest.and_then(unix))
            .flatten(),
        progress: Progress {
            step: last_step,
            total,
        },
        config: serde_json::json!({ "format": tail.format.name() }),
        init: None,
        iteration: None,
        error: None,
        resumed_at: Vec::new(),
        device: None,
        seed: None,
        precision: None,
        frozen_base: None,
        writer: None,
        model: None,
    }
}

/// The samples of a foreign run that writes them (verl's generation dumps, prime-rl's traces),
/// with the newest modification time among their files. `seen` is that time at the last
/// read: `None` when it has not changed (nothing is read; the caller keeps what it has) or the
/// format has no samples.
pub fn samples(dir: &Path, format: Format, seen: Option<SystemTime>) -> Option<SampleRead> {
    let files = match format {
        Format::Verl => verl::sample_files(dir),
        Format::PrimeRl => primerl::trace_files(dir),
        Format::Trl | Format::TensorBoard => return None,
    };
    let stamp = files.iter().filter_map(|(p, _)| mtime(p)).max();
    if stamp.is_none() || stamp == seen {
        return None;
    }
    let mut out = Vec::new();
    let mut bad = 0u64;
    for (path, step) in &files {
        let Ok(text) = crate::untrusted::read_small(path, 64 << 20) else {
            bad += 1;
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed = match format {
                Format::Verl => verl::sample(line, *step),
                _ => primerl::episode(line, *step),
            };
            match parsed {
                Some(s) => out.extend(s),
                None => bad += 1,
            }
        }
    }
    let keep = out.len().saturating_sub(MAX_SAMPLES);
    out.drain(..keep);
    Some(SampleRead {
        samples: out,
        stamp,
        bad,
    })
}

/// One read of a foreign run's samples.
#[derive(Debug)]
pub struct SampleRead {
    pub samples: Vec<Sample>,
    /// The newest modification time among the files read.
    pub stamp: Option<SystemTime>,
    /// Lines that were not episodes.
    pub bad: u64,
}

pub(crate) fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn unix(t: SystemTime) -> Option<f64> {
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// When the folder was made (its creation time where the file system keeps one, else its
/// modification time).
fn created(dir: &Path) -> Option<f64> {
    let m = std::fs::metadata(dir).ok()?;
    unix(m.created().or_else(|_| m.modified()).ok()?)
}

/// The files in `dir` (not below it) whose names `keep` accepts, sorted by name.
pub(crate) fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The first line of a file, read within 64 KiB (`None` when unreadable or empty).
pub(crate) fn first_line(p: &Path) -> Option<String> {
    use std::io::Read;
    let f = crate::untrusted::open_regular(p).ok()?;
    let mut buf = Vec::new();
    f.take(64 << 10).read_to_end(&mut buf).ok()?;
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!line.is_empty()).then_some(line)
}

/// The numbers of a JSON object as metric values, nested objects flattened with `/`
/// (`{"actor": {"entropy": 1}}` → `actor/entropy`); a `null` is a gap. Depth is bounded.
pub(crate) fn flatten(
    prefix: &str,
    v: &serde_json::Value,
    out: &mut std::collections::BTreeMap<String, Option<f64>>,
    depth: usize,
) {
    match v {
        serde_json::Value::Number(n) => {
            out.insert(prefix.to_string(), n.as_f64());
        }
        serde_json::Value::Null if !prefix.is_empty() => {
            out.insert(prefix.to_string(), None);
        }
        serde_json::Value::Bool(b) if !prefix.is_empty() => {
            out.insert(prefix.to_string(), Some(f64::from(u8::from(*b))));
        }
        serde_json::Value::Object(m) if depth < 8 => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}/{k}")
                };
                flatten(&key, x, out, depth + 1);
            }
        }
        _ => {}
    }
}

/// Records that share a step become one row (a Trainer logs its train and eval records of a
/// step apart; TensorBoard writes one event per scalar).
pub(crate) fn merge_same_steps(rows: Vec<MetricRow>) -> Vec<MetricRow> {
    let mut out: Vec<MetricRow> = Vec::with_capacity(rows.len());
    for r in rows {
        match out.last_mut() {
            Some(last) if last.step == r.step => {
                last.time = last.time.or(r.time);
                last.values.extend(r.values);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_joins_nested_keys_and_keeps_gaps() {
        let v = serde_json::json!({"actor": {"entropy": 1.5, "x": "text"}, "a": null, "ok": true});
        let mut out = Default::default();
        flatten("", &v, &mut out, 0);
        assert_eq!(out.get("actor/entropy"), Some(&Some(1.5)));
        assert_eq!(out.get("a"), Some(&None));
        assert_eq!(out.get("ok"), Some(&Some(1.0)));
        assert!(!out.contains_key("actor/x"));
    }

    #[test]
    fn rows_of_one_step_merge() {
        let row = |step, k: &str, v| MetricRow {
            step,
            time: None,
            values: [(k.to_string(), Some(v))].into(),
        };
        let m = merge_same_steps(vec![row(1, "a", 1.0), row(1, "b", 2.0), row(2, "a", 3.0)]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].values.len(), 2);
    }
}
