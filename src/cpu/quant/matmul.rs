//! The product of a few rows of activations with a matrix of quantised blocks, read where the
//! blocks are (never a float copy of the matrix), as llama.cpp computes it: each activation row
//! is quantised to int8 per 32 elements, and each output is a sum of integer dot products
//! scaled by the blocks' and the activations' scales.
//!
//! A weight row (one output) is first read into 32-element chunks of unsigned integers with
//! their scales and offsets ([`super::format`]), once for all activation rows; the dot kernel
//! that follows knows nothing of the format. On x86-64 it runs with AVX512-VNNI
//! (`vpdpbusd` on 256-bit registers) or, without it, AVX2 (`vpmaddwd` on widened integers),
//! both chosen at run time; elsewhere a portable loop computes the same sums.

use super::format::{chunks, scales, unpack};
use super::{Kind, for_kind};
use crate::cpu::packed::{Packed, Threads};
use crate::cpu::simd::avx2_dispatch;
use std::ops::Range;
use std::sync::Arc;

/// Activation rows quantised for [`QMatrix::matmul`]: per 32 elements, int8 values and their
/// scale; per 16 elements, the exact sum of the floats (it multiplies the blocks' offsets).
pub struct QRows {
    k: usize,
    m: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<f32>,
}

impl QRows {
    /// Quantise `m` rows of `k` floats (`k` a multiple of 32): `q = round(x / d)` with
    /// `d = max|x| / 127` per 32 elements.
    pub fn new(a: &[f32], m: usize, k: usize) -> QRows {
        assert!(k.is_multiple_of(32) && a.len() >= m * k, "QRows: bad shape");
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * k / 32];
        let mut sums = vec![0f32; m * k / 16];
        quantize_rows(&a[..m * k], &mut q, &mut d, &mut sums);
        QRows { k, m, q, d, sums }
    }
}

avx2_dispatch!(
    /// [`QRows::new`]'s loop: every 32 floats of `x` into `q`, their scale into `d` and the
    /// sums of their halves into `sums` (8-wide with AVX2: it runs before every product).
    fn quantize_rows(x: &[f32], q: &mut [i8], d: &mut [f32], sums: &mut [f32]) = quantize_generic;
);

#[inline(always)]
fn quantize_generic(x: &[f32], q: &mut [i8], d: &mut [f32], sums: &mut [f32]) {
    for (((x, q), d), s) in x
        .chunks_exact(32)
        .zip(q.chunks_exact_mut(32))
        .zip(d.iter_mut())
        .zip(sums.chunks_exact_mut(2))
    {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        *d = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * inv).round_ties_even() as i8;
        }
        s[0] = x[..16].iter().sum();
        s[1] = x[16..].iter().sum();
    }
}

/// A `[k] → [n]` matrix of quantised rows: output `j` is the dot product of an input row with
/// weight row `j`, `k` elements in blocks. The rows may lie anywhere in one shared byte
/// buffer (a GGUF file's, in place) and be of several types, in parts of consecutive outputs
/// (a fused projection of tensors quantised differently). A clone shares the bytes (a tied
/// head reading the embedding's blocks).
#[derive(Clone)]
pub struct QMatrix {
    k: usize,
    n: usize,
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    parts: Vec<Part>,
    /// The matrix as bf16 panels for training's products, once a bf16 product asked for them
    /// ([`QMatrix::bf16_panels`]).
    pub(super) bf16: std::sync::OnceLock<Arc<super::frozen::Bf16Panels>>,
}

/// Consecutive outputs of one type: the byte offset of each one's row.
#[derive(Clone)]
struct Part {
    kind: Kind,
    rows: Vec<usize>,
}

impl QMatrix {
    /// A matrix of `k` inputs whose outputs are the rows at the given byte offsets of `bytes`,
    /// part by part. Panics if a row lies outside `bytes` or `k` is not whole blocks of its
    /// part's type (the caller has checked the file).
    pub fn new(
        k: usize,
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        parts: Vec<(Kind, Vec<usize>)>,
    ) -> QMatrix {
        let len = (*bytes).as_ref().len();
        for (kind, rows) in &parts {
            assert!(kind.is_blocks() && k.is_multiple_of(kind.block().0));
            let rb = kind.row_bytes(k);
            assert!(
                rows.iter().all(|&r| r + rb <= len),
                "a row lies outside the buffer"
            );
        }
        let n = parts.iter().map(|(_, r)| r.len()).sum();
        let parts = parts
            .into_iter()
            .map(|(kind, rows)| Part { kind, rows })
            .collect();
        QMatrix {
            k,
            n,
            bytes,
            parts,
            bf16: Default::default(),
        }
    }

    /// Inputs (the length of a row of the left operand).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Outputs.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Bytes of the blocks read by a product.
    pub fn bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.rows.len() * p.kind.row_bytes(self.k))
            .sum()
    }

    /// The floats of output `j`'s weight row (an embedding's row for a token; a row of a
    /// product over many rows, which dequantises every weight once per call, so this runs at
    /// the product's pace): without an allocation, 8-wide with AVX2.
    pub fn row_f32(&self, j: usize, out: &mut [f32]) {
        let (kind, at) = self.locate(j);
        let raw = &(*self.bytes).as_ref()[at..at + kind.row_bytes(self.k)];
        #[cfg(target_arch = "x86_64")]
        if Kernel::detect() != Kernel::Portable {
            // SAFETY: detect() found AVX2, FMA and F16C; raw is a whole row of k elements.
            return unsafe { for_kind!(kind, |ID| x86::dequantize_row::<ID>(raw, out)) };
        }
        let nc = chunks(kind);
        let size = kind.block().1;
        let mut u = [0u8; 32];
        for (c, o) in out[..self.k].chunks_exact_mut(32).enumerate() {
            let b = &raw[(c / nc) * size..(c / nc + 1) * size];
            unpack(kind, b, c % nc, &mut u);
            let s = scales::<false>(kind, b, c % nc);
            for (i, (o, &x)) in o.iter_mut().zip(&u).enumerate() {
                let [scale, offset] = s[i / 16];
                *o = scale * x as f32 + offset;
            }
        }
    }

    /// The type and byte offset of output `j`'s row.
    fn locate(&self, mut j: usize) -> (Kind, usize) {
        for p in &self.parts {
            if j < p.rows.len() {
                return (p.kind, p.rows[j]);
            }
            j -= p.rows.len();
        }
        panic!("output {j} is past the matrix's {} outputs", self.n)
    }

    /// `dst[m, n] = a[m, k] · selfᵀ`, or `+=` when `accumulate`; row-major, contiguous; the
    /// outputs split between `threads`.
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
        let out = Out {
            ptr: SendPtr(dst.as_mut_ptr()),
            n,
            accumulate,
        };
        if m >= MANY_ROWS {
            return self.matmul_tiles(out, a, m, threads);
        }
        let acts = QRows::new(a, m, k);
        threads.split(n, m * n * k, |cols| {
            // SAFETY: each call writes only the columns `cols` of dst's m rows, so concurrent
            // calls over disjoint ranges never touch the same element; dst holds m·n floats
            // (asserted above) and outlives the calls.
            unsafe { self.columns(cols, &acts, out) }
        });
    }

    /// [`Self::matmul`] for many rows: [`TILE`] outputs at a time dequantised to floats,
    /// packed and multiplied by the f32 panel kernel, whose arithmetic then dominates (the
    /// integer kernel's per-output reductions do not pay for themselves over many rows).
    /// `out` is [`Self::matmul`]'s checked destination.
    fn matmul_tiles(&self, out: Out, a: &[f32], m: usize, threads: Threads<'_>) {
        let (k, n) = (self.k, self.n);
        // Whole tiles per thread (every tile's products are worth splitting).
        threads.split(n.div_ceil(TILE), usize::MAX, |tiles| {
            let cols = tiles.start * TILE..(tiles.end * TILE).min(n);
            let mut w = vec![0.0f32; TILE * k];
            let mut tmp = vec![0.0f32; m * TILE];
            for t0 in cols.clone().step_by(TILE) {
                let t1 = (t0 + TILE).min(cols.end);
                let width = t1 - t0;
                for (j, row) in (t0..t1).zip(w.chunks_exact_mut(k)) {
                    self.row_f32(j, row);
                }
                let p = Packed::from_transpose(&w[..width * k], k, width);
                p.matmul(&mut tmp[..m * width], a, m, false, Threads::One);
                for (i, r) in tmp[..m * width].chunks_exact(width).enumerate() {
                    // SAFETY: row i < m and columns t0..t1 < n lie inside dst; only this
                    // call writes these columns (disjoint ranges per thread).
                    let o = unsafe { out.cols(i, t0, width) };
                    if out.accumulate {
                        o.iter_mut().zip(r).for_each(|(o, x)| *o += x);
                    } else {
                        o.copy_from_slice(r);
                    }
                }
            }
        });
    }

    /// Outputs `cols` of every row of `acts` into `out`, on the best kernel of this CPU.
    ///
    /// # Safety
    /// `out.ptr` points to `acts.m · n` floats of which no one else writes these columns
    /// during the call.
    unsafe fn columns(&self, cols: Range<usize>, acts: &QRows, out: Out) {
        // SAFETY: forwarded; each kernel runs only where detect() found its features.
        unsafe {
            match Kernel::detect() {
                Kernel::Portable => self.columns_on::<PORTABLE>(cols, acts, out),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::columns_avx2(self, cols, acts, out),
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni => x86::columns_vnni(self, cols, acts, out),
            }
        }
    }

    /// [`Self::columns`] with kernel `K` ([`PORTABLE`], [`AVX2`] or [`VNNI`]), inlined into a
    /// function compiled with its features.
    ///
    /// # Safety
    /// As [`Self::columns`]; the CPU must have `K`'s features.
    #[inline(always)]
    unsafe fn columns_on<const K: u8>(&self, cols: Range<usize>, acts: &QRows, out: Out) {
        let mut row = Unpacked::new(self.k);
        let mut first = 0;
        for p in &self.parts {
            let here = first..first + p.rows.len();
            first = here.end;
            let (lo, hi) = (cols.start.max(here.start), cols.end.min(here.end));
            if lo >= hi {
                continue;
            }
            let rows = &p.rows[lo - here.start..hi - here.start];
            // SAFETY: forwarded.
            unsafe {
                for_kind!(p.kind, |ID| self
                    .part_on::<K, ID>(rows, lo, acts, out, &mut row))
            };
        }
    }

    /// Outputs `first ..` (rows at byte offsets `rows`) of one part, of type `ID`: fused
    /// (each chunk read into a register and multiplied at once) for up to [`GROUP`] rows on
    /// x86, else each weight row read once into `row` for every group of activation rows.
    ///
    /// # Safety
    /// As [`Self::columns_on`].
    #[inline(always)]
    unsafe fn part_on<const K: u8, const ID: u8>(
        &self,
        rows: &[usize],
        first: usize,
        acts: &QRows,
        out: Out,
        row: &mut Unpacked,
    ) {
        let kind = Kind::of(ID);
        let rb = kind.row_bytes(self.k);
        let bytes = (*self.bytes).as_ref();
        let store = |i: usize, j: usize, v: &[f32]| {
            for (t, &x) in v.iter().enumerate() {
                // SAFETY: row i + t < m and column j < n lie inside dst (the caller's
                // contract); only this call writes column j.
                unsafe {
                    let o = out.ptr.0.add((i + t) * out.n + j);
                    *o = if out.accumulate { *o + x } else { x };
                }
            }
        };
        let mut jj = 0;
        while jj < rows.len() {
            let at = rows[jj];
            let w = &bytes[at..at + rb];
            // A few rows ahead are fetched while this one is computed: the first line of each
            // row otherwise waits on memory (rows may lie anywhere, so the hardware's stream
            // prefetchers do not always see them coming).
            for ahead in [jj + PREFETCH_ROWS, jj + PREFETCH_ROWS + 1] {
                if let Some(&next) = rows.get(ahead) {
                    prefetch(&bytes[next..next + rb]);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if K != PORTABLE && acts.m == 1 && jj + 1 < rows.len() {
                // One activation row: two weight rows at once, each chunk of it loaded once
                // for both (two streams from memory in flight).
                let w1 = &bytes[rows[jj + 1]..rows[jj + 1] + rb];
                let (o0, o1) = (&mut row.offset, &mut row.scale);
                // SAFETY: the CPU has K's features; w and w1 are whole rows.
                let v = unsafe { x86::fused_pair::<K, ID>(w, w1, acts, o0, o1) };
                store(0, first + jj, &v[..1]);
                store(0, first + jj + 1, &v[1..]);
                jj += 2;
                continue;
            }
            let jj_here = jj;
            jj += 1;
            let jj = jj_here;
            #[cfg(target_arch = "x86_64")]
            if K != PORTABLE && acts.m <= GROUP {
                // SAFETY: the CPU has K's features; w is a whole row; m ≤ GROUP.
                let v = unsafe { x86::fused_on::<K, ID>(w, acts, &mut row.offset) };
                store(0, first + jj, &v[..acts.m]);
                continue;
            }
            // SAFETY: the CPU has K's features (the caller's contract).
            unsafe { row.read_on::<K, ID>(w) };
            let mut i = 0;
            while i < acts.m {
                let r = (acts.m - i).min(GROUP);
                // SAFETY: as above; rows i .. i + r < m.
                let v = unsafe { dots_on::<K>(row, acts, i, r) };
                store(i, first + jj, &v[..r]);
                i += r;
            }
        }
    }
}

/// Kernels as [`QMatrix::columns_on`]'s parameter.
const PORTABLE: u8 = 0;
#[cfg(target_arch = "x86_64")]
const AVX2: u8 = 1;
#[cfg(target_arch = "x86_64")]
const VNNI: u8 = 2;

/// Dot products of `row` with activation rows `i .. i + r` on kernel `K`.
///
/// # Safety
/// The CPU must have `K`'s features; `i + r ≤ a.m`, `r ≤ GROUP`.
#[inline(always)]
unsafe fn dots_on<const K: u8>(row: &Unpacked, a: &QRows, i: usize, r: usize) -> [f32; GROUP] {
    #[cfg(target_arch = "x86_64")]
    if K != PORTABLE {
        // SAFETY: forwarded.
        return unsafe {
            if K == VNNI {
                x86::by_group::<true>(row, a, i, r)
            } else {
                x86::by_group::<false>(row, a, i, r)
            }
        };
    }
    dots_portable(row, a, i, r)
}

/// How many weight rows ahead [`QMatrix::part_on`] prefetches (4 KB and 8 KB ahead measured
/// no better: docs/PERF.md).
const PREFETCH_ROWS: usize = 2;

/// Hint the CPU to load `x` into cache, a hint per 64-byte line.
#[inline(always)]
fn prefetch(x: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(64) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint: it reads nothing architecturally and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Rows from which a product runs on dequantised f32 tiles ([`QMatrix::matmul_tiles`]).
pub const MANY_ROWS: usize = 8;

/// Outputs per dequantised tile (16 panels of 16 columns).
const TILE: usize = 256;

/// Activation rows whose dot products are computed together (their accumulators in registers).
const GROUP: usize = 4;

/// Where a product's outputs go.
#[derive(Clone, Copy)]
struct Out {
    ptr: SendPtr,
    n: usize,
    accumulate: bool,
}

impl Out {
    /// Columns `j0 .. j0 + width` of output row `i`.
    ///
    /// # Safety
    /// They must lie inside the output, and no one else may access them meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn cols(&self, i: usize, j0: usize, width: usize) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.0.add(i * self.n + j0), width) }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only written at disjoint columns (see QMatrix::matmul).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// One weight row read for the dot kernel: its integers, and per chunk the scales of its two
/// halves and their offsets.
struct Unpacked {
    u: Vec<u8>,
    scale: Vec<[f32; 2]>,
    offset: Vec<[f32; 2]>,
}

impl Unpacked {
    fn new(k: usize) -> Unpacked {
        Unpacked {
            u: vec![0; k],
            scale: vec![[0.0; 2]; k / 32],
            offset: vec![[0.0; 2]; k / 32],
        }
    }

    /// Read a row of `kind` (`raw`, whole blocks) for `kernel`.
    #[cfg(test)]
    fn read(&mut self, kind: Kind, raw: &[u8], kernel: Kernel) {
        // SAFETY: kernel is one of Kernel::available().
        unsafe {
            for_kind!(kind, |ID| match kernel {
                Kernel::Portable => self.read_on::<PORTABLE, ID>(raw),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 | Kernel::Vnni => self.read_on::<AVX2, ID>(raw),
            })
        }
    }

    /// Read a row of type `ID` (`raw`, whole blocks) on kernel `K`.
    ///
    /// # Safety
    /// The CPU must have `K`'s features.
    #[inline(always)]
    unsafe fn read_on<const K: u8, const ID: u8>(&mut self, raw: &[u8]) {
        let kind = Kind::of(ID);
        let (nc, size) = (chunks(kind), kind.block().1);
        for (c, (u, (s, o))) in self
            .u
            .chunks_exact_mut(32)
            .zip(self.scale.iter_mut().zip(self.offset.iter_mut()))
            .enumerate()
        {
            let b = &raw[(c / nc) * size..(c / nc + 1) * size];
            let sc = if K != PORTABLE {
                scales::<true>(kind, b, c % nc)
            } else {
                scales::<false>(kind, b, c % nc)
            };
            *s = [sc[0][0], sc[1][0]];
            *o = [sc[0][1], sc[1][1]];
            #[cfg(target_arch = "x86_64")]
            if K != PORTABLE {
                // SAFETY: the CPU has AVX2 (the caller's contract); b is a whole block; u
                // holds 32 bytes.
                unsafe {
                    let v = super::format::unpack_avx2(kind, b.as_ptr(), c % nc);
                    std::arch::x86_64::_mm256_storeu_si256(u.as_mut_ptr().cast(), v);
                }
                continue;
            }
            unpack(kind, b, c % nc, u.try_into().expect("a 32-byte chunk"));
        }
    }
}

/// The dot kernel the CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Kernel {
    /// The best kernel this CPU has.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512vnni") && has!("avx512vl") && has!("avx512bw") {
                    return Kernel::Vnni;
                }
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run (the portable one first).
    pub fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let best = Kernel::detect();
            if best != Kernel::Portable {
                all.push(Kernel::Avx2);
            }
            if best == Kernel::Vnni {
                all.push(Kernel::Vnni);
            }
        }
        all
    }

    /// Dot products of `row` with activation rows `i .. i + r` (`r ≤ GROUP`).
    #[cfg(test)]
    fn dots(self, row: &Unpacked, a: &QRows, i: usize, r: usize) -> [f32; GROUP] {
        match self {
            Kernel::Portable => dots_portable(row, a, i, r),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: available() lists these only where the CPU has their features.
            Kernel::Avx2 => unsafe { x86::dots_avx2(row, a, i, r) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Vnni => unsafe { x86::dots_vnni(row, a, i, r) },
        }
    }
}

/// The portable kernel: integer sums per half chunk, then the scales.
fn dots_portable(row: &Unpacked, a: &QRows, i: usize, r: usize) -> [f32; GROUP] {
    let k = a.k;
    let mut out = [0f32; GROUP];
    for (t, o) in out.iter_mut().enumerate().take(r) {
        let q = &a.q[(i + t) * k..(i + t + 1) * k];
        let d = &a.d[(i + t) * k / 32..];
        let s = &a.sums[(i + t) * k / 16..];
        let mut acc = 0f32;
        for c in 0..k / 32 {
            for h in 0..2 {
                let at = 32 * c + 16 * h;
                let dot: i32 = row.u[at..at + 16]
                    .iter()
                    .zip(&q[at..at + 16])
                    .map(|(&u, &q)| u as i32 * q as i32)
                    .sum();
                acc += dot as f32 * row.scale[c][h] * d[c] + row.offset[c][h] * s[2 * c + h];
            }
        }
        *o = acc;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::Kind;
    use super::super::format::{scales, unpack_avx2};
    use super::{AVX2, GROUP, Out, QMatrix, QRows, Unpacked, VNNI};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// [`QMatrix::columns`] with AVX2.
    ///
    /// # Safety
    /// As `columns`; the CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn columns_avx2(m: &QMatrix, cols: Range<usize>, acts: &QRows, out: Out) {
        // SAFETY: forwarded.
        unsafe { m.columns_on::<AVX2>(cols, acts, out) }
    }

    /// [`QMatrix::columns`] with AVX512-VNNI.
    ///
    /// # Safety
    /// As `columns`; the CPU must have AVX2, FMA, F16C, AVX512-VNNI, AVX512VL and AVX512BW.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn columns_vnni(m: &QMatrix, cols: Range<usize>, acts: &QRows, out: Out) {
        // SAFETY: forwarded.
        unsafe { m.columns_on::<VNNI>(cols, acts, out) }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots_avx2(row: &Unpacked, a: &QRows, i: usize, r: usize) -> [f32; GROUP] {
        // SAFETY: forwarded.
        unsafe { by_group::<false>(row, a, i, r) }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA, AVX512-VNNI, AVX512VL and AVX512BW.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn dots_vnni(row: &Unpacked, a: &QRows, i: usize, r: usize) -> [f32; GROUP] {
        // SAFETY: forwarded.
        unsafe { by_group::<true>(row, a, i, r) }
    }

    #[inline(always)]
    pub unsafe fn by_group<const VNNI: bool>(
        row: &Unpacked,
        a: &QRows,
        i: usize,
        r: usize,
    ) -> [f32; GROUP] {
        let mut out = [0f32; GROUP];
        // SAFETY: forwarded; each call reads rows i .. i + R < m.
        unsafe {
            match r {
                4 => out = group::<VNNI, 4>(row, a, i),
                3 => out[..3].copy_from_slice(&group::<VNNI, 3>(row, a, i)),
                2 => out[..2].copy_from_slice(&group::<VNNI, 2>(row, a, i)),
                _ => out[..1].copy_from_slice(&group::<VNNI, 1>(row, a, i)),
            }
        }
        out
    }

    /// A row of type `ID` (`w`, whole blocks) as floats into `out`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize_row<const ID: u8>(w: &[u8], out: &mut [f32]) {
        let kind = Kind::of(ID);
        let (per, size) = kind.block();
        let nc = per / 32;
        for (c, o) in out
            .chunks_exact_mut(32)
            .take(w.len() / size * nc)
            .enumerate()
        {
            let b = &w[(c / nc) * size..(c / nc + 1) * size];
            // SAFETY: b is a whole block; o holds 32 floats; the CPU has the features.
            unsafe {
                let u = unpack_avx2(kind, b.as_ptr(), c % nc);
                let s = scales::<true>(kind, b, c % nc);
                let halves = [_mm256_castsi256_si128(u), _mm256_extracti128_si256::<1>(u)];
                for (h, bytes) in halves.into_iter().enumerate() {
                    let (scale, offset) = (_mm256_set1_ps(s[h][0]), _mm256_set1_ps(s[h][1]));
                    for (q, part) in [bytes, _mm_srli_si128::<8>(bytes)].into_iter().enumerate() {
                        let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                        let y = _mm256_fmadd_ps(x, scale, offset);
                        _mm256_storeu_ps(o.as_mut_ptr().add(16 * h + 8 * q), y);
                    }
                }
            }
        }
    }

    /// Dot products of one weight row of type `ID` (`w`, whole blocks) with every activation
    /// row (`a.m ≤ GROUP`), each chunk read into a register and multiplied at once (no
    /// [`Unpacked`] in between: decoding a few sequences is all such products). `offsets` is
    /// scratch of `k / 32` pairs.
    ///
    /// # Safety
    /// The CPU must have kernel `K`'s features (AVX2 or VNNI); `a.m ≤ GROUP`.
    #[inline(always)]
    pub unsafe fn fused_on<const K: u8, const ID: u8>(
        w: &[u8],
        a: &QRows,
        offsets: &mut [[f32; 2]],
    ) -> [f32; GROUP] {
        let mut out = [0f32; GROUP];
        // SAFETY: forwarded.
        unsafe {
            match a.m {
                4 => out = fused::<K, 4, ID>(w, a, offsets),
                3 => out[..3].copy_from_slice(&fused::<K, 3, ID>(w, a, offsets)),
                2 => out[..2].copy_from_slice(&fused::<K, 2, ID>(w, a, offsets)),
                _ => out[..1].copy_from_slice(&fused::<K, 1, ID>(w, a, offsets)),
            }
        }
        out
    }

    /// [`fused_on`] for one activation row and two weight rows `w0`, `w1` of type `ID`;
    /// `o0`, `o1` are scratch of `k / 32` pairs.
    ///
    /// # Safety
    /// The CPU must have kernel `K`'s features; `a.m == 1`.
    #[inline(always)]
    pub unsafe fn fused_pair<const K: u8, const ID: u8>(
        w0: &[u8],
        w1: &[u8],
        a: &QRows,
        o0: &mut [[f32; 2]],
        o1: &mut [[f32; 2]],
    ) -> [f32; 2] {
        let (per, size) = Kind::of(ID).block();
        let nc = per / 32;
        let chunks = a.k / 32;
        let vnni = K == VNNI;
        // SAFETY: every block of both rows and every chunk of the activation row lies inside
        // the buffers; the CPU has the features (the caller's contract).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 2];
            for blk in 0..a.k / per {
                let (b0, b1) = (
                    &w0[blk * size..(blk + 1) * size],
                    &w1[blk * size..(blk + 1) * size],
                );
                for cc in 0..nc {
                    let c = blk * nc + cc;
                    let x = _mm256_loadu_si256(a.q.as_ptr().add(32 * c).cast());
                    let d = _mm256_set1_ps(*a.d.get_unchecked(c));
                    for (t, (b, offsets)) in
                        [(b0, &mut *o0), (b1, &mut *o1)].into_iter().enumerate()
                    {
                        let (u, sv) = chunk::<ID>(vnni, b, cc, offsets.get_unchecked_mut(c));
                        let dot = _mm256_cvtepi32_ps(dot32(vnni, u, x));
                        acc[t] = _mm256_fmadd_ps(dot, _mm256_mul_ps(sv, d), acc[t]);
                    }
                }
            }
            let sums = &a.sums[..2 * chunks];
            [
                hsum(acc[0]) + dot_f32(o0[..chunks].as_flattened(), sums),
                hsum(acc[1]) + dot_f32(o1[..chunks].as_flattened(), sums),
            ]
        }
    }

    /// [`fused_on`] for exactly `R` rows.
    #[inline(always)]
    unsafe fn fused<const K: u8, const R: usize, const ID: u8>(
        w: &[u8],
        a: &QRows,
        offsets: &mut [[f32; 2]],
    ) -> [f32; R] {
        let (per, size) = Kind::of(ID).block();
        let nc = per / 32;
        let k = a.k;
        let chunks = k / 32;
        let vnni = K == VNNI;
        // SAFETY: every block of the row and every chunk of rows 0 .. R (= m) lies inside
        // the buffers; the CPU has the features (the caller's contract).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            for blk in 0..k / per {
                let b = &w[blk * size..(blk + 1) * size];
                for cc in 0..nc {
                    let c = blk * nc + cc;
                    let (u, sv) = chunk::<ID>(vnni, b, cc, offsets.get_unchecked_mut(c));
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_si256(a.q.as_ptr().add(t * k + 32 * c).cast());
                        let dot = _mm256_cvtepi32_ps(dot32(vnni, u, x));
                        let d = _mm256_set1_ps(*a.d.get_unchecked(t * chunks + c));
                        *acc = _mm256_fmadd_ps(dot, _mm256_mul_ps(sv, d), *acc);
                    }
                }
            }
            let mut out = [0f32; R];
            for t in 0..R {
                let sums = &a.sums[2 * t * chunks..2 * (t + 1) * chunks];
                out[t] = hsum(acc[t]) + dot_f32(offsets[..chunks].as_flattened(), sums);
            }
            out
        }
    }

    /// Eight i32 sums of `u · x` over a chunk (VNNI: lanes 0–3 the first 16 elements;
    /// AVX2: lanes 0, 1, 4, 5). `vnni` is a constant wherever this is inlined.
    #[inline(always)]
    unsafe fn dot32(vnni: bool, u: __m256i, x: __m256i) -> __m256i {
        // SAFETY: only inlined into functions with the features.
        unsafe {
            if vnni {
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
            } else {
                let wl = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u));
                let wh = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(u));
                let xl = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
                let xh = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(x));
                _mm256_hadd_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh))
            }
        }
    }

    /// The scales of a chunk's halves `lo`, `hi` in the lanes [`dot32`] sums them in.
    #[inline(always)]
    unsafe fn lanes(vnni: bool, lo: f32, hi: f32) -> __m256 {
        // SAFETY: only inlined into functions with the features.
        unsafe {
            if vnni {
                _mm256_set_m128(_mm_set1_ps(hi), _mm_set1_ps(lo))
            } else {
                _mm256_setr_ps(lo, lo, hi, hi, lo, lo, hi, hi)
            }
        }
    }

    /// Chunk `cc` of block `b` (type `ID`) for the fused kernels: its integers in a register,
    /// its lane scales (a broadcast for the types with one scale a chunk), its halves'
    /// offsets into `offset`.
    #[inline(always)]
    unsafe fn chunk<const ID: u8>(
        vnni: bool,
        b: &[u8],
        cc: usize,
        offset: &mut [f32; 2],
    ) -> (__m256i, __m256) {
        let kind = Kind::of(ID);
        // SAFETY: b is a whole block (the caller's contract); only inlined into functions
        // with the features.
        unsafe {
            let u = unpack_avx2(kind, b.as_ptr(), cc);
            let sc = scales::<true>(kind, b, cc);
            *offset = [sc[0][1], sc[1][1]];
            let sv = if matches!(kind, Kind::Q2K | Kind::Q3K | Kind::Q6K) {
                lanes(vnni, sc[0][0], sc[1][0])
            } else {
                _mm256_set1_ps(sc[0][0])
            };
            (u, sv)
        }
    }

    /// `Σ a·b` in eight lanes.
    #[inline(always)]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: reads stay below n; only inlined into functions with AVX2 and FMA.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                let x = _mm256_loadu_ps(a.as_ptr().add(i));
                let y = _mm256_loadu_ps(b.as_ptr().add(i));
                acc = _mm256_fmadd_ps(x, y, acc);
                i += 8;
            }
            let mut s = hsum(acc);
            while i < n {
                s += a[i] * b[i];
                i += 1;
            }
            s
        }
    }

    /// Sum of the eight lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: only inlined into functions with AVX2.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }

    /// `R` rows' dot products with the unpacked weight row. Per chunk: eight i32 lane sums
    /// (VNNI: lanes 0–3 the first half, 4–7 the second; AVX2 after `hadd`: lanes 0, 1, 4, 5
    /// the first half), times the matching scales and the row's activation scale.
    #[inline(always)]
    unsafe fn group<const VNNI: bool, const R: usize>(
        row: &Unpacked,
        a: &QRows,
        i: usize,
    ) -> [f32; R] {
        let k = a.k;
        let chunks = k / 32;
        let mut bias = [0f32; R];
        let u = row.u.as_ptr();
        let q = a.q.as_ptr();
        // SAFETY: every chunk c < k/32 of the row and of rows i .. i + R (< m, the caller's
        // contract) lies inside the buffers.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            for c in 0..chunks {
                let w = _mm256_loadu_si256(u.add(32 * c).cast());
                let [lo, hi] = row.scale[c];
                let sv = lanes(VNNI, lo, hi);
                let [olo, ohi] = row.offset[c];
                for t in 0..R {
                    let at = (i + t) * k + 32 * c;
                    let x = _mm256_loadu_si256(q.add(at).cast());
                    let dot = dot32(VNNI, w, x);
                    let d = *a.d.get_unchecked((i + t) * chunks + c);
                    let scale = _mm256_mul_ps(sv, _mm256_set1_ps(d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t]);
                    let s = a.sums.as_ptr().add(2 * ((i + t) * chunks + c));
                    bias[t] += olo * *s + ohi * *s.add(1);
                }
            }
            let mut out = [0f32; R];
            for t in 0..R {
                out[t] = hsum(acc[t]) + bias[t];
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BLOCKS, random_blocks};
    use super::super::{Kind, dequantize};
    use super::*;

    /// Activations in ±2 from a seed.
    fn acts(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
                (h >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// The product in f64 over the dequantised weights (the definition).
    fn reference(w: &[f32], a: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|kk| a[i * k + kk] as f64 * w[j * k + kk] as f64)
                    .sum();
            }
        }
        out
    }

    /// Each kernel's product over every type, for row counts around the group size and a
    /// column count that splits unevenly, agrees with the f64 definition to within the
    /// activations' int8 rounding (half a step per element, bounded by Σ|w|·d/2).
    #[test]
    fn every_kernel_matches_the_f64_definition() {
        for kind in BLOCKS {
            let (per, size) = kind.block();
            let (k, n) = (2 * per.max(64), 5);
            let raw = random_blocks(kind, n * k / per, 3);
            let w = dequantize(kind, &raw, n * k);
            let rb = kind.row_bytes(k);
            let bytes: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(raw.clone());
            let mat = QMatrix::new(k, bytes, vec![(kind, (0..n).map(|j| j * rb).collect())]);
            assert_eq!(mat.bytes(), raw.len());
            let _ = size;
            for m in [1, 3, 4, 5, 9] {
                let a = acts(m * k, 5);
                let want = reference(&w, &a, m, k, n);
                let qa = QRows::new(&a, m, k);
                for kernel in Kernel::available() {
                    let mut row = Unpacked::new(k);
                    for j in 0..n {
                        row.read(kind, &raw[j * rb..(j + 1) * rb], kernel);
                        for i in 0..m {
                            let got = kernel.dots(&row, &qa, i, 1)[0] as f64;
                            // Rounding bound: Σ_kk |w| · d(chunk) / 2, plus f32 slack.
                            let bound: f64 = (0..k)
                                .map(|kk| {
                                    w[j * k + kk].abs() as f64 * qa.d[i * k / 32 + kk / 32] as f64
                                })
                                .sum::<f64>()
                                * 0.5
                                + 1e-4 * (1.0 + want[i * n + j].abs());
                            let err = (got - want[i * n + j]).abs();
                            assert!(
                                err <= bound,
                                "{kind:?} {kernel:?} m={m} ({i},{j}): {got} vs {} (bound {bound})",
                                want[i * n + j]
                            );
                        }
                    }
                }
                // The whole product (fused for up to GROUP rows, else through Unpacked)
                // agrees with the definition, and equals the one-row results.
                let mut dst = vec![1.0f32; m * n];
                mat.matmul(&mut dst, &a, m, true, Threads::Rayon);
                for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                    let (got, want) = (dst[i * n + j] as f64 - 1.0, want[i * n + j]);
                    let scale: f64 = (0..k).map(|kk| w[j * k + kk].abs() as f64).sum::<f64>();
                    assert!(
                        (got - want).abs() <= 0.01 * scale + 1e-3,
                        "{kind:?} m={m} ({i},{j}): {got} vs {want}"
                    );
                }
                // Under MANY_ROWS the same integer sums as one row at a time; from it, f32
                // tiles: the dequantised weights' exact product up to f32 rounding.
                if m < MANY_ROWS {
                    let mut single = vec![0.0f32; m * n];
                    for i in 0..m {
                        mat.matmul(&mut single[i * n..], &a[i * k..], 1, false, Threads::One);
                    }
                    for (x, y) in dst.iter().zip(&single) {
                        assert!(
                            (x - 1.0 - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "{kind:?} m={m}"
                        );
                    }
                } else {
                    for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                        let (got, want) = (dst[i * n + j] as f64 - 1.0, want[i * n + j]);
                        assert!(
                            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "{kind:?} m={m}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_dequantise_as_ggml_does() {
        for kind in BLOCKS {
            let per = kind.block().0;
            let k = 2 * per;
            let raw = random_blocks(kind, 2 * k / per, 21);
            let rb = kind.row_bytes(k);
            let mat = QMatrix::new(k, Arc::new(raw.clone()), vec![(kind, vec![rb, 0])]);
            for (j, from) in [(0, rb), (1, 0)] {
                let mut got = vec![0.0f32; k];
                mat.row_f32(j, &mut got);
                let want = dequantize(kind, &raw[from..from + rb], k);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{kind:?} {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn parts_of_several_types_and_scattered_rows() {
        let k = 256;
        let a = acts(2 * k, 9);
        let q8 = random_blocks(Kind::Q8_0, k / 32 * 2, 1);
        let q6 = random_blocks(Kind::Q6K, 3, 2);
        let mut buf = q8.clone();
        buf.extend(&q6);
        let (r8, r6) = (Kind::Q8_0.row_bytes(k), Kind::Q6K.row_bytes(k));
        // Outputs: Q8_0 row 1, Q8_0 row 0, then Q6_K rows 2, 0.
        let mat = QMatrix::new(
            k,
            Arc::new(buf.clone()),
            vec![
                (Kind::Q8_0, vec![r8, 0]),
                (Kind::Q6K, vec![q8.len() + 2 * r6, q8.len()]),
            ],
        );
        assert_eq!((mat.cols(), mat.rows()), (4, k));
        let mut dst = vec![0.0; 8];
        mat.matmul(&mut dst, &a, 2, false, Threads::One);
        let w8 = dequantize(Kind::Q8_0, &q8, 2 * k);
        let w6 = dequantize(Kind::Q6K, &q6, 3 * k);
        let rows: Vec<&[f32]> = vec![&w8[k..], &w8[..k], &w6[2 * k..], &w6[..k]];
        for i in 0..2 {
            for (j, w) in rows.iter().enumerate() {
                let want: f32 = (0..k).map(|kk| a[i * k + kk] * w[kk]).sum();
                assert!(
                    (dst[i * 4 + j] - want).abs() < 0.05 * (1.0 + want.abs()),
                    "({i},{j}) {} vs {want}",
                    dst[i * 4 + j]
                );
            }
        }
        let mut row = vec![0.0; k];
        mat.row_f32(2, &mut row);
        assert_eq!(row, w6[2 * k..3 * k]);
    }
}
