//! Compare runs: the selected run and the marked ones side by side — only the settings that
//! differ between them (stage, seed, start checkpoint, the model's blocks and each config key), then every metric
//! they log at its last step and at its best (highest, or lowest for losses, KL, norms,
//! lengths and times). The charts view (1) overlays the same runs.

use super::{Ctx, block, run_color};
use crate::notebook::workspace::RunView;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};
use std::collections::BTreeSet;

/// Whether lower is better for a metric (by its name).
pub fn lower_is_better(name: &str) -> bool {
    [
        "loss",
        "kl",
        "grad_norm",
        "time",
        "length",
        "clipped",
        "zero_std",
        "perplexity",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// Each run's value of every setting that is not the same in all of them: `(key, values)`.
pub fn differing_settings(runs: &[&RunView]) -> Vec<(String, Vec<String>)> {
    let value = |r: &RunView, key: &str| -> String {
        let Some(s) = &r.status else {
            return "-".into();
        };
        match key {
            "stage" => s.stage.clone(),
            "seed" => s.seed.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            "init" => s
                .init
                .as_deref()
                .map(short_init)
                .unwrap_or_else(|| "-".into()),
            // The model's blocks and KV cache (training runs' run.json `model`).
            "model" => s.model.as_ref().map_or_else(
                || "-".into(),
                |m| {
                    let blocks = if m.blocks.is_empty() {
                        "dense".to_string()
                    } else {
                        m.blocks.join("; ")
                    };
                    format!("{blocks} · KV {} B/token", m.kv_bytes_per_token)
                },
            ),
            _ => s
                .config
                .get(key)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
        }
    };
    let mut keys: Vec<String> = vec!["stage".into(), "seed".into(), "init".into(), "model".into()];
    let config_keys: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.status.as_ref()?.config.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    keys.extend(config_keys.into_iter().filter(|k| k != "name"));
    keys.into_iter()
        .filter_map(|k| {
            let vals: Vec<String> = runs.iter().map(|r| value(r, &k)).collect();
            (vals.iter().any(|v| v != &vals[0])).then_some((k, vals))
        })
        .collect()
}

/// `…/<run-id>/checkpoints/step-000900` → `<run-id>@900`.
fn short_init(init: &str) -> String {
    let p = std::path::Path::new(init);
    let step = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
    let run = p
        .parent()
        .and_then(|c| c.parent())
        .and_then(|r| r.file_name())
        .and_then(|s| s.to_str());
    match (run, step.strip_prefix("step-")) {
        (Some(run), Some(n)) => format!("{run}@{}", n.trim_start_matches('0')),
        _ => init.to_string(),
    }
}

/// `last (best)` of a metric in a run.
fn last_and_best(r: &RunView, name: &str) -> String {
    let Some(col) = r.series.column(name) else {
        return "-".into();
    };
    let finite: Vec<f64> = col.into_iter().filter(|v| v.is_finite()).collect();
    let Some(last) = finite.last() else {
        return "-".into();
    };
    let best = if lower_is_better(name) {
        finite.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        finite.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    };
    format!("{} ({})", num(*last), num(best))
}

fn num(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

pub fn draw(f: &mut Frame<'_>, area: Rect, runs: &[&RunView], c: Ctx<'_>) {
    if runs.len() < 2 {
        f.render_widget(
            Paragraph::new(
                "mark runs to compare with space in the runs pane: the selected run and the marked ones are shown side by side here",
            )
            .block(block("compare", c.focused)),
            area,
        );
        return;
    }
    let diffs = differing_settings(runs);
    let head = |first: &str| {
        Row::new(
            std::iter::once(Span::raw(first.to_string()))
                .chain(runs.iter().map(|r| {
                    Span::styled(
                        r.id.clone(),
                        Style::default()
                            .fg(run_color(&r.id))
                            .add_modifier(Modifier::BOLD),
                    )
                }))
                .map(Line::from)
                .collect::<Vec<_>>(),
        )
    };
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(28))
        .chain(runs.iter().map(|_| Constraint::Min(14)))
        .collect();
    let settings_h = (diffs.len() as u16 + 3).clamp(4, area.height / 2);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(settings_h), Constraint::Min(3)]).areas(area);
    let rows: Vec<Row> = if diffs.is_empty() {
        vec![Row::new(vec!["(every setting is the same)".to_string()])]
    } else {
        diffs
            .into_iter()
            .map(|(k, vals)| Row::new(std::iter::once(k).chain(vals).collect::<Vec<_>>()))
            .collect()
    };
    f.render_widget(
        Table::new(rows, widths.clone())
            .header(head("setting"))
            .block(block("compare: settings that differ", c.focused)),
        top,
    );
    // Every metric any of them logged, those they share first.
    let all: BTreeSet<&String> = runs.iter().flat_map(|r| r.series.names()).collect();
    let shared = |n: &String| runs.iter().all(|r| r.series.names().any(|m| m == n));
    let mut names: Vec<&String> = all.iter().copied().filter(|n| shared(n)).collect();
    names.extend(all.iter().copied().filter(|n| !shared(n)));
    let rows: Vec<Row> = names
        .iter()
        .map(|n| {
            Row::new(
                std::iter::once((*n).clone())
                    .chain(runs.iter().map(|r| last_and_best(r, n)))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    f.render_widget(
        Table::new(rows, widths)
            .header(head("metric: last (best)"))
            .block(block("compare: metrics (1 overlays their charts)", false)),
        bottom,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_init_names_the_run_and_step() {
        assert_eq!(
            short_init("experiments/x/runs/20261130-010000-pre/checkpoints/step-000900"),
            "20261130-010000-pre@900"
        );
        assert_eq!(short_init("models/m.gguf"), "models/m.gguf");
        assert!(lower_is_better("loss") && lower_is_better("completions/mean_length"));
        assert!(!lower_is_better("rewards/accuracy/mean"));
    }
}
