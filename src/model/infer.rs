//! The CPU decoding fast path: the same function as [`Gpt::forward_cached`], without burn's
//! per-op overhead. Weights are copied once and packed for small-batch products
//! ([`super::packed`]); each projection is one product over every new token of the batch;
//! RMSNorm, RoPE, attention and SwiGLU run over buffers allocated once per call; keys and values
//! are written in place into a cache preallocated for the whole context. Each row
//! keeps its own length, so prompts of different lengths need no padding or masks (RoPE is
//! relative, so the logits equal the padded reference's). `tests/model_decode.rs` checks logits,
//! log-probabilities and greedy tokens against the burn path.

use super::attention::{rope_table, rotate};
use super::fused::{self, exp};
use super::packed::{Packed, Threads};
use super::pair::Pair;
use super::simd::{as_uninit, avx2_dispatch};
use super::transformer::Gpt;
use burn::tensor::Tensor;
use rayon::prelude::*;

/// Weights of one block.
struct Layer {
    attn_norm: Vec<f32>,
    attn_eps: f32,
    /// `[d, 3d]`: queries, keys, values, each head-major.
    qkv: Packed,
    /// `[d, d]`.
    out: Packed,
    mlp_norm: Vec<f32>,
    mlp_eps: f32,
    /// `[d, 2·mlp]`: gate, then up.
    gate_up: Packed,
    /// `[mlp, d]`.
    down: Packed,
}

/// A model's weights, laid out for decoding on the CPU.
pub struct Engine {
    d: usize,
    heads: usize,
    mlp: usize,
    vocab: usize,
    ctx: usize,
    /// `[vocab, d]`.
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    norm_eps: f32,
    /// `[d, vocab]`.
    head: Packed,
    /// `[ctx, head_dim / 2]` tables.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's keys (`[layer][d][ctx]`, transposed) and values (`[layer][position][d]`),
/// allocated for the whole context.
pub struct RowCache {
    k: Vec<f32>,
    v: Vec<f32>,
    /// Positions filled.
    pub len: usize,
}

/// The KV cache of a batch of sequences. Rows are independent, so a batch can be split
/// between threads.
pub struct Cache {
    pub rows: Vec<RowCache>,
}

/// Tokens fed at once from which a batch is split between threads (below it, waking a thread
/// costs more than it saves).
const SPLIT_TOKENS: usize = 8;

/// Tokens per forward pass over the batch: larger feeds (a big prefill) run in consecutive
/// groups, so scratch memory stays bounded (~20 KB a token at the bench's shape).
const PASS_TOKENS: usize = 1024;

fn vec1(t: Tensor<1>) -> Vec<f32> {
    f32s(t.into_data())
}

fn vec2(t: Tensor<2>) -> Vec<f32> {
    f32s(t.into_data())
}

/// The values as `f32` (one copy; a conversion first if the backend stores another type).
fn f32s(data: burn::tensor::TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .expect("data converted to f32 reads back as f32")
}

/// A matrix's values and shape `[k, n]`.
type Matrix = (Vec<f32>, usize, usize);

fn matrix(t: Tensor<2>) -> Matrix {
    let [k, n] = t.dims();
    (vec2(t), k, n)
}

fn packed(t: Tensor<2>) -> Packed {
    let (w, k, n) = matrix(t);
    Packed::new(&w, k, n)
}

/// `out = x / sqrt(mean(x²) + eps) · g`, row by row: the training op's kernel.
fn rms_norm(x: &[f32], g: &[f32], eps: f32, out: &mut [f32]) {
    let mut rstd = vec![0.0f32; x.len() / g.len()];
    fused::rms_block(as_uninit(out), &mut rstd, x, g, eps);
}

/// Attention of one query (all heads; `q` is `heads · head_dim`) over the first `len`
/// positions of a layer's cache: `keys` transposed per head (`[head][dim][ctx]`, so the scores
/// of consecutive positions are one vector product with no horizontal sums) and `values`
/// (`[position][heads · head_dim]`).
struct Query<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    len: usize,
    heads: usize,
    scale: f32,
}

avx2_dispatch!(
    /// Attend with `a`, writing the result to `out` (`scores` is scratch of at least `len`).
    fn attend(a: &Query<'_>, scores: &mut [f32], out: &mut [f32]) = attend_generic;
);

#[inline(always)]
fn attend_generic(a: &Query<'_>, scores: &mut [f32], out: &mut [f32]) {
    let d = a.q.len();
    let hd = d / a.heads;
    let ctx = a.keys.len() / d;
    out.fill(0.0);
    for hh in 0..a.heads {
        let s = &mut scores[..a.len];
        s.fill(0.0);
        for (i, &qi) in a.q[hh * hd..(hh + 1) * hd].iter().enumerate() {
            let row = &a.keys[(hh * hd + i) * ctx..(hh * hd + i) * ctx + a.len];
            let qs = qi * a.scale;
            for (sj, &kj) in s.iter_mut().zip(row) {
                *sj += qs * kj;
            }
        }
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for sj in s.iter_mut() {
            *sj = exp(*sj - max);
            sum += *sj;
        }
        let o = &mut out[hh * hd..(hh + 1) * hd];
        for (&p, v) in s.iter().zip(a.values.chunks_exact(d)) {
            let w = p / sum;
            for (oi, vi) in o.iter_mut().zip(&v[hh * hd..(hh + 1) * hd]) {
                *oi += w * vi;
            }
        }
    }
}

/// Rotate pairs (i, i + half) of each head of `x` (`heads · head_dim` values) by the angles of
/// one position.
fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for h in x.chunks_exact_mut(head_dim) {
        rotate(h, cos, sin, false);
    }
}

impl Engine {
    /// Copy a model's weights (any backend) into the CPU layout, for contexts up to `ctx`.
    pub fn new(model: &Gpt, ctx: usize) -> Engine {
        let w = model.weights();
        let d = w.d_model;
        let heads = w.heads;
        let hd = d / heads;
        let (cos, sin) = rope_table(0, ctx, hd, w.rope_theta);
        // Weights read out of burn here, packed on both cores.
        let pack = |ms: Vec<Matrix>| -> Vec<Packed> {
            ms.into_par_iter()
                .map(|(w, k, n)| Packed::new(&w, k, n))
                .collect()
        };
        let layers: Vec<Layer> = w
            .blocks
            .into_iter()
            .map(|b| {
                let mut p = pack(vec![
                    matrix(b.qkv),
                    matrix(b.out),
                    matrix(b.gate_up),
                    matrix(b.down),
                ])
                .into_iter();
                let mut next = || p.next().expect("four matrices packed");
                Layer {
                    attn_norm: vec1(b.attn_norm.0),
                    attn_eps: b.attn_norm.1 as f32,
                    qkv: next(),
                    out: next(),
                    mlp_norm: vec1(b.mlp_norm.0),
                    mlp_eps: b.mlp_norm.1 as f32,
                    gate_up: next(),
                    down: next(),
                }
            })
            .collect();
        let mlp = layers.first().map_or(0, |l| l.down.rows());
        let embed = vec2(w.embed);
        Engine {
            d,
            heads,
            mlp,
            vocab: embed.len() / d,
            ctx,
            embed,
            layers,
            norm: vec1(w.norm.0),
            norm_eps: w.norm.1 as f32,
            head: packed(w.head),
            cos,
            sin,
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// An empty cache for `rows` sequences.
    pub fn cache(&self, rows: usize) -> Cache {
        let size = self.layers.len() * self.ctx * self.d;
        Cache {
            rows: (0..rows)
                .map(|_| RowCache {
                    k: vec![0.0; size],
                    v: vec![0.0; size],
                    len: 0,
                })
                .collect(),
        }
    }

    /// Feed `tokens` to each listed row of the cache (appended after what the row holds) and
    /// return logits, `[outputs, vocab]` row-major: for every fed token when `all`, else for the
    /// last token of each entry. With enough tokens the batch is split in two halves that run
    /// on two threads. Panics if a row is listed twice or would exceed the context.
    pub fn forward(&self, cache: &mut Cache, feed: &[(usize, &[u32])], all: bool) -> Vec<f32> {
        self.forward_on(cache, feed, all, None)
    }

    /// [`Self::forward`] on this thread and `pair`'s helper (rayon's pool when `None`): halves
    /// of a batch, or halves of each product for a few rows (one sequence's decoding).
    pub fn forward_on(
        &self,
        cache: &mut Cache,
        feed: &[(usize, &[u32])],
        all: bool,
        pair: Option<&Pair>,
    ) -> Vec<f32> {
        let mut slots: Vec<Option<&mut RowCache>> = cache.rows.iter_mut().map(Some).collect();
        let mut jobs: Vec<(&mut RowCache, &[u32])> = feed
            .iter()
            .map(|&(row, toks)| {
                let slot = slots[row]
                    .take()
                    .expect("each row is fed at most once per call");
                (slot, toks)
            })
            .collect();
        // Rows in groups of at most PASS_TOKENS tokens (a row is never split), so that the
        // scratch buffers of a large prefill stay bounded.
        let mut logits = Vec::new();
        let mut rest = jobs.as_mut_slice();
        while !rest.is_empty() {
            let mut tokens = 0;
            let n = rest
                .iter()
                .position(|(_, t)| {
                    tokens += t.len();
                    tokens > PASS_TOKENS
                })
                .unwrap_or(rest.len())
                .max(1);
            let (group, tail) = rest.split_at_mut(n);
            logits.extend(self.forward_group(group, all, pair));
            rest = tail;
        }
        logits
    }

    /// [`Self::forward`] over one group of rows: split in two halves on two threads when it
    /// has enough tokens, else each product split (with a pair) or only large ones (rayon).
    fn forward_group(
        &self,
        jobs: &mut [(&mut RowCache, &[u32])],
        all: bool,
        pair: Option<&Pair>,
    ) -> Vec<f32> {
        let total: usize = jobs.iter().map(|(_, t)| t.len()).sum();
        if jobs.len() < 2 || total < SPLIT_TOKENS || rayon::current_num_threads() < 2 {
            let threads = pair.map_or(Threads::Rayon, Threads::Pair);
            return self.forward_rows(jobs, all, threads);
        }
        // Two halves of about equal token counts.
        let mut acc = 0;
        let cut = jobs
            .iter()
            .position(|(_, t)| {
                acc += t.len();
                2 * acc >= total
            })
            .map_or(jobs.len() / 2, |i| (i + 1).min(jobs.len() - 1));
        let (left, right) = jobs.split_at_mut(cut);
        let mine = || self.forward_rows(left, all, Threads::One);
        let theirs = || self.forward_rows(right, all, Threads::One);
        let (mut a, b) = match pair {
            Some(pair) => pair.join(mine, theirs),
            None => rayon::join(mine, theirs),
        };
        a.extend(b);
        a
    }

    /// [`Self::forward`] over one group of rows, on this thread (its products on `threads`).
    fn forward_rows(
        &self,
        jobs: &mut [(&mut RowCache, &[u32])],
        all: bool,
        threads: Threads<'_>,
    ) -> Vec<f32> {
        let (d, hd) = (self.d, self.d / self.heads);
        let half = hd / 2;
        // Where each fed token goes: (job, position).
        let mut at: Vec<(usize, usize)> = Vec::new();
        let mut x: Vec<f32> = Vec::new();
        for (job, (rc, toks)) in jobs.iter().enumerate() {
            assert!(!toks.is_empty(), "nothing to feed to a row");
            let start = rc.len;
            assert!(
                start + toks.len() <= self.ctx,
                "sequence longer than the context ({})",
                self.ctx
            );
            for (i, &t) in toks.iter().enumerate() {
                at.push((job, start + i));
                let t = t as usize;
                x.extend_from_slice(&self.embed[t * d..(t + 1) * d]);
            }
        }
        let n = at.len();
        let m = self.mlp;
        let mut h = vec![0.0f32; n * d];
        let mut qkv = vec![0.0f32; n * 3 * d];
        let mut att = vec![0.0f32; n * d];
        let mut gu = vec![0.0f32; n * 2 * m];
        let mut act = vec![0.0f32; n * m];
        let mut scores = vec![0.0f32; self.ctx];
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, l.attn_eps, &mut h);
            l.qkv.matmul(&mut qkv, &h, n, false, threads);
            // RoPE on queries and keys; keys and values into the cache.
            let layer = li * self.ctx * d;
            for (t, &(job, pos)) in at.iter().enumerate() {
                let cs = &self.cos[pos * half..(pos + 1) * half];
                let sn = &self.sin[pos * half..(pos + 1) * half];
                let r = &mut qkv[t * 3 * d..(t + 1) * 3 * d];
                rope(&mut r[..2 * d], hd, cs, sn);
                let o = layer + pos * d;
                let rc = &mut *jobs[job].0;
                // Keys transposed: dimension c of the layer's keys is row c of [d][ctx].
                for (c, &kc) in r[d..2 * d].iter().enumerate() {
                    rc.k[layer + c * self.ctx + pos] = kc;
                }
                rc.v[o..o + d].copy_from_slice(&r[2 * d..]);
            }
            // Causal attention of each new token over its row's cache.
            for (t, &(job, pos)) in at.iter().enumerate() {
                let rc = &*jobs[job].0;
                let query = Query {
                    q: &qkv[t * 3 * d..t * 3 * d + d],
                    keys: &rc.k[layer..layer + self.ctx * d],
                    values: &rc.v[layer..layer + (pos + 1) * d],
                    len: pos + 1,
                    heads: self.heads,
                    scale,
                };
                attend(&query, &mut scores, &mut att[t * d..(t + 1) * d]);
            }
            l.out.matmul(&mut x, &att, n, true, threads);
            rms_norm(&x, &l.mlp_norm, l.mlp_eps, &mut h);
            l.gate_up.matmul(&mut gu, &h, n, false, threads);
            fused::swiglu_block(as_uninit(&mut act), &gu, m);
            l.down.matmul(&mut x, &act, n, true, threads);
        }
        for (rc, toks) in jobs.iter_mut() {
            rc.len += toks.len();
        }
        // Only the positions whose logits are wanted go through the head.
        let picked: Vec<f32> = if all {
            x
        } else {
            let mut end = 0;
            let mut v = Vec::with_capacity(jobs.len() * d);
            for (_, toks) in jobs.iter() {
                end += toks.len();
                v.extend_from_slice(&x[(end - 1) * d..end * d]);
            }
            v
        };
        let rows = picked.len() / d;
        let mut hn = vec![0.0f32; rows * d];
        rms_norm(&picked, &self.norm, self.norm_eps, &mut hn);
        let mut logits = vec![0.0f32; rows * self.vocab];
        self.head.matmul(&mut logits, &hn, rows, false, threads);
        logits
    }
}
