//! `stageloop score --task T`: read `{prompt, completion}` JSON lines on stdin, write each line's
//! reward components, so anyone can check a verifier. `score --verifier V` does the same for a
//! dataset verifier on `{completion, answer}` lines.

use crate::tasks::{self, rewards};
use anyhow::{Context, bail};
use std::io::{BufRead, Write};

pub fn run(task: &str) -> anyhow::Result<()> {
    let Some(t) = tasks::by_name(task) else {
        bail!("unknown task `{task}` (known: arith, countdown, parity, sort)");
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("stdin:{}: not valid JSON: {e}", i + 1))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| anyhow::anyhow!("stdin:{}: missing text field `{k}`", i + 1))
        };
        let (prompt, completion) = (field("prompt")?, field("completion")?);
        let parsed = rewards::parse(completion);
        let (accuracy, partial) = match &parsed.answer {
            Some(a) => (t.accuracy(prompt, a), t.partial(prompt, a)),
            None => (0.0, 0.0),
        };
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "accuracy": accuracy,
                "format": if parsed.format_ok { 1.0 } else { 0.0 },
                "partial": partial,
                "answer": parsed.answer,
            })
        )?;
    }
    Ok(())
}

/// `score --verifier V`: `{completion, answer}` lines → accuracy, format, the answer read.
pub fn run_verifier(name: &str, pattern: Option<&str>, case_sensitive: bool) -> anyhow::Result<()> {
    let v = tasks::verify::Verifier::new(name, pattern, case_sensitive)
        .map_err(|e| anyhow::anyhow!("--verifier: {e}"))?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("stdin:{}: not valid JSON: {e}", i + 1))?;
        let field = |k: &str| {
            j.get(k)
                .and_then(|x| match x {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .ok_or_else(|| anyhow::anyhow!("stdin:{}: missing field `{k}`", i + 1))
        };
        let (completion, answer) = (field("completion")?, field("answer")?);
        let parsed = rewards::parse(&completion);
        let accuracy = parsed
            .answer
            .as_deref()
            .map_or(0.0, |a| v.score(a, &answer));
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "accuracy": accuracy,
                "format": if parsed.format_ok { 1.0 } else { 0.0 },
                "answer": parsed.answer,
            })
        )?;
    }
    Ok(())
}
