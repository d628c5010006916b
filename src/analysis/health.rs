//! Run health alerts from metric histories, for stageloop's runs and for other frameworks'
//! runs: the rules read stageloop's (TRL's) metric names, and [`ALIASES`] maps verl's and
//! prime-rl's names onto them. Each rule compares the first and last thirds of a metric (at
//! least [`MIN_POINTS`] logged values) and says in one sentence what it means and what to try.
//! Pure functions over value columns; the `runs` command and the notebook both call them.

/// Values a rule needs before it says anything.
pub const MIN_POINTS: usize = 9;

/// One active alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    pub name: &'static str,
    pub message: String,
}

/// Means of the first and last thirds of the finite values, when there are enough.
fn thirds(v: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < MIN_POINTS {
        return None;
    }
    let t = v.len() / 3;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    Some((mean(&v[..t]), mean(&v[v.len() - t..])))
}

/// Other frameworks' names for the metrics the rules read, tried in order when the run lacks
/// the name itself: verl's (`verl/trainer/ppo/metric_utils.py`, the actor's and the rollout
/// correction's metrics) and prime-rl's (its orchestrator's and trainer's).
pub const ALIASES: &[(&str, &[&str])] = &[
    ("reward", &["critic/score/mean", "reward/all/mean"]),
    (
        "entropy",
        &["actor/entropy", "entropy/mean", "entropy/all/mean"],
    ),
    (
        "completions/mean_length",
        &["response_length/mean", "decode_len/all/mean"],
    ),
    (
        "completions/clipped_ratio",
        &["response_length/clip_ratio", "is_truncated/all/mean"],
    ),
    ("kl", &["actor/kl_loss", "critic/kl"]),
    (
        "clip_ratio/region_mean",
        &["clip_ratio", "actor/pg_clipfrac"],
    ),
    (
        "sampling/sampling_logp_difference/mean",
        &[
            "mismatch_kl/mean",
            "mismatch_kl/all/mean",
            "training/rollout_probs_diff_mean",
        ],
    ),
];

/// The name under which a run logs metric `n`: `n` itself, one of its [`ALIASES`], or either
/// with the `train/` prefix a transformers Trainer gives its TensorBoard scalars; the first the
/// run has (`has`).
pub fn resolve(n: &str, has: impl Fn(&str) -> bool) -> Option<String> {
    let aliases = ALIASES
        .iter()
        .find(|(k, _)| *k == n)
        .map_or(&[][..], |a| a.1);
    let names = std::iter::once(n).chain(aliases.iter().copied());
    names
        .clone()
        .map(str::to_string)
        .chain(names.map(|a| format!("train/{a}")))
        .find(|c| has(c))
}

/// The metric columns a rule reads.
struct Run<'a> {
    names: &'a [String],
    column: &'a dyn Fn(&str) -> Option<Vec<f64>>,
}

impl Run<'_> {
    /// Means of the first and last thirds of metric `n` (or of its first alias the run has).
    fn get(&self, n: &str) -> Option<(f64, f64)> {
        self.values(n).and_then(|v| thirds(&v))
    }

    /// Metric `n`'s values under its own name, one of its [`ALIASES`], or (for the share of
    /// groups without learning signal) prime-rl's groups solved by none plus those solved by all.
    fn values(&self, n: &str) -> Option<Vec<f64>> {
        if let Some(v) = (self.column)(n) {
            return Some(v);
        }
        let has = |c: &str| self.names.iter().any(|x| x == c);
        if let Some(v) = resolve(n, has).and_then(|c| (self.column)(&c)) {
            return Some(v);
        }
        if n == "frac_reward_zero_std" {
            let none = (self.column)("solve_none/all")?;
            let all = (self.column)("solve_all/all")?;
            return Some(none.iter().zip(&all).map(|(a, b)| a + b).collect());
        }
        None
    }

    /// The first metric name that `pred` accepts.
    fn find(&self, pred: impl Fn(&str) -> bool) -> Option<&str> {
        self.names.iter().find(|n| pred(n)).map(String::as_str)
    }

    /// The reward statistic whose name holds `part` (`rewards/<...part...>/mean`).
    fn reward_mean(&self, part: &str) -> Option<&str> {
        self.find(|n| n.starts_with("rewards/") && n.contains(part) && n.ends_with("/mean"))
    }
}

/// One alert rule: the alert when the run shows the pattern.
type Rule = fn(&Run<'_>) -> Option<Alert>;

/// Every rule, in the order alerts are listed.
const RULES: &[Rule] = &[
    reward_hacking,
    reward_hacking_trace,
    sampler_drift,
    entropy_collapse,
    length_collapse,
    length_runaway_or_truncation,
    no_learning_signal,
    kl_blowup,
    clip_blowup,
];

/// The alerts of a run whose metric columns `column` returns (values in step order; NaN where a
/// line lacked the metric), given the metric names it has.
pub fn alerts(names: &[String], column: &dyn Fn(&str) -> Option<Vec<f64>>) -> Vec<Alert> {
    let run = Run { names, column };
    RULES.iter().filter_map(|rule| rule(&run)).collect()
}

fn alert(name: &'static str, message: String) -> Option<Alert> {
    Some(Alert { name, message })
}

/// The alert `name` when `firing`, its message written only then.
fn alert_if(firing: bool, name: &'static str, message: impl FnOnce() -> String) -> Option<Alert> {
    firing.then(|| Alert {
        name,
        message: message(),
    })
}

fn reward_hacking(r: &Run<'_>) -> Option<Alert> {
    let (a0, a1) = r.get(r.reward_mean("accuracy")?)?;
    let rising = |m: Option<&str>| {
        m.and_then(|m| r.get(m))
            .is_some_and(|(x0, x1)| x1 - x0 > 0.1)
    };
    alert_if(
        a1 - a0 <= 0.02 && (rising(r.reward_mean("format")) || rising(Some("reward"))),
        "reward_hacking",
        || {
            format!(
                "reward is rising while accuracy is not ({a0:.2} → {a1:.2}): the policy may be earning the format or another reward without solving the task — read the samples, lower the other rewards' weights"
            )
        },
    )
}

fn reward_hacking_trace(r: &Run<'_>) -> Option<Alert> {
    let (t0, t1) = r.get("completions/trace_agreement")?;
    alert_if(t0 - t1 > 0.1, "reward_hacking_trace", || {
        format!(
            "answers agree with their own reasoning less and less ({t0:.2} → {t1:.2}): the policy may be guessing or copying answers the trace does not support — read the samples whose answer and trace differ"
        )
    })
}

fn sampler_drift(r: &Run<'_>) -> Option<Alert> {
    let drift = r.get("sampling/sampling_logp_difference/mean");
    let ratio = r.get("sampling/importance_sampling_ratio/mean");
    let d1 = drift
        .map(|d| d.1)
        .filter(|d| *d > 0.1)
        .or_else(|| ratio.map(|r| (r.1 - 1.0).abs()).filter(|r| *r > 0.1))?;
    alert(
        "sampler_drift",
        format!(
            "the sampler's and the trainer's log-probabilities differ ({d1:.3}) before any update: generation and training disagree on the model (precision, a stale sampler, mismatched settings) — compare their settings, or correct with importance sampling"
        ),
    )
}

fn entropy_collapse(r: &Run<'_>) -> Option<Alert> {
    let (e0, e1) = r.get("entropy")?;
    alert_if(e0 > 0.05 && e1 < 0.3 * e0, "entropy_collapse", || {
        format!(
            "entropy fell from {e0:.3} to {e1:.3}: sampling has become nearly deterministic and GRPO's groups stop differing — raise the temperature, lower the learning rate, or use clip-higher (epsilon_high)"
        )
    })
}

fn length_collapse(r: &Run<'_>) -> Option<Alert> {
    let (l0, l1) = r.get("completions/mean_length")?;
    alert_if(l1 < 0.5 * l0, "length_collapse", || {
        format!(
            "completions shrank from {l0:.1} to {l1:.1} tokens: the policy may be dropping its reasoning — check a length or format reward, and the samples"
        )
    })
}

fn length_runaway_or_truncation(r: &Run<'_>) -> Option<Alert> {
    let (_, c1) = r.get("completions/clipped_ratio")?;
    if let Some((l0, l1)) = r.get("completions/mean_length")
        && l1 > 2.0 * l0
        && c1 > 0.2
    {
        return alert(
            "length_runaway",
            format!(
                "completions grew from {l0:.1} to {l1:.1} tokens and {:.0}% hit the limit: rambling — add an overlong penalty or mask truncated completions",
                100.0 * c1
            ),
        );
    }
    alert_if(c1 > 0.3, "truncation", || {
        format!(
            "{:.0}% of completions hit the token limit: their rewards are mostly noise — raise max_new_tokens or mask truncated completions",
            100.0 * c1
        )
    })
}

fn no_learning_signal(r: &Run<'_>) -> Option<Alert> {
    let (_, z1) = r.get("frac_reward_zero_std")?;
    alert_if(z1 > 0.8, "no_learning_signal", || {
        format!(
            "{:.0}% of groups have equal rewards (zero advantage): little to learn from — the task is too easy or too hard for the model; use dynamic sampling or change the difficulty",
            100.0 * z1
        )
    })
}

fn kl_blowup(r: &Run<'_>) -> Option<Alert> {
    let (k0, k1) = r.get("kl")?;
    alert_if(
        k1 > 1.0 || (k1 > 0.2 && k1 > 10.0 * k0.max(1e-3)),
        "kl_blowup",
        || {
            format!(
                "KL to the reference rose from {k0:.3} to {k1:.3}: the policy is drifting fast — lower the learning rate or raise beta"
            )
        },
    )
}

fn clip_blowup(r: &Run<'_>) -> Option<Alert> {
    let (_, c1) = r.get("clip_ratio/region_mean")?;
    alert_if(c1 > 0.3, "clip_blowup", || {
        format!(
            "{:.0}% of tokens are clipped: updates are too large for the trust region — lower the learning rate or num_iterations",
            100.0 * c1
        )
    })
}

/// Notes on what looks alarming but is not (shown beside the alerts).
pub fn notes(
    kind: &str,
    names: &[String],
    column: &dyn Fn(&str) -> Option<Vec<f64>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let last = |n: &str| column(n)?.into_iter().rev().find(|x| x.is_finite());
    if kind == "grpo"
        && names.iter().any(|n| n == "loss")
        && last("loss").is_some_and(|l| l.abs() < 1e-2)
    {
        out.push(
            "loss near 0 is normal in GRPO (advantages average to zero within each group): watch the reward and accuracy instead".to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(cols: &[(&str, Vec<f64>)]) -> Vec<&'static str> {
        let m: BTreeMap<String, Vec<f64>> = cols
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let names: Vec<String> = m.keys().cloned().collect();
        alerts(&names, &|n| m.get(n).cloned())
            .into_iter()
            .map(|a| a.name)
            .collect()
    }

    fn ramp(a: f64, b: f64) -> Vec<f64> {
        (0..30).map(|i| a + (b - a) * i as f64 / 29.0).collect()
    }

    #[test]
    fn each_rule_fires_on_its_pattern_and_not_on_a_healthy_run() {
        let healthy = run(&[
            ("rewards/accuracy/mean", ramp(0.2, 0.8)),
            ("rewards/format/mean", ramp(0.5, 1.0)),
            ("reward", ramp(0.3, 0.9)),
            ("entropy", ramp(1.0, 0.6)),
            ("completions/mean_length", ramp(30.0, 35.0)),
            ("completions/clipped_ratio", ramp(0.0, 0.05)),
            ("frac_reward_zero_std", ramp(0.3, 0.4)),
            ("kl", ramp(0.0, 0.05)),
            ("clip_ratio/region_mean", ramp(0.0, 0.02)),
        ]);
        assert!(healthy.is_empty(), "{healthy:?}");
        let healthy_rl = run(&[
            ("completions/trace_agreement", ramp(0.90, 0.96)),
            ("sampling/sampling_logp_difference/mean", ramp(1e-7, 2e-7)),
            ("sampling/importance_sampling_ratio/mean", ramp(1.0, 1.0)),
        ]);
        assert!(healthy_rl.is_empty(), "{healthy_rl:?}");
        assert_eq!(
            run(&[("completions/trace_agreement", ramp(0.9, 0.6))]),
            vec!["reward_hacking_trace"]
        );
        assert_eq!(
            run(&[("sampling/sampling_logp_difference/mean", ramp(0.01, 0.3))]),
            vec!["sampler_drift"]
        );
        assert_eq!(
            run(&[("sampling/importance_sampling_ratio/mean", ramp(1.0, 1.4))]),
            vec!["sampler_drift"],
            "TRL logs only the ratio"
        );
        assert_eq!(
            run(&[
                ("rewards/accuracy_reward/mean", ramp(0.3, 0.3)),
                ("rewards/format_reward/mean", ramp(0.1, 0.9))
            ]),
            vec!["reward_hacking"],
            "TRL's names"
        );
        assert_eq!(
            run(&[("entropy", ramp(1.0, 0.05))]),
            vec!["entropy_collapse"]
        );
        assert_eq!(
            run(&[("completions/mean_length", ramp(40.0, 10.0))]),
            vec!["length_collapse"]
        );
        assert_eq!(
            run(&[
                ("completions/mean_length", ramp(20.0, 90.0)),
                ("completions/clipped_ratio", ramp(0.0, 0.6))
            ]),
            vec!["length_runaway"]
        );
        assert_eq!(
            run(&[("completions/clipped_ratio", ramp(0.4, 0.6))]),
            vec!["truncation"]
        );
        assert_eq!(
            run(&[("frac_reward_zero_std", ramp(0.9, 0.95))]),
            vec!["no_learning_signal"]
        );
        assert_eq!(run(&[("kl", ramp(0.01, 3.0))]), vec!["kl_blowup"]);
        assert_eq!(
            run(&[("clip_ratio/region_mean", ramp(0.2, 0.6))]),
            vec!["clip_blowup"]
        );
        // Too few points say nothing; NaN gaps are skipped.
        assert!(run(&[("entropy", vec![1.0, 0.5, 0.01])]).is_empty());
        let mut gappy = ramp(1.0, 0.01);
        gappy[3] = f64::NAN;
        assert_eq!(run(&[("entropy", gappy)]), vec!["entropy_collapse"]);
    }

    #[test]
    fn verl_and_prime_rl_names_reach_the_rules() {
        assert_eq!(
            run(&[("actor/entropy", ramp(1.0, 0.05))]),
            vec!["entropy_collapse"]
        );
        assert_eq!(
            run(&[
                ("response_length/mean", ramp(20.0, 90.0)),
                ("response_length/clip_ratio", ramp(0.0, 0.6))
            ]),
            vec!["length_runaway"]
        );
        assert_eq!(
            run(&[("actor/pg_clipfrac", ramp(0.2, 0.6))]),
            vec!["clip_blowup"]
        );
        assert_eq!(
            run(&[("decode_len/all/mean", ramp(40.0, 10.0))]),
            vec!["length_collapse"]
        );
        assert_eq!(
            run(&[
                ("solve_none/all", ramp(0.5, 0.6)),
                ("solve_all/all", ramp(0.3, 0.35))
            ]),
            vec!["no_learning_signal"]
        );
        assert_eq!(
            run(&[("mismatch_kl/all/mean", ramp(0.01, 0.3))]),
            vec!["sampler_drift"]
        );
        // A Trainer's TensorBoard names (`train/...`).
        assert_eq!(
            run(&[("train/entropy", ramp(1.0, 0.05))]),
            vec!["entropy_collapse"]
        );
        // The run's own name wins over an alias.
        assert!(
            run(&[
                ("entropy", ramp(1.0, 0.9)),
                ("actor/entropy", ramp(1.0, 0.01))
            ])
            .is_empty()
        );
    }

    #[test]
    fn a_zero_grpo_loss_gets_a_reassuring_note() {
        let names = vec!["loss".to_string()];
        let zero = |_: &str| Some(vec![0.3, 0.001]);
        assert_eq!(notes("grpo", &names, &zero).len(), 1);
        assert!(notes("pretrain", &names, &zero).is_empty());
    }
}
