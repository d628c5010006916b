//! Eval results across an experiment: one row per finished eval run (the latest of each eval
//! stage and seed) with its pass@k curve and the compute along the evaluated checkpoint's
//! lineage; rows of one stage summarised over seeds (mean, min, max, standard deviation); where
//! two pass@k curves cross. `stageloop report` and the notebook's eval view read these.

use super::compute::{self, Lineage};
use crate::runfs::records::EvalReport;
use crate::runfs::{self, RunDir, Status};
use crate::spec::{Experiment, StageKind};
use std::collections::BTreeMap;

/// The scalar metrics of `eval.json` a row carries, in table order: the ones a loop may stop
/// on.
pub const METRICS: &[&str] = crate::spec::validate::EVAL_METRICS;

/// One finished eval run.
#[derive(Debug, Clone)]
pub struct EvalRow {
    pub stage: String,
    /// The stage whose checkpoint was evaluated (the eval stage's `init`) and its kind.
    pub evaluated: String,
    pub evaluated_kind: String,
    pub run: RunDir,
    pub seed: Option<u64>,
    /// `eval.json` as written.
    pub report: EvalReport,
    /// pass@k by k, ascending (from `pass_at`; just k = 1 and the eval's k for older reports).
    pub pass_at: Vec<(usize, f64)>,
    /// FLOPs along the evaluated checkpoint's lineage (see [`compute::lineage`]).
    pub compute: Lineage,
    /// FLOPs of the eval's own sampling.
    pub eval_flops: f64,
}

impl EvalRow {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.report.metric(name)
    }
}

/// The rows of an experiment, in pipeline order then seed, and one message per `eval.json`
/// that could not be read (its run is left out; the others are still returned). Reads only the
/// latest finished run of each eval stage and seed, then selects as [`rows_of`] does.
pub fn eval_rows(exp: &Experiment) -> (Vec<EvalRow>, Vec<String>) {
    let evals: Vec<&str> = exp
        .spec
        .stage
        .iter()
        .filter(|s| s.kind == StageKind::Eval)
        .map(|s| s.name.as_str())
        .collect();
    // The latest finished run per eval stage and seed (runs are listed oldest first).
    let mut latest: BTreeMap<(String, Option<u64>), (RunDir, runfs::RunStatus)> = BTreeMap::new();
    for (run, st) in runfs::runs_with_status(&exp.runs_dir()) {
        if let Some(st) = st
            && evals.contains(&st.stage.as_str())
            && st.status == Status::Done
        {
            latest.insert((st.stage.clone(), st.seed), (run, st));
        }
    }
    let mut problems = Vec::new();
    let mut read = Vec::new();
    // Read in pipeline order, so problems are reported in that order.
    let mut latest: Vec<_> = latest.into_iter().collect();
    latest.sort_by_key(|((stage, seed), _)| (evals.iter().position(|e| e == stage), *seed));
    for (_, (run, st)) in latest {
        let report = match EvalReport::load(&run.eval_json()) {
            Ok(r) => r,
            Err(p) => {
                problems.push(format!("eval stage `{}`: {p}", st.stage));
                continue;
            }
        };
        let lineage = st
            .init
            .as_deref()
            .map(|init| compute::lineage(&compute::locate(init, Some(&exp.runs_dir()))))
            .unwrap_or_default();
        read.push((run, st, report, lineage));
    }
    let refs: Vec<_> = read
        .iter()
        .map(|(run, st, report, lineage)| (run.clone(), st, report, lineage.clone()))
        .collect();
    (rows_of(exp, &refs), problems)
}

/// Rows from runs already read (the notebook's): `(run, run.json, eval.json, lineage)`, oldest
/// first; like [`eval_rows`], the latest finished run of each eval stage and seed, in pipeline
/// order.
pub fn rows_of(
    exp: &Experiment,
    runs: &[(RunDir, &runfs::RunStatus, &EvalReport, Lineage)],
) -> Vec<EvalRow> {
    let mut out = Vec::new();
    for s in exp.spec.stage.iter().filter(|s| s.kind == StageKind::Eval) {
        let mut latest = BTreeMap::new();
        for r in runs {
            if r.1.stage == s.name && r.1.status == Status::Done {
                latest.insert(r.1.seed, r);
            }
        }
        for (seed, (run, _, report, lineage)) in latest {
            let evaluated = s.init.clone().unwrap_or_default();
            out.push(EvalRow {
                stage: s.name.clone(),
                evaluated_kind: exp
                    .stage(&evaluated)
                    .map(|x| x.kind.to_string())
                    .unwrap_or_default(),
                evaluated,
                run: run.clone(),
                seed,
                pass_at: report.curve(),
                eval_flops: report.flops,
                report: (*report).clone(),
                compute: lineage.clone(),
            });
        }
    }
    out
}

/// Per problem (prompt) of an eval: its correct samples and its samples, from `(prompt,
/// correct)` of each sampled completion (leave the greedy ones out).
pub fn problem_scores<'a>(
    samples: impl IntoIterator<Item = (&'a str, bool)>,
) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (prompt, correct) in samples {
        let e = out.entry(prompt.to_string()).or_default();
        e.0 += correct as usize;
        e.1 += 1;
    }
    out
}

/// One problem's (correct samples, samples).
pub type Score = (usize, usize);
/// A problem solved by one eval only: its prompt and both evals' scores.
pub type DiffRow = (String, Score, Score);

/// Two evals compared problem by problem, over the problems both sampled: a problem is solved
/// when at least one of its samples is correct (what pass@k counts).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProblemDiff {
    pub both: usize,
    pub neither: usize,
    /// Solved by the first eval only, with both evals' (correct, samples).
    pub only_a: Vec<DiffRow>,
    /// Solved by the second eval only.
    pub only_b: Vec<DiffRow>,
}

pub fn problem_diff(
    a: &BTreeMap<String, (usize, usize)>,
    b: &BTreeMap<String, (usize, usize)>,
) -> ProblemDiff {
    let mut d = ProblemDiff::default();
    for (p, &sa) in a {
        let Some(&sb) = b.get(p) else { continue };
        match (sa.0 > 0, sb.0 > 0) {
            (true, true) => d.both += 1,
            (false, false) => d.neither += 1,
            (true, false) => d.only_a.push((p.clone(), sa, sb)),
            (false, true) => d.only_b.push((p.clone(), sa, sb)),
        }
    }
    d
}

/// Mean, extremes and sample standard deviation of one figure over seeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// 0 for a single value.
    pub std: f64,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Option<Spread> {
        let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if xs.is_empty() {
            return None;
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Some(Spread {
            mean,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            std: var.sqrt(),
        })
    }
}

/// One eval stage over its seeds.
#[derive(Debug, Clone)]
pub struct StageSummary {
    pub stage: String,
    pub evaluated: String,
    pub evaluated_kind: String,
    pub seeds: Vec<Option<u64>>,
    pub metrics: BTreeMap<&'static str, Spread>,
    /// pass@k by k over the seeds that reached that k.
    pub pass_at: Vec<(usize, Spread)>,
    pub compute: Spread,
}

/// The rows grouped by stage (in the rows' order).
pub fn summarise(rows: &[EvalRow]) -> Vec<StageSummary> {
    let mut out: Vec<StageSummary> = Vec::new();
    let mut stages: Vec<&str> = Vec::new();
    for r in rows {
        if !stages.contains(&r.stage.as_str()) {
            stages.push(&r.stage);
        }
    }
    for stage in stages {
        let group: Vec<&EvalRow> = rows.iter().filter(|r| r.stage == stage).collect();
        let first = group[0];
        let metrics = METRICS
            .iter()
            .filter_map(|&m| {
                let xs: Vec<f64> = group.iter().filter_map(|r| r.metric(m)).collect();
                Some((m, Spread::of(&xs)?))
            })
            .collect();
        let mut ks: Vec<usize> = group
            .iter()
            .flat_map(|r| r.pass_at.iter().map(|p| p.0))
            .collect();
        ks.sort_unstable();
        ks.dedup();
        let pass_at = ks
            .into_iter()
            .filter_map(|k| {
                let xs: Vec<f64> = group
                    .iter()
                    .filter_map(|r| r.pass_at.iter().find(|p| p.0 == k).map(|p| p.1))
                    .collect();
                Some((k, Spread::of(&xs)?))
            })
            .collect();
        let flops: Vec<f64> = group.iter().map(|r| r.compute.flops).collect();
        out.push(StageSummary {
            stage: stage.to_string(),
            evaluated: first.evaluated.clone(),
            evaluated_kind: first.evaluated_kind.clone(),
            seeds: group.iter().map(|r| r.seed).collect(),
            metrics,
            pass_at,
            compute: Spread::of(&flops).unwrap_or_default(),
        });
    }
    out
}

/// Where curve `a` stops being above curve `b` or starts being above it: the first k (between
/// two common points, interpolated in log k) at which `a − b` changes sign. For a base model
/// `a` and an RL model `b`, a crossing at k means RL wins below k and the base model at or
/// beyond it (Yue et al. 2025).
pub fn crossing(a: &[(usize, f64)], b: &[(usize, f64)]) -> Option<f64> {
    let common: Vec<(f64, f64)> = a
        .iter()
        .filter_map(|&(k, va)| {
            let vb = b.iter().find(|p| p.0 == k)?.1;
            Some(((k as f64).log2(), va - vb))
        })
        .collect();
    for w in common.windows(2) {
        let ((x0, d0), (x1, d1)) = (w[0], w[1]);
        if d0 == 0.0 {
            continue;
        }
        if d0.signum() != d1.signum() || d1 == 0.0 {
            let x = x0 + (x1 - x0) * d0 / (d0 - d1);
            return Some(2f64.powf(x));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_solved_by_one_eval_only_are_listed_with_both_scores() {
        let a = problem_scores([
            ("1+1", true),
            ("1+1", false),
            ("2+2", false),
            ("3+3", true),
            ("9", true),
        ]);
        let b = problem_scores([("1+1", false), ("1+1", false), ("2+2", true), ("3+3", true)]);
        assert_eq!(a["1+1"], (1, 2));
        let d = problem_diff(&a, &b);
        assert_eq!((d.both, d.neither), (1, 0));
        assert_eq!(d.only_a, vec![("1+1".to_string(), (1, 2), (0, 2))]);
        assert_eq!(d.only_b, vec![("2+2".to_string(), (0, 1), (1, 1))]);
    }

    #[test]
    fn spread_is_mean_extremes_and_sample_std() {
        let s = Spread::of(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.mean, s.min, s.max, s.std), (2.0, 1.0, 3.0, 1.0));
        assert_eq!(Spread::of(&[5.0]).unwrap().std, 0.0);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn curves_cross_where_the_difference_changes_sign() {
        // RL above at small k, the base model catching up and passing at large k.
        let base = [(1, 0.5), (2, 0.6), (4, 0.8), (8, 0.9)];
        let rl = [(1, 0.7), (2, 0.75), (4, 0.8), (8, 0.82)];
        assert_eq!(crossing(&base, &rl), Some(4.0));
        let base2 = [(1, 0.5), (2, 0.6), (4, 0.7), (8, 0.95)];
        let k = crossing(&base2, &rl).unwrap();
        // −0.1 at k 4, +0.13 at k 8: interpolated at 2^(2 + 0.1/0.23).
        assert!((k - 2f64.powf(2.0 + 0.1 / 0.23)).abs() < 1e-9, "{k}");
        assert_eq!(crossing(&rl, &rl), None);
        assert_eq!(crossing(&[(1, 0.1), (2, 0.2)], &[(1, 0.5), (2, 0.6)]), None);
    }
}
