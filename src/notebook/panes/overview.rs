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
    let mut info = status_lines(run);
    info.extend(note_lines(run, ex));
    f.render_widget(
        Paragraph::new(info)
            .wrap(Wrap { trim: true })
            .block(block(&run.id, focused)),
        left,
    );
    last_values(f, right, run);
    eval_table(f, bottom, ex);
}

/// The run's stage, status, progress, alerts, error and config (from `run.json`).
fn status_lines(run: &RunView) -> Vec<Line<'static>> {
    let Some(s) = &run.status else {
        return vec![Line::from(
            run.status_error
                .clone()
                .unwrap_or_else(|| "no run.json (external run)".into()),
        )];
    };
    let st = run.effective_status().unwrap_or(s.status).to_string();
    let mut info = vec![
        Line::from(vec![
            Span::raw(format!("{} · {} · ", s.stage, s.kind)),
            Span::styled(st.clone(), Style::default().fg(status_color(&st))),
        ]),
        Line::from(format!(
            "progress {}/{}{}",
            s.progress.step,
            s.progress.total,
            s.device
                .as_deref()
                .map(|d| format!(" · device {d}"))
                .unwrap_or_default()
        )),
    ];
    if let Some(init) = &s.init {
        info.push(Line::from(format!("init {init}")));
    }
    if let Some(m) = &s.model {
        info.push(Line::from(format!(
            "model {} params · KV cache {} a token",
            crate::untrusted::display(&human(m.params as f64, "")),
            crate::untrusted::display(&human(m.kv_bytes_per_token as f64, "B")),
        )));
        for b in &m.blocks {
            info.push(Line::from(format!("  {}", crate::untrusted::display(b))));
        }
    }
    let red = Style::default().fg(Color::Red);
    let grey = Style::default().fg(Color::DarkGray);
    for a in &run.alerts {
        info.push(Line::styled(format!("⚑ {}: {}", a.name, a.message), red));
    }
    for n in &run.health_notes {
        info.push(Line::styled(format!("· {n}"), grey));
    }
    if let Some(e) = &s.error {
        info.push(Line::styled(format!("error: {}", e.message), red));
    }
    if let serde_json::Value::Object(cfg) = &s.config {
        for (k, v) in cfg {
            info.push(Line::from(Span::styled(format!("  {k} = {v}"), grey)));
        }
    }
    info
}

/// `v` with a k/M/G prefix (`unit` after it).
fn human(v: f64, unit: &str) -> String {
    let (div, p) = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(d, _)| v >= *d)
        .unwrap_or((1.0, ""));
    if p.is_empty() {
        format!("{v:.0} {unit}").trim_end().to_string()
    } else {
        format!("{:.1} {p}{unit}", v / div)
    }
}

/// The run's and the experiment's notes, and a warning about unreadable metric lines.
fn note_lines(run: &RunView, ex: Option<&ExperimentView>) -> Vec<Line<'static>> {
    let mut info = Vec::new();
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
    let beyond = run.series.names_beyond();
    if beyond > 0 {
        info.push(Line::styled(
            format!(
                "⚠ {beyond} more metric names past the first {} are not charted",
                crate::notebook::series::MAX_METRICS
            ),
            Style::default().fg(Color::Yellow),
        ));
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
    info
}

/// The last value of each metric, as many as fit.
fn last_values(f: &mut Frame<'_>, area: Rect, run: &RunView) {
    let mut last: Vec<Row> = run
        .series
        .names()
        .filter_map(|k| {
            run.series
                .last(k)
                .map(|v| Row::new(vec![k.clone(), format!("{v:.4}")]))
        })
        .collect();
    last.truncate(area.height.saturating_sub(2) as usize);
    f.render_widget(
        Table::new(
            last,
            [Constraint::Percentage(65), Constraint::Percentage(35)],
        )
        .block(block("last values", false)),
        area,
    );
}

/// The eval metrics of each eval run of the experiment.
fn eval_table(f: &mut Frame<'_>, area: Rect, ex: Option<&ExperimentView>) {
    const COLUMNS: &[&str] = crate::analysis::evals::METRICS;
    let rows: Vec<Row> = ex
        .into_iter()
        .flat_map(|ex| &ex.runs)
        .filter_map(|r| {
            let e = r.eval.as_ref()?;
            let cells = COLUMNS
                .iter()
                .map(|k| e.metric(k).map(|v| format!("{v:.3}")).unwrap_or_default());
            Some(Row::new(
                std::iter::once(r.stage().to_string()).chain(cells),
            ))
        })
        .collect();
    let header = Row::new(vec![
        "eval", "pass@1", "greedy", "pass@k", "maj@k", "format", "length",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let widths = std::iter::once(Constraint::Length(14)).chain([Constraint::Length(8); 6]);
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block("evals", false)),
        area,
    );
}
