//! Weight matrices packed once for decoding, and the small-batch matrix product over them.
//!
//! Decoding multiplies a few rows (one per sequence) by every weight matrix at each step. A
//! general GEMM packs its right-hand side on every call, which for a handful of rows costs more
//! memory traffic than the product itself. Here a `[k, n]` matrix is packed once into column
//! panels of [`NR`] (`panel[kk][0..NR]` contiguous), and the kernel keeps an `MR × NR` block of
//! the result in registers while it streams one panel (which then stays in L1 for the next rows).
//! On x86-64 with AVX2 and FMA (detected at run time) the block is computed with those
//! intrinsics, its accumulators in vector registers; elsewhere by a portable version.

use super::arena::Floats;
use super::pair::Pair;
use super::simd::{Uninit, as_uninit, prefetch_l2, write, written};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Columns per panel: two 8-wide vectors.
pub const NR: usize = 16;
/// Rows per register block.
const MR: usize = 6;
/// `m·n·k` from which the panels are split between rayon's threads.
const PARALLEL_OPS: usize = 1 << 20;

/// The threads a product may use.
#[derive(Clone, Copy)]
pub enum Threads<'a> {
    /// This thread only.
    One,
    /// rayon's pool, for products of at least `PARALLEL_OPS` multiply-adds.
    Rayon,
    /// This thread and a spinning helper, half the panels each, for every product of two
    /// panels or more (see [`super::pair`]).
    Pair(&'a Pair),
}

impl Threads<'_> {
    /// `run` over `0..units`, split between the threads: in halves on a pair (from 2 units),
    /// over rayon's threads from [`PARALLEL_OPS`] multiply-adds (`ops`) and 2 units, else
    /// whole on this thread. The ranges are disjoint and cover `0..units`.
    pub fn split(self, units: usize, ops: usize, run: impl Fn(Range<usize>) + Sync) {
        match self {
            Threads::Pair(pair) if units >= 2 => {
                let half = units / 2;
                pair.join(|| run(0..half), || run(half..units));
            }
            Threads::Rayon if ops >= PARALLEL_OPS && units >= 2 => {
                let threads = rayon::current_num_threads().min(units);
                let per = units.div_ceil(threads);
                rayon::scope(|s| {
                    for t in 1..threads {
                        let run = &run;
                        s.spawn(move |_| run((t * per).min(units)..((t + 1) * per).min(units)));
                    }
                    run(0..per.min(units));
                });
            }
            _ => run(0..units),
        }
    }
}

/// A `[k, n]` row-major matrix in column panels of [`NR`], the last one zero-padded.
pub struct Packed {
    k: usize,
    n: usize,
    data: Data,
}

/// Where a [`Packed`] matrix's panels are.
enum Data {
    Own(Vec<f32>),
    /// `len` floats from `start` of a buffer shared with other matrices.
    Shared {
        buf: Arc<Floats>,
        start: usize,
        len: usize,
    },
}

/// A matrix to pack: its values, shape `[k, n]` and how the values are laid out.
type Matrix<'a> = (&'a [f32], usize, usize, Order);

/// How the values of a `[k, n]` matrix to pack are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Row-major `[k, n]`.
    Rows,
    /// Its transpose, row-major `[n, k]`: a tied head packed straight from the `[vocab, d]`
    /// embedding, without a transposed copy of it first.
    Columns,
}

impl Packed {
    /// Pack a row-major `[k, n]` matrix.
    pub fn new(w: &[f32], k: usize, n: usize) -> Packed {
        Packed::of((w, k, n, Order::Rows))
    }

    /// Pack the transpose of a row-major `[n, k]` matrix (one row per output) as `[k, n]`.
    pub fn from_transpose(w: &[f32], k: usize, n: usize) -> Packed {
        Packed::of((w, k, n, Order::Columns))
    }

    /// Pack one matrix into memory of its own.
    fn of(m: Matrix<'_>) -> Packed {
        let (_, k, n, _) = m;
        // Written in order, without zeroing the whole buffer first (training's attention packs
        // its operands at every call, so packing time counts).
        // SAFETY: `pack_into` writes every element of the packed layout (the last panel's
        // missing columns as zeros).
        let data = unsafe { written(Packed::size(k, n), |out| pack_into(m, out)) };
        Packed {
            k,
            n,
            data: Data::Own(data),
        }
    }

    /// Pack matrices of the given `[k, n]` shapes and value orders into one buffer on huge
    /// pages (see [`super::arena`]: a model's weights are streamed from memory at every
    /// decoding step, and on 4 KB pages that costs a TLB miss every 4 KB), on rayon's threads.
    /// `values(i)` gives matrix `i`'s values; it is called once for each, by the thread that
    /// packs it, so only a matrix per thread is held at once.
    pub fn new_all<V: AsRef<[f32]>>(
        shapes: &[(usize, usize, Order)],
        values: impl Fn(usize) -> V + Sync,
    ) -> Vec<Packed> {
        let sizes: Vec<usize> = shapes.iter().map(|&(k, n, _)| Packed::size(k, n)).collect();
        // Every float is written below, so a kept buffer's old values do not matter.
        let mut buf = Floats::reused(sizes.iter().sum());
        let mut parts = Vec::with_capacity(shapes.len());
        let mut rest: &mut [f32] = &mut buf;
        for &size in &sizes {
            let (part, tail) = rest.split_at_mut(size);
            parts.push(part);
            rest = tail;
        }
        parts
            .into_par_iter()
            .zip(shapes)
            .enumerate()
            .for_each(|(i, (part, &(k, n, order)))| {
                // SAFETY: the kernel stores only initialised floats through the view.
                pack_into((values(i).as_ref(), k, n, order), unsafe {
                    as_uninit(part)
                });
            });
        let buf = Arc::new(buf);
        let mut start = 0;
        shapes
            .iter()
            .zip(sizes)
            .map(|(&(k, n, _), len)| {
                let data = Data::Shared {
                    buf: Arc::clone(&buf),
                    start,
                    len,
                };
                start += len;
                Packed { k, n, data }
            })
            .collect()
    }

    /// Floats of a packed `[k, n]` matrix.
    fn size(k: usize, n: usize) -> usize {
        n.div_ceil(NR) * k * NR
    }

    fn data(&self) -> &[f32] {
        match &self.data {
            Data::Own(v) => v,
            Data::Shared { buf, start, len } => &buf[*start..*start + *len],
        }
    }

    pub fn rows(&self) -> usize {
        self.k
    }

    /// Outputs `n`.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// `dst[m, n] = a[m, k] · self`, or `+=` when `accumulate`; row-major, contiguous; the
    /// panels split between `threads`.
    pub fn matmul(
        &self,
        dst: &mut [f32],
        a: &[f32],
        m: usize,
        accumulate: bool,
        threads: Threads<'_>,
    ) {
        self.product(dst, a, m, accumulate, threads, Band::Full)
    }

    /// `dst = a · self` on this thread, computing only the part `band` says is needed or
    /// nonzero (for the triangular operands of causal attention); outputs it skips are left
    /// as they are.
    pub fn matmul_band(&self, dst: &mut [f32], a: &[f32], m: usize, band: Band) {
        self.product(dst, a, m, false, Threads::One, band)
    }

    fn product(
        &self,
        dst: &mut [f32],
        a: &[f32],
        m: usize,
        accumulate: bool,
        threads: Threads<'_>,
        band: Band,
    ) {
        let (k, n) = (self.k, self.n);
        assert!(
            a.len() >= m * k && dst.len() >= m * n,
            "matmul: buffers too small"
        );
        let panels = n.div_ceil(NR);
        // Rows of a in blocks of MR, transposed so a block's values for one kk are adjacent.
        let blocks = m.div_ceil(MR);
        let mut ap = vec![0.0f32; blocks * k * MR];
        for (i, row) in a[..m * k].chunks_exact(k).enumerate() {
            let (bi, ri) = (i / MR, i % MR);
            for (kk, &v) in row.iter().enumerate() {
                ap[(bi * k + kk) * MR + ri] = v;
            }
        }
        let product = Product {
            a: ap.as_slice(),
            m,
            dst: SendPtr(dst.as_mut_ptr()),
            accumulate,
            band,
        };
        threads.split(panels, m * n * k, |range| {
            // SAFETY: each call writes only the columns of panels `range` of dst, so
            // concurrent calls over disjoint panel ranges never touch the same element; dst
            // holds m·n elements (asserted above) and outlives the calls.
            unsafe { self.panels(range, &product) }
        });
    }

    /// # Safety
    /// `p.dst` must point to `m·n` writable elements that no one else writes in these panels'
    /// columns during the call.
    unsafe fn panels(&self, range: Range<usize>, p: &Product<'_>) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above); the caller upholds
                // the rest.
                return unsafe { self.panels_avx2(range, p) };
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.panels_generic::<false>(range, p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panels_avx2(&self, range: Range<usize>, p: &Product<'_>) {
        // SAFETY: forwarded from the caller.
        unsafe { self.panels_generic::<true>(range, p) }
    }

    #[inline(always)]
    unsafe fn panels_generic<const FMA: bool>(&self, range: Range<usize>, prod: &Product<'_>) {
        let Product {
            a,
            m,
            dst,
            accumulate,
            band,
        } = *prod;
        let (k, n) = (self.k, self.n);
        let data = self.data();
        // The next panel is fetched into L2, a share per row block, while this one is
        // computed: otherwise the first block of each panel waits on memory (the hardware's
        // prefetchers idle while later blocks reread a panel already in L1; with one block a
        // panel is read once, in order, and they keep up). Figures in docs/PERF.md.
        let share = (k * NR)
            .div_ceil(m.div_ceil(MR).max(1))
            .next_multiple_of(16)
            .max(16);
        let (end, prefetch) = (range.end, m > MR);
        for p in range {
            let panel = &data[p * k * NR..(p + 1) * k * NR];
            let next = if prefetch && p + 1 < end {
                &data[(p + 1) * k * NR..(p + 2) * k * NR]
            } else {
                &[]
            };
            let mut ahead = next.chunks(share);
            let cols = NR.min(n - p * NR);
            let mut r = 0;
            while r < m {
                if let Some(part) = ahead.next() {
                    prefetch_l2(part);
                }
                let rows = MR.min(m - r);
                if band == Band::LowerOutput && p * NR > r + rows - 1 {
                    // Every column of this panel lies above the block's diagonal.
                    r += rows;
                    continue;
                }
                let ks = match band {
                    Band::LowerLeft => 0..k.min(r + rows),
                    Band::UpperLeft => r.min(k)..k,
                    Band::Full | Band::LowerOutput => 0..k,
                };
                let kn = ks.len();
                let ab = &a[r * k + ks.start * MR..(r + MR) * k];
                let panel = &panel[ks.start * NR..];
                let acc = if FMA {
                    // SAFETY: only reached from panels_avx2, so the CPU has AVX2 and FMA.
                    unsafe { by_rows!(block_avx2, rows, ab, kn, panel) }
                } else {
                    by_rows!(block, rows, ab, kn, panel)
                };
                for (i, acc_row) in acc.iter().enumerate().take(rows) {
                    // SAFETY: row r + i < m and columns p·NR .. p·NR + cols < n lie inside
                    // dst's m·n elements; only this call writes these panel columns.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(dst.0.add((r + i) * n + p * NR), cols)
                    };
                    if accumulate {
                        for (o, v) in out.iter_mut().zip(acc_row) {
                            *o += v;
                        }
                    } else {
                        out.copy_from_slice(&acc_row[..cols]);
                    }
                }
                r += rows;
            }
        }
    }
}

/// Write `w`'s panels into `out` (`Packed::size` floats).
fn pack_into((w, k, n, order): Matrix<'_>, out: &mut [Uninit]) {
    assert_eq!(w.len(), k * n, "matrix is not {k}×{n}");
    assert_eq!(out.len(), Packed::size(k, n));
    for (p, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        let cols = NR.min(n - p * NR);
        match order {
            Order::Rows => {
                for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    write(dst, &w[kk * n + p * NR..kk * n + p * NR + cols]);
                    write(&mut dst[cols..], &[0.0; NR]);
                }
            }
            // The panel's columns are `cols` contiguous rows of `w`: read each once and
            // scatter it down the panel (a panel is k·NR floats, so it stays in cache).
            Order::Columns => {
                for (j, row) in w[p * NR * k..(p * NR + cols) * k]
                    .chunks_exact(k)
                    .enumerate()
                {
                    for (dst, &v) in panel[j..].iter_mut().step_by(NR).zip(row) {
                        dst.write(v);
                    }
                }
                for dst in panel.chunks_exact_mut(NR) {
                    write(&mut dst[cols..], &[0.0; NR]);
                }
            }
        }
    }
}

/// `kernel::<R, C>` for the block's real row count `rows` (1..=MR), widened to MR rows. Blocks
/// of one to three rows split the inner dimension over `C` interleaved accumulator sets, so
/// that at least eight independent FMA chains hide the instruction's latency (one row with a
/// single set would wait on each FMA: decoding one sequence is all such blocks).
macro_rules! by_rows {
    ($kernel:ident, $rows:expr, $a:expr, $k:expr, $panel:expr) => {
        match $rows {
            6 => $kernel::<6, 1>($a, $k, $panel),
            5 => widen($kernel::<5, 1>($a, $k, $panel)),
            4 => widen($kernel::<4, 1>($a, $k, $panel)),
            3 => widen($kernel::<3, 2>($a, $k, $panel)),
            2 => widen($kernel::<2, 2>($a, $k, $panel)),
            _ => widen($kernel::<1, 4>($a, $k, $panel)),
        }
    };
}
use by_rows;

/// Which part of a product [`Packed::matmul_band`] computes. Skipping only ever drops terms
/// that are zero, so what it computes equals the full product's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// Everything.
    Full,
    /// Row `i`'s columns `j ≤ i` (in whole panels, so a few beyond the diagonal too).
    LowerOutput,
    /// `a` is lower triangular (`a[i][kk] = 0` for `kk > i`): inner indices up to the row.
    LowerLeft,
    /// `a` is upper triangular (`a[i][kk] = 0` for `kk < i`): inner indices from the row on.
    UpperLeft,
}

/// One product's left operand (packed in row blocks), its row count and where it goes.
#[derive(Clone, Copy)]
struct Product<'a> {
    a: &'a [f32],
    m: usize,
    dst: SendPtr,
    accumulate: bool,
    band: Band,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only dereferenced for disjoint column ranges (see Packed::matmul).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

fn widen<const R: usize>(b: [[f32; NR]; R]) -> [[f32; NR]; MR] {
    let mut out = [[0.0; NR]; MR];
    out[..R].copy_from_slice(&b);
    out
}

/// One packed block of `a` (`[k][MR]`, its first `R` rows real) times one packed panel: an
/// `R × NR` block (portable; one accumulator set, `C` is for the vector kernel's signature).
#[inline(always)]
fn block<const R: usize, const C: usize>(a: &[f32], k: usize, panel: &[f32]) -> [[f32; NR]; R] {
    let mut acc = [[0.0f32; NR]; R];
    for (ak, b) in a.chunks_exact(MR).zip(panel.chunks_exact(NR)).take(k) {
        for (acc_row, &x) in acc.iter_mut().zip(ak) {
            for (c, &bj) in acc_row.iter_mut().zip(b) {
                *c += x * bj;
            }
        }
    }
    acc
}

/// [`block`] with AVX2 and FMA: the `R × NR` accumulators live in `2R` vector registers, `C`
/// sets of them over interleaved inner indices (`kk mod C`), added up at the end.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_avx2<const R: usize, const C: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
) -> [[f32; NR]; R] {
    use std::arch::x86_64::*;
    assert!(R <= MR && C >= 1 && a.len() >= k * MR && panel.len() >= k * NR);
    let a = a.as_ptr();
    let b = panel.as_ptr();
    let mut lo = [[_mm256_setzero_ps(); R]; C];
    let mut hi = [[_mm256_setzero_ps(); R]; C];
    // One inner index into set c (a constant after unrolling, so the sets stay in registers).
    macro_rules! step {
        ($kk:expr, $c:expr) => {
            // SAFETY: kk < k, so values kk·NR .. kk·NR + 16 of the panel and kk·MR + i (i < R
            // ≤ MR) of the block are in bounds (asserted above); loads are unaligned.
            unsafe {
                let kk = $kk;
                let b0 = _mm256_loadu_ps(b.add(kk * NR));
                let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
                for i in 0..R {
                    let x = _mm256_broadcast_ss(&*a.add(kk * MR + i));
                    lo[$c][i] = _mm256_fmadd_ps(x, b0, lo[$c][i]);
                    hi[$c][i] = _mm256_fmadd_ps(x, b1, hi[$c][i]);
                }
            }
        };
    }
    // Inner index kk goes to set kk mod C; the k mod C last ones to set 0.
    let whole = k - k % C;
    for kk in (0..whole).step_by(C) {
        for c in 0..C {
            step!(kk + c, c);
        }
    }
    for kk in whole..k {
        step!(kk, 0);
    }
    let mut out = [[0.0f32; NR]; R];
    for i in 0..R {
        let (mut l, mut h) = (lo[0][i], hi[0][i]);
        for c in 1..C {
            l = _mm256_add_ps(l, lo[c][i]);
            h = _mm256_add_ps(h, hi[c][i]);
        }
        // SAFETY: each output row holds NR = 16 floats.
        unsafe {
            _mm256_storeu_ps(out[i].as_mut_ptr(), l);
            _mm256_storeu_ps(out[i].as_mut_ptr().add(8), h);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|kk| a[i * k + kk] * w[kk * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn banded_products_equal_the_full_product_where_they_compute() {
        // Square triangular left operands and causal outputs, sizes off the block edges.
        for &(m, n) in &[(7, 5), (41, 40), (13, 17)] {
            let tri = |upper: bool| -> Vec<f32> {
                (0..m * m)
                    .map(|x| {
                        let (i, j) = (x / m, x % m);
                        let keep = if upper { j >= i } else { j <= i };
                        if keep {
                            ((x * 37) % 11) as f32 - 5.0
                        } else {
                            0.0
                        }
                    })
                    .collect()
            };
            let w: Vec<f32> = (0..m * n)
                .map(|x| ((x * 53) % 13) as f32 * 0.25 - 1.5)
                .collect();
            let p = Packed::new(&w, m, n);
            for (a, band) in [(tri(false), Band::LowerLeft), (tri(true), Band::UpperLeft)] {
                let mut full = vec![0.0f32; m * n];
                p.matmul(&mut full, &a, m, false, Threads::One);
                let mut got = vec![0.0f32; m * n];
                p.matmul_band(&mut got, &a, m, band);
                assert_eq!(full, got, "{band:?} {m}×{n}");
            }
            // Causal output: row i's columns 0..=i (of an m × m product) are all computed.
            let sq = Packed::new(&tri(false), m, m);
            let a: Vec<f32> = (0..m * m).map(|x| ((x * 29) % 7) as f32 - 3.0).collect();
            let mut full = vec![0.0f32; m * m];
            sq.matmul(&mut full, &a, m, false, Threads::One);
            let mut got = vec![f32::NAN; m * m];
            sq.matmul_band(&mut got, &a, m, Band::LowerOutput);
            for i in 0..m {
                assert_eq!(full[i * m..=i * m + i], got[i * m..=i * m + i], "row {i}");
            }
        }
    }

    #[test]
    fn a_matrix_packed_from_its_transpose_equals_it_packed_from_rows() {
        // Column counts below, at and off the panel width (the last panel's padding).
        for &(k, n) in &[(5, 3), (7, 16), (9, 37), (64, 100)] {
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 31) % 17) as f32 - 8.0).collect();
            let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            let packed = Packed::new_all(&[(k, n, Order::Rows), (k, n, Order::Columns)], |i| {
                if i == 0 { &w } else { &wt }
            });
            assert_eq!(packed[0].data(), packed[1].data(), "{k}×{n}");
            assert_eq!(packed[0].data(), Packed::new(&w, k, n).data(), "{k}×{n}");
        }
    }

    #[test]
    fn packed_product_matches_the_plain_one_for_every_shape_edge() {
        // Rows not a multiple of MR, columns not a multiple of NR, one row, sizes that split
        // between threads; each matrix packed on its own and all of them into one buffer
        // (over 2 MB, so on huge pages where Linux gives them).
        let shapes = [
            (1, 5, 3),
            (7, 9, 17),
            (13, 33, 40),
            (64, 128, 200),
            (6, 16, 16),
            (40, 256, 2048),
        ];
        let ws: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(_, k, n)| {
                (0..k * n)
                    .map(|i| ((i * 53) % 13) as f32 * 0.25 - 1.5)
                    .collect()
            })
            .collect();
        let kn: Vec<(usize, usize, Order)> = shapes
            .iter()
            .map(|&(_, k, n)| (k, n, Order::Rows))
            .collect();
        let shared = Packed::new_all(&kn, |i| &ws[i]);
        for ((&(m, k, n), w), together) in shapes.iter().zip(&ws).zip(&shared) {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let want = reference(&a, w, m, k, n);
            let alone = Packed::new(w, k, n);
            crate::cpu::pair::with_pair(|pair| {
                let mut all = vec![Threads::One, Threads::Rayon];
                all.extend(pair.map(Threads::Pair));
                for (threads, p) in all.into_iter().flat_map(|t| [(t, &alone), (t, together)]) {
                    let mut got = vec![f32::NAN; m * n];
                    p.matmul(&mut got, &a, m, false, threads);
                    for (x, y) in want.iter().zip(&got) {
                        assert!(
                            (x - y).abs() <= 1e-3 * x.abs().max(1.0),
                            "{m}×{k}×{n}: {x} vs {y}"
                        );
                    }
                    // Accumulating adds the product to what is there.
                    let mut acc = vec![1.0f32; m * n];
                    p.matmul(&mut acc, &a, m, true, threads);
                    for (x, y) in want.iter().zip(&acc) {
                        assert!((x + 1.0 - y).abs() <= 1e-3 * x.abs().max(1.0));
                    }
                }
            });
        }
    }
}
