//! LoRA checkpoints: a LoRA stage saves only its adapters (`adapter.safetensors`, the `A` and
//! `B` factors under burn's parameter paths) and what they adapt (`adapter.json`: rank, alpha,
//! targets and the path of the base model), so a checkpoint of a 135M-parameter model is a few
//! megabytes. Loading rebuilds the base (itself a checkpoint, a LoRA checkpoint or a pretrained
//! model), attaches fresh adapters and reads their values. Sampling and export see the merged
//! weights (`Gpt::weights`).

use super::config::ModelConfig;
use super::transformer::Gpt;
use anyhow::{Result, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const ADAPTER_WEIGHTS: &str = "adapter.safetensors";
pub const ADAPTER_META: &str = "adapter.json";

/// What `adapter.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterMeta {
    pub rank: usize,
    pub alpha: f64,
    /// Block matrices adapted (`qkv`, `out`, `gate_up`, `down`).
    pub targets: Vec<String>,
    /// The model the adapters were trained on: a checkpoint folder or a pretrained model.
    pub base: PathBuf,
    /// How the base's block matrices were held (QLoRA, `[model] quantize`); absent for f32.
    /// Loading freezes the base the same way, so the adapters meet the weights they were
    /// trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<crate::spec::Quantize>,
}

impl AdapterMeta {
    /// `base` attached with fresh adapters of this shape (merged first if it has some).
    pub fn attach(&self, base: Gpt, base_cfg: &ModelConfig) -> Gpt {
        let base = if base.has_lora() {
            base.merged(base_cfg)
        } else {
            base
        };
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        base.with_lora(self.rank, self.alpha, &targets)
    }
}

/// Whether `dir` is a LoRA checkpoint.
pub fn is_adapter(dir: &Path) -> bool {
    dir.join(ADAPTER_META).is_file()
}

/// Read `adapter.json`.
pub fn read_meta(dir: &Path) -> Result<AdapterMeta> {
    let path = dir.join(ADAPTER_META);
    let meta: AdapterMeta = crate::runfs::atomic::read_json(&path)?;
    if meta.rank == 0 || meta.targets.is_empty() {
        bail!("{}: rank and targets must be set", path.display());
    }
    Ok(meta)
}

/// Write the adapters of `model` and `meta` into `dir`.
pub fn save(dir: &Path, model: &Gpt, meta: &AdapterMeta) -> Result<()> {
    let mut store = SafetensorsStore::from_file(dir.join(ADAPTER_WEIGHTS)).with_regex(LORA_PATHS);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: cannot write adapters: {e}", dir.display()))?;
    crate::runfs::atomic::write_json(&dir.join(ADAPTER_META), meta)?;
    Ok(())
}

/// burn's paths of adapter factors (`blocks.0.qkv.weight.lora.a` and the like).
const LORA_PATHS: &str = r"\.lora\.";

/// Read the adapter values in `dir` into `model` (which has adapters of the right shape).
pub fn load_values(dir: &Path, mut model: Gpt) -> Result<Gpt> {
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.is_file() {
        bail!("{}: missing", path.display());
    }
    // An A and a B factor per adapted matrix.
    let expected = 2 * model.adapted_matrices();
    let mut store = SafetensorsStore::from_file(&path)
        .with_regex(LORA_PATHS)
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: corrupt or unreadable adapters: {e}", path.display()))?;
    if !result.errors.is_empty() || result.applied.len() != expected {
        bail!(
            "{}: adapters do not match adapter.json ({} of {} tensors read{})",
            path.display(),
            result.applied.len(),
            expected,
            result
                .errors
                .first()
                .map(|e| format!(": {e:?}"))
                .unwrap_or_default()
        );
    }
    Ok(model)
}
