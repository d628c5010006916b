//! Export a run: its metric table as CSV or Parquet (polars) and its charts as SVG (one file
//! per metric, drawn by [`super::svg`]).

use super::load_run_counted;
use super::svg::{Chart, Series, render};
use crate::runfs::RunDir;
use crate::runfs::metrics::BadLines;
use anyhow::{Context, Result, bail};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// What an export wrote, and the log lines it skipped.
#[derive(Debug)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub bad: BadLines,
    /// Metrics past [`MAX_CHARTS`] that got no SVG chart (their values are in the table).
    pub not_charted: usize,
}

/// SVG charts one export draws at most: a log with 100,000 metric names would otherwise write
/// 100,000 files.
pub const MAX_CHARTS: usize = 256;

impl Exported {
    /// One line about what was left out, if anything was.
    pub fn note(&self) -> Option<String> {
        let mut parts: Vec<String> = self.bad.summary().into_iter().collect();
        if self.not_charted > 0 {
            parts.push(format!(
                "{} metrics past the first {MAX_CHARTS} got no chart (their values are in the table)",
                self.not_charted
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Write the requested formats (`csv`, `parquet`, `svg`) for `run` into `out`.
pub fn export_run(run: &RunDir, out: &Path, formats: &[&str]) -> Result<Exported> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let (mut df, bad) = load_run_counted(run)?;
    let mut files = Vec::new();
    let mut not_charted = 0;
    for f in formats {
        match *f {
            "csv" => {
                let p = out.join("metrics.csv");
                super::write_csv(&mut csv_safe(&df)?, &p)?;
                files.push(p);
            }
            "parquet" => {
                let p = out.join("metrics.parquet");
                super::write_parquet(&mut df, &p)?;
                files.push(p);
            }
            "svg" => {
                let (written, left) = write_svgs(&df, out)?;
                files.extend(written);
                not_charted = left;
            }
            "png" => bail!("PNG export is not available in this build (use svg)"),
            other => bail!("unknown format `{other}` (csv, parquet, svg)"),
        }
    }
    Ok(Exported {
        files,
        bad,
        not_charted,
    })
}

/// `df` with headers and text cells a spreadsheet will not evaluate as formulas
/// ([`crate::untrusted::csv_cell`]): metric names and run ids come from the run folder.
fn csv_safe(df: &DataFrame) -> Result<DataFrame> {
    let cols = df
        .columns()
        .iter()
        .map(|c| {
            let name = crate::untrusted::csv_cell(c.name().as_str()).into_owned();
            let c = match c.str() {
                Ok(text) => {
                    let cells: Vec<Option<String>> = (0..text.len())
                        .map(|i| {
                            text.get(i)
                                .map(|v| crate::untrusted::csv_cell(v).into_owned())
                        })
                        .collect();
                    Column::new(name.as_str().into(), cells)
                }
                Err(_) => c.clone().with_name(name.as_str().into()),
            };
            Ok(c)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DataFrame::new_infer_height(cols)?)
}

fn f64s(col: &Column) -> Result<Vec<f64>> {
    let c = col.cast(&DataType::Float64)?;
    let ca = c.f64()?;
    Ok((0..ca.len())
        .map(|i| ca.get(i).unwrap_or(f64::NAN))
        .collect())
}

/// One chart per numeric metric, up to [`MAX_CHARTS`]; the files, and how many were left out.
fn write_svgs(df: &DataFrame, out: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let steps = f64s(df.column("step")?)?;
    let mut files = Vec::new();
    let mut used = std::collections::HashSet::new();
    let mut left = 0;
    for col in df.columns() {
        let name = col.name().as_str();
        if matches!(name, "step" | "time" | "run") || !col.dtype().is_primitive_numeric() {
            continue;
        }
        if files.len() >= MAX_CHARTS {
            left += 1;
            continue;
        }
        let ys = f64s(col)?;
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .zip(&ys)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (*x, *y))
            .collect();
        if pts.is_empty() {
            continue;
        }
        // Metric names come from the run's log: one safe file-name component each, made unique
        // (`a/b` and `a_b` map to the same name: the second gets `-2`).
        let base = crate::untrusted::file_name(name);
        let stem = (1..)
            .map(|i| {
                if i == 1 {
                    base.clone()
                } else {
                    format!("{base}-{i}")
                }
            })
            .find(|s| used.insert(s.clone()))
            .expect("some suffix is free");
        let file = out.join(format!("{stem}.svg"));
        let chart = Chart {
            title: name.to_string(),
            x_label: "step".into(),
            series: vec![Series {
                name: name.to_string(),
                points: pts,
                band: vec![],
            }],
            ..Chart::default()
        };
        crate::runfs::atomic::write_file(&file, render(&[chart], 800.0, 480.0).as_bytes())
            .with_context(|| format!("{}: cannot write", file.display()))?;
        files.push(file);
    }
    Ok((files, left))
}
