//! Causal self-attention with RoPE for training, forward and backward, on plain slices: the
//! kernels behind the fused attention op of [`super::fused`].
//!
//! Input is the QKV projection of a batch, `[b, t, 3, heads, head_dim]` row-major; output the
//! attention result `[b, t, heads · head_dim]` before the output projection. Queries and keys
//! are rotated (RoPE, pairs `(i, i + half)`) inside the kernel, and the `t × t` probabilities are
//! never stored: the forward keeps one log-sum-exp per query and the backward recomputes the
//! probabilities from it (as in FlashAttention), so the op saves only its input and output.
//!
//! Per (sequence, head) the keys and values are laid out transposed (`[head_dim][t]`), so every
//! inner loop is a vector update over positions with no horizontal sums; the loops are compiled
//! a second time with AVX2/FMA, chosen at run time.

use super::fused::exp;
use super::simd::avx2_dispatch;
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
    pub fn new(len: usize, head_dim: usize, theta: f64) -> Rope {
        let half = head_dim / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(len * half),
            Vec::with_capacity(len * half),
        );
        for p in 0..len {
            for i in 0..half {
                let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                let a = p as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Rope { cos, sin }
    }
}

/// One (sequence, head): rotated and scaled queries `[t][hd]`, keys `[t][hd]` and transposed
/// `[hd][t]`, values `[t][hd]` and transposed.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    vt: Vec<f32>,
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[inline(always)]
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] - b * sin[i];
        x2[i] = a * sin[i] + b * cos[i];
    }
}

/// The transpose of [`rotate`] (rotation by the opposite angle), for gradients.
#[inline(always)]
fn unrotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] + b * sin[i];
        x2[i] = b * cos[i] - a * sin[i];
    }
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
        rotate(q, cos, sin);
        q.iter_mut().for_each(|x| *x *= scale);
        let k = &mut head.k[i * hd..(i + 1) * hd];
        k.copy_from_slice(&row[d + h * hd..d + (h + 1) * hd]);
        rotate(k, cos, sin);
        head.v[i * hd..(i + 1) * hd].copy_from_slice(&row[2 * d + h * hd..2 * d + (h + 1) * hd]);
        for c in 0..hd {
            head.kt[c * t + i] = head.k[i * hd + c];
            head.vt[c * t + i] = head.v[i * hd + c];
        }
    }
    head
}

/// Scores of query `i` against keys `0..=i` into `s`.
#[inline(always)]
fn scores(q: &[f32], kt: &[f32], t: usize, s: &mut [f32]) {
    s.fill(0.0);
    let n = s.len();
    for (c, &qc) in q.iter().enumerate() {
        axpy(s, qc, &kt[c * t..c * t + n]);
    }
}

#[inline(always)]
fn forward_sequence(qkv: &[f32], out: &mut [f32], lse: &mut [f32], s: &Shape, rope: &Rope) {
    let (t, hd, d) = (s.len, s.head_dim, s.d());
    let mut p = vec![0.0f32; t];
    for h in 0..s.heads {
        let head = gather(qkv, s, rope, h);
        for i in 0..t {
            let p = &mut p[..=i];
            scores(&head.q[i * hd..(i + 1) * hd], &head.kt, t, p);
            let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in p.iter_mut() {
                *x = exp(*x - max);
                sum += *x;
            }
            lse[h * t + i] = max + sum.ln();
            let o = &mut out[i * d + h * hd..i * d + (h + 1) * hd];
            o.fill(0.0);
            let inv = 1.0 / sum;
            for (j, &pj) in p.iter().enumerate() {
                axpy(o, pj * inv, &head.v[j * hd..(j + 1) * hd]);
            }
        }
    }
}

#[inline(always)]
fn backward_sequence(
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    s: &Shape,
    rope: &Rope,
) {
    let (t, hd, d) = (s.len, s.head_dim, s.d());
    let half = hd / 2;
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut p, mut dp) = (vec![0.0f32; t], vec![0.0f32; t]);
    for h in 0..s.heads {
        let head = gather(qkv, s, rope, h);
        let mut dq = vec![0.0f32; t * hd];
        let mut dkt = vec![0.0f32; t * hd];
        let mut dvt = vec![0.0f32; t * hd];
        for i in 0..t {
            let n = i + 1;
            let go = &dout[i * d + h * hd..i * d + (h + 1) * hd];
            let o = &out[i * d + h * hd..i * d + (h + 1) * hd];
            let delta: f32 = go.iter().zip(o).map(|(a, b)| a * b).sum();
            let p = &mut p[..n];
            scores(&head.q[i * hd..(i + 1) * hd], &head.kt, t, p);
            let l = lse[h * t + i];
            for x in p.iter_mut() {
                *x = exp(*x - l);
            }
            // dp_j = dO_i · v_j, then ds_j = p_j (dp_j − Δ_i) in place.
            let dp = &mut dp[..n];
            scores(go, &head.vt, t, dp);
            for (ds, &pj) in dp.iter_mut().zip(p.iter()) {
                *ds = pj * (*ds - delta);
            }
            let qi = &head.q[i * hd..(i + 1) * hd];
            for c in 0..hd {
                axpy(&mut dvt[c * t..c * t + n], go[c], p);
                axpy(&mut dkt[c * t..c * t + n], qi[c], dp);
            }
            let dqi = &mut dq[i * hd..(i + 1) * hd];
            for (j, &ds) in dp.iter().enumerate() {
                axpy(dqi, ds, &head.k[j * hd..(j + 1) * hd]);
            }
        }
        // Back through the scaling and rotation, into the [t, 3, heads, hd] gradient.
        let mut dk = vec![0.0f32; hd];
        for i in 0..t {
            let (cos, sin) = (
                &rope.cos[i * half..(i + 1) * half],
                &rope.sin[i * half..(i + 1) * half],
            );
            let row = &mut dqkv[i * 3 * d..(i + 1) * 3 * d];
            let dqi = &mut row[h * hd..(h + 1) * hd];
            dqi.copy_from_slice(&dq[i * hd..(i + 1) * hd]);
            dqi.iter_mut().for_each(|x| *x *= scale);
            unrotate(dqi, cos, sin);
            for c in 0..hd {
                dk[c] = dkt[c * t + i];
            }
            unrotate(&mut dk, cos, sin);
            row[d + h * hd..d + (h + 1) * hd].copy_from_slice(&dk);
            for c in 0..hd {
                row[2 * d + h * hd + c] = dvt[c * t + i];
            }
        }
    }
}

avx2_dispatch!(
    /// One sequence's forward, see [`forward_sequence`].
    fn forward_one(qkv: &[f32], out: &mut [f32], lse: &mut [f32], s: &Shape, r: &Rope) = forward_sequence;
);
avx2_dispatch!(
    /// One sequence's backward, see [`backward_sequence`].
    fn backward_one(
        qkv: &[f32],
        out: &[f32],
        lse: &[f32],
        dout: &[f32],
        dqkv: &mut [f32],
        s: &Shape,
        r: &Rope,
    ) = backward_sequence;
);

/// Causal attention of `qkv` (`[b, t, 3, heads, head_dim]`): the output `[b, t, d]` and the
/// log-sum-exp of every query's scores (`[b, heads, t]`), which the backward pass needs.
pub fn forward(qkv: &[f32], s: &Shape, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let (t, d) = (s.len, s.d());
    assert_eq!(
        qkv.len(),
        s.batch * t * 3 * d,
        "attention: qkv is not {s:?}"
    );
    let rope = Rope::new(t, s.head_dim, theta);
    let mut out = vec![0.0f32; s.batch * t * d];
    let mut lse = vec![0.0f32; s.batch * s.heads * t];
    out.par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(s.heads * t))
        .zip(qkv.par_chunks(3 * t * d))
        .for_each(|((out, lse), qkv)| forward_one(qkv, out, lse, s, &rope));
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
    theta: f64,
) -> Vec<f32> {
    let (t, d) = (s.len, s.d());
    let rope = Rope::new(t, s.head_dim, theta);
    let mut dqkv = vec![0.0f32; qkv.len()];
    dqkv.par_chunks_mut(3 * t * d)
        .zip(qkv.par_chunks(3 * t * d))
        .zip(out.par_chunks(t * d).zip(dout.par_chunks(t * d)))
        .zip(lse.par_chunks(s.heads * t))
        .for_each(|(((dqkv, qkv), (out, dout)), lse)| {
            backward_one(qkv, out, lse, dout, dqkv, s, &rope)
        });
    dqkv
}
