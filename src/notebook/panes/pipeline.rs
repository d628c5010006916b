//! Pipeline: the selected experiment's stages (and loops) with the status of each stage's latest
//! run; `r` runs the highlighted stage, `R` the whole pipeline, `x` stops it.

use super::{block, status_color};
use crate::notebook::app::{App, Pane};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Wrap};

pub fn draw(f: &mut Frame<'_>, area: Rect, app: &App) {
    let focused = app.focus == Pane::Pipeline;
    let Some(e) = app.selected_experiment() else {
        f.render_widget(Paragraph::new("").block(block("pipeline", focused)), area);
        return;
    };
    let ex = &app.ws.experiments[e];
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
    let list = List::new(items)
        .block(block(&format!("pipeline: {}", ex.name), focused))
        .highlight_style(if focused {
            Style::default().bg(Color::DarkGray)
        } else {
            Style::default()
        });
    let mut state = ListState::default();
    state.select(Some(
        app.stage_cursor
            .min(spec.spec.stage.len().saturating_sub(1)),
    ));
    f.render_stateful_widget(list, area, &mut state);
}
