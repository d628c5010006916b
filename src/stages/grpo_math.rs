//! The arithmetic of GRPO, host-side and unit-tested: group-relative advantages with TRL's
//! `scale_rewards` (and verl's pass@k variant), the clipped surrogate per token or per sequence
//! (GSPO), CISPO's weighted log-likelihood, the k1/k2/k3 KL estimators, the loss normalisers of
//! `loss_type`, the high-entropy token mask, DAPO's overlong shaping and dynamic-sampling
//! filtering. The tensor version of the loss in `grpo.rs` is tested against [`reference_loss`].

use crate::spec::{IsLevel, KlEstimator, LossType, SamplerCorrection, ScaleRewards, StageConfig};

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

/// verl's `grpo_passk` advantages: in each group only the best completion (the first of equal
/// best) gets one, its reward minus the second best, divided by the group's sample standard
/// deviation (`n − 1`) plus 1e-6 unless `scale` is `none`; every other completion gets 0.
pub fn passk_advantages(rewards: &[f64], g: usize, scale: ScaleRewards) -> Vec<f64> {
    let mut out = vec![0.0; rewards.len()];
    for (gi, group) in rewards.chunks(g).enumerate() {
        if group.len() < 2 {
            continue;
        }
        let best = (0..group.len())
            .reduce(|b, i| if group[i] > group[b] { i } else { b })
            .expect("two or more");
        let second = (0..group.len())
            .filter(|&i| i != best)
            .map(|i| group[i])
            .fold(f64::NEG_INFINITY, f64::max);
        let mut a = group[best] - second;
        if scale != ScaleRewards::None {
            let n = group.len() as f64;
            let m = group.iter().sum::<f64>() / n;
            let sd = (group.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            a /= sd + 1e-6;
        }
        out[gi * g + best] = a;
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

/// KL(π‖π_ref) at one token by `estimator`: k1 `logp − ref`, k2 `(logp − ref)²/2`, k3 [`k3`].
pub fn kl(estimator: KlEstimator, logp: f64, ref_logp: f64) -> f64 {
    match estimator {
        KlEstimator::K1 => logp - ref_logp,
        KlEstimator::K2 => 0.5 * (logp - ref_logp).powi(2),
        KlEstimator::K3 => k3(logp, ref_logp),
    }
}

/// The `q` quantile of `values` with linear interpolation between order statistics (as
/// `torch.quantile`); `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// TRL's `top_entropy_quantile` mask: 1 for the tokens (of those `valid`) whose entropy is at
/// least the `1 − rho` quantile of the valid tokens' entropies, else 0.
pub fn high_entropy_mask(entropy: &[Vec<f64>], valid: &[Vec<bool>], rho: f64) -> Vec<Vec<f64>> {
    let kept: Vec<f64> = entropy
        .iter()
        .zip(valid)
        .flat_map(|(e, v)| e.iter().zip(v).filter(|(_, v)| **v).map(|(e, _)| *e))
        .collect();
    let Some(threshold) = quantile(&kept, 1.0 - rho) else {
        return entropy.iter().map(|r| vec![0.0; r.len()]).collect();
    };
    entropy
        .iter()
        .zip(valid)
        .map(|(e, v)| {
            e.iter()
                .zip(v)
                .map(|(e, v)| f64::from(u8::from(*v && *e >= threshold)))
                .collect()
        })
        .collect()
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
        LossType::Dapo | LossType::Cispo => {
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
    /// Per token, or one ratio per sequence (GSPO).
    pub level: IsLevel,
    /// The KL term's estimator.
    pub kl: KlEstimator,
}

impl LossConfig {
    /// A stage's settings, for a model with context `ctx`.
    pub fn new(cfg: &StageConfig, ctx: usize) -> LossConfig {
        LossConfig {
            epsilon: cfg.epsilon,
            epsilon_high: cfg.epsilon_high,
            // With `kl_in_reward` the KL is in the rewards, not the loss.
            beta: if cfg.kl_in_reward { 0.0 } else { cfg.beta },
            loss_type: cfg.loss_type,
            budget: completion_budget(cfg.max_new_tokens, ctx),
            level: cfg.importance_sampling_level,
            kl: cfg.kl_estimator,
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
    /// Each token's entropy mask ([`high_entropy_mask`]); `None`: all 1.
    pub keep: Option<Vec<f64>>,
}

/// The whole GRPO loss on the host, the specification the tensor code is tested against.
pub fn reference_loss(rows: &[TokenRow], c: &LossConfig) -> f64 {
    let per_token: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let n = r.logp.len();
            // GSPO: every token takes its sequence's mean log-ratio.
            let seq = (0..n).map(|t| r.logp[t] - r.old_logp[t]).sum::<f64>() / n.max(1) as f64;
            (0..n)
                .map(|t| {
                    let log_ratio = match c.level {
                        IsLevel::Token => r.logp[t] - r.old_logp[t],
                        IsLevel::Sequence => seq,
                    };
                    let ratio = log_ratio.exp();
                    let mut l = match c.loss_type {
                        // The weight is a constant to the gradient; the value is the weighted
                        // negative log-likelihood.
                        LossType::Cispo => -ratio.min(c.epsilon_high) * r.advantage * r.logp[t],
                        _ => clipped_token_loss(ratio, r.advantage, c.epsilon, c.epsilon_high),
                    };
                    l *= r.keep.as_ref().map_or(1.0, |k| k[t]);
                    l *= r.weight.as_ref().map_or(1.0, |w| w[t]);
                    if let (Some(rf), true) = (&r.ref_logp, c.beta > 0.0) {
                        l += c.beta * kl(c.kl, r.logp[t], rf[t]);
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
    fn passk_advantage_goes_to_the_best_of_each_group() {
        // verl's compute_grpo_passk_outcome_advantage by hand: group [1, 0, 0.5] → the first
        // gets (1 − 0.5) / (std₁ + 1e-6), std₁ the sample std (0.5); the rest 0.
        let a = passk_advantages(&[1.0, 0.0, 0.5, 0.2, 0.2, 0.2], 3, ScaleRewards::Group);
        assert!(close(a[0], 0.5 / (0.5 + 1e-6)));
        assert_eq!(&a[1..3], &[0.0, 0.0]);
        // Ties: the first best gets best − second = 0.
        assert_eq!(&a[3..], &[0.0, 0.0, 0.0]);
        let raw = passk_advantages(&[0.0, 3.0, 1.0], 3, ScaleRewards::None);
        assert_eq!(raw, vec![0.0, 2.0, 0.0]);
    }

    #[test]
    fn kl_estimators_k1_k2_k3() {
        assert!(close(kl(KlEstimator::K1, -1.0, -1.5), 0.5));
        assert!(close(kl(KlEstimator::K2, -1.0, -1.5), 0.125));
        assert!(close(
            kl(KlEstimator::K3, -1.0, -1.5),
            (-0.5f64).exp() + 0.5 - 1.0
        ));
        for e in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            assert_eq!(
                kl(e, -0.7, -0.7),
                0.0,
                "{e:?}: zero when the policies agree"
            );
        }
    }

    #[test]
    fn quantile_and_the_high_entropy_mask_follow_torch() {
        // torch.quantile([1, 2, 3, 4], 0.5) = 2.5; 0.8 → position 2.4 → 3.4.
        assert!(close(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5).unwrap(), 2.5));
        assert!(close(quantile(&[4.0, 1.0, 3.0, 2.0], 0.8).unwrap(), 3.4));
        assert_eq!(quantile(&[], 0.5), None);
        let e = vec![vec![0.1, 2.0, 0.5], vec![1.5, 9.0, 0.3]];
        let valid = vec![vec![true, true, true], vec![true, true, false]];
        // The valid entropies are [0.1, 2, 0.5, 1.5, 9] (0.3 is padding). ρ = 0.4 keeps those
        // ≥ their 0.6 quantile: position 2.4 of [0.1, 0.5, 1.5, 2, 9], 1.5 + 0.4·0.5 = 1.7.
        let m = high_entropy_mask(&e, &valid, 0.4);
        assert_eq!(m, vec![vec![0.0, 1.0, 0.0], vec![0.0, 1.0, 0.0]]);
        // ρ = 1 keeps every valid token; ρ = 0 only the highest.
        let all = high_entropy_mask(&e, &valid, 1.0);
        assert_eq!(all, vec![vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0]]);
        let top = high_entropy_mask(&e, &valid, 0.0);
        assert_eq!(top, vec![vec![0.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]);
    }

    #[test]
    fn gspo_takes_one_ratio_per_sequence_and_cispo_weights_the_log_likelihood() {
        let row = TokenRow {
            logp: vec![-1.0, -2.0],
            old_logp: vec![-1.2, -1.6],
            ref_logp: None,
            advantage: 1.0,
            weight: None,
            keep: None,
        };
        let c = |level, loss_type| LossConfig {
            epsilon: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            loss_type,
            budget: 4,
            level,
            kl: KlEstimator::K3,
        };
        // Token level: ratios e^0.2 (clipped to 1.2) and e^-0.4; dapo averages the tokens.
        let tok = reference_loss(
            std::slice::from_ref(&row),
            &c(IsLevel::Token, LossType::Dapo),
        );
        assert!(close(tok, -(1.2 + (-0.4f64).exp()) / 2.0));
        // Sequence level: one ratio e^((0.2 − 0.4)/2) for both tokens.
        let seq = reference_loss(
            std::slice::from_ref(&row),
            &c(IsLevel::Sequence, LossType::Dapo),
        );
        assert!(close(seq, -(-0.1f64).exp()));
        // CISPO: −min(ratio, ε_high)·A·logp per token (ε_high = 0.2 caps both weights here).
        let cis = reference_loss(&[row], &c(IsLevel::Token, LossType::Cispo));
        // −(0.2·(−1) + 0.2·(−2)) / 2
        assert!(close(cis, 0.3));
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
