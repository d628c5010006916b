//! `grpo`: Group Relative Policy Optimization (DeepSeekMath), with TRL's variants as options.
//! Each step samples `group_size` completions for each of `prompts` training prompts, scores them
//! with the weighted rule-based rewards, turns rewards into group-relative advantages, and takes
//! `num_iterations` clipped policy-gradient steps on that rollout batch (KL to the frozen `init`
//! model when `beta > 0`). Every completion is logged to `samples.jsonl` with its rewards and
//! advantage; every TRL-named metric (README, "Run folders") is logged each step.

use super::common::{
    Setup, clip_grad_norm, continuation_logprobs, lr_at, metrics_line, open_logs, sampling_flops,
    target_logprobs,
};
use super::context::{Outcome, StageCtx};
pub use super::grpo_math::LossConfig;
use super::grpo_math::{self, advantages, informative_groups, mean_std, overlong_penalty};
use super::reward_program::{Request, RewardPrograms};
use super::supervised;
use crate::model::checkpoint::{self, RngState};
use crate::model::sample::{Completion, generate};
use crate::model::tokenizer::PAD;
use crate::model::{self, Gpt, Prefix};
use crate::runfs::jsonl::JsonlWriter;
use crate::runfs::records::Sample;
use crate::spec::{AdvEstimator, IsLevel, KlEstimator, LossType, SamplerCorrection, StageConfig};
use crate::tasks::{Problem, Rewards};
use anyhow::Result;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Instant;

/// One prompt's group of completions.
struct Group {
    problem: Problem,
    prompt_ids: Vec<u32>,
    rollouts: Vec<Rollout>,
}

struct Rollout {
    completion: Completion,
    text: String,
    rewards: Rewards,
    total: f64,
    /// External programs' rewards (and their components as `name/component`).
    program: BTreeMap<String, f64>,
}

/// The weighted reward of one completion (plus DAPO's overlong shaping when configured);
/// `coin` is the completion's fair coin (0 or 1) for the `random` control reward.
pub fn total_reward(cfg: &StageConfig, r: &Rewards, len: usize, max_len: usize, coin: f64) -> f64 {
    let mut total = 0.0;
    for (name, w) in cfg.reward_weights() {
        let v = match name {
            "accuracy" => r.accuracy,
            "format" => r.format,
            "partial" => r.partial,
            "length" => 1.0 - len as f64 / max_len.max(1) as f64,
            "random" => coin,
            "incorrect" => 1.0 - r.accuracy,
            _ => 0.0,
        };
        total += w * v;
    }
    total + overlong_penalty(len, max_len, cfg.overlong_buffer, cfg.overlong_penalty)
}

/// Inputs for the tensor loss, all `[n, t]` except `adv` (`[n, 1]`).
pub struct LossInputs {
    pub logp: Tensor<2>,
    pub old_logp: Tensor<2>,
    pub ref_logp: Option<Tensor<2>>,
    pub adv: Tensor<2>,
    pub mask: Tensor<2>,
    /// Each token's sampler-correction weight (`grpo_math::sampler_weights`); `None`: 1.
    pub weight: Option<Tensor<2>>,
    /// Each token's entropy mask (`top_entropy_quantile`, `grpo_math::high_entropy_mask`);
    /// `None`: 1.
    pub keep: Option<Tensor<2>>,
}

/// Per-token statistics that go into the metrics (micro-batches' statistics add up).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossStats {
    pub kl: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
}

impl std::ops::AddAssign for LossStats {
    fn add_assign(&mut self, o: LossStats) {
        self.kl += o.kl;
        self.clip_low += o.clip_low;
        self.clip_high += o.clip_high;
        self.clip_region += o.clip_region;
    }
}

/// Sizes of the whole rollout batch. A micro-batch's loss and statistics are divided by these,
/// so the micro-batches of one batch add up to the batch's loss and statistics.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    /// Completions in the batch.
    pub rows: usize,
    /// Completion tokens in the batch (the mask's sum).
    pub tokens: f64,
}

impl Norm {
    /// The sizes of a batch that is trained in one piece.
    pub fn of(mask: &Tensor<2>) -> Norm {
        Norm {
            rows: mask.dims()[0],
            tokens: mask.clone().sum().into_scalar::<f32>() as f64,
        }
    }
}

/// Token counts per micro-batch: rows are sorted by length and cut so that no micro-batch pads
/// more than this many tokens (short completions are not padded to the longest one).
const MICRO_BATCH_TOKENS: usize = 4096;

/// Row indices grouped into micro-batches of similar length (see [`MICRO_BATCH_TOKENS`]), of
/// at most `max_rows` rows each (0: no limit but the tokens').
pub fn micro_batches(lens: &[usize], max_rows: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so row i is the longest of the chunk if it joins.
        let full = max_rows > 0 && cur.len() == max_rows;
        if !cur.is_empty() && (full || (cur.len() + 1) * lens[i] > MICRO_BATCH_TOKENS) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Row indices in micro-batches for an update that runs each prompt once: every micro-batch's
/// rows continue prompts of one length, and a prompt's rows stay together where they fit. Rows
/// keep their order within a prompt length (`completion_rows` gives a group's rows together);
/// at most `max_rows` rows each (0: no limit but the tokens'), and no more than
/// [`MICRO_BATCH_TOKENS`] tokens of padded rows after their prompts.
pub fn prompt_batches(prompt_lens: &[usize], lens: &[usize], max_rows: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| prompt_lens[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let (mut cur, mut longest): (Vec<usize>, usize) = (Vec::new(), 0);
    for i in order {
        let after = lens[i].saturating_sub(prompt_lens[i]);
        let other_prompt = cur
            .first()
            .is_some_and(|&c| prompt_lens[c] != prompt_lens[i]);
        let full = max_rows > 0 && cur.len() == max_rows;
        let tokens = (cur.len() + 1) * longest.max(after);
        if !cur.is_empty() && (other_prompt || full || tokens > MICRO_BATCH_TOKENS) {
            out.push(std::mem::take(&mut cur));
            longest = 0;
        }
        cur.push(i);
        longest = longest.max(after);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The GRPO loss as tensors (the host specification is `grpo_math::reference_loss`), normalised
/// by the whole batch's sizes `norm` (`Norm::of(&mask)` when the batch is one piece).
pub fn grpo_loss(x: LossInputs, c: &LossConfig, norm: Norm) -> (Tensor<1>, LossStats) {
    let (eps, eps_high) = (c.epsilon, c.epsilon_high);
    let log_ratio = x.logp.clone() - x.old_logp;
    let log_ratio = match c.level {
        IsLevel::Token => log_ratio,
        // GSPO: the mean log-ratio of each sequence's tokens, `[rows, 1]`.
        IsLevel::Sequence => {
            (log_ratio * x.mask.clone()).sum_dim(1) / x.mask.clone().sum_dim(1).clamp_min(1.0)
        }
    };
    let ratio = log_ratio.exp();
    let mut per_token = match c.loss_type {
        // CISPO: the capped ratio is a constant weight on the log-likelihood's gradient.
        LossType::Cispo => {
            let w = ratio.clone().clamp_max(eps_high).detach();
            (w * x.adv.clone() * x.logp.clone()).neg()
        }
        _ => {
            let unclipped = ratio.clone() * x.adv.clone();
            let clipped = ratio.clone().clamp(1.0 - eps, 1.0 + eps_high) * x.adv.clone();
            unclipped.min_pair(clipped).neg()
        }
    };
    if let Some(k) = x.keep {
        per_token = per_token * k;
    }
    if let Some(w) = x.weight {
        per_token = per_token * w;
    }
    let tokens = norm.tokens;
    let mut kl_mean = 0.0;
    if let (Some(rf), true) = (x.ref_logp, c.beta > 0.0) {
        let kl = match c.kl {
            KlEstimator::K1 => x.logp.clone() - rf,
            KlEstimator::K2 => (x.logp.clone() - rf).powf_scalar(2.0).mul_scalar(0.5),
            KlEstimator::K3 => {
                let d = rf - x.logp.clone();
                d.clone().exp() - d - 1.0
            }
        };
        kl_mean = (kl.clone().detach() * x.mask.clone())
            .sum()
            .into_scalar::<f32>() as f64
            / tokens.max(1.0);
        per_token = per_token + kl.mul_scalar(c.beta);
    }
    // Clip statistics (TRL's clip_ratio/*), on detached values; CISPO's "clipped" tokens are
    // those whose weight the cap lowered.
    let r = ratio.detach();
    let adv_neg = x.adv.clone().lower_elem(0.0).float();
    let adv_pos = x.adv.greater_elem(0.0).float();
    let (low_at, high_at) = match c.loss_type {
        LossType::Cispo => (f64::NEG_INFINITY, eps_high),
        _ => (1.0 - eps, 1.0 + eps_high),
    };
    let low = r.clone().lower_elem(low_at).float() * adv_neg * x.mask.clone();
    let high = r.greater_elem(high_at).float() * adv_pos * x.mask.clone();
    let low_n = low.clone().sum().into_scalar::<f32>() as f64;
    let high_n = high.sum().into_scalar::<f32>() as f64;
    let masked = per_token * x.mask.clone();
    let n = norm.rows;
    let loss = match c.loss_type {
        LossType::Grpo => {
            let per_seq = masked.sum_dim(1) / x.mask.sum_dim(1).clamp_min(1.0);
            per_seq.sum().div_scalar(n.max(1) as f64)
        }
        LossType::DrGrpo => masked.sum().div_scalar((n.max(1) * c.budget.max(1)) as f64),
        LossType::Dapo | LossType::Cispo => masked.sum().div_scalar(tokens.max(1.0)),
    };
    let t = tokens.max(1.0);
    (
        loss.reshape([1]),
        LossStats {
            kl: kl_mean,
            clip_low: low_n / t,
            clip_high: high_n / t,
            clip_region: (low_n + high_n) / t,
        },
    )
}

/// One micro-batch of the rollout batch, ready for the loss.
struct Part {
    /// The prompts, run once, when the rows below are only what follows them.
    prefix: Option<Prefix>,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    mask: Tensor<2>,
    count: usize,
    adv: Tensor<2>,
    ref_logp: Option<Tensor<2>>,
    old_logp: Option<Tensor<2>>,
    /// The sampler's log-probability of each completion target, by flat position `row · t + j`.
    sampler_logp: Vec<(usize, f32)>,
}

/// Each completion of `groups` with its prompt, in group order.
fn completion_rows<'a>(
    groups: impl Iterator<Item = &'a Group>,
) -> Vec<(&'a [u32], &'a Completion)> {
    groups
        .flat_map(|gr| {
            gr.rollouts
                .iter()
                .map(move |r| (gr.prompt_ids.as_slice(), &r.completion))
        })
        .collect()
}

/// A tensor's values on the host, row-major (empty if they cannot be read as f32).
fn host_f32(x: Tensor<2>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Right-padded training rows for the rollouts.
struct RolloutBatch {
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    /// Completion targets that count in the loss.
    mask: Tensor<2>,
    count: usize,
    sampler_logp: Vec<(usize, f32)>,
}

/// Right-padded training rows for the rollouts: inputs, targets, the completion mask and the
/// sampler's log-probabilities of the completion targets. The first `skip` positions of every
/// row are left out (a shared prompt's, which then runs on its own: all of it but its last
/// token, whose target is the first completion token).
fn rollout_batch(
    rows: &[(&[u32], &Completion)],
    skip: usize,
    mask_truncated: bool,
    device: &Device,
) -> RolloutBatch {
    let seqs: Vec<(Vec<u32>, usize, &Completion)> = rows
        .iter()
        .map(|(p, c)| {
            let mut s = p.to_vec();
            s.extend(&c.tokens);
            if let Some(eos) = c.eos.filter(|_| c.finished) {
                s.push(eos);
            }
            (s, p.len(), *c)
        })
        .collect();
    let t = seqs
        .iter()
        .map(|s| s.0.len() - 1 - skip)
        .max()
        .unwrap_or(1)
        .max(1);
    let n = seqs.len();
    let (mut inp, mut tgt, mut msk) = (Vec::new(), Vec::new(), Vec::new());
    let mut sampler_logp = Vec::new();
    let mut count = 0;
    for (row, (s, plen, c)) in seqs.iter().enumerate() {
        let keep = !mask_truncated || c.finished;
        for j in 0..t {
            let at = skip + j;
            if at + 1 < s.len() {
                inp.push(s[at] as i64);
                tgt.push(s[at + 1] as i64);
                let completion = at + 1 >= *plen;
                if let Some(lp) = c
                    .logprobs
                    .get((at + 1).wrapping_sub(*plen))
                    .filter(|_| completion)
                {
                    sampler_logp.push((row * t + j, *lp));
                }
                let m = keep && completion;
                count += m as usize;
                msk.push(if m { 1.0f32 } else { 0.0 });
            } else {
                inp.push(PAD as i64);
                tgt.push(PAD as i64);
                msk.push(0.0);
            }
        }
    }
    RolloutBatch {
        inputs: Tensor::from_data(TensorData::new(inp, [n, t]), device),
        targets: Tensor::from_data(TensorData::new(tgt, [n, t]), device),
        mask: Tensor::from_data(TensorData::new(msk, [n, t]), device),
        count,
        sampler_logp,
    }
}

fn stats(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = xs.collect();
    mean_std(&v)
}

/// What the metrics keep of one sampled completion (kept or dropped by dynamic sampling).
struct Sampled {
    rewards: Rewards,
    total: f64,
    len: usize,
    finished: bool,
    /// Whether its answer is the one its own trace arrives at (tasks that can tell).
    agrees: Option<bool>,
}

/// One step's rollouts: the groups to train on, and what was sampled to get them.
struct Rollouts {
    groups: Vec<Group>,
    sampled: Vec<Sampled>,
    /// Groups sampled, and those among them whose rewards were all equal.
    sampled_groups: usize,
    zero_std_groups: usize,
    /// FLOPs of sampling every group, the dropped ones included.
    flops: f64,
}

/// What a GRPO step works with besides the model: the stage's setup and settings, the devices
/// (inference, and autodiff for training) and the frozen reference.
struct Grpo<'a> {
    setup: &'a Setup,
    cfg: &'a StageConfig,
    loss: LossConfig,
    infer: Device,
    device: Device,
    reference: Option<Gpt>,
    /// The stage's external reward programs (none when it has no `command` rewards).
    programs: std::cell::RefCell<RewardPrograms>,
}

/// A step's groups with the advantage of each completion, in group order.
struct Scored<'a> {
    groups: Vec<&'a Group>,
    adv: Vec<f64>,
}

/// The policy update's results for the metrics.
#[derive(Default)]
struct Update {
    loss: f64,
    grad_norm: f64,
    stats: LossStats,
    entropy: f64,
    tokens: usize,
    /// FLOPs of the update: training passes, and the frozen models' forward passes.
    flops: f64,
    /// Trainer minus sampler log-probability of each completion token, first iteration.
    drift: Vec<f64>,
    /// The sampler-correction weights applied (empty when the stage does not correct).
    is_ratio: Vec<f64>,
}

pub fn run(ctx: &mut StageCtx<'_>) -> Result<Outcome> {
    let setup = Setup::new(ctx.exp)?;
    let infer = model::device()?;
    let device = infer.clone().autodiff();
    let supervised::Start {
        mut model,
        mut optim,
        mut state,
    } = supervised::start(ctx, &setup, &device, "grpo")?;
    let cfg = ctx.cfg.clone();
    let reference: Option<Gpt> = match (&ctx.init, cfg.beta > 0.0) {
        (Some(dir), true) => Some(checkpoint::load_expecting(
            dir,
            &setup.model_cfg,
            &setup.tok,
            &infer,
        )?),
        _ => None,
    };
    for (name, p) in cfg.reward_programs() {
        ctx.reporter.message(&format!(
            "reward `{name}` (weight {}) from the program: {}",
            p.weight,
            p.shown()
        ));
    }
    let programs = RewardPrograms::start(cfg.reward_programs(), &ctx.exp.dir)?;
    let grpo = Grpo {
        setup: &setup,
        cfg: &cfg,
        loss: LossConfig::new(&cfg, setup.model_cfg.ctx),
        infer,
        device,
        reference,
        programs: std::cell::RefCell::new(programs),
    };
    let (mut metrics, mut samples) = open_logs(&ctx.run)?;
    let mut rng = state.rng.restore();
    ctx.status.model = Some(setup.model_cfg.facts());
    ctx.reporter.message(&format!(
        "{} prompts × {} completions per step, {} steps",
        cfg.prompts, cfg.group_size, cfg.steps
    ));
    while state.step < cfg.steps {
        let t0 = Instant::now();
        let policy = model.valid();
        let rollouts = grpo.collect_rollouts(&policy, &mut state.cursor, &mut rng)?;
        // The decoder's kept buffers would add to the update's peak memory.
        crate::model::sample::release_buffers();
        let rollout_time = t0.elapsed().as_secs_f64();
        let (adv, scored, reward_kl) = grpo.advantages_of(&rollouts.groups);
        let lr = lr_at(state.step, &cfg);
        let update;
        (model, update) = grpo.update_policy(model, &mut optim, &policy, scored, lr, state.step)?;
        let moe = super::common::balance_experts(&mut model, &setup.model_cfg);
        state.step += 1;
        state.num_tokens += update.tokens as u64;
        state.flops += rollouts.flops + update.flops;
        let times = (t0.elapsed().as_secs_f64(), rollout_time);
        let mut line = step_metrics(&rollouts, &adv, &update, lr, times, state.num_tokens);
        if let Some(k) = reward_kl {
            // The per-token KL of the rewards' term, under the loss term's name.
            for (name, v) in &mut line {
                if *name == "kl" {
                    *v = k;
                }
            }
        }
        line.push(("compute/flops", state.flops));
        if state.step % cfg.log_every == 0 || state.step == cfg.steps {
            let means = program_means(&rollouts.groups);
            let all: Vec<(&str, f64)> = line
                .iter()
                .copied()
                .chain(means.iter().map(|(k, v)| (k.as_str(), *v)))
                .chain(moe.iter().map(|(k, v)| (k.as_str(), *v)))
                .collect();
            metrics.write(&metrics_line(state.step, &all))?;
        }
        if cfg.sample_every > 0 && (state.step % cfg.sample_every == 0 || state.step == cfg.steps) {
            log_samples(&mut samples, state.step, &rollouts.groups, &adv)?;
        }
        let stopping = ctx.should_stop();
        let last = state.step == cfg.steps;
        let value = |name: &str| line.iter().find(|(n, _)| *n == name).map_or(0.0, |v| v.1);
        ctx.progress(
            state.step,
            cfg.steps,
            &[
                ("reward", value("reward")),
                ("acc", value("rewards/accuracy/mean")),
                ("len", value("completions/mean_length")),
            ],
        );
        if state.step % cfg.checkpoint_every == 0 || last || stopping {
            state.rng = RngState::of(&rng);
            supervised::save(ctx, &setup, &model, &optim, &state)?;
        }
        if stopping && !last {
            return Ok(Outcome::Stopped);
        }
    }
    Ok(Outcome::Done)
}

/// External programs' rewards as metrics: `rewards/<name>/mean` over the kept groups.
fn program_means(groups: &[Group]) -> Vec<(String, f64)> {
    let mut program: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in groups.iter().flat_map(|g| &g.rollouts) {
        for (k, v) in &r.program {
            let e = program.entry(format!("rewards/{k}/mean")).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    program
        .into_iter()
        .map(|(k, (sum, n))| (k, sum / n as f64))
        .collect()
}

impl Grpo<'_> {
    /// Phase 2: each completion's advantage (after the KL leaves its reward, with
    /// `kl_in_reward`), and the groups the update trains on with theirs (zero-variance
    /// filtering drops the groups whose rewards are all equal from the loss and its
    /// normalisers, not only their advantages). Also the mean per-token KL in the rewards.
    fn advantages_of<'g>(&self, groups: &'g [Group]) -> (Vec<f64>, Scored<'g>, Option<f64>) {
        let (cfg, g) = (self.cfg, self.cfg.group_size);
        let mut totals: Vec<f64> = groups
            .iter()
            .flat_map(|gr| gr.rollouts.iter().map(|r| r.total))
            .collect();
        // verl's use_kl_in_reward: each completion's KL to the reference, summed over its
        // tokens, leaves its reward (the loss then has no KL term).
        let reward_kl = cfg.kl_in_reward.then(|| {
            let (kl, mean) = self.completion_kl(groups);
            for (t, k) in totals.iter_mut().zip(&kl) {
                *t -= cfg.beta * k;
            }
            mean
        });
        let adv = match cfg.adv_estimator {
            AdvEstimator::Grpo => advantages(&totals, g, cfg.scale_rewards),
            AdvEstimator::GrpoPassk => grpo_math::passk_advantages(&totals, g, cfg.scale_rewards),
        };
        let kept: Vec<usize> = if cfg.zero_variance_filter {
            informative_groups(&totals, g)
        } else {
            (0..groups.len()).collect()
        };
        let scored = Scored {
            groups: kept.iter().map(|&i| &groups[i]).collect(),
            adv: kept
                .iter()
                .flat_map(|&i| adv[i * g..(i + 1) * g].iter().copied())
                .collect(),
        };
        (adv, scored, reward_kl)
    }

    /// Phase 1: `prompts` groups of `group_size` completions from `policy`, scored. With
    /// dynamic sampling, groups whose rewards are all equal are dropped and new prompts
    /// sampled in their place (at most four rounds).
    fn collect_rollouts(
        &self,
        policy: &Gpt,
        cursor: &mut u64,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<Rollouts> {
        let (cfg, setup, g) = (self.cfg, self.setup, self.cfg.group_size);
        let ctx_len = setup.model_cfg.ctx;
        let opts = setup.sampling(cfg);
        let mut out = Rollouts {
            groups: Vec::new(),
            sampled: Vec::new(),
            sampled_groups: 0,
            zero_std_groups: 0,
            flops: 0.0,
        };
        for _attempt in 0..4 {
            let need = cfg.prompts - out.groups.len();
            let probs: Vec<Problem> = (0..need as u64)
                .map(|i| setup.task.train_problem(*cursor + i))
                .collect();
            *cursor += need as u64;
            let batch = setup.grouped_prompts(&probs, g)?;
            let prompt_ids: Vec<Vec<u32>> = batch.iter().step_by(g).cloned().collect();
            // The length the reward's length and overlong terms measure against.
            let max_len = if cfg.max_new_tokens == 0 {
                ctx_len - batch.iter().map(Vec::len).max().unwrap_or(0)
            } else {
                cfg.max_new_tokens
            };
            let outs = generate(policy, &batch, ctx_len, &opts, rng, &self.infer);
            out.flops += sampling_flops(&setup.model_cfg, &batch, &outs);
            // The `random` control's coins, drawn only when it is weighted (so other runs
            // sample exactly as before).
            let coins: Vec<f64> = if cfg.reward_weights().any(|(n, _)| n == "random") {
                (0..outs.len())
                    .map(|_| rng.random_bool(0.5) as u8 as f64)
                    .collect()
            } else {
                vec![0.0; outs.len()]
            };
            let mut outs = outs.into_iter().zip(coins);
            for (problem, prompt_ids) in probs.into_iter().zip(prompt_ids) {
                let mut rollouts: Vec<Rollout> = (&mut outs)
                    .take(g)
                    .map(|(c, coin)| self.score(&problem, c, max_len, coin))
                    .collect();
                self.score_with_programs(&problem, &mut rollouts)?;
                out.sampled.extend(rollouts.iter().map(|r| Sampled {
                    rewards: r.rewards,
                    total: r.total,
                    len: r.completion.tokens.len(),
                    finished: r.completion.finished,
                    agrees: setup.task.agrees_with_trace(&r.text),
                }));
                let totals: Vec<f64> = rollouts.iter().map(|r| r.total).collect();
                let informative = !informative_groups(&totals, g).is_empty();
                out.sampled_groups += 1;
                out.zero_std_groups += (!informative) as usize;
                if informative || !cfg.dynamic_sampling {
                    out.groups.push(Group {
                        problem,
                        prompt_ids,
                        rollouts,
                    });
                }
            }
            if !cfg.dynamic_sampling || out.groups.len() >= cfg.prompts {
                break;
            }
        }
        Ok(out)
    }

    /// Add the external programs' weighted rewards to one group's totals (one batch each).
    fn score_with_programs(&self, problem: &Problem, rollouts: &mut [Rollout]) -> Result<()> {
        let mut programs = self.programs.borrow_mut();
        if programs.is_empty() {
            return Ok(());
        }
        let task = self.setup.task.spec.name.as_str();
        let batch: Vec<Request<'_>> = rollouts
            .iter()
            .map(|r| Request {
                prompt: &problem.prompt,
                completion: &r.text,
                answer: &problem.answer,
                task,
            })
            .collect();
        let scored = programs.score(&batch)?;
        for (r, (replies, weighted)) in rollouts.iter_mut().zip(scored) {
            r.total += weighted;
            r.program = replies
                .into_iter()
                .flat_map(|(name, reply)| {
                    let parts: Vec<(String, f64)> = reply
                        .components
                        .into_iter()
                        .map(|(k, v)| (format!("{name}/{k}"), v))
                        .collect();
                    std::iter::once((name, reply.reward)).chain(parts)
                })
                .collect();
        }
        Ok(())
    }

    /// A completion's text and rewards.
    fn score(&self, problem: &Problem, c: Completion, max_len: usize, coin: f64) -> Rollout {
        let text = self.setup.tok.decode(&c.tokens);
        let rewards = self.setup.task.rewards(&problem.prompt, &text);
        let total = total_reward(self.cfg, &rewards, c.tokens.len(), max_len, coin);
        Rollout {
            completion: c,
            text,
            rewards,
            total,
            program: BTreeMap::new(),
        }
    }

    /// Phase 3 (after the advantages): `num_iterations` optimiser steps on the scored groups,
    /// each over micro-batches of similar length whose gradients add up to the batch's.
    fn update_policy(
        &self,
        mut model: Gpt,
        optim: &mut burn::optim::ModuleOptimizer,
        policy: &Gpt,
        scored: Scored<'_>,
        lr: f64,
        step: u64,
    ) -> Result<(Gpt, Update)> {
        let Scored { groups, adv } = scored;
        let mut up = Update::default();
        if groups.is_empty() {
            return Ok((model, up));
        }
        let parts = self.micro_batches(policy, &groups, &adv);
        up.tokens = parts.iter().map(|p| p.count).sum();
        let lens = groups.iter().flat_map(|g| {
            g.rollouts
                .iter()
                .map(|r| g.prompt_ids.len() + r.completion.tokens.len())
        });
        let (c, lora) = (&self.setup.model_cfg, model.has_lora());
        let frozen = self.reference.is_some() as usize + (self.cfg.num_iterations > 1) as usize;
        up.flops = lens
            .map(|l| {
                self.cfg.num_iterations as f64 * c.train_flops(l, lora)
                    + frozen as f64 * c.forward_flops(l)
            })
            .sum();
        let norm = Norm {
            rows: groups.iter().map(|g| g.rollouts.len()).sum(),
            tokens: up.tokens as f64,
        };
        // Each part's sampler-correction weights, from the first iteration's log-probabilities
        // (the policy that sampled), kept for the later iterations as TRL keeps them.
        let mut weights: Vec<Option<Tensor<2>>> = vec![None; parts.len()];
        for it in 0..self.cfg.num_iterations {
            let mut acc = GradientsAccumulator::<Gpt>::new();
            let (mut loss_sum, mut entropy_sum) = (0.0, 0.0);
            up.stats = LossStats::default();
            for (pi, part) in parts.iter().enumerate() {
                let (loss, entropy) =
                    self.part_loss(&model, part, it, norm, &mut weights[pi], &mut up);
                // DeepSeekMoE's balance loss, when `[model.moe] aux_loss` is on.
                let loss = match model.take_aux_loss() {
                    Some(aux) => loss + aux,
                    None => loss,
                };
                entropy_sum += entropy;
                loss_sum += loss.clone().into_scalar::<f32>() as f64;
                acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            up.loss = loss_sum;
            if it == 0 {
                up.entropy = entropy_sum / up.tokens.max(1) as f64;
            }
            if !up.loss.is_finite() {
                anyhow::bail!(
                    "GRPO loss became {} at step {}; lower lr",
                    up.loss,
                    step + 1
                );
            }
            let mut grads = acc.grads();
            up.grad_norm = clip_grad_norm(&model, &mut grads, self.cfg.grad_clip);
            model = optim.step(lr, model, grads);
        }
        Ok((model, up))
    }

    /// One micro-batch's loss in iteration `it`, its entropy bonus included, and the token
    /// entropy it adds to the step's metric (first iteration). The first iteration also records
    /// the sampler drift and the part's sampler-correction `weight`, kept for the later ones
    /// as TRL keeps them.
    fn part_loss(
        &self,
        model: &Gpt,
        part: &Part,
        it: usize,
        norm: Norm,
        weight: &mut Option<Tensor<2>>,
        up: &mut Update,
    ) -> (Tensor<1>, f64) {
        let mut entropy = 0.0;
        let top_entropy = self.cfg.top_entropy_quantile < 1.0;
        let want_bonus = self.cfg.entropy_coef > 0.0;
        let (logp, h) = continuation_logprobs(
            model,
            part.prefix.as_ref(),
            part.inputs.clone(),
            part.targets.clone(),
            self.cfg.temperature,
            it == 0 || top_entropy || want_bonus,
        );
        let keep = match (&h, top_entropy) {
            (Some(h), true) => Some(self.entropy_keep(&h.clone().detach(), &part.mask)),
            _ => None,
        };
        if let (Some(h), 0) = (&h, it) {
            // Token entropy of the sampling distribution.
            entropy = (h.clone().detach() * part.mask.clone())
                .sum()
                .into_scalar::<f32>() as f64;
        }
        // The entropy bonus: the mean entropy of the tokens the policy loss trains on
        // in this micro-batch (TRL's), weighted by the micro-batch's share of the batch's
        // tokens so that micro-batches add up.
        let bonus = h.filter(|_| want_bonus).map(|h| {
            let on = match &keep {
                Some(k) => part.mask.clone() * k.clone(),
                None => part.mask.clone(),
            };
            let kept = on.clone().sum().into_scalar::<f32>().max(1.0) as f64;
            let share = part.count as f64 / norm.tokens.max(1.0);
            (h * on).sum().mul_scalar(share / kept)
        });
        if it == 0 {
            // The trainer's log-probabilities against the sampler's, before any update:
            // they differ only by numerics unless the two paths disagree.
            let lp = logp
                .clone()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>();
            if let Ok(lp) = lp {
                for &(i, s) in &part.sampler_logp {
                    up.drift.push(lp[i] as f64 - s as f64);
                }
                *weight = self.sampler_weights(part, &lp, &mut up.is_ratio);
            }
        }
        let old_logp = match &part.old_logp {
            Some(o) => o.clone(),
            None => logp.clone().detach(),
        };
        let inputs = LossInputs {
            logp,
            old_logp,
            ref_logp: part.ref_logp.clone(),
            adv: part.adv.clone(),
            mask: part.mask.clone(),
            weight: weight.clone(),
            keep,
        };
        let (mut loss, st) = grpo_loss(inputs, &self.loss, norm);
        if let Some(b) = bonus {
            loss = loss - b.reshape([1]).mul_scalar(self.cfg.entropy_coef);
        }
        up.stats += st;
        (loss, entropy)
    }

    /// A part's `top_entropy_quantile` mask as a `[rows, t]` tensor: 1 for the completion
    /// tokens whose entropy `h` is in the micro-batch's top fraction (as TRL computes it per
    /// micro-batch), 0 elsewhere.
    fn entropy_keep(&self, h: &Tensor<2>, mask: &Tensor<2>) -> Tensor<2> {
        let [rows, t] = h.dims();
        let (hv, mv) = (host_f32(h.clone()), host_f32(mask.clone()));
        let rows_of = |v: &[f32]| -> Vec<Vec<f64>> {
            v.chunks(t.max(1))
                .map(|r| r.iter().map(|&x| x as f64).collect())
                .collect()
        };
        let valid: Vec<Vec<bool>> = rows_of(&mv)
            .into_iter()
            .map(|r| r.into_iter().map(|x| x > 0.0).collect())
            .collect();
        let keep =
            grpo_math::high_entropy_mask(&rows_of(&hv), &valid, self.cfg.top_entropy_quantile);
        let flat: Vec<f32> = keep.into_iter().flatten().map(|x| x as f32).collect();
        Tensor::from_data(TensorData::new(flat, [rows, t]), &self.device)
    }

    /// A part's sampler-correction weights as a `[rows, t]` tensor (`None` when the stage
    /// does not correct), from the trainer's log-probabilities `lp` (flat, row-major); the
    /// weights of the sampled tokens (token modes) or of the rows (sequence modes) are
    /// appended to `seen` for the metrics.
    fn sampler_weights(&self, part: &Part, lp: &[f32], seen: &mut Vec<f64>) -> Option<Tensor<2>> {
        let mode = self.cfg.sampler_correction;
        if mode == SamplerCorrection::Off {
            return None;
        }
        let [rows, t] = part.inputs.dims();
        let mut diff = vec![vec![None; t]; rows];
        for &(i, s) in &part.sampler_logp {
            diff[i / t][i % t] = Some(lp[i] as f64 - s as f64);
        }
        let w = grpo_math::sampler_weights(&diff, mode, self.cfg.sampler_correction_cap);
        let sequence = matches!(
            mode,
            SamplerCorrection::SequenceTruncate | SamplerCorrection::SequenceMask
        );
        for (d, w) in diff.iter().zip(&w) {
            if sequence {
                seen.extend(w.first().filter(|_| d.iter().any(Option::is_some)));
            } else {
                seen.extend(d.iter().zip(w).filter(|(d, _)| d.is_some()).map(|(_, w)| w));
            }
        }
        let flat: Vec<f32> = w.into_iter().flatten().map(|x| x as f32).collect();
        Some(Tensor::from_data(
            TensorData::new(flat, [rows, t]),
            &self.device,
        ))
    }

    /// Each completion's KL to the reference (`kl_estimator` over its completion tokens, the
    /// sampler's log-probabilities against the reference's), in group order, and the mean per
    /// token.
    fn completion_kl(&self, groups: &[Group]) -> (Vec<f64>, f64) {
        let rows = completion_rows(groups.iter());
        let mut kl = vec![0.0; rows.len()];
        let (mut sum, mut tokens) = (0.0, 0usize);
        let Some(reference) = &self.reference else {
            return (kl, 0.0);
        };
        let lens: Vec<usize> = rows.iter().map(|(p, c)| p.len() + c.tokens.len()).collect();
        for idx in micro_batches(&lens, self.cfg.micro_batch) {
            let sub: Vec<(&[u32], &Completion)> = idx.iter().map(|&i| rows[i]).collect();
            let b = rollout_batch(&sub, 0, self.cfg.mask_truncated, &self.infer);
            let t = b.inputs.dims()[1];
            let lp = target_logprobs(reference, b.inputs, b.targets, self.cfg.temperature);
            let (lp, mask) = (host_f32(lp), host_f32(b.mask));
            for &(i, s) in &b.sampler_logp {
                if mask.get(i).is_some_and(|&m| m > 0.0) {
                    let k = grpo_math::kl(self.cfg.kl_estimator, s as f64, lp[i] as f64);
                    kl[idx[i / t]] += k;
                    sum += k;
                    tokens += 1;
                }
            }
        }
        (kl, sum / tokens.max(1) as f64)
    }

    /// The groups' completions as micro-batches, with their advantages and the
    /// log-probabilities under the models that are not trained (reference, and the sampling
    /// policy when `num_iterations > 1`), computed on the inference device. Where the model
    /// allows it, each micro-batch runs its prompts once ([`prompt_batches`]); otherwise rows of
    /// similar length go together ([`micro_batches`]).
    fn micro_batches(&self, policy: &Gpt, groups: &[&Group], adv: &[f64]) -> Vec<Part> {
        let (infer, device) = (&self.infer, &self.device);
        let rows = completion_rows(groups.iter().copied());
        let lens: Vec<usize> = rows.iter().map(|(p, c)| p.len() + c.tokens.len()).collect();
        let prompt_lens: Vec<usize> = rows.iter().map(|(p, _)| p.len()).collect();
        let shared = policy.shares_prefixes() && prompt_lens.iter().all(|&l| l >= 2);
        let batches = match shared {
            true => prompt_batches(&prompt_lens, &lens, self.cfg.micro_batch),
            false => micro_batches(&lens, self.cfg.micro_batch),
        };
        batches
            .into_iter()
            .map(|idx| {
                let sub: Vec<(&[u32], &Completion)> = idx.iter().map(|&i| rows[i]).collect();
                let prefix = shared.then(|| prompts_of(&sub, device));
                let skip = prefix.as_ref().map_or(0, |p| p.tokens.dims()[1]);
                let RolloutBatch {
                    inputs,
                    targets,
                    mask,
                    count,
                    sampler_logp,
                } = rollout_batch(&sub, skip, self.cfg.mask_truncated, device);
                let adv_t: Tensor<2> = Tensor::from_data(
                    TensorData::new(
                        idx.iter().map(|&i| adv[i] as f32).collect::<Vec<_>>(),
                        [idx.len(), 1],
                    ),
                    device,
                );
                let frozen = |m: &Gpt| {
                    let (lp, _) = continuation_logprobs(
                        m,
                        prefix.as_ref().map(|p| p.to_device(infer)).as_ref(),
                        Tensor::from_data(inputs.to_data(), infer),
                        Tensor::from_data(targets.to_data(), infer),
                        self.cfg.temperature,
                        false,
                    );
                    Tensor::<2>::from_data(lp.into_data(), device)
                };
                Part {
                    ref_logp: self
                        .reference
                        .as_ref()
                        .filter(|_| !self.cfg.kl_in_reward)
                        .map(frozen),
                    old_logp: (self.cfg.num_iterations > 1).then(|| frozen(policy)),
                    prefix,
                    inputs,
                    targets,
                    mask,
                    count,
                    adv: adv_t,
                    sampler_logp,
                }
            })
            .collect()
    }
}

/// The distinct prompts of `rows` (all of one length) without their last token, as a
/// [`Prefix`] the rows continue.
fn prompts_of(rows: &[(&[u32], &Completion)], device: &Device) -> Prefix {
    let mut prompts: Vec<&[u32]> = Vec::new();
    let mut of_row = Vec::with_capacity(rows.len());
    for (p, _) in rows {
        let at = match prompts.iter().position(|q| q == p) {
            Some(at) => at,
            None => {
                prompts.push(p);
                prompts.len() - 1
            }
        };
        of_row.push(at);
    }
    let t = prompts[0].len() - 1;
    let ids: Vec<i64> = prompts
        .iter()
        .flat_map(|p| p[..t].iter().map(|&x| x as i64))
        .collect();
    Prefix {
        tokens: Tensor::from_data(TensorData::new(ids, [prompts.len(), t]), device),
        rows: of_row,
    }
}

/// Phase 4: the step's metrics (TRL's names), from the rollouts, advantages and update;
/// `times` is the step's and the rollouts' wall time in seconds.
fn step_metrics(
    r: &Rollouts,
    adv: &[f64],
    up: &Update,
    lr: f64,
    times: (f64, f64),
    num_tokens: u64,
) -> Vec<(&'static str, f64)> {
    let (dt, rollout_time) = times;
    let s = &r.sampled;
    let (reward, reward_std) = stats(s.iter().map(|x| x.total));
    let (acc_m, acc_s) = stats(s.iter().map(|x| x.rewards.accuracy));
    let (fmt_m, fmt_s) = stats(s.iter().map(|x| x.rewards.format));
    let (par_m, par_s) = stats(s.iter().map(|x| x.rewards.partial));
    let lens: Vec<f64> = s.iter().map(|x| x.len as f64).collect();
    let (len_m, _) = mean_std(&lens);
    let truncated = s.iter().filter(|x| !x.finished).count() as f64 / s.len().max(1) as f64;
    let (adv_m, adv_s) = mean_std(adv);
    let agreement: Vec<f64> = s
        .iter()
        .filter_map(|x| Some(x.agrees? as u8 as f64))
        .collect();
    let mut out = vec![
        ("loss", up.loss),
        ("learning_rate", lr),
        ("grad_norm", up.grad_norm),
        ("reward", reward),
        ("reward_std", reward_std),
        ("rewards/accuracy/mean", acc_m),
        ("rewards/accuracy/std", acc_s),
        ("rewards/format/mean", fmt_m),
        ("rewards/format/std", fmt_s),
        ("rewards/partial/mean", par_m),
        ("rewards/partial/std", par_s),
        (
            "frac_reward_zero_std",
            r.zero_std_groups as f64 / r.sampled_groups.max(1) as f64,
        ),
        ("completions/mean_length", len_m),
        (
            "completions/min_length",
            lens.iter().copied().fold(f64::INFINITY, f64::min),
        ),
        (
            "completions/max_length",
            lens.iter().copied().fold(0.0, f64::max),
        ),
        ("completions/clipped_ratio", truncated),
        ("kl", up.stats.kl),
        ("entropy", up.entropy),
        ("clip_ratio/low_mean", up.stats.clip_low),
        ("clip_ratio/high_mean", up.stats.clip_high),
        ("clip_ratio/region_mean", up.stats.clip_region),
        ("advantage/mean", adv_m),
        ("advantage/std", adv_s),
        ("step_time", dt),
        ("time/rollout", rollout_time),
        ("time/update", dt - rollout_time),
        ("tokens_per_sec", up.tokens as f64 / dt),
        ("num_tokens", num_tokens as f64),
        ("groups", r.groups.len() as f64),
    ];
    if !up.drift.is_empty() {
        // TRL's names for the sampler/trainer mismatch (vLLM importance sampling).
        let n = up.drift.len() as f64;
        // With a correction, its weights (as TRL logs them); else the raw ratios.
        let ratio: Vec<f64> = if up.is_ratio.is_empty() {
            up.drift.iter().map(|d| d.exp()).collect()
        } else {
            up.is_ratio.clone()
        };
        out.push((
            "sampling/sampling_logp_difference/mean",
            up.drift.iter().map(|d| d.abs()).sum::<f64>() / n,
        ));
        out.push((
            "sampling/sampling_logp_difference/max",
            up.drift.iter().fold(0.0, |m, d| m.max(d.abs())),
        ));
        out.push((
            "sampling/importance_sampling_ratio/mean",
            ratio.iter().sum::<f64>() / ratio.len().max(1) as f64,
        ));
        out.push((
            "sampling/importance_sampling_ratio/min",
            ratio.iter().copied().fold(f64::INFINITY, f64::min),
        ));
        out.push((
            "sampling/importance_sampling_ratio/max",
            ratio.iter().copied().fold(0.0, f64::max),
        ));
    }
    if !agreement.is_empty() {
        out.push(("completions/trace_agreement", mean_std(&agreement).0));
    }
    out
}

/// Every completion of the step's groups to `samples.jsonl`, with its rewards and advantage.
fn log_samples(samples: &mut JsonlWriter, step: u64, groups: &[Group], adv: &[f64]) -> Result<()> {
    let rows = groups
        .iter()
        .enumerate()
        .flat_map(|(gi, gr)| gr.rollouts.iter().map(move |r| (gi, gr, r)));
    for ((gi, gr, r), a) in rows.zip(adv) {
        samples.write(&Sample {
            step,
            prompt: gr.problem.prompt.clone(),
            completion: r.text.clone(),
            answer: gr.problem.answer.clone(),
            reward: r.total,
            rewards: r
                .rewards
                .as_map()
                .into_iter()
                .chain(r.program.clone())
                .collect(),
            advantage: Some(*a),
            group: Some(gi as u64),
            greedy: false,
            truncated: !r.completion.finished,
        })?;
    }
    Ok(())
}
