//! Pretrained models as a starting point: a Hugging Face folder (`config.json`, safetensors
//! weights, `tokenizer.json`, optional `tokenizer_config.json` and `generation_config.json`) or
//! a llama.cpp `.gguf` file, read into the same [`Gpt`] the stages train, with its tokenizer
//! and chat template. Llama (2, 3.x with `llama3` RoPE scaling, TinyLlama, SmolLM/SmolLM2), Qwen2
//! / Qwen2.5 and Qwen3.

pub mod export;
pub mod export_deepseek;
pub mod gguf_engine;
pub mod gguf_model;
pub mod hf_config;
pub mod safetensors;
pub mod tokenizer;

use super::config::ModelConfig;
use super::transformer::{BlockWeights, Gpt, Weights};
use crate::cpu::transpose::transposed;
use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use std::path::{Path, PathBuf};
pub use tokenizer::HfTokenizer;

/// Where weights come from, by Hugging Face tensor name (`model.layers.0.self_attn.q_proj.weight`),
/// row-major in Hugging Face's orientation (`[out, in]` for projections).
pub trait Source {
    /// The values of `name`, checked to have `shape`; an error naming the file if it is
    /// missing or shaped otherwise.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    fn has(&self, name: &str) -> bool;
}

/// `values` when every one is finite; else an error naming the tensor: a NaN or infinite
/// weight (a broken or hostile file) would only make every output garbage.
pub fn finite(values: Vec<f32>, tensor: &str) -> Result<Vec<f32>> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(values),
        Some(i) => bail!(
            "tensor {tensor}: value {i} is {} (a model's weights are finite numbers)",
            values[i]
        ),
    }
}

impl Source for safetensors::Tensors {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        finite(self.f32(name, shape)?, name)
    }
    fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// A loaded pretrained model.
pub struct Pretrained {
    pub cfg: ModelConfig,
    pub model: Gpt,
    pub tokenizer: HfTokenizer,
    /// The folder or file it came from.
    pub path: PathBuf,
}

pub use crate::spec::source::{is_gguf, is_pretrained};

/// Load a Hugging Face folder or a GGUF file.
pub fn load(path: &Path, device: &Device) -> Result<Pretrained> {
    if path.is_file() {
        if !is_gguf(path) {
            bail!(
                "{}: not a .gguf file or a Hugging Face folder",
                path.display()
            );
        }
        let (cfg, model, tokenizer) = gguf_model::load(path, device)?;
        return Ok(Pretrained {
            cfg,
            model,
            tokenizer,
            path: path.to_path_buf(),
        });
    }
    if !path.is_dir() {
        bail!("{}: no such file or folder", path.display());
    }
    let (cfg, specials) = hf_config::read(path)?;
    let tokenizer = HfTokenizer::from_folder(path, &specials)?;
    if tokenizer.vocab_size() > cfg.vocab {
        bail!(
            "{}: the tokenizer has {} tokens but config.json's vocab_size is {}",
            path.join("tokenizer.json").display(),
            tokenizer.vocab_size(),
            cfg.vocab
        );
    }
    let tensors = safetensors::Tensors::open_folder(path)?;
    let model = build(&cfg, &tensors, device)?;
    Ok(Pretrained {
        cfg,
        model,
        tokenizer,
        path: path.to_path_buf(),
    })
}

/// The model from Hugging Face-named weights: q/k/v stacked into one projection and gate/up
/// into another, each transposed to burn's `[in, out]`.
pub fn build(cfg: &ModelConfig, src: &dyn Source, device: &Device) -> Result<Gpt> {
    let (d, m, v) = (cfg.d_model, cfg.mlp, cfg.vocab);
    let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim());
    let t2 = |data: Vec<f32>, shape: [usize; 2]| {
        Tensor::<2>::from_data(TensorData::new(data, shape), device)
    };
    let t1 = |data: Vec<f32>| {
        let n = data.len();
        Tensor::<1>::from_data(TensorData::new(data, [n]), device)
    };
    let eps = cfg.arch.norm_eps;
    let mut blocks = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let mut qkv = src.get(&p("self_attn.q_proj.weight"), &[qd, d])?;
        qkv.extend(src.get(&p("self_attn.k_proj.weight"), &[kvd, d])?);
        qkv.extend(src.get(&p("self_attn.v_proj.weight"), &[kvd, d])?);
        let qkv_bias = if cfg.arch.qkv_bias {
            let mut b = src.get(&p("self_attn.q_proj.bias"), &[qd])?;
            b.extend(src.get(&p("self_attn.k_proj.bias"), &[kvd])?);
            b.extend(src.get(&p("self_attn.v_proj.bias"), &[kvd])?);
            Some(t1(b))
        } else {
            None
        };
        let qk_norm = if cfg.arch.qk_norm {
            Some((
                (t1(src.get(&p("self_attn.q_norm.weight"), &[hd])?), eps),
                (t1(src.get(&p("self_attn.k_norm.weight"), &[hd])?), eps),
            ))
        } else {
            None
        };
        let mut gate_up = src.get(&p("mlp.gate_proj.weight"), &[m, d])?;
        gate_up.extend(src.get(&p("mlp.up_proj.weight"), &[m, d])?);
        let rows = qd + 2 * kvd;
        blocks.push(BlockWeights {
            attn_norm: (t1(src.get(&p("input_layernorm.weight"), &[d])?), eps),
            qkv: t2(transposed(&qkv, rows, d), [d, rows]),
            qkv_bias,
            qk_norm,
            out: t2(
                transposed(&src.get(&p("self_attn.o_proj.weight"), &[d, qd])?, d, qd),
                [qd, d],
            ),
            mlp_norm: (
                t1(src.get(&p("post_attention_layernorm.weight"), &[d])?),
                eps,
            ),
            gate_up: t2(transposed(&gate_up, 2 * m, d), [d, 2 * m]),
            down: t2(
                transposed(&src.get(&p("mlp.down_proj.weight"), &[d, m])?, d, m),
                [m, d],
            ),
        });
    }
    let embed = src.get("model.embed_tokens.weight", &[v, d])?;
    let head = if cfg.arch.tied {
        t2(transposed(&embed, v, d), [d, v])
    } else {
        if !src.has("lm_head.weight") {
            src.get("lm_head.weight", &[v, d])
                .context("tie_word_embeddings is false, so the model needs lm_head.weight")?;
        }
        t2(
            transposed(&src.get("lm_head.weight", &[v, d])?, v, d),
            [d, v],
        )
    };
    let weights = Weights {
        shape: cfg.shape(),
        embed: t2(embed, [v, d]),
        blocks,
        norm: (t1(src.get("model.norm.weight", &[d])?), eps),
        head,
    };
    Ok(Gpt::from_weights(cfg, weights, device))
}
