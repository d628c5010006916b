//! `stageloop bench train`: training and sampling throughput of one model shape on this
//! machine, and peak memory. Random tokens, and random weights unless a pretrained model is
//! given: the figures are about speed, not learning. Training is full fine-tuning, or LoRA
//! adapters on every block matrix.

use super::{median, peak_rss_bytes};
use crate::model::optim::FusedAdamW;
use crate::model::sample::{SampleOptions, generate};
use crate::model::{Gpt, ModelConfig, device};
use crate::stages::common::{Example, clip_grad_norm, lm_loss, make_batch};
use anyhow::Result;
use burn::module::Module;
use burn::optim::GradientsParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelConfig,
    pub batch: usize,
    pub prompts: usize,
    pub new_tokens: usize,
    pub train_steps: usize,
    /// Pretrained weights (a Hugging Face folder or a GGUF file) instead of random ones; the
    /// shape is then the file's, with `model.ctx` as the context.
    pub weights: Option<std::path::PathBuf>,
    /// Train LoRA adapters of this rank (alpha 2·rank) instead of every weight.
    pub lora: Option<usize>,
    /// With `lora`: how the frozen base is held (QLoRA), as `[model] quantize` says.
    pub quantize: crate::spec::Quantize,
    /// Skip the sampling run without a KV cache (slow at real-model size).
    pub cache_only: bool,
}

/// The figures, as `--json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub train_tokens_per_sec: f64,
    pub sample_tokens_per_sec_cache: f64,
    /// `None` with `cache_only`.
    pub sample_tokens_per_sec_nocache: Option<f64>,
    pub peak_rss_bytes: u64,
    pub params: usize,
    /// Parameters that train (all of them, or the adapters).
    pub trainable_params: usize,
    /// KV cache a sampled token holds over all layers (f32), as the model's shape says.
    pub kv_bytes_per_token: usize,
    /// The products' number type as they ran: `bf16` inside [`crate::cpu::gemm::with_bf16`]
    /// on a CPU with AVX512_BF16, else `f32`.
    pub precision: &'static str,
}

/// Time over which sampling calls are repeated, and the most calls timed.
const SAMPLE_BUDGET: Duration = Duration::from_secs(1);
const SAMPLE_CALLS: usize = 10;

pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let infer = device()?;
    let train = infer.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    train.seed(0);
    let (mut model, shape) = match &cfg.weights {
        Some(path) => {
            let p = crate::model::pretrained::load(path, &train)?;
            (
                p.model,
                ModelConfig {
                    ctx: cfg.model.ctx,
                    ..p.cfg
                },
            )
        }
        None => (Gpt::new(&cfg.model, &train), cfg.model.clone()),
    };
    let m = &shape;
    if let Some(rank) = cfg.lora {
        model = model.with_lora(rank, 2.0 * rank as f64, &crate::spec::LORA_TARGETS);
        model = crate::model::qlora::freeze(model, cfg.quantize, cfg.weights.as_deref(), &shape)?;
    }
    let trainable = model.num_params_trainable();
    // burn's AdamWConfig defaults (β₂ 0.999, ε 1e-5, weight decay 1e-4), fused.
    let mut optim = FusedAdamW::new(0.9, 0.999, 1e-5, 1e-4).init();
    let examples: Vec<Example> = (0..cfg.batch)
        .map(|_| Example {
            tokens: (0..=m.ctx)
                .map(|_| rng.random_range(7..m.vocab as u32))
                .collect(),
            loss: vec![true; m.ctx],
        })
        .collect();
    let mut step = |model: Gpt| {
        let batch = make_batch(&examples, &train);
        let loss = lm_loss(&model, &batch);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_grad_norm(&model, &mut grads, 1.0);
        optim.step(1e-4, model, grads)
    };
    model = step(model); // warm-up

    let t0 = Instant::now();
    for _ in 0..cfg.train_steps {
        model = step(model);
    }
    let train_tps = (cfg.train_steps * cfg.batch * m.ctx) as f64 / t0.elapsed().as_secs_f64();

    let valid = model.valid();
    let prompt_len = (m.ctx / 8).max(2);
    let prompts: Vec<Vec<u32>> = (0..cfg.prompts)
        .map(|_| {
            (0..prompt_len)
                .map(|_| rng.random_range(7..m.vocab as u32))
                .collect()
        })
        .collect();
    let new = cfg.new_tokens.min(m.ctx - prompt_len);
    let mut opts = SampleOptions {
        temperature: 1.0,
        max_new_tokens: new,
        ignore_eos: true,
        ..Default::default()
    };
    // Timed calls repeat until SAMPLE_BUDGET has passed (at most SAMPLE_CALLS): one call of a
    // prompt is ~40 ms, too short to time once on a shared machine.
    let mut sample_tps = |use_cache: bool| {
        opts.use_cache = use_cache;
        generate(&valid, &prompts[..1], m.ctx, &opts, &mut rng, &infer); // warm-up
        let start = Instant::now();
        let mut rates = Vec::new();
        while rates.is_empty() || (rates.len() < SAMPLE_CALLS && start.elapsed() < SAMPLE_BUDGET) {
            let t0 = Instant::now();
            let out = generate(&valid, &prompts, m.ctx, &opts, &mut rng, &infer);
            let n: usize = out.iter().map(|c| c.logprobs.len()).sum();
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        median(&mut rates)
    };
    let cache = sample_tps(true);
    let nocache = (!cfg.cache_only).then(|| sample_tps(false));
    Ok(BenchReport {
        train_tokens_per_sec: train_tps,
        sample_tokens_per_sec_cache: cache,
        sample_tokens_per_sec_nocache: nocache,
        kv_bytes_per_token: m.kv_bytes_per_token(),
        precision: if crate::cpu::gemm::bf16_on() {
            "bf16"
        } else {
            "f32"
        },
        peak_rss_bytes: peak_rss_bytes(),
        params: m.params(),
        trainable_params: trainable,
    })
}
