//! Export a run: its metric table as CSV or Parquet (polars) and its charts as SVG (plotters,
//! one file per metric, no fonts needed).

use super::load_run_counted;
use crate::runfs::RunDir;
use crate::runfs::metrics::BadLines;
use anyhow::{Context, Result, bail};
use plotters::prelude::*;
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
        let (x0, x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
            (a.0.min(p.0), a.1.max(p.0))
        });
        let (y0, y1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
            (a.0.min(p.1), a.1.max(p.1))
        });
        let pad = ((y1 - y0).abs() * 0.05).max(1e-9);
        // Metric names come from the run's log: one safe file-name component each.
        let file = out.join(format!("{}.svg", crate::untrusted::file_name(name)));
        {
            let root = SVGBackend::new(&file, (800, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(name, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .draw_series(LineSeries::new(pts, &BLUE))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        files.push(file);
    }
    Ok(files)
}
