//! `rejection`: rejection-sampling SFT. Sample `k` completions for each of `prompts` training
//! prompts from the `init` checkpoint, keep the verified-correct, well-formatted ones (only the
//! shortest per prompt with `shortest = true`), write them to the run folder as `dataset.jsonl`
//! and `dataset.parquet`, then SFT on them, starting from `sft_init` (default: `init`).
//! `distill` reuses the sampling half with a teacher and a smaller student.

use super::common::{Setup, metrics_line, open_logs, sampling_flops};
use super::context::{Outcome, StageCtx};
use super::{pipeline, sft, supervised};
use crate::model::sample::Sampler;
use crate::model::{self, Gpt, checkpoint};
use crate::runfs::atomic;
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

pub const DATASET: &str = "dataset.jsonl";
pub const DATASET_PARQUET: &str = "dataset.parquet";
/// What sampling the dataset cost (`{"flops": …}`), so a stage resumed after it counts it.
pub const DATASET_META: &str = "dataset.json";

/// The meta file beside the dataset.
#[derive(serde::Serialize, serde::Deserialize)]
struct DatasetMeta {
    flops: f64,
}

/// What rejection sampling kept: the accepted rows, the share of samples accepted and the
/// FLOPs sampling took.
pub struct Accepted {
    pub rows: Vec<(String, String)>,
    pub rate: f64,
    pub flops: f64,
}

/// Sample `k` completions per training prompt from `model` and keep the accepted ones.
pub fn accepted_samples(
    setup: &Setup,
    model: &Gpt,
    cfg: &crate::spec::StageConfig,
    seed: u64,
    device: &burn::tensor::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Accepted> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4EEC);
    let mut flops = 0.0;
    let opts = setup.sampling(cfg);
    let k = cfg.k.max(1);
    let chunk = (256 / k).max(1);
    let mut rows = Vec::new();
    let (mut seen, mut kept) = (0usize, 0usize);
    let mut i = 0u64;
    // One decoder for every batch: the model does not change while it is sampled.
    let mut sampler = Sampler::new(model);
    while (i as usize) < cfg.prompts {
        let n = chunk.min(cfg.prompts - i as usize);
        let probs: Vec<_> = (0..n as u64)
            .map(|j| setup.task.train_problem(i + j))
            .collect();
        let batch = setup.grouped_prompts(&probs, k)?;
        let outs = sampler.generate(&batch, setup.model_cfg.ctx, &opts, &mut rng, device);
        flops += sampling_flops(&setup.model_cfg, &batch, &outs);
        for (pi, p) in probs.iter().enumerate() {
            let mut ok: Vec<String> = Vec::new();
            for c in &outs[pi * k..(pi + 1) * k] {
                seen += 1;
                let text = setup.tok.decode(&c.tokens);
                let r = setup.task.rewards(&p.prompt, &text);
                if c.finished && r.accuracy >= 1.0 && r.format >= 1.0 {
                    kept += 1;
                    ok.push(text);
                }
            }
            if cfg.shortest {
                ok.sort_by_key(|t| t.len());
                ok.truncate(1);
            }
            rows.extend(ok.into_iter().map(|c| (p.prompt.clone(), c)));
        }
        i += n as u64;
        progress(i as usize, cfg.prompts);
    }
    Ok(Accepted {
        rows,
        rate: kept as f64 / seen.max(1) as f64,
        flops,
    })
}

/// Write the accepted rows as JSONL and Parquet into `dir` (each atomically).
pub fn write_dataset(dir: &Path, rows: &[(String, String)]) -> Result<()> {
    let mut jsonl = String::new();
    for (p, c) in rows {
        jsonl.push_str(&serde_json::to_string(
            &serde_json::json!({"prompt": p, "completion": c}),
        )?);
        jsonl.push('\n');
    }
    atomic::write_file(&dir.join(DATASET), jsonl.as_bytes())?;
    use polars::prelude::*;
    let mut df = DataFrame::new_infer_height(vec![
        Column::new(
            "prompt".into(),
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "completion".into(),
            rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        ),
    ])?;
    // Written under a temporary name and renamed (write_parquet does both).
    crate::analysis::write_parquet(&mut df, &dir.join(DATASET_PARQUET))?;
    Ok(())
}

/// Sample (or reuse, when resuming) the accepted dataset of this run, with the FLOPs sampling
/// it took.
pub fn dataset_for_run(
    ctx: &mut StageCtx<'_>,
    sampler_dir: &Path,
) -> Result<(Vec<(String, String)>, f64)> {
    let path = ctx.run.path.join(DATASET);
    if path.is_file() {
        let meta = ctx.run.path.join(DATASET_META);
        let flops = if meta.is_file() {
            atomic::read_json::<DatasetMeta>(&meta)?.flops
        } else {
            0.0
        };
        return Ok((sft::read_dataset(&path)?, flops));
    }
    let device = model::device()?;
    let (sampler, _, _) = checkpoint::load_model(sampler_dir, &device)?;
    let sampler_setup = Setup::from_checkpoint(sampler_dir, None)
        .or_else(|_| Setup::from_specs(&ctx.exp.spec.task, &ctx.exp.spec.model))?;
    let cfg = ctx.cfg.clone();
    let seed = ctx.seed;
    let Accepted { rows, rate, flops } =
        accepted_samples(&sampler_setup, &sampler, &cfg, seed, &device, |d, n| {
            ctx.reporter.message(&format!("sampled {d}/{n} prompts"))
        })?;
    ctx.reporter.message(&format!(
        "accepted {} completions ({:.1}% of {} samples)",
        rows.len(),
        rate * 100.0,
        cfg.prompts * cfg.k
    ));
    let (mut metrics, _) = open_logs(&ctx.run)?;
    metrics.write(&metrics_line(
        0,
        &[
            ("rejection/acceptance_rate", rate),
            ("rejection/accepted", rows.len() as f64),
            ("compute/flops", flops),
        ],
    ))?;
    if rows.is_empty() {
        anyhow::bail!(
            "no sample was accepted ({} prompts × {}); the sampling checkpoint is too weak for rejection sampling",
            cfg.prompts,
            cfg.k
        );
    }
    atomic::write_json(&ctx.run.path.join(DATASET_META), &DatasetMeta { flops })?;
    write_dataset(&ctx.run.path, &rows)?;
    Ok((rows, flops))
}

pub fn run(ctx: &mut StageCtx<'_>) -> Result<Outcome> {
    let setup = Setup::new(ctx.exp)?;
    let sampler = ctx.init.clone().context("a rejection stage needs `init`")?;
    let (rows, sampled) = dataset_for_run(ctx, &sampler)?;
    if let Some(name) = ctx.cfg.sft_init.clone() {
        ctx.init = Some(pipeline::checkpoint_of_stage(
            ctx.exp,
            &name,
            &ctx.cfg.name,
        )?);
    }
    let source = |i: u64| Ok(rows[(i % rows.len() as u64) as usize].clone());
    supervised::train(ctx, &setup, "rejection", false, sampled, &source)
}
