//! Speculative sampling with the model's own multi-token-prediction depth as the draft
//! (self-speculative decoding, as DeepSeek-V3 suggests for its MTP module): one sequence at a
//! time, exact.
//!
//! State: the main cache through position `m`, the trunk's output `hₘ`, and the next token
//! `xₘ₊₁`, sampled but not yet fed. Each round the depth drafts `d ~ q(· | hₘ, xₘ₊₁)` for
//! position `m + 2`; one main pass over `[xₘ₊₁, d]` gives `p` for positions `m + 2` and `m + 3`.
//! The draft is kept with probability `min(1, p(d)/q(d))`, then `xₘ₊₃ ~ p` from the second
//! position: two tokens for one pass. Rejected, `xₘ₊₂` is drawn from `max(0, p − q)`
//! renormalised and the draft's position leaves the cache: one token. Either way each token's
//! distribution is exactly the main model's (Leviathan et al., 2023), at temperature `T`
//! (greedy: the draft is kept when it is the main model's argmax). Burn's ops, any backend.

use super::sample::{Completion, SampleOptions};
use super::transformer::{Gpt, KvCache};
use anyhow::{Result, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A completion and how its drafts fared.
#[derive(Debug, Clone, PartialEq)]
pub struct Drafted {
    pub completion: Completion,
    /// Drafts made, and kept.
    pub drafted: usize,
    pub accepted: usize,
    /// Main-model passes after the prompt's.
    pub passes: usize,
}

/// The temperature-scaled distribution of `logits` (greedy: all mass on the first argmax).
fn probs(logits: &[f32], t: f64) -> Vec<f64> {
    if t <= 0.0 {
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        return (0..logits.len())
            .map(|i| (i == best) as u8 as f64)
            .collect();
    }
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&v| ((v as f64 - max) / t).exp())
        .collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Log-probability of `tok` under `logits` at temperature `t` (1 when greedy), untruncated, as
/// [`Completion::logprobs`] holds them.
fn logprob(logits: &[f32], t: f64, tok: usize) -> f32 {
    let t = if t > 0.0 { t } else { 1.0 };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let z: f64 = logits.iter().map(|&v| ((v as f64 - max) / t).exp()).sum();
    ((logits[tok] as f64 - max) / t - z.ln()) as f32
}

/// A draw from `p` with the uniform `u`.
fn draw(p: &[f64], u: f64) -> usize {
    let mut u = u * p.iter().sum::<f64>();
    for (i, &w) in p.iter().enumerate() {
        u -= w;
        if u < 0.0 {
            return i;
        }
    }
    p.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// Probability of keeping draft `d` (drawn from `q`) when the target is `p`.
fn keep_probability(p: &[f64], q: &[f64], d: usize) -> f64 {
    if q[d] <= 0.0 {
        return 1.0;
    }
    (p[d] / q[d]).min(1.0)
}

/// What a rejected draft is replaced by: `max(0, p − q)`, unnormalised (`p` itself when `p ≤
/// q` nowhere leaves mass, which happens only when `p = q`).
fn residual(p: &[f64], q: &[f64]) -> Vec<f64> {
    let r: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
    if r.iter().sum::<f64>() > 0.0 {
        r
    } else {
        p.to_vec()
    }
}

/// The token at the draft's position: the draft, or a draw from the residual; and whether
/// the draft was kept.
fn verify(p: &[f64], q: &[f64], d: usize, rng: &mut ChaCha8Rng) -> (usize, bool) {
    let keep = keep_probability(p, q, d);
    if keep >= 1.0 || rng.random::<f64>() < keep {
        return (d, true);
    }
    (draw(&residual(p, q), rng.random::<f64>()), false)
}

fn ids(tokens: &[u32], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [1, tokens.len()]), device)
}

/// Rows `[b = 1, t, n]` as one Vec per position.
fn rows(x: Tensor<3>) -> Vec<Vec<f32>> {
    let [_, _, n] = x.dims();
    let flat: Vec<f32> = x.into_data().iter::<f32>().collect();
    flat.chunks(n).map(<[f32]>::to_vec).collect()
}

/// Position `i` of `h` `[1, t, d]`, as `[1, 1, d]`.
fn at(h: &Tensor<3>, i: usize) -> Tensor<3> {
    let [_, _, d] = h.dims();
    h.clone().slice([0..1, i..i + 1, 0..d])
}

/// Sample up to `budget` new tokens after `prompt` (non-empty) with the model's MTP depth as
/// the draft. Plain temperature sampling or greedy only (`top_k` / `top_p` cuts are refused);
/// `opts.eos` ends it unless `ignore_eos`.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    budget: usize,
    opts: &SampleOptions,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Drafted> {
    ensure!(model.has_mtp(), "drafts need a model with [model.mtp]");
    ensure!(
        opts.top_k == 0 && opts.top_p >= 1.0,
        "drafts sample at a plain temperature: no top-k or top-p cut"
    );
    ensure!(!prompt.is_empty(), "drafts need a prompt");
    let t = opts.temperature;
    let mut out = Drafted {
        completion: Completion {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished: false,
            eos: None,
        },
        drafted: 0,
        accepted: 0,
        passes: 0,
    };
    let banned = |logits: &mut Vec<f32>| {
        if opts.ignore_eos {
            for &e in &opts.eos {
                logits[e as usize] = f32::NEG_INFINITY;
            }
        }
    };
    // Emit `tok` drawn from `logits`; true when the completion ends with it.
    let emit = |out: &mut Drafted, logits: &[f32], tok: usize| -> bool {
        let c = &mut out.completion;
        c.logprobs.push(logprob(logits, t, tok));
        if opts.eos.contains(&(tok as u32)) {
            c.finished = true;
            c.eos = Some(tok as u32);
            return true;
        }
        c.tokens.push(tok as u32);
        c.tokens.len() >= budget
    };
    let mut cache = KvCache::new(model.layers());
    let mut draft_cache = KvCache::new(1);
    let (logits, h) = model.forward_cached_hidden(ids(prompt, device), &mut cache, None);
    let n = prompt.len();
    // The depth's cache over the prompt: position i reads hᵢ and token i + 1.
    if n > 1 {
        let [_, _, d] = h.dims();
        let hp = h.clone().slice([0..1, 0..n - 1, 0..d]);
        model.mtp_logits_cached(hp, ids(&prompt[1..], device), &mut draft_cache);
    }
    let mut last = rows(logits).pop().expect("one position");
    banned(&mut last);
    let mut h_m = at(&h, n - 1);
    let mut next = draw(&probs(&last, t), rng.random::<f64>());
    if budget == 0 || emit(&mut out, &last, next) {
        return Ok(out);
    }
    loop {
        let remaining = budget - out.completion.tokens.len();
        if remaining < 2 {
            // No room for a draft and the token after it: one plain step.
            let (l, _) = model.forward_cached_hidden(ids(&[next as u32], device), &mut cache, None);
            out.passes += 1;
            let mut l = rows(l).pop().expect("one position");
            banned(&mut l);
            let tok = draw(&probs(&l, t), rng.random::<f64>());
            emit(&mut out, &l, tok);
            return Ok(out);
        }
        let q_logits = model
            .mtp_logits_cached(h_m.clone(), ids(&[next as u32], device), &mut draft_cache)
            .expect("checked has_mtp");
        let mut q_logits = rows(q_logits).pop().expect("one position");
        banned(&mut q_logits);
        let q = probs(&q_logits, t);
        let d = draw(&q, rng.random::<f64>());
        out.drafted += 1;
        let before = cache.len;
        let (l, h2) =
            model.forward_cached_hidden(ids(&[next as u32, d as u32], device), &mut cache, None);
        out.passes += 1;
        let mut l = rows(l);
        for row in l.iter_mut() {
            banned(row);
        }
        let p = probs(&l[0], t);
        let (tok, kept) = verify(&p, &q, d, rng);
        if emit(&mut out, &l[0], tok) {
            return Ok(out);
        }
        if kept {
            out.accepted += 1;
            // The depth's position m + 1 reads h at m + 1 and the kept draft.
            model.mtp_logits_cached(at(&h2, 0), ids(&[d as u32], device), &mut draft_cache);
            h_m = at(&h2, 1);
            next = draw(&probs(&l[1], t), rng.random::<f64>());
            if emit(&mut out, &l[1], next) {
                return Ok(out);
            }
        } else {
            cache.truncate(before + 1);
            h_m = at(&h2, 0);
            next = tok;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the draft distribution, a token's marginal after verification is the target's:
    /// `q(x)·keep(x) + Σ_d q(d)·(1 − keep(d)) · r(x)/Σr = p(x)`.
    #[test]
    fn verification_keeps_the_target_distribution() {
        let p = [0.5, 0.2, 0.2, 0.1, 0.0];
        for q in [
            [0.1, 0.6, 0.1, 0.1, 0.1],
            [0.5, 0.2, 0.2, 0.1, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [0.25, 0.25, 0.25, 0.25, 0.0],
        ] {
            let r = residual(&p, &q);
            let rz: f64 = r.iter().sum();
            let reject: f64 = (0..5)
                .map(|d| q[d] * (1.0 - keep_probability(&p, &q, d)))
                .sum();
            for x in 0..5 {
                let got = q[x] * keep_probability(&p, &q, x) + reject * r[x] / rz;
                assert!(
                    (got - p[x]).abs() < 1e-12,
                    "q {q:?} x {x}: {got} vs {}",
                    p[x]
                );
            }
        }
    }

    #[test]
    fn temperature_and_greedy_distributions() {
        let l = [1.0f32, 3.0, 2.0];
        assert_eq!(probs(&l, 0.0), vec![0.0, 1.0, 0.0]);
        let p = probs(&l, 1.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((p[1] / p[2] - std::f64::consts::E).abs() < 1e-9);
        assert!((logprob(&l, 1.0, 1) as f64 - p[1].ln()).abs() < 1e-6);
        assert_eq!(draw(&[0.0, 0.3, 0.7], 0.2), 1);
        assert_eq!(draw(&[0.0, 0.3, 0.7], 0.5), 2);
    }
}
