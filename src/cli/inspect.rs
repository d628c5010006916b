//! `stageloop inspect FILE.gguf`: what a model file holds — its architecture and
//! hyperparameters, its tokenizer's size and whether it has a chat template, and its tensors by
//! type; `--stats` one JSON line per tensor with checksums of the dequantised values, so another
//! reader (`benches/gguf_check.py`, llama.cpp's gguf-py) can confirm the dequantisation.

use crate::model::gguf::{Gguf, Value};
use crate::untrusted::display;
use std::collections::BTreeMap;
use std::path::Path;

pub fn run(file: &Path, stats: bool) -> anyhow::Result<()> {
    let g = Gguf::open(file)?;
    if stats {
        for t in &g.tensors {
            let v = g.read_f32(t);
            let (sum, sumsq) = v.iter().fold((0f64, 0f64), |(a, b), &x| {
                (a + x as f64, b + (x as f64) * (x as f64))
            });
            outln!(
                "{}",
                serde_json::json!({
                    "name": t.name, "dims": t.dims, "type": format!("{:?}", t.kind),
                    "n": v.len(), "sum": sum, "sumsq": sumsq,
                    "first": v.iter().take(8).collect::<Vec<_>>(),
                })
            );
        }
        return Ok(());
    }
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    outln!(
        "{}: GGUF v{}, architecture {}",
        display(&file.display().to_string()),
        g.version,
        display(&arch)
    );
    for (k, v) in &g.metadata {
        let short = k.strip_prefix(&format!("{arch}.")).unwrap_or(k);
        if k.starts_with(&format!("{arch}.")) || k == "general.name" {
            let shown = match v {
                Value::Str(s) => s.clone(),
                Value::Array(a) => format!("[{} values]", a.len()),
                other => format!("{other:?}")
                    .trim_start_matches(|c: char| c.is_alphabetic())
                    .trim_matches(|c| c == '(' || c == ')')
                    .to_string(),
            };
            outln!("  {:<36} {}", display(short), display(&shown));
        }
    }
    if let Some(Value::Array(tokens)) = g.get("tokenizer.ggml.tokens") {
        outln!(
            "  tokenizer: {} ({} tokens){}",
            g.get("tokenizer.ggml.model")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            tokens.len(),
            if g.get("tokenizer.chat_template").is_some() {
                ", chat template"
            } else {
                ""
            }
        );
    }
    let mut kinds: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &g.tensors {
        let e = kinds.entry(format!("{:?}", t.kind)).or_default();
        e.0 += 1;
        e.1 += t.elements();
    }
    let params: u64 = g.tensors.iter().map(|t| t.elements()).sum();
    outln!("  {} tensors, {} parameters:", g.tensors.len(), params);
    for (k, (n, e)) in kinds {
        outln!("    {k:<6} {n:>4} tensors, {e} values");
    }
    Ok(())
}
