//! Pieces every stage shares: the task and tokenizer for the experiment, example encoding with a
//! loss mask, the masked language-model loss, the learning-rate schedule, gradient-norm clipping,
//! and writing metrics and samples to the run folder.

use crate::model::text::{self, Text};
use crate::model::tokenizer::{PAD, Tokenizer};
use crate::model::{Gpt, ModelConfig, Prefix};
use crate::runfs::jsonl::JsonlWriter;
use crate::spec::{Experiment, ModelSpec, StageConfig, TaskSpec};
use crate::tasks::TaskSet;
use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::{Map, Value, json};

/// The experiment's task, tokenizer and model shape.
pub struct Setup {
    pub task: TaskSet,
    pub tok: Text,
    pub model_cfg: ModelConfig,
}

impl Setup {
    pub fn new(exp: &Experiment) -> Result<Setup> {
        Setup::from_specs(&exp.spec.task, &exp.spec.model)
    }

    /// The task and model of a spec: a fresh shape with the task's character tokenizer, or
    /// (`[model] from`) a pretrained model's shape and tokenizer with `ctx` as the working
    /// context.
    pub fn from_specs(task: &TaskSpec, model: &ModelSpec) -> Result<Setup> {
        let task = TaskSet::new(task)?;
        if let Some(from) = &model.from {
            let style = text::style(model.chat, model.system.as_deref());
            let (mut model_cfg, tok) = text::pretrained_meta(std::path::Path::new(from), style)?;
            model_cfg.ctx = model.ctx;
            return Ok(Setup {
                task,
                tok,
                model_cfg,
            });
        }
        let tok = Tokenizer::new(task.task.alphabet());
        let model_cfg = ModelConfig::from_spec(model, tok.vocab_size());
        Ok(Setup {
            task,
            tok: Text::Chars(tok),
            model_cfg,
        })
    }

    /// The task and shape a checkpoint was trained with (its `task.json`, `config.json`,
    /// `tokenizer.json`); `task_name` swaps in another task with the same settings, which must
    /// then share the tokenizer.
    pub fn from_checkpoint(dir: &std::path::Path, task_name: Option<&str>) -> Result<Setup> {
        let (model_cfg, tok) = crate::model::checkpoint::read_meta(dir)?;
        let mut task_spec = crate::model::checkpoint::read_task(dir)?;
        if let Some(name) = task_name {
            task_spec.name = name.to_string();
        }
        let task = TaskSet::new(&task_spec)
            .with_context(|| format!("{}", dir.join(crate::model::checkpoint::TASK).display()))?;
        if let Some(chars) = tok.chars()
            && Tokenizer::new(task.task.alphabet()) != *chars
        {
            bail!(
                "{}: the checkpoint's tokenizer does not cover task `{}`",
                dir.display(),
                task_spec.name
            );
        }
        Ok(Setup {
            task,
            tok,
            model_cfg,
        })
    }

    /// The sampling settings of a stage, stopping at this model's EOS ids.
    pub fn sampling(&self, cfg: &StageConfig) -> crate::model::sample::SampleOptions {
        sampling(cfg).with_eos(&self.tok.eos())
    }

    /// Each problem's prompt ids, repeated `copies` times in a row (a batch of groups).
    pub fn grouped_prompts(
        &self,
        problems: &[crate::tasks::Problem],
        copies: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(problems.len() * copies);
        for p in problems {
            let ids = self.prompt_ids(&p.prompt)?;
            out.extend(std::iter::repeat_n(ids, copies));
        }
        Ok(out)
    }

    /// Prompt ids as the model sees them: BOS + prompt, or a pretrained model's chat prompt.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tok.prompt_ids(prompt)
    }
}

/// The sampling settings of a stage (temperature, top-k, top-p, token budget).
pub fn sampling(cfg: &StageConfig) -> crate::model::sample::SampleOptions {
    crate::model::sample::SampleOptions {
        temperature: cfg.temperature,
        top_k: cfg.top_k,
        top_p: cfg.top_p,
        max_new_tokens: cfg.max_new_tokens,
        ..Default::default()
    }
}

/// FLOPs of sampling `outs` after `prompts` (row by row): a forward pass over each prompt and
/// its completion, which is what the KV-cached decoder computes (a prompt shared by a group is
/// prefilled once on the CPU, but each row is counted as if prefilled alone).
pub fn sampling_flops(
    cfg: &ModelConfig,
    prompts: &[Vec<u32>],
    outs: &[crate::model::sample::Completion],
) -> f64 {
    prompts
        .iter()
        .zip(outs)
        .map(|(p, c)| cfg.forward_flops(p.len() + c.tokens.len()))
        .sum()
}

/// One training sequence: `BOS prompt completion EOS`, and per target position whether it
/// counts in the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// `loss[j]` is for predicting `tokens[j + 1]`.
    pub loss: Vec<bool>,
}

/// Encode an example; with `prompt_loss` false only completion tokens (and EOS) are learned.
pub fn encode_example(
    tok: &Text,
    prompt: &str,
    completion: &str,
    ctx: usize,
    prompt_loss: bool,
) -> Result<Example> {
    let p = tok.prompt_ids(prompt)?;
    let c = tok.completion_ids(completion)?;
    let mut tokens = Vec::with_capacity(p.len() + c.len() + 1);
    tokens.extend(&p);
    tokens.extend(&c);
    tokens.push(tok.eos()[0]);
    if tokens.len() > ctx + 1 {
        bail!(
            "example of {} tokens does not fit the model's ctx {} (prompt {prompt:?}); raise [model] ctx or lower the task difficulty",
            tokens.len(),
            ctx
        );
    }
    // Target j predicts tokens[j + 1]; tokens[p.len()] starts the completion.
    let first_completion_target = p.len() - 1;
    let loss = (0..tokens.len() - 1)
        .map(|j| prompt_loss || j >= first_completion_target)
        .collect();
    Ok(Example { tokens, loss })
}

/// A padded batch on a device: inputs, targets and a float mask, all `[b, t]`.
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub mask: Tensor<2>,
    /// Target tokens that count.
    pub tokens: usize,
}

pub fn make_batch(examples: &[Example], device: &Device) -> Batch {
    let t = examples
        .iter()
        .map(|e| e.tokens.len() - 1)
        .max()
        .unwrap_or(1);
    let b = examples.len();
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    let mut count = 0;
    for e in examples {
        let n = e.tokens.len() - 1;
        for j in 0..t {
            if j < n {
                inputs.push(e.tokens[j] as i64);
                targets.push(e.tokens[j + 1] as i64);
                mask.push(if e.loss[j] { 1.0f32 } else { 0.0 });
                count += e.loss[j] as usize;
            } else {
                inputs.push(PAD as i64);
                targets.push(PAD as i64);
                mask.push(0.0);
            }
        }
    }
    Batch {
        inputs: Tensor::from_data(TensorData::new(inputs, [b, t]), device),
        targets: Tensor::from_data(TensorData::new(targets, [b, t]), device),
        mask: Tensor::from_data(TensorData::new(mask, [b, t]), device),
        tokens: count,
    }
}

/// Per-position log-probabilities of the targets, `[b, t]`, under logits divided by
/// `temperature` (1 for plain likelihood; the sampling temperature for GRPO, as TRL does).
pub fn target_logprobs(
    model: &Gpt,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    temperature: f64,
) -> Tensor<2> {
    target_logprobs_with(model, inputs, targets, temperature, false).0
}

/// [`target_logprobs`], and with `entropy` also the per-position entropy of the whole
/// distribution, from the same forward pass (it carries a gradient, for an entropy bonus;
/// detach it for statistics).
pub fn target_logprobs_with(
    model: &Gpt,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    temperature: f64,
    entropy: bool,
) -> (Tensor<2>, Option<Tensor<2>>) {
    continuation_logprobs(model, None, inputs, targets, temperature, entropy)
}

/// [`target_logprobs_with`] for rows that continue the prompts of `prefix` (each prompt run
/// once, see [`Gpt::hidden_after`]); `inputs` and `targets` are then the rows after their
/// prompts. Without a prefix, the whole rows.
pub fn continuation_logprobs(
    model: &Gpt,
    prefix: Option<&Prefix>,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    temperature: f64,
    entropy: bool,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let scale = if temperature > 0.0 && temperature != 1.0 {
        1.0 / temperature
    } else {
        1.0
    };
    let fused = crate::model::fused::available(&inputs.device());
    let hidden = |inputs| match prefix {
        Some(p) => model.hidden_after(p, inputs),
        None => model.hidden(inputs),
    };
    if let Some(w) = model.head_matrix().filter(|_| fused) {
        // The head and the log-softmax in chunks of rows: no `[b, t, vocab]` tensor at all,
        // the entropy from the same pass.
        let (picked, ent) =
            crate::model::fused::head_logprobs(hidden(inputs), w, targets.float(), scale);
        return (picked, entropy.then_some(ent));
    }
    // `forward`'s logits: the head over the final (normed) hidden states.
    let mut logits = model.head_logits(hidden(inputs));
    if fused {
        // One pass over the logits for the targets' log-probabilities (and their gradient);
        // the entropy, when wanted, from the whole log-softmax.
        let h = entropy.then(|| entropy_of(log_softmax(logits.clone().mul_scalar(scale), 2)));
        let picked = crate::model::fused::target_logprobs(logits, targets.float(), scale);
        return (picked, h);
    }
    if scale != 1.0 {
        logits = logits.div_scalar(temperature);
    }
    let logp = log_softmax(logits, 2);
    let h = entropy.then(|| entropy_of(logp.clone()));
    let picked = logp
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2);
    (picked, h)
}

/// Per-position entropy `-Σ p·log p` of log-probabilities `[b, t, vocab]`, as `[b, t]`.
fn entropy_of(lp: Tensor<3>) -> Tensor<2> {
    (lp.clone().exp() * lp).sum_dim(2).neg().squeeze_dim::<2>(2)
}

/// Mean negative log-likelihood over the masked positions.
pub fn lm_loss(model: &Gpt, batch: &Batch) -> Tensor<1> {
    let lp = target_logprobs(model, batch.inputs.clone(), batch.targets.clone(), 1.0);
    (lp * batch.mask.clone())
        .sum()
        .neg()
        .div_scalar(batch.tokens.max(1) as f64)
}

/// `loss` (of the pass over `batch` that just ran) plus the terms DeepSeek's blocks add:
/// DeepSeekMoE's sequence-wise balance loss (`[model.moe] aux_loss`) and the MTP depth's
/// weighted loss (`[model.mtp]`); and their values as metrics (`moe/aux_loss`, `mtp/loss`).
pub fn with_block_losses(
    model: &Gpt,
    batch: &Batch,
    loss: Tensor<1>,
) -> (Tensor<1>, Vec<(&'static str, f64)>) {
    let value = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
    let mut values = Vec::new();
    let mut loss = loss;
    if let Some(aux) = model.take_aux_loss() {
        values.push(("moe/aux_loss", value(&aux)));
        loss = loss + aux;
    }
    if let Some((mtp, weight)) = mtp_loss(model, batch) {
        values.push(("mtp/loss", value(&mtp)));
        loss = loss + mtp.mul_scalar(weight);
    }
    (loss, values)
}

/// The multi-token-prediction depth's loss for `batch`, right after [`lm_loss`] of the same
/// batch (it reads the hidden states that pass kept): mean negative log-likelihood of each
/// position's token after next, over the positions whose targets count, and the loss weight.
/// `None` for a model without the depth.
pub fn mtp_loss(model: &Gpt, batch: &Batch) -> Option<(Tensor<1>, f64)> {
    let (h, weight) = model.mtp_hidden()?;
    let [b, t] = batch.targets.dims();
    let targets = batch.targets.clone().slice([0..b, 1..t]);
    let mask = batch.mask.clone().slice([0..b, 1..t]);
    let count = mask.clone().sum().into_scalar::<f32>().max(1.0) as f64;
    let fused = crate::model::fused::available(&h.device());
    let lp = match model.head_matrix().filter(|_| fused) {
        Some(w) => crate::model::fused::head_logprobs(h, w, targets.float(), 1.0).0,
        None => log_softmax(model.head_logits(h), 2)
            .gather(2, targets.unsqueeze_dim::<3>(2))
            .squeeze_dim::<2>(2),
    };
    Some(((lp * mask).sum().neg().div_scalar(count), weight))
}

/// A model with routed experts after an optimizer step: each block's routing biases nudged
/// towards an even load (`[model.moe] bias_rate`), and the loads the step's training passes
/// saw as metrics, each relative to an even split (1 = even): `moe/load_max` and
/// `moe/load_min` over every block and expert, and `moe/load/NN`, expert NN's mean over the
/// blocks. Empty for a dense model. (No token is dropped: experts have no capacity limit.)
pub fn balance_experts(model: &mut Gpt, cfg: &crate::model::ModelConfig) -> Vec<(String, f64)> {
    let Some(moe) = cfg.arch.moe else {
        return Vec::new();
    };
    let loads = model.balance_experts(moe.bias_rate);
    if loads.is_empty() {
        return Vec::new();
    }
    let all = || loads.iter().flat_map(|l| l.0.iter().copied());
    let mut out = vec![
        ("moe/load_max".to_string(), all().fold(f64::MIN, f64::max)),
        ("moe/load_min".to_string(), all().fold(f64::MAX, f64::min)),
    ];
    for i in 0..moe.experts {
        let mean = loads.iter().map(|l| l.0[i]).sum::<f64>() / loads.len() as f64;
        out.push((format!("moe/load/{i:02}"), mean));
    }
    out
}

/// Linear warm-up, then cosine decay to `min_lr_ratio × lr` at the last step.
pub fn lr_at(step: u64, cfg: &StageConfig) -> f64 {
    let (lr, warm, total) = (cfg.lr, cfg.warmup, cfg.steps.max(1));
    if warm > 0 && step < warm {
        return lr * (step + 1) as f64 / warm as f64;
    }
    let span = total.saturating_sub(warm).max(1) as f64;
    let progress = ((step - warm.min(step)) as f64 / span).min(1.0);
    let min = lr * cfg.min_lr_ratio;
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Global L2 norm of the gradients; scales them down to `max_norm` when above it (0 = never).
pub fn clip_grad_norm(model: &Gpt, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut v = GradNorm { grads, sum: None };
    model.visit(&mut v);
    let norm = v
        .sum
        .map(|s| (s.into_scalar::<f32>() as f64).sqrt())
        .unwrap_or(0.0);
    if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
        let mut s = GradScale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        model.visit(&mut s);
    }
    norm
}

/// A metrics line: `step`, `time` and the given values.
pub fn metrics_line(step: u64, values: &[(&str, f64)]) -> Value {
    let mut m = Map::new();
    m.insert("step".into(), json!(step));
    m.insert("time".into(), json!(crate::runfs::status::now()));
    for (k, v) in values {
        m.insert(
            (*k).to_string(),
            if v.is_finite() { json!(v) } else { Value::Null },
        );
    }
    Value::Object(m)
}

/// Open the run's metrics and samples logs for appending.
pub fn open_logs(run: &crate::runfs::RunDir) -> Result<(JsonlWriter, JsonlWriter)> {
    Ok((
        JsonlWriter::append(&run.metrics())?,
        JsonlWriter::append(&run.samples())?,
    ))
}
