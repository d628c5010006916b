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
    let mut skip = |key: &str, why: &str| {
        unmapped.push(Unmapped {
            key: key.to_string(),
            why: why.to_string(),
        })
    };
    let ctx = exp.spec.model.ctx;
    let mut c = json!({
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
    });
    let mut rewards = Vec::new();
    let mut overlong = Value::Null;
    let mut vllm = json!({});
    match cfg.kind {
        StageKind::Grpo => {
            let max_new = if cfg.max_new_tokens == 0 {
                ctx
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
            ] {
                m.insert(k.into(), v);
            }
            if cfg.top_k > 0 {
                m.insert("top_k".into(), json!(cfg.top_k));
            }
            let level = serde_json::to_value(cfg.importance_sampling_level)?;
            m.insert("importance_sampling_level".into(), level);
            m.insert(
                "top_entropy_quantile".into(),
                json!(cfg.top_entropy_quantile),
            );
            m.insert("entropy_coef".into(), json!(cfg.entropy_coef));
            if cfg.kl_estimator != crate::spec::KlEstimator::K3 && cfg.beta > 0.0 {
                skip(
                    "kl_estimator",
                    "TRL's KL term is k3 only; the script uses k3",
                );
            }
            if cfg.adv_estimator != crate::spec::AdvEstimator::Grpo {
                skip(
                    "adv_estimator",
                    "TRL has no pass@k advantage (verl's grpo_passk); the script uses group-relative advantages",
                );
            }
            if cfg.kl_in_reward {
                skip(
                    "kl_in_reward",
                    "TRL adds the KL to the loss only; the script does that with the same beta",
                );
            }
            if cfg.zero_variance_filter {
                skip(
                    "zero_variance_filter",
                    "TRL keeps groups whose rewards are all equal in the loss's normaliser (their advantage is 0)",
                );
            }
            if cfg.dynamic_sampling {
                skip(
                    "dynamic_sampling",
                    "TRL has no dynamic sampling (DAPO's redrawing of groups whose rewards are all equal): such groups get zero advantage there",
                );
            }
            if cfg.sampler_correction != SamplerCorrection::Off {
                let mode = serde_json::to_value(cfg.sampler_correction)?;
                vllm = json!({
                    "vllm_importance_sampling_correction": true,
                    "vllm_importance_sampling_mode": mode,
                    "vllm_importance_sampling_cap": cfg.sampler_correction_cap,
                });
            }
            for (name, w) in cfg.reward_weights() {
                match name {
                    "accuracy" | "format" | "partial" => {
                        rewards.push(json!({"name": name, "weight": w}))
                    }
                    other => skip(
                        &format!("rewards.{other}"),
                        "a built-in reward stageloop score does not compute; write a reward function for it",
                    ),
                }
            }
            for (name, p) in cfg.reward_programs() {
                skip(
                    &format!("rewards.{name}"),
                    &format!(
                        "a reward program ({}); call it from a reward function of your own",
                        p.shown()
                    ),
                );
            }
            if cfg.overlong_buffer > 0 {
                // DAPO's soft overlong punishment: TRL's function is the same formula.
                overlong = json!({"buffer": cfg.overlong_buffer, "penalty": cfg.overlong_penalty, "max": max_new});
            }
        }
        StageKind::Sft => {
            let m = c.as_object_mut().expect("an object");
            m.insert("max_length".into(), json!(ctx));
            m.insert("completion_only_loss".into(), json!(true));
            if cfg.dataset.is_some() {
                skip(
                    "dataset",
                    "data/train.jsonl holds task-generated pairs; convert the stage's dataset file to {prompt, completion} rows and load it instead",
                );
            }
        }
        other => bail!(
            "stage `{}` is a {} stage: --to trl hands over sft and grpo stages",
            cfg.name,
            other.as_str()
        ),
    }
    if exp.spec.model.quantize.resolved(None) != Quantize::None {
        skip(
            "model.quantize",
            "QLoRA: on CUDA, load the base in 4 bits with bitsandbytes (BitsAndBytesConfig) in model_init_kwargs; the script loads it in full precision",
        );
    }
    let lora = match &cfg.lora {
        Some(l) => {
            let targets = l.matrices().map_err(anyhow::Error::msg)?;
            json!({"r": l.rank, "lora_alpha": l.alpha(), "target_modules": hf_targets(&targets), "lora_dropout": 0.0})
        }
        None => Value::Null,
    };
    let t = &exp.spec.task;
    let scorer = if t.name == "dataset" {
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
    } else {
        vec!["score".into(), "--task".into(), t.name.clone()]
    };
    let micro = match cfg.kind {
        StageKind::Grpo => cfg.micro_batch,
        _ => 0,
    };
    let total = match cfg.kind {
        StageKind::Grpo => cfg.prompts * cfg.group_size,
        _ => cfg.batch,
    };
    Ok((
        json!({
            "trainer": if cfg.kind == StageKind::Grpo { "grpo" } else { "sft" },
            "config": c,
            "batch": {"per_step": total, "micro_batch": micro},
            "lora": lora,
            "rewards": rewards,
            "overlong": overlong,
            "vllm": vllm,
            "scorer": scorer,
            "scorer_reads_answer": t.name == "dataset",
            "sample_every": cfg.sample_every,
            "bf16": exp.spec.model.precision == crate::spec::types::Precision::Bf16,
        }),
        unmapped,
    ))
}

/// The header comment of `train.py`: what the stage is and what was not carried over.
fn header(exp: &Experiment, cfg: &StageConfig, unmapped: &[Unmapped]) -> String {
    let mut h = format!(
        "# Stage `{}` ({}) of experiment `{}`, handed to TRL by `stageloop export --to trl`.\n",
        cfg.name,
        cfg.kind.as_str(),
        exp.name
    );
    if unmapped.is_empty() {
        h += "# Every setting of the stage has a TRL equivalent (stage.json).\n";
    } else {
        h += "# Settings with no TRL equivalent (not carried over):\n";
        for u in unmapped {
            h += &format!("#   {}: {}\n", u.key, u.why);
        }
    }
    h
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
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "stageloop".into());
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
    write("README.md", &readme, &mut files)?;
    super::executable(&out.join("train.py"));
    Ok(Report {
        files,
        unmapped,
        model: model_dir,
        launch,
    })
}
