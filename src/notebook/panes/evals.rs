//! The experiment's evals: the eval table over seeds (mean ± standard deviation), the pass@k
//! curves on a log-k axis (each eval stage's mean, its min and max over seeds dim beside it; a
//! dashed line where the base model's curve crosses a later one: capability vs sharpening), and
//! pass@1 against the compute spent along each evaluated checkpoint's lineage.

use super::{Ctx, PALETTE as COLORS, block};
use crate::analysis::evals::{self, StageSummary};
use crate::notebook::workspace::ExperimentView;
use crate::runfs::RunDir;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph, Row, Table};

/// The experiment's eval stages over seeds, from what the workspace has read.
pub fn summaries(ex: &ExperimentView) -> Vec<StageSummary> {
    let Ok(spec) = &ex.spec else {
        return vec![];
    };
    let runs: Vec<_> = ex
        .runs
        .iter()
        .filter_map(|r| {
            Some((
                RunDir::new(r.dir.clone()),
                r.status.as_ref()?,
                r.eval.as_ref()?,
                r.lineage.clone().unwrap_or_default(),
            ))
        })
        .collect();
    evals::summarise(&evals::rows_of(spec, &runs))
}

fn cell(s: Option<&evals::Spread>, seeds: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if seeds > 1 => format!("{:.3}±{:.3}", s.mean, s.std),
        Some(s) => format!("{:.3}", s.mean),
    }
}

pub fn draw(f: &mut Frame<'_>, area: Rect, ex: Option<&ExperimentView>, c: Ctx<'_>) {
    let sums = ex.map(summaries).unwrap_or_default();
    if sums.is_empty() {
        f.render_widget(
            Paragraph::new(
                "no finished eval runs in this experiment yet: run an eval stage (r in the pipeline pane)",
            )
            .block(block("evals", c.focused)),
            area,
        );
        return;
    }
    let table_h = (sums.len() as u16 + 4).min(area.height / 2);
    let [table, charts] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(6)]).areas(area);
    let rows: Vec<Row> = sums
        .iter()
        .map(|s| {
            let n = s.seeds.len();
            let k = s.pass_at.last().map_or(1, |p| p.0);
            Row::new(vec![
                s.stage.clone(),
                format!("{} ({})", s.evaluated, s.evaluated_kind),
                n.to_string(),
                cell(s.metrics.get("pass@1"), n),
                cell(s.metrics.get("greedy"), n),
                format!("{} @{k}", cell(s.metrics.get("pass@k"), n)),
                cell(s.metrics.get("format_rate"), n),
                if s.compute.mean > 0.0 {
                    format!("{:.2e}", s.compute.mean)
                } else {
                    "-".into()
                },
            ])
        })
        .collect();
    let header = Row::new(vec![
        "eval",
        "evaluated",
        "seeds",
        "pass@1",
        "greedy",
        "pass@k",
        "format",
        "FLOPs",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let title = if sums.iter().any(|s| s.seeds.len() > 1) {
        "evals (mean ± std over seeds)"
    } else {
        "evals"
    };
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(20),
                Constraint::Length(5),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Length(16),
                Constraint::Length(12),
                Constraint::Length(9),
            ],
        )
        .header(header)
        .block(block(title, c.focused)),
        table,
    );
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(charts);
    pass_at_k(f, left, &sums);
    compute(f, right, &sums);
}

/// The pass@k curves, x = log2 k.
fn pass_at_k(f: &mut Frame<'_>, area: Rect, sums: &[StageSummary]) {
    let mut lines: Vec<Curve> = Vec::new();
    for (i, s) in sums.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = |k: usize| (k as f64).log2();
        if s.seeds.len() > 1 {
            for pick in [|v: &evals::Spread| v.min, |v: &evals::Spread| v.max] {
                lines.push(Curve {
                    name: String::new(),
                    color,
                    dim: true,
                    points: s.pass_at.iter().map(|(k, v)| (x(*k), pick(v))).collect(),
                });
            }
        }
        lines.push(Curve {
            name: s.stage.clone(),
            color,
            dim: false,
            points: s.pass_at.iter().map(|(k, v)| (x(*k), v.mean)).collect(),
        });
    }
    let means = |s: &StageSummary| -> Vec<(usize, f64)> {
        s.pass_at.iter().map(|(k, v)| (*k, v.mean)).collect()
    };
    let mut note = Vec::new();
    if let Some(base) = sums.first() {
        for s in &sums[1..] {
            if let Some(k) = evals::crossing(&means(base), &means(s)) {
                lines.push(Curve {
                    name: String::new(),
                    color: Color::DarkGray,
                    dim: false,
                    points: (0..=10).map(|i| (k.log2(), i as f64 / 10.0)).collect(),
                });
                note.push(format!("{}={} at k≈{k:.1}", base.stage, s.stage));
            }
        }
    }
    let kmax = sums
        .iter()
        .flat_map(|s| s.pass_at.last().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(2);
    let top = (kmax as f64).log2();
    let labels: Vec<String> = (0..=top.ceil() as u32)
        .step_by(((top / 4.0).ceil() as usize).max(1))
        .map(|e| (1u64 << e).to_string())
        .collect();
    let title = if note.is_empty() {
        "pass@k (log k)".to_string()
    } else {
        format!("pass@k (log k) · crosses: {}", note.join(", "))
    };
    draw_chart(f, area, &title, &lines, [0.0, top], labels, "k");
}

/// pass@1 against the lineage's compute, x = log10 FLOPs, in pipeline order.
fn compute(f: &mut Frame<'_>, area: Rect, sums: &[StageSummary]) {
    let pts: Vec<(f64, f64)> = sums
        .iter()
        .filter(|s| s.compute.mean > 0.0)
        .filter_map(|s| Some((s.compute.mean.log10(), s.metrics.get("pass@1")?.mean)))
        .collect();
    if pts.is_empty() {
        f.render_widget(
            Paragraph::new(vec![Line::from(
                "no compute recorded (runs of an older build)",
            )])
            .block(block("pass@1 vs compute", false)),
            area,
        );
        return;
    }
    let (lo, hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.0), a.1.max(p.0))
    });
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let labels = (lo as i32..=hi as i32).map(|e| format!("1e{e}")).collect();
    let lines = vec![Curve {
        name: "pipeline".into(),
        color: Color::Cyan,
        dim: false,
        points: pts,
    }];
    draw_chart(
        f,
        area,
        "pass@1 vs compute (FLOPs, log)",
        &lines,
        [lo, hi],
        labels,
        "FLOPs",
    );
}

/// One line of a chart: unnamed lines stay out of the legend; dim ones are seed extremes.
struct Curve {
    name: String,
    color: Color,
    dim: bool,
    points: Vec<(f64, f64)>,
}

fn draw_chart(
    f: &mut Frame<'_>,
    area: Rect,
    title: &str,
    lines: &[Curve],
    x: [f64; 2],
    x_labels: Vec<String>,
    x_title: &str,
) {
    let datasets: Vec<Dataset> = lines
        .iter()
        .map(
            |Curve {
                 name,
                 color,
                 dim,
                 points: pts,
             }| {
                let style = if *dim {
                    Style::default().fg(*color).add_modifier(Modifier::DIM)
                } else {
                    Style::default().fg(*color)
                };
                let d = Dataset::default()
                    .marker(Marker::Braille)
                    .graph_type(if pts.len() < 2 {
                        GraphType::Scatter
                    } else {
                        GraphType::Line
                    })
                    .style(style)
                    .data(pts);
                if name.is_empty() {
                    d
                } else {
                    d.name(name.clone())
                }
            },
        )
        .collect();
    f.render_widget(
        Chart::new(datasets)
            .block(block(title, false))
            .x_axis(
                Axis::default()
                    .title(x_title.to_string())
                    .bounds(x)
                    .labels(x_labels),
            )
            .y_axis(
                Axis::default()
                    .bounds([0.0, 1.0])
                    .labels(vec!["0", "0.5", "1"]),
            ),
        area,
    );
}
