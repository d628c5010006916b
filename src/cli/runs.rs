//! `stageloop runs EXP`: one row per run of an experiment, of a folder of other programs' runs
//! (stageloop's, TRL's, verl's, prime-rl's, TensorBoard's: [`crate::runfs::foreign`]), or of
//! one such run folder.

use crate::untrusted::display;
use crate::{analysis, runfs, spec};
use std::path::Path;

pub fn run(exp: &Path, json: bool) -> anyhow::Result<()> {
    let (runs_dir, runs) = listed(exp)?;
    let rows: Vec<_> = runs.iter().map(analysis::run_row).collect();
    if json {
        outln!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no runs yet in {}", runs_dir.display());
        return Ok(());
    }
    out!("{}", table(&rows));
    Ok(())
}

/// The runs `PATH` names, and the folder they are in: an experiment's; a folder with `runs/`
/// and no spec (another program's runs), or whose subfolders are runs of any format; or one
/// run folder alone (a TRL output folder, a verl log's folder...).
pub fn listed(exp: &Path) -> anyhow::Result<(std::path::PathBuf, Vec<runfs::RunDir>)> {
    if exp.is_dir() && !exp.join("experiment.toml").exists() {
        let run = runfs::RunDir::new(exp);
        if !exp.join("runs").is_dir() && run.is_run() {
            return Ok((exp.to_path_buf(), vec![run]));
        }
        if let Some(dir) = runfs::runs_dir_of(exp) {
            return Ok((dir.clone(), runfs::list_runs(&dir)));
        }
    }
    let dir = spec::load(exp)?.runs_dir();
    Ok((dir.clone(), runfs::list_runs(&dir)))
}

/// Headline metrics shown as columns when any run has them.
const HEADLINE: [&str; 3] = ["loss", "reward", "eval/pass@1"];

/// Every run, one line each (no row limit: 500 runs are 500 lines, like `ls`), with columns as
/// wide as their widest cell. Ids, stages and statuses come from run folders: shown through
/// `untrusted::display`.
pub fn table(rows: &[analysis::RunRow]) -> String {
    let heads: Vec<&str> = HEADLINE
        .iter()
        .copied()
        .filter(|h| rows.iter().any(|r| r.last.contains_key(*h)))
        .collect();
    let any_alerts = rows.iter().any(|r| !r.alerts.is_empty());
    let mut header: Vec<String> = ["id", "stage", "status", "steps"]
        .iter()
        .chain(&heads)
        .map(|s| s.to_string())
        .collect();
    if any_alerts {
        header.push("alerts".into());
    }
    let mut cells: Vec<Vec<String>> = vec![header];
    for r in rows {
        let mut line = vec![
            display(&r.id).into_owned(),
            display(&r.stage).into_owned(),
            display(&r.status).into_owned(),
            format!("{}/{}", r.step, r.total),
        ];
        for h in &heads {
            line.push(
                r.last
                    .get(*h)
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default(),
            );
        }
        cells.push(line);
    }
    let width = |c: usize| {
        cells
            .iter()
            .map(|l| l[c].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cells[0].len()).map(width).collect();
    let mut out = String::new();
    for line in &cells {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i >= 3 && !(any_alerts && i + 1 == line.len()) {
                text.push_str(&format!("{cell:>w$}  ", w = widths[i]));
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} run(s)\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_is_listed_with_its_headline_metrics() {
        let rows: Vec<analysis::RunRow> = (0..500)
            .map(|i| analysis::RunRow {
                id: format!("20261130-000000-s{i}"),
                stage: format!("s{i}"),
                kind: "pretrain".into(),
                status: "done".into(),
                step: i,
                total: 500,
                last: [("loss".to_string(), 1.0 / (i + 1) as f64)].into(),
                alerts: vec![],
            })
            .collect();
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 502, "header, 500 runs, count");
        assert!(lines[0].starts_with("id") && lines[0].ends_with("loss"));
        assert!(lines[500].contains("s499") && lines[500].contains("499/500"));
        assert_eq!(lines[501], "500 run(s)");
        assert!(!lines[0].contains("reward"), "absent metrics get no column");
    }
}
