//! Run overview: status, config, last values of the headline metrics, and the experiment's eval
//! table (the latest run of each eval stage).

use super::{block, status_color};
use crate::notebook::workspace::{ExperimentView, RunView};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, Wrap};

/// `run`'s overview, with the eval table of its experiment `ex`.
pub fn draw(
    f: &mut Frame<'_>,
    area: Rect,
    run: Option<&RunView>,
    ex: Option<&ExperimentView>,
    focused: bool,
) {
    let Some(run) = run else {
        f.render_widget(
            Paragraph::new("no run selected").block(block("overview", focused)),
            area,
        );
        return;
    };
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let mut info = Vec::new();
    match &run.status {
        Some(s) => {
            let st = s.effective_status().to_string();
            info.push(Line::from(vec![
                Span::raw(format!("{} · {} · ", s.stage, s.kind)),
                Span::styled(st.clone(), Style::default().fg(status_color(&st))),
            ]));
            info.push(Line::from(format!(
                "progress {}/{}{}",
                s.progress.step,
                s.progress.total,
                s.device
                    .as_deref()
                    .map(|d| format!(" · device {d}"))
                    .unwrap_or_default()
            )));
            if let Some(init) = &s.init {
                info.push(Line::from(format!("init {init}")));
            }
            for a in &run.alerts {
                info.push(Line::styled(
                    format!("⚑ {}: {}", a.name, a.message),
                    Style::default().fg(Color::Red),
                ));
            }
            for n in &run.health_notes {
                info.push(Line::styled(
                    format!("· {n}"),
                    Style::default().fg(Color::DarkGray),
                ));
            }
            if let Some(e) = &s.error {
                info.push(Line::styled(
                    format!("error: {}", e.message),
                    Style::default().fg(Color::Red),
                ));
            }
            if let serde_json::Value::Object(cfg) = &s.config {
                for (k, v) in cfg {
                    info.push(Line::from(Span::styled(
                        format!("  {k} = {v}"),
                        Style::default().fg(Color::DarkGray),
                    )));
                }
            }
        }
        None => info.push(Line::from(
            run.status_error
                .clone()
                .unwrap_or_else(|| "no run.json (external run)".into()),
        )),
    }
    let notes = [
        ("run notes", run.notes.as_deref()),
        ("experiment notes", ex.and_then(|e| e.notes.as_deref())),
    ];
    for (what, text) in notes {
        if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
            info.push(Line::styled(
                format!("{what} (n edits):"),
                Style::default().add_modifier(Modifier::BOLD),
            ));
            info.extend(text.lines().take(12).map(|l| Line::from(format!("  {l}"))));
        }
    }
    if run.bad_lines > 0 {
        info.push(Line::styled(
            format!(
                "⚠ {} unreadable metric line(s); last: {}",
                run.bad_lines,
                run.last_error
                    .as_deref()
                    .unwrap_or_default()
                    .replace(&format!("{}/", run.dir.display()), "")
            ),
            Style::default().fg(Color::Yellow),
        ));
    }
    f.render_widget(
        Paragraph::new(info)
            .wrap(Wrap { trim: true })
            .block(block(&run.id, focused)),
        left,
    );

    let mut last: Vec<Row> = run
        .series
        .names()
        .filter_map(|k| {
            run.series
                .last(k)
                .map(|v| Row::new(vec![k.clone(), format!("{v:.4}")]))
        })
        .collect();
    last.truncate(right.height.saturating_sub(2) as usize);
    f.render_widget(
        Table::new(
            last,
            [Constraint::Percentage(65), Constraint::Percentage(35)],
        )
        .block(block("last values", false)),
        right,
    );

    let mut rows = Vec::new();
    if let Some(ex) = ex {
        for r in &ex.runs {
            if let Some(e) = &r.eval {
                let g = |k: &str| {
                    e.get(k)
                        .and_then(|v| v.as_f64())
                        .map(|v| format!("{v:.3}"))
                        .unwrap_or_default()
                };
                rows.push(Row::new(vec![
                    r.stage().to_string(),
                    g("pass@1"),
                    g("greedy"),
                    g("pass@k"),
                    g("maj@k"),
                    g("format_rate"),
                    g("mean_length"),
                ]));
            }
        }
    }
    let header = Row::new(vec![
        "eval", "pass@1", "greedy", "pass@k", "maj@k", "format", "length",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(14),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
        )
        .header(header)
        .block(block("evals", false)),
        bottom,
    );
}
