//! Causal self-attention with RoPE for training, forward and backward, on plain slices: the
//! kernels behind the model's fused attention op (`model::fused`).
//!
//! Input is the QKV projection of a batch, `[b, t, 3, heads, head_dim]` row-major; output the
//! attention result `[b, t, heads · head_dim]` before the output projection. Queries and keys
//! are rotated (RoPE, pairs `(i, i + half)`) inside the kernel, and the `t × t` probabilities are
//! never stored: the forward keeps one log-sum-exp per query and the backward recomputes the
//! probabilities from it (as in FlashAttention), so the op saves only its input and output.
//!
//! Per (sequence, head) the products (`Q·Kᵀ`, `P·V`, and the four of the backward pass) run on
//! the packed register kernel of [`super::packed`], restricted to the causal triangle block by
//! block ([`Band`]: the masked half is zero and skipped); the element-wise loops are compiled a
//! second time with AVX2/FMA, chosen at run time.

use super::math::{RopeSpec, exp, rope_table, rotate};
use super::packed::{Band, Packed};
use super::simd::{Uninit, avx2_dispatch, write, written};
use super::transpose::transposed;
use rayon::prelude::*;

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn d(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// cos and sin of every position's angles, `[len][head_dim / 2]` each (the same angles as the
/// model's composite RoPE).
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub fn new(len: usize, head_dim: usize, rope: RopeSpec) -> Rope {
        let (cos, sin) = rope_table(0, len, head_dim, rope);
        Rope { cos, sin }
    }
}

/// One (sequence, head): rotated and scaled queries `[t][hd]`, keys `[t][hd]` and transposed
/// `[hd][t]`, values `[t][hd]` and transposed (each the right operand of one product).
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    vt: Vec<f32>,
}

#[inline(always)]
fn gather(qkv: &[f32], s: &Shape, rope: &Rope, h: usize) -> Head {
    let (t, hd, d) = (s.len, s.head_dim, s.d());
    let half = hd / 2;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut head = Head {
        q: vec![0.0; t * hd],
        k: vec![0.0; t * hd],
        kt: vec![0.0; t * hd],
        v: vec![0.0; t * hd],
        vt: vec![0.0; t * hd],
    };
    for i in 0..t {
        let row = &qkv[i * 3 * d..(i + 1) * 3 * d];
        let (cos, sin) = (
            &rope.cos[i * half..(i + 1) * half],
            &rope.sin[i * half..(i + 1) * half],
        );
        let q = &mut head.q[i * hd..(i + 1) * hd];
        q.copy_from_slice(&row[h * hd..(h + 1) * hd]);
        rotate(q, cos, sin, false);
        q.iter_mut().for_each(|x| *x *= scale);
        let k = &mut head.k[i * hd..(i + 1) * hd];
        k.copy_from_slice(&row[d + h * hd..d + (h + 1) * hd]);
        rotate(k, cos, sin, false);
        head.v[i * hd..(i + 1) * hd].copy_from_slice(&row[2 * d + h * hd..2 * d + (h + 1) * hd]);
        for c in 0..hd {
            head.kt[c * t + i] = head.k[i * hd + c];
            head.vt[c * t + i] = head.v[i * hd + c];
        }
    }
    head
}

/// `a · b` for row-major `a` `[m, k]` and `b` `[k, n]`, with the packed register kernel,
/// computing only what `band` needs (the rest stays zero).
fn product(a: &[f32], m: usize, b: &[f32], k: usize, n: usize, band: Band) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    Packed::new(b, k, n).matmul_band(&mut out, a, m, band);
    out
}

/// Head `h`'s `[t, hd]` slice of a `[t, heads · hd]` tensor.
fn head_rows(x: &[f32], s: &Shape, h: usize) -> Vec<f32> {
    let (hd, d) = (s.head_dim, s.d());
    let mut out = vec![0.0f32; s.len * hd];
    for (o, row) in out.chunks_exact_mut(hd).zip(x.chunks_exact(d)) {
        o.copy_from_slice(&row[h * hd..(h + 1) * hd]);
    }
    out
}

/// The scores `Q·Kᵀ` of one head, `[t, t]` (entries above the diagonal are not used).
fn head_scores(head: &Head, t: usize, hd: usize) -> Vec<f32> {
    product(&head.q, t, &head.kt, hd, t, Band::LowerOutput)
}

#[inline(always)]
fn forward_sequence(qkv: &[f32], out: &mut [Uninit], lse: &mut [f32], s: &Shape, rope: &Rope) {
    let (t, hd, d) = (s.len, s.head_dim, s.d());
    for h in 0..s.heads {
        let head = gather(qkv, s, rope, h);
        let mut p = head_scores(&head, t, hd);
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            let (keep, masked) = row.split_at_mut(i + 1);
            let max = keep.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in keep.iter_mut() {
                *x = exp(*x - max);
                sum += *x;
            }
            lse[h * t + i] = max + sum.ln();
            let inv = 1.0 / sum;
            keep.iter_mut().for_each(|x| *x *= inv);
            masked.fill(0.0);
        }
        let o = product(&p, t, &head.v, t, hd, Band::LowerLeft);
        for (i, o) in o.chunks_exact(hd).enumerate() {
            write(&mut out[i * d + h * hd..i * d + (h + 1) * hd], o);
        }
    }
}

#[inline(always)]
fn backward_sequence(
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dqkv: &mut [Uninit],
    s: &Shape,
    rope: &Rope,
) {
    let (t, hd, d) = (s.len, s.head_dim, s.d());
    let half = hd / 2;
    let scale = 1.0 / (hd as f32).sqrt();
    for h in 0..s.heads {
        let head = gather(qkv, s, rope, h);
        let go = head_rows(dout, s, h);
        let o = head_rows(out, s, h);
        // Probabilities from the saved log-sum-exps; dP = dO·Vᵀ; dS = P ∘ (dP − Δ).
        let mut p = head_scores(&head, t, hd);
        let mut ds = product(&go, t, &head.vt, hd, t, Band::LowerOutput);
        for i in 0..t {
            let delta: f32 = go[i * hd..(i + 1) * hd]
                .iter()
                .zip(&o[i * hd..(i + 1) * hd])
                .map(|(a, b)| a * b)
                .sum();
            let l = lse[h * t + i];
            let (prow, dsrow) = (&mut p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
            for (pj, dsj) in prow[..=i].iter_mut().zip(&mut dsrow[..=i]) {
                *pj = exp(*pj - l);
                *dsj = *pj * (*dsj - delta);
            }
            prow[i + 1..].fill(0.0);
            dsrow[i + 1..].fill(0.0);
        }
        let dq = product(&ds, t, &head.k, t, hd, Band::LowerLeft);
        let dk = product(&transposed(&ds, t, t), t, &head.q, t, hd, Band::UpperLeft);
        let dv = product(&transposed(&p, t, t), t, &go, t, hd, Band::UpperLeft);
        // Back through the scaling and rotation, into the [t, 3, heads, hd] gradient.
        let (mut dqi, mut dki) = (vec![0.0f32; hd], vec![0.0f32; hd]);
        for i in 0..t {
            let (cos, sin) = (
                &rope.cos[i * half..(i + 1) * half],
                &rope.sin[i * half..(i + 1) * half],
            );
            let row = &mut dqkv[i * 3 * d..(i + 1) * 3 * d];
            dqi.copy_from_slice(&dq[i * hd..(i + 1) * hd]);
            dqi.iter_mut().for_each(|x| *x *= scale);
            rotate(&mut dqi, cos, sin, true);
            write(&mut row[h * hd..(h + 1) * hd], &dqi);
            dki.copy_from_slice(&dk[i * hd..(i + 1) * hd]);
            rotate(&mut dki, cos, sin, true);
            write(&mut row[d + h * hd..d + (h + 1) * hd], &dki);
            write(
                &mut row[2 * d + h * hd..2 * d + (h + 1) * hd],
                &dv[i * hd..(i + 1) * hd],
            );
        }
    }
}

avx2_dispatch!(
    /// One sequence's forward, see [`forward_sequence`].
    fn forward_one(qkv: &[f32], out: &mut [Uninit], lse: &mut [f32], s: &Shape, r: &Rope) = forward_sequence;
);
avx2_dispatch!(
    /// One sequence's backward, see [`backward_sequence`].
    fn backward_one(
        qkv: &[f32],
        out: &[f32],
        lse: &[f32],
        dout: &[f32],
        dqkv: &mut [Uninit],
        s: &Shape,
        r: &Rope,
    ) = backward_sequence;
);

/// Causal attention of `qkv` (`[b, t, 3, heads, head_dim]`): the output `[b, t, d]` and the
/// log-sum-exp of every query's scores (`[b, heads, t]`), which the backward pass needs.
pub fn forward(qkv: &[f32], s: &Shape, rope: RopeSpec) -> (Vec<f32>, Vec<f32>) {
    let (t, d) = (s.len, s.d());
    assert_eq!(
        qkv.len(),
        s.batch * t * 3 * d,
        "attention: qkv is not {s:?}"
    );
    let rope = Rope::new(t, s.head_dim, rope);
    let mut lse = vec![0.0f32; s.batch * s.heads * t];
    // SAFETY: the chunks of `t·d` cover the whole output and `forward_one` writes every
    // element of its chunk.
    let out = unsafe {
        written(s.batch * t * d, |out| {
            out.par_chunks_mut(t * d)
                .zip(lse.par_chunks_mut(s.heads * t))
                .zip(qkv.par_chunks(3 * t * d))
                .for_each(|((out, lse), qkv)| forward_one(qkv, out, lse, s, &rope))
        })
    };
    (out, lse)
}

/// The gradient of `qkv` from the output gradient `dout`, given the forward's input, output
/// and log-sum-exps.
pub fn backward(
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    s: &Shape,
    rope: RopeSpec,
) -> Vec<f32> {
    let (t, d) = (s.len, s.d());
    let rope = Rope::new(t, s.head_dim, rope);
    // SAFETY: the chunks of `3·t·d` cover the whole output and `backward_one` writes every
    // element of its chunk.
    unsafe {
        written(qkv.len(), |dqkv| {
            dqkv.par_chunks_mut(3 * t * d)
                .zip(qkv.par_chunks(3 * t * d))
                .zip(out.par_chunks(t * d).zip(dout.par_chunks(t * d)))
                .zip(lse.par_chunks(s.heads * t))
                .for_each(|(((dqkv, qkv), (out, dout)), lse)| {
                    backward_one(qkv, out, lse, dout, dqkv, s, &rope)
                })
        })
    }
}
