//! A matrix transposed into another buffer, in 8 × 8 blocks transposed in AVX registers (when
//! the CPU has AVX; elementwise otherwise and at the edges), the blocks walked in 64 × 64
//! tiles so that the lines read and written stay in L1, and the output's row bands split
//! over rayon's threads.
//!
//! The training products use it to hand `gemm` a transposed weight row-major: for `dy · Wᵀ`
//! `gemm` otherwise re-lays the weight out on the calling thread at every call while the
//! other cores wait (docs/PERF.md).

use rayon::prelude::*;

/// Rows and columns of a tile.
const TILE: usize = 64;

/// `out[i·out_stride + j] = src[j·stride + i]` for `i < rows`, `j < cols`: the `[rows, cols]`
/// transpose of the `[cols, rows]` row-major matrix in `src` (row stride `stride`), written
/// row-major into `out` (row stride `out_stride`). Elements of `out` between rows (past
/// `cols`) are left as they are. Panics if either buffer is too short.
pub fn transpose(
    src: &[f32],
    rows: usize,
    cols: usize,
    stride: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        stride >= rows && out_stride >= cols,
        "transpose: strides too short"
    );
    assert!(
        src.len() >= (cols - 1) * stride + rows && out.len() >= (rows - 1) * out_stride + cols,
        "transpose: buffer too short"
    );
    let out = &mut out[..(rows - 1) * out_stride + cols];
    out.par_chunks_mut(TILE * out_stride)
        .enumerate()
        .for_each(|(band, dst)| {
            let i0 = band * TILE;
            let h = TILE.min(rows - i0);
            for j0 in (0..cols).step_by(TILE) {
                let w = TILE.min(cols - j0);
                tile(src, stride, i0, j0, h, w, dst, out_stride);
            }
        });
}

/// A row-major `[rows, cols]` matrix as its row-major `[cols, rows]` transpose, in fresh
/// memory.
pub fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * cols, "transposed: not {rows}×{cols}");
    let mut out = vec![0.0f32; x.len()];
    transpose(x, cols, rows, cols, &mut out, rows);
    out
}

/// One `h × w` tile: output rows `i0..i0 + h` (the band `dst` starts at) and columns
/// `j0..j0 + w`.
#[allow(clippy::too_many_arguments)]
fn tile(
    src: &[f32],
    stride: usize,
    i0: usize,
    j0: usize,
    h: usize,
    w: usize,
    dst: &mut [f32],
    out_stride: usize,
) {
    let (h8, w8) = (h / 8 * 8, w / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    let blocked = if std::is_x86_feature_detected!("avx") {
        for i in (0..h8).step_by(8) {
            for j in (0..w8).step_by(8) {
                let from = &src[(j0 + j) * stride + i0 + i..][..7 * stride + 8];
                let to = &mut dst[i * out_stride + j0 + j..][..7 * out_stride + 8];
                // SAFETY: the CPU has AVX (checked above); both slices hold the 8 rows of 8
                // the block reads and writes (their lengths are taken just above).
                unsafe { block8(from, stride, to, out_stride) };
            }
        }
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let blocked = false;
    let (h8, w8) = if blocked { (h8, w8) } else { (0, 0) };
    // What the 8 × 8 blocks left: the columns past w8 in every row, the rows past h8.
    for i in 0..h {
        let from = if i < h8 { w8 } else { 0 };
        let row = &mut dst[i * out_stride + j0..i * out_stride + j0 + w];
        for (j, o) in row.iter_mut().enumerate().skip(from) {
            *o = src[(j0 + j) * stride + i0 + i];
        }
    }
}

/// The 8 × 8 block at the start of `src` (rows `stride` apart) transposed into `dst` (rows
/// `out_stride` apart).
///
/// # Safety
/// The CPU must have AVX; `src` and `dst` must hold `7·stride + 8` and `7·out_stride + 8`
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block8(src: &[f32], stride: usize, dst: &mut [f32], out_stride: usize) {
    use std::arch::x86_64::*;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: every load reads 8 floats at row r < 8 of src and every store writes 8 at row
    // r < 8 of dst, inside the lengths the caller guarantees.
    unsafe {
        let r0 = _mm256_loadu_ps(s);
        let r1 = _mm256_loadu_ps(s.add(stride));
        let r2 = _mm256_loadu_ps(s.add(2 * stride));
        let r3 = _mm256_loadu_ps(s.add(3 * stride));
        let r4 = _mm256_loadu_ps(s.add(4 * stride));
        let r5 = _mm256_loadu_ps(s.add(5 * stride));
        let r6 = _mm256_loadu_ps(s.add(6 * stride));
        let r7 = _mm256_loadu_ps(s.add(7 * stride));
        let t0 = _mm256_unpacklo_ps(r0, r1);
        let t1 = _mm256_unpackhi_ps(r0, r1);
        let t2 = _mm256_unpacklo_ps(r2, r3);
        let t3 = _mm256_unpackhi_ps(r2, r3);
        let t4 = _mm256_unpacklo_ps(r4, r5);
        let t5 = _mm256_unpackhi_ps(r4, r5);
        let t6 = _mm256_unpacklo_ps(r6, r7);
        let t7 = _mm256_unpackhi_ps(r6, r7);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let o = out_stride;
        _mm256_storeu_ps(d, _mm256_permute2f128_ps::<0x20>(u0, u4));
        _mm256_storeu_ps(d.add(o), _mm256_permute2f128_ps::<0x20>(u1, u5));
        _mm256_storeu_ps(d.add(2 * o), _mm256_permute2f128_ps::<0x20>(u2, u6));
        _mm256_storeu_ps(d.add(3 * o), _mm256_permute2f128_ps::<0x20>(u3, u7));
        _mm256_storeu_ps(d.add(4 * o), _mm256_permute2f128_ps::<0x31>(u0, u4));
        _mm256_storeu_ps(d.add(5 * o), _mm256_permute2f128_ps::<0x31>(u1, u5));
        _mm256_storeu_ps(d.add(6 * o), _mm256_permute2f128_ps::<0x31>(u2, u6));
        _mm256_storeu_ps(d.add(7 * o), _mm256_permute2f128_ps::<0x31>(u3, u7));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_shape_edge_with_strides() {
        // Sizes below, at and off the 8-block and 64-tile edges; padded rows on both sides.
        for &(rows, cols) in &[
            (1, 1),
            (3, 5),
            (8, 8),
            (13, 29),
            (64, 64),
            (70, 131),
            (200, 9),
        ] {
            let (stride, out_stride) = (rows + 3, cols + 5);
            let src: Vec<f32> = (0..cols * stride).map(|x| x as f32).collect();
            let mut out = vec![-1.0f32; rows * out_stride];
            transpose(&src, rows, cols, stride, &mut out, out_stride);
            for i in 0..rows {
                for j in 0..out_stride {
                    let want = if j < cols { src[j * stride + i] } else { -1.0 };
                    assert_eq!(out[i * out_stride + j], want, "{rows}×{cols} at ({i}, {j})");
                }
            }
            // The allocating form, on an unpadded `[rows, cols]` matrix.
            let x: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let t = transposed(&x, rows, cols);
            for (c, out_row) in t.chunks_exact(rows).enumerate() {
                for (r, &v) in out_row.iter().enumerate() {
                    assert_eq!(v, x[r * cols + c], "transposed {rows}×{cols} at ({c}, {r})");
                }
            }
        }
    }
}
