//! `stageloop data gen`: write a task's generated data as JSONL (or Parquet by extension):
//! `--kind sft` clean prompt/completion pairs, `--kind corpus` the mixed pretraining corpus,
//! `--kind heldout` the held-out problems. `data show FILE`: a dataset file's rows, fields,
//! examples and answer parse rate. `data check EXP`: an experiment's dataset task.

use crate::spec::TaskSpec;
use crate::tasks::TaskSet;
use anyhow::{Context, bail};
use std::path::Path;

pub fn generate(
    task: &str,
    n: usize,
    out: &Path,
    kind: &str,
    difficulty: u32,
    seed: u64,
) -> anyhow::Result<()> {
    let max = crate::spec::validate::MAX_EXAMPLES;
    anyhow::ensure!(
        (1..=max).contains(&n),
        "--n must be between 1 and {max} (got {n})"
    );
    let spec: TaskSpec = toml::from_str(&format!(
        "name = \"{task}\"\ndifficulty = {difficulty}\nseed = {seed}\nheldout = {}",
        if kind == "heldout" { n } else { 500 }
    ))
    .context("task settings")?;
    let set = TaskSet::new(&spec)?;
    let mut rows: Vec<(String, String, String, String)> = Vec::with_capacity(n);
    match kind {
        "sft" => {
            for i in 0..n as u64 {
                let p = set.train_problem(i);
                let c = set.completion(&p);
                rows.push((p.prompt, c, p.answer, "clean".into()));
            }
        }
        "corpus" => {
            for i in 0..n as u64 {
                let (p, c, v) = set.corpus_example(i);
                rows.push((
                    p.prompt,
                    c,
                    p.answer,
                    serde_json::to_value(v)?.as_str().unwrap_or("").into(),
                ));
            }
        }
        "heldout" => {
            for p in set.heldout().iter().take(n) {
                rows.push((
                    p.prompt.clone(),
                    set.completion(p),
                    p.answer.clone(),
                    "clean".into(),
                ));
            }
        }
        other => bail!("unknown --kind `{other}` (sft, corpus, heldout)"),
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
    }
    if out.extension().and_then(|e| e.to_str()) == Some("parquet") {
        use polars::prelude::*;
        let col = |name: &str, f: fn(&(String, String, String, String)) -> String| {
            Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>())
        };
        let mut df = DataFrame::new_infer_height(vec![
            col("prompt", |r| r.0.clone()),
            col("completion", |r| r.1.clone()),
            col("answer", |r| r.2.clone()),
            col("variant", |r| r.3.clone()),
        ])?;
        crate::analysis::write_parquet(&mut df, out)?;
    } else {
        let mut w = crate::runfs::jsonl::JsonlWriter::append(out)?;
        for (prompt, completion, answer, variant) in &rows {
            w.write(&serde_json::json!({"prompt": prompt, "completion": completion, "answer": answer, "variant": variant}))?;
        }
    }
    eprintln!("wrote {} rows to {}", rows.len(), out.display());
    Ok(())
}

/// `stageloop data show FILE`.
pub fn show(
    file: &Path,
    verifier: &str,
    pattern: Option<&str>,
    prompt_field: &str,
    answer_field: &str,
    n: usize,
) -> anyhow::Result<()> {
    use crate::untrusted::display;
    let mut spec: TaskSpec = toml::from_str("name = \"dataset\"\nheldout = 1")?;
    spec.verifier = Some(verifier.to_string());
    spec.pattern = pattern.map(str::to_string);
    spec.prompt_field = Some(prompt_field.to_string());
    spec.answer_field = Some(answer_field.to_string());
    let shown = crate::tasks::dataset::show(file, &spec)?;
    outln!(
        "{}: {} rows",
        display(&file.display().to_string()),
        shown.rows
    );
    outln!("fields:");
    for (k, c) in &shown.fields {
        outln!("  {:<20} {c} rows", display(k));
    }
    let ds = shown.dataset?;
    let usable = ds.train_len() + ds.heldout_len();
    outln!(
        "{} usable rows (distinct prompts); verifier `{}` accepts {} of their reference answers ({:.1}%)",
        usable,
        ds.verifier().name(),
        ds.self_check,
        100.0 * ds.self_check as f64 / usable.max(1) as f64
    );
    let clip = |s: &str| {
        let s: String = s.chars().take(100).collect();
        display(&s).into_owned()
    };
    for (p, e, a) in ds.examples(n) {
        outln!(
            "- prompt:   {}\n  expected: {}\n  answer:   {}",
            clip(&p),
            clip(&e),
            clip(&a)
        );
    }
    Ok(())
}

/// `stageloop data check EXP`.
pub fn check(exp: &Path) -> anyhow::Result<()> {
    let e = crate::spec::load(exp)?;
    if e.spec.task.name != "dataset" {
        outln!(
            "{}: task `{}` is generated from a seed (held-out prompts are never trained on); nothing to check",
            e.name,
            e.spec.task.name
        );
        return Ok(());
    }
    let ds = crate::tasks::dataset::Dataset::load(&e.spec.task)?;
    let usable = ds.train_len() + ds.heldout_len();
    outln!(
        "ok: {} — {} training rows, {} held out{}; verifier `{}` accepts {} of {} reference answers",
        e.name,
        ds.train_len(),
        ds.heldout_len(),
        if ds.overlap > 0 {
            format!(
                "; {} training rows had a held-out prompt and are left out of training",
                ds.overlap
            )
        } else {
            String::new()
        },
        ds.verifier().name(),
        ds.self_check,
        usable
    );
    Ok(())
}
