//! `stageloop score --task T`: read `{prompt, completion}` JSON lines on stdin, write each line's
//! reward components, so anyone can check a verifier. `score --verifier V` does the same for a
//! dataset verifier on `{completion, answer}` lines.

use crate::tasks::{self, rewards};
use anyhow::{Context, bail};
use serde_json::Value;
use std::io::{BufRead, Write};

/// Each non-blank stdin line as JSON, and a reader of its text fields (numbers as text);
/// `score` turns it into the object printed for it. Errors name `stdin:line`.
fn each_line(
    mut score: impl FnMut(&dyn Fn(&str) -> anyhow::Result<String>) -> anyhow::Result<Value>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("stdin:{}: not valid JSON: {e}", i + 1))?;
        let field = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(anyhow::anyhow!("stdin:{}: missing text field `{k}`", i + 1)),
        };
        writeln!(out, "{}", score(&field)?)?;
    }
    Ok(())
}

pub fn run(task: &str) -> anyhow::Result<()> {
    let Some(t) = tasks::by_name(task) else {
        bail!("unknown task `{task}` (known: arith, countdown, parity, sort)");
    };
    each_line(|field| {
        let (prompt, completion) = (field("prompt")?, field("completion")?);
        let parsed = rewards::parse(&completion);
        let (accuracy, partial) = match &parsed.answer {
            Some(a) => (t.accuracy(&prompt, a), t.partial(&prompt, a)),
            None => (0.0, 0.0),
        };
        Ok(serde_json::json!({
            "accuracy": accuracy,
            "format": if parsed.format_ok { 1.0 } else { 0.0 },
            "partial": partial,
            "answer": parsed.answer,
        }))
    })
}

/// `score --verifier V`: `{completion, answer}` lines → accuracy, format, the answer read.
pub fn run_verifier(name: &str, pattern: Option<&str>, case_sensitive: bool) -> anyhow::Result<()> {
    let v = tasks::verify::Verifier::new(name, pattern, case_sensitive)
        .map_err(|e| anyhow::anyhow!("--verifier: {e}"))?;
    each_line(|field| {
        let (completion, answer) = (field("completion")?, field("answer")?);
        let parsed = rewards::parse(&completion);
        let accuracy = parsed
            .answer
            .as_deref()
            .map_or(0.0, |a| v.score(a, &answer));
        Ok(serde_json::json!({
            "accuracy": accuracy,
            "format": if parsed.format_ok { 1.0 } else { 0.0 },
            "answer": parsed.answer,
        }))
    })
}
