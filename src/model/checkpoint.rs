//! What a checkpoint folder holds: `model.safetensors` (weights, readable by any safetensors
//! tool), `config.json` (the shape), `tokenizer.json`, `optimizer.bpk` (burn's optimizer state,
//! training stages only) and `state.json` (step, data cursor, RNG). Loading checks each file and
//! says which one is wrong.

use super::config::ModelConfig;
use super::lora;
use super::pretrained;
use super::text::{self, Text};
use super::tokenizer::Tokenizer;
use super::transformer::Gpt;
use anyhow::{Context, Result, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub use super::text::TOKENIZER;
pub const OPTIMIZER: &str = "optimizer.bpk";
pub const STATE: &str = "state.json";
pub const TASK: &str = "task.json";

/// A serialisable position of a ChaCha RNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub word_pos: u128,
    pub stream: u64,
}

impl RngState {
    pub fn of(rng: &rand_chacha::ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed(),
            word_pos: rng.get_word_pos(),
            stream: rng.get_stream(),
        }
    }
    pub fn restore(&self) -> rand_chacha::ChaCha8Rng {
        use rand::SeedableRng;
        let mut r = rand_chacha::ChaCha8Rng::from_seed(self.seed);
        r.set_stream(self.stream);
        r.set_word_pos(self.word_pos);
        r
    }
}

/// Where training stood when the checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Index of the next example in the data stream.
    pub cursor: u64,
    pub rng: RngState,
    /// Stage kind that wrote it.
    pub kind: String,
    /// Task name of the data.
    pub task: String,
    /// Tokens trained on so far (TRL's `num_tokens`), so a resumed run counts on; 0 in
    /// checkpoints written before it was kept.
    #[serde(default)]
    pub num_tokens: u64,
    /// FLOPs the stage has spent so far (`ModelConfig::forward_flops`: training, sampling and
    /// the frozen models' passes), so a resumed run counts on; 0 in older checkpoints.
    #[serde(default)]
    pub flops: f64,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = crate::untrusted::read_small(path, 1 << 30).with_context(|| {
        format!(
            "{}: cannot read (is this a checkpoint folder?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
}

/// Write model files (weights, config, tokenizer) into `dir`; for a model with LoRA adapters
/// (`adapters` says what they adapt), the adapters instead of the weights.
pub fn save_model(
    dir: &Path,
    model: &Gpt,
    cfg: &ModelConfig,
    tok: &Text,
    adapters: Option<&lora::AdapterMeta>,
) -> Result<()> {
    match adapters {
        Some(meta) => lora::save(dir, model, meta)?,
        None => {
            let mut store = SafetensorsStore::from_file(dir.join(WEIGHTS));
            model
                .save_into(&mut store)
                .map_err(|e| anyhow::anyhow!("{}: cannot write weights: {e}", dir.display()))?;
        }
    }
    crate::runfs::atomic::write_json(&dir.join(CONFIG), cfg)?;
    match tok {
        Text::Chars(t) => crate::runfs::atomic::write_json(&dir.join(TOKENIZER), t)?,
        Text::Pretrained(c) => text::save_pretrained(dir, c)?,
    }
    Ok(())
}

/// Write the training state into `dir`.
pub fn save_state(dir: &Path, state: &TrainState) -> Result<()> {
    crate::runfs::atomic::write_json(&dir.join(STATE), state)?;
    Ok(())
}

/// Read a checkpoint's shape and tokenizer without loading weights. A pretrained model (a
/// Hugging Face folder or a GGUF file) reads as one, with the default prompt style.
pub fn read_meta(dir: &Path) -> Result<(ModelConfig, Text)> {
    if pretrained::is_pretrained(dir) {
        return text::pretrained_meta(dir, text::style(None, None));
    }
    if !dir.is_dir() {
        bail!("{}: no such checkpoint folder", dir.display());
    }
    let cfg: ModelConfig = read_json(&dir.join(CONFIG))?;
    cfg.check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(CONFIG).display()))?;
    if dir.join(text::TEXT_META).is_file() {
        return Ok((cfg, text::load_pretrained(dir)?));
    }
    let tok: Tokenizer = read_json(&dir.join(TOKENIZER))?;
    Ok((cfg, Text::Chars(tok)))
}

/// Write the task settings the model was trained on into `dir`.
pub fn save_task(dir: &Path, task: &crate::spec::TaskSpec) -> Result<()> {
    crate::runfs::atomic::write_json(&dir.join(TASK), task)?;
    Ok(())
}

/// Read the task settings a checkpoint was trained on.
pub fn read_task(dir: &Path) -> Result<crate::spec::TaskSpec> {
    read_json(&dir.join(TASK))
}

/// Read a checkpoint's training state.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    read_json(&dir.join(STATE))
}

/// Load a model from `dir` (a checkpoint, a LoRA checkpoint with its base, or a pretrained
/// model) onto `device`.
pub fn load_model(dir: &Path, device: &Device) -> Result<(Gpt, ModelConfig, Text)> {
    load_model_within(dir, device, 0)
}

/// LoRA checkpoints can stack (a LoRA stage started from another's checkpoint); a chain longer
/// than this is a loop in the files.
const MAX_ADAPTER_DEPTH: usize = 32;

fn load_model_within(
    dir: &Path,
    device: &Device,
    depth: usize,
) -> Result<(Gpt, ModelConfig, Text)> {
    if lora::is_adapter(dir) {
        let meta_path = dir.join(lora::ADAPTER_META);
        if depth >= MAX_ADAPTER_DEPTH {
            bail!(
                "{}: more than {MAX_ADAPTER_DEPTH} LoRA checkpoints stacked (a loop of bases?)",
                meta_path.display()
            );
        }
        let (cfg, tok) = read_meta(dir)?;
        let meta = lora::read_meta(dir)?;
        let (base, base_cfg, _) = load_model_within(&meta.base, device, depth + 1)
            .with_context(|| format!("{}: loading the base model", meta_path.display()))?;
        let mut model = lora::load_values(dir, meta.attach(base, &base_cfg))?;
        if let Some(q) = meta.quantize {
            model = super::qlora::freeze(model, q, Some(&meta.base), &base_cfg)
                .with_context(|| format!("{}: freezing the base", meta_path.display()))?;
        }
        return Ok((model, cfg, tok));
    }
    if pretrained::is_pretrained(dir) {
        let (_, text) = read_meta(dir)?;
        let p = pretrained::load(dir, device)?;
        return Ok((p.model, p.cfg, text));
    }
    let (cfg, tok) = read_meta(dir)?;
    if cfg.vocab != tok.vocab_size() {
        bail!(
            "{}: config says vocab {} but the tokenizer has {} tokens",
            dir.display(),
            cfg.vocab,
            tok.vocab_size()
        );
    }
    let weights = dir.join(WEIGHTS);
    if !weights.is_file() {
        bail!("{}: missing", weights.display());
    }
    let mut model = Gpt::new(&cfg, device);
    let mut store = SafetensorsStore::from_file(&weights);
    let result = model.load_from(&mut store).map_err(|e| {
        anyhow::anyhow!("{}: corrupt or unreadable weights: {e}", weights.display())
    })?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        bail!(
            "{}: weights do not match config.json ({} errors, {} missing tensors{})",
            weights.display(),
            result.errors.len(),
            result.missing.len(),
            result
                .errors
                .first()
                .map(|e| format!(": {e:?}"))
                .unwrap_or_default()
        );
    }
    Ok((model, cfg, tok))
}

/// Load a model and check that it has the expected shape and tokenizer.
pub fn load_expecting(
    dir: &Path,
    want_cfg: &ModelConfig,
    want_tok: &Text,
    device: &Device,
) -> Result<Gpt> {
    if pretrained::is_pretrained(dir) {
        // The pretrained model's own context is longer than the stage's working one.
        let p = pretrained::load(dir, device)?;
        if (ModelConfig {
            ctx: want_cfg.ctx,
            ..p.cfg
        }) != *want_cfg
        {
            bail!(
                "{}: the model's shape differs from the experiment's",
                dir.display()
            );
        }
        return Ok(p.model);
    }
    let (cfg, tok) = read_meta(dir)?;
    if tok.vocab_size() != want_tok.vocab_size() || tok.chars() != want_tok.chars() {
        bail!(
            "{}: checkpoint tokenizer differs from the task's (another task's checkpoint?)",
            dir.join(TOKENIZER).display()
        );
    }
    if &cfg != want_cfg {
        bail!(
            "{}: checkpoint is a different model shape (d_model {}, layers {}, heads {}, mlp {}, ctx {}) than the spec asks (d_model {}, layers {}, heads {}, mlp {}, ctx {})",
            dir.join(CONFIG).display(),
            cfg.d_model,
            cfg.layers,
            cfg.heads,
            cfg.mlp,
            cfg.ctx,
            want_cfg.d_model,
            want_cfg.layers,
            want_cfg.heads,
            want_cfg.mlp,
            want_cfg.ctx
        );
    }
    Ok(load_model(dir, device)?.0)
}
