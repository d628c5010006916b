//! `stageloop` / `stageloop tui [DIR]`: open the notebook.

use std::path::PathBuf;

pub fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("experiments"));
    crate::notebook::run(&dir)
}
