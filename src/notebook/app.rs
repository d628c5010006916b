//! The notebook's state and its `update`: events in, state changes and [`Effect`]s out. No I/O
//! happens here except reading the workspace; effects (spawning a stage, signalling a process)
//! are carried out by the event loop, so `update` is testable with synthetic events.

use super::keymap::{self, Action, Scope};
use super::series::XAxis;
use super::workspace::{RunView, Sample, Workspace};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;

/// Focusable panes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Runs,
    Pipeline,
    Main,
}

/// What the main area shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Charts,
    Samples,
    Overview,
    Logs,
}

/// Sample filter of the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SampleFilter {
    #[default]
    All,
    Correct,
    Wrong,
    FormatFailure,
}

impl SampleFilter {
    fn next(self) -> Self {
        match self {
            SampleFilter::All => SampleFilter::Correct,
            SampleFilter::Correct => SampleFilter::Wrong,
            SampleFilter::Wrong => SampleFilter::FormatFailure,
            SampleFilter::FormatFailure => SampleFilter::All,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            SampleFilter::All => "all",
            SampleFilter::Correct => "correct",
            SampleFilter::Wrong => "wrong",
            SampleFilter::FormatFailure => "format failure",
        }
    }
    pub fn keeps(self, s: &Sample) -> bool {
        match self {
            SampleFilter::All => true,
            SampleFilter::Correct => s.correct(),
            SampleFilter::Wrong => !s.correct(),
            SampleFilter::FormatFailure => !s.format_ok(),
        }
    }
}

/// How the samples browser groups what it lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SampleMode {
    /// Samples of one step.
    #[default]
    Step,
    /// All completions of one group at one step.
    Group(u64),
    /// One prompt across all steps.
    Prompt(String),
}

/// A text input in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    RunFilter,
    MetricFilter,
    Prompt,
    RewardRange,
}

/// Side effects for the event loop to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// `stageloop run EXP [--stage NAME]` as a child process.
    Spawn {
        exp: PathBuf,
        stage: Option<String>,
    },
    /// SIGTERM to a stage's process.
    Stop {
        pid: u32,
    },
    /// `stageloop sample RUN --prompt … --json` as a child process.
    Sample {
        run: PathBuf,
        prompt: String,
    },
    /// Write the run's charts and metrics next to it.
    Export {
        run: PathBuf,
    },
    Rescan,
    Quit,
}

/// `lo..hi` with either side optional (`0.5..`, `..0`); empty text clears the range.
pub fn parse_range(text: &str) -> Option<Option<(f64, f64)>> {
    let t = text.trim();
    if t.is_empty() {
        return Some(None);
    }
    let (a, b) = t.split_once("..")?;
    let side = |x: &str, default: f64| {
        let x = x.trim();
        if x.is_empty() {
            Some(default)
        } else {
            x.parse::<f64>().ok()
        }
    };
    Some(Some((side(a, f64::NEG_INFINITY)?, side(b, f64::INFINITY)?)))
}

/// A row of the runs tree: an experiment, or one of its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Experiment(usize),
    Run(usize, usize),
}

/// The whole notebook state.
pub struct App {
    pub ws: Workspace,
    pub focus: Pane,
    pub view: View,
    pub maximized: bool,
    pub show_help: bool,
    pub confirm_quit: bool,
    /// Index into [`App::rows`].
    pub cursor: usize,
    /// Index into the selected experiment's stages.
    pub stage_cursor: usize,
    /// Runs overlaid on the charts besides the selected one (experiment index, run id).
    pub marked: BTreeSet<(usize, String)>,
    pub run_filter: String,
    pub metric_filter: String,
    pub input: Option<Input>,
    pub input_buf: String,
    pub smoothing: f64,
    pub log_y: bool,
    pub x_axis: XAxis,
    /// Index of the first chart shown / the focused chart.
    pub chart_index: usize,
    /// A focused chart fills the area, with a cursor at this fraction of the x range.
    pub chart_zoom: bool,
    pub chart_cursor: f64,
    pub sample_filter: SampleFilter,
    /// Only samples whose total reward lies in `[lo, hi]` (typed as `lo..hi`; either side may be
    /// empty).
    pub reward_range: Option<(f64, f64)>,
    pub sample_mode: SampleMode,
    /// Position in the list of sample steps (from the end: 0 = latest).
    pub sample_step_back: usize,
    pub sample_index: usize,
    pub prompt_output: Vec<String>,
    pub notices: VecDeque<String>,
    /// "Now" for ETAs, set by the loop (tests fix it).
    pub now: f64,
    /// Memo of chart polylines (see [`ChartCache`](super::panes::charts::ChartCache)).
    pub chart_cache: super::panes::charts::ChartCache,
}

impl App {
    pub fn new(ws: Workspace) -> App {
        App {
            ws,
            focus: Pane::Runs,
            view: View::Charts,
            maximized: false,
            show_help: false,
            confirm_quit: false,
            cursor: 0,
            stage_cursor: 0,
            marked: BTreeSet::new(),
            run_filter: String::new(),
            metric_filter: String::new(),
            input: None,
            input_buf: String::new(),
            smoothing: 0.6,
            log_y: false,
            x_axis: XAxis::Step,
            chart_index: 0,
            chart_zoom: false,
            chart_cursor: 1.0,
            sample_filter: SampleFilter::All,
            reward_range: None,
            sample_mode: SampleMode::Step,
            sample_step_back: 0,
            sample_index: 0,
            prompt_output: Vec::new(),
            notices: VecDeque::new(),
            now: 0.0,
            chart_cache: Default::default(),
        }
    }

    pub fn notice(&mut self, msg: impl Into<String>) {
        if self.notices.len() == 5 {
            self.notices.pop_front();
        }
        self.notices.push_back(msg.into());
    }

    /// Rows of the runs tree after the text filter.
    pub fn rows(&self) -> Vec<Row> {
        let f = self.run_filter.to_lowercase();
        let mut out = Vec::new();
        for (ei, e) in self.ws.experiments.iter().enumerate() {
            let runs: Vec<usize> = e
                .runs
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    f.is_empty()
                        || r.id.to_lowercase().contains(&f)
                        || e.name.to_lowercase().contains(&f)
                })
                .map(|(i, _)| i)
                .collect();
            if runs.is_empty() && !f.is_empty() && !e.name.to_lowercase().contains(&f) {
                continue;
            }
            out.push(Row::Experiment(ei));
            out.extend(runs.into_iter().rev().map(|ri| Row::Run(ei, ri)));
        }
        out
    }

    /// The row under the cursor.
    pub fn current_row(&self) -> Option<Row> {
        let rows = self.rows();
        rows.get(self.cursor.min(rows.len().saturating_sub(1)))
            .copied()
    }

    /// (experiment, run) indices of the selected run, for polling it first.
    pub fn selected_index(&self) -> Option<(usize, usize)> {
        match self.current_row()? {
            Row::Run(e, r) => Some((e, r)),
            Row::Experiment(e) => Some((e, self.ws.experiments.get(e)?.runs.len().checked_sub(1)?)),
        }
    }

    /// Read new lines, the selected run first, until `deadline`.
    pub fn poll(&mut self, deadline: std::time::Instant) -> bool {
        let first = self.selected_index();
        self.ws.poll_from(first, deadline)
    }

    /// The experiment of the selected row.
    pub fn selected_experiment(&self) -> Option<usize> {
        match self.current_row()? {
            Row::Experiment(e) | Row::Run(e, _) => Some(e),
        }
    }

    /// The selected run, or the experiment's latest when an experiment row is selected.
    pub fn selected_run(&self) -> Option<&RunView> {
        match self.current_row()? {
            Row::Run(e, r) => self.ws.experiments.get(e)?.runs.get(r),
            Row::Experiment(e) => self.ws.experiments.get(e)?.runs.last(),
        }
    }

    /// Runs drawn on the charts: the selected one first, then the marked ones.
    pub fn chart_runs(&self) -> Vec<&RunView> {
        let mut out: Vec<&RunView> = self.selected_run().into_iter().collect();
        for (e, id) in &self.marked {
            if let Some(r) = self
                .ws
                .experiments
                .get(*e)
                .and_then(|x| x.runs.iter().find(|r| &r.id == id))
                && !out.iter().any(|o| o.dir == r.dir)
            {
                out.push(r);
            }
        }
        out
    }

    /// Metric names of the chart runs, after the metric filter, in a stable order (headline
    /// metrics first).
    pub fn chart_metrics(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for r in self.chart_runs() {
            names.extend(r.series.names().cloned());
        }
        let f = self.metric_filter.to_lowercase();
        let rank = |n: &str| match n {
            "loss" => 0,
            "reward" => 1,
            "rewards/accuracy/mean" => 2,
            "eval/pass@1" => 3,
            "completions/mean_length" => 4,
            "kl" => 5,
            _ => 10,
        };
        let mut v: Vec<String> = names
            .into_iter()
            .filter(|n| f.is_empty() || n.to_lowercase().contains(&f))
            .collect();
        v.sort_by_key(|n| (rank(n), n.clone()));
        v
    }

    /// Steps that have samples in the selected run, ascending.
    pub fn sample_steps(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self
            .selected_run()
            .map(|r| r.samples.iter().map(|x| x.step).collect())
            .unwrap_or_default();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The step the browser shows.
    pub fn sample_step(&self) -> Option<u64> {
        let s = self.sample_steps();
        let n = s.len();
        (n > 0).then(|| s[n - 1 - self.sample_step_back.min(n - 1)])
    }

    /// Samples listed by the browser, after mode and filter.
    pub fn visible_samples(&self) -> Vec<&Sample> {
        let Some(run) = self.selected_run() else {
            return Vec::new();
        };
        let step = self.sample_step();
        run.samples
            .iter()
            .filter(|s| match &self.sample_mode {
                SampleMode::Step => Some(s.step) == step,
                SampleMode::Group(g) => Some(s.step) == step && s.group == Some(*g),
                SampleMode::Prompt(p) => &s.prompt == p,
            })
            .filter(|s| self.sample_filter.keeps(s))
            .filter(|s| {
                self.reward_range
                    .is_none_or(|(lo, hi)| lo <= s.reward && s.reward <= hi)
            })
            .collect()
    }

    /// Stage names of the selected experiment.
    pub fn stages(&self) -> Vec<String> {
        self.selected_experiment()
            .and_then(|e| self.ws.experiments[e].spec.as_ref().ok())
            .map(|x| x.spec.stage.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    fn scope(&self) -> Scope {
        match (self.focus, self.view) {
            (Pane::Runs, _) => Scope::Runs,
            (Pane::Pipeline, _) => Scope::Pipeline,
            (Pane::Main, View::Charts) => Scope::Charts,
            (Pane::Main, View::Samples) => Scope::Samples,
            (Pane::Main, _) => Scope::Global,
        }
    }

    /// Footer hints for the current focus.
    pub fn hints(&self) -> Vec<(String, &'static str)> {
        keymap::hints(self.scope())
    }

    fn move_cursor(&mut self, delta: i64) {
        match (self.focus, self.view) {
            (Pane::Runs, _) => {
                let n = self.rows().len() as i64;
                self.cursor = (self.cursor as i64 + delta).clamp(0, (n - 1).max(0)) as usize;
                self.sample_index = 0;
                self.sample_step_back = 0;
                self.stage_cursor = self.stage_cursor.min(self.stages().len().saturating_sub(1));
            }
            (Pane::Pipeline, _) => {
                let n = self.stages().len() as i64;
                self.stage_cursor =
                    (self.stage_cursor as i64 + delta).clamp(0, (n - 1).max(0)) as usize;
            }
            (Pane::Main, View::Samples) => {
                let n = self.visible_samples().len() as i64;
                self.sample_index =
                    (self.sample_index as i64 + delta).clamp(0, (n - 1).max(0)) as usize;
            }
            (Pane::Main, View::Charts) => {
                let n = self.chart_metrics().len() as i64;
                self.chart_index =
                    (self.chart_index as i64 + delta * 2).clamp(0, (n - 1).max(0)) as usize;
            }
            _ => {}
        }
    }

    fn horizontal(&mut self, delta: i64) {
        match (self.focus, self.view) {
            (Pane::Main, View::Samples) => {
                if let SampleMode::Prompt(_) = self.sample_mode {
                    return;
                }
                let n = self.sample_steps().len() as i64;
                self.sample_step_back =
                    (self.sample_step_back as i64 - delta).clamp(0, (n - 1).max(0)) as usize;
                self.sample_index = 0;
            }
            (Pane::Main, View::Charts) if self.chart_zoom => {
                self.chart_cursor = (self.chart_cursor + 0.02 * delta as f64).clamp(0.0, 1.0);
            }
            (Pane::Main, View::Charts) => {
                let n = self.chart_metrics().len() as i64;
                self.chart_index =
                    (self.chart_index as i64 + delta).clamp(0, (n - 1).max(0)) as usize;
            }
            _ => {}
        }
    }

    /// Handle one key; returns the effects to carry out.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if self.confirm_quit {
            return match key.code {
                KeyCode::Char('y') | KeyCode::Char('q') => vec![Effect::Quit],
                _ => {
                    self.confirm_quit = false;
                    Vec::new()
                }
            };
        }
        if let Some(input) = self.input {
            return self.on_input_key(input, key);
        }
        if key.code == KeyCode::Esc {
            self.show_help = false;
            self.chart_zoom = false;
            self.maximized = false;
            self.sample_mode = SampleMode::Step;
            self.prompt_output.clear();
            return Vec::new();
        }
        let Some(action) = keymap::lookup(&key, self.scope()) else {
            return Vec::new();
        };
        self.on_action(action)
    }

    fn on_input_key(&mut self, input: Input, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => {
                self.input = None;
                self.input_buf.clear();
                match input {
                    Input::RunFilter => self.run_filter.clear(),
                    Input::MetricFilter => self.metric_filter.clear(),
                    Input::RewardRange => self.reward_range = None,
                    Input::Prompt => {}
                }
                return Vec::new();
            }
            KeyCode::Enter => {
                self.input = None;
                if input == Input::RewardRange {
                    match parse_range(&self.input_buf) {
                        Some(r) => self.reward_range = r,
                        None => self.notice(format!(
                            "reward range `{}`: write lo..hi, e.g. 0.5..1 or ..0",
                            self.input_buf
                        )),
                    }
                    self.sample_index = 0;
                    return Vec::new();
                }
                if input == Input::Prompt {
                    let prompt = std::mem::take(&mut self.input_buf);
                    if let Some(run) = self.selected_run() {
                        let run = run.dir.clone();
                        self.prompt_output = vec![format!("sampling {prompt} …")];
                        return vec![Effect::Sample { run, prompt }];
                    }
                    self.notice("select a run with a checkpoint first");
                }
                return Vec::new();
            }
            KeyCode::Backspace => {
                self.input_buf.pop();
            }
            KeyCode::Char(c) => self.input_buf.push(c),
            _ => {}
        }
        match input {
            Input::RunFilter => {
                self.run_filter = self.input_buf.clone();
                self.cursor = 0;
            }
            Input::MetricFilter => {
                self.metric_filter = self.input_buf.clone();
                self.chart_index = 0;
            }
            Input::Prompt | Input::RewardRange => {}
        }
        Vec::new()
    }

    fn start_input(&mut self, input: Input, initial: &str) {
        self.input = Some(input);
        self.input_buf = initial.to_string();
    }

    /// Carry out one keymap action.
    pub fn on_action(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Quit => {
                if self.ws.running_pids().is_empty() {
                    return vec![Effect::Quit];
                }
                self.confirm_quit = true;
            }
            Action::Help => self.show_help = !self.show_help,
            Action::NextPane | Action::PrevPane => {
                let order = [Pane::Runs, Pane::Pipeline, Pane::Main];
                let i = order.iter().position(|p| *p == self.focus).unwrap_or(0);
                let step = if action == Action::NextPane { 1 } else { 2 };
                self.focus = order[(i + step) % 3];
            }
            Action::ViewCharts => self.set_view(View::Charts),
            Action::ViewSamples => self.set_view(View::Samples),
            Action::ViewOverview => self.set_view(View::Overview),
            Action::ViewLogs => self.set_view(View::Logs),
            Action::Maximize => self.maximized = !self.maximized,
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::Left => self.horizontal(-1),
            Action::Right => self.horizontal(1),
            Action::Select => match (self.focus, self.view) {
                (Pane::Main, View::Charts) => self.chart_zoom = !self.chart_zoom,
                (Pane::Main, View::Samples) => return self.on_action(Action::GroupView),
                (Pane::Runs, _) => {
                    self.focus = Pane::Main;
                }
                _ => {}
            },
            Action::ToggleMark => {
                if let Some(Row::Run(e, r)) = self.current_row() {
                    let key = (e, self.ws.experiments[e].runs[r].id.clone());
                    if !self.marked.remove(&key) {
                        self.marked.insert(key);
                    }
                }
            }
            Action::Filter => self.start_input(Input::RunFilter, &self.run_filter.clone()),
            Action::MetricFilter => {
                self.start_input(Input::MetricFilter, &self.metric_filter.clone())
            }
            Action::Prompt => self.start_input(Input::Prompt, ""),
            Action::RewardRange => {
                let current = self
                    .reward_range
                    .map(|(lo, hi)| format!("{lo}..{hi}"))
                    .unwrap_or_default();
                self.start_input(Input::RewardRange, &current)
            }
            Action::SmoothMore => {
                self.smoothing = ((self.smoothing * 10.0).round() / 10.0 + 0.1).min(0.9)
            }
            Action::SmoothLess => {
                self.smoothing = ((self.smoothing * 10.0).round() / 10.0 - 0.1).max(0.0)
            }
            Action::LogY => self.log_y = !self.log_y,
            Action::XAxis => self.x_axis = self.x_axis.next(),
            Action::SampleFilter => {
                self.sample_filter = self.sample_filter.next();
                self.sample_index = 0;
            }
            Action::GroupView => {
                let group = self
                    .visible_samples()
                    .get(self.sample_index)
                    .and_then(|s| s.group);
                self.sample_mode = match (&self.sample_mode, group) {
                    (SampleMode::Group(_), _) | (_, None) => SampleMode::Step,
                    (_, Some(g)) => SampleMode::Group(g),
                };
                self.sample_index = 0;
            }
            Action::SamePrompt => {
                let prompt = self
                    .visible_samples()
                    .get(self.sample_index)
                    .map(|s| s.prompt.clone());
                self.sample_mode = match (&self.sample_mode, prompt) {
                    (SampleMode::Prompt(_), _) | (_, None) => SampleMode::Step,
                    (_, Some(p)) => SampleMode::Prompt(p),
                };
                self.sample_index = 0;
            }
            Action::RunStage => {
                let Some(e) = self.selected_experiment() else {
                    return Vec::new();
                };
                let stages = self.stages();
                let stage = if self.focus == Pane::Pipeline {
                    stages.get(self.stage_cursor).cloned()
                } else {
                    self.selected_run()
                        .map(|r| r.stage().to_string())
                        .filter(|s| !s.is_empty())
                        .or_else(|| stages.get(self.stage_cursor).cloned())
                };
                let Some(stage) = stage else {
                    self.notice("no stage selected");
                    return Vec::new();
                };
                self.notice(format!("starting stage {stage}"));
                return vec![Effect::Spawn {
                    exp: self.ws.experiments[e].dir.clone(),
                    stage: Some(stage),
                }];
            }
            Action::RunPipeline => {
                let Some(e) = self.selected_experiment() else {
                    return Vec::new();
                };
                self.notice(format!(
                    "starting the pipeline of {}",
                    self.ws.experiments[e].name
                ));
                return vec![Effect::Spawn {
                    exp: self.ws.experiments[e].dir.clone(),
                    stage: None,
                }];
            }
            Action::Stop => {
                let target = self.selected_running_pid();
                match target {
                    Some(pid) => {
                        self.notice(format!("stopping pid {pid} (it checkpoints first)"));
                        return vec![Effect::Stop { pid }];
                    }
                    None => self.notice("the selected run is not running"),
                }
            }
            Action::Export => {
                if let Some(r) = self.selected_run() {
                    return vec![Effect::Export { run: r.dir.clone() }];
                }
            }
            Action::Rescan => return vec![Effect::Rescan],
        }
        Vec::new()
    }

    /// The pid of the selected run (or, on an experiment row or in the pipeline pane, of a
    /// running run of the selected stage / experiment).
    fn selected_running_pid(&self) -> Option<u32> {
        let running = |r: &RunView| {
            (r.effective_status() == Some(crate::runfs::Status::Running))
                .then(|| r.status.as_ref().and_then(|s| s.pid))
                .flatten()
        };
        if let Some(Row::Run(e, r)) = self.current_row()
            && self.focus != Pane::Pipeline
        {
            return running(&self.ws.experiments[e].runs[r]);
        }
        let e = self.selected_experiment()?;
        let stage = self.stages().get(self.stage_cursor).cloned();
        self.ws.experiments[e]
            .runs
            .iter()
            .rev()
            .filter(|r| self.focus != Pane::Pipeline || Some(r.stage().to_string()) == stage)
            .find_map(running)
    }

    fn set_view(&mut self, v: View) {
        self.view = v;
        self.focus = Pane::Main;
    }
}
