//! The supervised training loop shared by pretrain, SFT, rejection-sampling SFT and distill:
//! next-token loss on `(prompt, completion)` pairs from an indexed source, AdamW with warm-up +
//! cosine, gradient clipping, metrics every step, samples and checkpoints every N steps, and a
//! clean stop on signal. Resuming restores model, optimizer, RNG and data cursor.

use super::common::{
    Setup, clip_grad_norm, encode_example, lm_loss, lr_at, make_batch, metrics_line, open_logs,
    sampling_flops,
};
use super::context::{Outcome, StageCtx};
use crate::model::checkpoint::{self, RngState, TrainState};
use crate::model::optim::FusedAdamW;
use crate::model::sample::{SampleOptions, generate};
use crate::model::{self, Gpt};
use crate::runfs;
use crate::runfs::records::Sample;
use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Where a training loop starts: a fresh model, an `init` checkpoint, or its own checkpoint.
pub struct Start {
    pub model: Gpt,
    pub optim: burn::optim::ModuleOptimizer,
    pub state: TrainState,
}

/// Build or load the model and optimizer for a training stage on `device` (autodiff).
pub fn start(ctx: &StageCtx<'_>, setup: &Setup, device: &Device, kind: &str) -> Result<Start> {
    let optim = FusedAdamW::new(0.9, 0.95, 1e-8, ctx.cfg.weight_decay as f32).init();
    if let Some(dir) = &ctx.resume {
        let model = checkpoint::load_expecting(dir, &setup.model_cfg, &setup.tok, device)?;
        let opt_path = dir.join(checkpoint::OPTIMIZER);
        let optim = optim
            .load(&opt_path)
            .map_err(|e| anyhow::anyhow!("{}: corrupt optimizer state: {e}", opt_path.display()))?;
        let state = checkpoint::read_state(dir)?;
        let model = freeze(ctx, setup, model)?;
        return Ok(Start {
            model,
            optim,
            state,
        });
    }
    let rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x5EED);
    let state = TrainState {
        step: 0,
        cursor: 0,
        rng: RngState::of(&rng),
        kind: kind.to_string(),
        task: setup.task.spec.name.clone(),
        num_tokens: 0,
        flops: 0.0,
    };
    device.seed(ctx.seed);
    let model = match &ctx.init {
        Some(dir) => checkpoint::load_expecting(dir, &setup.model_cfg, &setup.tok, device)?,
        None => Gpt::new(&setup.model_cfg, device),
    };
    // A LoRA checkpoint as the start: its adapters become part of the weights (`attach`
    // merges them before adding this stage's).
    let model = match adapter_meta(ctx)? {
        Some(meta) => meta.attach(model, &setup.model_cfg),
        None if model.has_lora() => model.merged(&setup.model_cfg),
        None => model,
    };
    let model = freeze(ctx, setup, model)?;
    Ok(Start {
        model,
        optim,
        state,
    })
}

/// A LoRA stage's model with its frozen base quantised as `[model] quantize` says (QLoRA);
/// any other stage's unchanged.
fn freeze(ctx: &StageCtx<'_>, setup: &Setup, model: Gpt) -> Result<Gpt> {
    if ctx.cfg.lora.is_none() {
        return Ok(model);
    }
    let q = ctx.exp.spec.model.quantize;
    model::qlora::freeze(model, q, ctx.init.as_deref(), &setup.model_cfg)
}

/// What a LoRA stage's checkpoints record about their adapters (None for full fine-tuning):
/// the stage's LoRA settings and the model it starts from.
pub fn adapter_meta(ctx: &StageCtx<'_>) -> Result<Option<model::lora::AdapterMeta>> {
    let Some(spec) = &ctx.cfg.lora else {
        return Ok(None);
    };
    let base = ctx
        .init
        .as_ref()
        .context("a LoRA stage needs a model to adapt (`init` or [model] from)")?;
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.clone());
    let targets = spec.matrices().map_err(anyhow::Error::msg)?;
    let quantize = ctx.exp.spec.model.quantize;
    Ok(Some(model::lora::AdapterMeta {
        quantize: (quantize != model::qlora::Quantize::None).then_some(quantize),
        rank: spec.rank,
        alpha: spec.alpha(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        base,
    }))
}

/// Write a checkpoint of a training stage.
pub fn save(
    ctx: &StageCtx<'_>,
    setup: &Setup,
    model: &Gpt,
    optim: &burn::optim::ModuleOptimizer,
    state: &TrainState,
) -> Result<()> {
    runfs::checkpoint::save(&ctx.run.checkpoints(), state.step, 2, |dir| {
        let adapters = adapter_meta(ctx)?;
        checkpoint::save_model(dir, model, &setup.model_cfg, &setup.tok, adapters.as_ref())?;
        checkpoint::save_task(dir, &setup.task.spec)?;
        optim
            .save(dir.join(checkpoint::OPTIMIZER))
            .map_err(|e| anyhow::anyhow!("cannot write optimizer state: {e}"))?;
        checkpoint::save_state(dir, state)
    })
    .with_context(|| format!("checkpoint at step {}", state.step))?;
    Ok(())
}

/// A few greedy completions on held-out prompts, scored, appended to samples.jsonl: their
/// accuracy and the FLOPs sampling them took.
pub fn write_samples(
    w: &mut runfs::jsonl::JsonlWriter,
    setup: &Setup,
    model: &Gpt,
    step: u64,
    n: usize,
    device: &Device,
    rng: &mut ChaCha8Rng,
) -> Result<(f64, f64)> {
    let probs: Vec<_> = setup.task.heldout().iter().take(n).collect();
    let prompts = probs
        .iter()
        .map(|p| setup.prompt_ids(&p.prompt))
        .collect::<Result<Vec<_>>>()?;
    let opts = SampleOptions {
        temperature: 0.0,
        ..Default::default()
    }
    .with_eos(&setup.tok.eos());
    let outs = generate(model, &prompts, setup.model_cfg.ctx, &opts, rng, device);
    let flops = sampling_flops(&setup.model_cfg, &prompts, &outs);
    let mut correct = 0.0;
    for (p, c) in probs.iter().zip(outs) {
        let text = setup.tok.decode(&c.tokens);
        let r = setup.task.rewards(&p.prompt, &text);
        correct += r.accuracy;
        w.write(&Sample {
            step,
            prompt: p.prompt.clone(),
            completion: text,
            answer: p.answer.clone(),
            rewards: r.as_map(),
            reward: r.accuracy,
            truncated: !c.finished,
            ..Sample::default()
        })?;
    }
    Ok((correct / n.max(1) as f64, flops))
}

/// Run a supervised stage. `source(i)` gives example `i` of the stream as (prompt, completion);
/// `prompt_loss` also trains on prompt tokens (pretraining); `prior_flops` is what the stage
/// spent before training (sampling its dataset), counted into a fresh run's `compute/flops`.
pub fn train(
    ctx: &mut StageCtx<'_>,
    setup: &Setup,
    kind: &str,
    prompt_loss: bool,
    prior_flops: f64,
    source: &dyn Fn(u64) -> Result<(String, String)>,
) -> Result<Outcome> {
    let infer_device = model::device()?;
    let device = infer_device.clone().autodiff();
    let Start {
        mut model,
        mut optim,
        mut state,
    } = start(ctx, setup, &device, kind)?;
    if ctx.resume.is_none() {
        state.flops = prior_flops;
    }
    let (mut metrics, mut samples) = open_logs(&ctx.run)?;
    let mut rng = state.rng.restore();
    let cfg = ctx.cfg.clone();
    ctx.status.model = Some(setup.model_cfg.facts());
    ctx.reporter.message(&format!(
        "{} params, {} steps × {} sequences",
        setup.model_cfg.params(),
        cfg.steps,
        cfg.batch
    ));
    while state.step < cfg.steps {
        let t0 = Instant::now();
        let examples = (0..cfg.batch as u64)
            .map(|i| {
                let (p, c) = source(state.cursor + i)?;
                encode_example(&setup.tok, &p, &c, setup.model_cfg.ctx, prompt_loss)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = make_batch(&examples, &device);
        let loss = lm_loss(&model, &batch);
        let loss_val = loss.clone().into_scalar::<f32>() as f64;
        let (loss, block_losses) = super::common::with_block_losses(&model, &batch, loss);
        if !loss_val.is_finite() {
            anyhow::bail!(
                "loss became {loss_val} at step {}; lower lr",
                state.step + 1
            );
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad_norm = clip_grad_norm(&model, &mut grads, cfg.grad_clip);
        let lr = lr_at(state.step, &cfg);
        model = optim.step(lr, model, grads);
        let moe = super::common::balance_experts(&mut model, &setup.model_cfg);
        state.step += 1;
        state.cursor += cfg.batch as u64;
        let dt = t0.elapsed().as_secs_f64();
        let toks: u64 = examples.iter().map(|e| e.tokens.len() as u64 - 1).sum();
        state.num_tokens += toks;
        let lora = model.has_lora();
        state.flops += examples
            .iter()
            .map(|e| setup.model_cfg.train_flops(e.tokens.len() - 1, lora))
            .sum::<f64>();
        let values = [
            ("loss", loss_val),
            ("learning_rate", lr),
            ("grad_norm", grad_norm),
            ("tokens_per_sec", toks as f64 / dt),
            ("step_time", dt),
            ("num_tokens", state.num_tokens as f64),
            ("compute/flops", state.flops),
        ];
        if state.step % cfg.log_every == 0 || state.step == cfg.steps {
            let all: Vec<(&str, f64)> = values
                .iter()
                .copied()
                .chain(block_losses.iter().copied())
                .chain(moe.iter().map(|(k, v)| (k.as_str(), *v)))
                .collect();
            metrics.write(&metrics_line(state.step, &all))?;
        }
        let stopping = ctx.should_stop();
        let last = state.step == cfg.steps;
        if cfg.sample_every > 0 && (state.step % cfg.sample_every == 0 || last) {
            let (acc, flops) = write_samples(
                &mut samples,
                setup,
                &model.valid(),
                state.step,
                8,
                &infer_device,
                &mut rng,
            )?;
            state.flops += flops;
            metrics.write(&metrics_line(
                state.step,
                &[("samples/accuracy", acc), ("compute/flops", state.flops)],
            ))?;
        }
        ctx.progress(state.step, cfg.steps, &[("loss", loss_val), ("lr", lr)]);
        if state.step % cfg.checkpoint_every == 0 || last || stopping {
            state.rng = RngState::of(&rng);
            save(ctx, setup, &model, &optim, &state)?;
        }
        if stopping && !last {
            return Ok(Outcome::Stopped);
        }
    }
    if state.step == cfg.steps && runfs::checkpoint::latest(&ctx.run.path).is_none() {
        save(ctx, setup, &model, &optim, &state)?;
    }
    Ok(Outcome::Done)
}
