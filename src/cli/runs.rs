//! `stageloop runs EXP`: one row per run of an experiment.

use crate::{analysis, runfs, spec};
use std::path::Path;

pub fn run(exp: &Path, json: bool) -> anyhow::Result<()> {
    let e = spec::load(exp)?;
    let rows: Vec<_> = runfs::list_runs(&e.runs_dir())
        .iter()
        .map(analysis::run_row)
        .collect();
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no runs yet in {}", e.runs_dir().display());
        return Ok(());
    }
    let df = analysis::runs_table(&rows)?;
    println!("{df}");
    Ok(())
}
