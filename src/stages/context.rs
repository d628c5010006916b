//! What a running stage gets: its resolved config, its run folder, where to start from, a stop
//! flag set by SIGINT/SIGTERM, and a reporter for human-readable progress.

use crate::runfs::{RunDir, RunStatus, status::now};
use crate::spec::{Experiment, StageConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a stage ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Stopped by a signal after checkpointing; can be resumed.
    Stopped,
}

/// Human-facing progress (a progress bar on a terminal, plain lines otherwise).
pub trait Reporter {
    /// A stage began (or resumed) in the run folder `run`.
    fn started(&mut self, status: &RunStatus, run: &std::path::Path);
    /// A step finished; `metrics` are a few headline values.
    fn progress(&mut self, step: u64, total: u64, metrics: &[(&str, f64)]);
    /// A line of free text.
    fn message(&mut self, msg: &str);
    /// The stage ended with `status`.
    fn finished(&mut self, status: &RunStatus);
}

/// A reporter that prints nothing (tests, library use).
pub struct Quiet;

impl Reporter for Quiet {
    fn started(&mut self, _: &RunStatus, _: &std::path::Path) {}
    fn progress(&mut self, _: u64, _: u64, _: &[(&str, f64)]) {}
    fn message(&mut self, _: &str) {}
    fn finished(&mut self, _: &RunStatus) {}
}

/// Everything one stage run needs.
pub struct StageCtx<'a> {
    pub exp: &'a Experiment,
    pub cfg: StageConfig,
    pub run: RunDir,
    pub status: RunStatus,
    /// Seed for this stage (experiment seed, possibly overridden).
    pub seed: u64,
    /// Checkpoint folder to initialise from (the `init` stage's latest).
    pub init: Option<PathBuf>,
    /// This run's own checkpoint to resume from, when continuing a stopped run.
    pub resume: Option<PathBuf>,
    pub stop: Arc<AtomicBool>,
    pub reporter: &'a mut dyn Reporter,
    last_status_write: Option<Instant>,
}

impl<'a> StageCtx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exp: &'a Experiment,
        cfg: StageConfig,
        run: RunDir,
        status: RunStatus,
        seed: u64,
        init: Option<PathBuf>,
        resume: Option<PathBuf>,
        stop: Arc<AtomicBool>,
        reporter: &'a mut dyn Reporter,
    ) -> Self {
        StageCtx {
            exp,
            cfg,
            run,
            status,
            seed,
            init,
            resume,
            stop,
            reporter,
            last_status_write: None,
        }
    }

    /// Whether a stop was requested (finish the step, checkpoint, return `Stopped`).
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Record progress in `run.json` (at most about once a second, and always at the end) and
    /// tell the reporter.
    pub fn progress(&mut self, step: u64, total: u64, metrics: &[(&str, f64)]) {
        self.status.progress.step = step;
        self.status.progress.total = total;
        let due = self
            .last_status_write
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || step == total {
            let _ = self.status.save(&self.run.path);
            self.last_status_write = Some(Instant::now());
        }
        self.reporter.progress(step, total, metrics);
    }

    /// Seconds since the run started (for metrics' `time` column use [`now`]).
    pub fn now(&self) -> f64 {
        now()
    }
}
