//! `stageloop bench kernels`: what each kind of product reaches on this CPU against the CPU's
//! own peak for its number type, measured in the same run. The peaks are tight loops of
//! independent multiply-adds in registers (f32 FMA, AVX512_BF16 `vdpbf16ps`, AVX512-VNNI
//! `vpdpbusd`) on every thread; the products are the ones training and sampling run, at
//! SmolLM2's MLP shape (`[·, 576] × [576, 1536]`).

use crate::cpu::gemm::{View, matmul};
use crate::cpu::packed::{Packed, Threads};
use crate::cpu::pair::with_pair;
use crate::cpu::quant::matmul::{Kernel, MANY_ROWS};
use crate::cpu::quant::{Kind, QMatrix};
use crate::model::gguf_write::{Store, quantize};
use serde::Serialize;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Serialize)]
pub struct Figure {
    /// What was measured.
    pub what: String,
    /// Number type of its multiply-adds: `f32`, `bf16` or `int8`.
    pub kind: &'static str,
    /// Billions of operations (a multiply-add is 2) a second.
    pub gops: f64,
    /// Against the measured peak of its number type (None for the peaks themselves).
    pub of_peak: Option<f64>,
}

/// How long each figure is measured (best of repeated calls within it).
const BUDGET: Duration = Duration::from_millis(400);

/// The best rate of `f` (which returns the operations it did) over [`BUDGET`].
fn rate(mut f: impl FnMut() -> f64) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut best = 0.0f64;
    while start.elapsed() < BUDGET {
        let t = Instant::now();
        let ops = f();
        best = best.max(ops / t.elapsed().as_secs_f64());
    }
    best / 1e9
}

/// Threads the figures use (rayon's pool: `RAYON_NUM_THREADS` sets it).
fn threads() -> usize {
    rayon::current_num_threads()
}

/// `f` on every thread at once; the operations summed.
fn on_all(f: impl Fn() -> f64 + Sync) -> f64 {
    use rayon::prelude::*;
    (0..threads()).into_par_iter().map(|_| f()).sum()
}

/// The figures, the training products over `training_rows` rows.
pub fn run(training_rows: usize) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut peaks = std::collections::BTreeMap::new();
    for (kind, peak) in peak_loops() {
        let g = rate(|| on_all(peak));
        peaks.insert(kind, g);
        out.push(Figure {
            what: format!(
                "peak: independent multiply-adds in registers, {} threads",
                threads()
            ),
            kind,
            gops: g,
            of_peak: None,
        });
    }
    let (k, n) = (576, 1536);
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
        .collect();
    let mut push = |what: String, kind: &'static str, gops: f64| {
        out.push(Figure {
            what,
            kind,
            gops,
            of_peak: peaks.get(kind).map(|p| gops / p),
        })
    };
    // Training: the gemm crate's product (4,096 rows: a micro-batch), and with bf16 operands.
    let m = training_rows;
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0)
        .collect();
    let g = rate(|| {
        black_box(matmul(View::new(&a, m, k), View::new(&w, k, n)));
        2.0 * (m * k * n) as f64
    });
    push(
        format!("training product (gemm), [{m}, {k}] × [{k}, {n}]"),
        "f32",
        g,
    );
    if crate::cpu::bf16::available() {
        let g = rate(|| {
            black_box(crate::cpu::bf16::matmul(
                View::new(&a, m, k),
                View::new(&w, k, n),
            ));
            2.0 * (m * k * n) as f64
        });
        push(
            format!("training product, bf16 operands (packing included), [{m}, {k}] × [{k}, {n}]"),
            "bf16",
            g,
        );
    }
    // Decoding: packed f32 panels and quantised blocks, 1 and 64 rows, on the pair.
    let packed = Packed::new(&w, k, n);
    // Rows of the transpose (one per output) as blocks.
    let rows = crate::cpu::transpose::transposed(&w, k, n);
    let blocks = |store: Store, kind: Kind| {
        let bytes = quantize(&rows, store);
        let rb = kind.row_bytes(k);
        QMatrix::new(
            k,
            Arc::new(bytes),
            vec![(kind, (0..n).map(|j| j * rb).collect())],
        )
    };
    let (q8, q41) = (
        blocks(Store::Q8_0, Kind::Q8_0),
        blocks(Store::Q4_1, Kind::Q4_1),
    );
    for rows_n in [1usize, 64] {
        let a = &a[..rows_n * k];
        let mut dst = vec![0.0f32; rows_n * n];
        let ops = 2.0 * (rows_n * k * n) as f64;
        let g = with_pair(|pair| {
            let t = pair.map_or(Threads::Rayon, Threads::Pair);
            rate(|| {
                packed.matmul(&mut dst, a, rows_n, false, t);
                ops
            })
        });
        push(
            format!("decoder, packed f32, {rows_n} row(s) × [{k}, {n}]"),
            "f32",
            g,
        );
        for (name, q) in [("Q8_0", &q8), ("Q4_1", &q41)] {
            let g = with_pair(|pair| {
                let t = pair.map_or(Threads::Rayon, Threads::Pair);
                rate(|| {
                    q.matmul(&mut dst, a, rows_n, false, t);
                    ops
                })
            });
            // From MANY_ROWS rows the blocks are dequantised into f32 tiles.
            let (how, kind) = if rows_n >= MANY_ROWS {
                ("dequantised to f32 tiles".to_string(), "f32")
            } else {
                (format!("{:?} kernel", Kernel::detect()), "int8")
            };
            push(
                format!("decoder, {name} blocks ({how}), {rows_n} row(s) × [{k}, {n}]"),
                kind,
                g,
            );
        }
    }
    out
}

/// A number type's name and its peak loop: a function doing a fixed number of independent
/// multiply-adds in registers and returning the operations done.
type PeakLoop = (&'static str, fn() -> f64);

/// Each number type's peak loop this CPU can run.
fn peak_loops() -> Vec<PeakLoop> {
    let mut v: Vec<PeakLoop> = vec![("f32", peak::f32)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512f") {
            v.push(("bf16", peak::bf16));
        }
        if std::is_x86_feature_detected!("avx512vnni") {
            v.push(("int8", peak::int8));
        } else if std::is_x86_feature_detected!("avx2") {
            v.push(("int8", peak::int8_avx2));
        }
    }
    v
}

/// The peak loops: 12 independent accumulators (enough to cover each instruction's latency
/// on two pipes), `ITERS` rounds.
mod peak {
    const ITERS: usize = 1 << 20;
    const CHAINS: usize = 12;

    /// f32 FMAs: AVX-512 where the CPU has it, else AVX2, else a portable loop.
    pub fn f32() -> f64 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { x86::f32_512() };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { x86::f32_256() };
            }
        }
        let mut acc = [1.0f32; CHAINS];
        for _ in 0..ITERS {
            for a in acc.iter_mut() {
                *a = a.mul_add(0.999_999, 1e-7);
            }
        }
        std::hint::black_box(acc);
        (2 * CHAINS * ITERS) as f64
    }

    #[cfg(target_arch = "x86_64")]
    pub fn bf16() -> f64 {
        // SAFETY: only listed where the CPU has AVX512_BF16 (peak_loops).
        unsafe { x86::bf16_512() }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn int8() -> f64 {
        // SAFETY: only listed where the CPU has AVX512-VNNI (peak_loops).
        unsafe { x86::int8_512() }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn int8_avx2() -> f64 {
        // SAFETY: only listed where the CPU has AVX2 (peak_loops).
        unsafe { x86::int8_256() }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::{CHAINS, ITERS};
        use std::arch::x86_64::*;
        use std::hint::black_box;

        #[target_feature(enable = "avx512f")]
        pub unsafe fn f32_512() -> f64 {
            let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            let mut acc = [_mm512_set1_ps(1.0); CHAINS];
            for _ in 0..ITERS {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
            }
            black_box(acc);
            (2 * 16 * CHAINS * ITERS) as f64
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn f32_256() -> f64 {
            let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_set1_ps(1.0); CHAINS];
            for _ in 0..ITERS {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            black_box(acc);
            (2 * 8 * CHAINS * ITERS) as f64
        }

        /// `vdpbf16ps`: per lane, two bf16 products added to an f32 (4 operations).
        #[target_feature(enable = "avx512f,avx512bf16")]
        pub unsafe fn bf16_512() -> f64 {
            let x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            for _ in 0..ITERS {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbf16_ps(*a, x, x);
                }
            }
            black_box(acc);
            (4 * 16 * CHAINS * ITERS) as f64
        }

        /// `vpdpbusd`: per lane, four u8 × i8 products added to an i32 (8 operations).
        #[target_feature(enable = "avx512f,avx512vnni")]
        pub unsafe fn int8_512() -> f64 {
            let (u, s) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
            let mut acc = [_mm512_setzero_si512(); CHAINS];
            for _ in 0..ITERS {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbusd_epi32(*a, u, s);
                }
            }
            black_box(acc);
            (8 * 16 * CHAINS * ITERS) as f64
        }

        /// AVX2's int8 path as the decoder's fallback kernel runs it: widen to i16, `vpmaddwd`
        /// (per lane two i16 products added: 4 operations), add.
        #[target_feature(enable = "avx2")]
        pub unsafe fn int8_256() -> f64 {
            let (u, s) = (_mm256_set1_epi16(3), _mm256_set1_epi16(-2));
            let mut acc = [_mm256_setzero_si256(); CHAINS];
            for _ in 0..ITERS {
                for a in acc.iter_mut() {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(u, s));
                }
            }
            black_box(acc);
            (4 * 8 * CHAINS * ITERS) as f64
        }
    }
}
