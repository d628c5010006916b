//! `stageloop runs EXP`: one row per run of an experiment.

use crate::untrusted::display;
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
    // Ids, stages and kinds come from run folders: shown through `untrusted::display`.
    let shown: Vec<_> = rows
        .into_iter()
        .map(|mut r| {
            for f in [&mut r.id, &mut r.stage, &mut r.kind, &mut r.status] {
                *f = display(f).into_owned();
            }
            r
        })
        .collect();
    let df = analysis::runs_table(&shown)?;
    println!("{df}");
    Ok(())
}
