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
    let mut o = Overrides::default();
    algorithm(&mut o, cfg);
    actor(&mut o, cfg);
    rollout_and_data(&mut o, exp, cfg, model);
    trainer_and_reward(&mut o, exp, cfg);
    not_carried(&mut o, exp, cfg);
    (o.list, o.unmapped)
}

/// Overrides being collected, and the settings left out.
#[derive(Default)]
struct Overrides {
    list: Vec<String>,
    unmapped: Vec<Unmapped>,
}

impl Overrides {
    fn set(&mut self, key: &str, value: impl ToString) {
        self.list.push(format!("{key}={}", value.to_string()));
    }

    fn skip(&mut self, key: &str, why: &str) {
        self.unmapped.push(Unmapped::new(key, why));
    }
}

const ACTOR: &str = "actor_rollout_ref.actor";
const ROLLOUT: &str = "actor_rollout_ref.rollout";

/// The response budget verl is given: the stage's, or half the context for "the rest".
fn max_new(exp: &Experiment, cfg: &StageConfig) -> usize {
    if cfg.max_new_tokens == 0 {
        exp.spec.model.ctx / 2
    } else {
        cfg.max_new_tokens
    }
}

/// verl's name for the stage's KL estimator.
fn kl_name(cfg: &StageConfig) -> &'static str {
    match cfg.kl_estimator {
        KlEstimator::K1 => "kl",
        KlEstimator::K2 => "mse",
        KlEstimator::K3 => "low_var_kl",
    }
}

/// `algorithm.*`: the advantage estimator, its normalisation, the KL in the reward, and
/// dynamic sampling.
fn algorithm(o: &mut Overrides, cfg: &StageConfig) {
    let estimator = match cfg.adv_estimator {
        AdvEstimator::Grpo => "grpo",
        AdvEstimator::GrpoPassk => "grpo_passk",
    };
    o.set("algorithm.adv_estimator", estimator);
    match cfg.scale_rewards {
        ScaleRewards::Group => o.set("algorithm.norm_adv_by_std_in_grpo", true),
        ScaleRewards::None => o.set("algorithm.norm_adv_by_std_in_grpo", false),
        ScaleRewards::Batch => o.skip(
            "scale_rewards",
            "verl scales by the group's std or not at all; the batch's std has no equivalent (group used)",
        ),
    }
    o.set("algorithm.use_kl_in_reward", cfg.kl_in_reward);
    if cfg.kl_in_reward {
        o.set("algorithm.kl_penalty", kl_name(cfg));
        o.set("algorithm.kl_ctrl.kl_coef", cfg.beta);
    }
    if cfg.dynamic_sampling {
        o.set("algorithm.filter_groups.enable", true);
        o.set("algorithm.filter_groups.metric", "score");
        o.set("algorithm.filter_groups.max_num_gen_batches", 4);
    }
}

/// The actor's loss (KL term, clipping, loss mode and aggregation, entropy), its batches and
/// its optimizer.
fn actor(o: &mut Overrides, cfg: &StageConfig) {
    let kl_loss = cfg.beta > 0.0 && !cfg.kl_in_reward;
    o.set(&format!("{ACTOR}.use_kl_loss"), kl_loss);
    if kl_loss {
        o.set(&format!("{ACTOR}.kl_loss_coef"), cfg.beta);
        o.set(&format!("{ACTOR}.kl_loss_type"), kl_name(cfg));
    }
    o.set(&format!("{ACTOR}.clip_ratio_low"), cfg.epsilon);
    o.set(&format!("{ACTOR}.clip_ratio_high"), cfg.epsilon_high);
    let mode = match (cfg.loss_type, cfg.importance_sampling_level) {
        (LossType::Cispo, _) => {
            o.skip(
                "loss_type",
                "verl's cispo clips the weight on both sides (1 ± clip_ratio); TRL's and stageloop's cap it above only",
            );
            "cispo"
        }
        (_, IsLevel::Sequence) => "gspo",
        _ => "vanilla",
    };
    o.set(&format!("{ACTOR}.policy_loss.loss_mode"), mode);
    let agg = match cfg.loss_type {
        LossType::Grpo => "seq-mean-token-mean",
        LossType::DrGrpo => "seq-mean-token-sum-norm",
        LossType::Dapo | LossType::Cispo => "token-mean",
    };
    o.set(&format!("{ACTOR}.loss_agg_mode"), agg);
    o.set(&format!("{ACTOR}.entropy_coeff"), cfg.entropy_coef);
    o.set(&format!("{ACTOR}.ppo_epochs"), cfg.num_iterations);
    o.set(&format!("{ACTOR}.ppo_mini_batch_size"), cfg.prompts);
    let micro = if cfg.micro_batch > 0 {
        cfg.micro_batch
    } else {
        cfg.prompts * cfg.group_size
    };
    o.set(&format!("{ACTOR}.ppo_micro_batch_size_per_gpu"), micro);
    let optim = format!("{ACTOR}.optim");
    o.set(&format!("{optim}.lr"), cfg.lr);
    o.set(&format!("{optim}.lr_warmup_steps"), cfg.warmup);
    o.set(&format!("{optim}.lr_scheduler_type"), "cosine");
    o.set(&format!("{optim}.min_lr_ratio"), cfg.min_lr_ratio);
    o.set(&format!("{optim}.weight_decay"), cfg.weight_decay);
    o.set(&format!("{optim}.clip_grad"), cfg.grad_clip);
    o.set(&format!("{optim}.betas"), "[0.9,0.95]");
}

/// The rollout's sampling, the model and its LoRA, and the data's sizes and files.
fn rollout_and_data(o: &mut Overrides, exp: &Experiment, cfg: &StageConfig, model: &Path) {
    o.set(&format!("{ROLLOUT}.n"), cfg.group_size);
    o.set(&format!("{ROLLOUT}.temperature"), cfg.temperature);
    o.set(&format!("{ROLLOUT}.top_p"), cfg.top_p);
    let top_k = if cfg.top_k > 0 { cfg.top_k as i64 } else { -1 };
    o.set(&format!("{ROLLOUT}.top_k"), top_k);
    o.set("actor_rollout_ref.model.path", model.display());
    if let Some(l) = &cfg.lora {
        o.set("actor_rollout_ref.model.lora_rank", l.rank);
        o.set("actor_rollout_ref.model.lora_alpha", l.alpha());
    }
    let max_new = max_new(exp, cfg);
    o.set("data.train_batch_size", cfg.prompts);
    o.set("data.max_response_length", max_new);
    let prompt = exp.spec.model.ctx.saturating_sub(max_new).max(1);
    o.set("data.max_prompt_length", prompt);
    o.set("data.train_files", "data/train.parquet");
    o.set("data.val_files", "data/train.parquet");
}

/// The trainer's length, checkpoints, logging and names, and the batch reward function.
fn trainer_and_reward(o: &mut Overrides, exp: &Experiment, cfg: &StageConfig) {
    o.set("trainer.total_training_steps", cfg.steps);
    o.set("trainer.save_freq", cfg.checkpoint_every);
    o.set("trainer.test_freq", -1);
    o.set("trainer.val_before_train", false);
    o.set("trainer.logger", "[console,file]");
    o.set("trainer.project_name", &exp.name);
    o.set("trainer.experiment_name", &cfg.name);
    o.set("reward.reward_manager.name", "batch");
    o.set("reward.custom_reward_function.path", "reward.py");
    o.set("reward.custom_reward_function.name", "compute_score");
}

/// The settings verl's `main_ppo` has no equivalent for, when the stage sets them.
fn not_carried(o: &mut Overrides, exp: &Experiment, cfg: &StageConfig) {
    if cfg.max_new_tokens == 0 {
        o.skip(
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
            o.skip(key, why);
        }
    }
    for (name, _) in cfg.reward_programs() {
        o.skip(
            &format!("rewards.{name}"),
            "a reward program: call it from reward.py",
        );
    }
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
    let stage = serde_json::json!({
        "stageloop": super::stageloop_exe(),
        "scorer": trl_stage["scorer"],
        "scorer_reads_answer": trl_stage["scorer_reads_answer"],
        "rewards": trl_stage["rewards"],
        "stage": cfg.name,
        "experiment": exp.name,
        "stage_config": cfg.to_json(),
        "unmapped": super::unmapped_json(&unmapped),
    });
    let mut write = |name: &str, text: &str| super::write_to(out, name, text, &mut files);
    write("stage.json", &serde_json::to_string_pretty(&stage)?)?;
    write("data/train.jsonl", &(rows.join("\n") + "\n"))?;
    write("prepare_data.py", PREPARE)?;
    write("reward.py", REWARD)?;
    write("run.sh", &run_script(cfg, &unmapped, &over))?;
    write("overrides.txt", &(over.join("\n") + "\n"))?;
    let launch = vec![
        "bash run.sh trainer.n_gpus_per_node=1".to_string(),
        "bash run.sh trainer.n_gpus_per_node=8".to_string(),
        "bash run.sh trainer.nnodes=2 trainer.n_gpus_per_node=8   # on a Ray cluster".to_string(),
    ];
    let readme = readme(exp, cfg, &launch);
    super::finish(out, &readme, "run.sh", files, unmapped, model_dir, launch)
}

/// `prepare_data.py`: verl reads parquet.
const PREPARE: &str = "\
# verl reads parquet: data/train.jsonl -> data/train.parquet (pandas, which verl installs).
import pandas as pd

pd.read_json(\"data/train.jsonl\", lines=True).to_parquet(\"data/train.parquet\")
";

/// `run.sh`: verl's `main_ppo` with the overrides, its file logger and rollout dumps pointed
/// into a fresh run folder.
fn run_script(cfg: &StageConfig, unmapped: &[Unmapped], over: &[String]) -> String {
    let mut script = format!(
        "#!/usr/bin/env bash\n# Stage `{}` handed to verl by `stageloop export --to verl`.\n{}",
        cfg.name,
        super::unmapped_comment(unmapped, "verl", "")
    );
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
    for line in over {
        script += &format!("  '{}' \\\n", line.replace('\'', "'\\''"));
    }
    script += "  \"trainer.rollout_data_dir=$run/rollouts\" \\\n  \"$@\"\n";
    script
}

/// The folder's README: what it is and the launch lines.
fn readme(exp: &Experiment, cfg: &StageConfig, launch: &[String]) -> String {
    format!(
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
    )
}
