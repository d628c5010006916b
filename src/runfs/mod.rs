//! The run folder (a contract: README, "Run folders"): the only channel between a running stage and anything
//! that watches it. Layout, naming and discovery are here; writers and readers in the submodules.
//!
//! ```text
//! experiments/<exp>/runs/<run-id>/   run-id = <yyyymmdd-HHMMSS>-<stage-name>
//!   run.json  metrics.jsonl  samples.jsonl  eval.json  stdout.log  checkpoints/  lock
//! ```

pub mod atomic;
pub mod checkpoint;
pub mod foreign;
pub mod jsonl;
pub mod lock;
pub mod metrics;
pub mod records;
pub mod status;
pub mod tail;

use std::path::{Path, PathBuf};

pub use status::{Progress, RunError, RunStatus, Status};

pub const RUN_JSON: &str = "run.json";
pub const METRICS: &str = "metrics.jsonl";
pub const METRICS_CSV: &str = "metrics.csv";
pub const SAMPLES: &str = "samples.jsonl";
pub const EVAL_JSON: &str = "eval.json";
pub const STDOUT_LOG: &str = "stdout.log";
pub const CHECKPOINTS: &str = "checkpoints";

/// Paths inside one run folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }
    /// The folder name, which is the run id.
    pub fn id(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn run_json(&self) -> PathBuf {
        self.path.join(RUN_JSON)
    }
    pub fn metrics(&self) -> PathBuf {
        self.path.join(METRICS)
    }
    pub fn metrics_csv(&self) -> PathBuf {
        self.path.join(METRICS_CSV)
    }
    pub fn samples(&self) -> PathBuf {
        self.path.join(SAMPLES)
    }
    pub fn eval_json(&self) -> PathBuf {
        self.path.join(EVAL_JSON)
    }
    pub fn stdout_log(&self) -> PathBuf {
        self.path.join(STDOUT_LOG)
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join(CHECKPOINTS)
    }
    /// Whether the folder looks like a run: it has a `run.json`, a metrics log, or the files
    /// of another framework's run ([`foreign::detect`]).
    pub fn is_run(&self) -> bool {
        self.run_json().is_file()
            || self.metrics().is_file()
            || self.metrics_csv().is_file()
            || foreign::detect(&self.path).is_some()
    }
}

/// Where a folder's runs are: `dir/runs` for an experiment (or any folder with a `runs/`), or
/// `dir` itself when some of its subfolders are runs (another framework's output root, e.g.
/// verl's `tensorboard_log/<project>/` or a folder of synced TRL output folders). `None` when
/// it has neither, or is a run itself (a TRL output folder's `checkpoint-*` folders are its
/// snapshots, not runs of their own).
pub fn runs_dir_of(dir: &Path) -> Option<PathBuf> {
    if dir.join("experiment.toml").is_file() || dir.join("runs").is_dir() {
        return Some(dir.join("runs"));
    }
    if RunDir::new(dir).is_run() {
        return None;
    }
    let any_run = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .any(|e| RunDir::new(e.path()).is_run());
    any_run.then(|| dir.to_path_buf())
}

/// `yyyymmdd-HHMMSS` (UTC) of a Unix time.
pub fn timestamp(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Create a fresh run folder for `stage` under `runs_dir`, named `<timestamp>-<stage>`; a
/// suffix `-2`, `-3`… keeps ids unique when several start in the same second.
pub fn create_run_dir(runs_dir: &Path, stage: &str) -> std::io::Result<RunDir> {
    std::fs::create_dir_all(runs_dir)?;
    let base = format!("{}-{stage}", timestamp(status::now()));
    for n in 1.. {
        let id = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let path = runs_dir.join(&id);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(RunDir::new(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!()
}

/// When a run started: `run.json`'s `started`, else the folder's modification time.
fn started(run: &RunDir, status: Option<&RunStatus>) -> f64 {
    status
        .and_then(|s| s.started)
        .or_else(|| {
            let m = std::fs::metadata(&run.path)
                .and_then(|m| m.modified())
                .ok()?;
            Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
        })
        .unwrap_or(0.0)
}

/// The run folders under `runs_dir`, oldest first: by start time (ids alone tie within a
/// second), then id.
pub fn list_runs(runs_dir: &Path) -> Vec<RunDir> {
    runs_with_status(runs_dir)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// [`list_runs`] with each run's `run.json` (read once; `None` when absent or unreadable).
pub fn runs_with_status(runs_dir: &Path) -> Vec<(RunDir, Option<RunStatus>)> {
    let mut runs: Vec<(f64, RunDir, Option<RunStatus>)> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| RunDir::new(e.path()))
        .filter(RunDir::is_run)
        .map(|r| {
            let status = RunStatus::load(&r.path).ok();
            (started(&r, status.as_ref()), r, status)
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id().cmp(&b.1.id())));
    runs.into_iter().map(|(_, r, s)| (r, s)).collect()
}

/// The most recent run of `stage` under `runs_dir` (by `run.json`'s stage field), if any.
pub fn latest_run_of(runs_dir: &Path, stage: &str) -> Option<(RunDir, RunStatus)> {
    runs_with_status(runs_dir)
        .into_iter()
        .rev()
        .filter_map(|(r, s)| s.map(|s| (r, s)))
        .find(|(_, s)| s.stage == stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_time() {
        assert_eq!(timestamp(0.0), "19700101-000000");
        // 2026-11-30 06:18:47 UTC
        assert_eq!(timestamp(1_796_019_527.0), "20261130-061847");
        assert_eq!(timestamp(951_782_400.0), "20000229-000000");
    }

    #[test]
    fn run_ids_stay_unique_within_a_second() {
        let d = tempfile::tempdir().unwrap();
        let a = create_run_dir(d.path(), "sft").unwrap();
        let b = create_run_dir(d.path(), "sft").unwrap();
        assert_ne!(a.id(), b.id());
        assert!(a.id().ends_with("-sft"));
    }
}
