//! Pipeline: the selected experiment's stages (and loops) with the status of each stage's latest
//! run; `r` runs the highlighted stage, `R` the whole pipeline, `x` stops it.

use super::{Ctx, block, status_color, step_index};
use crate::notebook::keymap::Action;
use crate::notebook::workspace::ExperimentView;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Wrap};

/// The pipeline pane's state: the highlighted stage.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Index into the selected experiment's stages.
    pub cursor: usize,
}

/// Stage names of an experiment (none when its spec does not parse).
pub fn stages(ex: Option<&ExperimentView>) -> Vec<String> {
    ex.and_then(|x| x.spec.as_ref().ok())
        .map(|x| x.spec.stage.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default()
}

impl Pipeline {
    /// The highlighted stage of `ex`.
    pub fn stage(&self, ex: Option<&ExperimentView>) -> Option<String> {
        stages(ex).get(self.cursor).cloned()
    }

    /// Keep the cursor on a stage of `ex` (after another experiment was selected).
    pub fn clamp(&mut self, ex: Option<&ExperimentView>) {
        self.cursor = self.cursor.min(stages(ex).len().saturating_sub(1));
    }

    /// Carry out `action` if it is the pane's; whether it was.
    pub fn on_action(&mut self, action: Action, ex: Option<&ExperimentView>) -> bool {
        match action {
            Action::Up | Action::Down => {
                let delta = if action == Action::Up { -1 } else { 1 };
                self.cursor = step_index(self.cursor, delta, stages(ex).len());
                true
            }
            _ => false,
        }
    }

    /// The stages of `ex` with the status of each one's latest run.
    pub fn draw(&self, f: &mut Frame<'_>, area: Rect, ex: Option<&ExperimentView>, ctx: Ctx<'_>) {
        draw(self.cursor, f, area, ex, ctx)
    }
}

fn draw(cursor: usize, f: &mut Frame<'_>, area: Rect, ex: Option<&ExperimentView>, ctx: Ctx<'_>) {
    let focused = ctx.focused;
    let Some(ex) = ex else {
        f.render_widget(Paragraph::new("").block(block("pipeline", focused)), area);
        return;
    };
    let spec = match &ex.spec {
        Ok(s) => s,
        Err(err) => {
            let msg = if err.is_empty() {
                "no experiment.toml".to_string()
            } else {
                err.clone()
            };
            f.render_widget(
                Paragraph::new(msg)
                    .style(Style::default().fg(Color::Red))
                    .wrap(Wrap { trim: true })
                    .block(block("pipeline", focused)),
                area,
            );
            return;
        }
    };
    let mut items = Vec::new();
    for s in &spec.spec.stage {
        let latest = ex.runs.iter().rev().find(|r| r.stage() == s.name);
        let status = latest
            .and_then(|r| r.effective_status())
            .map(|st| st.to_string())
            .unwrap_or_else(|| "—".into());
        let in_loop = spec.spec.loops.iter().any(|l| {
            let (a, b) = (spec.stage_index(&l.start), spec.stage_index(&l.end));
            let i = spec.stage_index(&s.name);
            matches!((a, b, i), (Some(a), Some(b), Some(i)) if a <= i && i <= b)
        });
        let init = s
            .init
            .as_deref()
            .map(|i| format!(" ← {i}"))
            .unwrap_or_default();
        items.push(ListItem::new(Line::from(vec![
            Span::raw(if in_loop { "↻ " } else { "  " }),
            Span::styled(
                format!("{:<12}", s.name),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::styled(
                format!("{:<10}", s.kind.as_str()),
                Style::default().fg(Color::DarkGray),
            ),
            Span::styled(
                format!("{status:<8}"),
                Style::default().fg(status_color(&status)),
            ),
            Span::styled(init, Style::default().fg(Color::DarkGray)),
        ])));
    }
    let title = match (ctx.typing, spec.spec.stage.get(cursor)) {
        (Some(t), Some(s)) => format!("fork {} with: {t}▏ (enter starts, esc cancels)", s.name),
        _ => format!("pipeline: {}", ex.name),
    };
    let list = List::new(items)
        .block(block(&title, focused))
        .highlight_style(if focused {
            Style::default().bg(Color::DarkGray)
        } else {
            Style::default()
        });
    let mut state = ListState::default();
    state.select(Some(cursor.min(spec.spec.stage.len().saturating_sub(1))));
    f.render_stateful_widget(list, area, &mut state);
}
