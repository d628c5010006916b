//! `stageloop bench objectives`: the GRPO objectives on inputs given as JSON, so a script can
//! set them beside TRL's and verl's own functions on the same numbers
//! (`benches/objectives_check.py`). The losses run through the training code's tensor loss
//! (`stages::grpo::grpo_loss`, on the CPU backend), the advantages and KL estimators through
//! `stages::grpo_math`.
//!
//! Input, one JSON object: `{"losses": [...], "advantages": [...], "kl": [...]}`; a loss case
//! has `logp`, `old_logp` (and `ref_logp`, `entropy`) as `[rows][t]`, `adv` `[rows]`, `mask`
//! `[rows][t]` and the stage keys (`loss_type`, `importance_sampling_level`, `epsilon`,
//! `epsilon_high`, `beta`, `kl_estimator`, `top_entropy_quantile`, `entropy_coef`, `budget`);
//! an advantage case `rewards`, `group_size`, `adv_estimator`, `scale_rewards`; a KL case
//! `logp`, `ref_logp` `[n]` and `kl_estimator`. Output: the same lists of results.

use crate::spec::{AdvEstimator, IsLevel, KlEstimator, LossType, ScaleRewards};
use crate::stages::grpo::{LossConfig, LossInputs, Norm, grpo_loss};
use crate::stages::grpo_math;
use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LossCase {
    logp: Vec<Vec<f64>>,
    old_logp: Vec<Vec<f64>>,
    #[serde(default)]
    ref_logp: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    entropy: Option<Vec<Vec<f64>>>,
    adv: Vec<f64>,
    mask: Vec<Vec<f64>>,
    loss_type: LossType,
    #[serde(default = "token")]
    importance_sampling_level: IsLevel,
    epsilon: f64,
    epsilon_high: f64,
    #[serde(default)]
    beta: f64,
    #[serde(default = "k3")]
    kl_estimator: KlEstimator,
    #[serde(default = "one")]
    top_entropy_quantile: f64,
    #[serde(default)]
    entropy_coef: f64,
    budget: usize,
}

fn token() -> IsLevel {
    IsLevel::Token
}
fn k3() -> KlEstimator {
    KlEstimator::K3
}
fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvCase {
    rewards: Vec<f64>,
    group_size: usize,
    adv_estimator: AdvEstimator,
    scale_rewards: ScaleRewards,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KlCase {
    logp: Vec<f64>,
    ref_logp: Vec<f64>,
    kl_estimator: KlEstimator,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    losses: Vec<LossCase>,
    #[serde(default)]
    advantages: Vec<AdvCase>,
    #[serde(default)]
    kl: Vec<KlCase>,
}

fn t2(v: &[Vec<f64>], device: &Device) -> Result<Tensor<2>> {
    let (n, t) = (v.len(), v.first().map_or(0, Vec::len));
    anyhow::ensure!(v.iter().all(|r| r.len() == t), "rows of different lengths");
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Ok(Tensor::from_data(TensorData::new(flat, [n, t]), device))
}

/// The loss of one case, as the training code computes it for a batch in one micro-batch (the
/// entropy bonus the mean entropy of the tokens the entropy mask keeps, as `grpo.rs` adds it).
fn loss(c: &LossCase, device: &Device) -> Result<f64> {
    let valid: Vec<Vec<bool>> = c
        .mask
        .iter()
        .map(|r| r.iter().map(|&m| m > 0.0).collect())
        .collect();
    let keep = match (&c.entropy, c.top_entropy_quantile < 1.0) {
        (Some(e), true) => Some(grpo_math::high_entropy_mask(
            e,
            &valid,
            c.top_entropy_quantile,
        )),
        (None, true) => anyhow::bail!("top_entropy_quantile needs `entropy`"),
        _ => None,
    };
    let mask = t2(&c.mask, device)?;
    let norm = Norm::of(&mask);
    let adv: Vec<Vec<f64>> = c.adv.iter().map(|&a| vec![a]).collect();
    let (l, _) = grpo_loss(
        LossInputs {
            logp: t2(&c.logp, device)?,
            old_logp: t2(&c.old_logp, device)?,
            ref_logp: c.ref_logp.as_deref().map(|r| t2(r, device)).transpose()?,
            adv: t2(&adv, device)?,
            mask: mask.clone(),
            weight: None,
            keep: keep.as_deref().map(|k| t2(k, device)).transpose()?,
        },
        &LossConfig {
            epsilon: c.epsilon,
            epsilon_high: c.epsilon_high,
            beta: c.beta,
            loss_type: c.loss_type,
            budget: c.budget,
            level: c.importance_sampling_level,
            kl: c.kl_estimator,
        },
        norm,
    );
    let mut value = l.into_scalar::<f32>() as f64;
    if c.entropy_coef > 0.0 {
        // One micro-batch: the mean entropy of the tokens the policy loss trains on.
        let e = c.entropy.as_ref().context("entropy_coef needs `entropy`")?;
        let (mut sum, mut kept) = (0.0, 0.0);
        for (r, row) in e.iter().enumerate() {
            for (t, h) in row.iter().enumerate() {
                let on = c.mask[r][t] * keep.as_ref().map_or(1.0, |k| k[r][t]);
                sum += h * on;
                kept += on;
            }
        }
        value -= c.entropy_coef * sum / f64::max(kept, 1.0);
    }
    Ok(value)
}

/// Read the cases as JSON text and return the results as one JSON value.
pub fn run(input: &str) -> Result<Value> {
    let input: Input = serde_json::from_str(input).context("bench objectives: the input")?;
    let device = Device::flex();
    let losses = input
        .losses
        .iter()
        .map(|c| loss(c, &device))
        .collect::<Result<Vec<_>>>()?;
    let advantages: Vec<Vec<f64>> = input
        .advantages
        .iter()
        .map(|a| match a.adv_estimator {
            AdvEstimator::Grpo => grpo_math::advantages(&a.rewards, a.group_size, a.scale_rewards),
            AdvEstimator::GrpoPassk => {
                grpo_math::passk_advantages(&a.rewards, a.group_size, a.scale_rewards)
            }
        })
        .collect();
    let kl: Vec<Vec<f64>> = input
        .kl
        .iter()
        .map(|k| {
            k.logp
                .iter()
                .zip(&k.ref_logp)
                .map(|(&l, &r)| grpo_math::kl(k.kl_estimator, l, r))
                .collect()
        })
        .collect();
    Ok(json!({"losses": losses, "advantages": advantages, "kl": kl}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_case_runs_through_the_training_loss() {
        let out = super::run(
            r#"{"losses": [{"logp": [[-1.0, -2.0]], "old_logp": [[-1.2, -1.6]], "adv": [1.0],
                "mask": [[1, 1]], "loss_type": "cispo", "epsilon": 0.2, "epsilon_high": 0.2, "budget": 2}],
                "advantages": [{"rewards": [0, 3, 1], "group_size": 3, "adv_estimator": "grpo_passk", "scale_rewards": "none"}],
                "kl": [{"logp": [-1.0], "ref_logp": [-1.5], "kl_estimator": "k2"}]}"#,
        )
        .unwrap();
        assert!(
            (out["losses"][0].as_f64().unwrap() - 0.3).abs() < 1e-6,
            "{out}"
        );
        assert_eq!(out["advantages"][0], serde_json::json!([0.0, 2.0, 0.0]));
        assert_eq!(out["kl"][0], serde_json::json!([0.125]));
        assert!(super::run("{\"losses\": [{\"x\": 1}]}").is_err());
    }
}
