//! A Hugging Face `config.json` of a Llama, Qwen2 or Qwen3 model read into a [`ModelConfig`]:
//! every field the loader relies on is checked, and one it cannot honour (another
//! `model_type`, an activation other than SiLU, biases on the output projection, sliding-window
//! attention, a RoPE scaling other than Llama 3's) is an error naming the field.

use crate::model::config::{Arch, ModelConfig, RopeScaling};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// Architectures the loader reads (`model_type`).
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3"];

/// Positions the decoder and the training stages allocate for at most; longer
/// `max_position_embeddings` are cut to it (prompts and completions here are short).
pub const MAX_CTX: usize = 8192;

/// What `config.json` says besides the shape: the special token ids.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

/// Read `dir/config.json`.
pub fn read(dir: &Path) -> Result<(ModelConfig, Specials)> {
    let path = dir.join("config.json");
    let text = crate::untrusted::read_small(&path, 16 << 20).with_context(|| {
        format!(
            "{}: cannot read (is this a Hugging Face model folder?)",
            path.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
    parse(&v).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

fn uint(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|n| Some(n as usize))
            .with_context(|| format!("{key} must be a non-negative integer (got {x})")),
    }
}

fn need(v: &Value, key: &str) -> Result<usize> {
    uint(v, key)?.with_context(|| format!("{key} is missing"))
}

fn float(v: &Value, key: &str, default: f64) -> Result<f64> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .with_context(|| format!("{key} must be a number (got {x})")),
    }
}

fn flag(v: &Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_bool()
            .with_context(|| format!("{key} must be true or false (got {x})")),
    }
}

/// Token ids: one integer or a list of them.
fn ids(v: &Value, key: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .filter(|&n| n < u32::MAX as u64)
            .map(|n| n as u32)
            .with_context(|| format!("{key} must be a token id or a list of them (got {x})"))
    };
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

/// The config of a parsed `config.json` object.
pub fn parse(v: &Value) -> Result<(ModelConfig, Specials)> {
    let ty = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    if !SUPPORTED.contains(&ty) {
        bail!(
            "model_type {ty:?} is not supported (supported: {})",
            SUPPORTED.join(", ")
        );
    }
    let act = v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    if act != "silu" {
        bail!("hidden_act {act:?} is not supported (only \"silu\")");
    }
    if flag(v, "mlp_bias", false)? {
        bail!("mlp_bias true is not supported");
    }
    if ty == "llama" && flag(v, "attention_bias", false)? {
        bail!("attention_bias true is not supported for llama (it adds a bias to o_proj)");
    }
    if ty == "qwen3" && flag(v, "attention_bias", false)? {
        bail!("attention_bias true is not supported for qwen3");
    }
    if ty != "llama" && flag(v, "use_sliding_window", false)? {
        bail!("use_sliding_window true is not supported");
    }
    let heads = need(v, "num_attention_heads")?;
    let d_model = need(v, "hidden_size")?;
    let kv_heads = uint(v, "num_key_value_heads")?.unwrap_or(heads);
    let head_dim = uint(v, "head_dim")?;
    // transformers 5 writes `rope_parameters` (theta and scaling in one object); 4 writes
    // `rope_theta` and `rope_scaling`.
    let params = v.get("rope_parameters").filter(|p| p.is_object());
    let rope_theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(t) => t
            .as_f64()
            .with_context(|| format!("rope_parameters.rope_theta must be a number (got {t})"))?,
        None => float(v, "rope_theta", 10_000.0)?,
    };
    let rope_scaling = match v.get("rope_scaling").filter(|s| !s.is_null()).or(params) {
        None | Some(Value::Null) => None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match kind {
                "default" => None,
                "" if params.is_some() => None,
                "llama3" => Some(RopeScaling {
                    factor: float(s, "factor", 0.0)?,
                    low_freq_factor: float(s, "low_freq_factor", 0.0)?,
                    high_freq_factor: float(s, "high_freq_factor", 0.0)?,
                    original_max_position_embeddings: float(
                        s,
                        "original_max_position_embeddings",
                        0.0,
                    )?,
                }),
                other => bail!(
                    "rope_scaling type {other:?} is not supported (only \"default\" and \"llama3\")"
                ),
            }
        }
    };
    let max_pos = uint(v, "max_position_embeddings")?.unwrap_or(2048);
    let cfg = ModelConfig {
        vocab: need(v, "vocab_size")?,
        d_model,
        layers: need(v, "num_hidden_layers")?,
        heads,
        mlp: need(v, "intermediate_size")?,
        ctx: max_pos.clamp(8, MAX_CTX),
        rope_theta,
        arch: Arch {
            kv_heads: Some(kv_heads),
            head_dim: head_dim.filter(|&h| h * heads != d_model || ty == "qwen3"),
            qkv_bias: ty == "qwen2",
            qk_norm: ty == "qwen3",
            tied: flag(v, "tie_word_embeddings", false)?,
            norm_eps: float(v, "rms_norm_eps", 1e-6)?,
            rope_scaling,
            family: Some(ty.to_string()),
            moe: None,
            mla: None,
            mtp: None,
        },
    };
    cfg.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let specials = Specials {
        bos: ids(v, "bos_token_id")?.first().copied(),
        eos: ids(v, "eos_token_id")?,
    };
    Ok((cfg, specials))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
            "vocab_size": 100, "max_position_embeddings": 256, "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "bos_token_id": 1,
            "eos_token_id": [2, 3], "hidden_act": "silu"
        })
    }

    #[test]
    fn a_llama_config_reads_into_the_shape() {
        let (c, s) = parse(&llama()).unwrap();
        assert_eq!(
            (c.d_model, c.layers, c.heads, c.kv_heads(), c.mlp),
            (64, 2, 4, 2, 96)
        );
        assert_eq!((c.vocab, c.ctx, c.head_dim()), (100, 256, 16));
        assert!(c.arch.tied && !c.arch.qkv_bias && !c.arch.qk_norm);
        assert_eq!((s.bos, s.eos), (Some(1), vec![2, 3]));
    }

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64});
        let (c, _) = parse(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.arch.rope_scaling.unwrap().factor, 8.0);
        v["rope_parameters"] = serde_json::json!({"rope_theta": 1e6, "rope_type": "default"});
        let (c, _) = parse(&v).unwrap();
        assert_eq!((c.rope_theta, c.arch.rope_scaling), (1e6, None));
    }

    #[test]
    fn what_the_loader_cannot_honour_is_named() {
        let cases = [
            (
                "model_type",
                serde_json::json!("mixtral"),
                "model_type \"mixtral\" is not supported (supported: llama, qwen2, qwen3)",
            ),
            ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
            ("attention_bias", serde_json::json!(true), "attention_bias"),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
                "rope_scaling type \"yarn\"",
            ),
            (
                "num_key_value_heads",
                serde_json::json!(3),
                "kv_heads must divide heads",
            ),
            (
                "hidden_size",
                serde_json::json!("big"),
                "hidden_size must be a non-negative integer",
            ),
        ];
        for (key, value, want) in cases {
            let mut v = llama();
            v[key] = value;
            let e = format!("{:#}", parse(&v).unwrap_err());
            assert!(e.contains(want), "{key}: {e}");
        }
        let mut v = llama();
        v.as_object_mut().unwrap().remove("vocab_size");
        assert!(format!("{:#}", parse(&v).unwrap_err()).contains("vocab_size is missing"));
    }
}
