//! A llama.cpp GGUF file as a pretrained model: its metadata into a [`ModelConfig`], its tensors
//! (dequantised by [`crate::model::gguf`]) under their Hugging Face names with llama.cpp's
//! Q/K row permutation undone for `llama` files, and its BPE vocabulary and merges into a
//! `tokenizer.json` for the `tokenizers` crate.

use super::hf_config::MAX_CTX;
use super::{HfTokenizer, Source};
use crate::model::config::{Arch, ModelConfig};
use crate::model::gguf::{Gguf, Value};
use crate::model::transformer::Gpt;
use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use std::path::Path;

/// Architectures read (`general.architecture`).
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3"];

/// Load the model and tokenizer of a GGUF file.
pub fn load(path: &Path, device: &Device) -> Result<(ModelConfig, Gpt, HfTokenizer)> {
    let (g, cfg, tok) = open(path)?;
    let src = GgufSource { g: &g, cfg: &cfg };
    let model = super::build(&cfg, &src, device)?;
    Ok((cfg, model, tok))
}

/// The file, its model's shape and its tokenizer, checked to agree.
pub fn open(path: &Path) -> Result<(Gguf, ModelConfig, HfTokenizer)> {
    let g = Gguf::open(path)?;
    let cfg = config(&g).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    let tok = tokenizer(&g)?;
    if tok.vocab_size() > cfg.vocab {
        bail!(
            "{}: the tokenizer has {} tokens but token_embd.weight has {} rows",
            path.display(),
            tok.vocab_size(),
            cfg.vocab
        );
    }
    Ok((g, cfg, tok))
}

fn meta_u(g: &Gguf, key: &str) -> Result<usize> {
    g.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .with_context(|| format!("metadata {key} is missing or not an integer"))
}

/// The model's shape from the metadata (`{arch}.embedding_length`, …).
pub fn config(g: &Gguf) -> Result<ModelConfig> {
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !SUPPORTED.contains(&arch) {
        bail!(
            "general.architecture {arch:?} is not supported (supported: {})",
            SUPPORTED.join(", ")
        );
    }
    if g.tensor("rope_freqs.weight").is_some() {
        bail!(
            "rope_freqs.weight (llama.cpp's precomputed RoPE scaling) is not supported; load the Hugging Face folder instead"
        );
    }
    let k = |s: &str| format!("{arch}.{s}");
    let heads = meta_u(g, &k("attention.head_count"))?;
    let d_model = meta_u(g, &k("embedding_length"))?;
    let embd = g
        .tensor("token_embd.weight")
        .context("tensor token_embd.weight is missing")?;
    let vocab = *embd
        .dims
        .get(1)
        .context("token_embd.weight is not a matrix")? as usize;
    let head_dim = g
        .get(&k("attention.key_length"))
        .and_then(Value::as_u64)
        .map(|v| v as usize);
    let cfg = ModelConfig {
        vocab,
        d_model,
        layers: meta_u(g, &k("block_count"))?,
        heads,
        mlp: meta_u(g, &k("feed_forward_length"))?,
        ctx: meta_u(g, &k("context_length"))
            .unwrap_or(2048)
            .clamp(8, MAX_CTX),
        rope_theta: g
            .get(&k("rope.freq_base"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0),
        arch: Arch {
            kv_heads: Some(meta_u(g, &k("attention.head_count_kv")).unwrap_or(heads)),
            head_dim: head_dim.filter(|&h| h * heads != d_model || arch == "qwen3"),
            qkv_bias: arch == "qwen2",
            qk_norm: arch == "qwen3",
            tied: g.tensor("output.weight").is_none(),
            norm_eps: g
                .get(&k("attention.layer_norm_rms_epsilon"))
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_scaling: None,
            family: Some(arch.to_string()),
            moe: None,
            mla: None,
            mtp: None,
        },
    };
    cfg.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cfg)
}

/// GGUF's name for a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let parts = [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let (module, kind) = part.rsplit_once('.')?;
    let (_, g) = parts.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Which file row each row of a `llama` file's query or key projection is (`rows` rows over
/// `heads` heads): llama.cpp's `permute` interleaves each head's two halves for its RoPE, so
/// row `h·hd + i·half + j` is file row `h·hd + 2j + i`.
pub fn unpermuted_rows(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut from = vec![0; rows];
    for h in 0..heads {
        for j in 0..half {
            for i in 0..2 {
                from[h * hd + i * half + j] = h * hd + 2 * j + i;
            }
        }
    }
    from
}

/// Undo llama.cpp's `permute` of the query or key rows of a `llama` file ([`unpermuted_rows`]).
pub fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    unpermuted_rows(w.len() / cols, heads)
        .into_iter()
        .flat_map(|from| &w[from * cols..(from + 1) * cols])
        .copied()
        .collect()
}

/// The tensor of `g` named (in Hugging Face's terms) `name`, and its GGUF name, checked to be
/// shaped `shape` (outermost axis first; ggml lists the contiguous axis first).
pub fn tensor_shaped<'a>(
    g: &'a Gguf,
    name: &str,
    shape: &[usize],
) -> Result<(&'a crate::model::gguf::TensorInfo, String)> {
    let path = g.path.display();
    let gname = gguf_name(name).with_context(|| format!("{path}: no GGUF name for {name}"))?;
    let t = g
        .tensor(&gname)
        .with_context(|| format!("{path}: tensor {gname} ({name}) is missing"))?;
    let dims: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
    if dims != shape {
        bail!("{path}: tensor {gname} has shape {dims:?}, expected {shape:?} from the metadata");
    }
    Ok((t, gname))
}

struct GgufSource<'a> {
    g: &'a Gguf,
    cfg: &'a ModelConfig,
}

impl Source for GgufSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = self.g.path.display();
        let (t, gname) = tensor_shaped(self.g, name, shape)?;
        let v = super::finite(self.g.read_f32(t), &format!("{path}: {gname}"))?;
        let llama = self.cfg.arch.family.as_deref() == Some("llama");
        Ok(match (llama, gname.rsplit('.').nth(1)) {
            (true, Some("attn_q")) => unpermute(&v, self.cfg.heads, *shape.last().unwrap_or(&1)),
            (true, Some("attn_k")) => {
                unpermute(&v, self.cfg.kv_heads(), *shape.last().unwrap_or(&1))
            }
            _ => v,
        })
    }
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|n| self.g.tensor(&n).is_some())
    }
}

/// A string array of the metadata.
fn strings<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    match g.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .with_context(|| format!("metadata {key} holds a non-string"))
            })
            .collect(),
        _ => bail!("metadata {key} is missing or not a list"),
    }
}

/// The regular expressions llama.cpp names by `tokenizer.ggml.pre`, as `tokenizers`
/// pre-tokenizers.
fn pre_tokenizer(pre: &str) -> Result<serde_json::Value> {
    use serde_json::json;
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        other => {
            bail!("tokenizer.ggml.pre {other:?} is not supported (gpt2, smollm, qwen2, llama-bpe)")
        }
    })
}

/// The file's byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) as a `tokenizer.json`.
pub fn tokenizer_json(g: &Gguf) -> Result<String> {
    use serde_json::json;
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("");
    if model != "gpt2" {
        bail!(
            "tokenizer.ggml.model {model:?} is not supported (only byte-level BPE, \"gpt2\"; SentencePiece GGUFs: load the Hugging Face folder)"
        );
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match g.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("gpt2");
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched whole before the BPE.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": types[i] == 3})
        })
        .collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre == "llama-bpe" || pre == "llama3",
            "vocab": vocab, "merges": merges},
    });
    Ok(doc.to_string())
}

/// The tokenizer, BOS/EOS ids and chat template of a GGUF file.
pub fn tokenizer(g: &Gguf) -> Result<HfTokenizer> {
    let json = tokenizer_json(g).map_err(|e| anyhow::anyhow!("{}: {e:#}", g.path.display()))?;
    let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    let template = g
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_string);
    let eos = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    HfTokenizer::from_json(
        &json,
        id("tokenizer.ggml.bos_token_id"),
        eos,
        template,
        &g.path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_proj.bias").unwrap(),
            "blk.0.attn_k.bias"
        );
        assert_eq!(
            gguf_name("model.layers.1.mlp.down_proj.weight").unwrap(),
            "blk.1.ffn_down.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.1.mlp.nope.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpps_permute() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols).
        let (heads, hd, cols) = (3, 8, 5);
        let w: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
        let half = hd / 2;
        let mut permuted = vec![0.0f32; w.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..half {
                    let src = h * hd + i * half + j;
                    let dst = h * hd + j * 2 + i;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, w);
        assert_eq!(unpermute(&permuted, heads, cols), w);
    }
}
