//! A run's headline metrics over its whole history (last value, best value and its step), by
//! the names stageloop and TRL use or another framework's names for them
//! ([`super::health::resolve`]), plus every validation metric the run logs: what `report`
//! shows for a folder of runs that have no eval reports (other frameworks' runs).

use super::health::resolve;
use crate::runfs::metrics::{Columns, read_columns};
use crate::runfs::{RunDir, RunStatus, foreign};
use anyhow::{Context, Result};
use std::collections::BTreeMap;

/// The headline metrics, by stageloop's (TRL's) names, and whether higher is better.
pub const HEADLINE: [(&str, bool); 5] = [
    ("reward", true),
    ("loss", false),
    ("entropy", true),
    ("completions/mean_length", true),
    ("kl", false),
];

/// One metric over a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricSummary {
    /// The name in the run's log (an alias's when the run uses another framework's names).
    pub name: String,
    pub last: f64,
    pub best: f64,
    pub best_step: u64,
    /// Finite values logged.
    pub n: usize,
}

/// One run's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub id: String,
    /// The stage, or the framework for another's run (`trl`, `verl`...).
    pub stage: String,
    pub status: String,
    pub step: u64,
    /// Headline metrics by stageloop's name, then validation metrics by their own.
    pub metrics: BTreeMap<String, MetricSummary>,
}

/// Whether a metric name is a validation one (`eval_*` from a Trainer, `eval/*`, verl's
/// `val-core/*` and `val-aux/*`, `val/*`).
pub fn is_validation(name: &str) -> bool {
    ["eval_", "eval/", "val-core/", "val-aux/", "val/"]
        .iter()
        .any(|p| name.starts_with(p))
        && !name.ends_with("runtime")
        && !name.contains("per_second")
}

fn summarise_column(
    name: &str,
    steps: &[u64],
    v: &[Option<f64>],
    higher: bool,
) -> Option<MetricSummary> {
    let pts: Vec<(u64, f64)> = steps
        .iter()
        .zip(v)
        .filter_map(|(s, x)| Some((*s, x.filter(|x| x.is_finite())?)))
        .collect();
    let last = pts.last()?.1;
    let better = |a: f64, b: f64| if higher { a > b } else { a < b };
    let (best_step, best) = pts
        .iter()
        .copied()
        .reduce(|b, p| if better(p.1, b.1) { p } else { b })?;
    Some(MetricSummary {
        name: name.to_string(),
        last,
        best,
        best_step,
        n: pts.len(),
    })
}

/// The summary of the columns of a run.
pub fn of_columns(cols: &Columns) -> BTreeMap<String, MetricSummary> {
    let mut out = BTreeMap::new();
    for (canonical, higher) in HEADLINE {
        let found = resolve(canonical, |n| cols.values.contains_key(n));
        if let Some(n) = found.as_deref()
            && let Some(s) = summarise_column(n, &cols.steps, &cols.values[n], higher)
        {
            out.insert(canonical.to_string(), s);
        }
    }
    for (n, v) in &cols.values {
        if is_validation(n) {
            let higher = !n.contains("loss");
            if let Some(s) = summarise_column(n, &cols.steps, v, higher) {
                out.insert(n.clone(), s);
            }
        }
    }
    out
}

/// A run's whole log as columns, its status (made from its files for another framework's
/// run), and whether it is another framework's.
pub fn run_columns(run: &RunDir) -> Result<(Columns, Option<RunStatus>, bool)> {
    Ok(match foreign::detect(&run.path) {
        Some(f) => {
            let (c, _, s) = foreign::read_all(&run.path, f)
                .with_context(|| format!("{}: cannot read", run.path.display()))?;
            (c, Some(s), true)
        }
        None => {
            let (c, _) = read_columns(&run.metrics(), 0)
                .with_context(|| format!("{}: cannot read", run.metrics().display()))?;
            (c, RunStatus::load(&run.path).ok(), false)
        }
    })
}

/// Summarise one run of any format from its whole log.
pub fn summarise(run: &RunDir) -> Result<RunSummary> {
    let (cols, status, is_foreign) = run_columns(run)?;
    let status_text = match &status {
        Some(s) if is_foreign => s.status.to_string(),
        Some(s) => s.effective_status(&run.path).to_string(),
        None => "unknown".into(),
    };
    Ok(RunSummary {
        id: run.id(),
        stage: status.as_ref().map(|s| s.stage.clone()).unwrap_or_default(),
        status: status_text,
        step: cols.steps.last().copied().unwrap_or(0),
        metrics: of_columns(&cols),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfs::metrics::parse_metric_line;

    #[test]
    fn headline_metrics_by_alias_and_validation_metrics_by_name() {
        let mut c = Columns::default();
        for l in [
            r#"{"step": 1, "critic/score/mean": 0.2, "actor/entropy": 1.0, "val-core/gsm8k/reward/mean@4": 0.3}"#,
            r#"{"step": 2, "critic/score/mean": 0.6, "actor/entropy": 0.8}"#,
            r#"{"step": 3, "critic/score/mean": 0.5, "actor/entropy": 0.7, "val-core/gsm8k/reward/mean@4": 0.4, "eval_runtime": 9}"#,
        ] {
            c.push(parse_metric_line(l).unwrap());
        }
        let s = of_columns(&c);
        let r = &s["reward"];
        assert_eq!(
            (r.name.as_str(), r.last, r.best, r.best_step, r.n),
            ("critic/score/mean", 0.5, 0.6, 2, 3)
        );
        assert_eq!(s["entropy"].best, 1.0);
        assert_eq!(s["val-core/gsm8k/reward/mean@4"].last, 0.4);
        assert!(!s.contains_key("eval_runtime"));
        assert!(!s.contains_key("loss"));
    }
}
