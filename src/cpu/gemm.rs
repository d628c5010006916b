//! Matrix products for the fused training ops, written straight into fresh memory.
//!
//! burn 0.22's flex matmul allocates each output as zeroed bytes and then copies it into an
//! aligned buffer (its allocation reports byte alignment), so every product paid a page-faulting
//! zeroing and a full copy on the calling thread (docs/PERF.md has the profile).
//! Here the same `gemm` crate writes its result into uninitialised memory that becomes the
//! output tensor as is. Operands are strided views, so transposes cost nothing.

use super::simd::{Uninit, written};

/// Products from this many multiply-adds run on every core (burn flex's threshold).
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// A `[rows, cols]` matrix view: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element it names lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `a · b` as a row-major `[a.rows, b.cols]` vector. Panics if the inner sizes differ or a view
/// reaches outside its data.
pub fn matmul(a: View<'_>, b: View<'_>) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matmul: inner sizes differ");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul: view outside its data"
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if k == 0 {
        return vec![0.0; m * n];
    }
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_OPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| isize::try_from(s).expect("matmul: stride fits isize");
    let fill = |out: &mut [Uninit]| {
        // SAFETY: out holds m·n elements, written row-major (column stride 1, row stride n);
        // with read_dst false gemm only writes dst (every element, k > 0) and never reads it.
        // Every element of a and b the strides name lies inside their data (asserted above),
        // and neither aliases out.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr().cast::<f32>(),
                1,
                stride(n),
                false,
                a.data.as_ptr(),
                stride(a.col_stride),
                stride(a.row_stride),
                b.data.as_ptr(),
                stride(b.col_stride),
                stride(b.row_stride),
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    // SAFETY: `fill` writes every one of the m·n outputs (k > 0, see above).
    unsafe { written(m * n, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let at = |v: &View<'_>, i: usize, j: usize| v.data[i * v.row_stride + j * v.col_stride];
        let mut out = vec![0.0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols).map(|kk| at(&a, i, kk) * at(&b, kk, j)).sum();
            }
        }
        out
    }

    #[test]
    fn products_of_plain_and_transposed_views_match_the_naive_product() {
        // Small (one thread) and large (split between threads) shapes, off the kernel's edges.
        for &(m, k, n) in &[(3, 5, 7), (37, 19, 41), (200, 192, 210)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53) % 13) as f32 * 0.25).collect();
            let (va, vb) = (View::new(&a, m, k), View::new(&b, k, n));
            let want = naive(va, vb);
            let close = |got: &[f32]| {
                want.iter()
                    .zip(got)
                    .all(|(x, y)| (x - y).abs() <= 1e-4 * x.abs().max(1.0))
            };
            assert!(close(&matmul(va, vb)), "{m}×{k}×{n}");
            // The same product from transposed storage: (bᵀ)ᵀ and (aᵀ)ᵀ.
            let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let (vat, vbt) = (View::new(&at, k, m).t(), View::new(&bt, n, k).t());
            assert!(close(&matmul(vat, vbt)), "transposed {m}×{k}×{n}");
        }
    }

    #[test]
    #[should_panic(expected = "inner sizes differ")]
    fn mismatched_inner_sizes_panic() {
        let a = [0.0f32; 6];
        matmul(View::new(&a, 2, 3), View::new(&a, 2, 3));
    }
}
