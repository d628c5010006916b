//! `stageloop bench decode MODEL`: sampling throughput of a pretrained model on the CPU
//! decoder, with its weights as they are in a GGUF file (quantised blocks, integer kernels) or
//! all f32, timed as llama.cpp's speed is usually quoted: a prompt, then new tokens, the whole
//! call over the new tokens. `benches/decode_compare.py` runs it beside llama-cpp-python.

use super::{median, peak_rss_bytes};
use crate::cpu::decoder::Engine;
use crate::cpu::quant::matmul::Kernel;
use crate::model::device;
use crate::model::gguf_write::Store;
use crate::model::pretrained::{self, gguf_engine, gguf_model};
use crate::model::sample::{SampleOptions, generate_on};
use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What to measure.
pub struct DecodeConfig {
    pub model: PathBuf,
    /// How the weights are held.
    pub weights: Held,
    pub prompts: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub rounds: usize,
}

/// How [`run`] holds the model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A GGUF's blocks as they are in the file (a Hugging Face folder: f32).
    File,
    /// Every weight f32.
    F32,
    /// Every matrix and the embedding quantised at load.
    Quantized(Store),
}

#[derive(Debug, Serialize)]
pub struct DecodeReport {
    /// New tokens a second over the whole call (prefill included), median of the rounds.
    pub tokens_per_sec: f64,
    pub rounds: Vec<f64>,
    /// Seconds to build the decoder from the file.
    pub load_secs: f64,
    pub peak_rss_bytes: u64,
    pub file_bytes: u64,
    /// How the weights were held, and the integer kernel this CPU runs.
    pub weights: String,
    pub kernel: String,
}

pub fn run(cfg: &DecodeConfig) -> Result<DecodeReport> {
    let ctx = cfg.prompt_len + cfg.new_tokens + 1;
    let t0 = Instant::now();
    let gguf = pretrained::is_gguf(&cfg.model);
    let (engine, vocab, weights): (Engine, usize, String) = match cfg.weights {
        Held::File if gguf => {
            let (g, c, _) = gguf_model::open(&cfg.model)?;
            let e = gguf_engine::engine(&g, &c, ctx)?;
            (e, c.vocab, "file blocks".into())
        }
        Held::Quantized(store) => {
            let p = pretrained::load(&cfg.model, &device()?)?;
            let e = p.model.engine_quantized(ctx, store)?;
            (e, p.cfg.vocab, format!("{store:?} at load"))
        }
        Held::File | Held::F32 => {
            let p = pretrained::load(&cfg.model, &device()?)?;
            (p.model.engine(ctx), p.cfg.vocab, "f32".into())
        }
    };
    let load_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        vocab > 1100,
        "the model's vocabulary is too small for the bench prompt"
    );
    // The prompt llama_cpp_decode in benches/ feeds: token 1 (a BOS), then 1000, 1001, ….
    let prompt: Vec<u32> = std::iter::once(1)
        .chain((0..cfg.prompt_len.saturating_sub(1)).map(|i| 1000 + i as u32))
        .collect();
    let prompts = vec![prompt; cfg.prompts];
    let opts = SampleOptions {
        temperature: 1.0,
        top_p: 1.0,
        max_new_tokens: cfg.new_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    generate_on(&engine, &prompts, ctx, &opts, &mut rng); // warm-up
    let mut rounds = Vec::new();
    for _ in 0..cfg.rounds.max(1) {
        let t = Instant::now();
        let out = generate_on(&engine, &prompts, ctx, &opts, &mut rng);
        let n: usize = out.iter().map(|c| c.logprobs.len()).sum();
        rounds.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(DecodeReport {
        tokens_per_sec: median(&mut rounds.clone()),
        rounds,
        load_secs,
        peak_rss_bytes: peak_rss_bytes(),
        file_bytes: std::fs::metadata(&cfg.model).map_or(0, |m| m.len()),
        weights,
        kernel: format!("{:?}", Kernel::detect()),
    })
}
