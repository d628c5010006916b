//! `stageloop bench draft RUN|CKPT`: single-sequence sampling on the task's held-out prompts
//! through burn's ops (the path every architecture has), plain, and for a model with a
//! multi-token-prediction depth also with the depth's drafts ([`crate::model::speculative`]):
//! tokens/s of both, how many drafts were kept, tokens per main pass.

use super::median;
use crate::model::sample::{SampleOptions, Sampler};
use crate::model::{checkpoint, device, speculative};
use crate::stages::common::Setup;
use anyhow::{Context, Result};
use rand::SeedableRng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct DraftConfig {
    pub target: PathBuf,
    pub prompts: usize,
    pub new_tokens: usize,
    pub temperature: f64,
}

/// The figures, as `--json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct DraftReport {
    pub plain_tokens_per_sec: f64,
    /// With drafts (`None`: the model has no MTP depth).
    pub draft_tokens_per_sec: Option<f64>,
    /// Drafts kept over drafts made.
    pub acceptance: Option<f64>,
    /// New tokens per main-model pass with drafts (the prompt's pass counted; 1 without).
    pub tokens_per_pass: Option<f64>,
    pub prompts: usize,
    pub new_tokens: usize,
}

pub fn run(cfg: &DraftConfig) -> Result<DraftReport> {
    let dir = crate::runfs::checkpoint::resolve(&cfg.target).with_context(|| {
        format!(
            "{}: not a checkpoint or a run folder with checkpoints",
            cfg.target.display()
        )
    })?;
    let dev = device()?;
    let setup = Setup::from_checkpoint(&dir, None)?;
    let (model, _, _) = checkpoint::load_model(&dir, &dev)?;
    let prompts: Vec<Vec<u32>> = setup
        .task
        .heldout()
        .iter()
        .take(cfg.prompts.max(1))
        .map(|p| setup.prompt_ids(&p.prompt))
        .collect::<Result<_>>()?;
    let ctx = setup.model_cfg.ctx;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let budget = cfg.new_tokens.min(ctx.saturating_sub(longest + 1)).max(1);
    // Every sequence runs its whole budget, one at a time, on burn's ops: the same path both
    // ways (a model with drafts never reaches the CPU decoder's batches).
    let opts = SampleOptions {
        temperature: cfg.temperature,
        max_new_tokens: budget,
        ignore_eos: true,
        engine: false,
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut sampler = Sampler::new(&model);
    let (mut plain, mut drafted) = (Vec::new(), Vec::new());
    let (mut made, mut kept, mut passes, mut tokens) = (0, 0, 0, 0);
    for p in &prompts {
        let t0 = Instant::now();
        let c = sampler.generate(std::slice::from_ref(p), ctx, &opts, &mut rng, &dev);
        plain.push(c[0].tokens.len() as f64 / t0.elapsed().as_secs_f64());
        if !model.has_mtp() {
            continue;
        }
        let t0 = Instant::now();
        let d = speculative::generate(&model, p, budget, &opts, &mut rng, &dev)?;
        drafted.push(d.completion.tokens.len() as f64 / t0.elapsed().as_secs_f64());
        made += d.drafted;
        kept += d.accepted;
        passes += d.passes + 1;
        tokens += d.completion.tokens.len();
    }
    let mtp = model.has_mtp();
    Ok(DraftReport {
        plain_tokens_per_sec: median(&mut plain),
        draft_tokens_per_sec: mtp.then(|| median(&mut drafted)),
        acceptance: mtp.then(|| kept as f64 / made.max(1) as f64),
        tokens_per_pass: mtp.then(|| tokens as f64 / passes.max(1) as f64),
        prompts: prompts.len(),
        new_tokens: budget,
    })
}
