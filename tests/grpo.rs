//! GRPO: the tensor loss equals the host specification, one step raises the log-probability of a
//! positive-advantage completion, and a tiny GRPO stage raises its reward on an easy objective.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stageloop::model::{Gpt, ModelConfig};
use stageloop::runfs::{self, metrics::parse_metric_line};
use stageloop::spec::{self, LossType};
use stageloop::stages::common::target_logprobs;
use stageloop::stages::grpo::{LossInputs, grpo_loss};
use stageloop::stages::grpo_math::{TokenRow, reference_loss};
use stageloop::stages::{Quiet, RunOptions, run_pipeline};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn t2(v: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let (n, t) = (v.len(), v[0].len());
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, [n, t]), device)
}

#[test]
fn tensor_loss_matches_the_host_specification() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for loss_type in [LossType::Grpo, LossType::DrGrpo, LossType::Dapo] {
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
            let rows: Vec<TokenRow> = (0..n)
                .map(|i| TokenRow {
                    logp: logp[i][..lens[i]].to_vec(),
                    old_logp: old[i][..lens[i]].to_vec(),
                    ref_logp: Some(refl[i][..lens[i]].to_vec()),
                    advantage: adv[i],
                })
                .collect();
            let want = reference_loss(&rows, 0.2, 0.28, beta, loss_type, t);
            let (got, _) = grpo_loss(
                LossInputs {
                    logp: t2(&logp, &device),
                    old_logp: t2(&old, &device),
                    ref_logp: Some(t2(&refl, &device)),
                    adv: t2(&adv.iter().map(|&a| vec![a]).collect::<Vec<_>>(), &device),
                    mask: t2(&mask, &device),
                },
                0.2,
                0.28,
                beta,
                loss_type,
                t,
            );
            let got = got.into_scalar::<f32>() as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "{loss_type:?} β={beta}: {got} vs {want}"
            );
        }
    }
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
        },
        0.2,
        0.2,
        0.0,
        LossType::Grpo,
        6,
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
    std::fs::write(d.path().join("experiment.toml"), TINY_RL).unwrap();
    let exp = spec::load(d.path()).unwrap();
    run_pipeline(
        &exp,
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
        &mut Quiet,
    )
    .unwrap();
    let (run, _) = runfs::latest_run_of(&d.path().join("runs"), "rl").unwrap();
    let text = std::fs::read_to_string(run.metrics()).unwrap();
    let rewards: Vec<f64> = text
        .lines()
        .filter_map(|l| parse_metric_line(l).ok())
        .filter_map(|r| r.values.get("reward").copied().flatten())
        .collect();
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
