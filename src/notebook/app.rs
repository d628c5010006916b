//! The notebook's state and its `update`: events in, state changes and [`Effect`]s out. No I/O
//! happens here except reading the workspace; effects (spawning a stage, signalling a process)
//! are carried out by the event loop, so `update` is testable with synthetic events.
//!
//! [`App`] keeps what is not a pane's: focus, the main view, text input and dialogs. Each pane
//! with state of its own (runs, pipeline, charts, samples) gets the actions of its scope
//! through its `on_action`.

use super::keymap::{self, Action, Scope};
use super::panes::charts::Charts;
use super::panes::pipeline::Pipeline;
use super::panes::runs::{Row, Runs};
use super::panes::samples::Samples;
use super::workspace::{ExperimentView, RunView, Workspace};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
use std::collections::VecDeque;
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
    Evals,
    Compare,
}

/// A text input in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    RunFilter,
    MetricFilter,
    Prompt,
    RewardRange,
    /// `--set`-style overrides for forking the highlighted stage.
    Fork,
}

/// A question the notebook asks before it acts; `y` confirms, any other key cancels.
#[derive(Debug, Clone, PartialEq)]
pub enum Dialog {
    /// Quit while stages are running (they keep running).
    Quit,
    /// Start a stage that already has a running run (`pid`): a second run of it would start.
    StartRunning {
        exp: PathBuf,
        stage: String,
        pid: u32,
    },
    /// Start a stage (`None`: the whole pipeline) whose spec runs programs of the user's own:
    /// the commands are shown and must be confirmed.
    RunsPrograms {
        exp: PathBuf,
        stage: Option<String>,
        commands: Vec<String>,
    },
    /// Something the user must read (a spec that does not load when a stage is started); any
    /// key closes it.
    Message { title: String, text: String },
}

/// Side effects for the event loop to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// `stageloop run EXP [--stage NAME]` as a child process, which must find the spec's
    /// programs to be `programs`, the ones the user was shown (none: none may run).
    Spawn {
        exp: PathBuf,
        stage: Option<String>,
        programs: Vec<String>,
    },
    /// `stageloop run EXP --stage NAME --fresh --set K=V …`: a fork of a stage with overrides.
    Fork {
        exp: PathBuf,
        stage: String,
        sets: Vec<String>,
        programs: Vec<String>,
    },
    /// Open a notes file in the user's editor (the terminal handed over and restored).
    EditNotes {
        path: PathBuf,
    },
    /// Append one line to the run's `bookmarks.jsonl`.
    Bookmark {
        run: PathBuf,
        line: String,
    },
    /// SIGTERM to the stage writing `run` (when its process `pid` holds the run's lock).
    Stop {
        run: PathBuf,
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

/// The whole notebook state.
pub struct App {
    pub ws: Workspace,
    pub focus: Pane,
    pub view: View,
    pub maximized: bool,
    pub show_help: bool,
    /// The open dialog, which takes every key.
    pub dialog: Option<Dialog>,
    /// Lines the open dialog's text is scrolled by (↓ / ↑).
    pub dialog_scroll: u16,
    pub input: Option<Input>,
    pub input_buf: String,
    pub runs: Runs,
    pub pipeline: Pipeline,
    pub charts: Charts,
    pub samples: Samples,
    pub prompt_output: Vec<String>,
    /// A notes file to open in the editor once the loop can hand over the terminal.
    pub editor: Option<PathBuf>,
    pub notices: VecDeque<String>,
    /// "Now" for ETAs, set by the loop (tests fix it).
    pub now: f64,
    /// The screen's size at the last draw (mouse clicks are routed by it).
    pub area: ratatui::layout::Rect,
    /// A stage the notebook started: its first new run gets the cursor when it appears.
    pub follow: Option<Follow>,
}

/// The experiment a started stage writes to and the runs it had before.
#[derive(Debug, Clone, PartialEq)]
pub struct Follow {
    pub exp: PathBuf,
    pub known: Vec<PathBuf>,
}

impl App {
    pub fn new(ws: Workspace) -> App {
        App {
            ws,
            focus: Pane::Runs,
            view: View::Charts,
            maximized: false,
            show_help: false,
            dialog: None,
            dialog_scroll: 0,
            input: None,
            input_buf: String::new(),
            runs: Runs::default(),
            pipeline: Pipeline::default(),
            charts: Charts::default(),
            samples: Samples::default(),
            prompt_output: Vec::new(),
            editor: None,
            notices: VecDeque::new(),
            now: 0.0,
            area: ratatui::layout::Rect::default(),
            follow: None,
        }
    }

    /// Put the cursor on the most recently started running run, else on the most recently
    /// started run: what a user opening the notebook wants to see first.
    pub fn select_most_recent(&mut self) {
        let started = |r: &RunView| r.status.as_ref().and_then(|s| s.started).unwrap_or(0.0);
        let rows = self.runs.rows(&self.ws);
        let pick = |running: bool| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, row)| match *row {
                    super::panes::runs::Row::Run(e, r) => {
                        let run = &self.ws.experiments[e].runs[r];
                        let ok = !running
                            || run.effective_status() == Some(crate::runfs::Status::Running);
                        ok.then_some((i, started(run)))
                    }
                    _ => None,
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        };
        if let Some(i) = pick(true).or_else(|| pick(false)) {
            self.runs.cursor = i;
        }
    }

    pub fn notice(&mut self, msg: impl Into<String>) {
        if self.notices.len() == 5 {
            self.notices.pop_front();
        }
        self.notices.push_back(msg.into());
    }

    /// (experiment, run) indices of the selected run, for polling it first.
    pub fn selected_index(&self) -> Option<(usize, usize)> {
        self.runs.selected_index(&self.ws)
    }

    /// Read new lines, the selected run first, until `deadline`.
    pub fn poll(&mut self, deadline: std::time::Instant) -> bool {
        let first = self.selected_index();
        self.ws.poll_from(first, deadline)
    }

    /// Re-read only what changed ([`crate::notebook::workspace::Workspace::poll_changed`]), the
    /// selected run first: the event loop's poll.
    pub fn poll_changed(&mut self, deadline: std::time::Instant) -> bool {
        let first = self.selected_index();
        self.ws.poll_changed(first, deadline)
    }

    /// The experiment of the selected row.
    pub fn selected_experiment(&self) -> Option<&ExperimentView> {
        self.ws
            .experiments
            .get(self.runs.selected_experiment(&self.ws)?)
    }

    /// The selected run, or the experiment's latest when an experiment row is selected.
    pub fn selected_run(&self) -> Option<&RunView> {
        self.runs.selected_run(&self.ws)
    }

    /// Runs drawn on the charts: the selected one first, then the marked ones; with seeds
    /// grouped (`G`), the selected run and its other seeds.
    pub fn chart_runs(&self) -> Vec<&RunView> {
        chart_runs(&self.runs, &self.ws, self.charts.group_seeds)
    }

    /// The keymap scope keys are looked up in: a dialog or input takes every key.
    pub fn scope(&self) -> Scope {
        if self.dialog.is_some() {
            return Scope::Dialog;
        }
        if self.input.is_some() {
            return Scope::Input;
        }
        match (self.focus, self.view) {
            (Pane::Runs, _) => Scope::Runs,
            (Pane::Pipeline, _) => Scope::Pipeline,
            (Pane::Main, View::Charts) => Scope::Charts,
            (Pane::Main, View::Samples) => Scope::Samples,
            (Pane::Main, _) => Scope::Global,
        }
    }

    /// Footer hints for the current scope.
    pub fn hints(&self) -> Vec<(String, &'static str)> {
        keymap::hints(self.scope())
    }

    /// A mouse event over `hit`, the pane under the pointer and where it is drawn (the caller
    /// asks the layout, `ui::Regions::pane_at`): a click focuses the pane (and in the runs or
    /// pipeline pane selects the row); the wheel moves the selection or scrolls the pane.
    pub fn on_mouse(
        &mut self,
        m: crossterm::event::MouseEvent,
        hit: Option<(Pane, ratatui::layout::Rect)>,
    ) -> Vec<Effect> {
        use crossterm::event::{MouseButton, MouseEventKind};
        if self.dialog.is_some() || self.input.is_some() {
            return Vec::new();
        }
        let Some((pane, rect)) = hit else {
            return Vec::new();
        };
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                self.focus = pane;
                // The list's first visible row (ratatui scrolls just enough to show the
                // cursor) plus the row clicked inside the border.
                let visible = rect.height.saturating_sub(2) as usize;
                let line = (m.row.saturating_sub(rect.y + 1)) as usize;
                if m.row <= rect.y || line >= visible {
                    return Vec::new();
                }
                match pane {
                    Pane::Runs => {
                        let n = self.runs.rows(&self.ws).len();
                        let first = self.runs.cursor.saturating_sub(visible.saturating_sub(1));
                        if first + line < n {
                            let delta = (first + line) as i64 - self.runs.cursor as i64;
                            self.move_selection(delta);
                        }
                    }
                    Pane::Pipeline => {
                        let ex = self.selected_experiment();
                        let n = super::panes::pipeline::stages(ex).len();
                        let first = self
                            .pipeline
                            .cursor
                            .saturating_sub(visible.saturating_sub(1));
                        if first + line < n {
                            self.pipeline.cursor = first + line;
                        }
                    }
                    Pane::Main => {}
                }
            }
            MouseEventKind::ScrollDown | MouseEventKind::ScrollUp => {
                self.focus = pane;
                let down = m.kind == MouseEventKind::ScrollDown;
                if pane == Pane::Runs {
                    self.move_selection(if down { 1 } else { -1 });
                } else {
                    self.pane_action(if down { Action::Down } else { Action::Up });
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// Remember the runs of `exp` so that the next new one is selected when it appears.
    pub fn follow_next_run(&mut self, exp: &std::path::Path) {
        let known = self
            .ws
            .experiments
            .iter()
            .find(|e| e.dir == exp)
            .map(|e| e.runs.iter().map(|r| r.dir.clone()).collect())
            .unwrap_or_default();
        self.follow = Some(Follow {
            exp: exp.to_path_buf(),
            known,
        });
    }

    /// Put the cursor on the started stage's new run once the workspace lists it; whether it
    /// moved.
    pub fn select_followed_run(&mut self) -> bool {
        let Some(f) = &self.follow else {
            return false;
        };
        let Some(ei) = self.ws.experiments.iter().position(|e| e.dir == f.exp) else {
            return false;
        };
        let Some(ri) = self.ws.experiments[ei]
            .runs
            .iter()
            .position(|r| !f.known.contains(&r.dir))
        else {
            return false;
        };
        self.follow = None;
        let rows = self.runs.rows(&self.ws);
        match rows.iter().position(|r| *r == Row::Run(ei, ri)) {
            Some(i) => {
                self.runs.cursor = i;
                self.samples.reset_position();
                true
            }
            None => false,
        }
    }

    /// Move the runs pane's cursor by `delta` rows, as the arrow keys do.
    fn move_selection(&mut self, delta: i64) {
        let (action, n) = if delta < 0 {
            (Action::Up, -delta)
        } else {
            (Action::Down, delta)
        };
        let focus = std::mem::replace(&mut self.focus, Pane::Runs);
        for _ in 0..n {
            self.pane_action(action);
        }
        self.focus = focus;
    }

    /// Handle one key; returns the effects to carry out.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        match keymap::lookup(&key, self.scope()) {
            Some(Action::TypeChar) => {
                if let KeyCode::Char(c) = key.code {
                    self.input_buf.push(c);
                    self.input_changed();
                }
                Vec::new()
            }
            Some(action) => self.on_action(action),
            None => Vec::new(),
        }
    }

    /// Carry out one keymap action.
    pub fn on_action(&mut self, action: Action) -> Vec<Effect> {
        if self.dialog.is_some() && matches!(action, Action::Down | Action::Up) {
            self.dialog_scroll = match action {
                Action::Down => self.dialog_scroll.saturating_add(1),
                _ => self.dialog_scroll.saturating_sub(1),
            };
            return Vec::new();
        }
        match action {
            Action::Quit => match self.dialog.take() {
                // `q q` quits; `q` closes any other dialog.
                Some(Dialog::Quit) => return vec![Effect::Quit],
                Some(_) => {}
                None if self.ws.running_pids().is_empty() => return vec![Effect::Quit],
                None => self.dialog = Some(Dialog::Quit),
            },
            Action::Confirm | Action::Cancel | Action::DeleteChar | Action::TypeChar => {
                return self.on_modal(action);
            }
            Action::Help => self.show_help = !self.show_help,
            Action::Back => {
                self.show_help = false;
                self.maximized = false;
                self.prompt_output.clear();
                self.charts.on_action(Action::Back, &[]);
                self.samples.on_action(Action::Back, None);
            }
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
            Action::ViewEvals => self.set_view(View::Evals),
            Action::ViewCompare => self.set_view(View::Compare),
            Action::EditNotes => {
                if let Some(dir) = self.runs.notes_dir(&self.ws) {
                    return vec![Effect::EditNotes {
                        path: dir.join(super::workspace::NOTES),
                    }];
                }
            }
            Action::EditExperimentNotes => {
                if let Some(e) = self.selected_experiment() {
                    return vec![Effect::EditNotes {
                        path: e.dir.join(super::workspace::NOTES),
                    }];
                }
            }
            Action::Bookmark => {
                let Some(run) = self.selected_run() else {
                    return Vec::new();
                };
                if let Some(line) = self.samples.bookmark_toggle(run) {
                    return vec![Effect::Bookmark {
                        run: run.dir.clone(),
                        line,
                    }];
                }
            }
            Action::EvalDiff => {
                let runs = chart_runs(&self.runs, &self.ws, false);
                let outcome = match runs.first() {
                    Some(here) => self.samples.cycle_diff(here, runs.get(1).copied()),
                    None => Ok(()),
                };
                if let Err(msg) = outcome {
                    self.notice(msg);
                }
            }
            Action::Fork => match self.highlighted_stage() {
                Some(_) => self.start_input(Input::Fork, ""),
                None => self.notice("highlight a stage in the pipeline pane to fork it"),
            },
            Action::Maximize => self.maximized = !self.maximized,
            Action::Filter => self.start_input(Input::RunFilter, &self.runs.filter.clone()),
            Action::MetricFilter => {
                self.start_input(Input::MetricFilter, &self.charts.metric_filter.clone())
            }
            Action::Prompt => self.start_input(Input::Prompt, ""),
            Action::RewardRange => self.start_input(Input::RewardRange, &self.samples.range_text()),
            Action::RunStage => return self.run_stage(),
            Action::RunPipeline => {
                let Some(ex) = self.selected_experiment() else {
                    return Vec::new();
                };
                let (exp, name) = (ex.dir.clone(), ex.name.clone());
                return self.spawn_or_ask(exp, None, format!("starting the pipeline of {name}"));
            }
            Action::Stop => match self.selected_running() {
                Some((run, pid)) => {
                    self.notice(format!("stopping pid {pid} (it checkpoints first)"));
                    return vec![Effect::Stop { run, pid }];
                }
                None => self.notice("the selected run is not running"),
            },
            Action::Export => {
                if let Some(r) = self.selected_run() {
                    return vec![Effect::Export { run: r.dir.clone() }];
                }
            }
            Action::Rescan => return vec![Effect::Rescan],
            _ => self.pane_action(action),
        }
        Vec::new()
    }

    /// An action for the focused pane (moves, selection, the pane's own keys).
    fn pane_action(&mut self, action: Action) {
        match (self.focus, self.view) {
            (Pane::Runs, _) if action == Action::Select => self.focus = Pane::Main,
            (Pane::Runs, _) => {
                if self.runs.on_action(action, &self.ws) {
                    self.samples.reset_position();
                    let ex = self.runs.selected_experiment(&self.ws);
                    self.pipeline
                        .clamp(ex.and_then(|e| self.ws.experiments.get(e)));
                }
            }
            (Pane::Pipeline, _) => {
                let ex = self.runs.selected_experiment(&self.ws);
                let ex = ex.and_then(|e| self.ws.experiments.get(e));
                self.pipeline.on_action(action, ex);
            }
            (Pane::Main, View::Charts) => {
                let runs = chart_runs(&self.runs, &self.ws, self.charts.group_seeds);
                self.charts.on_action(action, &runs);
                if action == Action::GroupSeeds
                    && self.charts.group_seeds
                    && self.chart_runs().len() < 2
                {
                    self.notice("no other seeds of this run (same stage and settings) to group");
                }
            }
            (Pane::Main, View::Samples) => {
                let run = self.runs.selected_run(&self.ws);
                self.samples.on_action(action, run);
            }
            (Pane::Main, _) => {}
        }
    }

    /// The quit dialog's and the text input's actions.
    fn on_modal(&mut self, action: Action) -> Vec<Effect> {
        if let Some(dialog) = self.dialog.take() {
            self.dialog_scroll = 0;
            if action != Action::Confirm {
                return Vec::new();
            }
            return match dialog {
                Dialog::Quit => vec![Effect::Quit],
                Dialog::StartRunning { exp, stage, .. } => {
                    let msg = format!("starting stage {stage} again");
                    self.spawn_or_ask(exp, Some(stage), msg)
                }
                Dialog::RunsPrograms {
                    exp,
                    stage,
                    commands,
                } => {
                    self.notice(match &stage {
                        Some(s) => format!("starting stage {s} (runs your reward programs)"),
                        None => "starting the pipeline (runs your reward programs)".to_string(),
                    });
                    vec![Effect::Spawn {
                        exp,
                        stage,
                        programs: commands,
                    }]
                }
                Dialog::Message { .. } => Vec::new(),
            };
        }
        let Some(input) = self.input else {
            return Vec::new();
        };
        match action {
            Action::Cancel => {
                self.input = None;
                self.input_buf.clear();
                match input {
                    Input::RunFilter => self.runs.filter.clear(),
                    Input::MetricFilter => self.charts.metric_filter.clear(),
                    Input::RewardRange => self.samples.reward_range = None,
                    Input::Prompt | Input::Fork => {}
                }
            }
            Action::Confirm => {
                self.input = None;
                return self.submit(input);
            }
            Action::DeleteChar => {
                self.input_buf.pop();
                self.input_changed();
            }
            _ => {}
        }
        Vec::new()
    }

    /// Enter on an input: filters are already applied as typed; a reward range is parsed, a
    /// prompt sampled from the selected run's checkpoint.
    fn submit(&mut self, input: Input) -> Vec<Effect> {
        match input {
            Input::RewardRange => {
                if let Err(msg) = self.samples.set_range(&self.input_buf) {
                    self.notice(msg);
                }
            }
            Input::Prompt => {
                let prompt = std::mem::take(&mut self.input_buf);
                if let Some(run) = self.selected_run() {
                    let run = run.dir.clone();
                    self.prompt_output = vec![format!("sampling {prompt} …")];
                    return vec![Effect::Sample { run, prompt }];
                }
                self.notice("select a run with a checkpoint first");
            }
            Input::Fork => return self.fork(),
            Input::RunFilter | Input::MetricFilter => {}
        }
        Vec::new()
    }

    /// The stage highlighted in the pipeline pane: (experiment folder, stage name).
    fn highlighted_stage(&self) -> Option<(PathBuf, String)> {
        let ex = self.selected_experiment()?;
        let spec = ex.spec.as_ref().ok()?;
        let stage = spec.spec.stage.get(self.pipeline.cursor)?;
        Some((ex.dir.clone(), stage.name.clone()))
    }

    /// Enter on the fork input: the overrides are checked as `--set` checks them (against the
    /// experiment's spec) before anything starts; a fork always makes a new run.
    fn fork(&mut self) -> Vec<Effect> {
        let text = std::mem::take(&mut self.input_buf);
        let Some((exp, stage)) = self.highlighted_stage() else {
            return Vec::new();
        };
        let sets: Vec<String> = text
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("stage.") || kv.starts_with("model.") || kv.starts_with("task.") {
                    kv.to_string()
                } else {
                    format!("stage.{stage}.{kv}")
                }
            })
            .collect();
        if sets.is_empty() {
            self.notice("fork: type overrides like lr=1e-4 beta=0.04 (stage keys) or model.ctx=96");
            return Vec::new();
        }
        // The programs of the spec as the fork would run it, overrides applied: an override
        // may add one.
        let programs =
            crate::spec::load_with(&exp, &sets).map(|e| e.programs(std::slice::from_ref(&stage)));
        match programs {
            Ok(programs) if !programs.is_empty() => {
                self.notice(format!(
                    "fork: {stage} would run reward programs ({}); fork it from the command line: stageloop run EXP --stage {stage} --fresh --set …",
                    programs.join(", ")
                ));
                Vec::new()
            }
            Ok(programs) => {
                self.notice(format!("forking {stage} with {}", sets.join(" ")));
                vec![Effect::Fork {
                    exp,
                    stage,
                    sets,
                    programs,
                }]
            }
            Err(e) => {
                self.notice(format!("fork: {e:#}"));
                Vec::new()
            }
        }
    }

    /// The input's text changed: filters follow it as it is typed.
    fn input_changed(&mut self) {
        match self.input {
            Some(Input::RunFilter) => self.runs.set_filter(&self.input_buf),
            Some(Input::MetricFilter) => self.charts.set_filter(&self.input_buf),
            _ => {}
        }
    }

    fn start_input(&mut self, input: Input, initial: &str) {
        self.input = Some(input);
        self.input_buf = initial.to_string();
    }

    /// `r`: the highlighted stage in the pipeline pane, else the selected run's stage (or the
    /// highlighted one on an experiment row).
    fn run_stage(&mut self) -> Vec<Effect> {
        let Some(ex) = self.selected_experiment() else {
            return Vec::new();
        };
        let exp = ex.dir.clone();
        let highlighted = self.pipeline.stage(Some(ex));
        let stage = if self.focus == Pane::Pipeline {
            highlighted
        } else {
            self.selected_run()
                .map(|r| r.stage().to_string())
                .filter(|s| !s.is_empty())
                .or(highlighted)
        };
        let Some(stage) = stage else {
            self.notice("no stage selected");
            return Vec::new();
        };
        let running = ex.runs.iter().rev().find(|r| {
            r.stage() == stage && r.effective_status() == Some(crate::runfs::Status::Running)
        });
        if let Some(pid) = running.and_then(|r| r.status.as_ref()?.pid) {
            self.dialog = Some(Dialog::StartRunning { exp, stage, pid });
            return Vec::new();
        }
        let msg = format!("starting stage {stage}");
        self.spawn_or_ask(exp, Some(stage), msg)
    }

    /// Start `stage` (`None`: the pipeline) of the selected experiment — or, when that runs
    /// reward programs from the spec, show their commands and ask first.
    fn spawn_or_ask(&mut self, exp: PathBuf, stage: Option<String>, msg: String) -> Vec<Effect> {
        if let Some(Err(problem)) = self.selected_experiment().map(|ex| &ex.spec) {
            self.dialog = Some(Dialog::Message {
                title: "the spec does not load".into(),
                text: problem.clone(),
            });
            return Vec::new();
        }
        let commands = self
            .selected_experiment()
            .map(|ex| programs_of(ex, stage.as_deref()))
            .unwrap_or_default();
        if !commands.is_empty() {
            self.dialog = Some(Dialog::RunsPrograms {
                exp,
                stage,
                commands,
            });
            return Vec::new();
        }
        self.notice(msg);
        vec![Effect::Spawn {
            exp,
            stage,
            programs: Vec::new(),
        }]
    }

    /// The folder and pid of the selected run (or, on an experiment row or in the pipeline
    /// pane, of a running run of the selected stage / experiment), when it is running.
    fn selected_running(&self) -> Option<(PathBuf, u32)> {
        let running = |r: &RunView| {
            (r.effective_status() == Some(crate::runfs::Status::Running))
                .then(|| r.status.as_ref().and_then(|s| s.pid))
                .flatten()
                .map(|pid| (r.dir.clone(), pid))
        };
        if let Some(Row::Run(e, r)) = self.runs.current_row(&self.ws)
            && self.focus != Pane::Pipeline
        {
            return running(&self.ws.experiments[e].runs[r]);
        }
        let ex = self.selected_experiment()?;
        let stage = self.pipeline.stage(Some(ex));
        ex.runs
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

/// The external programs starting `stage` (`None`: every stage) would run, as
/// `stage/reward: command` lines; empty when the spec does not load (the run would refuse).
pub fn programs_of(ex: &ExperimentView, stage: Option<&str>) -> Vec<String> {
    let Ok(e) = &ex.spec else {
        return Vec::new();
    };
    let stages: Vec<String> = stage.map(str::to_string).into_iter().collect();
    e.programs(&stages)
}

/// [`App::chart_runs`] over the runs pane and workspace (borrowed apart from the charts).
fn chart_runs<'a>(runs: &Runs, ws: &'a Workspace, group_seeds: bool) -> Vec<&'a RunView> {
    if group_seeds
        && let (Some(e), Some(run)) = (runs.selected_experiment(ws), runs.selected_run(ws))
    {
        let group = ws.experiments[e].seed_group(run);
        if !group.is_empty() {
            return group;
        }
    }
    runs.chart_runs(ws)
}
