//! `--to trl`: a GRPO stage as TRL's `GRPOTrainer`, an SFT stage as `SFTTrainer`, with peft for
//! LoRA. The mapping is [`settings`]: each stage key becomes the TRL argument of the same
//! meaning, or an [`Unmapped`] entry saying why it cannot. `train.py` (a fixed script) reads
//! the mapping from `stage.json`.

use super::{PromptForm, Report, Unmapped};
use crate::spec::resolve::StageConfig;
use crate::spec::types::{LossType, Quantize, SamplerCorrection, ScaleRewards};
use crate::spec::{Experiment, StageKind};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::path::Path;

/// The script, the same for every stage (it reads `stage.json`).
pub const SCRIPT: &str = include_str!("trl_train.py");

/// The versions the script was run with (`benches/trl_handoff.py`).
pub const REQUIREMENTS: &str = "\
# Tested with these versions (CPU, benches/trl_handoff.py); newer ones should work.
trl>=1.16
transformers>=5.0
peft>=0.17
accelerate>=1.0
torch>=2.4
# Optional: generation with vLLM (train.py --vllm), QLoRA (bitsandbytes) on CUDA.
# vllm
";

/// A stage's LoRA target matrices under Hugging Face's module names.
fn hf_targets(m: &[&str]) -> Vec<&'static str> {
    m.iter()
        .flat_map(|t| match *t {
            "qkv" => &["q_proj", "k_proj", "v_proj"][..],
            "out" => &["o_proj"][..],
            "gate_up" => &["gate_proj", "up_proj"][..],
            "down" => &["down_proj"][..],
            _ => &[][..],
        })
        .copied()
        .collect()
}

/// The TRL arguments of a stage (`GRPOConfig` or `SFTConfig` keyword arguments), its LoRA as
/// a peft `LoraConfig`, its rewards, and the settings TRL has no equivalent for.
pub fn settings(exp: &Experiment, cfg: &StageConfig) -> Result<(Value, Vec<Unmapped>)> {
    let mut unmapped = Vec::new();
    let mut c = common_args(exp, cfg);
    let grpo = match cfg.kind {
        StageKind::Grpo => grpo_args(exp, cfg, &mut c, &mut unmapped)?,
        StageKind::Sft => {
            sft_args(exp, cfg, &mut c, &mut unmapped);
            Grpo::default()
        }
        other => bail!(
            "stage `{}` is a {} stage: --to trl hands over sft and grpo stages",
            cfg.name,
            other.as_str()
        ),
    };
    if exp.spec.model.quantize.resolved(None) != Quantize::None {
        unmapped.push(Unmapped::new(
            "model.quantize",
            "QLoRA: on CUDA, load the base in 4 bits with bitsandbytes (BitsAndBytesConfig) in model_init_kwargs; the script loads it in full precision",
        ));
    }
    let lora = match &cfg.lora {
        Some(l) => {
            let targets = l.matrices().map_err(anyhow::Error::msg)?;
            json!({"r": l.rank, "lora_alpha": l.alpha(), "target_modules": hf_targets(&targets), "lora_dropout": 0.0})
        }
        None => Value::Null,
    };
    let t = &exp.spec.task;
    let (micro, total) = match cfg.kind {
        StageKind::Grpo => (cfg.micro_batch, cfg.prompts * cfg.group_size),
        _ => (0, cfg.batch),
    };
    Ok((
        json!({
            "trainer": if cfg.kind == StageKind::Grpo { "grpo" } else { "sft" },
            "config": c,
            "batch": {"per_step": total, "micro_batch": micro},
            "lora": lora,
            "rewards": grpo.rewards,
            "overlong": grpo.overlong,
            "vllm": grpo.vllm,
            "scorer": scorer(t),
            "scorer_reads_answer": t.name == "dataset",
            "sample_every": cfg.sample_every,
            "bf16": exp.spec.model.precision == crate::spec::types::Precision::Bf16,
        }),
        unmapped,
    ))
}

/// The arguments every trainer takes: schedule, optimizer, logging, seed.
fn common_args(exp: &Experiment, cfg: &StageConfig) -> Value {
    json!({
        "max_steps": cfg.steps,
        "learning_rate": cfg.lr,
        "warmup_steps": cfg.warmup,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": cfg.min_lr_ratio},
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.grad_clip,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-8,
        "logging_steps": cfg.log_every,
        "save_steps": cfg.checkpoint_every,
        "seed": exp.spec.seed,
        "report_to": "none",
    })
}

/// What a GRPO stage adds beside `GRPOConfig`: the weighted rewards, DAPO's overlong
/// shaping, and the vLLM sampler correction (`{}` when off).
struct Grpo {
    rewards: Vec<Value>,
    overlong: Value,
    vllm: Value,
}

impl Default for Grpo {
    fn default() -> Self {
        Grpo {
            rewards: Vec::new(),
            overlong: Value::Null,
            vllm: json!({}),
        }
    }
}

/// A GRPO stage's `GRPOConfig` arguments into `c`, its settings TRL lacks into `unmapped`.
fn grpo_args(
    exp: &Experiment,
    cfg: &StageConfig,
    c: &mut Value,
    unmapped: &mut Vec<Unmapped>,
) -> Result<Grpo> {
    let max_new = if cfg.max_new_tokens == 0 {
        exp.spec.model.ctx
    } else {
        cfg.max_new_tokens
    };
    let loss = match cfg.loss_type {
        LossType::Grpo => "grpo",
        LossType::DrGrpo => "dr_grpo",
        LossType::Dapo => "dapo",
        LossType::Cispo => "cispo",
    };
    let scale = match cfg.scale_rewards {
        ScaleRewards::Group => "group",
        ScaleRewards::Batch => "batch",
        ScaleRewards::None => "none",
    };
    let m = c.as_object_mut().expect("an object");
    for (k, v) in [
        ("num_generations", json!(cfg.group_size)),
        ("max_completion_length", json!(max_new)),
        ("temperature", json!(cfg.temperature)),
        ("top_p", json!(cfg.top_p)),
        ("beta", json!(cfg.beta)),
        ("epsilon", json!(cfg.epsilon)),
        ("epsilon_high", json!(cfg.epsilon_high)),
        ("num_iterations", json!(cfg.num_iterations)),
        ("loss_type", json!(loss)),
        ("scale_rewards", json!(scale)),
        ("mask_truncated_completions", json!(cfg.mask_truncated)),
        (
            "importance_sampling_level",
            serde_json::to_value(cfg.importance_sampling_level)?,
        ),
        ("top_entropy_quantile", json!(cfg.top_entropy_quantile)),
        ("entropy_coef", json!(cfg.entropy_coef)),
    ] {
        m.insert(k.into(), v);
    }
    if cfg.top_k > 0 {
        m.insert("top_k".into(), json!(cfg.top_k));
    }
    grpo_unmapped(cfg, unmapped);
    let mut out = Grpo::default();
    if cfg.sampler_correction != SamplerCorrection::Off {
        let mode = serde_json::to_value(cfg.sampler_correction)?;
        out.vllm = json!({
            "vllm_importance_sampling_correction": true,
            "vllm_importance_sampling_mode": mode,
            "vllm_importance_sampling_cap": cfg.sampler_correction_cap,
        });
    }
    for (name, w) in cfg.reward_weights() {
        match name {
            "accuracy" | "format" | "partial" => {
                out.rewards.push(json!({"name": name, "weight": w}))
            }
            other => unmapped.push(Unmapped::new(
                &format!("rewards.{other}"),
                "a built-in reward stageloop score does not compute; write a reward function for it",
            )),
        }
    }
    for (name, p) in cfg.reward_programs() {
        unmapped.push(Unmapped::new(
            &format!("rewards.{name}"),
            &format!(
                "a reward program ({}); call it from a reward function of your own",
                p.shown()
            ),
        ));
    }
    if cfg.overlong_buffer > 0 {
        // DAPO's soft overlong punishment: TRL's function is the same formula.
        out.overlong =
            json!({"buffer": cfg.overlong_buffer, "penalty": cfg.overlong_penalty, "max": max_new});
    }
    Ok(out)
}

/// The GRPO settings TRL has no equivalent for, when the stage sets them.
fn grpo_unmapped(cfg: &StageConfig, unmapped: &mut Vec<Unmapped>) {
    for (key, on, why) in [
        (
            "kl_estimator",
            cfg.kl_estimator != crate::spec::KlEstimator::K3 && cfg.beta > 0.0,
            "TRL's KL term is k3 only; the script uses k3",
        ),
        (
            "adv_estimator",
            cfg.adv_estimator != crate::spec::AdvEstimator::Grpo,
            "TRL has no pass@k advantage (verl's grpo_passk); the script uses group-relative advantages",
        ),
        (
            "kl_in_reward",
            cfg.kl_in_reward,
            "TRL adds the KL to the loss only; the script does that with the same beta",
        ),
        (
            "zero_variance_filter",
            cfg.zero_variance_filter,
            "TRL keeps groups whose rewards are all equal in the loss's normaliser (their advantage is 0)",
        ),
        (
            "dynamic_sampling",
            cfg.dynamic_sampling,
            "TRL has no dynamic sampling (DAPO's redrawing of groups whose rewards are all equal): such groups get zero advantage there",
        ),
    ] {
        if on {
            unmapped.push(Unmapped::new(key, why));
        }
    }
}

/// An SFT stage's `SFTConfig` arguments into `c`.
fn sft_args(exp: &Experiment, cfg: &StageConfig, c: &mut Value, unmapped: &mut Vec<Unmapped>) {
    let m = c.as_object_mut().expect("an object");
    m.insert("max_length".into(), json!(exp.spec.model.ctx));
    m.insert("completion_only_loss".into(), json!(true));
    if cfg.dataset.is_some() {
        unmapped.push(Unmapped::new(
            "dataset",
            "data/train.jsonl holds task-generated pairs; convert the stage's dataset file to {prompt, completion} rows and load it instead",
        ));
    }
}

/// The `stageloop score` arguments that verify the task's answers.
fn scorer(t: &crate::spec::TaskSpec) -> Vec<String> {
    if t.name != "dataset" {
        return vec!["score".into(), "--task".into(), t.name.clone()];
    }
    let mut a = vec![
        "score".to_string(),
        "--verifier".into(),
        t.verifier.clone().unwrap_or_else(|| "exact".into()),
    ];
    if let Some(p) = &t.pattern {
        a.extend(["--pattern".to_string(), p.clone()]);
    }
    if t.case_sensitive {
        a.push("--case-sensitive".into());
    }
    a
}

/// The header comment of `train.py`: what the stage is and what was not carried over.
fn header(exp: &Experiment, cfg: &StageConfig, unmapped: &[Unmapped]) -> String {
    format!(
        "# Stage `{}` ({}) of experiment `{}`, handed to TRL by `stageloop export --to trl`.\n{}",
        cfg.name,
        cfg.kind.as_str(),
        exp.name,
        super::unmapped_comment(unmapped, "TRL", " (stage.json)")
    )
}

/// Write the folder: `train.py`, `stage.json`, `data/train.jsonl`, the model when it must be
/// exported, `requirements.txt` and a README with the launch lines.
pub fn export(
    exp: &Experiment,
    cfg: &StageConfig,
    out: &Path,
    model: Option<&Path>,
) -> Result<Report> {
    let (mut stage, mut unmapped) = settings(exp, cfg)?;
    std::fs::create_dir_all(out.join("data")).map_err(|e| crate::runfs::atomic::named(out, e))?;
    let (model_dir, mut files) = super::model_folder(exp, cfg, model, out)?;
    let form = PromptForm::of(exp, &model_dir);
    let tasks = crate::tasks::TaskSet::new(&exp.spec.task)?;
    let problems = super::training_problems(cfg, &tasks);
    let rows = super::training_rows(cfg, &tasks, &problems, &form);
    if cfg.kind == StageKind::Grpo && cfg.max_new_tokens == 0 {
        // `max_new_tokens = 0` is the context's rest after the prompt; TRL takes one length.
        let ctx = exp.spec.model.ctx;
        let budget = match &form {
            PromptForm::Text { prefix } if exp.spec.model.from.is_none() => {
                let longest = problems
                    .iter()
                    .map(|p| p.prompt.chars().count())
                    .max()
                    .unwrap_or(0);
                ctx.saturating_sub(longest + usize::from(!prefix.is_empty()))
                    .max(1)
            }
            _ => {
                unmapped.push(Unmapped {
                    key: "max_new_tokens".into(),
                    why: format!("0 (the context's rest after each prompt): TRL takes one max_completion_length; set to the context, {ctx}"),
                });
                ctx
            }
        };
        stage["config"]["max_completion_length"] = json!(budget);
    }
    let exe = super::stageloop_exe();
    let s = stage.as_object_mut().expect("an object");
    s.insert("model".into(), json!(model_dir));
    s.insert("stageloop".into(), json!(exe));
    s.insert("experiment".into(), json!(exp.name));
    s.insert("stage".into(), json!(cfg.name));
    s.insert("kind".into(), json!(cfg.kind.as_str()));
    s.insert("seed".into(), json!(exp.spec.seed));
    s.insert("stage_config".into(), cfg.to_json());
    s.insert("unmapped".into(), super::unmapped_json(&unmapped));
    let write = |name: &str, text: &str, files: &mut Vec<std::path::PathBuf>| {
        super::write_to(out, name, text, files)
    };
    write(
        "stage.json",
        &serde_json::to_string_pretty(&stage)?,
        &mut files,
    )?;
    write("data/train.jsonl", &(rows.join("\n") + "\n"), &mut files)?;
    let script = format!(
        "#!/usr/bin/env python3\n{}{SCRIPT}",
        header(exp, cfg, &unmapped)
    );
    write("train.py", &script, &mut files)?;
    write("requirements.txt", REQUIREMENTS, &mut files)?;
    let launch = vec![
        "python3 train.py".to_string(),
        "accelerate launch --num_processes 8 train.py".to_string(),
        "accelerate launch --num_machines 2 --machine_rank $NODE_RANK --main_process_ip $HEAD_IP --main_process_port 29500 --num_processes 16 train.py".to_string(),
    ];
    let readme = format!(
        "# `{stage}` of `{exp}`, for TRL\n\n\
         Written by `stageloop export {dir} --stage {stage} --to trl`. `stage.json` holds the\n\
         stage's settings as TRL arguments; `train.py` reads it. Rewards are stageloop's own\n\
         verifiers: the script pipes completions to `stageloop score` (install stageloop on the\n\
         cluster, or pass `--stageloop PATH`).\n\n\
         ```sh\npip install -r requirements.txt\n{l0}                  # one machine (CPU or one GPU)\n{l1}   # 8 GPUs\n{l2}\n```\n\n\
         Each run writes a stageloop run folder under `runs/` (run.json, metrics.jsonl with TRL's\n\
         names, samples.jsonl). Sync or share that folder and open it in the notebook:\n\
         `stageloop tui runs/` or `stageloop runs --json runs/`.\n",
        stage = cfg.name,
        exp = exp.name,
        dir = exp.dir.display(),
        l0 = launch[0],
        l1 = launch[1],
        l2 = launch[2],
    );
    super::finish(out, &readme, "train.py", files, unmapped, model_dir, launch)
}
