//! Writing a model as a Hugging Face folder that transformers loads with
//! `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`: `config.json`
//! (Llama, Qwen2 or Qwen3 by the model's family; stageloop's own models are Llamas),
//! `model.safetensors` under HF names in F32, `tokenizer.json` (the character tokenizer of a
//! from-scratch model written as a WordLevel tokenizer), `tokenizer_config.json` and
//! `generation_config.json`.

use super::safetensors::{self, Dtype};
use crate::cpu::transpose::transposed;
use crate::model::config::ModelConfig;
use crate::model::tokenizer::{BOS, EOS, PAD, Tokenizer};
use crate::model::transformer::Gpt;
use anyhow::{Context, Result};
use burn::tensor::Tensor;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("data converted to f32 reads back as f32")
}

/// The model's weights under Hugging Face names, `[out, in]` projections, q/k/v and gate/up
/// split again: the inverse of [`super::build`].
pub fn hf_tensors(model: &Gpt, cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let w = model.weights();
    let (d, m, v) = (cfg.d_model, cfg.mlp, cfg.vocab);
    let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim());
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![v, d],
        f32s(w.embed),
    )];
    for (i, b) in w.blocks.into_iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let rows = qd + 2 * kvd;
        // [d, rows] → [rows, d]: q, k, v rows in order.
        let qkv = transposed(&f32s(b.qkv), d, rows);
        out.push((p("input_layernorm.weight"), vec![d], f32s(b.attn_norm.0)));
        out.push((
            p("self_attn.q_proj.weight"),
            vec![qd, d],
            qkv[..qd * d].to_vec(),
        ));
        out.push((
            p("self_attn.k_proj.weight"),
            vec![kvd, d],
            qkv[qd * d..(qd + kvd) * d].to_vec(),
        ));
        out.push((
            p("self_attn.v_proj.weight"),
            vec![kvd, d],
            qkv[(qd + kvd) * d..].to_vec(),
        ));
        if let Some(bias) = b.qkv_bias {
            let bias = f32s(bias);
            out.push((p("self_attn.q_proj.bias"), vec![qd], bias[..qd].to_vec()));
            out.push((
                p("self_attn.k_proj.bias"),
                vec![kvd],
                bias[qd..qd + kvd].to_vec(),
            ));
            out.push((
                p("self_attn.v_proj.bias"),
                vec![kvd],
                bias[qd + kvd..].to_vec(),
            ));
        }
        if let Some((q, k)) = b.qk_norm {
            out.push((p("self_attn.q_norm.weight"), vec![hd], f32s(q.0)));
            out.push((p("self_attn.k_norm.weight"), vec![hd], f32s(k.0)));
        }
        out.push((
            p("self_attn.o_proj.weight"),
            vec![d, qd],
            transposed(&f32s(b.out), qd, d),
        ));
        out.push((
            p("post_attention_layernorm.weight"),
            vec![d],
            f32s(b.mlp_norm.0),
        ));
        let gu = transposed(&f32s(b.gate_up), d, 2 * m);
        out.push((p("mlp.gate_proj.weight"), vec![m, d], gu[..m * d].to_vec()));
        out.push((p("mlp.up_proj.weight"), vec![m, d], gu[m * d..].to_vec()));
        out.push((
            p("mlp.down_proj.weight"),
            vec![d, m],
            transposed(&f32s(b.down), m, d),
        ));
    }
    out.push(("model.norm.weight".to_string(), vec![d], f32s(w.norm.0)));
    if !cfg.arch.tied {
        out.push((
            "lm_head.weight".to_string(),
            vec![v, d],
            transposed(&f32s(w.head), d, v),
        ));
    }
    out
}

/// `config.json` for the model.
pub fn hf_config(cfg: &ModelConfig, bos: Option<u32>, eos: &[u32]) -> Value {
    let family = cfg
        .arch
        .family
        .clone()
        .unwrap_or_else(|| "llama".to_string());
    let arch = match family.as_str() {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut c = json!({
        "architectures": [arch],
        "model_type": family,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads(),
        "head_dim": cfg.head_dim(),
        "intermediate_size": cfg.mlp,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.ctx,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.arch.norm_eps,
        "tie_word_embeddings": cfg.arch.tied,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
    });
    if let Some(r) = cfg.arch.rope_scaling {
        c["rope_scaling"] = json!({
            "rope_type": "llama3", "factor": r.factor, "low_freq_factor": r.low_freq_factor,
            "high_freq_factor": r.high_freq_factor,
            "original_max_position_embeddings": r.original_max_position_embeddings,
        });
    }
    if family == "qwen2" {
        c["use_sliding_window"] = json!(false);
    }
    c
}

/// A from-scratch model's character tokenizer as a `tokenizer.json`: each character one token
/// (a WordLevel vocabulary over single characters), the tags and PAD/BOS/EOS as added tokens,
/// BOS prepended as the model was trained, pieces joined back without spaces.
pub fn char_tokenizer_json(tok: &Tokenizer) -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, s) in tok.specials.iter().enumerate() {
        vocab.insert(s.clone(), json!(i));
    }
    for (i, c) in tok.alphabet.iter().enumerate() {
        vocab.insert(c.to_string(), json!(tok.specials.len() + i));
    }
    let added: Vec<Value> = tok
        .specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": (i as u32) <= EOS})
        })
        .collect();
    let bos = &tok.specials[BOS as usize];
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": false},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [BOS], "tokens": [bos]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": tok.specials[PAD as usize]},
    })
}

/// What a folder's tokenizer files say, for [`write_folder`].
pub struct TokenizerFiles {
    pub tokenizer_json: String,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
}

impl TokenizerFiles {
    /// The character tokenizer of a from-scratch model.
    pub fn of_chars(tok: &Tokenizer) -> TokenizerFiles {
        TokenizerFiles {
            tokenizer_json: char_tokenizer_json(tok).to_string(),
            bos: Some(tok.specials[BOS as usize].clone()),
            eos: Some(tok.specials[EOS as usize].clone()),
            pad: Some(tok.specials[PAD as usize].clone()),
            bos_id: Some(BOS),
            eos_ids: vec![EOS],
            chat_template: None,
        }
    }

    /// A pretrained model's tokenizer.
    pub fn of_pretrained(tok: &super::HfTokenizer) -> Result<TokenizerFiles> {
        let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        Ok(TokenizerFiles {
            tokenizer_json: tok.to_json()?,
            bos: text(tok.bos),
            eos: text(tok.eos.first().copied()),
            pad: text(tok.eos.first().copied()),
            bos_id: tok.bos,
            eos_ids: tok.eos.clone(),
            chat_template: tok.chat_template.clone(),
        })
    }
}

/// Write the model as a Hugging Face folder `dir` (created; files written atomically): a
/// Llama / Qwen2 / Qwen3 folder, or DeepseekV3 for a model with latent attention. A
/// multi-token-prediction depth is left out (no transformers model runs one).
pub fn write_folder(
    dir: &Path,
    model: &Gpt,
    cfg: &ModelConfig,
    tok: &TokenizerFiles,
) -> Result<Vec<PathBuf>> {
    if cfg.arch.moe.is_some() && cfg.arch.mla.is_none() {
        anyhow::bail!(
            "a DeepSeekMoE model without latent attention is not exported to Hugging Face \
             format: transformers' only sigmoid-routed experts are DeepseekV3's, which always \
             come with MLA ([model.mla]); the checkpoint's model.safetensors holds every \
             weight under stageloop's names"
        );
    }
    let deepseek = cfg.arch.mla.is_some();
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut written = Vec::new();
    let weights = dir.join("model.safetensors");
    let tensors = if deepseek {
        super::export_deepseek::tensors(model, cfg)?
    } else {
        hf_tensors(model, cfg)
    };
    safetensors::write(&weights, &tensors, Dtype::F32)?;
    written.push(weights);
    let mut tok_cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.ctx,
        "bos_token": tok.bos, "eos_token": tok.eos, "pad_token": tok.pad,
    });
    if let Some(t) = &tok.chat_template {
        tok_cfg["chat_template"] = json!(t);
    }
    let eos = if tok.eos_ids.len() == 1 {
        json!(tok.eos_ids[0])
    } else {
        json!(tok.eos_ids)
    };
    let files = [
        (
            "config.json",
            if deepseek {
                super::export_deepseek::config(cfg, tok.bos_id, &tok.eos_ids)
            } else {
                hf_config(cfg, tok.bos_id, &tok.eos_ids)
            }
            .to_string(),
        ),
        ("tokenizer.json", tok.tokenizer_json.clone()),
        ("tokenizer_config.json", tok_cfg.to_string()),
        (
            "generation_config.json",
            json!({"bos_token_id": tok.bos_id, "eos_token_id": eos}).to_string(),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        crate::runfs::atomic::write_file(&path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
