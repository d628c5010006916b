//! Samples browser: the completions of one step (←/→ scrubs steps), filtered by correct / wrong /
//! format failure; the selected one in full with `<think>` and `<answer>` highlighted, its reward
//! components and advantage; `g` lists all G completions of its group, `p` its prompt across
//! steps; `v` keeps a range of rewards. [`Samples`] is the browser's state.

use super::{Ctx, block, step_index};
use crate::notebook::keymap::Action;
use crate::notebook::workspace::RunView;
use crate::runfs::records::Sample;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Wrap};

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
    /// The run's bookmarked samples, all steps.
    Bookmarks,
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

/// A problem-level diff of two eval runs shown in the browser: the prompts solved (at least
/// one correct sample) by this run and not by `against`, or the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleDiff {
    pub against: String,
    /// The problems the selected run solves and `against` does not (else the reverse).
    pub here_only: bool,
    pub prompts: std::collections::BTreeSet<String>,
}

/// The samples browser's state.
#[derive(Debug, Default)]
pub struct Samples {
    /// Only the problems of a diff against another eval run.
    pub diff: Option<SampleDiff>,
    pub filter: SampleFilter,
    /// Only samples whose total reward lies in `[lo, hi]` (typed as `lo..hi`; either side may be
    /// empty).
    pub reward_range: Option<(f64, f64)>,
    pub mode: SampleMode,
    /// Position in the list of sample steps (from the end: 0 = latest).
    pub step_back: usize,
    /// The selected sample among the visible ones.
    pub index: usize,
}

impl Samples {
    /// Steps that have samples in `run`, ascending.
    pub fn steps(run: Option<&RunView>) -> Vec<u64> {
        let mut s: Vec<u64> = run
            .map(|r| r.samples.iter().map(|x| x.step).collect())
            .unwrap_or_default();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The step the browser shows.
    pub fn step(&self, run: Option<&RunView>) -> Option<u64> {
        let s = Samples::steps(run);
        let n = s.len();
        (n > 0).then(|| s[n - 1 - self.step_back.min(n - 1)])
    }

    /// Samples listed, after mode, filter and reward range.
    /// The `bookmarks.jsonl` line that toggles the highlighted sample of `run`.
    pub fn bookmark_toggle(&self, run: &RunView) -> Option<String> {
        let visible = self.visible(Some(run));
        let s = visible.get(self.index.min(visible.len().saturating_sub(1)))?;
        let on = !run.bookmarks.contains(&s.key());
        Some(crate::notebook::workspace::bookmark_line(s, on))
    }

    pub fn visible<'a>(&self, run: Option<&'a RunView>) -> Vec<&'a Sample> {
        let Some(r) = run else {
            return Vec::new();
        };
        let step = self.step(run);
        r.samples
            .iter()
            .filter(|s| match &self.mode {
                SampleMode::Step => Some(s.step) == step,
                SampleMode::Group(g) => Some(s.step) == step && s.group == Some(*g),
                SampleMode::Prompt(p) => &s.prompt == p,
                SampleMode::Bookmarks => r.bookmarks.contains(&s.key()),
            })
            .filter(|s| self.filter.keeps(s))
            .filter(|s| {
                self.diff
                    .as_ref()
                    .is_none_or(|d| d.prompts.contains(&s.prompt))
            })
            .filter(|s| {
                self.reward_range
                    .is_none_or(|(lo, hi)| lo <= s.reward && s.reward <= hi)
            })
            .collect()
    }

    /// Back to the latest step's first sample (another run was selected).
    pub fn reset_position(&mut self) {
        self.index = 0;
        self.step_back = 0;
        self.diff = None;
    }

    /// `d`: the next diff of eval run `here` against eval run `there` (solved here only →
    /// solved there only → off); an error message when the two cannot be compared.
    pub fn cycle_diff(&mut self, here: &RunView, there: Option<&RunView>) -> Result<(), String> {
        let next_here_only = match &self.diff {
            None => true,
            Some(d) if d.here_only => false,
            Some(_) => {
                self.diff = None;
                return Ok(());
            }
        };
        let there =
            there.ok_or("mark another eval run (space in the runs pane) to diff against")?;
        let scores = |r: &RunView| {
            crate::analysis::evals::problem_scores(
                r.samples
                    .iter()
                    .filter(|s| !s.greedy)
                    .map(|s| (s.prompt.as_str(), s.correct())),
            )
        };
        let d = crate::analysis::evals::problem_diff(&scores(here), &scores(there));
        if d.both + d.neither + d.only_a.len() + d.only_b.len() == 0 {
            return Err(format!(
                "{} and {} share no eval problems",
                here.id, there.id
            ));
        }
        let side = if next_here_only { d.only_a } else { d.only_b };
        self.diff = Some(SampleDiff {
            against: there.id.clone(),
            here_only: next_here_only,
            prompts: side.into_iter().map(|(p, _, _)| p).collect(),
        });
        self.index = 0;
        Ok(())
    }

    /// The reward range as it is typed (`lo..hi`), for editing.
    pub fn range_text(&self) -> String {
        self.reward_range
            .map(|(lo, hi)| format!("{lo}..{hi}"))
            .unwrap_or_default()
    }

    /// Set the reward range from typed text; an error message when it does not parse.
    pub fn set_range(&mut self, text: &str) -> Result<(), String> {
        self.index = 0;
        match parse_range(text) {
            Some(r) => {
                self.reward_range = r;
                Ok(())
            }
            None => Err(format!(
                "reward range `{text}`: write lo..hi, e.g. 0.5..1 or ..0"
            )),
        }
    }

    /// Carry out `action` on `run`'s samples if it is the browser's; whether it was.
    pub fn on_action(&mut self, action: Action, run: Option<&RunView>) -> bool {
        let selected = |me: &Samples| me.visible(run).get(me.index).copied();
        match action {
            Action::Up | Action::Down => {
                let delta = if action == Action::Up { -1 } else { 1 };
                self.index = step_index(self.index, delta, self.visible(run).len());
            }
            Action::Left | Action::Right => {
                if let SampleMode::Prompt(_) = self.mode {
                    return true;
                }
                let delta = if action == Action::Left { 1 } else { -1 };
                self.step_back = step_index(self.step_back, delta, Samples::steps(run).len());
                self.index = 0;
            }
            Action::SampleFilter => {
                self.filter = self.filter.next();
                self.index = 0;
            }
            Action::Select if self.mode == SampleMode::Bookmarks => {
                // Jump to the bookmarked sample's step, on that sample.
                if let Some(s) = selected(self) {
                    let steps = Samples::steps(run);
                    let pos = steps.iter().position(|x| *x == s.step).unwrap_or(0);
                    let key = s.key();
                    self.step_back = steps.len() - 1 - pos;
                    self.mode = SampleMode::Step;
                    self.index = 0;
                    if let Some(i) = self.visible(run).iter().position(|x| x.key() == key) {
                        self.index = i;
                    }
                }
            }
            Action::Bookmarks => {
                self.mode = if self.mode == SampleMode::Bookmarks {
                    SampleMode::Step
                } else {
                    SampleMode::Bookmarks
                };
                self.index = 0;
            }
            Action::GroupView | Action::Select => {
                let group = selected(self).and_then(|s| s.group);
                self.mode = match (&self.mode, group) {
                    (SampleMode::Group(_), _) | (_, None) => SampleMode::Step,
                    (_, Some(g)) => SampleMode::Group(g),
                };
                self.index = 0;
            }
            Action::SamePrompt => {
                let prompt = selected(self).map(|s| s.prompt.clone());
                self.mode = match (&self.mode, prompt) {
                    (SampleMode::Prompt(_), _) | (_, None) => SampleMode::Step,
                    (_, Some(p)) => SampleMode::Prompt(p),
                };
                self.index = 0;
            }
            Action::Back => self.mode = SampleMode::Step,
            _ => return false,
        }
        true
    }

    /// The browser over `run`'s samples.
    pub fn draw(&self, f: &mut Frame<'_>, area: Rect, run: Option<&RunView>, ctx: Ctx<'_>) {
        draw(self, f, area, run, ctx)
    }
}

/// Split a completion into styled spans: think text dim cyan, answer bold, tags dark.
pub fn highlight(completion: &str, correct: bool) -> Vec<Span<'static>> {
    let tag = Style::default().fg(Color::DarkGray);
    let think = Style::default().fg(Color::Cyan);
    let answer = Style::default()
        .fg(if correct { Color::Green } else { Color::Red })
        .add_modifier(Modifier::BOLD);
    let mut spans = Vec::new();
    let mut style = Style::default();
    let mut rest = completion;
    while !rest.is_empty() {
        let next = ["<think>", "</think>", "<answer>", "</answer>"]
            .iter()
            .filter_map(|t| rest.find(t).map(|i| (i, *t)))
            .min();
        match next {
            Some((i, t)) => {
                if i > 0 {
                    spans.push(Span::styled(rest[..i].to_string(), style));
                }
                spans.push(Span::styled(t.to_string(), tag));
                style = match t {
                    "<think>" => think,
                    "<answer>" => answer,
                    _ => Style::default(),
                };
                rest = &rest[i + t.len()..];
            }
            None => {
                spans.push(Span::styled(rest.to_string(), style));
                break;
            }
        }
    }
    spans
}

fn item(s: &Sample, bookmarked: bool) -> ListItem<'static> {
    let mark = if s.correct() {
        Span::styled("✓ ", Style::default().fg(Color::Green))
    } else {
        Span::styled("✗ ", Style::default().fg(Color::Red))
    };
    let star = Span::styled(
        if bookmarked { "★ " } else { "" },
        Style::default().fg(Color::Yellow),
    );
    let adv = s.advantage.map(|a| format!("{a:+.2} ")).unwrap_or_default();
    let mut spans = vec![
        star,
        mark,
        Span::styled(
            format!("{:.2} {adv}", s.reward),
            Style::default().fg(Color::DarkGray),
        ),
        Span::raw(s.prompt.clone()),
    ];
    spans.extend(highlight(&s.completion, s.correct()));
    if s.truncated {
        // The completion hit the token budget before an end-of-sequence token.
        spans.push(Span::styled(" ✂", Style::default().fg(Color::Magenta)));
    }
    ListItem::new(Line::from(spans))
}

fn draw(pane: &Samples, f: &mut Frame<'_>, area: Rect, run: Option<&RunView>, ctx: Ctx<'_>) {
    let focused = ctx.focused;
    let steps = Samples::steps(run);
    let samples = pane.visible(run);
    let step = pane.step(run);
    let mode = match &pane.mode {
        SampleMode::Step => "".to_string(),
        SampleMode::Group(g) => format!(" · group {g}"),
        SampleMode::Prompt(p) => format!(" · prompt {p} across steps"),
        SampleMode::Bookmarks => " · bookmarks (enter jumps)".to_string(),
    };
    let mode = match &pane.diff {
        Some(d) => format!(
            "{mode} · {} problems solved {} {}",
            d.prompts.len(),
            if d.here_only {
                "here, not by"
            } else {
                "by, not here:"
            },
            d.against
        ),
        None => mode,
    };
    let mode = match (ctx.typing, pane.reward_range) {
        (Some(text), _) => format!("{mode} · reward {text}▏"),
        (_, Some((lo, hi))) => format!("{mode} · reward {lo}..{hi}"),
        _ => mode,
    };
    let pos = steps.len().saturating_sub(pane.step_back);
    let title = match step {
        Some(s) => format!(
            "samples · step {s} ({pos}/{}) · {} · {} shown{mode}",
            steps.len(),
            pane.filter.label(),
            samples.len()
        ),
        None => "samples".to_string(),
    };
    if samples.is_empty() {
        let msg = if steps.is_empty() {
            "no samples in this run"
        } else if pane.mode == SampleMode::Bookmarks {
            "no bookmarks in this run (b bookmarks the selected sample)"
        } else {
            "no sample matches the filter (f cycles it)"
        };
        f.render_widget(Paragraph::new(msg).block(block(&title, focused)), area);
        return;
    }
    let [list_area, detail] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let sel = pane.index.min(samples.len() - 1);
    let mut state = ListState::default();
    state.select(Some(sel));
    f.render_stateful_widget(
        List::new(
            samples
                .iter()
                .map(|s| item(s, run.is_some_and(|r| r.bookmarks.contains(&s.key()))))
                .collect::<Vec<_>>(),
        )
        .block(block(&title, focused))
        .highlight_style(Style::default().bg(Color::DarkGray)),
        list_area,
        &mut state,
    );
    let s = samples[sel];
    let mut comp = vec![Span::styled(
        s.prompt.clone(),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    comp.extend(highlight(&s.completion, s.correct()));
    let rewards: Vec<String> = s
        .rewards
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    let lines = vec![
        Line::from(comp),
        Line::from(""),
        Line::from(format!("expected answer: {}", s.answer)),
        Line::from(format!(
            "reward {:.3}   {}{}",
            s.reward,
            rewards.join("  "),
            s.advantage
                .map(|a| format!("   advantage {a:+.3}"))
                .unwrap_or_default()
        )),
        Line::from(format!(
            "step {}{}",
            s.step,
            s.group.map(|g| format!("   group {g}")).unwrap_or_default()
        )),
    ];
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block("sample", false)),
        detail,
    );
}
