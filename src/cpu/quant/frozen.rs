//! Products of a frozen matrix of blocks over many rows, for training a LoRA adapter over a
//! quantised base (QLoRA): the forward `x · Wᵀ` and the backward `dy · W`, where `W` is the
//! [`QMatrix`] (one row of blocks per output). A slab of weight rows at a time is dequantised
//! (on every core) into a small float buffer and multiplied by the training products
//! ([`crate::cpu::gemm::matmul`], so bf16 operands where the stage asks for them); the float
//! copy is never more than a slab of the matrix.

use super::QMatrix;
use crate::cpu::gemm::{View, matmul};
use rayon::prelude::*;

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

    /// `a · selfᵀ` for `a` row-major `[m, k]`: row-major `[m, n]`.
    pub fn forward_rows(&self, a: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.rows(), self.cols());
        assert!(a.len() >= m * k, "forward_rows: a too small");
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
            let fwd = q.forward_rows(&a, m);
            let bwd = q.backward_rows(&dy, m);
            let close =
                |got: f32, want: f64| (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0);
            for i in 0..m {
                for j in 0..n {
                    let want = (0..k)
                        .map(|t| a[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                    assert!(close(fwd[i * n + j], want), "{kind:?} fwd {i},{j}");
                }
                for t in 0..k {
                    let want = (0..n)
                        .map(|j| dy[i * n + j] as f64 * w[j * k + t] as f64)
                        .sum();
                    assert!(close(bwd[i * k + t], want), "{kind:?} bwd {i},{t}");
                }
            }
        }
    }
}
