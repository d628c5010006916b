//! GRPO: the tensor loss equals the host specification, one step raises the log-probability of a
//! positive-advantage completion, and a tiny GRPO stage raises its reward on an easy objective.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stageloop::model::{Gpt, ModelConfig};
use stageloop::runfs::{self, metrics::parse_metric_line};
use stageloop::spec::{IsLevel, KlEstimator, LossType, SamplerCorrection};
use stageloop::stages::common::target_logprobs;
use stageloop::stages::grpo::{
    LossConfig, LossInputs, Norm, grpo_loss, micro_batches, prompt_batches,
};
use stageloop::stages::grpo_math::{TokenRow, high_entropy_mask, reference_loss, sampler_weights};

use crate::common;

fn t2(v: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let (n, t) = (v.len(), v[0].len());
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, [n, t]), device)
}

#[test]
fn tensor_loss_matches_the_host_specification() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let kls = [KlEstimator::K3, KlEstimator::K2, KlEstimator::K1];
    let cases = [
        LossType::Grpo,
        LossType::DrGrpo,
        LossType::Dapo,
        LossType::Cispo,
    ]
    .into_iter()
    .flat_map(|l| [IsLevel::Token, IsLevel::Sequence].map(|v| (l, v)));
    for (case, (loss_type, level)) in cases.enumerate() {
        for beta in [0.0, 0.04] {
            let (n, t) = (6, 5);
            let lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..=t)).collect();
            let rnd = |rng: &mut ChaCha8Rng| -> Vec<Vec<f64>> {
                (0..n)
                    .map(|_| (0..t).map(|_| -rng.random_range(0.05..2.0)).collect())
                    .collect()
            };
            let logp = rnd(&mut rng);
            let old: Vec<Vec<f64>> = logp
                .iter()
                .map(|r| r.iter().map(|x| x + rng.random_range(-0.4..0.4)).collect())
                .collect();
            let refl = rnd(&mut rng);
            let adv: Vec<f64> = (0..n).map(|_| rng.random_range(-1.5..1.5)).collect();
            let mask: Vec<Vec<f64>> = lens
                .iter()
                .map(|&l| (0..t).map(|j| (j < l) as u8 as f64).collect())
                .collect();
            // Sampler-correction weights on the runs without a reference (both paths for
            // every loss type).
            let weights: Option<Vec<Vec<f64>>> = (beta == 0.0).then(|| {
                let diff: Vec<Vec<Option<f64>>> = (0..n)
                    .map(|_| (0..t).map(|_| Some(rng.random_range(-0.5..1.5))).collect())
                    .collect();
                sampler_weights(&diff, SamplerCorrection::TokenTruncate, 3.0)
            });
            // A top-entropy mask on every other case (ρ = 0.5 of random entropies).
            let keep: Option<Vec<Vec<f64>>> = (case % 2 == 1).then(|| {
                let h: Vec<Vec<f64>> = (0..n)
                    .map(|_| (0..t).map(|_| rng.random_range(0.0..3.0)).collect())
                    .collect();
                let valid: Vec<Vec<bool>> = mask
                    .iter()
                    .map(|r| r.iter().map(|&m| m > 0.0).collect())
                    .collect();
                high_entropy_mask(&h, &valid, 0.5)
            });
            let rows: Vec<TokenRow> = (0..n)
                .map(|i| TokenRow {
                    logp: logp[i][..lens[i]].to_vec(),
                    old_logp: old[i][..lens[i]].to_vec(),
                    ref_logp: Some(refl[i][..lens[i]].to_vec()),
                    advantage: adv[i],
                    weight: weights.as_ref().map(|w| w[i][..lens[i]].to_vec()),
                    keep: keep.as_ref().map(|k| k[i][..lens[i]].to_vec()),
                })
                .collect();
            let c = LossConfig {
                epsilon: 0.2,
                epsilon_high: if loss_type == LossType::Cispo {
                    1.1
                } else {
                    0.28
                },
                beta,
                loss_type,
                budget: t + 3,
                level,
                kl: kls[case % 3],
            };
            let want = reference_loss(&rows, &c);
            // The loss of rows `r`, normalised by `norm`.
            let loss_of = |r: std::ops::Range<usize>, norm: Norm| {
                let adv_rows: Vec<Vec<f64>> = adv[r.clone()].iter().map(|&a| vec![a]).collect();
                let (l, _) = grpo_loss(
                    LossInputs {
                        logp: t2(&logp[r.clone()], &device),
                        old_logp: t2(&old[r.clone()], &device),
                        ref_logp: Some(t2(&refl[r.clone()], &device)),
                        adv: t2(&adv_rows, &device),
                        mask: t2(&mask[r.clone()], &device),
                        weight: weights.as_ref().map(|w| t2(&w[r.clone()], &device)),
                        keep: keep.as_ref().map(|k| t2(&k[r], &device)),
                    },
                    &c,
                    norm,
                );
                l.into_scalar::<f32>() as f64
            };
            let whole = Norm::of(&t2(&mask, &device));
            let got = loss_of(0..n, whole);
            assert!(
                (got - want).abs() < 1e-4,
                "{loss_type:?} {level:?} β={beta}: {got} vs {want}"
            );
            // Micro-batches normalised by the whole batch add up to the batch's loss.
            let split = loss_of(0..2, whole) + loss_of(2..n, whole);
            assert!(
                (split - want).abs() < 1e-4,
                "{loss_type:?} {level:?} β={beta}: micro-batches {split} vs {want}"
            );
        }
    }
}

#[test]
fn micro_batches_group_similar_lengths_within_the_token_budget() {
    let lens: Vec<usize> = (0..128).map(|i| 10 + (i * 37) % 90).collect();
    let parts = micro_batches(&lens, 0);
    let mut seen: Vec<usize> = parts.iter().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..128).collect::<Vec<_>>(), "every row exactly once");
    assert!(parts.len() > 1);
    let padded: usize = parts
        .iter()
        .map(|p| p.len() * p.iter().map(|&i| lens[i]).max().unwrap())
        .sum();
    for p in &parts {
        let longest = p.iter().map(|&i| lens[i]).max().unwrap();
        assert!(p.len() == 1 || p.len() * longest <= 4096);
    }
    // Far less padding than one batch padded to the longest row (128 × 99).
    let real: usize = lens.iter().sum();
    assert!(padded < 128 * 99 * 3 / 4, "{padded} padded, {real} real");
    // Short batches stay in one piece.
    assert_eq!(micro_batches(&[12, 9, 15, 11], 0).len(), 1);
    // A row limit cuts sooner, shortest rows first.
    assert_eq!(
        micro_batches(&[12, 9, 15, 11], 3),
        vec![vec![1, 3, 0], vec![2]]
    );
}

#[test]
fn prompt_batches_hold_one_prompt_length_and_keep_groups_together() {
    // Three groups of four rows: prompts of 40, 42 and 40 tokens; whole lengths after them.
    let prompt_lens: Vec<usize> = [40, 42, 40].iter().flat_map(|&p| [p; 4]).collect();
    let lens: Vec<usize> = (0..12).map(|i| prompt_lens[i] + 5 + i % 3).collect();
    let parts = prompt_batches(&prompt_lens, &lens, 0);
    // The two 40-token groups share a part, in row order; the 42-token group has its own.
    assert_eq!(
        parts,
        vec![vec![0, 1, 2, 3, 8, 9, 10, 11], vec![4, 5, 6, 7]]
    );
    // A row limit cuts inside a prompt length, never mixing lengths.
    let parts = prompt_batches(&prompt_lens, &lens, 3);
    assert_eq!(
        parts,
        vec![
            vec![0, 1, 2],
            vec![3, 8, 9],
            vec![10, 11],
            vec![4, 5, 6],
            vec![7]
        ]
    );
    // The token budget counts the padded rows after the prompts: 100 rows of 50 tokens after
    // a 10-token prompt are 5,000 tokens, so two parts.
    let parts = prompt_batches(&[10; 100], &[60; 100], 0);
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), vec![81, 19]);
}

#[test]
fn one_step_raises_the_logprob_of_a_positive_advantage_completion() {
    let device = Device::flex().autodiff();
    device.seed(1);
    let cfg = ModelConfig {
        vocab: 16,
        d_model: 32,
        layers: 1,
        heads: 2,
        mlp: 64,
        ctx: 16,
        rope_theta: 1e4,
        arch: Default::default(),
    };
    let mut model = Gpt::new(&cfg, &device);
    let seq: Vec<i64> = vec![1, 8, 9, 10, 11, 12, 2];
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(seq[..6].to_vec(), [1, 6]), &device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(seq[1..].to_vec(), [1, 6]), &device);
    // Completion = the last three targets.
    let mask = Tensor::<2>::from_data(
        TensorData::new(vec![0f32, 0., 0., 1., 1., 1.], [1, 6]),
        &device,
    );
    let total = |m: &Gpt| -> f32 {
        let lp = target_logprobs(
            &m.valid(),
            inputs.clone().inner(),
            targets.clone().inner(),
            1.0,
        );
        let mk = mask.clone().inner();
        (lp * mk).sum().into_scalar::<f32>()
    };
    let before = total(&model);
    let mut optim = AdamWConfig::new().init();
    let logp = target_logprobs(&model, inputs.clone(), targets.clone(), 1.0);
    let adv = Tensor::<2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device);
    let (loss, _) = grpo_loss(
        LossInputs {
            old_logp: logp.clone().detach(),
            logp,
            ref_logp: None,
            adv,
            mask: mask.clone(),
            weight: None,
            keep: None,
        },
        &LossConfig {
            epsilon: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            loss_type: LossType::Grpo,
            budget: 6,
            level: IsLevel::Token,
            kl: KlEstimator::K3,
        },
        Norm::of(&mask),
    );
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    model = optim.step(1e-2, model, grads);
    let after = total(&model);
    assert!(after > before + 1e-3, "log-prob {before} → {after}");
}

const TINY_RL: &str = r#"name = "tiny-rl"
seed = 2

[model]
d_model = 32
layers = 2
heads = 2
mlp = 64
ctx = 40

[task]
name = "arith"
difficulty = 1
heldout = 20

[task.corpus]
bare = 0.6
wrong = 0.0
wrong_trace = 0.0

[[stage]]
name = "pre"
kind = "pretrain"
steps = 60
batch = 32
lr = 3e-3
sample_every = 0

[[stage]]
name = "rl"
kind = "grpo"
init = "pre"
steps = 24
prompts = 8
group_size = 8
lr = 2e-3
warmup = 0
min_lr_ratio = 1.0
rewards = { format = 1.0 }
"#;

#[test]
fn tiny_grpo_stage_raises_its_reward() {
    let d = tempfile::tempdir().unwrap();
    common::run_experiment(d.path(), TINY_RL);
    let (run, _) = runfs::latest_run_of(&d.path().join("runs"), "rl").unwrap();
    let rewards = metric_of(&run, "reward");
    assert_eq!(rewards.len(), 24);
    let first = rewards[..6].iter().sum::<f64>() / 6.0;
    let last = rewards[18..].iter().sum::<f64>() / 6.0;
    assert!(
        last > first + 0.15,
        "format reward should rise: {first:.3} → {last:.3} ({rewards:?})"
    );
    // Every completion of every step is a sample, with its group and advantage.
    let samples = std::fs::read_to_string(run.samples()).unwrap();
    assert_eq!(samples.lines().count(), 24 * 64);
    let s: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    for key in [
        "prompt",
        "completion",
        "answer",
        "rewards",
        "reward",
        "advantage",
        "group",
    ] {
        assert!(s.get(key).is_some(), "{key}");
    }
}

fn rewards_of(run: &std::path::Path) -> std::collections::BTreeMap<u64, f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| parse_metric_line(l).ok())
        .filter_map(|r| Some((r.step, r.values.get("reward").copied().flatten()?)))
        .collect()
}

fn tiny_rl_with_checkpoints(dir: &std::path::Path) {
    let text = TINY_RL.replace(
        "rewards = { format = 1.0 }",
        "rewards = { format = 1.0 }\ncheckpoint_every = 6",
    );
    std::fs::write(dir.join("experiment.toml"), text).unwrap();
}

#[test]
fn killed_grpo_stage_resumes_onto_the_same_reward_curve() {
    let bin = env!("CARGO_BIN_EXE_stageloop");
    let run = |dir: &std::path::Path| {
        std::process::Command::new(bin)
            .arg("run")
            .arg(dir)
            .args(["--stage", "rl"])
            .output()
            .unwrap()
    };
    // Reference: pretrain, then an uninterrupted GRPO stage.
    let a = tempfile::tempdir().unwrap();
    tiny_rl_with_checkpoints(a.path());
    let pre = std::process::Command::new(bin)
        .arg("run")
        .arg(a.path())
        .args(["--stage", "pre"])
        .output()
        .unwrap();
    assert!(pre.status.success());
    // The same pretrained checkpoint for the killed run.
    let b = tempfile::tempdir().unwrap();
    tiny_rl_with_checkpoints(b.path());
    std::fs::create_dir_all(b.path().join("runs")).unwrap();
    for e in std::fs::read_dir(a.path().join("runs")).unwrap().flatten() {
        let to = b.path().join("runs").join(e.file_name());
        std::process::Command::new("cp")
            .arg("-r")
            .arg(e.path())
            .arg(&to)
            .status()
            .unwrap();
    }
    assert!(run(a.path()).status.success());
    let reference = rewards_of(
        &runfs::latest_run_of(&a.path().join("runs"), "rl")
            .unwrap()
            .0
            .path,
    );

    common::kill_at_checkpoint(b.path(), "rl", "step-000012");
    let again = run(b.path());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("resuming"));
    let resumed = rewards_of(
        &runfs::latest_run_of(&b.path().join("runs"), "rl")
            .unwrap()
            .0
            .path,
    );
    assert_eq!(resumed.len(), 24);
    for (step, r) in &reference {
        assert!(
            (r - resumed[step]).abs() < 1e-6,
            "step {step}: {r} vs {}",
            resumed[step]
        );
    }
}

#[test]
fn loops_repeat_a_span_in_distinct_run_folders_and_chain_init() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[stage]]\nname = \"ev\"\nkind = \"eval\"\ninit = \"rl\"\nprompts = 4\nk = 2\n\n[[loop]]\nstart = \"rl\"\nend = \"ev\"\ntimes = 2\n",
        TINY_RL.replace("steps = 24", "steps = 3")
    );
    common::run_experiment(d.path(), &text);
    let runs = runfs::list_runs(&d.path().join("runs"));
    let statuses: Vec<_> = runs
        .iter()
        .map(|r| runfs::RunStatus::load(&r.path).unwrap())
        .collect();
    let order: Vec<(String, Option<u32>)> = statuses
        .iter()
        .map(|s| (s.stage.clone(), s.iteration))
        .collect();
    assert_eq!(
        order,
        vec![
            ("pre".into(), None),
            ("rl".into(), Some(1)),
            ("ev".into(), Some(1)),
            ("rl".into(), Some(2)),
            ("ev".into(), Some(2)),
        ]
    );
    // The second GRPO iteration starts from the first one's checkpoint.
    let first_rl = &runs[1];
    assert!(
        statuses[3]
            .init
            .as_deref()
            .unwrap()
            .starts_with(first_rl.path.to_str().unwrap())
    );
}

#[test]
fn spurious_reward_controls_pay_a_coin_or_the_inverted_accuracy() {
    let lines = |spec: &str| {
        let d = tempfile::tempdir().unwrap();
        let spec = spec
            .replace("steps = 60", "steps = 10")
            .replace("steps = 24", "steps = 3");
        common::run_experiment(d.path(), &spec);
        let (run, _) = runfs::latest_run_of(&d.path().join("runs"), "rl").unwrap();
        std::fs::read_to_string(run.metrics())
            .unwrap()
            .lines()
            .filter_map(|l| parse_metric_line(l).ok())
            .filter(|r| r.values.contains_key("reward"))
            .map(|r| {
                let v = |n: &str| r.values.get(n).copied().flatten().unwrap();
                (v("reward"), v("rewards/accuracy/mean"))
            })
            .collect::<Vec<_>>()
    };
    let inverted = lines(&TINY_RL.replace("{ format = 1.0 }", "{ incorrect = 1.0 }"));
    assert_eq!(inverted.len(), 3);
    for (reward, acc) in &inverted {
        assert!((reward - (1.0 - acc)).abs() < 1e-9, "{inverted:?}");
    }
    // A fair coin per completion: 64 a step, so each step's mean is near 1/2 whatever the
    // accuracy, and not the same every step.
    let random = lines(&TINY_RL.replace("{ format = 1.0 }", "{ random = 1.0 }"));
    assert_eq!(random.len(), 3);
    assert!(
        random.iter().all(|(r, _)| (0.25..=0.75).contains(r)),
        "{random:?}"
    );
    assert!(random.windows(2).any(|w| w[0].0 != w[1].0), "{random:?}");
}

#[test]
fn a_stage_with_sampler_correction_applies_and_logs_its_weights() {
    let d = tempfile::tempdir().unwrap();
    let spec = TINY_RL
        .replace("steps = 60", "steps = 10")
        .replace("steps = 24", "steps = 2")
        .replace(
            "rewards = { format = 1.0 }",
            "rewards = { format = 1.0 }\nsampler_correction = \"sequence_truncate\"\n\
             sampler_correction_cap = 2.0\nmicro_batch = 5",
        );
    common::run_experiment(d.path(), &spec);
    let (run, _) = runfs::latest_run_of(&d.path().join("runs"), "rl").unwrap();
    let text = std::fs::read_to_string(run.metrics()).unwrap();
    let rows: Vec<_> = text
        .lines()
        .filter_map(|l| parse_metric_line(l).ok())
        .filter(|r| r.values.contains_key("reward"))
        .collect();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let get = |k: &str| r.values.get(k).copied().flatten().unwrap();
        let (lo, mean, hi) = (
            get("sampling/importance_sampling_ratio/min"),
            get("sampling/importance_sampling_ratio/mean"),
            get("sampling/importance_sampling_ratio/max"),
        );
        // One weight per completion (sequence mode), each within the cap; the f32 sampler and
        // trainer agree, so every weight is 1 up to rounding.
        assert!(lo <= mean && mean <= hi && hi <= 2.0, "{lo} {mean} {hi}");
        assert!(
            (lo - 1.0).abs() < 0.05 && (hi - 1.0).abs() < 0.05,
            "{lo} {hi}"
        );
    }
}

#[test]
fn cispo_weights_are_constants_and_gspo_gradients_flow_through_the_sequence_mean() {
    let device = Device::flex().autodiff();
    let row = |v: [f32; 2]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, 2]), &device);
    let grad_of = |loss_type, level| {
        let logp = row([-1.0, -2.0]).require_grad();
        let (loss, _) = grpo_loss(
            LossInputs {
                logp: logp.clone(),
                old_logp: row([-1.2, -1.6]),
                ref_logp: None,
                adv: Tensor::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device),
                mask: row([1.0, 1.0]),
                weight: None,
                keep: None,
            },
            &LossConfig {
                epsilon: 0.2,
                epsilon_high: 1.1,
                beta: 0.0,
                loss_type,
                budget: 2,
                level,
                kl: KlEstimator::K3,
            },
            Norm {
                rows: 1,
                tokens: 2.0,
            },
        );
        let grads = loss.backward();
        logp.grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    // CISPO: d/dlogp of −w·A·logp / 2 with w = min(ratio, 1.1) held constant.
    let g = grad_of(LossType::Cispo, IsLevel::Token);
    let w = [0.2f32.exp().min(1.1), (-0.4f32).exp().min(1.1)];
    assert!(
        (g[0] + w[0] / 2.0).abs() < 1e-5 && (g[1] + w[1] / 2.0).abs() < 1e-5,
        "{g:?}"
    );
    // GSPO (dapo normaliser): both tokens carry −s·A with s = exp(mean log-ratio) inside the
    // clip range, and the loss is their sum over 2 tokens, −s; ds/dlogpᵢ = s/2 (the mean), so
    // both tokens get the gradient −s/2.
    let g = grad_of(LossType::Dapo, IsLevel::Sequence);
    let s = (-0.1f32).exp();
    for x in &g {
        assert!((x + s / 2.0).abs() < 1e-5, "{g:?}");
    }
}

/// A metric's logged values in a run's `metrics.jsonl`, in order.
fn metric_of(run: &runfs::RunDir, name: &str) -> Vec<f64> {
    std::fs::read_to_string(run.metrics())
        .unwrap()
        .lines()
        .filter_map(|l| parse_metric_line(l).ok())
        .filter_map(|r| r.values.get(name).copied().flatten())
        .collect()
}

/// The format reward's mean over the first and last six steps of a run's `rl` stage.
fn reward_rise(dir: &std::path::Path) -> (f64, f64) {
    let (run, status) = runfs::latest_run_of(&dir.join("runs"), "rl").unwrap();
    assert_eq!(status.status, runfs::Status::Done);
    let rewards = metric_of(&run, "reward");
    let n = rewards.len();
    (
        rewards[..6].iter().sum::<f64>() / 6.0,
        rewards[n - 6..].iter().sum::<f64>() / 6.0,
    )
}

#[test]
fn each_objective_switch_trains_the_tiny_stage() {
    for keys in [
        "loss_type = \"cispo\"",
        "importance_sampling_level = \"sequence\"",
        "adv_estimator = \"grpo_passk\"",
        "zero_variance_filter = true",
        "top_entropy_quantile = 0.8",
        "beta = 0.02\nkl_estimator = \"k2\"",
        "entropy_coef = 0.01",
        "kl_in_reward = true\nbeta = 0.05",
    ] {
        let d = tempfile::tempdir().unwrap();
        common::run_experiment(d.path(), &format!("{TINY_RL}{keys}\n"));
        let (first, last) = reward_rise(d.path());
        assert!(
            last > first + 0.1,
            "{keys}: format reward {first:.3} → {last:.3}"
        );
        // run.json records the switch (the compare view shows it when runs differ).
        let (run, status) = runfs::latest_run_of(&d.path().join("runs"), "rl").unwrap();
        if keys.starts_with("kl_in_reward") {
            // The KL in the rewards: measured once the policy has moved from the reference.
            let kl = metric_of(&run, "kl");
            assert!(kl.last().unwrap() > &1e-4, "{kl:?}");
        }
        let key = keys.split(' ').next().unwrap();
        assert!(
            status.config.get(key).is_some(),
            "{key} in {}",
            status.config
        );
    }
}
