//! `eval`: score a checkpoint on the held-out set. pass@1 as DeepSeek-R1 defines it (mean
//! accuracy over k samples per prompt at the stage's temperature and top-p), greedy accuracy,
//! pass@k (Chen et al.'s unbiased estimator over the k samples), maj@k, format rate and mean
//! completion length. Writes `eval.json`, `eval/*` metrics and every completion as a sample.

use super::common::{Setup, metrics_line, open_logs, sampling_flops};
use super::context::{Outcome, StageCtx};
use crate::model::sample::{SampleOptions, Sampler};
use crate::model::{self, checkpoint};
use crate::runfs::atomic;
use crate::runfs::records::Sample;
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

use crate::runfs::records::EvalReport;

/// The powers of two up to `k`: the k values of a pass@k curve.
pub fn curve_ks(k: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |j| j.checked_mul(2))
        .take_while(|&j| j <= k)
        .collect()
}

/// Chen et al. (2021): 1 − C(n−c, k) / C(n, k), computed as a stable product.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n < k || n - c < k {
        return if c > 0 { 1.0 } else { 0.0 };
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// The most common answer (first seen wins a tie); `None` when no sample had one.
pub fn majority<'a>(answers: impl IntoIterator<Item = Option<&'a str>>) -> Option<&'a str> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, a) in answers.into_iter().enumerate() {
        if let Some(a) = a {
            counts.entry(a).or_insert((0, i)).0 += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(a, _)| a)
}

/// Evaluate the model `sampler` holds on the first `prompts` held-out problems.
pub fn evaluate(
    setup: &Setup,
    sampler: &mut Sampler,
    cfg: &crate::spec::StageConfig,
    device: &burn::tensor::Device,
    seed: u64,
    mut on_sample: impl FnMut(Sample) -> Result<()>,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    let probs: Vec<_> = setup.task.heldout().iter().take(cfg.prompts).collect();
    let k = cfg.k.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xE7A1);
    let sampled = setup.sampling(cfg);
    let greedy_opts = SampleOptions {
        temperature: 0.0,
        ..sampled
    };
    let (mut acc_sum, mut greedy_sum, mut passk_sum, mut maj_sum) = (0.0, 0.0, 0.0, 0.0);
    let (mut fmt_sum, mut len_sum, mut count) = (0.0, 0.0, 0usize);
    let ks = curve_ks(k);
    let mut curve_sums = vec![0.0; ks.len()];
    let mut flops = 0.0;
    let chunk = (256 / (k + 1)).max(1);
    // One decoder for every chunk (the sampler keeps it): the checkpoint does not change
    // during an eval.
    for (ci, group) in probs.chunks(chunk).enumerate() {
        // One greedy completion and k sampled ones per prompt, generated as two batches.
        let problems: Vec<crate::tasks::Problem> = group.iter().map(|p| (*p).clone()).collect();
        let greedy_ids = setup.grouped_prompts(&problems, 1)?;
        let sample_ids = setup.grouped_prompts(&problems, k)?;
        let g = sampler.generate(
            &greedy_ids,
            setup.model_cfg.ctx,
            &greedy_opts,
            &mut rng,
            device,
        );
        let s = sampler.generate(&sample_ids, setup.model_cfg.ctx, &sampled, &mut rng, device);
        flops += sampling_flops(&setup.model_cfg, &greedy_ids, &g)
            + sampling_flops(&setup.model_cfg, &sample_ids, &s);
        for (pi, p) in group.iter().enumerate() {
            let gtext = setup.tok.decode(&g[pi].tokens);
            let gr = setup.task.rewards(&p.prompt, &gtext);
            greedy_sum += gr.accuracy;
            let group = Some((ci * chunk + pi) as u64);
            on_sample(Sample {
                step: 0,
                prompt: p.prompt.clone(),
                answer: p.answer.clone(),
                rewards: gr.as_map(),
                reward: gr.accuracy,
                group,
                greedy: true,
                truncated: !g[pi].finished,
                completion: gtext,
                ..Sample::default()
            })?;
            let mut correct = 0;
            let mut answers = Vec::new();
            for j in 0..k {
                let c = &s[pi * k + j];
                let text = setup.tok.decode(&c.tokens);
                let r = setup.task.rewards(&p.prompt, &text);
                correct += (r.accuracy >= 1.0) as usize;
                fmt_sum += r.format;
                len_sum += c.tokens.len() as f64;
                count += 1;
                answers.push(crate::tasks::rewards::parse(&text).answer);
                on_sample(Sample {
                    step: 0,
                    prompt: p.prompt.clone(),
                    answer: p.answer.clone(),
                    rewards: r.as_map(),
                    reward: r.accuracy,
                    group,
                    truncated: !c.finished,
                    completion: text,
                    ..Sample::default()
                })?;
            }
            acc_sum += correct as f64 / k as f64;
            passk_sum += pass_at_k(k, correct, k);
            for (sum, &j) in curve_sums.iter_mut().zip(&ks) {
                *sum += pass_at_k(k, correct, j);
            }
            let maj = majority(answers.iter().map(|a| a.as_deref()));
            maj_sum += maj
                .map(|a| setup.task.task.accuracy(&p.prompt, a))
                .unwrap_or(0.0);
        }
        on_progress(((ci + 1) * chunk).min(probs.len()), probs.len());
    }
    let n = probs.len().max(1) as f64;
    Ok(EvalReport {
        task: setup.task.spec.name.clone(),
        n: probs.len(),
        pass_at_1: acc_sum / n,
        greedy: greedy_sum / n,
        pass_at_k: passk_sum / n,
        k,
        maj_at_k: maj_sum / n,
        format_rate: fmt_sum / count.max(1) as f64,
        mean_length: len_sum / count.max(1) as f64,
        pass_at: ks
            .iter()
            .zip(&curve_sums)
            .map(|(j, s)| (j.to_string(), s / n))
            .collect(),
        flops,
    })
}

pub fn run(ctx: &mut StageCtx<'_>) -> Result<Outcome> {
    let device = model::device()?;
    let dir = ctx.init.clone().context("an eval stage needs `init`")?;
    // The checkpoint's own shape (a distilled student differs from `[model]`), on the
    // experiment's task.
    let (model, _, _) = checkpoint::load_model(&dir, &device)?;
    let setup = if crate::model::pretrained::is_pretrained(&dir) {
        Setup::new(ctx.exp)?
    } else {
        Setup::from_checkpoint(&dir, None)?
    };
    if setup.task.spec != ctx.exp.spec.task {
        anyhow::bail!(
            "{}: checkpoint was trained on other task settings than this experiment's [task]",
            dir.display()
        );
    }
    let evaluated_step = checkpoint::read_state(&dir).map(|s| s.step).unwrap_or(0);
    let (mut metrics, mut samples) = open_logs(&ctx.run)?;
    let total = ctx.cfg.prompts.min(setup.task.heldout().len()) as u64;
    ctx.status.progress.total = total;
    let cfg = ctx.cfg.clone();
    let seed = ctx.seed;
    let report = evaluate(
        &setup,
        &mut Sampler::new(&model),
        &cfg,
        &device,
        seed,
        |v| Ok(samples.write(&v)?),
        |done, all| ctx.progress(done as u64, all as u64, &[]),
    )?;
    atomic::write_json(&ctx.run.eval_json(), &report)?;
    metrics.write(&metrics_line(
        evaluated_step,
        &[
            ("eval/pass@1", report.pass_at_1),
            ("eval/greedy", report.greedy),
            ("eval/pass@k", report.pass_at_k),
            ("eval/maj@k", report.maj_at_k),
            ("eval/format_rate", report.format_rate),
            ("eval/mean_length", report.mean_length),
            ("compute/flops", report.flops),
        ],
    ))?;
    ctx.reporter.message(&format!(
        "pass@1 {:.3}  greedy {:.3}  pass@{} {:.3}  maj@{} {:.3}  format {:.3}  len {:.1}  (n={})",
        report.pass_at_1,
        report.greedy,
        report.k,
        report.pass_at_k,
        report.k,
        report.maj_at_k,
        report.format_rate,
        report.mean_length,
        report.n
    ));
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_ks_are_the_powers_of_two_up_to_k() {
        assert_eq!(curve_ks(1), vec![1]);
        assert_eq!(curve_ks(8), vec![1, 2, 4, 8]);
        assert_eq!(curve_ks(12), vec![1, 2, 4, 8]);
        assert_eq!(curve_ks(256).len(), 9);
    }

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        // n = k: any correct sample passes.
        assert_eq!(pass_at_k(4, 0, 4), 0.0);
        assert_eq!(pass_at_k(4, 1, 4), 1.0);
        // n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        // k=1 is the plain accuracy c/n.
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
    }

    #[test]
    fn pass_at_k_is_monotone_in_k_for_every_count_up_to_256() {
        for n in [1, 2, 3, 8, 64, 100, 256] {
            for c in 0..=n {
                let curve: Vec<f64> = curve_ks(n).iter().map(|&k| pass_at_k(n, c, k)).collect();
                for w in curve.windows(2) {
                    assert!(w[0] <= w[1] + 1e-12, "n {n} c {c}: {curve:?}");
                }
                assert!(curve.iter().all(|p| (0.0..=1.0 + 1e-12).contains(p)));
            }
        }
    }

    #[test]
    fn majority_vote_ignores_missing_answers_and_breaks_ties_by_first_seen() {
        assert_eq!(majority([Some("3"), None, Some("4"), Some("3")]), Some("3"));
        assert_eq!(majority([Some("4"), Some("3")]), Some("4"));
        assert_eq!(majority([None, None]), None);
    }
}
