//! `stageloop report EXP`: the eval table of an experiment, one line per eval stage in pipeline
//! order (mean ± standard deviation over seeds when several ran). `--format json`: one object
//! per finished eval run (latest per stage and seed) with its pass@k curve and the compute along
//! its lineage; `md`: the tables for a write-up; `svg`: the pass@k and compute charts.
//!
//! On a folder of runs without an `experiment.toml` (other frameworks' runs, which have no eval
//! reports): each run's headline and validation metrics, last and best
//! ([`crate::analysis::summary`]); `svg` charts the reward and the loss of every run.

use crate::analysis::evals::{self, EvalRow, Spread, StageSummary};
use crate::analysis::svg::{self, Chart, Series};
use crate::spec;
use crate::untrusted::display;
use serde_json::{Value, json};
use std::path::Path;

/// What `report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Md,
    Svg,
}

/// The JSON object of one row.
pub fn row_json(r: &EvalRow) -> Value {
    let e = &r.report;
    json!({
        "stage": r.stage, "evaluated": r.evaluated, "evaluated_kind": r.evaluated_kind,
        "run": r.run.id(), "seed": r.seed,
        "pass@1": e.pass_at_1, "greedy": e.greedy, "pass@k": e.pass_at_k, "k": e.k,
        "maj@k": e.maj_at_k, "format_rate": e.format_rate, "mean_length": e.mean_length,
        "pass_at": e.pass_at,
        "compute": r.compute.flops, "compute_stages": r.compute.stages,
        "compute_partial": r.compute.partial, "eval_flops": r.eval_flops,
    })
}

pub fn run(exp: &Path, format: Format) -> anyhow::Result<()> {
    if exp.is_dir() && !exp.join("experiment.toml").exists() {
        return runs_report(exp, format);
    }
    let e = spec::load(exp)?;
    let (rows, problems) = evals::eval_rows(&e);
    let out = match format {
        Format::Json => serde_json::to_string(&rows.iter().map(row_json).collect::<Vec<_>>())?,
        Format::Text if rows.is_empty() => {
            format!("no finished eval runs in {}", e.runs_dir().display())
        }
        Format::Text => text(&evals::summarise(&rows)),
        Format::Md => markdown(&e, &evals::summarise(&rows)),
        Format::Svg => charts(&evals::summarise(&rows)),
    };
    outln!("{}", out.trim_end());
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("{}", display(p));
    }
    anyhow::bail!(
        "{} eval report(s) could not be read (the rest are above)",
        problems.len()
    )
}

/// `0.745` for one seed, `0.745±0.019` (standard deviation) for several.
fn cell(s: Option<&Spread>, seeds: usize, decimals: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if seeds > 1 => format!("{:.*}±{:.*}", decimals, s.mean, decimals, s.std),
        Some(s) => format!("{:.*}", decimals, s.mean),
    }
}

/// FLOPs in engineering notation (`3.2e15`).
fn flops(x: f64) -> String {
    if x > 0.0 {
        format!("{x:.2e}")
    } else {
        "-".into()
    }
}

fn evaluated(s: &StageSummary) -> String {
    format!("{} ({})", display(&s.evaluated), display(&s.evaluated_kind))
}

/// Names come from run.json files: printed through `untrusted::display`.
fn text(sums: &[StageSummary]) -> String {
    let cols = ["pass@1", "greedy", "pass@k", "maj@k", "format_rate"];
    let header = ["pass@1", "greedy", "pass@k", "maj@k", "format"];
    let rows: Vec<Vec<String>> = sums
        .iter()
        .map(|s| {
            let n = s.seeds.len();
            let mut r = vec![display(&s.stage).into_owned(), evaluated(s), n.to_string()];
            r.extend(cols.iter().map(|c| cell(s.metrics.get(c), n, 3)));
            r.push(cell(s.metrics.get("mean_length"), n, 1));
            r.push(flops(s.compute.mean));
            r
        })
        .collect();
    let mut head = vec!["eval stage", "evaluated", "seeds"];
    head.extend(header);
    head.extend(["length", "compute"]);
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .fold(head[i].len(), usize::max)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 2 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(head.clone()) + "\n";
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
        out.push('\n');
    }
    if sums.iter().any(|s| s.seeds.len() > 1) {
        out += "(±: standard deviation over seeds)\n";
    }
    out
}

/// Markdown text from a run folder: no table breaks, no HTML, no controls.
fn md(s: &str) -> String {
    display(s)
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn markdown(e: &spec::Experiment, sums: &[StageSummary]) -> String {
    let mut out = format!("## {}: evaluation\n\n", md(&e.name));
    if sums.is_empty() {
        return out + "No finished eval runs.\n";
    }
    let many = sums.iter().any(|s| s.seeds.len() > 1);
    out += "| eval stage | evaluated | seeds | pass@1 | greedy | pass@k (k) | maj@k | format | compute (FLOPs) |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    for s in sums {
        let n = s.seeds.len();
        let k = s.pass_at.last().map(|p| p.0).unwrap_or(1);
        out += &format!(
            "| {} | {} ({}) | {} | {} | {} | {} ({k}) | {} | {} | {} |\n",
            md(&s.stage),
            md(&s.evaluated),
            md(&s.evaluated_kind),
            n,
            cell(s.metrics.get("pass@1"), n, 3),
            cell(s.metrics.get("greedy"), n, 3),
            cell(s.metrics.get("pass@k"), n, 3),
            cell(s.metrics.get("maj@k"), n, 3),
            cell(s.metrics.get("format_rate"), n, 3),
            flops(s.compute.mean),
        );
    }
    if many {
        out += "\n± is the standard deviation over seeds.\n";
    }
    let mut ks: Vec<usize> = sums
        .iter()
        .flat_map(|s| s.pass_at.iter().map(|p| p.0))
        .collect();
    ks.sort_unstable();
    ks.dedup();
    out += "\n### pass@k\n\n| eval stage |";
    for k in &ks {
        out += &format!(" {k} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(ks.len());
    out.push('\n');
    for s in sums {
        out += &format!("| {} |", md(&s.stage));
        for k in &ks {
            let p = s.pass_at.iter().find(|p| p.0 == *k).map(|p| &p.1);
            out += &format!(" {} |", cell(p, s.seeds.len(), 3));
        }
        out.push('\n');
    }
    if let Some(line) = crossing_note(sums) {
        out += &format!("\n{}\n", md(&line));
    }
    out += "\nCompute counts every matrix product and attention's query-key work of training \
            (3× a forward pass, 2× with LoRA) and sampling (a forward pass over prompt and \
            completion) along the evaluated checkpoint's lineage, from a fresh model on; a \
            pretrained model's own training is not counted.\n";
    out
}

/// Where the first eval stage's curve (the base model) crosses each later one, in words.
fn crossing_note(sums: &[StageSummary]) -> Option<String> {
    let means = |s: &StageSummary| -> Vec<(usize, f64)> {
        s.pass_at.iter().map(|(k, v)| (*k, v.mean)).collect()
    };
    let base = sums.first()?;
    let notes: Vec<String> = sums[1..]
        .iter()
        .map(|s| match evals::crossing(&means(base), &means(s)) {
            Some(k) => format!("{} crosses {} at k ≈ {k:.1}", base.stage, s.stage),
            None => format!(
                "{} and {} do not cross up to k = {}",
                base.stage,
                s.stage,
                s.pass_at.last().map_or(1, |p| p.0)
            ),
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join("; ") + ".")
}

fn charts(sums: &[StageSummary]) -> String {
    let passk = Chart {
        title: "pass@k by eval stage (mean, min–max over seeds)".into(),
        x_label: "k".into(),
        y_label: "pass@k".into(),
        log_x: true,
        series: sums
            .iter()
            .map(|s| Series {
                name: format!("{} ({})", s.stage, s.evaluated),
                points: s.pass_at.iter().map(|(k, v)| (*k as f64, v.mean)).collect(),
                band: if s.seeds.len() > 1 {
                    s.pass_at
                        .iter()
                        .map(|(k, v)| (*k as f64, v.min, v.max))
                        .collect()
                } else {
                    vec![]
                },
            })
            .collect(),
        marks: sums
            .first()
            .into_iter()
            .flat_map(|base| {
                let m = |s: &StageSummary| {
                    s.pass_at
                        .iter()
                        .map(|(k, v)| (*k, v.mean))
                        .collect::<Vec<_>>()
                };
                sums[1..].iter().filter_map(move |s| {
                    evals::crossing(&m(base), &m(s))
                        .map(|k| (k, format!("{} = {}", base.stage, s.stage)))
                })
            })
            .collect(),
    };
    let pts: Vec<&StageSummary> = sums.iter().filter(|s| s.compute.mean > 0.0).collect();
    let compute = Chart {
        title: "pass@1 against compute along the lineage".into(),
        x_label: "FLOPs".into(),
        y_label: "pass@1".into(),
        log_x: true,
        series: pts
            .iter()
            .filter_map(|s| {
                let p = s.metrics.get("pass@1")?;
                Some(Series {
                    name: s.stage.clone(),
                    points: vec![(s.compute.mean, p.mean)],
                    band: vec![],
                })
            })
            .chain(std::iter::once(Series {
                name: "pipeline order".into(),
                points: pts
                    .iter()
                    .filter_map(|s| Some((s.compute.mean, s.metrics.get("pass@1")?.mean)))
                    .collect(),
                band: vec![],
            }))
            .collect(),
        marks: vec![],
    };
    svg::render(&[passk, compute], 560.0, 380.0)
}

/// `report` on a folder of runs (or one run) that is not an experiment.
fn runs_report(dir: &Path, format: Format) -> anyhow::Result<()> {
    use crate::analysis::summary;
    let (runs_dir, runs) = super::runs::listed(dir)?;
    if runs.is_empty() {
        outln!("no runs in {}", runs_dir.display());
        return Ok(());
    }
    let sums = runs
        .iter()
        .map(summary::summarise)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = match format {
        Format::Json => serde_json::to_string(&sums)?,
        Format::Text | Format::Md => summary_table(&sums, format == Format::Md),
        Format::Svg => {
            let mut charts = Vec::new();
            for (metric, title) in [("reward", "reward"), ("loss", "loss")] {
                let mut series = Vec::new();
                for r in &runs {
                    let (cols, ..) = summary::run_columns(r)?;
                    let name = summary::of_columns(&cols)
                        .get(metric)
                        .map(|m| m.name.clone());
                    let Some(name) = name else { continue };
                    let points = cols
                        .steps
                        .iter()
                        .zip(&cols.values[&name])
                        .filter_map(|(s, v)| Some((*s as f64, v.filter(|v| v.is_finite())?)))
                        .collect();
                    series.push(Series {
                        name: display(&r.id()).into_owned(),
                        points,
                        band: Vec::new(),
                    });
                }
                if !series.is_empty() {
                    charts.push(Chart {
                        title: title.into(),
                        x_label: "step".into(),
                        y_label: title.into(),
                        series,
                        ..Chart::default()
                    });
                }
            }
            svg::render(&charts, 480.0, 320.0)
        }
    };
    outln!("{}", out.trim_end());
    Ok(())
}

/// One line per run: its headline metrics as `last (best)`, then its validation metrics' last
/// values; as aligned text or a Markdown table.
fn summary_table(sums: &[crate::analysis::summary::RunSummary], md: bool) -> String {
    let mut names: Vec<&str> = crate::analysis::summary::HEADLINE
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| sums.iter().any(|s| s.metrics.contains_key(*n)))
        .collect();
    let mut val: Vec<&str> = sums
        .iter()
        .flat_map(|s| s.metrics.keys())
        .map(String::as_str)
        .filter(|n| crate::analysis::summary::is_validation(n))
        .collect();
    val.sort();
    val.dedup();
    names.extend(val);
    let mut rows: Vec<Vec<String>> = vec![
        ["run", "stage", "status", "steps"]
            .iter()
            .map(|s| s.to_string())
            .chain(names.iter().map(|n| display(n).into_owned()))
            .collect(),
    ];
    for s in sums {
        let mut row = vec![
            display(&s.id).into_owned(),
            display(&s.stage).into_owned(),
            s.status.clone(),
            s.step.to_string(),
        ];
        for n in &names {
            row.push(match s.metrics.get(*n) {
                Some(m) if m.n > 1 && m.best != m.last => {
                    format!("{:.4} (best {:.4} @{})", m.last, m.best, m.best_step)
                }
                Some(m) => format!("{:.4}", m.last),
                None => String::new(),
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        if md {
            out += &format!("| {} |\n", r.join(" | "));
            if i == 0 {
                out += &format!("|{}\n", "---|".repeat(r.len()));
            }
        } else {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out += cells.join("  ").trim_end();
            out.push('\n');
        }
    }
    out
}
