//! One AdamW step over a parameter, its gradient and both moments in a single pass: burn's
//! AdamW makes about fourteen whole-tensor passes (each into fresh memory) per parameter,
//! which at 135M parameters was a fifth of a full fine-tuning step (docs/PERF.md). The
//! arithmetic is burn's, in its order, so the two give the same values.

use super::simd::{Uninit, avx2_dispatch, written};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

/// AdamW's hyper-parameters for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 − lr · weight_decay`, the decay's factor on the parameter.
    pub decay: f32,
    pub lr: f32,
    /// The step's `1 − β₁ᵗ` and `1 − β₂ᵗ` (bias corrections).
    pub correction_1: f32,
    pub correction_2: f32,
}

impl Hyper {
    /// The values for step `time` (1 for the first) with learning rate `lr` and decoupled
    /// weight decay `weight_decay`, computed as burn computes them.
    pub fn at(
        time: usize,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
    ) -> Hyper {
        let t = time as i32;
        Hyper {
            beta_1,
            beta_2,
            epsilon,
            decay: (1.0 - lr * weight_decay as f64) as f32,
            lr: lr as f32,
            correction_1: 1.0 - beta_1.powi(t),
            correction_2: 1.0 - beta_2.powi(t),
        }
    }
}

/// One element's update: the moments in place, the new parameter returned.
#[inline(always)]
fn update(p: f32, g: f32, m: &mut f32, v: &mut f32, h: Hyper) -> f32 {
    *m = *m * h.beta_1 + g * (1.0 - h.beta_1);
    *v = *v * h.beta_2 + g * g * (1.0 - h.beta_2);
    let delta = (*m / h.correction_1) / ((*v / h.correction_2).sqrt() + h.epsilon);
    p * h.decay - delta * h.lr
}

#[inline(always)]
fn step_rows(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *p = update(*p, g, m, v, h);
    }
}

#[inline(always)]
fn step_rows_into(
    out: &mut [Uninit],
    p: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: Hyper,
) {
    let moments = m.iter_mut().zip(v.iter_mut());
    for (((o, &p), &g), (m, v)) in out.iter_mut().zip(p).zip(g).zip(moments) {
        o.write(update(p, g, m, v, h));
    }
}

avx2_dispatch!(fn step_block(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) = step_rows;);
avx2_dispatch!(fn step_block_into(out: &mut [Uninit], p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) = step_rows_into;);

/// Update `p`, `m` and `v` in place with gradient `g`, in chunks on rayon's threads. Moments
/// of a first step are zeros. Panics if the lengths differ.
pub fn step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) {
    let n = p.len();
    assert!(
        g.len() == n && m.len() == n && v.len() == n,
        "adamw: lengths differ"
    );
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| step_block(p, g, m, v, h));
}

/// [`step`] for a parameter that cannot be updated in place (its memory is shared): the new
/// values in fresh memory, the moments still in place.
pub fn step_into(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) -> Vec<f32> {
    let n = p.len();
    assert!(
        g.len() == n && m.len() == n && v.len() == n,
        "adamw: lengths differ"
    );
    let fill = |out: &mut [Uninit]| {
        out.par_chunks_mut(CHUNK)
            .zip(p.par_chunks(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|((((o, p), g), m), v)| step_block_into(o, p, g, m, v, h));
    };
    // SAFETY: the chunks of `out` cover it and each element is written once.
    unsafe { written(n, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_match_the_formula_with_bias_correction_and_decay() {
        // Enough elements for several chunks; gradients of both signs and of zero.
        let n = 3 * CHUNK + 17;
        let g1: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let g2: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 11) as f32 * 0.5 - 2.5)
            .collect();
        let p0: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8).collect();
        let (b1, b2, eps, wd, lr) = (0.9f32, 0.95f32, 1e-8f32, 0.1f32, 1e-3f64);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        step(
            &mut p,
            &g1,
            &mut m,
            &mut v,
            Hyper::at(1, lr, b1, b2, eps, wd),
        );
        step(
            &mut p,
            &g2,
            &mut m,
            &mut v,
            Hyper::at(2, lr, b1, b2, eps, wd),
        );
        for i in (0..n).step_by(997) {
            let (mut pi, mut mi, mut vi) = (p0[i] as f64, 0.0f64, 0.0f64);
            for (t, g) in [(1, g1[i] as f64), (2, g2[i] as f64)] {
                mi = b1 as f64 * mi + (1.0 - b1 as f64) * g;
                vi = b2 as f64 * vi + (1.0 - b2 as f64) * g * g;
                let mh = mi / (1.0 - (b1 as f64).powi(t));
                let vh = vi / (1.0 - (b2 as f64).powi(t));
                pi = pi * (1.0 - lr * wd as f64) - lr * mh / (vh.sqrt() + eps as f64);
            }
            assert!((p[i] as f64 - pi).abs() < 1e-6, "p[{i}]: {} vs {pi}", p[i]);
            assert!((m[i] as f64 - mi).abs() < 1e-5, "m[{i}]");
            assert!((v[i] as f64 - vi).abs() < 1e-4 * vi.max(1.0), "v[{i}]");
        }
    }
}
