//! Checks that serde cannot make: cross-references between stages and loops, keys that do not
//! apply to a stage's kind, and values out of range. Reports every problem with its position.

use super::overrides::Applied;
use super::resolve::{StageConfig, allowed_keys};
use super::span::{Seg, SpanIndex};
use super::types::{
    ExperimentSpec, LoraSpec, ModelSpec, Quantize, RewardSpec, StageKind, StageSpec, TaskSpec,
};
use super::{Origin, SpecError};
use std::collections::HashMap;
use std::path::Path;

/// Task generators known to this build (`crate::tasks` implements them).
pub const TASKS: &[&str] = &["arith", "countdown", "parity", "sort", "dataset"];
/// Dataset verifiers (`crate::tasks::verify` implements them).
pub const VERIFIERS: &[&str] = &["numeric", "exact", "choice", "regex", "countdown"];
/// Reward functions a GRPO stage may weight. `random` (a fair coin per completion) and
/// `incorrect` (1 − accuracy) are controls: a gain they also produce does not come from the
/// task's reward (Shao et al. 2025, "Spurious rewards").
pub const REWARDS: &[&str] = &[
    "accuracy",
    "format",
    "partial",
    "length",
    "random",
    "incorrect",
];
/// Eval metrics a loop may stop on.
pub const EVAL_METRICS: &[&str] = &[
    "pass@1",
    "greedy",
    "pass@k",
    "maj@k",
    "format_rate",
    "mean_length",
];

/// Turns a path in the document into an [`Origin`]: the `--set` argument that changed it, or
/// its place in the file (falling back to the nearest enclosing key that exists).
pub struct Locator<'a> {
    file: &'a Path,
    index: &'a SpanIndex<'a>,
    applied: &'a Applied,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a Path, index: &'a SpanIndex<'a>, applied: &'a Applied) -> Self {
        Locator {
            file,
            index,
            applied,
        }
    }

    fn origin(&self, path: &[Seg<'_>], want_key: bool) -> Origin {
        let canonical = path
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.to_string(),
                Seg::Index(i) => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        if let Some(set) = self.applied.get(&canonical) {
            return Origin::Override(set.clone());
        }
        for n in (0..=path.len()).rev() {
            let span = if want_key || n < path.len() {
                self.index.key_span(&path[..n])
            } else {
                self.index.value_span(&path[..n])
            };
            if let Some(span) = span {
                let (line, col) = self.index.line_col(span.start);
                return Origin::File {
                    file: self.file.to_path_buf(),
                    line,
                    col,
                };
            }
        }
        Origin::File {
            file: self.file.to_path_buf(),
            line: 1,
            col: 1,
        }
    }

    /// An error about the value at `path`.
    pub fn value(&self, path: &[Seg<'_>], message: impl Into<String>) -> SpecError {
        SpecError {
            origin: self.origin(path, false),
            message: message.into(),
        }
    }

    /// An error about the key at `path`.
    pub fn key(&self, path: &[Seg<'_>], message: impl Into<String>) -> SpecError {
        SpecError {
            origin: self.origin(path, true),
            message: message.into(),
        }
    }
}

fn stage_path(i: usize, key: &str) -> [Seg<'_>; 3] {
    [Seg::Key("stage"), Seg::Index(i), Seg::Key(key)]
}

/// The error accumulator the section checks share: every problem found, with its place.
struct Checks<'a> {
    at: &'a Locator<'a>,
    errs: Vec<SpecError>,
}

impl Checks<'_> {
    /// An error on the value at `path` unless `ok`.
    fn value(&mut self, ok: bool, path: &[Seg<'_>], msg: impl Into<String>) {
        if !ok {
            self.errs.push(self.at.value(path, msg));
        }
    }

    /// An error on the key at `path` unless `ok`.
    fn key(&mut self, ok: bool, path: &[Seg<'_>], msg: impl Into<String>) {
        if !ok {
            self.errs.push(self.at.key(path, msg));
        }
    }
}

/// Every problem in `spec`; empty when it is valid. `dir` is the experiment folder (for
/// relative dataset paths).
pub fn validate(spec: &ExperimentSpec, at: &Locator<'_>, dir: &Path) -> Vec<SpecError> {
    let mut c = Checks {
        at,
        errs: Vec::new(),
    };
    model(&mut c, &spec.model, &[Seg::Key("model")]);
    task(&mut c, &spec.task);
    stages(&mut c, spec, dir);
    loops(&mut c, spec);
    c.errs
}

/// A model's shape and source, at `base` (`[model]`, or a distill stage's student).
fn model(c: &mut Checks<'_>, m: &ModelSpec, base: &[Seg<'_>]) {
    let mk = |k| {
        let mut p = base.to_vec();
        p.push(Seg::Key(k));
        p
    };
    c.value(
        (4..=MAX_WIDTH).contains(&m.d_model),
        &mk("d_model"),
        format!("d_model must be between 4 and {MAX_WIDTH}"),
    );
    c.value(
        (1..=MAX_LAYERS).contains(&m.layers),
        &mk("layers"),
        format!("layers must be between 1 and {MAX_LAYERS}"),
    );
    c.value(m.heads >= 1, &mk("heads"), "heads must be at least 1");
    c.value(
        m.heads >= 1
            && m.d_model.is_multiple_of(m.heads)
            && (m.d_model / m.heads.max(1)).is_multiple_of(2),
        &mk("heads"),
        "heads must divide d_model into an even head size (RoPE rotates pairs)",
    );
    c.value(
        (8..=4096).contains(&m.ctx),
        &mk("ctx"),
        "ctx must be between 8 and 4096",
    );
    c.value(
        m.mlp.is_none_or(|v| (1..=4 * MAX_WIDTH).contains(&v)),
        &mk("mlp"),
        format!("mlp must be between 1 and {}", 4 * MAX_WIDTH),
    );
    c.value(
        m.rope_theta.is_finite() && m.rope_theta > 1.0,
        &mk("rope_theta"),
        "rope_theta must be greater than 1",
    );
    if let Some(from) = &m.from {
        let p = Path::new(from);
        c.value(
            super::source::is_pretrained(p),
            &mk("from"),
            super::source::not_a_model(p),
        );
    }
    if let Some(moe) = &m.moe {
        moe_keys(c, m, moe, &mk("moe"));
    }
    if let Some(mtp) = &m.mtp {
        let at = mk("mtp");
        c.key(
            m.from.is_none(),
            &at,
            "[model.mtp] is for models trained from scratch",
        );
        let mut w = at.clone();
        w.push(Seg::Key("weight"));
        c.value(
            mtp.weight.is_finite() && (0.0..=10.0).contains(&mtp.weight),
            &w,
            "weight must be between 0 and 10",
        );
    }
    if let Some(mla) = &m.mla {
        let at = mk("mla");
        let key = |k| {
            let mut p = at.clone();
            p.push(Seg::Key(k));
            p
        };
        c.key(
            m.from.is_none(),
            &at,
            "[model.mla] is for models trained from scratch (a pretrained model's attention \
             stays as it was trained)",
        );
        c.value(
            mla.kv_rank.is_none_or(|v| (1..=MAX_WIDTH).contains(&v)),
            &key("kv_rank"),
            format!("kv_rank must be between 1 and {MAX_WIDTH}"),
        );
        c.value(
            mla.rope_dim
                .is_none_or(|v| (2..=1024).contains(&v) && v.is_multiple_of(2)),
            &key("rope_dim"),
            "rope_dim must be even, between 2 and 1024",
        );
    }
}

/// `[model.moe]`'s ranges, at `base`.
fn moe_keys(c: &mut Checks<'_>, m: &ModelSpec, moe: &super::types::MoeSpec, base: &[Seg<'_>]) {
    let mk = |k| {
        let mut p = base.to_vec();
        p.push(Seg::Key(k));
        p
    };
    c.key(
        m.from.is_none(),
        base,
        "[model.moe] is for models trained from scratch (a pretrained model's MLPs stay dense)",
    );
    c.value(
        (2..=256).contains(&moe.experts),
        &mk("experts"),
        "experts must be between 2 and 256",
    );
    c.value(
        (1..=moe.experts.max(1)).contains(&moe.top_k),
        &mk("top_k"),
        "top_k must be between 1 and experts",
    );
    c.value(
        (1..=16).contains(&moe.shared),
        &mk("shared"),
        "shared must be between 1 and 16",
    );
    c.value(
        moe.expert_mlp
            .is_none_or(|v| (1..=4 * MAX_WIDTH).contains(&v))
            && moe.width(m.mlp_width()) <= 4 * MAX_WIDTH,
        &mk("expert_mlp"),
        format!("expert_mlp must be between 1 and {}", 4 * MAX_WIDTH),
    );
    c.value(
        moe.bias_rate.is_finite() && (0.0..=1.0).contains(&moe.bias_rate),
        &mk("bias_rate"),
        "bias_rate must be between 0 and 1",
    );
    c.value(
        moe.aux_loss.is_finite() && (0.0..=1.0).contains(&moe.aux_loss),
        &mk("aux_loss"),
        "aux_loss must be between 0 and 1",
    );
}

/// `[task]`: the generator or dataset, its verifier, the held-out size and the SFT corpus mix.
fn task(c: &mut Checks<'_>, t: &TaskSpec) {
    let tk = |k| [Seg::Key("task"), Seg::Key(k)];
    c.value(
        TASKS.contains(&t.name.as_str()),
        &tk("name"),
        format!("unknown task `{}` (known: {})", t.name, TASKS.join(", ")),
    );
    c.value(
        (1..=5).contains(&t.difficulty),
        &tk("difficulty"),
        "difficulty must be between 1 and 5",
    );
    if t.name == "dataset" {
        dataset(c, t);
    } else {
        for (k, set) in t.dataset_keys() {
            c.value(
                !set,
                &tk(k),
                format!(
                    "`{k}` applies only to name = \"dataset\" (this task is `{}`)",
                    t.name
                ),
            );
        }
    }
    c.value(
        (1..=MAX_HELDOUT).contains(&t.heldout),
        &tk("heldout"),
        format!("heldout must be between 1 and {MAX_HELDOUT}"),
    );
    let ck = |k| [Seg::Key("task"), Seg::Key("corpus"), Seg::Key(k)];
    for (k, v) in [
        ("bare", t.corpus.bare),
        ("wrong", t.corpus.wrong),
        ("wrong_trace", t.corpus.wrong_trace),
        ("search", t.corpus.search),
    ] {
        c.value(
            (0.0..=1.0).contains(&v),
            &ck(k),
            format!("{k} is a share and must be between 0 and 1"),
        );
    }
    c.value(
        t.corpus.bare + t.corpus.wrong + t.corpus.wrong_trace + t.corpus.search <= 1.0 + 1e-9,
        &[Seg::Key("task"), Seg::Key("corpus")],
        "bare + wrong + wrong_trace + search must not exceed 1",
    );
}

/// A dataset task's files, verifier and pattern.
fn dataset(c: &mut Checks<'_>, t: &TaskSpec) {
    let tk = |k| [Seg::Key("task"), Seg::Key(k)];
    c.value(
        t.path.is_some(),
        &tk("name"),
        "a dataset task needs `path` (a JSONL or Parquet file of rows)",
    );
    for (k, p) in [("path", &t.path), ("test", &t.test)] {
        if let Some(p) = p {
            c.value(
                Path::new(p).is_file(),
                &tk(k),
                format!(
                    "no such file `{p}` (looked in the experiment folder, the project root and the current folder)"
                ),
            );
        }
    }
    let v = t.verifier.as_deref().unwrap_or("numeric");
    c.value(
        VERIFIERS.contains(&v),
        &tk("verifier"),
        format!("unknown verifier `{v}` (known: {})", VERIFIERS.join(", ")),
    );
    c.value(
        v != "regex" || t.pattern.is_some(),
        &tk("verifier"),
        "verifier `regex` needs `pattern`",
    );
    if let Some(p) = &t.pattern
        && let Err(e) = regex::Regex::new(p)
    {
        c.value(false, &tk("pattern"), format!("invalid pattern: {e}"));
    }
}

/// `[[stage]]`: each stage's name, keys, references, LoRA, ranges, memory and rewards.
fn stages(c: &mut Checks<'_>, spec: &ExperimentSpec, dir: &Path) {
    c.key(
        !spec.stage.is_empty(),
        &[],
        "the experiment has no [[stage]] tables",
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, s) in spec.stage.iter().enumerate() {
        c.value(
            !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            &stage_path(i, "name"),
            "stage names use letters, digits, `-` and `_` only (they name run folders)",
        );
        if let Some(first) = seen.insert(&s.name, i) {
            c.value(
                false,
                &stage_path(i, "name"),
                format!(
                    "duplicate stage name `{}` (stage {} has it already)",
                    s.name,
                    first + 1
                ),
            );
            seen.insert(&s.name, first);
        }
        let allowed = allowed_keys(s.kind);
        for (key, _) in c.at.index.keys(&[Seg::Key("stage"), Seg::Index(i)]) {
            c.key(
                allowed.contains(&key.as_str()),
                &stage_path(i, &key),
                format!("`{key}` does not apply to a {} stage", s.kind),
            );
        }
        references(c, spec, i);
        if let Some(lora) = &s.lora {
            stage_lora(c, spec, i, lora);
        }
        c.value(
            spec.model.quantize == Quantize::None || !s.kind.trains() || s.lora.is_some(),
            &[Seg::Key("model"), Seg::Key("quantize")],
            format!(
                "quantize keeps a LoRA stage's frozen base quantised, but stage `{}` trains \
                 every weight: give it [stage.lora] or set quantize = \"none\"",
                s.name
            ),
        );
        if let Some(d) = &s.dataset {
            c.value(
                dir.join(d).is_file(),
                &stage_path(i, "dataset"),
                format!("dataset file `{d}` not found"),
            );
        }
        if let Some(student) = &s.model {
            model(c, &student.apply(&spec.model), &stage_path(i, "model"));
        }
        let config = StageConfig::resolve(s, &spec.model, spec.task.heldout);
        ranges(c, spec, i, &config);
        if c.errs.is_empty() {
            memory(c, spec, i, &config);
        }
        rewards(c, i, s);
    }
}

/// A stage's `init`, `sft_init` and `teacher` name an earlier training stage, and the kinds
/// that start from a model have one.
fn references(c: &mut Checks<'_>, spec: &ExperimentSpec, i: usize) {
    let s = &spec.stage[i];
    let earlier = |name: &str| -> Result<(), String> {
        match spec.stage.iter().position(|o| o.name == name) {
            None => Err(format!("no stage named `{name}`")),
            Some(j) if j >= i => Err(format!(
                "`{name}` does not come before `{}` in the pipeline",
                s.name
            )),
            Some(j) if !spec.stage[j].kind.trains() => Err(format!(
                "`{name}` is an eval stage and writes no checkpoint"
            )),
            Some(_) => Ok(()),
        }
    };
    for (key, val) in [
        ("init", &s.init),
        ("sft_init", &s.sft_init),
        ("teacher", &s.teacher),
    ] {
        if let Some(Err(msg)) = val.as_deref().map(earlier) {
            c.value(false, &stage_path(i, key), msg);
        }
    }
    let needs_init = matches!(
        s.kind,
        StageKind::Grpo | StageKind::Rejection | StageKind::Eval
    );
    c.key(
        !needs_init || s.init.is_some() || spec.model.from.is_some(),
        &stage_path(i, "name"),
        format!(
            "a {} stage needs `init` (the stage it starts from) or [model] from",
            s.kind
        ),
    );
    c.key(
        s.kind != StageKind::Distill || s.teacher.is_some(),
        &stage_path(i, "name"),
        "a distill stage needs `teacher`",
    );
}

/// A stage's LoRA table.
fn stage_lora(c: &mut Checks<'_>, spec: &ExperimentSpec, i: usize, lora: &LoraSpec) {
    let path = stage_path(i, "lora");
    c.value(
        spec.stage[i].init.is_some() || spec.model.from.is_some(),
        &path,
        "LoRA adapts an existing model: give the stage `init` or [model] from",
    );
    c.value(
        (1..=MAX_LORA_RANK).contains(&lora.rank),
        &path,
        format!("lora rank must be between 1 and {MAX_LORA_RANK}"),
    );
    c.value(
        lora.alpha() > 0.0 && lora.alpha().is_finite(),
        &path,
        "lora alpha must be a finite number above 0",
    );
    if let Err(msg) = lora.matrices() {
        c.value(false, &path, msg);
    }
}

/// The numeric settings of a stage, as resolved with its kind's defaults. A key is checked only
/// where it applies to the stage's kind (the others are reported as misplaced keys).
fn ranges(c: &mut Checks<'_>, spec: &ExperimentSpec, i: usize, cfg: &StageConfig) {
    let s = &spec.stage[i];
    let mut r = Ranges {
        c,
        allowed: allowed_keys(s.kind),
        i,
    };
    let trains = s.kind.trains();
    let supervised = trains && s.kind != StageKind::Grpo;
    optimisation_ranges(&mut r, cfg, trains, supervised);
    sampling_ranges(&mut r, spec, i, cfg, supervised);
    grpo_ranges(&mut r, cfg);
}

/// Range checks of one stage's keys, each made only where the key applies to its kind.
struct Ranges<'c, 'a> {
    c: &'c mut Checks<'a>,
    allowed: Vec<&'static str>,
    i: usize,
}

impl Ranges<'_, '_> {
    fn check(&mut self, key: &str, ok: bool, msg: &str) {
        if self.allowed.contains(&key) {
            self.c
                .value(ok, &stage_path(self.i, key), format!("{key} {msg}"));
        }
    }
}

/// Steps, batch, learning rate and its schedule, regularisation, logging.
fn optimisation_ranges(r: &mut Ranges<'_, '_>, cfg: &StageConfig, trains: bool, supervised: bool) {
    r.check("steps", !trains || cfg.steps >= 1, "must be at least 1");
    r.check("batch", !supervised || cfg.batch >= 1, "must be at least 1");
    r.check(
        "lr",
        !trains || (cfg.lr > 0.0 && cfg.lr < 1.0),
        "must be in (0, 1)",
    );
    r.check("warmup", cfg.warmup <= cfg.steps, "must not exceed steps");
    r.check(
        "min_lr_ratio",
        (0.0..=1.0).contains(&cfg.min_lr_ratio),
        "must be between 0 and 1",
    );
    r.check(
        "weight_decay",
        (0.0..=1.0).contains(&cfg.weight_decay),
        "must be between 0 and 1 (a larger decay drives the weights to NaN)",
    );
    r.check(
        "grad_clip",
        cfg.grad_clip >= 0.0 && cfg.grad_clip.is_finite(),
        "must be a finite number, at least 0 (0 = off)",
    );
    r.check("log_every", cfg.log_every >= 1, "must be at least 1");
    r.check(
        "checkpoint_every",
        cfg.checkpoint_every >= 1,
        "must be at least 1",
    );
}

/// Data and sampling sizes: examples, prompts, k, batch bound, temperature, top-p, lengths.
fn sampling_ranges(
    r: &mut Ranges<'_, '_>,
    spec: &ExperimentSpec,
    i: usize,
    cfg: &StageConfig,
    supervised: bool,
) {
    let s = &spec.stage[i];
    let within = |v: usize, max: usize| (1..=max).contains(&v);
    let between = |max: usize| format!("must be between 1 and {max}");
    r.check(
        "examples",
        within(cfg.examples, MAX_EXAMPLES),
        &between(MAX_EXAMPLES),
    );
    // An eval's default `prompts` is the held-out size, checked on its own line.
    r.check(
        "prompts",
        s.prompts.is_none() || within(cfg.prompts, MAX_HELDOUT),
        &between(MAX_HELDOUT),
    );
    r.check("k", within(cfg.k, MAX_SAMPLES), &between(MAX_SAMPLES));
    r.check(
        "batch",
        !supervised || cfg.batch <= MAX_BATCH,
        &format!("must be at most {MAX_BATCH}"),
    );
    r.check(
        "temperature",
        temperature_ok(cfg.temperature),
        TEMPERATURE_RULE,
    );
    r.check(
        "top_p",
        cfg.top_p > 0.0 && cfg.top_p <= 1.0,
        "must be in (0, 1]",
    );
    r.check(
        "max_new_tokens",
        cfg.max_new_tokens < spec.model.ctx,
        "must be below the model's ctx (0 = up to the context)",
    );
}

/// GRPO's own settings: the group, the trust region, the KL and the objective switches.
fn grpo_ranges(r: &mut Ranges<'_, '_>, cfg: &StageConfig) {
    let within = |v: usize, max: usize| (1..=max).contains(&v);
    let between = |max: usize| format!("must be between 1 and {max}");
    r.check(
        "group_size",
        (2..=MAX_SAMPLES).contains(&cfg.group_size),
        &format!("must be between 2 and {MAX_SAMPLES}"),
    );
    r.check(
        "beta",
        (0.0..=MAX_BETA).contains(&cfg.beta),
        &format!("must be between 0 and {MAX_BETA} (0 = no reference model)"),
    );
    r.check(
        "epsilon",
        cfg.epsilon > 0.0 && cfg.epsilon < 1.0,
        "must be in (0, 1)",
    );
    r.check(
        "epsilon_high",
        cfg.epsilon_high >= cfg.epsilon,
        "must be at least epsilon",
    );
    r.check(
        "num_iterations",
        within(cfg.num_iterations, MAX_ITERATIONS),
        &between(MAX_ITERATIONS),
    );
    r.check(
        "micro_batch",
        cfg.micro_batch <= MAX_SAMPLES,
        &format!("must be at most {MAX_SAMPLES} completions (0 = as many as fit)"),
    );
    r.check(
        "kl_in_reward",
        !cfg.kl_in_reward || cfg.beta > 0.0,
        "needs beta > 0 (the KL's weight in the reward)",
    );
    r.check(
        "entropy_coef",
        (0.0..=1.0).contains(&cfg.entropy_coef),
        "must be between 0 and 1",
    );
    r.check(
        "top_entropy_quantile",
        (0.0..=1.0).contains(&cfg.top_entropy_quantile),
        "must be between 0 (only the highest-entropy token) and 1 (every token)",
    );
    r.check(
        "sampler_correction_cap",
        cfg.sampler_correction_cap > 1.0 && cfg.sampler_correction_cap <= 100.0,
        "must be above 1 and at most 100",
    );
}

/// A stage that would not fit in this machine's memory.
fn memory(c: &mut Checks<'_>, spec: &ExperimentSpec, i: usize, cfg: &StageConfig) {
    let need = memory_bytes(&spec.model, spec.task.heldout, cfg);
    c.key(
        need <= memory_limit(),
        &stage_path(i, "name"),
        format!(
            "stage `{}` needs about {:.1} GB (weights, optimizer state, activations, KV cache \
             and held-out set), more than this machine's {:.1} GB: make the model, batch or \
             prompts smaller",
            spec.stage[i].name,
            need / 1e9,
            memory_limit() / 1e9
        ),
    );
}

/// A GRPO stage's reward functions and programs.
fn rewards(c: &mut Checks<'_>, i: usize, s: &StageSpec) {
    for (name, r) in s.rewards.iter().flatten() {
        let here = [
            Seg::Key("stage"),
            Seg::Index(i),
            Seg::Key("rewards"),
            Seg::Key(name),
        ];
        let builtin = REWARDS.contains(&name.as_str());
        match r {
            RewardSpec::Weight(w) => {
                c.key(
                    builtin,
                    &here,
                    format!(
                        "unknown reward function `{name}` (known: {}; or a program: \
                         {{ command = [\"python3\", \"reward.py\"], weight = 0.2 }})",
                        REWARDS.join(", ")
                    ),
                );
                c.value(
                    !builtin || w.abs() <= MAX_REWARD_WEIGHT,
                    &here,
                    format!("reward weights must be between -{MAX_REWARD_WEIGHT} and {MAX_REWARD_WEIGHT}"),
                );
            }
            RewardSpec::Program(p) => {
                c.key(
                    !builtin,
                    &here,
                    format!("`{name}` is a built-in reward; name the program otherwise"),
                );
                c.value(
                    p.command.first().is_some_and(|p| !p.is_empty()),
                    &here,
                    "command must name a program",
                );
                c.value(
                    p.weight.abs() <= MAX_REWARD_WEIGHT,
                    &here,
                    format!(
                        "reward weights must be between -{MAX_REWARD_WEIGHT} and {MAX_REWARD_WEIGHT}"
                    ),
                );
                c.value(
                    p.timeout > 0.0 && p.timeout <= 3600.0,
                    &here,
                    "timeout must be between 0 and 3600 seconds",
                );
            }
        }
    }
}

/// `[[loop]]`: each names stages in order, loops do not overlap, and a stop rule is whole.
fn loops(c: &mut Checks<'_>, spec: &ExperimentSpec) {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, l) in spec.loops.iter().enumerate() {
        let lp = |k| [Seg::Key("loop"), Seg::Index(i), Seg::Key(k)];
        let pos = |name: &str| spec.stage.iter().position(|s| s.name == name);
        let (a, b) = (pos(&l.start), pos(&l.end));
        c.value(
            a.is_some(),
            &lp("start"),
            format!("no stage named `{}`", l.start),
        );
        c.value(
            b.is_some(),
            &lp("end"),
            format!("no stage named `{}`", l.end),
        );
        if let (Some(a), Some(b)) = (a, b) {
            if a > b {
                c.value(
                    false,
                    &lp("end"),
                    format!("`{}` comes before `{}`", l.end, l.start),
                );
            } else if spans.iter().any(|&(x, y)| a <= y && x <= b) {
                c.value(false, &lp("start"), "loops must not overlap");
            } else {
                spans.push((a, b));
            }
        }
        c.value(l.times >= 1, &lp("times"), "times must be at least 1");
        match (&l.until_metric, l.until_at_least) {
            (Some(m), Some(_)) => c.value(
                EVAL_METRICS.contains(&m.as_str()),
                &lp("until_metric"),
                format!(
                    "unknown eval metric `{m}` (known: {})",
                    EVAL_METRICS.join(", ")
                ),
            ),
            (Some(_), None) => c.key(
                false,
                &lp("until_metric"),
                "until_metric needs until_at_least",
            ),
            (None, Some(_)) => c.key(
                false,
                &lp("until_at_least"),
                "until_at_least needs until_metric",
            ),
            _ => {}
        }
    }
}

/// Upper bounds on sizes: far beyond what this tool trains, low enough that no product of two
/// of them overflows and that a typo (`layers = 100000`, `k = 9223372036854775807`) is an error
/// with the spec's line and column rather than an abort in `run`.
pub const MAX_WIDTH: usize = 16_384;
pub const MAX_LAYERS: usize = 512;
pub const MAX_HELDOUT: usize = 1_000_000;
pub const MAX_EXAMPLES: usize = 10_000_000;
pub const MAX_SAMPLES: usize = 4_096;
pub const MAX_BATCH: usize = 65_536;
pub const MAX_ITERATIONS: usize = 1_000;
pub const MAX_LORA_RANK: usize = 1_024;
/// Bounds on values whose larger settings only make the loss NaN (TRL's betas are ≤ 1).
pub const MAX_BETA: f64 = 100.0;
pub const MAX_REWARD_WEIGHT: f64 = 1e6;

/// A sampling temperature is 0 (greedy) or between these: below ~1e-38 the logits divided by it
/// overflow and sampling gives garbage instead of the greedy token.
pub const MIN_TEMPERATURE: f64 = 1e-3;
pub const MAX_TEMPERATURE: f64 = 100.0;
pub const TEMPERATURE_RULE: &str = "must be 0 (greedy) or between 0.001 and 100";

/// Whether `t` is a temperature sampling can use ([`TEMPERATURE_RULE`]).
pub fn temperature_ok(t: f64) -> bool {
    t == 0.0 || (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t)
}

/// Bytes a stage needs at most, roughly: weights, gradients and AdamW's two moments (plus a
/// frozen reference for GRPO), the activations of one training batch, the KV cache of the
/// sequences sampled at once, and the held-out set. In f64, so huge values cannot overflow.
pub fn memory_bytes(m: &ModelSpec, heldout: usize, c: &StageConfig) -> f64 {
    let f = |v: usize| v as f64;
    let d = f(m.d_model);
    let mlp = f(m.mlp.unwrap_or(4 * m.d_model));
    let (layers, ctx, vocab) = (f(m.layers), f(m.ctx), 256.0);
    let params = 2.0 * vocab * d + layers * (2.0 * d + 4.0 * d * d + 3.0 * d * mlp) + d;
    let copies = match c.kind {
        StageKind::Eval => 1.0,
        StageKind::Grpo => 5.0,
        _ => 4.0,
    };
    // Floats kept per token and layer for the backward pass (inputs of each op), and the
    // logits.
    let per_token = layers * (8.0 * d + 3.0 * mlp) + 2.0 * vocab;
    let tokens = match c.kind {
        StageKind::Eval => 0.0,
        // GRPO trains in micro-batches of about 4,096 tokens (or `micro_batch` completions).
        StageKind::Grpo => {
            let rows = match c.micro_batch {
                0 => f(c.prompts) * f(c.group_size),
                n => f(n),
            };
            4_096f64.min(rows * ctx)
        }
        _ => f(c.batch) * ctx,
    };
    let rows = match c.kind {
        StageKind::Grpo => f(c.prompts) * f(c.group_size),
        StageKind::Eval | StageKind::Rejection => f(c.prompts) * f(c.k),
        _ => 0.0,
    };
    let kv = rows * layers * ctx * 2.0 * d;
    let floats = params * copies + tokens * per_token + kv;
    floats * 4.0 + f(heldout) * ctx * 8.0
}

/// This machine's memory (`MemTotal`), or 16 GB where it cannot be read.
pub fn memory_limit() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(16e9, |kb| kb * 1024.0)
}
