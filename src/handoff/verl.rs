//! `--to verl`: a GRPO stage as verl's `main_ppo` with `algorithm.adv_estimator=grpo`, its
//! settings as Hydra overrides ([`overrides`]), the rewards through a batch reward function
//! that pipes completions to `stageloop score`, and verl's file logger writing into a run
//! folder the notebook reads as verl's (`runfs::foreign::verl`). verl applies a chat template
//! to every prompt, so only a pretrained chat model's stage goes this way.

use super::{PromptForm, Report, Unmapped};
use crate::spec::resolve::StageConfig;
use crate::spec::types::{AdvEstimator, IsLevel, KlEstimator, LossType, Quantize, ScaleRewards};
use crate::spec::{Experiment, StageKind};
use anyhow::{Result, bail};
use std::path::Path;

/// The batch reward function (fixed; it reads `stage.json` for the scorer and weights).
pub const REWARD: &str = include_str!("verl_reward.py");

/// The stage's settings as Hydra overrides of verl's `ppo_trainer` config, and what verl has
/// no equivalent for.
pub fn overrides(
    exp: &Experiment,
    cfg: &StageConfig,
    model: &Path,
) -> (Vec<String>, Vec<Unmapped>) {
    let mut o: Vec<String> = Vec::new();
    let mut unmapped = Vec::new();
    let mut skip = |key: &str, why: &str| {
        unmapped.push(Unmapped {
            key: key.into(),
            why: why.into(),
        })
    };
    let mut set = |k: &str, v: String| o.push(format!("{k}={v}"));
    let ctx = exp.spec.model.ctx;
    let max_new = if cfg.max_new_tokens == 0 {
        ctx / 2
    } else {
        cfg.max_new_tokens
    };
    let actor = "actor_rollout_ref.actor";
    let rollout = "actor_rollout_ref.rollout";
    set(
        "algorithm.adv_estimator",
        match cfg.adv_estimator {
            AdvEstimator::Grpo => "grpo",
            AdvEstimator::GrpoPassk => "grpo_passk",
        }
        .into(),
    );
    match cfg.scale_rewards {
        ScaleRewards::Group => set("algorithm.norm_adv_by_std_in_grpo", "true".into()),
        ScaleRewards::None => set("algorithm.norm_adv_by_std_in_grpo", "false".into()),
        ScaleRewards::Batch => skip(
            "scale_rewards",
            "verl scales by the group's std or not at all; the batch's std has no equivalent (group used)",
        ),
    }
    let kl_name = match cfg.kl_estimator {
        KlEstimator::K1 => "kl",
        KlEstimator::K2 => "mse",
        KlEstimator::K3 => "low_var_kl",
    };
    set("algorithm.use_kl_in_reward", cfg.kl_in_reward.to_string());
    if cfg.kl_in_reward {
        set("algorithm.kl_penalty", kl_name.into());
        set("algorithm.kl_ctrl.kl_coef", cfg.beta.to_string());
    }
    let kl_loss = cfg.beta > 0.0 && !cfg.kl_in_reward;
    set(&format!("{actor}.use_kl_loss"), kl_loss.to_string());
    if kl_loss {
        set(&format!("{actor}.kl_loss_coef"), cfg.beta.to_string());
        set(&format!("{actor}.kl_loss_type"), kl_name.into());
    }
    set(&format!("{actor}.clip_ratio_low"), cfg.epsilon.to_string());
    set(
        &format!("{actor}.clip_ratio_high"),
        cfg.epsilon_high.to_string(),
    );
    let mode = match (cfg.loss_type, cfg.importance_sampling_level) {
        (LossType::Cispo, _) => {
            skip(
                "loss_type",
                "verl's cispo clips the weight on both sides (1 ± clip_ratio); TRL's and stageloop's cap it above only",
            );
            "cispo"
        }
        (_, IsLevel::Sequence) => "gspo",
        _ => "vanilla",
    };
    set(&format!("{actor}.policy_loss.loss_mode"), mode.into());
    let agg = match cfg.loss_type {
        LossType::Grpo => "seq-mean-token-mean",
        LossType::DrGrpo => "seq-mean-token-sum-norm",
        LossType::Dapo | LossType::Cispo => "token-mean",
    };
    set(&format!("{actor}.loss_agg_mode"), agg.into());
    set(
        &format!("{actor}.entropy_coeff"),
        cfg.entropy_coef.to_string(),
    );
    set(
        &format!("{actor}.ppo_epochs"),
        cfg.num_iterations.to_string(),
    );
    set(
        &format!("{actor}.ppo_mini_batch_size"),
        cfg.prompts.to_string(),
    );
    let micro = if cfg.micro_batch > 0 {
        cfg.micro_batch
    } else {
        cfg.prompts * cfg.group_size
    };
    set(
        &format!("{actor}.ppo_micro_batch_size_per_gpu"),
        micro.to_string(),
    );
    set(&format!("{actor}.optim.lr"), cfg.lr.to_string());
    set(
        &format!("{actor}.optim.lr_warmup_steps"),
        cfg.warmup.to_string(),
    );
    set(&format!("{actor}.optim.lr_scheduler_type"), "cosine".into());
    set(
        &format!("{actor}.optim.min_lr_ratio"),
        cfg.min_lr_ratio.to_string(),
    );
    set(
        &format!("{actor}.optim.weight_decay"),
        cfg.weight_decay.to_string(),
    );
    set(
        &format!("{actor}.optim.clip_grad"),
        cfg.grad_clip.to_string(),
    );
    set(&format!("{actor}.optim.betas"), "[0.9,0.95]".into());
    set(&format!("{rollout}.n"), cfg.group_size.to_string());
    set(
        &format!("{rollout}.temperature"),
        cfg.temperature.to_string(),
    );
    set(&format!("{rollout}.top_p"), cfg.top_p.to_string());
    let top_k = if cfg.top_k > 0 { cfg.top_k as i64 } else { -1 };
    set(&format!("{rollout}.top_k"), top_k.to_string());
    set("actor_rollout_ref.model.path", model.display().to_string());
    if let Some(l) = &cfg.lora {
        set("actor_rollout_ref.model.lora_rank", l.rank.to_string());
        set("actor_rollout_ref.model.lora_alpha", l.alpha().to_string());
    }
    set("data.train_batch_size", cfg.prompts.to_string());
    set("data.max_response_length", max_new.to_string());
    set(
        "data.max_prompt_length",
        ctx.saturating_sub(max_new).max(1).to_string(),
    );
    set("data.train_files", "data/train.parquet".into());
    set("data.val_files", "data/train.parquet".into());
    set("trainer.total_training_steps", cfg.steps.to_string());
    set("trainer.save_freq", cfg.checkpoint_every.to_string());
    set("trainer.test_freq", "-1".into());
    set("trainer.val_before_train", "false".into());
    set("trainer.logger", "[console,file]".into());
    set("trainer.project_name", exp.name.clone());
    set("trainer.experiment_name", cfg.name.clone());
    set("reward.reward_manager.name", "batch".into());
    set("reward.custom_reward_function.path", "reward.py".into());
    set("reward.custom_reward_function.name", "compute_score".into());
    if cfg.dynamic_sampling {
        set("algorithm.filter_groups.enable", "true".into());
        set("algorithm.filter_groups.metric", "score".into());
        set("algorithm.filter_groups.max_num_gen_batches", "4".into());
    }
    if cfg.max_new_tokens == 0 {
        skip(
            "max_new_tokens",
            "0 (the context's rest): verl takes fixed prompt and response lengths; half the context each",
        );
    }
    for (key, on, why) in [
        (
            "zero_variance_filter",
            cfg.zero_variance_filter,
            "verl keeps equal-reward groups in the loss (their advantage is 0); filter_groups redraws instead",
        ),
        (
            "top_entropy_quantile",
            cfg.top_entropy_quantile < 1.0,
            "verl has no high-entropy token mask",
        ),
        (
            "mask_truncated",
            cfg.mask_truncated,
            "verl has no truncated-completion mask in main_ppo",
        ),
        (
            "overlong_buffer",
            cfg.overlong_buffer > 0,
            "DAPO's overlong shaping is in verl's DAPO recipe, not main_ppo",
        ),
        (
            "sampler_correction",
            cfg.sampler_correction != crate::spec::types::SamplerCorrection::Off,
            "set algorithm.rollout_correction.rollout_is for verl's own rollout/trainer correction",
        ),
        (
            "model.quantize",
            exp.spec.model.quantize.resolved(None) != Quantize::None,
            "QLoRA: verl trains the base in its own precision",
        ),
    ] {
        if on {
            skip(key, why);
        }
    }
    for (name, _) in cfg.reward_programs() {
        skip(
            &format!("rewards.{name}"),
            "a reward program: call it from reward.py",
        );
    }
    (o, unmapped)
}

/// Write the folder: `run.sh` (the overrides), `reward.py`, `stage.json` (the scorer and the
/// reward weights), `data/train.jsonl` and `prepare_data.py` (verl reads parquet), the model
/// when it must be exported, and a README.
pub fn export(
    exp: &Experiment,
    cfg: &StageConfig,
    out: &Path,
    model: Option<&Path>,
) -> Result<Report> {
    if cfg.kind != StageKind::Grpo {
        bail!(
            "stage `{}` is a {} stage: --to verl hands over grpo stages (sft: --to trl)",
            cfg.name,
            cfg.kind.as_str()
        );
    }
    std::fs::create_dir_all(out.join("data")).map_err(|e| crate::runfs::atomic::named(out, e))?;
    let (model_dir, mut files) = super::model_folder(exp, cfg, model, out)?;
    let form = PromptForm::of(exp, &model_dir);
    if !matches!(form, PromptForm::Chat { .. }) {
        bail!(
            "verl applies a chat template to every prompt; `{}` has none (a character model or `chat = false`): hand this stage to TRL (--to trl)",
            model_dir.display()
        );
    }
    let tasks = crate::tasks::TaskSet::new(&exp.spec.task)?;
    let rows: Vec<String> = super::training_problems(cfg, &tasks)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({
                "data_source": format!("stageloop/{}", exp.spec.task.name),
                "prompt": form.prompt(&p.prompt),
                "ability": exp.spec.task.name,
                "reward_model": {"style": "rule", "ground_truth": p.answer},
                "extra_info": {"problem": p.prompt, "index": i},
            })
            .to_string()
        })
        .collect();
    let (over, unmapped) = overrides(exp, cfg, &model_dir);
    let (trl_stage, _) = super::trl::settings(exp, cfg)?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "stageloop".into());
    let stage = serde_json::json!({
        "stageloop": exe,
        "scorer": trl_stage["scorer"],
        "scorer_reads_answer": trl_stage["scorer_reads_answer"],
        "rewards": trl_stage["rewards"],
        "stage": cfg.name,
        "experiment": exp.name,
        "stage_config": cfg.to_json(),
        "unmapped": super::unmapped_json(&unmapped),
    });
    let mut script = String::from(
        "#!/usr/bin/env bash\n# Stage `STAGE` handed to verl by `stageloop export --to verl`.\n",
    )
    .replace("STAGE", &cfg.name);
    if unmapped.is_empty() {
        script += "# Every setting of the stage has a verl equivalent.\n";
    } else {
        script += "# Settings with no verl equivalent (not carried over):\n";
        for u in &unmapped {
            script += &format!("#   {}: {}\n", u.key, u.why);
        }
    }
    script += r#"set -euo pipefail
cd "$(dirname "$0")"
[ -f data/train.parquet ] || python3 prepare_data.py
run="runs/$(date -u +%Y%m%d-%H%M%S)-STAGE"
mkdir -p "$run"
# verl's file logger writes the run's metrics where the notebook reads them.
export VERL_FILE_LOGGER_PATH="$run/STAGE.jsonl"
exec python3 -m verl.trainer.main_ppo \
"#
    .replace("STAGE", &cfg.name)
    .as_str();
    for line in &over {
        script += &format!("  '{}' \\\n", line.replace('\'', "'\\''"));
    }
    script += "  \"trainer.rollout_data_dir=$run/rollouts\" \\\n  \"$@\"\n";
    let prepare = "\
# verl reads parquet: data/train.jsonl -> data/train.parquet (pandas, which verl installs).
import pandas as pd

pd.read_json(\"data/train.jsonl\", lines=True).to_parquet(\"data/train.parquet\")
";
    let write = |name: &str, text: &str, files: &mut Vec<std::path::PathBuf>| {
        super::write_to(out, name, text, files)
    };
    write(
        "stage.json",
        &serde_json::to_string_pretty(&stage)?,
        &mut files,
    )?;
    write("data/train.jsonl", &(rows.join("\n") + "\n"), &mut files)?;
    write("prepare_data.py", prepare, &mut files)?;
    write("reward.py", REWARD, &mut files)?;
    write("run.sh", &script, &mut files)?;
    write("overrides.txt", &(over.join("\n") + "\n"), &mut files)?;
    let launch = vec![
        "bash run.sh trainer.n_gpus_per_node=1".to_string(),
        "bash run.sh trainer.n_gpus_per_node=8".to_string(),
        "bash run.sh trainer.nnodes=2 trainer.n_gpus_per_node=8   # on a Ray cluster".to_string(),
    ];
    let readme = format!(
        "# `{stage}` of `{exp}`, for verl\n\n\
         Written by `stageloop export {dir} --stage {stage} --to verl`. `run.sh` runs verl's\n\
         `main_ppo` with the stage's settings as Hydra overrides (also in `overrides.txt`);\n\
         `reward.py` scores each batch with stageloop's own verifiers through `stageloop score`\n\
         (install stageloop on the cluster, or set `STAGELOOP`).\n\n\
         ```sh\npip install verl   # with vLLM or SGLang, see verl's docs\n{l0}\n{l1}\n{l2}\n```\n\n\
         Each run writes `runs/<id>/{stage}.jsonl` (verl's file logger) and `runs/<id>/rollouts/`\n\
         (its generations): `stageloop tui runs/` shows them with their charts, alerts and samples.\n",
        stage = cfg.name,
        exp = exp.name,
        dir = exp.dir.display(),
        l0 = launch[0],
        l1 = launch[1],
        l2 = launch[2],
    );
    write("README.md", &readme, &mut files)?;
    super::executable(&out.join("run.sh"));
    Ok(Report {
        files,
        unmapped,
        model: model_dir,
        launch,
    })
}
