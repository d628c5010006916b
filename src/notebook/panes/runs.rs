//! Runs tree: experiments → runs with status, progress bar and ETA; `/` filters.

use super::{block, duration, run_color, status_color};
use crate::notebook::app::{App, Input, Pane, Row};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState};

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

pub fn draw(f: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.rows();
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        match *row {
            Row::Experiment(e) => {
                let ex = &app.ws.experiments[e];
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
                let run = &app.ws.experiments[e].runs[r];
                let marked = app.marked.contains(&(e, run.id.clone()));
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
                        let elapsed = app.now - start;
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
    let title = if app.input == Some(Input::RunFilter) {
        format!("runs /{}▏", app.input_buf)
    } else if !app.run_filter.is_empty() {
        format!("runs /{}", app.run_filter)
    } else {
        "runs".to_string()
    };
    if items.is_empty() {
        items.push(ListItem::new(format!(
            "no experiments in {}",
            app.ws.root.display()
        )));
    }
    let list = List::new(items)
        .block(block(&title, app.focus == Pane::Runs))
        .highlight_style(
            Style::default()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
        );
    let mut state = ListState::default();
    if !rows.is_empty() {
        state.select(Some(app.cursor.min(rows.len() - 1)));
    }
    f.render_stateful_widget(list, area, &mut state);
}
