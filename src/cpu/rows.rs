//! Row kernels of RMSNorm and SwiGLU, forward and backward, on plain slices: each loop is
//! compiled a second time with AVX2/FMA (chosen at run time) and the rows are split over
//! rayon's threads in blocks of [`ROWS_PER_TASK`].

use super::math::{exp, sigmoid};
use super::simd::{Uninit, avx2_dispatch, written};
use rayon::prelude::*;

/// Rows per parallel work item (each row is one position's vector).
const ROWS_PER_TASK: usize = 64;

#[inline(always)]
fn rms_rows(y: &mut [Uninit], rstd: &mut [f32], x: &[f32], gamma: &[f32], eps: f32) {
    let d = gamma.len();
    for ((y, r), x) in y.chunks_mut(d).zip(rstd.iter_mut()).zip(x.chunks(d)) {
        let ss: f32 = x.iter().map(|v| v * v).sum();
        *r = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((y, x), g) in y.iter_mut().zip(x).zip(gamma) {
            y.write(x * *r * g);
        }
    }
}

/// Adds this block's contribution to `dgamma`.
#[inline(always)]
fn rms_rows_backward(
    dx: &mut [Uninit],
    dgamma: &mut [f32],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
) {
    let d = gamma.len();
    for (((dx, dy), x), &r) in dx
        .chunks_mut(d)
        .zip(dy.chunks(d))
        .zip(x.chunks(d))
        .zip(rstd)
    {
        // dx = r·(dy·γ − x̂·mean(dy·γ·x̂)), x̂ = x·r.
        let mut dot = 0.0f32;
        for ((dy, x), g) in dy.iter().zip(x).zip(gamma) {
            dot += dy * g * x;
        }
        let c = dot * r * r / d as f32;
        for (((dx, dy), x), (g, dg)) in dx
            .iter_mut()
            .zip(dy)
            .zip(x)
            .zip(gamma.iter().zip(dgamma.iter_mut()))
        {
            dx.write(r * (dy * g - x * c));
            *dg += dy * x * r;
        }
    }
}

#[inline(always)]
fn swiglu_rows(h: &mut [Uninit], gu: &[f32], m: usize) {
    for (h, gu) in h.chunks_mut(m).zip(gu.chunks(2 * m)) {
        let (g, u) = gu.split_at(m);
        for ((h, g), u) in h.iter_mut().zip(g).zip(u) {
            h.write(g * sigmoid(*g) * u);
        }
    }
}

#[inline(always)]
fn swiglu_rows_backward(dgu: &mut [Uninit], gu: &[f32], dh: &[f32], m: usize) {
    for ((dgu, gu), dh) in dgu
        .chunks_mut(2 * m)
        .zip(gu.chunks(2 * m))
        .zip(dh.chunks(m))
    {
        let (g, u) = gu.split_at(m);
        let (dg, du) = dgu.split_at_mut(m);
        for ((((dg, du), g), u), dh) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dh) {
            let s = sigmoid(*g);
            let silu = g * s;
            du.write(dh * silu);
            dg.write(dh * u * (s + silu * (1.0 - s)));
        }
    }
}

avx2_dispatch!(
    /// RMSNorm of rows of `gamma.len()`, each row's `1 / rms` into `rstd`.
    pub fn rms_block(y: &mut [Uninit], rstd: &mut [f32], x: &[f32], gamma: &[f32], eps: f32) = rms_rows;);
avx2_dispatch!(
    fn rms_block_backward(
        dx: &mut [Uninit],
        dgamma: &mut [f32],
        dy: &[f32],
        x: &[f32],
        gamma: &[f32],
        rstd: &[f32],
    ) = rms_rows_backward;
);
avx2_dispatch!(
    /// `h = silu(gate) · up` over rows of `gu` = `[gate, up]` (`2m` wide).
    pub fn swiglu_block(h: &mut [Uninit], gu: &[f32], m: usize) = swiglu_rows;);
avx2_dispatch!(fn swiglu_block_backward(dgu: &mut [Uninit], gu: &[f32], dh: &[f32], m: usize) = swiglu_rows_backward;);

/// RMSNorm forward over rows of `d`: the output and each row's `1 / rms`.
pub fn rms_forward(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let rows = x.len() / d;
    let mut rstd = vec![0.0f32; rows];
    // SAFETY: the chunks cover the whole output and the row kernel writes every element
    // of its chunk (as many rows as the input's).
    let y = unsafe {
        written(x.len(), |y| {
            y.par_chunks_mut(d * ROWS_PER_TASK)
                .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
                .zip(x.par_chunks(d * ROWS_PER_TASK))
                .for_each(|((y, rstd), x)| rms_block(y, rstd, x, gamma, eps))
        })
    };
    (y, rstd)
}

/// RMSNorm backward: `(dx, dgamma)` from the output gradient, input, gain and `1 / rms`.
pub fn rms_backward(dy: &[f32], x: &[f32], gamma: &[f32], rstd: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut dgamma = Vec::new();
    // SAFETY: the chunks cover the whole output and the row kernel writes every element
    // of its chunk (as many rows as the input's).
    let dx = unsafe {
        written(x.len(), |dx| {
            dgamma = dx
                .par_chunks_mut(d * ROWS_PER_TASK)
                .zip(dy.par_chunks(d * ROWS_PER_TASK))
                .zip(x.par_chunks(d * ROWS_PER_TASK))
                .zip(rstd.par_chunks(ROWS_PER_TASK))
                .map(|(((dx, dy), x), rstd)| {
                    let mut dgamma = vec![0.0f32; d];
                    rms_block_backward(dx, &mut dgamma, dy, x, gamma, rstd);
                    dgamma
                })
                .reduce(
                    || vec![0.0f32; d],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    },
                )
        })
    };
    (dx, dgamma)
}

/// SwiGLU forward over rows of `2m` (gate then up).
pub fn swiglu_forward(gu: &[f32], m: usize) -> Vec<f32> {
    // SAFETY: the chunks cover the whole output and the row kernel writes every element
    // of its chunk (as many rows as the input's).
    unsafe {
        written(gu.len() / 2, |h| {
            h.par_chunks_mut(m * ROWS_PER_TASK)
                .zip(gu.par_chunks(2 * m * ROWS_PER_TASK))
                .for_each(|(h, gu)| swiglu_block(h, gu, m))
        })
    }
}

/// SwiGLU backward: the gradient of the `[.., 2m]` input.
pub fn swiglu_backward(dh: &[f32], gu: &[f32], m: usize) -> Vec<f32> {
    // SAFETY: the chunks cover the whole output and the row kernel writes every element
    // of its chunk (as many rows as the input's).
    unsafe {
        written(gu.len(), |dgu| {
            dgu.par_chunks_mut(2 * m * ROWS_PER_TASK)
                .zip(gu.par_chunks(2 * m * ROWS_PER_TASK))
                .zip(dh.par_chunks(m * ROWS_PER_TASK))
                .for_each(|((dgu, gu), dh)| swiglu_block_backward(dgu, gu, dh, m))
        })
    }
}

// ---- log-probabilities of targets over a vocabulary ------------------------------------------

/// `log Σ_j exp(s·x_j)` of each row (of `v` logits) of `x`.
#[inline(always)]
fn lse_rows(lse: &mut [f32], x: &[f32], v: usize, s: f32) {
    for (l, row) in lse.iter_mut().zip(x.chunks(v)) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * s;
        // Eight partial sums: a sum over 49,152 terms in one chain would wait on each add.
        let mut acc = [0.0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += exp(x * s - m);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&x| exp(x * s - m)).sum();
        *l = m + (acc.iter().sum::<f32>() + tail).ln();
    }
}

/// `dx_j = g · s · (1[j = target] − exp(s·x_j − lse))` for each row.
#[inline(always)]
fn target_rows_backward(
    dx: &mut [Uninit],
    x: &[f32],
    targets: &[u32],
    lse: &[f32],
    dy: &[f32],
    v: usize,
    s: f32,
) {
    for ((((dx, row), &t), &l), &g) in dx
        .chunks_mut(v)
        .zip(x.chunks(v))
        .zip(targets)
        .zip(lse)
        .zip(dy)
    {
        let gs = g * s;
        for (d, &x) in dx.iter_mut().zip(row) {
            d.write(-gs * exp(x * s - l));
        }
        // SAFETY: the element was written just above.
        let at = unsafe { dx[t as usize].assume_init_mut() };
        *at += gs;
    }
}

avx2_dispatch!(fn lse_block(lse: &mut [f32], x: &[f32], v: usize, s: f32) = lse_rows;);
avx2_dispatch!(fn target_block_backward(dx: &mut [Uninit], x: &[f32], targets: &[u32], lse: &[f32], dy: &[f32], v: usize, s: f32) = target_rows_backward;);

/// Rows per parallel task of the vocabulary-wide kernels (a row is ~200 KB at 49,152 tokens).
const VOCAB_ROWS_PER_TASK: usize = 4;

/// Log-probability of each row's target under `softmax(s · row)` for rows of `v` logits, and
/// each row's log-sum-exp (for [`target_logprob_backward`]). No `[rows, v]` tensor is written:
/// what the composite `log_softmax` + `gather` would materialise twice.
pub fn target_logprob_forward(
    x: &[f32],
    targets: &[u32],
    v: usize,
    s: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut lse = vec![0.0f32; targets.len()];
    lse.par_chunks_mut(VOCAB_ROWS_PER_TASK)
        .zip(x.par_chunks(v * VOCAB_ROWS_PER_TASK))
        .for_each(|(lse, x)| lse_block(lse, x, v, s));
    let out = targets
        .iter()
        .zip(&lse)
        .enumerate()
        .map(|(r, (&t, &l))| x[r * v + t as usize] * s - l)
        .collect();
    (out, lse)
}

/// The gradient of the logits from the gradient `dy` of [`target_logprob_forward`]'s output.
pub fn target_logprob_backward(
    dy: &[f32],
    x: &[f32],
    targets: &[u32],
    lse: &[f32],
    v: usize,
    s: f32,
) -> Vec<f32> {
    let n = VOCAB_ROWS_PER_TASK;
    // SAFETY: the chunks cover the whole output and the row kernel writes every element of
    // its chunk (as many rows as the input's).
    unsafe {
        written(x.len(), |dx| {
            dx.par_chunks_mut(v * n)
                .zip(x.par_chunks(v * n))
                .zip(targets.par_chunks(n))
                .zip(lse.par_chunks(n))
                .zip(dy.par_chunks(n))
                .for_each(|((((dx, x), t), l), dy)| target_block_backward(dx, x, t, l, dy, v, s))
        })
    }
}

#[cfg(test)]
mod target_tests {
    #[test]
    fn target_logprobs_and_their_gradient_match_a_direct_computation() {
        let v = 37;
        let x: Vec<f32> = (0..3 * v)
            .map(|i| ((i * 17) % 23) as f32 * 0.3 - 3.0)
            .collect();
        let targets = [0u32, 36, 11];
        let s = 1.0 / 0.7;
        let (out, lse) = super::target_logprob_forward(&x, &targets, v, s);
        let dy = [0.5f32, -1.0, 2.0];
        let dx = super::target_logprob_backward(&dy, &x, &targets, &lse, v, s);
        for (r, &t) in targets.iter().enumerate() {
            let row = &x[r * v..(r + 1) * v];
            let z: f64 = row.iter().map(|&a| (a as f64 * s as f64).exp()).sum();
            let want = row[t as usize] as f64 * s as f64 - z.ln();
            assert!((out[r] as f64 - want).abs() < 1e-5, "row {r}");
            for j in 0..v {
                let p = (row[j] as f64 * s as f64).exp() / z;
                let g = dy[r] as f64 * s as f64 * ((j == t as usize) as u8 as f64 - p);
                assert!((dx[r * v + j] as f64 - g).abs() < 1e-5, "row {r} col {j}");
            }
        }
    }
}
