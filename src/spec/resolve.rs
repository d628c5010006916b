//! Per-kind defaults: turns a [`StageSpec`] (what the file says) into a [`StageConfig`] (every
//! value concrete). The key lists here drive both validation and what `run.json` records.

use super::types::{
    AdvEstimator, IsLevel, KlEstimator, LoraSpec, LossType, ModelSpec, Precision, RewardProgram,
    RewardSpec, SamplerCorrection, ScaleRewards, StageKind, StageSpec,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const COMMON: &[&str] = &["name", "kind", "init"];
const OPTIM: &[&str] = &[
    "steps",
    "batch",
    "lr",
    "warmup",
    "min_lr_ratio",
    "weight_decay",
    "grad_clip",
    "log_every",
    "sample_every",
    "checkpoint_every",
];
const SAMPLING: &[&str] = &[
    "prompts",
    "k",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
];
const GRPO: &[&str] = &[
    "prompts",
    "group_size",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "beta",
    "epsilon",
    "epsilon_high",
    "num_iterations",
    "loss_type",
    "scale_rewards",
    "dynamic_sampling",
    "mask_truncated",
    "sampler_correction",
    "sampler_correction_cap",
    "importance_sampling_level",
    "adv_estimator",
    "kl_estimator",
    "zero_variance_filter",
    "top_entropy_quantile",
    "entropy_coef",
    "kl_in_reward",
    "micro_batch",
    "overlong_buffer",
    "overlong_penalty",
    "rewards",
];

/// The keys a stage of this kind may set (besides none other).
pub fn allowed_keys(kind: StageKind) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = COMMON.to_vec();
    match kind {
        StageKind::Pretrain => keys.extend(OPTIM),
        StageKind::Sft => {
            keys.extend(OPTIM);
            keys.extend(["examples", "dataset", "lora"]);
        }
        StageKind::Grpo => {
            keys.extend(OPTIM.iter().filter(|k| **k != "batch"));
            keys.extend(GRPO);
            keys.push("lora");
        }
        StageKind::Rejection => {
            keys.extend(OPTIM);
            keys.extend(SAMPLING);
            keys.extend(["shortest", "sft_init", "lora"]);
        }
        StageKind::Distill => {
            keys.extend(OPTIM);
            keys.extend(SAMPLING);
            keys.extend(["shortest", "teacher", "model"]);
        }
        StageKind::Eval => keys.extend(SAMPLING),
    }
    keys
}

/// Every value a stage runs with, defaults applied. Fields that do not apply to the kind keep
/// neutral defaults and are left out of [`StageConfig::to_json`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageConfig {
    pub name: String,
    pub kind: StageKind,
    pub init: Option<String>,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub examples: usize,
    pub dataset: Option<String>,
    pub prompts: usize,
    pub k: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    /// 0 = up to the end of the context.
    pub max_new_tokens: usize,
    pub group_size: usize,
    pub beta: f64,
    pub epsilon: f64,
    pub epsilon_high: f64,
    pub num_iterations: usize,
    pub loss_type: LossType,
    pub scale_rewards: ScaleRewards,
    pub dynamic_sampling: bool,
    pub mask_truncated: bool,
    pub sampler_correction: SamplerCorrection,
    pub sampler_correction_cap: f64,
    pub importance_sampling_level: IsLevel,
    pub adv_estimator: AdvEstimator,
    pub kl_estimator: KlEstimator,
    pub zero_variance_filter: bool,
    pub top_entropy_quantile: f64,
    pub entropy_coef: f64,
    pub kl_in_reward: bool,
    pub micro_batch: usize,
    pub overlong_buffer: usize,
    pub overlong_penalty: f64,
    pub rewards: BTreeMap<String, RewardSpec>,
    pub shortest: bool,
    pub sft_init: Option<String>,
    pub teacher: Option<String>,
    /// Distill: the student's full shape (the experiment's `[model]` with the stage's changes).
    pub student: Option<ModelSpec>,
    /// LoRA adapters instead of full fine-tuning.
    pub lora: Option<LoraSpec>,
}

impl StageConfig {
    /// Defaults for `kind`, before the file's values are applied.
    fn defaults(name: &str, kind: StageKind, heldout: usize) -> StageConfig {
        use StageKind::*;
        let (steps, batch, lr, warmup) = match kind {
            Pretrain => (600, 64, 3e-3, 30),
            Sft => (150, 32, 1e-3, 10),
            Grpo => (100, 0, 5e-5, 0),
            Rejection => (100, 32, 5e-4, 10),
            Distill => (300, 32, 1e-3, 20),
            Eval => (0, 0, 0.0, 0),
        };
        let (prompts, k, temperature, top_p) = match kind {
            Eval => (heldout, 8, 0.6, 0.95),
            Grpo => (16, 1, 1.0, 1.0),
            Rejection => (500, 8, 1.0, 1.0),
            Distill => (1000, 4, 0.6, 0.95),
            _ => (0, 1, 1.0, 1.0),
        };
        StageConfig {
            name: name.to_string(),
            kind,
            init: None,
            steps,
            batch,
            lr,
            warmup,
            min_lr_ratio: 0.1,
            weight_decay: if kind == Pretrain { 0.1 } else { 0.0 },
            grad_clip: 1.0,
            log_every: 1,
            sample_every: if kind == Grpo { 1 } else { 50 },
            checkpoint_every: if kind == Grpo { 25 } else { 100 },
            examples: 500,
            dataset: None,
            prompts,
            k,
            temperature,
            top_k: 0,
            top_p,
            max_new_tokens: 0,
            group_size: 8,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: 0.2,
            num_iterations: 1,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
            dynamic_sampling: false,
            mask_truncated: false,
            sampler_correction: SamplerCorrection::Off,
            sampler_correction_cap: 3.0,
            importance_sampling_level: IsLevel::Token,
            adv_estimator: AdvEstimator::Grpo,
            kl_estimator: KlEstimator::K3,
            zero_variance_filter: false,
            top_entropy_quantile: 1.0,
            entropy_coef: 0.0,
            kl_in_reward: false,
            micro_batch: 0,
            overlong_buffer: 0,
            overlong_penalty: 1.0,
            rewards: BTreeMap::from([
                ("accuracy".to_string(), RewardSpec::Weight(1.0)),
                ("format".to_string(), RewardSpec::Weight(0.1)),
            ]),
            shortest: false,
            sft_init: None,
            teacher: None,
            student: None,
            lora: None,
        }
    }

    /// Resolve a stage of an experiment whose model is `model` and held-out size `heldout`.
    pub fn resolve(s: &StageSpec, model: &ModelSpec, heldout: usize) -> StageConfig {
        let mut c = StageConfig::defaults(&s.name, s.kind, heldout);
        c.init = s.init.clone();
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = s.$f.clone() { c.$f = v; } )* };
        }
        take!(
            steps,
            batch,
            lr,
            warmup,
            min_lr_ratio,
            weight_decay,
            grad_clip,
            log_every,
            sample_every,
            checkpoint_every,
            examples,
            prompts,
            k,
            temperature,
            top_k,
            top_p,
            max_new_tokens,
            group_size,
            beta,
            epsilon,
            num_iterations,
            loss_type,
            scale_rewards,
            dynamic_sampling,
            mask_truncated,
            sampler_correction,
            sampler_correction_cap,
            importance_sampling_level,
            adv_estimator,
            kl_estimator,
            zero_variance_filter,
            top_entropy_quantile,
            entropy_coef,
            kl_in_reward,
            micro_batch,
            overlong_buffer,
            overlong_penalty,
            rewards,
            shortest
        );
        if s.warmup.is_none() {
            // The default warm-up is a kind default capped at a tenth of the steps.
            c.warmup = c.warmup.min(c.steps / 10);
        }
        // CISPO's `epsilon_high` caps the importance weight itself (ScaleRL's ε_max; TRL
        // recommends 5), not the ratio's distance from 1.
        c.epsilon_high = s.epsilon_high.unwrap_or(if c.loss_type == LossType::Cispo {
            5.0
        } else {
            c.epsilon
        });
        // The sampler decodes in f32; a bf16 trainer's log-probabilities differ from it, so the
        // loss is corrected for that by default (TRL corrects vLLM's the same way).
        if s.sampler_correction.is_none() && model.precision == Precision::Bf16 {
            c.sampler_correction = SamplerCorrection::TokenTruncate;
        }
        c.dataset = s.dataset.clone();
        c.sft_init = s.sft_init.clone();
        c.teacher = s.teacher.clone();
        c.lora = s.lora.clone();
        if s.kind == StageKind::Distill {
            c.student = Some(s.model.clone().unwrap_or_default().apply(model));
        }
        c
    }

    /// The resolved values that apply to this kind, as recorded in `run.json`.
    /// The built-in rewards and their weights.
    pub fn reward_weights(&self) -> impl Iterator<Item = (&str, f64)> {
        self.rewards.iter().filter_map(|(k, v)| match v {
            RewardSpec::Weight(w) => Some((k.as_str(), *w)),
            RewardSpec::Program(_) => None,
        })
    }

    /// The external reward programs, by name.
    pub fn reward_programs(&self) -> impl Iterator<Item = (&str, &RewardProgram)> {
        self.rewards.iter().filter_map(|(k, v)| match v {
            RewardSpec::Program(p) => Some((k.as_str(), p)),
            RewardSpec::Weight(_) => None,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        let full = serde_json::to_value(self).expect("config serialises");
        let mut keys = allowed_keys(self.kind);
        if self.kind == StageKind::Distill {
            keys.retain(|k| *k != "model");
            keys.push("student");
        }
        let mut out = serde_json::Map::new();
        if let serde_json::Value::Object(map) = full {
            for k in keys {
                if let Some(v) = map.get(k)
                    && !v.is_null()
                {
                    out.insert(k.to_string(), v.clone());
                }
            }
        }
        serde_json::Value::Object(out)
    }
}
