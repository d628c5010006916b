//! The output head and the targets' log-probabilities in chunks of rows: `logits = h · w`
//! (`[rows, v]`) is computed [`CHUNK_ROWS`] rows at a time, reduced to each row's
//! log-probability of its target, its log-sum-exp and its entropy, and dropped; the backward
//! pass recomputes each chunk's logits. No `[rows, v]` tensor is ever whole: at a 49,152-token
//! vocabulary a GRPO micro-batch of 4,096 tokens would hold 805 MB per copy of its logits.

use super::gemm::{View, matmul};
use super::math::exp;
use super::packed::{Order, Threads};
use super::packed_bf16::Panels;
use super::rows::{target_logprob_backward, target_logprob_forward};
use rayon::prelude::*;
use std::borrow::Cow;

/// The head's `[d, v]` weight as its products read it.
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    /// A matrix view, packed by each product ([`matmul`]).
    View(View<'a>),
    /// bf16 panels of the weight and of its transpose, packed once ([`Bf16Head`]).
    Panels(&'a Bf16Head),
}

/// A head weight `[d, v]` and its transpose as bf16 panels: a bf16 run's head products read
/// these instead of packing 28M values (SmolLM2's tied head) at each of a micro-batch's three
/// head products.
pub struct Bf16Head {
    w: Panels,
    wt: Panels,
}

impl Bf16Head {
    /// Pack `w` (`[d, v]`) both ways. Panics if the CPU lacks AVX512_BF16.
    pub fn new(w: View<'_>) -> Bf16Head {
        let (d, v) = (w.rows, w.cols);
        // The values row-major `[d, v]` (`Rows`) or `[v, d]` (a tied head's embedding, read
        // transposed: `Columns`); anything else copied row-major first.
        let (values, order): (Cow<'_, [f32]>, Order) = if w.col_stride == 1 && w.row_stride == v {
            (Cow::Borrowed(&w.data[..d * v]), Order::Rows)
        } else if w.row_stride == 1 && w.col_stride == d {
            (Cow::Borrowed(&w.data[..d * v]), Order::Columns)
        } else {
            let rows = (0..d).flat_map(|i| (0..v).map(move |j| (i, j)));
            let copy = rows.map(|(i, j)| w.data[i * w.row_stride + j * w.col_stride]);
            (Cow::Owned(copy.collect()), Order::Rows)
        };
        let [w, wt] = Panels::with_transpose(d, v, order, &values);
        Bf16Head { w, wt }
    }
}

impl Weight<'_> {
    /// `(d, v)`.
    fn dims(&self) -> (usize, usize) {
        match self {
            Weight::View(w) => (w.rows, w.cols),
            Weight::Panels(p) => (p.w.rows(), p.w.cols()),
        }
    }

    /// `a · w`, or `a · wᵀ` when `transposed`.
    fn times(&self, a: View<'_>, transposed: bool) -> Vec<f32> {
        match self {
            Weight::View(w) => matmul(a, if transposed { w.t() } else { *w }),
            Weight::Panels(p) => {
                let panels = if transposed { &p.wt } else { &p.w };
                let (m, k) = (a.rows, a.cols);
                let rows: Cow<'_, [f32]> = if a.col_stride == 1 && a.row_stride == k {
                    Cow::Borrowed(&a.data[..m * k])
                } else {
                    let at = |i: usize, j: usize| a.data[i * a.row_stride + j * a.col_stride];
                    Cow::Owned((0..m * k).map(|x| at(x / k, x % k)).collect())
                };
                let mut out = vec![0.0f32; m * panels.cols()];
                panels.matmul(&mut out, &rows, m, false, Threads::Rayon);
                out
            }
        }
    }
}

/// Rows of logits alive at once (100 MB of them at 49,152 tokens).
pub const CHUNK_ROWS: usize = 512;

/// What [`forward`] returns per row: the target's log-probability under `softmax(s · logits)`,
/// the log-sum-exp (for [`backward`]) and the entropy of that distribution.
pub struct HeadOut {
    pub logp: Vec<f32>,
    pub lse: Vec<f32>,
    pub entropy: Vec<f32>,
}

/// Each row of `h` (`[rows, d]`) through the head `w` (`[d, v]`), reduced to [`HeadOut`].
pub fn forward(h: View<'_>, w: Weight<'_>, targets: &[u32], s: f32) -> HeadOut {
    assert_eq!(h.rows, targets.len(), "a target per row");
    let v = w.dims().1;
    let mut out = HeadOut {
        logp: Vec::with_capacity(h.rows),
        lse: Vec::with_capacity(h.rows),
        entropy: Vec::with_capacity(h.rows),
    };
    for r0 in (0..h.rows).step_by(CHUNK_ROWS) {
        let r1 = (r0 + CHUNK_ROWS).min(h.rows);
        let logits = w.times(rows(h, r0, r1), false);
        let (lp, lse) = target_logprob_forward(&logits, &targets[r0..r1], v, s);
        let ent: Vec<f32> = logits
            .par_chunks(v)
            .zip(&lse)
            .map(|(row, &l)| entropy(row, l, s))
            .collect();
        out.logp.extend(lp);
        out.lse.extend(lse);
        out.entropy.extend(ent);
    }
    out
}

/// The gradients of `h` (`[rows, d]`) and, when `want_w`, of `w` (`[d, v]`) from the gradient
/// `dy` of [`forward`]'s log-probabilities and, when given and not all zero, `dent` of its
/// entropies (an entropy bonus in the loss).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &[f32],
    dent: Option<&[f32]>,
    h: View<'_>,
    w: Weight<'_>,
    targets: &[u32],
    lse: &[f32],
    s: f32,
    want_w: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let dent = dent.filter(|g| g.iter().any(|&x| x != 0.0));
    let (d, v) = w.dims();
    let mut dh = Vec::with_capacity(h.rows * d);
    let mut dw: Option<Vec<f32>> = None;
    for r0 in (0..h.rows).step_by(CHUNK_ROWS) {
        let r1 = (r0 + CHUNK_ROWS).min(h.rows);
        let hc = rows(h, r0, r1);
        let logits = w.times(hc, false);
        let mut dl =
            target_logprob_backward(&dy[r0..r1], &logits, &targets[r0..r1], &lse[r0..r1], v, s);
        if let Some(g) = dent {
            dl.par_chunks_mut(v)
                .zip(logits.par_chunks(v))
                .zip(&g[r0..r1])
                .zip(&lse[r0..r1])
                .for_each(|(((dl, row), &g), &l)| entropy_backward(dl, row, g, l, s));
        }
        drop(logits);
        let dl = View::new(&dl, r1 - r0, v);
        dh.extend(w.times(dl, true));
        if want_w {
            let part = matmul(hc.t(), dl);
            match &mut dw {
                None => dw = Some(part),
                Some(acc) => acc
                    .par_chunks_mut(1 << 14)
                    .zip(part.par_chunks(1 << 14))
                    .for_each(|(a, p)| a.iter_mut().zip(p).for_each(|(a, p)| *a += p)),
            }
        }
    }
    if want_w && dw.is_none() {
        dw = Some(vec![0.0; d * v]);
    }
    (dh, dw)
}

/// Rows `r0..r1` of a matrix view.
fn rows(h: View<'_>, r0: usize, r1: usize) -> View<'_> {
    View {
        data: &h.data[r0 * h.row_stride..],
        rows: r1 - r0,
        ..h
    }
}

/// Add `g · dH/dx` to `dl` for one row: with `p = softmax(s·x)` and `H = −Σ p·log p`,
/// `dH/dx_j = −s · p_j · (log p_j + H)`.
fn entropy_backward(dl: &mut [f32], row: &[f32], g: f32, lse: f32, s: f32) {
    if g == 0.0 {
        return;
    }
    let ent = entropy(row, lse, s);
    for (d, &x) in dl.iter_mut().zip(row) {
        let logp = x * s - lse;
        *d -= g * s * exp(logp) * (logp + ent);
    }
}

/// `−Σ p·log p` of `softmax(s · row)` given its log-sum-exp: `lse − s·Σ p·x`.
fn entropy(row: &[f32], lse: f32, s: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += exp(x * s - lse) * x;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&x| exp(x * s - lse) * x)
        .sum();
    lse - s * (acc.iter().sum::<f32>() + tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values and gradients against the whole-logits computation in f64, over more rows than
    /// a chunk (a partial last chunk) and a transposed (tied-head) weight view.
    #[test]
    fn chunked_head_matches_whole_logits() {
        let (n, d, v) = (CHUNK_ROWS + 37, 6, 11);
        let val = |i: usize, m: usize| ((i * m) % 97) as f32 / 97.0 - 0.5;
        let h: Vec<f32> = (0..n * d).map(|i| val(i, 31)).collect();
        // The weight stored as `[v, d]` and read transposed, as a tied head is.
        let wt: Vec<f32> = (0..v * d).map(|i| 3.0 * val(i, 17)).collect();
        let w = View::new(&wt, v, d).t();
        let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
        let dy: Vec<f32> = (0..n).map(|i| val(i, 13)).collect();
        // An entropy bonus's gradient on every other row.
        let dent: Vec<f32> = (0..n).map(|i| (i % 2) as f32 * val(i, 29)).collect();
        let s = 1.25;
        let hv = View::new(&h, n, d);
        let out = forward(hv, Weight::View(w), &targets, s);
        let (dh, dw) = backward(
            &dy,
            Some(&dent),
            hv,
            Weight::View(w),
            &targets,
            &out.lse,
            s,
            true,
        );
        // The same through bf16 panels of the weight: within bf16's rounding of the above.
        if crate::cpu::bf16::available() {
            let packed = Bf16Head::new(w);
            let p = Weight::Panels(&packed);
            let out_b = forward(hv, p, &targets, s);
            let (dh_b, _) = backward(&dy, Some(&dent), hv, p, &targets, &out_b.lse, s, false);
            let apart = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            assert!(apart(&out_b.logp, &out.logp) < 2e-2, "bf16 logp");
            assert!(apart(&out_b.entropy, &out.entropy) < 2e-2, "bf16 entropy");
            assert!(apart(&dh_b, &dh) < 2e-2, "bf16 dh");
            assert!(apart(&out_b.logp, &out.logp) > 0.0, "bf16 rounds");
        }
        let dw = dw.unwrap();
        let mut want_dw = vec![0f64; d * v];
        for r in 0..n {
            let logit = |j: usize| -> f64 {
                (0..d)
                    .map(|k| h[r * d + k] as f64 * wt[j * d + k] as f64)
                    .sum::<f64>()
                    * s as f64
            };
            let z: Vec<f64> = (0..v).map(logit).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let p: Vec<f64> = z.iter().map(|x| (x - lse).exp()).collect();
            let t = targets[r] as usize;
            assert!((out.logp[r] as f64 - (z[t] - lse)).abs() < 1e-4, "logp {r}");
            let ent: f64 = -p.iter().map(|p| p * p.ln()).sum::<f64>();
            assert!((out.entropy[r] as f64 - ent).abs() < 1e-4, "entropy {r}");
            // d logp / d z_j = 1[j = t] − p_j and dH / dz_j = −p_j (log p_j + H); z = s · h · w.
            let g: Vec<f64> = (0..v)
                .map(|j| {
                    s as f64
                        * (dy[r] as f64 * ((j == t) as u8 as f64 - p[j])
                            - dent[r] as f64 * p[j] * (p[j].ln() + ent))
                })
                .collect();
            for k in 0..d {
                let want: f64 = (0..v).map(|j| g[j] * wt[j * d + k] as f64).sum();
                assert!((dh[r * d + k] as f64 - want).abs() < 1e-4, "dh {r} {k}");
                for j in 0..v {
                    want_dw[k * v + j] += h[r * d + k] as f64 * g[j];
                }
            }
        }
        for (got, want) in dw.iter().zip(&want_dw) {
            assert!((*got as f64 - want).abs() < 1e-3, "dw {got} vs {want}");
        }
    }
}
