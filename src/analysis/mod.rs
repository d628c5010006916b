//! The analytic side, on polars: whole metric histories of one or many runs as one DataFrame,
//! the `runs` table, and CSV/Parquet export. Not used on the notebook's per-frame path.

pub mod compute;
pub mod evals;
pub mod export;
pub mod health;
pub mod summary;
pub mod svg;

use crate::runfs::metrics::{BadLines, read_columns};
use crate::runfs::{RunDir, RunStatus};
use anyhow::{Context, Result};
use polars::prelude::*;
use std::collections::BTreeMap;

/// The metric history of one run, with a `run` column. Reads `metrics.jsonl`, or
/// `metrics.csv` (a log written by another tool) when there is no JSONL file. Lines of the JSONL
/// that do not parse (a torn last line, garbage) are skipped, as the notebook does.
pub fn load_run(run: &RunDir) -> Result<DataFrame> {
    Ok(load_run_counted(run)?.0)
}

/// [`load_run`], also saying which JSONL lines were skipped.
pub fn load_run_counted(run: &RunDir) -> Result<(DataFrame, BadLines)> {
    let id = run.id();
    let foreign = crate::runfs::foreign::detect(&run.path);
    let (mut df, bad) = if let Some(f) = foreign {
        let (cols, bad, _) = crate::runfs::foreign::read_all(&run.path, f)
            .with_context(|| format!("{}: cannot read its {} run", run.path.display(), f.name()))?;
        (columns_frame(cols)?, bad)
    } else if run.metrics().is_file() {
        load_jsonl(&run.metrics())?
    } else if run.metrics_csv().is_file() {
        let path = run.metrics_csv();
        let df = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.clone()))
            .and_then(|r| r.finish())
            .map_err(|e| anyhow::anyhow!("{}: cannot read CSV: {e}", path.display()))?;
        (df, BadLines::default())
    } else if run.metrics().exists() {
        anyhow::bail!("{}: not a regular file", run.metrics().display());
    } else {
        anyhow::bail!("{}: no metrics.jsonl or metrics.csv", run.path.display());
    };
    let n = df.height();
    df.with_column(Column::new("run".into(), vec![id; n]))?;
    Ok((df, bad))
}

/// Read a `metrics.jsonl` line by line with the same parser as the notebook (not polars' NDJSON
/// reader, which panics on a step ≥ 2^63 and recurses without limit on nested arrays): bad lines
/// are skipped and counted, memory is the columns (f64) and one line.
fn load_jsonl(path: &std::path::Path) -> Result<(DataFrame, BadLines)> {
    let (cols, bad) =
        read_columns(path, 0).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok((columns_frame(cols)?, bad))
}

/// Columns as a frame: `step`, `time`, then one column per metric.
fn columns_frame(cols: crate::runfs::metrics::Columns) -> Result<DataFrame> {
    // Steps are at most 2^53 (parse_metric_line): exact as i64.
    let steps: Vec<i64> = cols.steps.iter().map(|&s| s as i64).collect();
    let mut columns = vec![
        Column::new("step".into(), steps),
        Column::new("time".into(), cols.times),
    ];
    for (name, vals) in cols.values {
        // `run`, `step` and `time` are the frame's own columns (load_run adds `run`): a metric
        // of that name keeps its values under another.
        let name = match name.as_str() {
            "run" | "step" | "time" => format!("{name} (metric)"),
            _ => name.to_string(),
        };
        columns.push(Column::new(name.as_str().into(), vals));
    }
    Ok(DataFrame::new_infer_height(columns)?)
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
    /// Names of the health alerts active for the run ([`health::alerts`]).
    pub alerts: Vec<String>,
}

/// How much of a metrics log `runs` reads, from its end, for the last values.
pub const LAST_VALUES_BUDGET: u64 = 8 << 20;

/// Summarise one run: its status, the last value of each metric and its health alerts, from the
/// end of its log (at most [`LAST_VALUES_BUDGET`] bytes, so a 1 GB log costs what an 8 MB one
/// does).
pub fn run_row(run: &RunDir) -> RunRow {
    let foreign = crate::runfs::foreign::detect(&run.path)
        .and_then(|f| crate::runfs::foreign::read_all(&run.path, f).ok());
    let is_foreign = foreign.is_some();
    let (cols, status) = match foreign {
        Some((cols, _, status)) => (cols, Some(status)),
        None => {
            let path = run.metrics();
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let (cols, _) =
                read_columns(&path, len.saturating_sub(LAST_VALUES_BUDGET)).unwrap_or_default();
            (cols, RunStatus::load(&run.path).ok())
        }
    };
    let last_step = cols.steps.last().copied().unwrap_or(0);
    let cols: BTreeMap<String, Vec<f64>> = cols
        .values
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect()))
        .collect();
    let last: BTreeMap<String, f64> = cols
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.iter().rev().copied().find(|x| x.is_finite())?)))
        .collect();
    let names: Vec<String> = cols.keys().cloned().collect();
    let alerts = health::alerts(&names, &|n| cols.get(n).cloned())
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    RunRow {
        id: run.id(),
        stage: status.as_ref().map(|s| s.stage.clone()).unwrap_or_default(),
        kind: status.as_ref().map(|s| s.kind.clone()).unwrap_or_default(),
        status: status
            .as_ref()
            // A foreign run's status is made from its files; it holds no lock.
            .map(|s| match is_foreign {
                true => s.status.to_string(),
                false => s.effective_status(&run.path).to_string(),
            })
            .unwrap_or_else(|| "unknown".into()),
        step: status
            .as_ref()
            .map(|s| s.progress.step)
            .unwrap_or(last_step),
        total: status.as_ref().map(|s| s.progress.total).unwrap_or(0),
        last,
        alerts,
    }
}

/// Write a frame as CSV.
pub fn write_csv(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    crate::runfs::atomic::write_with(path, |f| {
        CsvWriter::new(f).finish(df).map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// Write a frame as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    crate::runfs::atomic::write_with(path, |f| {
        ParquetWriter::new(f)
            .finish(df)
            .map(|_| ())
            .map_err(std::io::Error::other)
    })?;
    Ok(())
}
