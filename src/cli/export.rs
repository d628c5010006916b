//! `stageloop export RUN`: a run's charts (SVG) and metric table (CSV or Parquet).

use crate::analysis::export::export_run;
use crate::runfs::RunDir;
use std::path::{Path, PathBuf};

pub fn run(run: &Path, formats: &[String], out: Option<PathBuf>) -> anyhow::Result<()> {
    let rd = RunDir::new(run);
    if !rd.is_run() {
        anyhow::bail!(
            "{}: not a run folder (no run.json or metrics log)",
            run.display()
        );
    }
    let out = out.unwrap_or_else(|| run.join("export"));
    let formats: Vec<&str> = formats.iter().map(String::as_str).collect();
    let done = export_run(&rd, &out, &formats)?;
    for f in &done.files {
        println!("{}", f.display());
    }
    if let Some(s) = done.bad.summary() {
        eprintln!("{}", crate::untrusted::display(&s));
    }
    Ok(())
}
