//! The analytic side, on polars: whole metric histories of one or many runs as one DataFrame,
//! the `runs` table, and CSV/Parquet export. Not used on the notebook's per-frame path.

pub mod export;

use crate::runfs::{RunDir, RunStatus, metrics::parse_metric_line};
use anyhow::{Context, Result};
use polars::prelude::*;
use std::collections::BTreeMap;

/// The metric history of one run, with a `run` column. Reads `metrics.jsonl`, or
/// `metrics.csv` (a log written by another tool) when there is no JSONL file. Lines of the JSONL
/// that do not parse (a torn last line, garbage) are skipped, as the notebook does.
pub fn load_run(run: &RunDir) -> Result<DataFrame> {
    let id = run.id();
    let mut df = if run.metrics().is_file() {
        load_jsonl(&run.metrics())?
    } else if run.metrics_csv().is_file() {
        let path = run.metrics_csv();
        LazyCsvReader::new(PlRefPath::new(path.to_string_lossy().as_ref()))
            .with_has_header(true)
            .finish()
            .and_then(|lf| lf.collect())
            .map_err(|e| anyhow::anyhow!("{}: cannot read CSV: {e}", path.display()))?
    } else {
        anyhow::bail!("{}: no metrics.jsonl or metrics.csv", run.path.display());
    };
    let n = df.height();
    df.with_column(Column::new("run".into(), vec![id; n]))?;
    Ok(df)
}

/// Read a `metrics.jsonl` with polars' NDJSON scanner; when the file has lines polars refuses
/// (a torn write, text that is not JSON), fall back to the line-tolerant parser.
fn load_jsonl(path: &std::path::Path) -> Result<DataFrame> {
    let scanned = LazyJsonLineReader::new(PlRefPath::new(path.to_string_lossy().as_ref()))
        .with_infer_schema_length(None)
        .finish()
        .and_then(|lf| lf.collect());
    match scanned {
        Ok(df) if df.get_column_names().iter().any(|c| c.as_str() == "step") => Ok(df),
        _ => tolerant_jsonl(path),
    }
}

fn tolerant_jsonl(path: &std::path::Path) -> Result<DataFrame> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let rows: Vec<_> = text
        .lines()
        .filter_map(|l| parse_metric_line(l).ok())
        .collect();
    let mut names: Vec<String> = rows
        .iter()
        .flat_map(|r| r.values.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    names.sort();
    let mut cols = vec![
        Column::new(
            "step".into(),
            rows.iter().map(|r| r.step as i64).collect::<Vec<_>>(),
        ),
        Column::new(
            "time".into(),
            rows.iter().map(|r| r.time).collect::<Vec<_>>(),
        ),
    ];
    for name in names {
        let vals: Vec<Option<f64>> = rows
            .iter()
            .map(|r| r.values.get(&name).copied().flatten())
            .collect();
        cols.push(Column::new(name.as_str().into(), vals));
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Histories of several runs stacked into one frame; columns missing in a run are null there.
pub fn load_history(runs: &[RunDir]) -> Result<DataFrame> {
    let frames = runs.iter().map(load_run).collect::<Result<Vec<_>>>()?;
    stack_diagonal(frames)
}

fn stack_diagonal(frames: Vec<DataFrame>) -> Result<DataFrame> {
    let mut names: Vec<PlSmallStr> = Vec::new();
    for f in &frames {
        for c in f.get_column_names() {
            if !names.contains(c) {
                names.push(c.clone());
            }
        }
    }
    let mut out: Option<DataFrame> = None;
    for f in frames {
        let n = f.height();
        let cols = names
            .iter()
            .map(|name| match f.column(name) {
                Ok(c) if c.dtype().is_primitive_numeric() => c.cast(&DataType::Float64),
                Ok(c) => Ok(c.clone()),
                Err(_) => Ok(Column::full_null(name.clone(), n, &DataType::Float64)),
            })
            .collect::<PolarsResult<Vec<_>>>()?;
        let mut aligned = DataFrame::new(n, cols)?;
        if let Ok(step) = aligned.column("step").cloned() {
            aligned.with_column(step.cast(&DataType::Int64)?)?;
        }
        out = Some(match out {
            None => aligned,
            Some(mut acc) => {
                acc.vstack_mut(&aligned)?;
                acc
            }
        });
    }
    Ok(out.unwrap_or_default())
}

/// One row of `stageloop runs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub id: String,
    pub stage: String,
    pub kind: String,
    pub status: String,
    pub step: u64,
    pub total: u64,
    /// Last finite value of each metric.
    pub last: BTreeMap<String, f64>,
}

/// Summarise one run: its status and the last value of each metric.
pub fn run_row(run: &RunDir) -> RunRow {
    let status = RunStatus::load(&run.path).ok();
    let mut last = BTreeMap::new();
    let mut last_step = 0;
    if let Ok(text) = std::fs::read_to_string(run.metrics()) {
        for row in text.lines().filter_map(|l| parse_metric_line(l).ok()) {
            last_step = row.step;
            for (k, v) in row.values {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    last.insert(k, v);
                }
            }
        }
    }
    RunRow {
        id: run.id(),
        stage: status.as_ref().map(|s| s.stage.clone()).unwrap_or_default(),
        kind: status.as_ref().map(|s| s.kind.clone()).unwrap_or_default(),
        status: status
            .as_ref()
            .map(|s| s.effective_status().to_string())
            .unwrap_or_else(|| "unknown".into()),
        step: status
            .as_ref()
            .map(|s| s.progress.step)
            .unwrap_or(last_step),
        total: status.as_ref().map(|s| s.progress.total).unwrap_or(0),
        last,
    }
}

/// The `runs` table: id, stage, status, steps and a few headline metrics.
pub fn runs_table(rows: &[RunRow]) -> Result<DataFrame> {
    let headline = ["loss", "reward", "eval/pass@1"];
    let mut cols = vec![
        Column::new(
            "id".into(),
            rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "stage".into(),
            rows.iter().map(|r| r.stage.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "status".into(),
            rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "steps".into(),
            rows.iter()
                .map(|r| format!("{}/{}", r.step, r.total))
                .collect::<Vec<_>>(),
        ),
    ];
    for h in headline {
        if rows.iter().any(|r| r.last.contains_key(h)) {
            cols.push(Column::new(
                h.into(),
                rows.iter()
                    .map(|r| r.last.get(h).copied())
                    .collect::<Vec<_>>(),
            ));
        }
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Write a frame as CSV.
pub fn write_csv(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    CsvWriter::new(&mut f).finish(df)?;
    Ok(())
}

/// Write a frame as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    ParquetWriter::new(f).finish(df)?;
    Ok(())
}
