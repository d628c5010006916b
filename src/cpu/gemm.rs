//! Matrix products for the fused training ops, written straight into fresh memory.
//!
//! burn 0.22's flex matmul allocates each output as zeroed bytes and then copies it into an
//! aligned buffer (its allocation reports byte alignment), so every product paid a page-faulting
//! zeroing and a full copy on the calling thread (docs/PERF.md has the profile).
//! Here the same `gemm` crate writes its result into uninitialised memory that becomes the
//! output tensor as is. Operands are strided views, so transposes cost nothing, except a
//! column-major right-hand side `gemm` would lay out on one thread: that one is copied
//! row-major on every core first ([`super::transpose`]).

use super::simd::{Uninit, written};
use super::transpose::transpose;
pub use super::view::View;

/// Products from this many multiply-adds run on every core (burn flex's threshold).
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// Left-hand rows from which a column-major right-hand side is copied row-major first (see
/// [`matmul`]).
const TRANSPOSE_ROWS: usize = 64;

thread_local! {
    /// Products on this thread with bf16 operands ([`with_bf16`]).
    static BF16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with this thread's products from [`PARALLEL_OPS`] multiply-adds (with a row-major
/// left-hand side, and a right-hand side row-major or a row-major matrix's transpose) taking
/// bf16 operands (f32 sums, [`super::bf16`]) when `on` and the CPU has AVX512_BF16; returns
/// whether they do, and `f`'s result. The setting is per thread (a stage's training loop), so
/// concurrent work elsewhere keeps f32.
pub fn with_bf16<R>(on: bool, f: impl FnOnce() -> R) -> (bool, R) {
    let on = on && super::bf16::available();
    let before = BF16.replace(on);
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16.set(self.0);
        }
    }
    let _restore = Restore(before);
    (on, f())
}

/// Whether this thread's products take bf16 operands (inside [`with_bf16`] on a CPU that has
/// them): the decoder built on this thread then packs its weights as bf16 too.
pub fn bf16_on() -> bool {
    BF16.get()
}

thread_local! {
    /// The row-major copy's buffer, kept between products (a fresh one per product is
    /// megabytes of pages to fault in and zero at every backward step).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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
    let parallel = m.saturating_mul(n).saturating_mul(k) >= PARALLEL_OPS;
    // bf16 where `cpu::bf16` packs both operands fast: `a` row-major, `b` row-major or the
    // transpose of a row-major matrix (a backward pass's `Wᵀ`, the tied head's `embedᵀ`); a
    // weight gradient's `xᵀ · dy` stays f32.
    if parallel && BF16.get() && a.col_stride == 1 && (b.col_stride == 1 || b.row_stride == 1) {
        return super::bf16::matmul(a, b);
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // A column-major `b` with no more columns than rows (a backward pass's `dy · Wᵀ`) is one
    // `gemm` re-lays out on the calling thread at every call, the other cores waiting; copied
    // row-major here on every core first, the product runs as fast as a forward one
    // (docs/PERF.md). With more columns (the tied head's `embedᵀ`), `gemm` packs it on every
    // core itself.
    if parallel
        && b.row_stride == 1
        && b.col_stride != 1
        && m >= TRANSPOSE_ROWS
        && n <= k
        && let Some(out) = SCRATCH.with(|s| {
            // Busy only if a product is nested in one: that one leaves `b` to `gemm`.
            let mut buf = s.try_borrow_mut().ok()?;
            let len = buf.len().max(k * n);
            buf.resize(len, 0.0);
            transpose(b.data, k, n, b.col_stride, &mut buf[..k * n], n);
            Some(gemm_into(a, View::new(&buf[..k * n], k, n), parallelism))
        })
    {
        return out;
    }
    gemm_into(a, b, parallelism)
}

/// `dst += a · b` for `dst` row-major `[a.rows, b.cols]` (in f32: a LoRA update's low-rank
/// product added into its base product's output). Panics if the sizes differ or a view reaches
/// outside its data.
pub fn matmul_add(dst: &mut [f32], a: View<'_>, b: View<'_>) {
    assert_eq!(a.cols, b.rows, "matmul_add: inner sizes differ");
    assert!(
        a.in_bounds() && b.in_bounds() && dst.len() >= a.rows * b.cols,
        "matmul_add: view outside its data"
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if k == 0 || m == 0 || n == 0 {
        return;
    }
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_OPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst holds m·n initialised elements (a `&mut` borrow, so aliasing neither a nor
    // b); the views stay inside their data (asserted above).
    unsafe { gemm_raw(dst.as_mut_ptr(), true, a, b, parallelism) }
}

/// `a · b` by `gemm` into fresh memory (`k > 0`, shapes and bounds checked by the caller).
fn gemm_into(a: View<'_>, b: View<'_>, parallelism: gemm::Parallelism) -> Vec<f32> {
    let (m, n) = (a.rows, b.cols);
    let fill = |out: &mut [Uninit]| {
        // SAFETY: out holds m·n elements; with `read` false gemm only writes them (every one,
        // k > 0) and never reads them; the views stay inside their data (asserted by the
        // caller), and neither aliases out.
        unsafe { gemm_raw(out.as_mut_ptr().cast::<f32>(), false, a, b, parallelism) }
    };
    // SAFETY: `fill` writes every one of the m·n outputs (k > 0, see above).
    unsafe { written(m * n, fill) }
}

/// `dst = a · b`, or `dst += a · b` when `read`, by `gemm`; `dst` row-major `[a.rows, b.cols]`.
///
/// # Safety
/// `dst` must point at `a.rows · b.cols` writable floats, initialised when `read`, aliasing
/// neither view's data; every element the views' strides name must lie inside their data.
unsafe fn gemm_raw(
    dst: *mut f32,
    read: bool,
    a: View<'_>,
    b: View<'_>,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let stride = |s: usize| isize::try_from(s).expect("matmul: stride fits isize");
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            stride(n),
            read,
            a.data.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            if read { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_bf16_routes_large_products_on_this_thread_only_and_restores() {
        let (m, k, n) = (200, 200, 200);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 7.0 + 0.001).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 / 5.0 + 0.001).collect();
        let (av, bv) = (View::new(&a, m, k), View::new(&b, k, n));
        let f32_out = matmul(av, bv);
        let (on, inside) = with_bf16(true, || matmul(av, bv));
        assert_eq!(on, crate::cpu::bf16::available());
        if on {
            assert_eq!(inside, crate::cpu::bf16::matmul(av, bv));
            assert_ne!(inside, f32_out, "bf16 operands round");
        } else {
            assert_eq!(inside, f32_out);
        }
        // Another thread, and this one afterwards, multiply in f32.
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                with_bf16(true, || {
                    std::thread::scope(|t| t.spawn(|| matmul(av, bv)).join())
                })
            })
            .join()
        });
        assert_eq!(other.unwrap().1.unwrap(), f32_out);
        assert_eq!(matmul(av, bv), f32_out);
    }

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
        // The last two: a transposed right-hand side copied row-major first (see `matmul`).
        for &(m, k, n) in &[
            (3, 5, 7),
            (37, 19, 41),
            (200, 192, 210),
            (100, 400, 200),
            (70, 351, 301),
        ] {
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
            // Added into what is there: `dst + a · b`, through a transposed `b` too.
            let before: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut dst = before.clone();
            matmul_add(&mut dst, va, vbt);
            let added = want.iter().zip(&before).zip(&dst);
            assert!(
                added
                    .into_iter()
                    .all(|((w, b), d)| (w + b - d).abs() <= 1e-4 * (w + b).abs().max(1.0)),
                "added {m}×{k}×{n}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "inner sizes differ")]
    fn mismatched_inner_sizes_panic() {
        let a = [0.0f32; 6];
        matmul(View::new(&a, 2, 3), View::new(&a, 2, 3));
    }
}
