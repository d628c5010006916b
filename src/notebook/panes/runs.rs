//! Runs tree: experiments → runs with status, progress bar and ETA; `/` filters, space marks a
//! run to overlay on the charts. [`Runs`] is the pane's state: cursor, filter and marks.

use super::{Ctx, block, duration, run_color, status_color, step_index};
use crate::notebook::keymap::Action;
use crate::notebook::workspace::{RunView, Workspace};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState};
use std::collections::BTreeSet;

/// A row of the runs tree: an experiment, or one of its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Experiment(usize),
    Run(usize, usize),
}

/// The runs tree's state.
#[derive(Debug, Default)]
pub struct Runs {
    /// Index into [`Runs::rows`].
    pub cursor: usize,
    /// Runs overlaid on the charts besides the selected one (experiment index, run id).
    pub marked: BTreeSet<(usize, String)>,
    /// Case-insensitive text a run's or experiment's name must contain.
    pub filter: String,
}

impl Runs {
    /// Rows of the tree after the text filter (each experiment, then its runs newest first).
    pub fn rows(&self, ws: &Workspace) -> Vec<Row> {
        let f = self.filter.to_lowercase();
        let mut out = Vec::new();
        for (ei, e) in ws.experiments.iter().enumerate() {
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
    pub fn current_row(&self, ws: &Workspace) -> Option<Row> {
        let rows = self.rows(ws);
        rows.get(self.cursor.min(rows.len().saturating_sub(1)))
            .copied()
    }

    /// (experiment, run) indices of the selected run, or of the experiment's latest run.
    pub fn selected_index(&self, ws: &Workspace) -> Option<(usize, usize)> {
        match self.current_row(ws)? {
            Row::Run(e, r) => Some((e, r)),
            Row::Experiment(e) => Some((e, ws.experiments.get(e)?.runs.len().checked_sub(1)?)),
        }
    }

    /// The experiment of the selected row.
    pub fn selected_experiment(&self, ws: &Workspace) -> Option<usize> {
        match self.current_row(ws)? {
            Row::Experiment(e) | Row::Run(e, _) => Some(e),
        }
    }

    /// The selected run, or the experiment's latest when an experiment row is selected.
    pub fn selected_run<'a>(&self, ws: &'a Workspace) -> Option<&'a RunView> {
        let (e, r) = self.selected_index(ws)?;
        ws.experiments.get(e)?.runs.get(r)
    }

    /// Runs drawn on the charts: the selected one first, then the marked ones.
    pub fn chart_runs<'a>(&self, ws: &'a Workspace) -> Vec<&'a RunView> {
        let mut out: Vec<&RunView> = self.selected_run(ws).into_iter().collect();
        for (e, id) in &self.marked {
            if let Some(r) = ws
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

    /// Filter by `text` (typed live), from the first row.
    /// The folder whose `notes.md` `n` opens: the highlighted run's, else the selected
    /// experiment's.
    pub fn notes_dir(&self, ws: &Workspace) -> Option<std::path::PathBuf> {
        if let Some(Row::Run(..)) = self.rows(ws).get(self.cursor)
            && let Some(r) = self.selected_run(ws)
        {
            return Some(r.dir.clone());
        }
        let e = self.selected_experiment(ws)?;
        Some(ws.experiments.get(e)?.dir.clone())
    }

    pub fn set_filter(&mut self, text: &str) {
        self.filter = text.to_string();
        self.cursor = 0;
    }

    /// Carry out `action` if it is the pane's; whether the selection moved.
    pub fn on_action(&mut self, action: Action, ws: &Workspace) -> bool {
        match action {
            Action::Up | Action::Down => {
                let delta = if action == Action::Up { -1 } else { 1 };
                self.cursor = step_index(self.cursor, delta, self.rows(ws).len());
                true
            }
            Action::ToggleMark => {
                if let Some(Row::Run(e, r)) = self.current_row(ws) {
                    let key = (e, ws.experiments[e].runs[r].id.clone());
                    if !self.marked.remove(&key) {
                        self.marked.insert(key);
                    }
                }
                false
            }
            _ => false,
        }
    }

    /// The tree, with `ws`'s experiments and runs.
    pub fn draw(&self, f: &mut Frame<'_>, area: Rect, ws: &Workspace, ctx: Ctx<'_>) {
        draw(self, f, area, ws, ctx)
    }
}

fn bar(frac: f64, width: usize) -> String {
    let full = (frac.clamp(0.0, 1.0) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// A run id without its date (`20261130-064244-sft` → `064244-sft`); other names as they are.
fn label(id: &str) -> String {
    match id.split_once('-') {
        Some((date, rest)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => {
            rest.to_string()
        }
        _ => id.to_string(),
    }
}

fn draw(pane: &Runs, f: &mut Frame<'_>, area: Rect, ws: &Workspace, ctx: Ctx<'_>) {
    let rows = pane.rows(ws);
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        match *row {
            Row::Experiment(e) => {
                let ex = &ws.experiments[e];
                let mut spans = vec![Span::styled(
                    ex.name.clone(),
                    Style::default().add_modifier(Modifier::BOLD),
                )];
                if let Err(err) = &ex.spec
                    && ex.dir.join("experiment.toml").is_file()
                {
                    spans.push(Span::styled(
                        " ⚠ invalid spec",
                        Style::default().fg(Color::Red),
                    ));
                    let _ = err;
                }
                spans.push(Span::styled(
                    format!("  {} runs", ex.runs.len()),
                    Style::default().fg(Color::DarkGray),
                ));
                items.push(ListItem::new(Line::from(spans)));
            }
            Row::Run(e, r) => {
                let run = &ws.experiments[e].runs[r];
                let marked = pane.marked.contains(&(e, run.id.clone()));
                let status = run
                    .effective_status()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| {
                        if run.status_error.is_some() {
                            "unreadable".into()
                        } else {
                            "external".into()
                        }
                    });
                let mut spans = vec![
                    Span::styled(
                        if marked { " ◆ " } else { "   " },
                        Style::default().fg(run_color(&run.id)),
                    ),
                    Span::raw(label(&run.id)),
                    Span::raw(" "),
                    Span::styled(status.clone(), Style::default().fg(status_color(&status))),
                ];
                // Health alerts right after the status, where a narrow pane still shows them
                // (the overview says what each means).
                if !run.alerts.is_empty() {
                    spans.push(Span::styled(
                        format!(" ⚑{}", run.alerts.len()),
                        Style::default().fg(Color::Red),
                    ));
                }
                if let Some(s) = &run.status
                    && s.progress.total > 0
                {
                    let frac = s.progress.step as f64 / s.progress.total as f64;
                    spans.push(Span::raw(format!(
                        " {} {}/{}",
                        bar(frac, 8),
                        s.progress.step,
                        s.progress.total
                    )));
                    if status == "running"
                        && s.progress.step > 0
                        && let Some(start) = s.started
                    {
                        let elapsed = ctx.now - start;
                        let eta = elapsed / frac.max(1e-9) - elapsed;
                        spans.push(Span::styled(
                            format!(" eta {}", duration(eta)),
                            Style::default().fg(Color::DarkGray),
                        ));
                    }
                }
                if run.bad_lines > 0 {
                    spans.push(Span::styled(
                        format!(" ⚠{}", run.bad_lines),
                        Style::default().fg(Color::Yellow),
                    ));
                }
                items.push(ListItem::new(Line::from(spans)));
            }
        }
    }
    let title = if let Some(text) = ctx.typing {
        format!("runs /{text}▏")
    } else if !pane.filter.is_empty() {
        format!("runs /{}", pane.filter)
    } else {
        "runs".to_string()
    };
    if items.is_empty() {
        items.push(ListItem::new(format!(
            "no experiments in {}",
            ws.root.display()
        )));
    }
    let list = List::new(items)
        .block(block(&title, ctx.focused))
        .highlight_style(
            Style::default()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
        );
    let mut state = ListState::default();
    if !rows.is_empty() {
        state.select(Some(pane.cursor.min(rows.len() - 1)));
    }
    f.render_stateful_widget(list, area, &mut state);
}
