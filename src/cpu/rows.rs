//! Row kernels of RMSNorm and SwiGLU, forward and backward, on plain slices: each loop is
//! compiled a second time with AVX2/FMA (chosen at run time) and the rows are split over
//! rayon's threads in blocks of [`ROWS_PER_TASK`].

use super::math::sigmoid;
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
