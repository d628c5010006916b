//! Products of a frozen matrix of blocks over many rows, for training a LoRA adapter over a
//! quantised base (QLoRA): the forward `x · Wᵀ` and the backward `dy · W`, where `W` is the
//! [`QMatrix`] (one row of blocks per output). A slab of weight rows at a time is dequantised
//! (on every core) into a small float buffer and multiplied by the training products
//! ([`crate::cpu::gemm::matmul`]); the float copy is never more than a slab of the matrix.
//!
//! Where the stage's products are bf16 ([`crate::cpu::gemm::with_bf16`]) the matrix is instead
//! packed once as bf16 panels for both products and kept ([`Bf16Panels`]): a frozen matrix
//! never changes, and dequantising and packing it again at every product cost more than the
//! panels' memory (docs/PERF.md). The decoder of a bf16 run samples from the same panels.

use super::QMatrix;
use crate::cpu::gemm::{View, bf16_on, matmul};
use crate::cpu::packed::{Order, Threads};
use crate::cpu::packed_bf16::Panels;
use rayon::prelude::*;
use std::sync::Arc;

/// A frozen matrix `W` (`[n, k]`, a row per output) as bf16 panels: `Wᵀ` `[k, n]` for the
/// forward product `x · Wᵀ`, and `W` `[n, k]` for the backward one `dy · W`.
pub struct Bf16Panels {
    pub forward: Panels,
    pub backward: Panels,
}

/// Floats of one dequantised slab (a few hundred weight rows: 1 MiB).
const SLAB_FLOATS: usize = 1 << 18;

impl QMatrix {
    /// Weight rows per slab: whole multiples of 16, at least 64.
    fn slab_rows(&self) -> usize {
        (SLAB_FLOATS / self.rows().max(1)).max(64) / 16 * 16
    }

    /// Weight rows `j0..j0 + width` as floats, row-major `[width, k]`, into `buf`.
    fn slab(&self, j0: usize, width: usize, buf: &mut Vec<f32>) {
        buf.resize(width * self.rows(), 0.0);
        self.rows_into(j0, buf);
    }

    /// Weight rows from `j0` as floats into `out` (whole rows of `k`), on every core.
    fn rows_into(&self, j0: usize, out: &mut [f32]) {
        out.par_chunks_mut(self.rows())
            .enumerate()
            .for_each(|(r, row)| self.row_f32(j0 + r, row));
    }

    /// Every weight row as floats, row-major `[n, k]` (one row per output).
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.cols() * self.rows()];
        self.rows_into(0, &mut out);
        out
    }

    /// The matrix as bf16 panels for both products, packed on the first call and kept; `None`
    /// unless this thread's products are bf16 ([`bf16_on`]).
    pub fn bf16_panels(&self) -> Option<Arc<Bf16Panels>> {
        if !bf16_on() {
            return None;
        }
        let pack = || {
            // `[n, k]` rows: `Wᵀ` for the forward product, and its transpose `W`.
            let w = self.dequantized();
            let [forward, backward] =
                Panels::with_transpose(self.rows(), self.cols(), Order::Columns, &w);
            Arc::new(Bf16Panels { forward, backward })
        };
        Some(Arc::clone(self.bf16.get_or_init(pack)))
    }

    /// `a · selfᵀ` for `a` row-major `[m, k]`: row-major `[m, n]`.
    pub fn forward_rows(&self, a: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.rows(), self.cols());
        assert!(a.len() >= m * k, "forward_rows: a too small");
        if let Some(p) = self.bf16_panels() {
            let mut out = vec![0.0f32; m * n];
            p.forward
                .matmul(&mut out, &a[..m * k], m, false, Threads::Rayon);
            return out;
        }
        let mut out = vec![0.0f32; m * n];
        let mut buf = Vec::new();
        let step = self.slab_rows();
        for j0 in (0..n).step_by(step) {
            let width = step.min(n - j0);
            self.slab(j0, width, &mut buf);
            let part = matmul(View::new(&a[..m * k], m, k), View::new(&buf, width, k).t());
            out.par_chunks_mut(n)
                .zip(part.par_chunks(width))
                .for_each(|(o, p)| o[j0..j0 + width].copy_from_slice(p));
        }
        out
    }

    /// `dy · self` for `dy` row-major `[m, n]`: row-major `[m, k]` (the gradient of the
    /// forward's input).
    pub fn backward_rows(&self, dy: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.rows(), self.cols());
        assert!(dy.len() >= m * n, "backward_rows: dy too small");
        if let Some(p) = self.bf16_panels() {
            let mut out = vec![0.0f32; m * k];
            p.backward
                .matmul(&mut out, &dy[..m * n], m, false, Threads::Rayon);
            return out;
        }
        let mut out: Option<Vec<f32>> = None;
        let mut buf = Vec::new();
        let step = self.slab_rows();
        for j0 in (0..n).step_by(step) {
            let width = step.min(n - j0);
            self.slab(j0, width, &mut buf);
            let cols = View {
                data: &dy[j0..],
                rows: m,
                cols: width,
                row_stride: n,
                col_stride: 1,
            };
            let part = matmul(cols, View::new(&buf, width, k));
            match &mut out {
                None => out = Some(part),
                Some(o) => o
                    .par_chunks_mut(k)
                    .zip(part.par_chunks(k))
                    .for_each(|(o, p)| o.iter_mut().zip(p).for_each(|(o, p)| *o += p)),
            }
        }
        out.unwrap_or_else(|| vec![0.0; m * k])
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, dequantize};
    use super::*;
    use crate::cpu::gemm::with_bf16;
    use std::sync::Arc;

    /// A matrix of `n` rows of `k` random-ish weights in `kind`'s blocks (via ggml's own
    /// quantiser for Q8_0 / Q4_1), with its exact float values.
    fn matrix(kind: Kind, k: usize, n: usize) -> (QMatrix, Vec<f32>) {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.2)
            .collect();
        let store = match kind {
            Kind::Q8_0 => crate::model::gguf_write::Store::Q8_0,
            _ => crate::model::gguf_write::Store::Q4_1,
        };
        let bytes = crate::model::gguf_write::quantize(&w, store);
        let rb = kind.row_bytes(k);
        let exact: Vec<f32> = (0..n)
            .flat_map(|j| dequantize(kind, &bytes[j * rb..(j + 1) * rb], k))
            .collect();
        let q = QMatrix::new(
            k,
            Arc::new(bytes),
            vec![(kind, (0..n).map(|j| j * rb).collect())],
        );
        (q, exact)
    }

    #[test]
    fn slab_products_match_the_f64_definition() {
        // One slab and several (k = 2048 gives 128-row slabs), a ragged last slab.
        for &(kind, m, k, n) in &[
            (Kind::Q8_0, 5, 64, 40),
            (Kind::Q4_1, 33, 2048, 300),
            (Kind::Q8_0, 70, 2048, 129),
        ] {
            let (q, w) = matrix(kind, k, n);
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
                .collect();
            let dy: Vec<f32> = (0..m * n)
                .map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0)
                .collect();
            check(&q, &w, &a, &dy, (m, k, n), &|x| x as f64);
            // bf16 products: the panels kept, the operands rounded to bf16.
            if crate::cpu::bf16::available() {
                let round = |x: f32| half::bf16::from_f32(x).to_f32() as f64;
                with_bf16(true, || check(&q, &w, &a, &dy, (m, k, n), &round));
                assert!(q.bf16.get().is_some(), "the panels are kept");
            }
        }
    }

    /// Both products of `q` (exact values `w`, `[n, k]`) against the f64 definition over
    /// operands passed through `round`.
    fn check(
        q: &QMatrix,
        w: &[f32],
        a: &[f32],
        dy: &[f32],
        (m, k, n): (usize, usize, usize),
        round: &dyn Fn(f32) -> f64,
    ) {
        let fwd = q.forward_rows(a, m);
        let bwd = q.backward_rows(dy, m);
        let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0);
        for i in 0..m {
            for j in 0..n {
                let want = (0..k)
                    .map(|t| round(a[i * k + t]) * round(w[j * k + t]))
                    .sum();
                assert!(close(fwd[i * n + j], want), "fwd {i},{j}");
            }
            for t in 0..k {
                let want = (0..n)
                    .map(|j| round(dy[i * n + j]) * round(w[j * k + t]))
                    .sum();
                assert!(close(bwd[i * k + t], want), "bwd {i},{t}");
            }
        }
    }
}
