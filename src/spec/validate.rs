//! Checks that serde cannot make: cross-references between stages and loops, keys that do not
//! apply to a stage's kind, and values out of range. Reports every problem with its position.

use super::overrides::Applied;
use super::resolve::{StageConfig, allowed_keys};
use super::span::{Seg, SpanIndex};
use super::types::{ExperimentSpec, StageKind};
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

/// Every problem in `spec`; empty when it is valid. `dir` is the experiment folder (for
/// relative dataset paths).
pub fn validate(spec: &ExperimentSpec, at: &Locator<'_>, dir: &Path) -> Vec<SpecError> {
    let mut errs = Vec::new();
    let mut check = |ok: bool, path: &[Seg<'_>], msg: &str| {
        if !ok {
            errs.push(at.value(path, msg));
        }
    };

    // [model]
    let m = &spec.model;
    let mk = |k| [Seg::Key("model"), Seg::Key(k)];
    check(
        (4..=MAX_WIDTH).contains(&m.d_model),
        &mk("d_model"),
        &format!("d_model must be between 4 and {MAX_WIDTH}"),
    );
    check(
        (1..=MAX_LAYERS).contains(&m.layers),
        &mk("layers"),
        &format!("layers must be between 1 and {MAX_LAYERS}"),
    );
    check(m.heads >= 1, &mk("heads"), "heads must be at least 1");
    check(
        m.heads >= 1
            && m.d_model.is_multiple_of(m.heads)
            && (m.d_model / m.heads.max(1)).is_multiple_of(2),
        &mk("heads"),
        "heads must divide d_model into an even head size (RoPE rotates pairs)",
    );
    check(
        (8..=4096).contains(&m.ctx),
        &mk("ctx"),
        "ctx must be between 8 and 4096",
    );
    check(
        m.mlp.is_none_or(|v| (1..=4 * MAX_WIDTH).contains(&v)),
        &mk("mlp"),
        &format!("mlp must be between 1 and {}", 4 * MAX_WIDTH),
    );
    check(
        m.rope_theta.is_finite() && m.rope_theta > 1.0,
        &mk("rope_theta"),
        "rope_theta must be greater than 1",
    );
    if let Some(from) = &m.from {
        let p = Path::new(from);
        check(
            crate::model::pretrained::is_pretrained(p),
            &mk("from"),
            &format!(
                "{from}: not a Hugging Face model folder (config.json + safetensors) or a .gguf file{}",
                if p.exists() {
                    ""
                } else {
                    " (no such file or folder)"
                }
            ),
        );
    }

    // [task]
    let t = &spec.task;
    let tk = |k| [Seg::Key("task"), Seg::Key(k)];
    check(
        TASKS.contains(&t.name.as_str()),
        &tk("name"),
        &format!("unknown task `{}` (known: {})", t.name, TASKS.join(", ")),
    );
    check(
        (1..=5).contains(&t.difficulty),
        &tk("difficulty"),
        "difficulty must be between 1 and 5",
    );
    if t.name == "dataset" {
        check(
            t.path.is_some(),
            &tk("name"),
            "a dataset task needs `path` (a JSONL or Parquet file of rows)",
        );
        for (k, p) in [("path", &t.path), ("test", &t.test)] {
            if let Some(p) = p {
                check(
                    Path::new(p).is_file(),
                    &tk(k),
                    &format!(
                        "no such file `{p}` (looked in the experiment folder, the project root and the current folder)"
                    ),
                );
            }
        }
        let v = t.verifier.as_deref().unwrap_or("numeric");
        check(
            VERIFIERS.contains(&v),
            &tk("verifier"),
            &format!("unknown verifier `{v}` (known: {})", VERIFIERS.join(", ")),
        );
        check(
            v != "regex" || t.pattern.is_some(),
            &tk("verifier"),
            "verifier `regex` needs `pattern`",
        );
        if let Some(p) = &t.pattern {
            let compiled = regex::Regex::new(p);
            check(
                compiled.is_ok(),
                &tk("pattern"),
                &format!(
                    "invalid pattern: {}",
                    compiled.err().map(|e| e.to_string()).unwrap_or_default()
                ),
            );
        }
    } else {
        for (k, set) in t.dataset_keys() {
            check(
                !set,
                &tk(k),
                &format!(
                    "`{k}` applies only to name = \"dataset\" (this task is `{}`)",
                    t.name
                ),
            );
        }
    }
    check(
        (1..=MAX_HELDOUT).contains(&t.heldout),
        &tk("heldout"),
        &format!("heldout must be between 1 and {MAX_HELDOUT}"),
    );
    let ck = |k| [Seg::Key("task"), Seg::Key("corpus"), Seg::Key(k)];
    for (k, v) in [
        ("bare", t.corpus.bare),
        ("wrong", t.corpus.wrong),
        ("wrong_trace", t.corpus.wrong_trace),
        ("search", t.corpus.search),
    ] {
        check(
            (0.0..=1.0).contains(&v),
            &ck(k),
            &format!("{k} is a share and must be between 0 and 1"),
        );
    }
    check(
        t.corpus.bare + t.corpus.wrong + t.corpus.wrong_trace + t.corpus.search <= 1.0 + 1e-9,
        &[Seg::Key("task"), Seg::Key("corpus")],
        "bare + wrong + wrong_trace + search must not exceed 1",
    );

    // [[stage]]
    if spec.stage.is_empty() {
        errs.push(at.key(&[], "the experiment has no [[stage]] tables"));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, s) in spec.stage.iter().enumerate() {
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(at.value(
                &stage_path(i, "name"),
                "stage names use letters, digits, `-` and `_` only (they name run folders)",
            ));
        }
        if let Some(first) = seen.insert(&s.name, i) {
            errs.push(at.value(
                &stage_path(i, "name"),
                format!(
                    "duplicate stage name `{}` (stage {} has it already)",
                    s.name,
                    first + 1
                ),
            ));
            seen.insert(&s.name, first);
        }
        let allowed = allowed_keys(s.kind);
        for (key, _) in at.index.keys(&[Seg::Key("stage"), Seg::Index(i)]) {
            if !allowed.contains(&key.as_str()) {
                errs.push(at.key(
                    &stage_path(i, &key),
                    format!("`{key}` does not apply to a {} stage", s.kind),
                ));
            }
        }
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
                errs.push(at.value(&stage_path(i, key), msg));
            }
        }
        let needs_init = matches!(
            s.kind,
            StageKind::Grpo | StageKind::Rejection | StageKind::Eval
        );
        if needs_init && s.init.is_none() && spec.model.from.is_none() {
            errs.push(at.key(
                &[Seg::Key("stage"), Seg::Index(i), Seg::Key("name")],
                format!(
                    "a {} stage needs `init` (the stage it starts from) or [model] from",
                    s.kind
                ),
            ));
        }
        if let Some(lora) = &s.lora {
            let path = stage_path(i, "lora");
            if s.init.is_none() && spec.model.from.is_none() {
                errs.push(at.value(
                    &path,
                    "LoRA adapts an existing model: give the stage `init` or [model] from",
                ));
            }
            if !(1..=MAX_LORA_RANK).contains(&lora.rank) {
                errs.push(at.value(
                    &path,
                    format!("lora rank must be between 1 and {MAX_LORA_RANK}"),
                ));
            }
            if !(lora.alpha() > 0.0 && lora.alpha().is_finite()) {
                errs.push(at.value(&path, "lora alpha must be a finite number above 0"));
            }
            if let Err(msg) = lora.matrices() {
                errs.push(at.value(&path, msg));
            }
        }
        if s.kind == StageKind::Distill && s.teacher.is_none() {
            errs.push(at.key(&stage_path(i, "name"), "a distill stage needs `teacher`"));
        }
        if let Some(d) = &s.dataset
            && !dir.join(d).is_file()
        {
            errs.push(at.value(
                &stage_path(i, "dataset"),
                format!("dataset file `{d}` not found"),
            ));
        }
        let c = StageConfig::resolve(s, &spec.model, spec.task.heldout);
        let mut range = |key: &str, ok: bool, msg: &str| {
            if !ok && allowed.contains(&key) {
                errs.push(at.value(&stage_path(i, key), format!("{key} {msg}")));
            }
        };
        let trains = s.kind.trains();
        range("steps", !trains || c.steps >= 1, "must be at least 1");
        range(
            "batch",
            !trains || s.kind == StageKind::Grpo || c.batch >= 1,
            "must be at least 1",
        );
        range(
            "lr",
            !trains || (c.lr > 0.0 && c.lr < 1.0),
            "must be in (0, 1)",
        );
        range("warmup", c.warmup <= c.steps, "must not exceed steps");
        range(
            "min_lr_ratio",
            (0.0..=1.0).contains(&c.min_lr_ratio),
            "must be between 0 and 1",
        );
        range("weight_decay", c.weight_decay >= 0.0, "must be at least 0");
        range(
            "grad_clip",
            c.grad_clip >= 0.0,
            "must be at least 0 (0 = off)",
        );
        range("log_every", c.log_every >= 1, "must be at least 1");
        range(
            "checkpoint_every",
            c.checkpoint_every >= 1,
            "must be at least 1",
        );
        let within = |v: usize, max: usize| (1..=max).contains(&v);
        let between = |max: usize| format!("must be between 1 and {max}");
        range(
            "examples",
            within(c.examples, MAX_EXAMPLES),
            &between(MAX_EXAMPLES),
        );
        // An eval's default `prompts` is the held-out size, checked above on its own line.
        range(
            "prompts",
            s.prompts.is_none() || within(c.prompts, MAX_HELDOUT),
            &between(MAX_HELDOUT),
        );
        range("k", within(c.k, MAX_SAMPLES), &between(MAX_SAMPLES));
        range(
            "batch",
            !trains || s.kind == StageKind::Grpo || c.batch <= MAX_BATCH,
            &format!("must be at most {MAX_BATCH}"),
        );
        range(
            "temperature",
            c.temperature >= 0.0 && c.temperature.is_finite(),
            "must be at least 0 (0 = greedy)",
        );
        range(
            "top_p",
            c.top_p > 0.0 && c.top_p <= 1.0,
            "must be in (0, 1]",
        );
        range(
            "max_new_tokens",
            c.max_new_tokens < spec.model.ctx,
            "must be below the model's ctx (0 = up to the context)",
        );
        range(
            "group_size",
            (2..=MAX_SAMPLES).contains(&c.group_size),
            &format!("must be between 2 and {MAX_SAMPLES}"),
        );
        range(
            "beta",
            c.beta >= 0.0 && c.beta.is_finite(),
            "must be a finite number, at least 0 (0 = no reference model)",
        );
        range(
            "epsilon",
            c.epsilon > 0.0 && c.epsilon < 1.0,
            "must be in (0, 1)",
        );
        range(
            "epsilon_high",
            c.epsilon_high >= c.epsilon,
            "must be at least epsilon",
        );
        range(
            "num_iterations",
            within(c.num_iterations, MAX_ITERATIONS),
            &between(MAX_ITERATIONS),
        );
        if errs.is_empty() {
            let need = memory_bytes(&spec.model, spec.task.heldout, &c);
            if need > memory_limit() {
                errs.push(at.key(
                    &[Seg::Key("stage"), Seg::Index(i), Seg::Key("name")],
                    format!(
                        "stage `{}` needs about {:.1} GB (weights, optimizer state, \
                         activations, KV cache and held-out set), more than this machine's \
                         {:.1} GB: make the model, batch or prompts smaller",
                        s.name,
                        need / 1e9,
                        memory_limit() / 1e9
                    ),
                ));
            }
        }
        for (name, r) in s.rewards.iter().flatten() {
            let here = [
                Seg::Key("stage"),
                Seg::Index(i),
                Seg::Key("rewards"),
                Seg::Key(name),
            ];
            match r {
                super::types::RewardSpec::Weight(w) => {
                    if !REWARDS.contains(&name.as_str()) {
                        errs.push(at.key(
                            &here,
                            format!(
                                "unknown reward function `{name}` (known: {}; or a program: \
                                 {{ command = [\"python3\", \"reward.py\"], weight = 0.2 }})",
                                REWARDS.join(", ")
                            ),
                        ));
                    } else if !w.is_finite() {
                        errs.push(at.value(&here, "reward weights must be finite"));
                    }
                }
                super::types::RewardSpec::Program(p) => {
                    if REWARDS.contains(&name.as_str()) {
                        errs.push(at.key(
                            &here,
                            format!("`{name}` is a built-in reward; name the program otherwise"),
                        ));
                    }
                    if p.command.is_empty() || p.command[0].is_empty() {
                        errs.push(at.value(&here, "command must name a program"));
                    }
                    if !p.weight.is_finite() {
                        errs.push(at.value(&here, "reward weights must be finite"));
                    }
                    if !(p.timeout > 0.0 && p.timeout <= 3600.0) {
                        errs.push(at.value(&here, "timeout must be between 0 and 3600 seconds"));
                    }
                }
            }
        }
    }

    // [[loop]]
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, l) in spec.loops.iter().enumerate() {
        let lp = |k| [Seg::Key("loop"), Seg::Index(i), Seg::Key(k)];
        let pos = |name: &str| spec.stage.iter().position(|s| s.name == name);
        let (a, b) = (pos(&l.start), pos(&l.end));
        if a.is_none() {
            errs.push(at.value(&lp("start"), format!("no stage named `{}`", l.start)));
        }
        if b.is_none() {
            errs.push(at.value(&lp("end"), format!("no stage named `{}`", l.end)));
        }
        if let (Some(a), Some(b)) = (a, b) {
            if a > b {
                errs.push(at.value(
                    &lp("end"),
                    format!("`{}` comes before `{}`", l.end, l.start),
                ));
            } else if spans.iter().any(|&(x, y)| a <= y && x <= b) {
                errs.push(at.value(&lp("start"), "loops must not overlap"));
            } else {
                spans.push((a, b));
            }
        }
        if l.times < 1 {
            errs.push(at.value(&lp("times"), "times must be at least 1"));
        }
        match (&l.until_metric, l.until_at_least) {
            (Some(m), Some(_)) if !EVAL_METRICS.contains(&m.as_str()) => errs.push(at.value(
                &lp("until_metric"),
                format!(
                    "unknown eval metric `{m}` (known: {})",
                    EVAL_METRICS.join(", ")
                ),
            )),
            (Some(_), None) => {
                errs.push(at.key(&lp("until_metric"), "until_metric needs until_at_least"))
            }
            (None, Some(_)) => {
                errs.push(at.key(&lp("until_at_least"), "until_at_least needs until_metric"))
            }
            _ => {}
        }
    }
    errs
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

/// Bytes a stage needs at most, roughly: weights, gradients and AdamW's two moments (plus a
/// frozen reference for GRPO), the activations of one training batch, the KV cache of the
/// sequences sampled at once, and the held-out set. In f64, so huge values cannot overflow.
pub fn memory_bytes(m: &crate::spec::ModelSpec, heldout: usize, c: &StageConfig) -> f64 {
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
        // GRPO trains in micro-batches of about 4,096 tokens.
        StageKind::Grpo => 4_096f64.min(f(c.prompts) * f(c.group_size) * ctx),
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
