//! `stageloop report EXP`: the per-stage eval table across the latest run of each eval stage, in
//! pipeline order (`--json`: one array of objects).

use crate::runfs::{self, Status};
use crate::spec::{self, StageKind};
use crate::untrusted::display;
use serde_json::{Value, json};
use std::path::Path;

/// One row per eval stage that has a finished run, and one message per eval.json that could not
/// be read (its stage is left out; the others are still reported).
pub fn rows(exp: &spec::Experiment) -> (Vec<Value>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for s in exp.spec.stage.iter().filter(|s| s.kind == StageKind::Eval) {
        let Some((run, st)) = runfs::latest_run_of(&exp.runs_dir(), &s.name) else {
            continue;
        };
        if st.status != Status::Done {
            continue;
        }
        let path = run.eval_json();
        let e: Value = match std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
            }) {
            Ok(v) => v,
            Err(p) => {
                problems.push(format!("eval stage `{}`: {p}", s.name));
                continue;
            }
        };
        let evaluated = s.init.clone().unwrap_or_default();
        let evaluated_kind = exp
            .stage(&evaluated)
            .map(|x| x.kind.to_string())
            .unwrap_or_default();
        out.push(json!({
            "stage": s.name, "evaluated": evaluated, "evaluated_kind": evaluated_kind, "run": run.id(),
            "pass@1": e["pass@1"], "greedy": e["greedy"], "pass@k": e["pass@k"], "k": e["k"],
            "maj@k": e["maj@k"], "format_rate": e["format_rate"], "mean_length": e["mean_length"],
            "pass_at": e["pass_at"],
        }));
    }
    (out, problems)
}

pub fn run(exp: &Path, json_out: bool) -> anyhow::Result<()> {
    let e = spec::load(exp)?;
    let (rows, problems) = rows(&e);
    print_rows(&e, &rows, json_out)?;
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

fn print_rows(e: &spec::Experiment, rows: &[Value], json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no finished eval runs in {}", e.runs_dir().display());
        return Ok(());
    }
    // Names come from run.json files: printed through `untrusted::display`.
    let text = |v: &Value| display(v.as_str().unwrap_or("")).into_owned();
    let evaluated =
        |r: &Value| format!("{} ({})", text(&r["evaluated"]), text(&r["evaluated_kind"]));
    let stage = |r: &Value| text(&r["stage"]);
    // Columns as wide as their longest entry.
    let width = |cell: &dyn Fn(&Value) -> String, header: &str| {
        rows.iter()
            .map(|r| cell(r).len())
            .fold(header.len(), usize::max)
    };
    let (w1, w2) = (width(&stage, "eval stage"), width(&evaluated, "evaluated"));
    println!(
        "{:<w1$}  {:<w2$} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "eval stage", "evaluated", "pass@1", "greedy", "pass@k", "maj@k", "format", "length"
    );
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "-".into())
    };
    for r in rows {
        println!(
            "{:<w1$}  {:<w2$} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            stage(r),
            evaluated(r),
            f(&r["pass@1"]),
            f(&r["greedy"]),
            f(&r["pass@k"]),
            f(&r["maj@k"]),
            f(&r["format_rate"]),
            r["mean_length"]
                .as_f64()
                .map(|x| format!("{x:.1}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
