//! `stageloop eval RUN|CKPT`: score a checkpoint on its task's held-out set.

use super::sample::Quantize;
use crate::model::sample::Sampler;
use crate::model::{checkpoint, device};
use crate::runfs;
use crate::spec::{StageConfig, StageSpec};
use crate::stages::common::Setup;
use crate::stages::eval::evaluate;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// `stageloop eval`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folder or checkpoint folder.
    pub target: PathBuf,
    /// Evaluate on another task (it must share the checkpoint's tokenizer).
    #[arg(long)]
    pub task: Option<String>,
    /// Number of held-out prompts (default: all).
    #[arg(long)]
    pub n: Option<usize>,
    /// Samples per prompt.
    #[arg(long, default_value_t = 8)]
    pub k: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// How the weights are held while sampling: `none` (default) f32, the reference; `auto` a QLoRA
    /// checkpoint's frozen blocks as they are (else f32); `q8_0`, `q4_1`, `q4_k` quantise every
    /// matrix and the embedding at load (integer kernels). A LoRA checkpoint's adapters stay
    /// apart, in f32, as in `sample --quantize`.
    #[arg(long, value_enum, default_value_t = Quantize::None)]
    pub quantize: Quantize,
    /// The decoder's float weights and products, as `sample --precision`.
    #[arg(long, value_parser = ["f32", "bf16"], default_value = "f32")]
    pub precision: String,
}

/// `stageloop eval`.
pub fn main(a: Args) -> anyhow::Result<()> {
    let bf16 = a.precision == "bf16";
    let eval = || run(&a.target, a.task.as_deref(), a.n, a.k, a.json, a.quantize);
    crate::cpu::gemm::with_bf16(bf16, eval).1
}

pub fn run(
    target: &Path,
    task: Option<&str>,
    n: Option<usize>,
    k: usize,
    json: bool,
    quantize: Quantize,
) -> anyhow::Result<()> {
    let (max_k, max_n) = (
        crate::spec::validate::MAX_SAMPLES,
        crate::spec::validate::MAX_HELDOUT,
    );
    anyhow::ensure!(
        (1..=max_k).contains(&k),
        "--k must be between 1 and {max_k} (got {k})"
    );
    if let Some(n) = n {
        anyhow::ensure!(
            (1..=max_n).contains(&n),
            "--n must be between 1 and {max_n} (got {n})"
        );
    }
    let dir = runfs::checkpoint::resolve(target).with_context(|| {
        format!(
            "{}: not a checkpoint or a run folder with checkpoints",
            target.display()
        )
    })?;
    let dev = device()?;
    let setup = Setup::from_checkpoint(&dir, task)?;
    let (model, _, _) = checkpoint::load_model(&dir, &dev)?;
    let ctx = setup.model_cfg.ctx;
    let engine = super::sample::quantized_engine(&model, quantize, ctx)?;
    let weights = match (&engine, quantize) {
        (None, _) if crate::cpu::gemm::bf16_on() => "bf16".to_string(),
        (None, _) => "f32".to_string(),
        (Some(_), Quantize::Auto) => "the base's blocks, adapters in f32".to_string(),
        (Some(_), q) if model.has_lora() => format!("{}, adapters in f32", q.name()),
        (Some(_), q) => q.name().to_string(),
    };
    let mut sampler = match engine {
        Some(e) => Sampler::with_engine(&model, ctx, e),
        None => Sampler::new(&model),
    };
    let spec: StageSpec = toml::from_str("name = \"eval\"\nkind = \"eval\"").expect("valid");
    let model_spec = crate::spec::ModelSpec::default();
    let mut cfg = StageConfig::resolve(&spec, &model_spec, setup.task.heldout().len());
    cfg.k = k.max(1);
    if let Some(n) = n {
        cfg.prompts = n;
    }
    let report = evaluate(&setup, &mut sampler, &cfg, &dev, 0, |_| Ok(()), |_, _| {})?;
    if json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{}: pass@1 {:.3}  greedy {:.3}  pass@{k} {:.3}  maj@{k} {:.3}  format {:.3}  mean length {:.1}  (n={}, weights: {weights})",
            dir.display(),
            report.pass_at_1,
            report.greedy,
            report.pass_at_k,
            report.maj_at_k,
            report.format_rate,
            report.mean_length,
            report.n,
            k = report.k
        );
    }
    Ok(())
}
