//! `export EXP --stage NAME --to trl`: the folder it writes (the stage's settings mapped to
//! TRL's arguments, the data, the model), what it refuses, and how the notebook treats the run
//! folder the exported script writes (no lock: alive while its files change). The script itself
//! runs under TRL in `benches/trl_handoff.py` (no Python here).

use assert_cmd::Command;
use stageloop::runfs::{RunStatus, Status};
use std::path::Path;
use std::time::{Duration, SystemTime};

const LOCAL: &str = r#"name = "hand"
seed = 3

[model]
d_model = 32
layers = 1
heads = 2
mlp = 64
ctx = 40

[task]
name = "arith"
difficulty = 1
heldout = 20

[[stage]]
name = "pre"
kind = "pretrain"
steps = 3
batch = 8

[[stage]]
name = "sft"
kind = "sft"
init = "pre"
steps = 2
batch = 4
examples = 6
lora = { rank = 4 }
"#;

const HANDED: &str = r#"
[[stage]]
name = "grpo"
kind = "grpo"
init = "sft"
steps = 3
prompts = 2
group_size = 4
micro_batch = 4
lr = 2e-5
beta = 0.04
epsilon_high = 0.28
temperature = 0.9
top_k = 5
max_new_tokens = 12
num_iterations = 2
loss_type = "grpo"
scale_rewards = "none"
mask_truncated = true
dynamic_sampling = true
overlong_buffer = 4
rewards = { accuracy = 1.0, format = 0.2, partial = 0.1 }
lora = { rank = 8, alpha = 16, targets = ["qkv", "down"] }

[[stage]]
name = "ev"
kind = "eval"
init = "grpo"
prompts = 4
"#;

/// An experiment whose pre and sft stages ran, with a GRPO and an eval stage after them.
fn experiment(dir: &Path) {
    crate::common::run_experiment(dir, LOCAL);
    std::fs::write(dir.join("experiment.toml"), format!("{LOCAL}{HANDED}")).unwrap();
}

fn export(dir: &Path, stage: &str, out: &Path) -> std::process::Output {
    Command::cargo_bin("stageloop")
        .unwrap()
        .arg("export")
        .arg(dir)
        .args(["--stage", stage, "--to", "trl", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn a_grpo_stage_maps_to_trl_arguments_and_names_what_it_cannot() {
    let d = tempfile::tempdir().unwrap();
    experiment(d.path());
    let out = d.path().join("to-trl");
    let o = export(d.path(), "grpo", &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("not carried over: dynamic_sampling"),
        "{stderr}"
    );
    let stage: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stage.json")).unwrap()).unwrap();
    let c = &stage["config"];
    for (k, v) in [
        ("max_steps", serde_json::json!(3)),
        ("num_generations", serde_json::json!(4)),
        ("max_completion_length", serde_json::json!(12)),
        ("learning_rate", serde_json::json!(2e-5)),
        ("beta", serde_json::json!(0.04)),
        ("epsilon", serde_json::json!(0.2)),
        ("epsilon_high", serde_json::json!(0.28)),
        ("temperature", serde_json::json!(0.9)),
        ("top_k", serde_json::json!(5)),
        ("num_iterations", serde_json::json!(2)),
        ("loss_type", serde_json::json!("grpo")),
        ("scale_rewards", serde_json::json!("none")),
        ("mask_truncated_completions", serde_json::json!(true)),
        ("adam_beta2", serde_json::json!(0.95)),
        ("seed", serde_json::json!(3)),
    ] {
        assert_eq!(c[k], v, "{k}");
    }
    assert_eq!(
        stage["batch"],
        serde_json::json!({"per_step": 8, "micro_batch": 4})
    );
    assert_eq!(
        stage["lora"]["target_modules"],
        serde_json::json!(["q_proj", "k_proj", "v_proj", "down_proj"])
    );
    assert_eq!(stage["lora"]["lora_alpha"], 16.0);
    let rewards: Vec<(String, f64)> = stage["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rewards,
        vec![
            ("accuracy".into(), 1.0),
            ("format".into(), 0.2),
            ("partial".into(), 0.1)
        ]
    );
    assert_eq!(
        stage["overlong"],
        serde_json::json!({"buffer": 4, "penalty": 1.0, "max": 12})
    );
    assert_eq!(
        stage["scorer"],
        serde_json::json!(["score", "--task", "arith"])
    );
    assert_eq!(
        stage["stage_config"]["dynamic_sampling"], true,
        "run.json's config"
    );
    // The SFT checkpoint (LoRA, merged) as a Hugging Face folder; the prompts as the character
    // model reads them (its BOS text first), with the task's own prompt for the scorer.
    assert!(out.join("model/config.json").is_file());
    assert!(out.join("model/model.safetensors").is_file());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("data/train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "steps × prompts");
    let p = rows[0]["prompt"].as_str().unwrap();
    let problem = rows[0]["problem"].as_str().unwrap();
    assert!(p.ends_with(problem) && p.len() > problem.len(), "{p}");
    assert!(rows[0]["answer"].is_string());
    let script = std::fs::read_to_string(out.join("train.py")).unwrap();
    assert!(script.starts_with("#!/usr/bin/env python3\n# Stage `grpo` (grpo)"));
    assert!(script.contains("#   dynamic_sampling: TRL has no dynamic sampling"));
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("accelerate launch --num_processes 8 train.py"));
}

#[test]
fn an_sft_stage_maps_to_sft_trainer_and_other_kinds_are_refused() {
    let d = tempfile::tempdir().unwrap();
    experiment(d.path());
    let out = d.path().join("sft-trl");
    // The SFT stage starts from `pre`'s checkpoint.
    let o = export(d.path(), "sft", &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stage: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stage.json")).unwrap()).unwrap();
    assert_eq!(stage["trainer"], "sft");
    assert_eq!(stage["config"]["max_length"], 40);
    assert_eq!(stage["config"]["completion_only_loss"], true);
    assert_eq!(stage["batch"]["per_step"], 4);
    let rows = std::fs::read_to_string(out.join("data/train.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 6, "the stage's examples");
    assert!(rows.contains("\"completion\":\"<think>"), "{rows}");

    let refused = export(d.path(), "ev", &d.path().join("x"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--to trl hands over sft and grpo"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let unknown = Command::cargo_bin("stageloop")
        .unwrap()
        .arg("export")
        .arg(d.path())
        .args(["--stage", "grpo", "--to", "deepspeed"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--to deepspeed"));
}

#[test]
fn a_stage_whose_init_never_ran_says_what_to_run() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), format!("{LOCAL}{HANDED}")).unwrap();
    let o = export(d.path(), "grpo", &d.path().join("out"));
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("starts from `sft`, which has no finished run"),
        "{e}"
    );
    assert!(e.contains("--stage sft"), "{e}");
}

#[test]
fn a_run_another_program_writes_is_alive_while_its_files_change() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path();
    std::fs::write(
        run.join("run.json"),
        r#"{"id": "r", "experiment": "e", "stage": "grpo", "kind": "grpo", "status": "running", "writer": "trl"}"#,
    )
    .unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\": 1, \"reward\": 0.5}\n",
    )
    .unwrap();
    let s = RunStatus::load(run).unwrap();
    assert_eq!(
        s.effective_status(run),
        Status::Running,
        "no lock, but fresh files"
    );
    let old = SystemTime::now() - Duration::from_secs(3600);
    for f in ["run.json", "metrics.jsonl"] {
        std::fs::File::options()
            .write(true)
            .open(run.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    assert_eq!(
        s.effective_status(run),
        Status::Idle,
        "quiet for an hour: idle, not crashed"
    );
    // stageloop's own runs still go by their lock.
    let mut own = s.clone();
    own.writer = None;
    assert_eq!(own.effective_status(run), Status::Crashed);
}

#[test]
fn a_grpo_stage_maps_to_verl_overrides_and_a_character_model_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("experiment.toml"),
        format!("{LOCAL}{HANDED}").replace(
            "loss_type = \"grpo\"",
            "loss_type = \"grpo\"\nimportance_sampling_level = \"sequence\"\nkl_in_reward = true\nkl_estimator = \"k2\"",
        ),
    )
    .unwrap();
    let exp = stageloop::spec::load(d.path()).unwrap();
    let cfg = exp.resolved("grpo").unwrap();
    let (o, unmapped) = stageloop::handoff::verl::overrides(&exp, &cfg, Path::new("/models/m"));
    for want in [
        "algorithm.adv_estimator=grpo",
        "algorithm.norm_adv_by_std_in_grpo=false",
        "algorithm.use_kl_in_reward=true",
        "algorithm.kl_penalty=mse",
        "algorithm.kl_ctrl.kl_coef=0.04",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.clip_ratio_high=0.28",
        "actor_rollout_ref.actor.ppo_epochs=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.top_k=5",
        "actor_rollout_ref.model.path=/models/m",
        "actor_rollout_ref.model.lora_rank=8",
        "data.train_batch_size=2",
        "data.max_response_length=12",
        "trainer.total_training_steps=3",
        "algorithm.filter_groups.enable=true",
        "trainer.logger=[console,file]",
    ] {
        assert!(o.iter().any(|x| x == want), "{want} not in {o:?}");
    }
    let names: Vec<&str> = unmapped.iter().map(|u| u.key.as_str()).collect();
    assert!(
        names.contains(&"mask_truncated") && names.contains(&"overlong_buffer"),
        "{names:?}"
    );
    // verl templates every prompt: the character model's stage goes to TRL instead.
    crate::common::run_experiment(d.path(), LOCAL);
    std::fs::write(d.path().join("experiment.toml"), format!("{LOCAL}{HANDED}")).unwrap();
    let o = Command::cargo_bin("stageloop")
        .unwrap()
        .arg("export")
        .arg(d.path())
        .args(["--stage", "grpo", "--to", "verl", "--out"])
        .arg(d.path().join("v"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("chat template") && e.contains("--to trl"), "{e}");
}
