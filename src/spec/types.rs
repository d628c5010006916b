//! The typed `experiment.toml` (a contract: README, "The experiment spec"): what a file may say, with serde doing the
//! parsing and `deny_unknown_fields` catching typos. Defaults live in [`super::resolve`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole experiment file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Display name; defaults to the folder name.
    pub name: Option<String>,
    /// Free text shown in `runs` and the notebook.
    pub description: Option<String>,
    /// Global seed: model init, data order and sampling derive from it (`--seed` overrides).
    #[serde(default)]
    pub seed: u64,
    /// The transformer's shape.
    #[serde(default)]
    pub model: ModelSpec,
    /// The verifiable task that makes data and rewards.
    pub task: TaskSpec,
    /// Stages, run in this order.
    #[serde(default)]
    pub stage: Vec<StageSpec>,
    /// Spans of stages to repeat.
    #[serde(default, rename = "loop")]
    pub loops: Vec<LoopSpec>,
}

/// `[model]`: decoder-only transformer shape. The vocabulary comes from the task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Width of the residual stream.
    #[serde(default = "d_model")]
    pub d_model: usize,
    /// Number of transformer blocks.
    #[serde(default = "layers")]
    pub layers: usize,
    /// Attention heads; must divide `d_model` into an even head size (RoPE).
    #[serde(default = "heads")]
    pub heads: usize,
    /// Hidden width of the SwiGLU MLP; default `4 * d_model`.
    pub mlp: Option<usize>,
    /// Context length in tokens (prompt + completion).
    #[serde(default = "ctx")]
    pub ctx: usize,
    /// RoPE base.
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    /// Start from a pretrained model instead of a fresh one of the shape above: a Hugging Face
    /// folder or a `.gguf` file, relative to the experiment or the project root. Its own shape
    /// and tokenizer are used; `ctx` still bounds prompt + completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// With `from`: render prompts with the model's chat template (default true when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<bool>,
    /// With `from`: the system message of chat prompts (default: the R1 system prompt; "" for
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The training products' operands: `f32` (default) or `bf16` (rounded as they are
    /// packed, f32 sums, f32 master weights and optimizer state), where the CPU has
    /// AVX512_BF16 (else f32, said in run.json).
    #[serde(default)]
    pub precision: Precision,
    /// LoRA stages: the frozen base's block matrices as quantised blocks instead of f32
    /// (QLoRA): `none` (default), `auto` (a GGUF model's own blocks; Q8_0 for other models),
    /// `q8_0` or `q4_1`. The adapters, their gradients and optimizer state stay f32.
    #[serde(default)]
    pub quantize: Quantize,
    /// `[model.moe]`: a from-scratch model's MLPs as DeepSeekMoE layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeSpec>,
    /// `[model.mla]`: a from-scratch model's attention as Multi-head Latent Attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mla: Option<MlaSpec>,
    /// `[model.mtp]`: a from-scratch model's multi-token prediction depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp: Option<MtpSpec>,
}

/// `[model.mtp]`: DeepSeek-V3's multi-token prediction, one depth: one more block, fed the last
/// hidden state and the next token's embedding, predicts the token after next; pretraining and
/// SFT add `weight` times its cross-entropy to the loss.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MtpSpec {
    /// The loss weight λ (DeepSeek-V3: 0.3, then 0.1).
    #[serde(default = "mtp_weight")]
    pub weight: f64,
}

fn mtp_weight() -> f64 {
    0.3
}

impl Default for MtpSpec {
    fn default() -> Self {
        MtpSpec {
            weight: mtp_weight(),
        }
    }
}

/// `[model.mla]`: DeepSeek-V2's Multi-head Latent Attention. Keys and values come up from one
/// low-rank latent per token (`kv_rank` wide, RMS-normed), and a `rope_dim`-wide key shared by
/// every head carries the position (decoupled RoPE); queries are `head_dim + rope_dim` per head.
/// The cache holds only the latent and the shared key: `kv_rank + rope_dim` floats a token and
/// layer instead of `2 · heads · head_dim`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlaSpec {
    /// Width of the key-value latent; default `2 · head_dim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_rank: Option<usize>,
    /// Width of the rotary part of queries and keys (even); default `head_dim / 2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_dim: Option<usize>,
}

impl MlaSpec {
    /// The latent's width for heads of `head_dim`.
    pub fn kv_rank(&self, head_dim: usize) -> usize {
        self.kv_rank.unwrap_or(2 * head_dim).max(1)
    }

    /// The rotary width for heads of `head_dim` (at least 2, even).
    pub fn rope_dim(&self, head_dim: usize) -> usize {
        self.rope_dim
            .unwrap_or((head_dim / 2).max(2) / 2 * 2)
            .max(2)
    }

    /// Both widths fixed for heads of `head_dim` (as a checkpoint's config records them).
    pub fn resolved(&self, head_dim: usize) -> MlaSpec {
        MlaSpec {
            kv_rank: Some(self.kv_rank(head_dim)),
            rope_dim: Some(self.rope_dim(head_dim)),
        }
    }
}

/// `[model.moe]`: DeepSeekMoE. Each block's MLP becomes `shared` always-on experts plus
/// `experts` fine-grained routed ones, of which each token uses the `top_k` with the highest
/// sigmoid affinity (plus a balancing bias that only steers the choice); their outputs are
/// weighted by the chosen affinities, normalised to sum to 1.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoeSpec {
    /// Routed experts.
    pub experts: usize,
    /// Routed experts per token.
    #[serde(default = "moe_top_k")]
    pub top_k: usize,
    /// Shared experts every token passes through (at least 1).
    #[serde(default = "moe_shared")]
    pub shared: usize,
    /// Hidden width of each expert, routed or shared. Default `mlp / (top_k + shared)`: the
    /// same active MLP width, so about the same FLOPs a token, as the dense model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_mlp: Option<usize>,
    /// Auxiliary-loss-free balancing (DeepSeek-V3): after each optimizer step every expert's
    /// routing bias moves by this much towards the mean load (up if under it, down if over).
    #[serde(default = "moe_bias_rate")]
    pub bias_rate: f64,
    /// Weight of the sequence-wise balance loss `Σᵢ fᵢ·Pᵢ` in pretraining and SFT (0: off).
    #[serde(default)]
    pub aux_loss: f64,
}

fn moe_top_k() -> usize {
    2
}
fn moe_shared() -> usize {
    1
}
fn moe_bias_rate() -> f64 {
    0.001
}

impl MoeSpec {
    /// Each expert's hidden width for a dense MLP width `mlp`.
    pub fn width(&self, mlp: usize) -> usize {
        self.expert_mlp
            .unwrap_or(mlp / (self.top_k + self.shared).max(1))
            .max(1)
    }
}

/// How a LoRA stage holds its frozen base ([`ModelSpec::quantize`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Quantize {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_1")]
    Q4_1,
    /// Q4_K where a matrix's rows are whole 256-element super-blocks, Q5_0 elsewhere (as
    /// llama.cpp's Q4_K quantiser falls back).
    #[serde(rename = "q4_k")]
    Q4K,
}

impl Quantize {
    /// What this means for a LoRA stage starting from `base`: `Auto` stays `Auto` (the GGUF
    /// file's own blocks) only when `base` is a GGUF file, and is `Q8_0` otherwise.
    pub fn resolved(self, base: Option<&std::path::Path>) -> Quantize {
        match self {
            Quantize::Auto if !base.is_some_and(super::source::is_gguf) => Quantize::Q8_0,
            q => q,
        }
    }

    /// How a LoRA stage starting from `base` holds its frozen blocks, as run.json says it;
    /// `None` when they stay f32.
    pub fn describe(self, base: Option<&std::path::Path>) -> Option<&'static str> {
        match self.resolved(base) {
            Quantize::None => None,
            Quantize::Auto => Some("the GGUF file's blocks"),
            Quantize::Q8_0 => Some("q8_0"),
            Quantize::Q4_1 => Some("q4_1"),
            Quantize::Q4K => Some("q4_k (q5_0 where rows are not whole 256-element blocks)"),
        }
    }
}

/// The number type of the training products' operands.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

fn d_model() -> usize {
    128
}
fn layers() -> usize {
    4
}
fn heads() -> usize {
    4
}
fn ctx() -> usize {
    64
}
fn rope_theta() -> f64 {
    10_000.0
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            d_model: d_model(),
            layers: layers(),
            heads: heads(),
            mlp: None,
            ctx: ctx(),
            rope_theta: rope_theta(),
            from: None,
            chat: None,
            system: None,
            precision: Precision::F32,
            quantize: Quantize::None,
            moe: None,
            mla: None,
            mtp: None,
        }
    }
}

impl ModelSpec {
    /// The MLP hidden width, with its default applied.
    pub fn mlp_width(&self) -> usize {
        self.mlp.unwrap_or(4 * self.d_model)
    }
}

/// A partial `[model]`, for a distillation student that differs from the teacher in a few keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelOverride {
    pub d_model: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub mlp: Option<usize>,
    pub ctx: Option<usize>,
}

impl ModelOverride {
    /// `base` with the keys this override sets replaced. A shape key over a pretrained model
    /// (`[model] from`) makes a fresh student of that shape, with the task's own tokenizer:
    /// a pretrained model's shape cannot change.
    pub fn apply(&self, base: &ModelSpec) -> ModelSpec {
        let mut m = base.clone();
        let reshaped = self.d_model.is_some()
            || self.layers.is_some()
            || self.heads.is_some()
            || self.mlp.is_some();
        if reshaped && m.from.is_some() {
            m.from = None;
            m.chat = None;
            m.system = None;
        }
        if let Some(v) = self.d_model {
            m.d_model = v;
            if self.mlp.is_none() {
                m.mlp = None;
            }
        }
        if let Some(v) = self.layers {
            m.layers = v;
        }
        if let Some(v) = self.heads {
            m.heads = v;
        }
        if let Some(v) = self.mlp {
            m.mlp = Some(v);
        }
        if let Some(v) = self.ctx {
            m.ctx = v;
        }
        m
    }
}

/// `[task]`: which generator, how hard, and how its data is mixed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Generator name: `arith`, `countdown`, `parity` or `sort`; or `dataset` (rows from a file).
    pub name: String,
    /// Difficulty knob, 1 (easy) to 5 (hard); each task documents what it scales.
    #[serde(default = "difficulty")]
    pub difficulty: u32,
    /// Seed of the task's data stream (independent of the model seed).
    #[serde(default = "task_seed")]
    pub seed: u64,
    /// Held-out prompts, never seen in training.
    #[serde(default = "heldout")]
    pub heldout: usize,
    /// Whether worked traces (`<think>` scratchpads) are written step by step.
    #[serde(default = "yes")]
    pub trace: bool,
    /// How the pretraining corpus is mixed.
    #[serde(default)]
    pub corpus: CorpusMix,
    /// `dataset` only: the rows (JSONL or Parquet), relative to the experiment folder or the
    /// project root; made absolute when the spec is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `dataset` only: a separate file of held-out rows (else `heldout` rows by a seeded hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// `dataset` only: the field holding the prompt (default `prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_field: Option<String>,
    /// `dataset` only: the field holding the expected answer (default `answer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_field: Option<String>,
    /// `dataset` only: the field holding a worked solution for SFT and pretraining (default
    /// `solution`, when rows have it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution_field: Option<String>,
    /// `dataset` only: the prompt the model sees, `{field}` replaced by the row's value (default
    /// `{prompt}`; `{nums}>{target}:` for countdown rows without a prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `dataset` only: numeric (default), exact, choice, regex or countdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// `dataset` with `verifier = "regex"`: the pattern the whole answer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `dataset` with `verifier = "exact"`: compare case too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_sensitive: bool,
}

impl TaskSpec {
    /// The keys only a `dataset` task takes, with whether each is set.
    pub fn dataset_keys(&self) -> [(&'static str, bool); 9] {
        [
            ("path", self.path.is_some()),
            ("test", self.test.is_some()),
            ("prompt_field", self.prompt_field.is_some()),
            ("answer_field", self.answer_field.is_some()),
            ("solution_field", self.solution_field.is_some()),
            ("template", self.template.is_some()),
            ("verifier", self.verifier.is_some()),
            ("pattern", self.pattern.is_some()),
            ("case_sensitive", self.case_sensitive),
        ]
    }
}

fn difficulty() -> u32 {
    1
}
fn task_seed() -> u64 {
    1234
}
fn heldout() -> usize {
    500
}
fn yes() -> bool {
    true
}

/// `[task.corpus]`: shares of the pretraining corpus. What is neither bare nor wrong is a clean,
/// traced example.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorpusMix {
    /// Share of examples with a bare `<answer>` and no `<think>` block.
    #[serde(default = "bare")]
    pub bare: f64,
    /// Share of examples whose final answer is deliberately wrong.
    #[serde(default = "wrong")]
    pub wrong: f64,
    /// Share of examples whose trace contains a deliberate slip (answer follows the trace).
    #[serde(default = "wrong_trace")]
    pub wrong_trace: f64,
    /// Share of examples whose trace searches: failed attempts, then the one that works (tasks
    /// without a notion of attempts, such as `arith`, write a clean trace instead).
    #[serde(default)]
    pub search: f64,
}

fn bare() -> f64 {
    0.15
}
fn wrong() -> f64 {
    0.15
}
fn wrong_trace() -> f64 {
    0.10
}

impl Default for CorpusMix {
    fn default() -> Self {
        CorpusMix {
            bare: bare(),
            wrong: wrong(),
            wrong_trace: wrong_trace(),
            search: 0.0,
        }
    }
}

/// The kinds of stage (README, "Stage kinds").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Pretrain,
    Sft,
    Grpo,
    Rejection,
    Distill,
    Eval,
}

impl StageKind {
    /// The name used in TOML and run folders.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Pretrain => "pretrain",
            StageKind::Sft => "sft",
            StageKind::Grpo => "grpo",
            StageKind::Rejection => "rejection",
            StageKind::Distill => "distill",
            StageKind::Eval => "eval",
        }
    }

    /// Whether this kind updates weights (and so writes checkpoints others can `init` from).
    pub fn trains(self) -> bool {
        !matches!(self, StageKind::Eval)
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[stage]]`: one stage. Keys that do not apply to the stage's kind are rejected by validation
/// (see [`super::validate::allowed_keys`]); defaults per kind are in [`super::resolve`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    pub kind: StageKind,
    /// Earlier stage whose latest checkpoint this one starts from; absent = from scratch.
    pub init: Option<String>,

    // --- optimisation (training kinds)
    pub steps: Option<u64>,
    pub batch: Option<usize>,
    pub lr: Option<f64>,
    pub warmup: Option<u64>,
    pub min_lr_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub grad_clip: Option<f64>,
    pub log_every: Option<u64>,
    pub sample_every: Option<u64>,
    pub checkpoint_every: Option<u64>,

    // --- data
    /// SFT: how many task-generated prompt/completion pairs to train on.
    pub examples: Option<usize>,
    /// SFT: a JSONL or Parquet file of `{prompt, completion}` instead of task pairs.
    pub dataset: Option<String>,

    // --- sampling (eval, grpo, rejection, distill)
    pub prompts: Option<usize>,
    pub k: Option<usize>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub max_new_tokens: Option<usize>,

    // --- grpo
    pub group_size: Option<usize>,
    pub beta: Option<f64>,
    pub epsilon: Option<f64>,
    pub epsilon_high: Option<f64>,
    pub num_iterations: Option<usize>,
    pub loss_type: Option<LossType>,
    pub scale_rewards: Option<ScaleRewards>,
    pub dynamic_sampling: Option<bool>,
    pub mask_truncated: Option<bool>,
    /// Truncated importance sampling over the sampler/trainer mismatch (TRL's
    /// `vllm_importance_sampling_mode`): `off`, `token_truncate`, `token_mask`,
    /// `sequence_truncate` or `sequence_mask`. Default: `token_truncate` when the model's
    /// `precision` is bf16 (the sampler decodes in f32), else `off`.
    pub sampler_correction: Option<SamplerCorrection>,
    /// Its cap `C` (TRL's `vllm_importance_sampling_cap`).
    pub sampler_correction_cap: Option<f64>,
    /// `token` (default) or `sequence` (GSPO).
    pub importance_sampling_level: Option<IsLevel>,
    /// `grpo` (default) or `grpo_passk`.
    pub adv_estimator: Option<AdvEstimator>,
    /// `k3` (default), `k2` or `k1`: the KL term's estimator when `beta > 0`.
    pub kl_estimator: Option<KlEstimator>,
    /// Groups whose rewards are all equal leave the loss (no redraw, unlike
    /// `dynamic_sampling`): prime-rl's default.
    pub zero_variance_filter: Option<bool>,
    /// Train only on the tokens whose entropy is in the top fraction ρ of the batch's (TRL's
    /// `top_entropy_quantile`; 1 = every token).
    pub top_entropy_quantile: Option<f64>,
    /// Subtract `beta ·` each completion's KL to the reference (`kl_estimator`, summed over
    /// its tokens, sampler log-probabilities against the reference's) from its reward instead
    /// of adding a KL term to the loss (verl's `use_kl_in_reward`).
    pub kl_in_reward: Option<bool>,
    /// Weight of an entropy bonus in the loss (TRL's `entropy_coef`): `loss − coef · H`, `H`
    /// the mean entropy of the completion tokens the policy loss trains on.
    pub entropy_coef: Option<f64>,
    /// Completions per micro-batch of the update (their gradients add up to one optimizer
    /// step): fewer bound the activations' memory. 0 (default): as many as fit in 4,096
    /// padded tokens.
    pub micro_batch: Option<usize>,
    pub overlong_buffer: Option<usize>,
    pub overlong_penalty: Option<f64>,
    /// Reward function weights, e.g. `{ accuracy = 1.0, format = 0.2 }`; a program of the
    /// user's own is `style = { command = ["python3", "style.py"], weight = 0.2 }`.
    pub rewards: Option<BTreeMap<String, RewardSpec>>,

    // --- rejection / distill
    /// Keep only the shortest accepted completion per prompt.
    pub shortest: Option<bool>,
    /// Rejection: the stage whose checkpoint the SFT on accepted samples starts from
    /// (default: the sampling checkpoint itself).
    pub sft_init: Option<String>,
    /// Distill: the teacher stage.
    pub teacher: Option<String>,
    /// Distill: the student's shape, as changes to `[model]`.
    pub model: Option<ModelOverride>,

    // --- parameter-efficient training
    /// Train low-rank adapters on the named weight matrices instead of every weight.
    pub lora: Option<LoraSpec>,
}

/// `lora = { rank, alpha, targets }`: LoRA (Hu et al. 2021). Each target matrix `W` becomes
/// `W + (alpha / rank) · A·B` with `A` `[d_in, rank]` random and `B` `[rank, d_out]` zero, and
/// only `A` and `B` train. Checkpoints hold the adapters and name the model they adapt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank of the update.
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank` (default `2 · rank`).
    pub alpha: Option<f64>,
    /// Weight matrices to adapt: `qkv`, `out`, `gate_up`, `down` (default all four), or their
    /// Hugging Face names (`q_proj`, `k_proj`, `v_proj` adapt the fused `qkv`; `o_proj` is
    /// `out`; `gate_proj`, `up_proj` are `gate_up`; `down_proj` is `down`), or `all-linear`.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// The weight matrices of a block LoRA can adapt.
pub const LORA_TARGETS: [&str; 4] = ["qkv", "out", "gate_up", "down"];

impl LoraSpec {
    /// The scale numerator, default applied.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * self.rank as f64)
    }

    /// The targets as block matrix names (sorted, deduplicated), or the first name that is
    /// not one.
    pub fn matrices(&self) -> Result<Vec<&'static str>, String> {
        if self.targets.is_empty() {
            return Ok(LORA_TARGETS.to_vec());
        }
        let mut out = Vec::new();
        for t in &self.targets {
            let names: &[&'static str] = match t.as_str() {
                "all-linear" | "all" => &LORA_TARGETS,
                "qkv" | "q_proj" | "k_proj" | "v_proj" => &["qkv"],
                "out" | "o_proj" => &["out"],
                "gate_up" | "gate_proj" | "up_proj" => &["gate_up"],
                "down" | "down_proj" => &["down"],
                other => {
                    return Err(format!(
                        "unknown LoRA target `{}` (known: qkv, out, gate_up, down, their Hugging Face names q_proj/k_proj/v_proj/o_proj/gate_proj/up_proj/down_proj, or all-linear)",
                        crate::untrusted::display(other)
                    ));
                }
            };
            out.extend_from_slice(names);
        }
        out.sort_by_key(|n| LORA_TARGETS.iter().position(|t| t == n));
        out.dedup();
        Ok(out)
    }
}

/// The GRPO loss normaliser (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Per-sequence mean, then mean over sequences (DeepSeekMath).
    Grpo,
    /// Sum over tokens divided by a constant (batch × max completion length).
    DrGrpo,
    /// Token-level mean over the whole batch.
    Dapo,
    /// CISPO (MiniMax-M1; TRL's `cispo`): every token's log-probability weighted by its
    /// importance ratio capped at `epsilon_high` and detached, normalised as `dapo`.
    Cispo,
}

/// Where the importance ratio is taken (TRL's `importance_sampling_level`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IsLevel {
    /// One ratio per token (GRPO, PPO).
    Token,
    /// One ratio per sequence, the exponent of its tokens' mean log-ratio (GSPO).
    Sequence,
}

/// How advantages are made from a group's rewards (verl's `adv_estimator`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdvEstimator {
    /// Group-relative: reward minus the group's mean, scaled as `scale_rewards` says.
    Grpo,
    /// pass@k-aware (verl's `grpo_passk`): only the group's best completion gets an
    /// advantage, its reward minus the second best (over the group's std unless
    /// `scale_rewards = "none"`).
    GrpoPassk,
}

/// The per-token estimator of KL(π‖π_ref) (verl's `kl_loss_type` names: k1 `kl`, k2 `mse`,
/// k3 `low_var_kl`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `logp − ref`.
    K1,
    /// `(logp − ref)² / 2`.
    K2,
    /// `exp(ref − logp) − (ref − logp) − 1` (DeepSeekMath, TRL).
    K3,
}

/// Correction of the loss for what the sampler and the trainer disagree on: each token's loss
/// times `exp(trainer − sampler log-probability)`, per token or summed per sequence, capped
/// at `C` (truncate) or dropped above it (mask), as TRL's `vllm_importance_sampling_mode`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerCorrection {
    Off,
    TokenTruncate,
    TokenMask,
    SequenceTruncate,
    SequenceMask,
}

/// One entry of a stage's `rewards`: a built-in reward's weight, or an external program.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RewardSpec {
    Weight(f64),
    Program(RewardProgram),
}

/// A reward computed by a program of the user's own: one long-lived child per stage speaking
/// JSON lines (`stages::reward_program`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewardProgram {
    /// The program and its arguments, run in the experiment folder (no shell).
    pub command: Vec<String>,
    #[serde(default = "unit_weight")]
    pub weight: f64,
    /// Seconds a batch of requests may take before the stage fails.
    #[serde(default = "program_timeout")]
    pub timeout: f64,
}

impl RewardProgram {
    /// The command as one line for the user (words with spaces quoted; made safe to print).
    pub fn shown(&self) -> String {
        let words: Vec<String> = self
            .command
            .iter()
            .map(|w| {
                if w.contains(char::is_whitespace) || w.is_empty() {
                    format!("{w:?}")
                } else {
                    w.clone()
                }
            })
            .collect();
        crate::untrusted::display(&words.join(" ")).into_owned()
    }
}

fn unit_weight() -> f64 {
    1.0
}
fn program_timeout() -> f64 {
    60.0
}

/// How rewards are scaled into advantages (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation.
    Group,
    /// Divide by the whole batch's standard deviation.
    Batch,
    /// Only subtract the group mean.
    None,
}

/// `[[loop]]`: repeat the stages from `start` to `end` (inclusive).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoopSpec {
    pub start: String,
    pub end: String,
    /// How many times the span runs in all (≥ 1).
    #[serde(default = "one")]
    pub times: u32,
    /// Stop early once this eval metric (e.g. `pass@1`) of the span's last eval reaches `until_at_least`.
    pub until_metric: Option<String>,
    pub until_at_least: Option<f64>,
}

fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_student_reshaped_from_a_pretrained_model_is_a_fresh_model() {
        let teacher = ModelSpec {
            from: Some("models/x.gguf".into()),
            chat: Some(true),
            system: Some("s".into()),
            ctx: 96,
            ..Default::default()
        };
        let student = ModelOverride {
            d_model: Some(64),
            layers: Some(2),
            ..Default::default()
        }
        .apply(&teacher);
        assert_eq!(student.from, None);
        assert_eq!((student.chat, student.system), (None, None));
        assert_eq!((student.d_model, student.layers, student.ctx), (64, 2, 96));
        // Only a longer context: still the pretrained model.
        let same = ModelOverride {
            ctx: Some(128),
            ..Default::default()
        }
        .apply(&teacher);
        assert_eq!(same.from.as_deref(), Some("models/x.gguf"));
    }

    #[test]
    fn lora_targets_accept_hugging_face_names() {
        let spec = |t: &[&str]| LoraSpec {
            rank: 4,
            alpha: None,
            targets: t.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(spec(&[]).matrices().unwrap(), LORA_TARGETS);
        assert_eq!(
            spec(&["down_proj", "q_proj", "v_proj"]).matrices().unwrap(),
            ["qkv", "down"]
        );
        assert_eq!(spec(&["all-linear"]).matrices().unwrap(), LORA_TARGETS);
        assert!(
            spec(&["lm_head"])
                .matrices()
                .unwrap_err()
                .contains("lm_head")
        );
        assert_eq!(spec(&[]).alpha(), 8.0);
    }
}
