//! Weight matrices packed once as bf16 for decoding, and the product of a few rows by them.
//!
//! The bf16 twin of [`super::packed`]: where a run's products are bf16 ([`super::gemm::with_bf16`])
//! the decoder keeps each matrix in [`super::bf16`]'s panel layout (`[pair][NR columns][2]`,
//! rounded to bf16 once, at packing) and multiplies with `vdpbf16ps`, f32 sums. That halves the
//! bytes a decoding step streams (one sequence is bound by them) and doubles the multiply
//! rate (many sequences are bound by that). Only built where [`super::bf16::available`].

use super::arena::Floats;
use super::bf16::{self, MR, NR, SendPtr};
use super::packed::{Order, Threads};
use super::view::View;
use rayon::prelude::*;
use std::sync::Arc;

/// A `[k, n]` matrix in bf16 column panels of [`NR`], the inner dimension in pairs (the last
/// pair and the last panel's missing columns zero-padded). A clone shares the values.
#[derive(Clone)]
pub struct Panels {
    k: usize,
    n: usize,
    buf: Arc<Floats>,
    /// Where this matrix's bf16 values start in `buf`, and how many there are.
    start: usize,
    len: usize,
}

impl Panels {
    /// Pack matrices of the given `[k, n]` shapes and value orders into one buffer (on huge
    /// pages, as [`super::packed::Packed::new_all`]), on rayon's threads; `values(i)` gives
    /// matrix `i`'s values, called once for each by the thread that packs it. Panics if the
    /// CPU lacks AVX512_BF16.
    pub fn new_all<V: AsRef<[f32]>>(
        shapes: &[(usize, usize, Order)],
        values: impl Fn(usize) -> V + Sync,
    ) -> Vec<Panels> {
        assert!(bf16::available(), "bf16 panels need AVX512_BF16");
        let sizes: Vec<usize> = shapes.iter().map(|&(k, n, _)| size(k, n)).collect();
        let total: usize = sizes.iter().sum();
        // Every size is even (two values a pair), so the floats hold the bf16 values exactly.
        let mut buf = Floats::reused(total / 2);
        // SAFETY: `total / 2` floats are `total` u16 values of the same memory; u16's
        // alignment divides f32's; the view lives only while `buf` is borrowed here.
        let all: &mut [u16] =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u16>(), total) };
        let mut parts = Vec::with_capacity(shapes.len());
        let mut rest = all;
        for &len in &sizes {
            let (part, tail) = rest.split_at_mut(len);
            parts.push(part);
            rest = tail;
        }
        parts
            .into_par_iter()
            .zip(shapes)
            .enumerate()
            .for_each(|(i, (part, &(k, n, order)))| {
                let v = values(i);
                let w = v.as_ref();
                assert_eq!(w.len(), k * n, "matrix is not {k}×{n}");
                let b = match order {
                    Order::Rows => View::new(w, k, n),
                    Order::Columns => View::new(w, n, k).t(),
                };
                let per = k.div_ceil(2) * NR * 2;
                for (p, panel) in part.chunks_exact_mut(per).enumerate() {
                    // A kept buffer holds old values; the pads must be zeros.
                    panel.fill(0);
                    bf16::pack_panel(b, p, panel);
                }
            });
        let buf = Arc::new(buf);
        let mut start = 0;
        shapes
            .iter()
            .zip(sizes)
            .map(|(&(k, n, _), len)| {
                let p = Panels {
                    k,
                    n,
                    buf: Arc::clone(&buf),
                    start,
                    len,
                };
                start += len;
                p
            })
            .collect()
    }

    /// A `[k, n]` matrix (values in `order`) and its transpose `[n, k]`, packed into one
    /// buffer: `[matrix, transpose]`.
    pub fn with_transpose(k: usize, n: usize, order: Order, values: &[f32]) -> [Panels; 2] {
        let other = match order {
            Order::Rows => Order::Columns,
            Order::Columns => Order::Rows,
        };
        Panels::new_all(&[(k, n, order), (n, k, other)], |_| values)
            .try_into()
            .unwrap_or_else(|_| unreachable!("two shapes give two panels"))
    }

    /// Pack one row-major `[k, n]` matrix.
    pub fn new(w: &[f32], k: usize, n: usize) -> Panels {
        Panels::new_all(&[(k, n, Order::Rows)], |_| w)
            .pop()
            .expect("one matrix packed")
    }

    fn data(&self) -> &[u16] {
        // SAFETY: as in new_all: the buffer's floats are 2·len u16 values, written there.
        let all: &[u16] = unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr().cast::<u16>(), self.buf.len() * 2)
        };
        &all[self.start..self.start + self.len]
    }

    /// Inputs `k`.
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Outputs `n`.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// `dst[m, n] = a[m, k] · self`, or `+=` when `accumulate`; row-major, contiguous; `a`
    /// rounded to bf16, sums in f32; the panels split between `threads`.
    pub fn matmul(
        &self,
        dst: &mut [f32],
        a: &[f32],
        m: usize,
        accumulate: bool,
        threads: Threads<'_>,
    ) {
        let (k, n) = (self.k, self.n);
        assert!(
            a.len() >= m * k && dst.len() >= m * n,
            "matmul: buffers too small"
        );
        let pairs = k.div_ceil(2);
        // Each row in bf16, padded to whole pairs (the pad multiplies zeros).
        let mut ap = vec![0u16; m * 2 * pairs];
        for (row, src) in ap.chunks_exact_mut(2 * pairs).zip(a.chunks_exact(k)) {
            bf16::convert(src, &mut row[..k]);
        }
        let data = self.data();
        let per = pairs * NR * 2;
        let out = SendPtr(dst.as_mut_ptr());
        threads.split(n.div_ceil(NR), m * n * k, |range| {
            for p in range {
                let panel = &data[p * per..(p + 1) * per];
                let cols = NR.min(n - p * NR);
                let mut r = 0;
                while r < m {
                    let rows = MR.min(m - r);
                    let block = &ap[r * 2 * pairs..(r + rows) * 2 * pairs];
                    // SAFETY: rows r .. r + rows and columns p·NR .. + cols lie inside dst's
                    // m·n elements (asserted above), which are initialised; only this call
                    // writes this panel's columns (split gives disjoint panel ranges); the CPU
                    // has AVX512_BF16 (the panels could not be built otherwise).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let at = out.at(r * n + p * NR);
                        bf16::x86::block(block, rows, pairs, panel, at, n, cols, accumulate);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("bf16 panels exist only on x86-64: {block:?} {panel:?} {cols}");
                    r += rows;
                }
            }
        });
    }
}

/// bf16 values of a packed `[k, n]` matrix.
fn size(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k.div_ceil(2) * NR * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the product of the bf16-rounded operands in f64, at panel and block edges, odd
    /// `k`, both value orders, with and without accumulation, on one thread and on rayon's.
    #[test]
    fn matches_the_product_of_rounded_operands() {
        if !bf16::available() {
            return;
        }
        let round = |x: f32| half::bf16::from_f32(x).to_f32() as f64;
        for (m, k, n) in [
            (1, 1, 1),
            (7, 5, 33),
            (13, 64, 70),
            (6, 33, 32),
            (64, 97, 65),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 29.0)
                .collect();
            let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            let shapes = [(k, n, Order::Rows), (k, n, Order::Columns)];
            let both = Panels::new_all(&shapes, |i| if i == 0 { &w } else { &wt });
            for (panels, threads) in both.iter().zip([Threads::One, Threads::Rayon]) {
                for accumulate in [false, true] {
                    let before: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
                    let mut got = before.clone();
                    panels.matmul(&mut got, &a, m, accumulate, threads);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want: f64 = (0..k)
                                .map(|q| round(a[i * k + q]) * round(w[q * n + j]))
                                .sum();
                            if accumulate {
                                want += before[i * n + j] as f64;
                            }
                            let g = got[i * n + j] as f64;
                            assert!(
                                (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "({m},{k},{n}) acc {accumulate} [{i},{j}]: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
