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
}

/// Write the requested formats (`csv`, `parquet`, `svg`) for `run` into `out`.
pub fn export_run(run: &RunDir, out: &Path, formats: &[&str]) -> Result<Exported> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let (mut df, bad) = load_run_counted(run)?;
    let mut files = Vec::new();
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
            "svg" => files.extend(write_svgs(&df, out)?),
            "png" => bail!("PNG export is not available in this build (use svg)"),
            other => bail!("unknown format `{other}` (csv, parquet, svg)"),
        }
    }
    Ok(Exported { files, bad })
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

fn write_svgs(df: &DataFrame, out: &Path) -> Result<Vec<PathBuf>> {
    let steps = f64s(df.column("step")?)?;
    let mut files = Vec::new();
    for col in df.columns() {
        let name = col.name().as_str();
        if matches!(name, "step" | "time" | "run") || !col.dtype().is_primitive_numeric() {
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
        // Metric names come from the run's log: one safe file-name component each.
        let file = out.join(format!("{}.svg", crate::untrusted::file_name(name)));
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
        let tmp = file.with_extension("svg.tmp");
        std::fs::write(&tmp, render(&[chart], 800.0, 480.0))
            .and_then(|()| std::fs::rename(&tmp, &file))
            .with_context(|| format!("{}: cannot write", file.display()))?;
        files.push(file);
    }
    Ok(files)
}
