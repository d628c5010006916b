//! `stageloop run EXP`: run stages headless, with a progress bar on a terminal and plain lines
//! otherwise. SIGINT/SIGTERM ask the running stage to finish its step, checkpoint and stop.

use crate::runfs::{RunStatus, Status};
use crate::spec::{self, Experiment};
use crate::stages::{self, Outcome, Reporter, RunOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// `stageloop run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment folder or its experiment.toml.
    pub exp: PathBuf,
    /// Run only these stages (repeatable), in pipeline order.
    #[arg(long = "stage", value_name = "NAME")]
    pub stage: Vec<String>,
    /// Override a value of the spec for this run, e.g. `stage.grpo.lr=1e-4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Override the experiment's seed.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run the pipeline once per seed, in order (`--seeds 0,1,2`); a seed whose stages are
    /// all done is skipped, an interrupted one resumes.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Start new runs even where an unfinished run of the stage could be resumed.
    #[arg(long)]
    pub fresh: bool,
    /// The fingerprint (`spec::programs_digest`) of the reward programs the caller showed the
    /// user; the run refuses to start when the spec's programs differ (the notebook passes it).
    #[arg(long, hide = true, value_name = "DIGEST")]
    pub programs_shown: Option<String>,
}

/// `stageloop run`: one pipeline, or one per seed with `--seeds`. The spec is read once: the
/// programs checked against `--programs-shown` are the ones of the spec that runs.
pub fn main(a: Args) -> anyhow::Result<()> {
    let e = spec::load_with(&a.exp, &a.set)?;
    if let Some(shown) = &a.programs_shown {
        let programs = e.programs(&a.stage);
        anyhow::ensure!(
            spec::programs_digest(&programs) == *shown,
            "the spec's reward programs are not the ones that were shown before starting \
             (the spec changed?); nothing started. Now it would run: {}",
            if programs.is_empty() {
                "no programs".to_string()
            } else {
                crate::untrusted::display(&programs.join("; ")).into_owned()
            }
        );
    }
    if a.seeds.is_empty() {
        run(&e, &a.stage, a.seed, a.fresh)
    } else {
        run_seeds(&e, &a.stage, &a.seeds, a.fresh)
    }
}

/// A flag SIGINT and SIGTERM set: the running stage finishes its step, checkpoints and stops.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// The pipeline of `e` (or its `stage`s) once.
fn run(e: &Experiment, stage: &[String], seed: Option<u64>, fresh: bool) -> anyhow::Result<()> {
    let stop = stop_flag()?;
    let opts = RunOptions {
        stages: stage.to_vec(),
        seed,
        fresh,
    };
    let mut reporter = CliReporter::new();
    match stages::run_pipeline(e, &opts, stop, &mut reporter)? {
        Outcome::Done => Ok(()),
        Outcome::Stopped => {
            eprintln!("stopped; run the same command again to resume");
            std::process::exit(130);
        }
    }
}

/// `run --seeds 0,1,2`: the pipeline once per seed, in order. A seed whose every stage has a
/// finished run is skipped (unless `--fresh`), so the same command resumes an interrupted sweep.
fn run_seeds(e: &Experiment, stage: &[String], seeds: &[u64], fresh: bool) -> anyhow::Result<()> {
    let stop = stop_flag()?;
    let mut reporter = CliReporter::new();
    for &seed in seeds {
        if !fresh && stage.is_empty() && stages::pipeline::pipeline_done(e, seed) {
            reporter.say(format!(
                "seed {seed}: every stage is done (--fresh runs it again)"
            ));
            continue;
        }
        reporter.say(format!("seed {seed}"));
        let opts = RunOptions {
            stages: stage.to_vec(),
            seed: Some(seed),
            fresh,
        };
        if let Outcome::Stopped = stages::run_pipeline(e, &opts, stop.clone(), &mut reporter)? {
            eprintln!("stopped at seed {seed}; run the same command again to resume");
            std::process::exit(130);
        }
    }
    Ok(())
}

/// Progress for a person: an indicatif bar on a terminal, a line every few seconds otherwise.
/// Every line (progress every 5 s, messages, start and end) is also appended to the run's
/// `stdout.log`, which the notebook's logs pane shows.
pub struct CliReporter {
    bar: Option<ProgressBar>,
    tty: bool,
    last_line: Option<Instant>,
    stage: String,
    started: Instant,
    log: Option<std::fs::File>,
}

impl CliReporter {
    pub fn new() -> Self {
        CliReporter {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            last_line: None,
            stage: String::new(),
            started: Instant::now(),
            log: None,
        }
    }

    /// Append a line to the run's `stdout.log` (one write per line).
    fn log(&mut self, line: &str) {
        if let Some(f) = &mut self.log {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }

    /// Print a line (above the bar when there is one) and log it.
    fn say(&mut self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(&line),
            // A closed or full standard output must not stop the stage before it checkpoints
            // and records its status: the line still goes to stdout.log.
            None => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
        self.log(&line);
    }
}

impl Default for CliReporter {
    fn default() -> Self {
        Self::new()
    }
}

fn fmt_metrics(metrics: &[(&str, f64)]) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}

impl Reporter for CliReporter {
    fn started(&mut self, s: &RunStatus, run: &Path) {
        self.stage = s.stage.clone();
        self.started = Instant::now();
        self.log = crate::runfs::atomic::append_own(&run.join(crate::runfs::STDOUT_LOG)).ok();
        let it = s
            .iteration
            .map(|i| format!(" (loop iteration {i})"))
            .unwrap_or_default();
        self.say(format!("▶ {} [{}] → {}{it}", s.stage, s.kind, s.id));
        if self.tty && s.progress.total > 0 {
            let bar = ProgressBar::new(s.progress.total);
            bar.set_style(
                ProgressStyle::with_template(
                    "  {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(s.progress.step);
            bar.enable_steady_tick(Duration::from_millis(250));
            self.bar = Some(bar);
        }
    }

    fn progress(&mut self, step: u64, total: u64, metrics: &[(&str, f64)]) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(step);
            bar.set_message(fmt_metrics(metrics));
        }
        if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
            || step == total
        {
            self.last_line = Some(Instant::now());
            let line = format!(
                "  {} step {step}/{total}  {}",
                self.stage,
                fmt_metrics(metrics)
            );
            if self.bar.is_none() {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
            self.log(&line);
        }
    }

    fn message(&mut self, msg: &str) {
        self.say(format!("  {msg}"));
    }

    fn finished(&mut self, s: &RunStatus) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let line = match s.status {
            Status::Done => format!("✔ {} done in {secs:.1}s", s.stage),
            Status::Stopped => format!("■ {} stopped at step {}", s.stage, s.progress.step),
            other => format!(
                "✘ {} {other}: {}",
                s.stage,
                s.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
            ),
        };
        self.say(line);
        self.log = None;
    }
}
