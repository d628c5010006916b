//! Matrix products with bf16 operands and f32 accumulation, on AVX512_BF16 (`vdpbf16ps`: per
//! lane two bf16 products added to an f32, twice the f32 FMA's work per instruction). Training
//! runs its products here when the run's precision is bf16 and the CPU has the instruction
//! ([`available`]); every operand is rounded to bf16 (nearest, ties to even) as it is packed,
//! the sums stay f32, as mixed-precision training does on GPUs.
//!
//! `b` is packed in panels of [`NR`] columns whose rows come in pairs (`[k/2][NR][2]`: one
//! 512-bit load holds 16 columns' pairs); `a` row-major with each row's pairs adjacent, so a
//! pair is one 32-bit broadcast. The micro-kernel keeps `R × NR` sums (up to 6 × 32) in
//! registers while it streams a panel; panels split over rayon's threads.

use super::simd::written;
use super::view::View;
use rayon::prelude::*;

/// Columns per panel: two 16-lane registers.
pub(super) const NR: usize = 32;
/// Rows per register block.
pub(super) const MR: usize = 6;

/// Whether this CPU runs [`matmul`] (AVX512_BF16 with AVX-512F and BW).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        has!("avx512bf16") && has!("avx512f") && has!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` rounded to bf16 (nearest, ties to even), as its bits.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// `src` rounded to bf16 into `dst` (the shorter length), 16 at a time where the CPU has
/// AVX512_BF16.
pub(super) fn convert(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has the features (checked just above).
        return unsafe { x86::convert(src, dst) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bf16(x);
    }
}

/// `a · b` as a row-major `[a.rows, b.cols]` vector, operands rounded to bf16, sums in f32.
/// Panics if the inner sizes differ or the CPU lacks AVX512_BF16 ([`available`]).
pub fn matmul(a: View<'_>, b: View<'_>) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matmul: inner sizes differ");
    assert!(available(), "bf16 products need AVX512_BF16");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let pairs = k.div_ceil(2);
    let at = |v: &View<'_>, i: usize, j: usize| v.data[i * v.row_stride + j * v.col_stride];
    // `a` row-major in bf16, each row padded to whole pairs (the pad multiplies zeros).
    let mut ap = vec![0u16; m * 2 * pairs];
    ap.par_chunks_mut(2 * pairs)
        .enumerate()
        .for_each(|(i, row)| {
            if a.col_stride == 1 {
                let src = &a.data[i * a.row_stride..i * a.row_stride + k];
                // SAFETY: the CPU has AVX512_BF16 (asserted above); row holds ≥ k elements.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::convert(src, &mut row[..k])
                };
                return;
            }
            for (j, x) in row.iter_mut().take(k).enumerate() {
                *x = bf16(at(&a, i, j));
            }
        });
    // `b` in panels of NR columns, `[pair][column][2]`, the last panel's missing columns 0.
    let panels = n.div_ceil(NR);
    let mut bp = vec![0u16; panels * pairs * NR * 2];
    bp.par_chunks_mut(pairs * NR * 2)
        .enumerate()
        .for_each(|(p, panel)| pack_panel(b, p, panel));
    // SAFETY: every panel's task writes every row's columns of its panel, so all m·n outputs;
    // tasks write disjoint panels; the CPU has the features (asserted above).
    unsafe {
        written(m * n, |out| {
            let out = SendPtr(out.as_mut_ptr().cast::<f32>());
            (0..panels).into_par_iter().for_each(|p| {
                let panel = &bp[p * pairs * NR * 2..(p + 1) * pairs * NR * 2];
                let cols = NR.min(n - p * NR);
                let mut r = 0;
                while r < m {
                    let rows = MR.min(m - r);
                    let a_rows = &ap[r * 2 * pairs..(r + rows) * 2 * pairs];
                    // Rows r .. r + rows and columns p·NR .. + cols lie inside the m·n
                    // output; only this task writes this panel's columns (the enclosing
                    // unsafe block's contract).
                    #[cfg(target_arch = "x86_64")]
                    {
                        let dst = out.at(r * n + p * NR);
                        x86::block(a_rows, rows, pairs, panel, dst, n, cols, false);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("available() is false: {a_rows:?} {panel:?}");
                    r += rows;
                }
            });
        })
    }
}

/// Panel `p` of `b` (its columns `p·NR ..`) into `panel` (`pairs·NR·2` bf16, zeroed: the
/// pad rows and the last panel's missing columns are left 0), `[pair][column][2]`.
pub(super) fn pack_panel(b: View<'_>, p: usize, panel: &mut [u16]) {
    assert!(available(), "bf16 packing needs AVX512_BF16");
    let (k, n) = (b.rows, b.cols);
    let pairs = k.div_ceil(2);
    debug_assert_eq!(panel.len(), pairs * NR * 2);
    let at = |i: usize, j: usize| b.data[i * b.row_stride + j * b.col_stride];
    if b.col_stride == 1 && (p + 1) * NR <= n {
        // Whole panels of a row-major `b`: two rows at a time, 16 columns per step.
        for (q, pair) in panel.chunks_exact_mut(NR * 2).enumerate() {
            let row = |r: usize| &b.data[r * b.row_stride + p * NR..][..NR];
            let second = (2 * q + 1 < k).then(|| row(2 * q + 1));
            // SAFETY: the CPU has AVX512_BF16 (asserted above); rows hold NR floats, pair
            // 2·NR slots.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::interleave(row(2 * q), second, pair)
            };
        }
        return;
    }
    if b.row_stride == 1 && b.col_stride >= k {
        // A transposed row-major matrix (`Wᵀ`, a tied head's `embedᵀ`): column j of `b` is a
        // contiguous row whose pairs are the panel's pairs for column j.
        let mut col = vec![0u16; 2 * pairs];
        for c in 0..NR.min(n - p * NR) {
            let j = p * NR + c;
            let src = &b.data[j * b.col_stride..j * b.col_stride + k];
            // SAFETY: the CPU has AVX512_BF16; col holds ≥ k elements.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::convert(src, &mut col[..k])
            };
            for (q, two) in col.chunks_exact(2).enumerate() {
                let at = (q * NR + c) * 2;
                panel[at..at + 2].copy_from_slice(two);
            }
        }
        return;
    }
    for (q, pair) in panel.chunks_exact_mut(NR * 2).enumerate() {
        for (c, slot) in pair.chunks_exact_mut(2).enumerate() {
            let j = p * NR + c;
            if j < n {
                slot[0] = bf16(at(2 * q, j));
                if 2 * q + 1 < k {
                    slot[1] = bf16(at(2 * q + 1, j));
                }
            }
        }
    }
}

/// An output pointer shared by the threads of one product, each writing its own panels'
/// columns (here and in `packed_bf16`).
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);

impl SendPtr {
    /// The output `i` elements in (a method, so closures capture the whole `SendPtr`).
    ///
    /// # Safety
    /// `i` must lie inside the output.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i) }
    }
}
// SAFETY: the pointer is only written at disjoint panels' columns (see matmul and
// `packed_bf16::Panels::matmul`).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// One register block: `rows` (≤ MR) rows of `a` (bf16, `2·pairs` each) times a panel,
    /// into `dst` (row stride `n`, the first `cols` columns), added to what is there when
    /// `accumulate`.
    ///
    /// # Safety
    /// The CPU must have AVX512_BF16, AVX-512F and BW; `dst` must hold `rows` rows of `cols`
    /// writable (with `accumulate`, initialised) floats at stride `n`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        a: &[u16],
        rows: usize,
        pairs: usize,
        panel: &[u16],
        dst: *mut f32,
        n: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let args = (a, pairs, panel, dst, n, cols, accumulate);
        // SAFETY: forwarded.
        unsafe {
            match rows {
                6 => kernel::<6>(args),
                5 => kernel::<5>(args),
                4 => kernel::<4>(args),
                3 => kernel::<3>(args),
                2 => kernel::<2>(args),
                _ => kernel::<1>(args),
            }
        }
    }

    /// [`block`]'s operands: `a`, pairs, the panel, `dst`, its row stride, columns, accumulate.
    type Block<'a> = (&'a [u16], usize, &'a [u16], *mut f32, usize, usize, bool);

    /// `src` rounded to bf16 into `dst` (same length), 16 at a time.
    ///
    /// # Safety
    /// The CPU must have AVX512_BF16, AVX-512F and BW.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn convert(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        // SAFETY: every access stays below n.
        unsafe {
            while i + 16 <= n {
                let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
                _mm256_storeu_si256(
                    dst.as_mut_ptr().add(i).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(v),
                );
                i += 16;
            }
        }
        for (d, &x) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = super::bf16(x);
        }
    }

    /// One pair of rows of a panel: `pair[2j] = r0[j]`, `pair[2j + 1] = r1[j]` (0 without a
    /// second row), rounded to bf16, for the panel's NR columns.
    ///
    /// # Safety
    /// The CPU must have AVX512_BF16, AVX-512F and BW; rows hold NR floats, `pair` 2·NR.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn interleave(r0: &[f32], r1: Option<&[f32]>, pair: &mut [u16]) {
        debug_assert!(r0.len() >= NR && pair.len() >= 2 * NR);
        // Lane 2j takes element j of the low 16 (r0), lane 2j + 1 element j of the high 16.
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        for h in 0..NR / 16 {
            // SAFETY: columns 16·h .. 16·h + 16 lie inside the rows; the store inside pair.
            unsafe {
                let a = _mm512_loadu_ps(r0.as_ptr().add(16 * h));
                let b = match r1 {
                    Some(r1) => _mm512_loadu_ps(r1.as_ptr().add(16 * h)),
                    None => _mm512_setzero_ps(),
                };
                // Low 16 lanes from `a`, high 16 from `b`.
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
                let mixed = _mm512_permutexvar_epi16(idx, both);
                _mm512_storeu_si512(pair.as_mut_ptr().add(32 * h).cast(), mixed);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn kernel<const R: usize>((a, pairs, panel, dst, n, cols, accumulate): Block<'_>) {
        debug_assert!(R <= MR && a.len() >= R * 2 * pairs && panel.len() >= pairs * NR * 2);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (ap, bp) = (a.as_ptr().cast::<i32>(), panel.as_ptr());
        for q in 0..pairs {
            // SAFETY: pair q of the panel is NR·2 bf16 at q·NR·2, inside the panel; pair q of
            // row r is the i32 at r·pairs + q, inside a (asserted in debug, the caller's
            // contract).
            unsafe {
                let b0: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR * 2).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR * 2 + NR).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                        ap.add(r * pairs + q).read_unaligned(),
                    ));
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (h, v) in acc.iter().enumerate() {
                let c0 = 16 * h;
                if c0 >= cols {
                    break;
                }
                let mask: __mmask16 = if cols - c0 >= 16 {
                    0xFFFF
                } else {
                    (1u16 << (cols - c0)) - 1
                };
                // SAFETY: row r's columns c0 .. c0 + 16 (masked to cols) lie inside dst, and
                // are initialised when accumulating (the caller's contract).
                unsafe {
                    let at = dst.add(r * n + c0);
                    let v = if accumulate {
                        _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, at))
                    } else {
                        *v
                    };
                    _mm512_mask_storeu_ps(at, mask, v)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the product of the bf16-rounded operands in f64 (the only difference then is
    /// the order of the f32 sums), at panel and block edges, odd `k`, and transposed views.
    #[test]
    fn matches_the_product_of_rounded_operands() {
        if !available() {
            return;
        }
        let round = |x: f32| half::bf16::from_f32(x).to_f32() as f64;
        for (m, k, n) in [(1, 1, 1), (7, 5, 33), (13, 64, 70), (6, 33, 32)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 29.0)
                .collect();
            // b stored transposed ([n, k]) and read through a transposed view.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for bv in [View::new(&b, k, n), View::new(&bt, n, k).t()] {
                let got = matmul(View::new(&a, m, k), bv);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|q| round(a[i * k + q]) * round(b[q * n + j]))
                            .sum();
                        let g = got[i * n + j] as f64;
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "({m},{k},{n}) [{i},{j}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
