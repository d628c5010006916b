//! `sft`: loss on completion tokens only (prompt masked), on `examples` clean worked examples of
//! the task (cycled), or on a `dataset` file of `{prompt, completion}` rows (JSONL or Parquet).

use super::common::Setup;
use super::context::{Outcome, StageCtx};
use super::supervised;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Read `{prompt, completion}` rows from a JSONL or Parquet file. Errors name file and line.
pub fn read_dataset(path: &Path) -> Result<Vec<(String, String)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "parquet" {
        use polars::prelude::*;
        let f = crate::untrusted::open_regular(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let df = ParquetReader::new(f)
            .finish()
            .map_err(|e| anyhow::anyhow!("{}: not a readable Parquet file: {e}", path.display()))?;
        let col = |name: &str| -> Result<Vec<String>> {
            let c = df
                .column(name)
                .map_err(|_| anyhow::anyhow!("{}: no `{name}` column", path.display()))?;
            let s = c
                .str()
                .map_err(|_| anyhow::anyhow!("{}: `{name}` is not text", path.display()))?;
            Ok((0..s.len())
                .map(|i| s.get(i).unwrap_or("").to_string())
                .collect())
        };
        let rows: Vec<_> = col("prompt")?.into_iter().zip(col("completion")?).collect();
        if rows.is_empty() {
            bail!("{}: no rows", path.display());
        }
        return Ok(rows);
    }
    let text = crate::untrusted::read_small(path, 4 << 30)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not valid JSON: {e}", path.display(), i + 1))?;
        let get = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    anyhow::anyhow!("{}:{}: missing text field `{k}`", path.display(), i + 1)
                })
        };
        rows.push((get("prompt")?, get("completion")?));
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

pub fn run(ctx: &mut StageCtx<'_>) -> Result<Outcome> {
    let setup = Setup::new(ctx.exp)?;
    let rows = match &ctx.cfg.dataset {
        Some(d) => read_dataset(&ctx.exp.dir.join(d))?,
        None => (0..ctx.cfg.examples as u64)
            .map(|i| {
                let p = setup.task.train_problem(i);
                let c = setup.task.completion(&p);
                (p.prompt, c)
            })
            .collect(),
    };
    let source = |i: u64| Ok(rows[(i % rows.len() as u64) as usize].clone());
    supervised::train(ctx, &setup, "sft", false, 0.0, &source)
}
