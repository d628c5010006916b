//! The arithmetic of GRPO, host-side and unit-tested: group-relative advantages with TRL's
//! `scale_rewards`, the clipped surrogate per token, the k3 KL estimator, the loss normalisers of
//! `loss_type`, DAPO's overlong shaping and dynamic-sampling filtering. The tensor version of the
//! loss in `grpo.rs` is tested against [`reference_loss`].

use crate::spec::{LossType, SamplerCorrection, ScaleRewards, StageConfig};

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

/// Advantages for rewards laid out as consecutive groups of `g`: `r − mean(group)`, divided by
/// the group's std (`group`), the whole batch's std (`batch`) or nothing (`none`). A zero std
/// leaves the centred value undivided (it is 0 for a group of equal rewards).
pub fn advantages(rewards: &[f64], g: usize, scale: ScaleRewards) -> Vec<f64> {
    let (_, batch_std) = mean_std(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(g) {
        let (m, s) = mean_std(group);
        let denom = match scale {
            ScaleRewards::Group => Some(s),
            ScaleRewards::Batch => Some(batch_std),
            ScaleRewards::None => None,
        };
        for r in group {
            out.push(match denom {
                Some(d) if d > 1e-8 => (r - m) / (d + 1e-4),
                _ => r - m,
            });
        }
    }
    out
}

/// Indices of the groups whose rewards are not all equal (dynamic sampling keeps these).
pub fn informative_groups(rewards: &[f64], g: usize) -> Vec<usize> {
    rewards
        .chunks(g)
        .enumerate()
        .filter(|(_, grp)| grp.iter().any(|r| (r - grp[0]).abs() > 1e-9))
        .map(|(i, _)| i)
        .collect()
}

/// k3 estimator of KL(π‖π_ref) at one token: `exp(ref − logp) − (ref − logp) − 1` (≥ 0).
pub fn k3(logp: f64, ref_logp: f64) -> f64 {
    let d = ref_logp - logp;
    d.exp() - d - 1.0
}

/// The clipped surrogate at one token, as a loss (negated objective):
/// `−min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A)`.
pub fn clipped_token_loss(ratio: f64, adv: f64, eps: f64, eps_high: f64) -> f64 {
    let clipped = ratio.clamp(1.0 - eps, 1.0 + eps_high);
    -(ratio * adv).min(clipped * adv)
}

/// DAPO's soft overlong penalty: 0 up to `max_len − buffer`, then falling linearly to `−penalty`
/// at `max_len`.
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize, penalty: f64) -> f64 {
    if buffer == 0 || len + buffer <= max_len {
        return 0.0;
    }
    let over = (len + buffer - max_len) as f64;
    -penalty * (over / buffer as f64).min(1.0)
}

/// Normalise per-token losses (`rows` of masked tokens) into the batch loss for `loss_type`:
/// `grpo` averages within each sequence then over sequences; `dr_grpo` sums everything and divides
/// by `rows × budget`, the generation budget (a constant, as in Dr. GRPO and TRL: no length of
/// this batch's completions scales the gradient); `dapo` divides the sum by the number of tokens.
pub fn normalise(rows: &[Vec<f64>], loss_type: LossType, budget: usize) -> f64 {
    let n = rows.len().max(1) as f64;
    match loss_type {
        LossType::Grpo => {
            rows.iter()
                .map(|r| {
                    if r.is_empty() {
                        0.0
                    } else {
                        r.iter().sum::<f64>() / r.len() as f64
                    }
                })
                .sum::<f64>()
                / n
        }
        LossType::DrGrpo => rows.iter().flatten().sum::<f64>() / (n * budget.max(1) as f64),
        LossType::Dapo => {
            let t: usize = rows.iter().map(Vec::len).sum();
            rows.iter().flatten().sum::<f64>() / t.max(1) as f64
        }
    }
}

/// The loss settings of a GRPO stage, fixed for the whole run.
#[derive(Debug, Clone, Copy)]
pub struct LossConfig {
    /// Lower clip range of the ratio (`1 − epsilon`).
    pub epsilon: f64,
    /// Upper clip range of the ratio (`1 + epsilon_high`).
    pub epsilon_high: f64,
    /// Weight of the k3 KL to the reference (0: no reference).
    pub beta: f64,
    pub loss_type: LossType,
    /// The generation budget: `dr_grpo` divides by `rows × budget`, a constant, so that no
    /// length of this step's completions enters the gradient's scale.
    pub budget: usize,
}

impl LossConfig {
    /// A stage's settings, for a model with context `ctx`.
    pub fn new(cfg: &StageConfig, ctx: usize) -> LossConfig {
        LossConfig {
            epsilon: cfg.epsilon,
            epsilon_high: cfg.epsilon_high,
            beta: cfg.beta,
            loss_type: cfg.loss_type,
            budget: completion_budget(cfg.max_new_tokens, ctx),
        }
    }
}

/// The most tokens a completion may have (its EOS included): `max_new_tokens`, or the whole
/// context when it is 0 ("up to the context").
pub fn completion_budget(max_new_tokens: usize, ctx: usize) -> usize {
    if max_new_tokens == 0 {
        ctx
    } else {
        max_new_tokens.min(ctx)
    }
}

/// One completion's tokens as the loss sees them.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub logp: Vec<f64>,
    pub old_logp: Vec<f64>,
    pub ref_logp: Option<Vec<f64>>,
    pub advantage: f64,
    /// Each token's sampler-correction weight ([`sampler_weights`]); `None`: all 1.
    pub weight: Option<Vec<f64>>,
}

/// The whole GRPO loss on the host, the specification the tensor code is tested against.
pub fn reference_loss(rows: &[TokenRow], c: &LossConfig) -> f64 {
    let per_token: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            (0..r.logp.len())
                .map(|t| {
                    let ratio = (r.logp[t] - r.old_logp[t]).exp();
                    let mut l = clipped_token_loss(ratio, r.advantage, c.epsilon, c.epsilon_high);
                    l *= r.weight.as_ref().map_or(1.0, |w| w[t]);
                    if let (Some(rf), true) = (&r.ref_logp, c.beta > 0.0) {
                        l += c.beta * k3(r.logp[t], rf[t]);
                    }
                    l
                })
                .collect()
        })
        .collect();
    normalise(&per_token, c.loss_type, c.budget)
}

/// Weights that correct each token's loss for what the sampler and the trainer disagree on
/// (TRL's `vllm_importance_sampling_correction`). `diff[r][t]` is the trainer's minus the
/// sampler's log-probability of row `r`'s token `t`, `None` where the token is not one the
/// sampler drew (its weight is 1; the mask drops it anyway). Token modes weigh each token by
/// `exp(diff)`; sequence modes weigh every token of a row by `exp(Σ diff)`. Truncate caps the
/// weight at `cap`; mask sets a weight above `cap` to 0.
pub fn sampler_weights(
    diff: &[Vec<Option<f64>>],
    mode: SamplerCorrection,
    cap: f64,
) -> Vec<Vec<f64>> {
    let limit = |w: f64| match mode {
        SamplerCorrection::TokenTruncate | SamplerCorrection::SequenceTruncate => w.min(cap),
        SamplerCorrection::TokenMask | SamplerCorrection::SequenceMask if w > cap => 0.0,
        _ => w,
    };
    diff.iter()
        .map(|row| match mode {
            SamplerCorrection::Off => vec![1.0; row.len()],
            SamplerCorrection::TokenTruncate | SamplerCorrection::TokenMask => row
                .iter()
                .map(|d| d.map_or(1.0, |d| limit(d.exp())))
                .collect(),
            SamplerCorrection::SequenceTruncate | SamplerCorrection::SequenceMask => {
                let w = limit(row.iter().flatten().sum::<f64>().exp());
                vec![w; row.len()]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_weights_per_token_and_per_sequence() {
        let ln = f64::ln;
        // Row 0: ratios 2, 4 and a prompt token; row 1: ratios 0.5, 1.
        let diff = vec![
            vec![None, Some(ln(2.0)), Some(ln(4.0))],
            vec![Some(ln(0.5)), Some(0.0), None],
        ];
        let w = |m| sampler_weights(&diff, m, 3.0);
        let near = |a: &[Vec<f64>], b: &[[f64; 3]; 2]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| (x - y).abs() < 1e-12)
        };
        assert!(near(&w(SamplerCorrection::Off), &[[1.0; 3]; 2]));
        assert!(near(
            &w(SamplerCorrection::TokenTruncate),
            &[[1.0, 2.0, 3.0], [0.5, 1.0, 1.0]]
        ));
        assert!(near(
            &w(SamplerCorrection::TokenMask),
            &[[1.0, 2.0, 0.0], [0.5, 1.0, 1.0]]
        ));
        // Sequences: row 0's ratio is 2·4 = 8, row 1's 0.5.
        assert!(near(
            &w(SamplerCorrection::SequenceTruncate),
            &[[3.0; 3], [0.5; 3]]
        ));
        assert!(near(
            &w(SamplerCorrection::SequenceMask),
            &[[0.0; 3], [0.5; 3]]
        ));
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn advantages_for_each_scaling() {
        // One group of 4: rewards 1,0,0,1 → mean 0.5, std 0.5.
        let r = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let a = advantages(&r, 4, ScaleRewards::Group);
        assert!(close(a[0], 0.5 / 0.5001) && close(a[1], -0.5 / 0.5001));
        // second group: mean .75, std sqrt(.1875)
        let s = 0.1875f64.sqrt();
        assert!(close(a[4], 0.25 / (s + 1e-4)) && close(a[7], -0.75 / (s + 1e-4)));
        let b = advantages(&r, 4, ScaleRewards::Batch);
        let (_, bs) = mean_std(&r);
        assert!(close(b[7], -0.75 / (bs + 1e-4)));
        let n = advantages(&r, 4, ScaleRewards::None);
        assert_eq!(n, vec![0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]);
        // A group of equal rewards has zero advantage, never NaN.
        let z = advantages(&[1.0, 1.0, 1.0], 3, ScaleRewards::Group);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn clipped_loss_inside_and_outside_the_range() {
        // Inside the clip range the loss is −ρA.
        assert!(close(clipped_token_loss(1.1, 2.0, 0.2, 0.2), -2.2));
        // Positive advantage, ratio above 1+ε: clipped at (1+ε)A.
        assert!(close(clipped_token_loss(1.5, 2.0, 0.2, 0.2), -2.4));
        // Clip-higher: ε_high widens the upper bound only.
        assert!(close(clipped_token_loss(1.5, 2.0, 0.2, 0.28), -2.56));
        // Negative advantage, ratio below 1−ε: clipped at (1−ε)A (min picks the clipped term).
        assert!(close(clipped_token_loss(0.5, -1.0, 0.2, 0.2), 0.8));
        // Negative advantage, ratio above 1+ε: not clipped (pessimistic bound).
        assert!(close(clipped_token_loss(1.5, -1.0, 0.2, 0.2), 1.5));
    }

    #[test]
    fn k3_is_non_negative_and_zero_when_policies_match() {
        assert_eq!(k3(-1.3, -1.3), 0.0);
        for (a, b) in [(-0.1, -2.0), (-3.0, -0.2), (-1.0, -1.5)] {
            assert!(k3(a, b) > 0.0);
        }
    }

    #[test]
    fn each_loss_type_has_its_normaliser() {
        let rows = vec![vec![1.0, 1.0, 1.0, 1.0], vec![4.0]];
        assert!(close(
            normalise(&rows, LossType::Grpo, 10),
            (1.0 + 4.0) / 2.0
        ));
        assert!(close(normalise(&rows, LossType::Dapo, 10), 8.0 / 5.0));
        // Dr. GRPO divides by rows × the generation budget (10), not by the longest row (4).
        assert!(close(normalise(&rows, LossType::DrGrpo, 10), 8.0 / 20.0));
        assert!(close(normalise(&rows, LossType::DrGrpo, 16), 8.0 / 32.0));
    }

    #[test]
    fn the_budget_is_max_new_tokens_or_the_context() {
        assert_eq!(completion_budget(24, 64), 24);
        assert_eq!(completion_budget(0, 64), 64);
        assert_eq!(completion_budget(100, 64), 64);
    }

    #[test]
    fn dynamic_sampling_keeps_only_groups_with_spread() {
        let r = [1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 1.0];
        assert_eq!(informative_groups(&r, 2), vec![3]);
        assert_eq!(informative_groups(&r, 4), vec![0, 1]);
    }

    #[test]
    fn overlong_shaping() {
        assert_eq!(overlong_penalty(10, 20, 5, 1.0), 0.0);
        assert_eq!(overlong_penalty(15, 20, 5, 1.0), 0.0);
        assert!(close(overlong_penalty(18, 20, 5, 1.0), -0.6));
        assert!(close(overlong_penalty(25, 20, 5, 1.0), -1.0));
        assert_eq!(overlong_penalty(25, 20, 0, 1.0), 0.0);
    }
}
