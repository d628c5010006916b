//! Batched sampling: left-padded prompts, temperature / top-k / top-p, stop at EOS or a token
//! budget, per-token log-probabilities. With the KV cache only the new position is computed each
//! step and finished sequences leave the batch; without it every step re-runs the whole prefix
//! (the reference the cache is tested against). On the CPU the dedicated decoder
//! ([`crate::cpu::decoder::Engine`]) runs both; elsewhere, or with `engine: false`, burn's ops do.

use super::tokenizer::{EOS, PAD};
use super::transformer::{Gpt, KvCache};
use crate::cpu::decoder::Engine;
use crate::cpu::math::exp;
use crate::cpu::pair::with_pair;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = no top-k cut.
    pub top_k: usize,
    /// 1.0 = no nucleus cut.
    pub top_p: f64,
    /// Budget of new tokens (capped by the context); 0 = up to the context.
    pub max_new_tokens: usize,
    pub use_cache: bool,
    /// Never stop at EOS (benchmarks: every row decodes the full budget).
    pub ignore_eos: bool,
    /// On the CPU, decode with the dedicated fast path; false = burn's ops (the reference).
    pub engine: bool,
    /// Ids that end a completion (a pretrained model may have several; unused slots repeat
    /// the first). The character tokenizer's EOS by default.
    pub eos: [u32; 4],
}

impl SampleOptions {
    /// These options stopping at `ids` (up to four; none leaves them unchanged).
    pub fn with_eos(mut self, ids: &[u32]) -> Self {
        if let Some(&first) = ids.first() {
            self.eos = [first; 4];
            for (slot, &id) in self.eos.iter_mut().zip(ids) {
                *slot = id;
            }
        }
        self
    }
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 0,
            use_cache: true,
            ignore_eos: false,
            engine: true,
            eos: [EOS; 4],
        }
    }
}

/// One sampled continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// New tokens, without the EOS.
    pub tokens: Vec<u32>,
    /// Log-probability of each new token (and of the EOS, last, when `finished`) under the
    /// temperature-scaled distribution before top-k/top-p truncation (as TRL computes them).
    pub logprobs: Vec<f32>,
    /// Ended with EOS (otherwise it ran out of budget: truncated).
    pub finished: bool,
    /// Which of the EOS ids ended it (a model may have several).
    pub eos: Option<u32>,
}

fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = x.iter().map(|v| (v - m).exp()).sum::<f32>().ln() + m;
    x.iter().map(|v| v - lse).collect()
}

/// Pick a token from one row of logits; returns (token, its log-probability).
///
/// With top-k or top-p, candidates are taken in order of probability (ties by id), cut, and
/// the draw walks them in that order; without either, it walks the ids in turn (the same
/// distribution, no order needed). Only as much of the order as the cut and the draw reach
/// is sorted (chunks of [`ORDER_CHUNK`] selected, then sorted): a full sort of a 49,152-token
/// vocabulary per sampled token cost more than the decoder step at real-model size.
pub fn pick(logits: &[f32], opts: &SampleOptions, rng: &mut ChaCha8Rng) -> (u32, f32) {
    pick_with(logits, opts, draw(opts, rng))
}

/// The uniform draw [`pick`] makes for one row (none when greedy): drawn in row order before
/// the rows are picked on two threads, so the sequence of draws stays that of one thread.
pub fn draw(opts: &SampleOptions, rng: &mut ChaCha8Rng) -> f64 {
    if opts.temperature <= 0.0 {
        0.0
    } else {
        rng.random::<f64>()
    }
}

/// [`pick`] with its uniform draw `u` in `[0, 1)` already made ([`draw`]).
pub fn pick_with(logits: &[f32], opts: &SampleOptions, u: f64) -> (u32, f32) {
    if opts.temperature <= 0.0 {
        let (i, max) = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            });
        let sum: f32 = logits.iter().map(|&v| weight(v - max)).sum();
        return (i as u32, logits[i] - (max + sum.ln()));
    }
    if opts.top_k == 0 && opts.top_p >= 1.0 {
        return pick_untruncated(logits, opts.temperature as f32, u);
    }
    let scaled: Vec<f32> = logits.iter().map(|v| v / opts.temperature as f32).collect();
    let lp = log_softmax(&scaled);
    let mut order = Ordered::new(&lp);
    let limit = if opts.top_k > 0 {
        opts.top_k.min(lp.len())
    } else {
        lp.len()
    };
    // The candidates: the first `keep` of the order, and their total mass.
    let (keep, total) = if opts.top_p < 1.0 {
        let (mut mass, mut keep) = (0.0, 0);
        while keep < limit {
            mass += lp[order.at(keep)].exp() as f64;
            keep += 1;
            if mass >= opts.top_p {
                break;
            }
        }
        let keep = keep.max(1);
        (keep, (0..keep).map(|j| lp[order.at(j)].exp() as f64).sum())
    } else if limit < lp.len() {
        (
            limit,
            (0..limit).map(|j| lp[order.at(j)].exp() as f64).sum(),
        )
    } else {
        (limit, lp.iter().map(|&v| v.exp() as f64).sum::<f64>())
    };
    let mut u = u * total;
    for j in 0..keep {
        let i = order.at(j);
        u -= lp[i].exp() as f64;
        if u <= 0.0 {
            return (i as u32, lp[i]);
        }
    }
    let last = order.at(keep - 1);
    (last as u32, lp[last])
}

/// Nothing is cut, so no order is needed: the draw walks the ids in turn over
/// `exp(logit / t - max)`, computed once into a per-thread buffer (one exponential per id; this
/// runs for every sampled token of every row).
fn pick_untruncated(logits: &[f32], t: f32, u: f64) -> (u32, f32) {
    thread_local! {
        static WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v / t));
    WEIGHTS.with_borrow_mut(|w| {
        w.clear();
        w.extend(logits.iter().map(|&v| weight(v / t - max)));
        let total: f64 = w.iter().map(|&e| e as f64).sum();
        let lse = max + (total as f32).ln();
        let mut u = u * total;
        for (i, &e) in w.iter().enumerate() {
            u -= e as f64;
            if u <= 0.0 && e > 0.0 {
                return (i as u32, logits[i] / t - lse);
            }
        }
        let last = w.iter().rposition(|&e| e > 0.0).unwrap_or(w.len() - 1);
        (last as u32, logits[last] / t - lse)
    })
}

/// `exp(x)` for a logit minus the row's maximum, exactly 0 below `exp`'s range (a masked id's
/// `-inf` must never be drawn, and [`exp`] clamps its argument).
#[inline(always)]
fn weight(x: f32) -> f32 {
    if x < -87.0 { 0.0 } else { exp(x) }
}

/// Positions of the order sorted at a time.
const ORDER_CHUNK: usize = 256;

/// Token ids by decreasing log-probability (ties by id), sorted lazily a chunk at a time.
struct Ordered<'a> {
    lp: &'a [f32],
    ids: Vec<usize>,
    /// `ids[..sorted]` is the order's prefix; the rest are the remaining ids, unordered.
    sorted: usize,
}

impl<'a> Ordered<'a> {
    fn new(lp: &'a [f32]) -> Self {
        Ordered {
            lp,
            ids: (0..lp.len()).collect(),
            sorted: 0,
        }
    }

    /// The `j`-th id of the order (`j` < the vocabulary).
    fn at(&mut self, j: usize) -> usize {
        while j >= self.sorted {
            let lp = self.lp;
            let cmp = |a: &usize, b: &usize| lp[*b].total_cmp(&lp[*a]).then(a.cmp(b));
            let rest = &mut self.ids[self.sorted..];
            let n = ORDER_CHUNK.min(rest.len());
            if n < rest.len() {
                rest.select_nth_unstable_by(n - 1, cmp);
            }
            rest[..n].sort_unstable_by(cmp);
            self.sorted += n;
        }
        self.ids[j]
    }
}

fn int_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let t = rows[0].len();
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

/// Last-position logits of `[b, t, v]` as one Vec per row.
fn last_logits(logits: Tensor<3>) -> Vec<Vec<f32>> {
    let [b, t, v] = logits.dims();
    let data = logits
        .slice([0..b, t - 1..t, 0..v])
        .reshape([b, v])
        .into_data();
    let flat: Vec<f32> = data.iter::<f32>().collect();
    flat.chunks(v).map(|c| c.to_vec()).collect()
}

/// Free the buffers the CPU decoder keeps between [`generate`] calls (its packed weights and
/// KV cache), before a phase that needs the memory: the next call maps them afresh.
pub fn release_buffers() {
    crate::cpu::decoder::release_kept();
}

/// Sample a continuation for every prompt (token ids, BOS included). `ctx` caps prompt + new.
pub fn generate(
    model: &Gpt,
    prompts: &[Vec<u32>],
    ctx: usize,
    opts: &SampleOptions,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Vec<Completion> {
    Sampler::new(model).generate(prompts, ctx, opts, rng, device)
}

/// A model held for several [`generate`] calls with the same weights: on the CPU the decoder's
/// packed copy of the weights is built at the first call and reused by the next ones (an eval
/// samples hundreds of batches from one checkpoint, and packing a 135M-parameter model's
/// weights is a copy of half a gigabyte). The model stays borrowed, so it cannot change meanwhile.
pub struct Sampler<'a> {
    model: &'a Gpt,
    /// The decoder and the context it was built for.
    engine: Option<(usize, Engine)>,
}

impl<'a> Sampler<'a> {
    pub fn new(model: &'a Gpt) -> Self {
        Sampler {
            model,
            engine: None,
        }
    }

    /// A sampler whose decoder for `ctx` is `engine` (quantised blocks: `eval --quantize`);
    /// another context gets the model's own decoder.
    pub fn with_engine(model: &'a Gpt, ctx: usize, engine: Engine) -> Self {
        Sampler {
            model,
            engine: Some((ctx, engine)),
        }
    }

    /// [`generate`] on the held model.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        ctx: usize,
        opts: &SampleOptions,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Vec<Completion> {
        let (out, budget) = start(prompts, ctx, opts);
        if prompts.is_empty() {
            return out;
        }
        let cpu = opts.engine && *device == Device::flex() && self.model.decodes_on_cpu();
        if cpu && prompts.iter().all(|p| !p.is_empty()) {
            return generate_engine(self.engine(ctx), prompts, budget, opts, rng, out);
        }
        generate_burn(self.model, prompts, budget, opts, rng, device, out)
    }

    /// The decoder for `ctx`, built on first use.
    fn engine(&mut self, ctx: usize) -> &Engine {
        if self.engine.as_ref().is_none_or(|(c, _)| *c != ctx) {
            self.engine = Some((ctx, self.model.engine(ctx)));
        }
        &self.engine.as_ref().expect("built above").1
    }
}

/// Empty completions for `prompts`, and the new tokens they may take within `ctx`.
fn start(prompts: &[Vec<u32>], ctx: usize, opts: &SampleOptions) -> (Vec<Completion>, usize) {
    let out = prompts
        .iter()
        .map(|_| Completion {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished: false,
            eos: None,
        })
        .collect();
    let plen = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let budget = if opts.max_new_tokens == 0 {
        ctx.saturating_sub(plen)
    } else {
        opts.max_new_tokens.min(ctx.saturating_sub(plen))
    };
    (out, budget)
}

/// [`generate`] on a decoder built without a burn model (a GGUF's quantised weights, read in
/// place): the same rows, draws and stopping rules. Every prompt must be non-empty.
pub fn generate_on(
    engine: &Engine,
    prompts: &[Vec<u32>],
    ctx: usize,
    opts: &SampleOptions,
    rng: &mut ChaCha8Rng,
) -> Vec<Completion> {
    assert!(prompts.iter().all(|p| !p.is_empty()), "an empty prompt");
    let (out, budget) = start(prompts, ctx, opts);
    if prompts.is_empty() {
        return out;
    }
    generate_engine(engine, prompts, budget, opts, rng, out)
}

/// [`generate`] on burn's ops (the reference, and the path on other devices): prompts
/// left-padded to the longest, padded positions masked.
fn generate_burn(
    model: &Gpt,
    prompts: &[Vec<u32>],
    budget: usize,
    opts: &SampleOptions,
    rng: &mut ChaCha8Rng,
    device: &Device,
    mut out: Vec<Completion>,
) -> Vec<Completion> {
    let plen = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // Left-pad so every prompt ends at the same position (RoPE is relative, so the padding
    // changes nothing once it is masked out).
    let mut rows: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut r = vec![PAD; plen - p.len()];
            r.extend_from_slice(p);
            r
        })
        .collect();
    let mut pad: Vec<Vec<bool>> = prompts
        .iter()
        .map(|p| (0..plen).map(|i| i < plen - p.len()).collect())
        .collect();
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut cache = KvCache::new(model.layers());
    let mut logits =
        last_logits(model.forward_cached(int_tensor(&rows, device), &mut cache, Some(&pad)));
    for step in 0..budget {
        let mut still = Vec::new();
        let mut next = Vec::new();
        for (slot, &row) in active.iter().enumerate() {
            if opts.ignore_eos {
                for &e in &opts.eos {
                    logits[slot][e as usize] = f32::NEG_INFINITY;
                }
            }
            let (tok, lp) = pick(&logits[slot], opts, rng);
            out[row].logprobs.push(lp);
            if opts.eos.contains(&tok) {
                out[row].finished = true;
                out[row].eos = Some(tok);
            } else {
                out[row].tokens.push(tok);
                still.push(slot);
                next.push(tok);
            }
        }
        if still.is_empty() || step + 1 == budget {
            break;
        }
        let kept: Vec<usize> = still.iter().map(|&s| active[s]).collect();
        if opts.use_cache {
            if still.len() < active.len() {
                cache.retain_rows(&still, device);
            }
            pad = still.iter().map(|&s| pad[s].clone()).collect();
            for p in pad.iter_mut() {
                p.push(false);
            }
            let toks: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            logits = last_logits(model.forward_cached(
                int_tensor(&toks, device),
                &mut cache,
                Some(&pad),
            ));
        } else {
            rows = still.iter().map(|&s| rows[s].clone()).collect();
            pad = still.iter().map(|&s| pad[s].clone()).collect();
            for ((r, p), &t) in rows.iter_mut().zip(pad.iter_mut()).zip(&next) {
                r.push(t);
                p.push(false);
            }
            let mut fresh = KvCache::new(model.layers());
            logits = last_logits(model.forward_cached(
                int_tensor(&rows, device),
                &mut fresh,
                Some(&pad),
            ));
        }
        active = kept;
    }
    out
}

/// [`generate`] on the CPU decoder: the same rows, the same random draws in the same order.
fn generate_engine(
    engine: &Engine,
    prompts: &[Vec<u32>],
    budget: usize,
    opts: &SampleOptions,
    rng: &mut ChaCha8Rng,
    mut out: Vec<Completion>,
) -> Vec<Completion> {
    let vocab = engine.vocab();
    // Room for the longest prompt and the budget (the no-cache path re-feeds whole sequences
    // into the same room).
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = engine.cache_for(prompts.len(), longest + budget);
    // With a cache, each distinct prompt is prefilled once and copied to the rows that repeat
    // it (GRPO groups and eval samples repeat every prompt; a chat template makes prompts long).
    let first: Vec<usize> = if opts.use_cache {
        let mut seen = std::collections::HashMap::new();
        (0..prompts.len())
            .map(|i| *seen.entry(prompts[i].as_slice()).or_insert(i))
            .collect()
    } else {
        (0..prompts.len()).collect()
    };
    let feed: Vec<(usize, &[u32])> = (0..prompts.len())
        .filter(|&i| first[i] == i)
        .map(|i| (i, prompts[i].as_slice()))
        .collect();
    // Full sequences so far (prompt + new tokens): only the no-cache path re-feeds them.
    let mut seqs: Vec<Vec<u32>> = if opts.use_cache {
        Vec::new()
    } else {
        prompts.to_vec()
    };
    // Decoding runs on this thread and a spinning helper (see `pair`): a step of a few rows is
    // too short to hand to rayon's sleeping workers.
    with_pair(|pair| {
        let mut logits = engine.forward_on(&mut cache, &feed, false, pair);
        if feed.len() < prompts.len() {
            let slot: std::collections::HashMap<usize, usize> = feed
                .iter()
                .enumerate()
                .map(|(s, &(row, _))| (row, s))
                .collect();
            let mut all = Vec::with_capacity(prompts.len() * vocab);
            for (row, &src) in first.iter().enumerate() {
                cache.copy_row(src, row);
                all.extend_from_slice(&logits[slot[&src] * vocab..(slot[&src] + 1) * vocab]);
            }
            logits = all;
        }
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        let mut picks = Vec::new();
        for step in 0..budget {
            if opts.ignore_eos {
                for l in logits.chunks_exact_mut(vocab) {
                    for &e in &opts.eos {
                        l[e as usize] = f32::NEG_INFINITY;
                    }
                }
            }
            // The draws in row order on this thread, then the rows picked on both threads.
            let draws: Vec<f64> = active.iter().map(|_| draw(opts, rng)).collect();
            pick_rows(&logits, vocab, &draws, opts, pair, &mut picks);
            let mut next = Vec::new();
            for (&row, &(tok, lp)) in active.iter().zip(&picks) {
                out[row].logprobs.push(lp);
                if opts.eos.contains(&tok) {
                    out[row].finished = true;
                    out[row].eos = Some(tok);
                } else {
                    out[row].tokens.push(tok);
                    next.push((row, tok));
                }
            }
            if next.is_empty() || step + 1 == budget {
                break;
            }
            active = next.iter().map(|&(row, _)| row).collect();
            if opts.use_cache {
                let toks: Vec<[u32; 1]> = next.iter().map(|&(_, t)| [t]).collect();
                let feed: Vec<(usize, &[u32])> = next
                    .iter()
                    .zip(&toks)
                    .map(|(&(row, _), t)| (row, t.as_slice()))
                    .collect();
                engine.forward_into(&mut cache, &feed, false, pair, &mut logits);
            } else {
                for &(row, tok) in &next {
                    seqs[row].push(tok);
                    cache.clear(row);
                }
                let feed: Vec<(usize, &[u32])> = active
                    .iter()
                    .map(|&row| (row, seqs[row].as_slice()))
                    .collect();
                engine.forward_into(&mut cache, &feed, false, pair, &mut logits);
            }
        }
        out
    })
}

/// Rows of picks from rows of logits (`vocab` wide), one per draw, into `picks`: half the rows
/// on `pair`'s helper when there are several (each pick passes over the whole vocabulary).
fn pick_rows(
    logits: &[f32],
    vocab: usize,
    draws: &[f64],
    opts: &SampleOptions,
    pair: Option<&crate::cpu::pair::Pair>,
    picks: &mut Vec<(u32, f32)>,
) {
    let run = |rows: &[f32], draws: &[f64], out: &mut [(u32, f32)]| {
        for ((l, &u), o) in rows.chunks_exact(vocab).zip(draws).zip(out) {
            *o = pick_with(l, opts, u);
        }
    };
    picks.clear();
    picks.resize(draws.len(), (0, 0.0));
    match pair {
        Some(pair) if draws.len() >= 2 => {
            let half = draws.len() / 2;
            let (a, b) = logits[..draws.len() * vocab].split_at(half * vocab);
            let (pa, pb) = picks.split_at_mut(half);
            pair.join(|| run(a, &draws[..half], pa), || run(b, &draws[half..], pb));
        }
        _ => run(logits, draws, picks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_picks_the_max_and_top_k_one_is_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let logits = [0.1, 2.0, -1.0, 1.9];
        let greedy = SampleOptions {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(pick(&logits, &greedy, &mut rng).0, 1);
        let k1 = SampleOptions {
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(pick(&logits, &k1, &mut rng).0, 1);
        }
        // top-p small enough keeps only the best token.
        let p = SampleOptions {
            top_p: 0.01,
            ..Default::default()
        };
        assert_eq!(pick(&logits, &p, &mut rng).0, 1);
        // log-probabilities are of the untruncated distribution.
        let (_, lp) = pick(&logits, &k1, &mut rng);
        let lse = logits.iter().map(|v: &f32| v.exp()).sum::<f32>().ln();
        assert!((lp - (2.0 - lse)).abs() < 1e-5);
    }

    #[test]
    fn untruncated_pick_walks_the_cumulative_distribution_and_skips_masked_ids() {
        // Masked ids (-inf, as `ignore_eos` sets them) last, so a draw near 1 would land on
        // them if they had any weight.
        let logits = [1.0f32, -0.5, 2.0, 0.3, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let t = 0.7;
        let o = SampleOptions {
            temperature: t,
            ..Default::default()
        };
        let scaled: Vec<f32> = logits.iter().map(|v| v / t as f32).collect();
        let lp = log_softmax(&scaled);
        for u in [0.0, 0.1, 0.25, 0.5, 0.8, 0.97, 1.0 - 1e-12] {
            // The first id whose cumulative probability reaches u.
            let mut acc = 0.0f64;
            let want = (0..logits.len())
                .find(|&i| {
                    acc += (lp[i] as f64).exp();
                    acc >= u && lp[i].is_finite()
                })
                .unwrap_or(3);
            let (got, got_lp) = pick_with(&logits, &o, u);
            assert_eq!(got as usize, want, "u {u}");
            assert!(
                (got_lp - lp[want]).abs() < 1e-5,
                "u {u}: {got_lp} vs {}",
                lp[want]
            );
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let o = SampleOptions::default();
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| pick(&logits, &o, &mut rng).0 == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }

    /// The full-sort pick this file used before the lazy order: the specification of the
    /// truncated cases (the untruncated one walks ids in turn, checked by
    /// `sampling_follows_the_distribution`).
    fn pick_by_full_sort(logits: &[f32], opts: &SampleOptions, rng: &mut ChaCha8Rng) -> (u32, f32) {
        let scaled: Vec<f32> = logits.iter().map(|v| v / opts.temperature as f32).collect();
        let lp = log_softmax(&scaled);
        let mut order: Vec<usize> = (0..lp.len()).collect();
        order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
        if opts.top_k > 0 {
            order.truncate(opts.top_k);
        }
        if opts.top_p < 1.0 {
            let (mut mass, mut keep) = (0.0, 0);
            for &i in &order {
                mass += lp[i].exp() as f64;
                keep += 1;
                if mass >= opts.top_p {
                    break;
                }
            }
            order.truncate(keep.max(1));
        }
        let total: f64 = order.iter().map(|&i| lp[i].exp() as f64).sum();
        let mut u = rng.random::<f64>() * total;
        for &i in &order {
            u -= lp[i].exp() as f64;
            if u <= 0.0 {
                return (i as u32, lp[i]);
            }
        }
        let last = *order.last().unwrap();
        (last as u32, lp[last])
    }

    #[test]
    fn the_lazy_order_picks_what_a_full_sort_picks() {
        let mut src = ChaCha8Rng::seed_from_u64(7);
        // A vocabulary several chunks long, with ties (rounded logits) and a flat tail.
        let logits: Vec<f32> = (0..3000)
            .map(|_| (src.random::<f32>() * 8.0).round() / 2.0 - 3.0)
            .collect();
        for (top_k, top_p, temperature) in [
            (0, 0.95, 0.6),
            (0, 0.999, 2.0),
            (40, 1.0, 1.0),
            (700, 0.9, 1.5),
            (1, 1.0, 1.0),
        ] {
            let o = SampleOptions {
                top_k,
                top_p,
                temperature,
                ..Default::default()
            };
            let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
            for _ in 0..300 {
                let want = pick_by_full_sort(&logits, &o, &mut a);
                let got = pick(&logits, &o, &mut b);
                assert_eq!(got, want, "top_k {top_k} top_p {top_p} T {temperature}");
            }
        }
    }
}
