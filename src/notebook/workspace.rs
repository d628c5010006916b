//! What the notebook knows about the experiments folder: experiments, their runs, and for each
//! run its status, metric series, samples, eval report and log tail, read incrementally. Polls
//! are time-budgeted so a huge log never stalls a frame; missing or malformed files become
//! notices, never errors.
//!
//! Scale: an idle notebook reads nothing. Runs are re-read when the watcher names a file of theirs
//! ([`Workspace::mark_changed`]), while they load, and (every [`LIVE_EVERY`]) while they run; a
//! full sweep every [`SWEEP_EVERY`] is the safety net. A metrics log over [`BIG_LOG`] shows its
//! last [`PREVIEW_BYTES`] at once and is read whole on a background thread into a bounded series.

use super::series::RunSeries;
use crate::runfs::metrics::{self as runmetrics, MetricRow, MetricsTail};
use crate::runfs::records::{EvalReport, Sample};
use crate::runfs::tail::TailReader;
use crate::runfs::{self, RunStatus, Status};
use crate::spec::{self, Experiment};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// Lines of `stdout.log` kept per run.
const LOG_LINES: usize = 500;
/// A metrics log larger than this is loaded in the background (after a preview of its end).
pub const BIG_LOG: u64 = 16 << 20;
/// How much of a big log's end is shown at once.
pub const PREVIEW_BYTES: u64 = 2 << 20;
/// How often running runs are re-read even without a watcher event.
pub const LIVE_EVERY: Duration = Duration::from_millis(250);

/// How often a live run's health alerts are redone.
pub const ALERTS_EVERY: Duration = Duration::from_secs(2);
/// How often every run is re-read regardless (a watcher can miss events).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A big log being read on a background thread: its result, the rows appended meanwhile (to be
/// added to the full series when it arrives), and a flag that stops the thread when the run
/// goes away.
#[derive(Debug)]
struct Loader {
    rx: mpsc::Receiver<(RunSeries, runmetrics::BadLines)>,
    live: Vec<MetricRow>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// One run as the notebook sees it.
#[derive(Debug)]
pub struct RunView {
    pub id: String,
    pub dir: PathBuf,
    pub status: Option<RunStatus>,
    /// Why `run.json` could not be read (absent for runs written by other tools).
    pub status_error: Option<String>,
    pub series: RunSeries,
    pub samples: Vec<Sample>,
    pub eval: Option<EvalReport>,
    /// For an eval run: the compute along the evaluated checkpoint's lineage, read when its
    /// eval report is.
    pub lineage: Option<crate::analysis::compute::Lineage>,
    /// The run's `notes.md` (the user's), as last read.
    pub notes: Option<String>,
    notes_mtime: Option<SystemTime>,
    /// Bookmarked samples (step, prompt, completion), from `bookmarks.jsonl`.
    pub bookmarks: std::collections::BTreeSet<(u64, String, String)>,
    /// Modification time and length of `bookmarks.jsonl` when read (appends within one
    /// timestamp tick still change the length).
    bookmarks_stamp: Option<(SystemTime, u64)>,
    pub log: VecDeque<String>,
    pub bad_lines: u64,
    pub last_error: Option<String>,
    /// More of `metrics.jsonl` is waiting (the last poll ran out of time, or a big log is being
    /// read in the background).
    pub loading: bool,
    /// A watcher event named one of the run's files since its last poll.
    pub dirty: bool,
    /// Health alerts of the run's metrics ([`crate::analysis::health`]), kept up to date with
    /// its series.
    pub alerts: Vec<crate::analysis::health::Alert>,
    /// What looks alarming but is not (e.g. GRPO's loss near 0).
    pub health_notes: Vec<String>,
    alerts_version: u64,
    /// When the alerts were last computed.
    alerts_at: Option<Instant>,
    metrics_tail: MetricsTail,
    /// The format of a run another framework writes, and its reader (its status is made from
    /// what its files say: [`runfs::foreign::status`]).
    pub foreign: Option<runfs::foreign::Format>,
    foreign_tail: Option<runfs::foreign::Tail>,
    /// The newest modification time of a foreign run's sample files when last read.
    foreign_samples_stamp: Option<SystemTime>,
    loader: Option<Loader>,
    polled: bool,
    csv_loaded: bool,
    samples_tail: TailReader,
    log_tail: TailReader,
    status_mtime: Option<SystemTime>,
    /// When the run's lock was last asked about, and whether a process held it: what says a
    /// `running` run is alive (asked at most once a second, and only while it says running).
    locked: (Option<Instant>, bool),
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A run's bookmarked samples: one JSON line per toggle (`step`, `prompt`, `completion`, `on`),
/// appended by the notebook; the last line about a sample decides.
pub const BOOKMARKS: &str = "bookmarks.jsonl";

/// The line that bookmarks (`on`) or un-bookmarks a sample.
pub fn bookmark_line(s: &Sample, on: bool) -> String {
    serde_json::json!({"step": s.step, "prompt": s.prompt, "completion": s.completion, "on": on})
        .to_string()
}

/// The bookmarked samples of a `bookmarks.jsonl` (bad lines skipped).
fn read_bookmarks(path: &Path) -> std::collections::BTreeSet<(u64, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    let text = crate::untrusted::read_small(path, 64 << 20).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(step), Some(p), Some(c)) = (
            v["step"].as_u64(),
            v["prompt"].as_str(),
            v["completion"].as_str(),
        ) else {
            continue;
        };
        let key = (step, p.to_string(), c.to_string());
        if v["on"].as_bool().unwrap_or(true) {
            out.insert(key);
        } else {
            out.remove(&key);
        }
    }
    out
}

/// The file of a run's or an experiment's notes (markdown, the user's own).
pub const NOTES: &str = "notes.md";
/// How much of a notes file the notebook reads.
const NOTES_BUDGET: u64 = 64 << 10;

/// `dir/notes.md` (its first 64 KiB) when its modification time differs from `seen`; else
/// nothing new. Returns the text (None when absent) and the time.
fn read_notes(dir: &Path, seen: Option<SystemTime>) -> (Option<String>, Option<SystemTime>) {
    let path = dir.join(NOTES);
    let t = mtime(&path);
    if t == seen {
        return (None, seen);
    }
    use std::io::Read;
    let mut buf = Vec::new();
    let text = crate::untrusted::open_regular(&path)
        .and_then(|f| f.take(NOTES_BUDGET).read_to_end(&mut buf))
        .ok()
        .map(|_| String::from_utf8_lossy(&buf).into_owned());
    (text, t)
}

impl RunView {
    pub fn new(dir: PathBuf) -> RunView {
        let r = runfs::RunDir::new(dir.clone());
        let foreign = runfs::foreign::detect(&dir);
        RunView {
            foreign,
            foreign_tail: foreign.map(|f| runfs::foreign::Tail::new(&dir, f)),
            foreign_samples_stamp: None,
            id: r.id(),
            metrics_tail: MetricsTail::new(r.metrics()),
            samples_tail: TailReader::new(r.samples()),
            log_tail: TailReader::new(r.stdout_log()),
            dir,
            status: None,
            status_error: None,
            series: RunSeries::default(),
            samples: Vec::new(),
            eval: None,
            lineage: None,
            notes: None,
            notes_mtime: None,
            bookmarks: Default::default(),
            bookmarks_stamp: None,
            log: VecDeque::new(),
            bad_lines: 0,
            last_error: None,
            loading: true,
            dirty: true,
            alerts: Vec::new(),
            health_notes: Vec::new(),
            alerts_version: u64::MAX,
            alerts_at: None,
            loader: None,
            polled: false,
            csv_loaded: false,
            status_mtime: None,
            locked: (None, false),
        }
    }

    /// The status to show (`crashed` for a running status whose stage no longer holds the
    /// run's lock, as last polled).
    pub fn effective_status(&self) -> Option<Status> {
        if self.foreign.is_some() {
            return self.status.as_ref().map(|s| s.status);
        }
        self.status.as_ref().map(|s| s.status_given(self.locked.1))
    }

    pub fn stage(&self) -> &str {
        self.status.as_ref().map(|s| s.stage.as_str()).unwrap_or("")
    }

    /// Read what changed; returns whether anything did.
    pub fn poll(&mut self, deadline: Instant) -> bool {
        self.dirty = false;
        if self.foreign.is_none() && self.status.is_none() && self.series.is_empty() {
            // A prime-rl log whose first line was not there yet when the run was found.
            self.foreign = runfs::foreign::detect(&self.dir);
            self.foreign_tail = self
                .foreign
                .map(|f| runfs::foreign::Tail::new(&self.dir, f));
        }
        if self.foreign.is_some() {
            return self.poll_foreign(deadline);
        }
        let mut changed = false;
        let rj = self.dir.join(runfs::RUN_JSON);
        let mt = mtime(&rj);
        if mt != self.status_mtime {
            self.status_mtime = mt;
            changed = true;
            match RunStatus::load(&self.dir) {
                Ok(s) => {
                    self.status = Some(s);
                    self.status_error = None;
                }
                Err(e) if rj.exists() => self.status_error = Some(e), // keep the last good one
                Err(_) => {}
            }
            let eval = self.dir.join(runfs::EVAL_JSON);
            if eval.exists() {
                self.eval = EvalReport::load(&eval).ok();
                let init = self.status.as_ref().and_then(|s| s.init.as_deref());
                self.lineage = init.map(|i| {
                    let ck = crate::analysis::compute::locate(i, self.dir.parent());
                    crate::analysis::compute::lineage(&ck)
                });
            }
        }
        changed |= self.refresh_liveness();
        let bm = std::fs::metadata(self.dir.join(BOOKMARKS))
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok();
        if bm != self.bookmarks_stamp {
            self.bookmarks_stamp = bm;
            self.bookmarks = read_bookmarks(&self.dir.join(BOOKMARKS));
            changed = true;
        }
        let (notes, notes_mtime) = read_notes(&self.dir, self.notes_mtime);
        if notes_mtime != self.notes_mtime {
            (self.notes, self.notes_mtime) = (notes, notes_mtime);
            changed = true;
        }
        if !self.polled {
            self.polled = true;
            changed |= self.start_big_load();
        }
        changed |= self.receive_big_load();
        let polled = self.metrics_tail.poll(Some(deadline));
        if let Err(e) = &polled {
            // e.g. a folder named metrics.jsonl: say which file, once.
            let msg = format!("{}: {e}", self.dir.join(runfs::METRICS).display());
            changed |= self.last_error.as_ref() != Some(&msg);
            self.last_error = Some(msg);
            self.loading = false;
        }
        if let Ok(p) = polled {
            if p.reset {
                self.series = RunSeries::default();
                self.loader = None; // its rows are of the old file
            }
            changed |= p.reset || !p.rows.is_empty();
            for r in &p.rows {
                self.series.push(r);
            }
            if let Some(l) = &mut self.loader {
                l.live.extend(p.rows);
            }
            self.loading = p.more || self.loader.is_some();
            self.bad_lines = self.metrics_tail.bad_lines;
            self.last_error = self.metrics_tail.last_error.clone();
        }
        self.refresh_alerts();
        if self.series.is_empty() && !self.csv_loaded {
            self.csv_loaded = true;
            changed |= self.load_csv();
        }
        if let Ok(p) = self.samples_tail.poll(Some(deadline)) {
            if p.reset {
                self.samples.clear();
            }
            changed |= p.reset || !p.lines.is_empty();
            self.samples
                .extend(p.lines.iter().filter_map(|l| Sample::parse(l)));
        }
        if let Ok(p) = self.log_tail.poll(Some(deadline)) {
            if p.reset {
                self.log.clear();
            }
            changed |= !p.lines.is_empty();
            for l in p.lines {
                if self.log.len() == LOG_LINES {
                    self.log.pop_front();
                }
                self.log.push_back(l);
            }
        }
        changed
    }

    /// [`RunView::poll`] for a run another framework writes: its records through its format's
    /// reader, its samples where it has them, and a status made from its files.
    fn poll_foreign(&mut self, deadline: Instant) -> bool {
        let Some(tail) = &mut self.foreign_tail else {
            return false;
        };
        let mut changed = false;
        match tail.poll(Some(deadline)) {
            Ok(p) => {
                if p.reset {
                    self.series = RunSeries::default();
                }
                changed |= p.reset || !p.rows.is_empty();
                for r in &p.rows {
                    self.series.push(r);
                }
                self.loading = p.more;
                self.bad_lines = tail.bad.count;
                self.last_error = tail.bad.first.clone();
            }
            Err(e) => {
                let msg = e.to_string();
                changed |= self.last_error.as_ref() != Some(&msg);
                self.last_error = Some(msg);
                self.loading = false;
            }
        }
        let names: Vec<&str> = self.series.names().map(String::as_str).collect();
        let status = runfs::foreign::status(&self.dir, tail, self.series.last_step(), &names);
        if self.status.as_ref() != Some(&status) {
            self.status = Some(status);
            changed = true;
        }
        let format = tail.format;
        if let Some(read) = runfs::foreign::samples(&self.dir, format, self.foreign_samples_stamp) {
            self.foreign_samples_stamp = read.stamp;
            self.samples = read.samples;
            changed = true;
        }
        let (notes, notes_mtime) = read_notes(&self.dir, self.notes_mtime);
        if notes_mtime != self.notes_mtime {
            (self.notes, self.notes_mtime) = (notes, notes_mtime);
            changed = true;
        }
        self.refresh_alerts();
        changed
    }

    /// A log over [`BIG_LOG`]: show the rows of its last [`PREVIEW_BYTES`] now, read everything
    /// before them on a background thread, and tail from the end. Returns whether rows came.
    fn start_big_load(&mut self) -> bool {
        let path = self.dir.join(runfs::METRICS);
        let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else {
            return false;
        };
        if len <= BIG_LOG {
            return false;
        }
        let Ok(end) = runmetrics::complete_lines_end(&path, len) else {
            return false;
        };
        let _ = runmetrics::read_rows_range(&path, end.saturating_sub(PREVIEW_BYTES), end, |r| {
            self.series.push(&r);
            true
        });
        self.metrics_tail.start_at(end);
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        std::thread::spawn(move || {
            let mut full = RunSeries::default();
            let read = runmetrics::read_rows_range(&path, 0, end, |r| {
                full.push(&r);
                !stop.load(Ordering::Relaxed)
            });
            if let Ok(bad) = read {
                let _ = tx.send((full, bad));
            }
        });
        self.loader = Some(Loader {
            rx,
            live: Vec::new(),
            cancel,
        });
        self.loading = true;
        !self.series.is_empty()
    }

    /// Take the background load's result when it is there; returns whether it was.
    fn receive_big_load(&mut self) -> bool {
        let Some(l) = &mut self.loader else {
            return false;
        };
        match l.rx.try_recv() {
            Ok((mut full, bad)) => {
                for r in l.live.drain(..) {
                    full.push(&r);
                }
                self.series = full;
                self.metrics_tail.bad_lines += bad.count;
                if bad.first.is_some() {
                    self.metrics_tail.last_error = bad.first;
                }
                self.loader = None;
                true
            }
            Err(mpsc::TryRecvError::Empty) => false,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.last_error = Some(format!(
                    "{}: could not be read in full",
                    self.dir.join(runfs::METRICS).display()
                ));
                self.loader = None;
                true
            }
        }
    }

    /// For a run whose run.json says running: whether a process holds its lock (asked at most
    /// once a second). Returns whether that changed.
    fn refresh_liveness(&mut self) -> bool {
        if self.foreign.is_some() {
            return false;
        }
        let stale = self
            .locked
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !self.is_running() || !stale {
            return false;
        }
        let held = match &self.status {
            Some(s) => s.alive(&self.dir),
            None => false,
        };
        let changed = held != self.locked.1;
        self.locked = (Some(Instant::now()), held);
        changed
    }

    /// Health alerts and notes from the series, when it changed. They compare thirds of whole
    /// histories: for a live run they are redone at most every [`ALERTS_EVERY`], not at every
    /// poll.
    fn refresh_alerts(&mut self) {
        let due = self
            .alerts_at
            .is_none_or(|t| t.elapsed() >= ALERTS_EVERY || !self.is_running());
        if self.series.version() == self.alerts_version || !due {
            return;
        }
        self.alerts_at = Some(Instant::now());
        self.alerts_version = self.series.version();
        let names: Vec<String> = self.series.names().cloned().collect();
        let column = |n: &str| self.series.column(n);
        self.alerts = crate::analysis::health::alerts(&names, &column);
        let kind = self.status.as_ref().map_or("", |s| s.kind.as_str());
        self.health_notes = crate::analysis::health::notes(kind, &names, &column);
    }

    /// Whether run.json says running (the lock decides whether it really is).
    fn is_running(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.status == Status::Running)
    }

    /// Whether a poll is due: never read, still loading, named by a watcher event, or running
    /// (`live`: the live interval has passed). A running run named by the watcher waits for the
    /// live interval too: a stage appending hundreds of lines a second is read (and its charts
    /// and alerts redone) a few times a second, not at every event.
    fn due(&self, live: bool) -> bool {
        let running = self.is_running();
        !self.polled || self.loading || (self.dirty && !running) || (live && running)
    }

    /// A `metrics.csv` written by another tool: read once (first row is the header).
    fn load_csv(&mut self) -> bool {
        let Ok(text) = crate::untrusted::read_small(&self.dir.join(runfs::METRICS_CSV), 512 << 20)
        else {
            return false;
        };
        let mut lines = text.lines();
        let Some(header) = lines.next() else {
            return false;
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let Some(si) = cols.iter().position(|c| *c == "step") else {
            self.last_error = Some("metrics.csv has no `step` column".into());
            return false;
        };
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            let Some(step) = cells.get(si).and_then(|c| c.trim().parse::<f64>().ok()) else {
                self.bad_lines += 1;
                continue;
            };
            let mut values = BTreeMap::new();
            let mut time = None;
            for (i, c) in cols.iter().enumerate() {
                if i == si {
                    continue;
                }
                let v = cells.get(i).and_then(|x| x.trim().parse::<f64>().ok());
                if *c == "time" {
                    time = v;
                } else {
                    values.insert(c.to_string(), v);
                }
            }
            self.series.push(&runfs::metrics::MetricRow {
                step: step as u64,
                time,
                values,
            });
        }
        true
    }
}

/// One experiment folder.
#[derive(Debug)]
pub struct ExperimentView {
    pub name: String,
    pub dir: PathBuf,
    /// Where its runs are: `dir/runs`, or `dir` itself for a folder of another framework's
    /// runs.
    pub runs_dir: PathBuf,
    pub spec: Result<Experiment, String>,
    pub runs: Vec<RunView>,
    /// The experiment's `notes.md`, as last read.
    pub notes: Option<String>,
    notes_mtime: Option<SystemTime>,
    /// `experiment.toml`'s modification time when `spec` was read.
    spec_mtime: Option<SystemTime>,
    /// The names under `runs/` at the last full listing (a rescan that finds the same names
    /// reads no run.json).
    run_names: Vec<std::ffi::OsString>,
}

impl ExperimentView {
    /// Runs of `run`'s stage with the same settings that differ only in seed (`run` first),
    /// when `run` has a seed and there is at least one other.
    pub fn seed_group<'a>(&'a self, run: &'a RunView) -> Vec<&'a RunView> {
        let Some(s) = &run.status else {
            return vec![];
        };
        let Some(seed) = s.seed else {
            return vec![];
        };
        let mut out = vec![run];
        for r in &self.runs {
            if let Some(o) = &r.status
                && o.stage == s.stage
                && o.config == s.config
                && o.seed.is_some_and(|x| x != seed)
                && !out
                    .iter()
                    .any(|x| x.status.as_ref().and_then(|y| y.seed) == o.seed)
            {
                out.push(r);
            }
        }
        if out.len() < 2 { vec![] } else { out }
    }
}

/// Everything under the notebook's root folder.
#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    pub experiments: Vec<ExperimentView>,
    /// Whether a watcher reports changes (else every rescan re-reads every run).
    pub watched: bool,
    last_live: Instant,
    last_sweep: Instant,
}

impl Workspace {
    pub fn new(root: &Path) -> Workspace {
        let mut w = Workspace {
            root: root.to_path_buf(),
            experiments: Vec::new(),
            watched: true,
            last_live: Instant::now(),
            last_sweep: Instant::now(),
        };
        w.rescan();
        w
    }

    /// Note the paths a watcher reported: their runs are re-read at the next
    /// [`Workspace::poll_changed`]. Returns whether a path is outside every known run (a new run
    /// or experiment: the caller should [`Workspace::rescan_all`]).
    pub fn mark_changed(&mut self, paths: &[PathBuf]) -> bool {
        let mut unknown = false;
        for p in paths {
            let run = self
                .experiments
                .iter_mut()
                .flat_map(|e| e.runs.iter_mut())
                .find(|r| p.starts_with(&r.dir));
            match run {
                Some(r) => r.dirty = true,
                None => unknown = true,
            }
        }
        unknown
    }

    /// Re-read the runs that need it: named by the watcher, loading, running (at most every
    /// [`LIVE_EVERY`]), or all of them every [`SWEEP_EVERY`] or when there is no watcher.
    pub fn poll_changed(&mut self, first: Option<(usize, usize)>, deadline: Instant) -> bool {
        let now = Instant::now();
        let live = now.duration_since(self.last_live) >= LIVE_EVERY;
        if live {
            self.last_live = now;
        }
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            return self.poll_from(first, deadline);
        }
        let mut changed = false;
        if let Some((e, r)) = first
            && let Some(run) = self.experiments.get_mut(e).and_then(|x| x.runs.get_mut(r))
            && run.due(live)
        {
            changed |= run.poll(deadline);
        }
        for e in &mut self.experiments {
            for r in &mut e.runs {
                if r.due(live) {
                    changed |= r.poll(deadline);
                }
            }
        }
        changed
    }

    /// [`Workspace::rescan`] that also lists every experiment's runs again.
    pub fn rescan_all(&mut self) -> bool {
        for e in &mut self.experiments {
            e.run_names.clear();
            e.spec_mtime = None;
        }
        self.rescan()
    }

    /// The experiments under the root with the folder their runs are in: the root itself when
    /// it is an experiment or a folder of runs ([`runfs::runs_dir_of`]), else its subfolders
    /// that are. A root that is one run shows its folder's runs.
    fn experiment_dirs(&self) -> Vec<(PathBuf, PathBuf)> {
        let root = &self.root;
        if root.join("experiment.toml").is_file() || root.join("runs").is_dir() {
            return vec![(root.clone(), root.join("runs"))];
        }
        if runfs::RunDir::new(root).is_run()
            && let Some(parent) = root.parent()
        {
            return vec![(parent.to_path_buf(), parent.to_path_buf())];
        }
        let mut dirs = Vec::new();
        let mut loose_runs = false;
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') || !p.is_dir() {
                continue;
            }
            if let Some(runs) = runfs::runs_dir_of(&p) {
                dirs.push((p, runs));
            } else if runfs::RunDir::new(&p).is_run() {
                // Checked second: runs_dir_of is None for a run, so a TRL output folder is one
                // run here, not a folder of its checkpoints.
                loose_runs = true;
            }
        }
        // Runs straight under the root (e.g. synced TRL output folders) are one more group.
        if loose_runs {
            dirs.push((root.clone(), root.clone()));
        }
        dirs.sort();
        dirs
    }

    /// Pick up new and deleted experiments and runs; keeps what was already read.
    pub fn rescan(&mut self) -> bool {
        let mut changed = false;
        let dirs = self.experiment_dirs();
        let before = self.experiments.len();
        self.experiments
            .retain(|e| dirs.iter().any(|(d, r)| *d == e.dir && *r == e.runs_dir));
        changed |= before != self.experiments.len();
        for (d, runs_dir) in dirs {
            let idx = match self.experiments.iter().position(|e| e.dir == d) {
                Some(i) => i,
                None => {
                    let name = d
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| d.display().to_string());
                    self.experiments.push(ExperimentView {
                        name,
                        spec: Err(String::new()),
                        dir: d.clone(),
                        runs_dir,
                        runs: Vec::new(),
                        notes: None,
                        notes_mtime: None,
                        spec_mtime: None,
                        run_names: Vec::new(),
                    });
                    changed = true;
                    self.experiments.len() - 1
                }
            };
            let e = &mut self.experiments[idx];
            let (notes, notes_mtime) = read_notes(&e.dir, e.notes_mtime);
            if notes_mtime != e.notes_mtime {
                (e.notes, e.notes_mtime) = (notes, notes_mtime);
                changed = true;
            }
            let spec_file = e.dir.join("experiment.toml");
            let spec_mtime = mtime(&spec_file);
            if spec_mtime != e.spec_mtime || spec_mtime.is_none() {
                e.spec_mtime = spec_mtime;
                e.spec = if spec_file.is_file() {
                    spec::load(&e.dir).map_err(|err| err.to_string())
                } else {
                    Err("no experiment.toml (runs written by another tool)".into())
                };
            }
            // The folder names alone tell whether runs came or went; only then is each run.json
            // read again to list and order them.
            let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&e.runs_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|x| runfs::RunDir::new(x.path()).is_run())
                .map(|x| x.file_name())
                .collect();
            names.sort();
            if names == e.run_names && !e.run_names.is_empty() {
                continue;
            }
            e.run_names = names;
            let runs = runfs::list_runs(&e.runs_dir);
            let order: Vec<PathBuf> = runs.iter().map(|r| r.path.clone()).collect();
            let before = e.runs.len();
            e.runs.retain(|r| runs.iter().any(|x| x.path == r.dir));
            changed |= before != e.runs.len();
            for r in runs {
                if !e.runs.iter().any(|x| x.dir == r.path) {
                    e.runs.push(RunView::new(r.path));
                    changed = true;
                }
            }
            // Keep the order of `list_runs` (by start time).
            e.runs
                .sort_by_key(|r| order.iter().position(|p| p == &r.dir).unwrap_or(usize::MAX));
        }
        self.experiments.sort_by(|a, b| a.dir.cmp(&b.dir));
        changed
    }

    /// Tail every run until `deadline`, the run at `first` (experiment, run index) before the
    /// others; returns whether anything changed.
    pub fn poll_from(&mut self, first: Option<(usize, usize)>, deadline: Instant) -> bool {
        let mut changed = false;
        if let Some((e, r)) = first
            && let Some(run) = self.experiments.get_mut(e).and_then(|x| x.runs.get_mut(r))
        {
            changed |= run.poll(deadline);
        }
        changed | self.poll(deadline)
    }

    /// Tail every run until `deadline`; returns whether anything changed.
    pub fn poll(&mut self, deadline: Instant) -> bool {
        let mut changed = false;
        for e in &mut self.experiments {
            for r in &mut e.runs {
                changed |= r.poll(deadline);
            }
        }
        changed
    }

    /// Whether some run is still loading (the event loop then polls every frame).
    pub fn any_loading(&self) -> bool {
        self.experiments
            .iter()
            .flat_map(|e| &e.runs)
            .any(|r| r.loading)
    }

    /// All running runs' pids.
    pub fn running_pids(&self) -> Vec<u32> {
        self.experiments
            .iter()
            .flat_map(|e| &e.runs)
            .filter(|r| r.effective_status() == Some(Status::Running))
            .filter_map(|r| r.status.as_ref().and_then(|s| s.pid))
            .collect()
    }
}
