//! Each block format as 32-element chunks: chunk `c` of a block is 32 unsigned integers `u`
//! (at most 8 bits) and, per 16 elements `h`, a scale and an offset with
//! `w = scale[h] · u + offset[h]`. Symmetric types fold their zero point into the offset
//! (Q4_0: `u − 8` becomes offset `−8·d`; Q8_0 stores `q + 128`). The integer kernels multiply
//! `u` by int8 activations; the offsets multiply the activations' sums.
//!
//! [`unpack`] and [`scales`] are the portable reading; [`unpack_avx2`] reads the same chunk into
//! one 256-bit register. Both are tested against [`super::dequantize`] for every type.

use super::{Kind, f16_with, q3k_scales, scale_min_k4};

/// 32-element chunks in a block of `kind`.
pub fn chunks(kind: Kind) -> usize {
    kind.block().0 / 32
}

/// `[[scale, offset]; 2]` of the two 16-element halves of chunk `c` of `b` (f16 fields read
/// with F16C when `F16C`: see [`f16_with`]).
#[inline(always)]
pub fn scales<const F16C: bool>(kind: Kind, b: &[u8], c: usize) -> [[f32; 2]; 2] {
    let f16 = f16_with::<F16C>;
    let same = |s: f32, o: f32| [[s, o], [s, o]];
    match kind {
        Kind::Q4_0 => {
            let d = f16(&b[0..2]);
            same(d, -8.0 * d)
        }
        Kind::Q5_0 => {
            let d = f16(&b[0..2]);
            same(d, -16.0 * d)
        }
        Kind::Q8_0 => {
            let d = f16(&b[0..2]);
            same(d, -128.0 * d)
        }
        Kind::Q4_1 | Kind::Q5_1 => same(f16(&b[0..2]), f16(&b[2..4])),
        Kind::Q2K => {
            let (d, dmin) = (f16(&b[80..82]), f16(&b[82..84]));
            let one = |s: u8| [d * (s & 0xF) as f32, -dmin * (s >> 4) as f32];
            [one(b[2 * c]), one(b[2 * c + 1])]
        }
        Kind::Q3K => {
            let d = f16(&b[108..110]);
            let sc = q3k_scales(&b[96..108]);
            let one = |s: i8| {
                let dl = d * s as f32;
                [dl, -4.0 * dl]
            };
            [one(sc[2 * c]), one(sc[2 * c + 1])]
        }
        Kind::Q4K | Kind::Q5K => {
            let (d, dmin) = (f16(&b[0..2]), f16(&b[2..4]));
            let (s, m) = scale_min_k4(c, &b[4..16]);
            same(d * s as f32, -dmin * m as f32)
        }
        Kind::Q6K => {
            let d = f16(&b[208..210]);
            let (half_, g) = (c / 4, c % 4);
            let sc = &b[192 + 8 * half_..];
            let one = |s: u8| {
                let dl = d * s as i8 as f32;
                [dl, -32.0 * dl]
            };
            [one(sc[2 * g]), one(sc[2 * g + 1])]
        }
        Kind::F32 | Kind::F16 | Kind::Bf16 => unreachable!("plain floats are not blocks"),
    }
}

/// The 32 integers of chunk `c` of `b`.
#[inline(always)]
pub fn unpack(kind: Kind, b: &[u8], c: usize, u: &mut [u8; 32]) {
    let nibbles = |qs: &[u8], u: &mut [u8; 32]| {
        for i in 0..16 {
            u[i] = qs[i] & 0xF;
            u[i + 16] = qs[i] >> 4;
        }
    };
    let fifth = |qh: &[u8], u: &mut [u8; 32]| {
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (i, x) in u.iter_mut().enumerate() {
            *x |= (((qh >> i) & 1) as u8) << 4;
        }
    };
    match kind {
        Kind::Q4_0 => nibbles(&b[2..18], u),
        Kind::Q4_1 => nibbles(&b[4..20], u),
        Kind::Q5_0 => {
            nibbles(&b[6..22], u);
            fifth(&b[2..6], u);
        }
        Kind::Q5_1 => {
            nibbles(&b[8..24], u);
            fifth(&b[4..8], u);
        }
        Kind::Q8_0 => {
            for (x, &q) in u.iter_mut().zip(&b[2..34]) {
                *x = q ^ 0x80;
            }
        }
        Kind::Q2K | Kind::Q3K => {
            let (qs, shift) = (
                &b[32 * (c / 4) + if kind == Kind::Q2K { 16 } else { 32 }..],
                2 * (c % 4),
            );
            for (x, &q) in u.iter_mut().zip(qs) {
                *x = (q >> shift) & 3;
            }
            if kind == Kind::Q3K {
                for (x, &m) in u.iter_mut().zip(&b[0..32]) {
                    *x |= ((m >> c) & 1) << 2;
                }
            }
        }
        Kind::Q4K | Kind::Q5K => {
            let qs = if kind == Kind::Q4K { 16 } else { 48 };
            let (qs, shift) = (&b[qs + 32 * (c / 2)..], 4 * (c % 2));
            for (x, &q) in u.iter_mut().zip(qs) {
                *x = (q >> shift) & 0xF;
            }
            if kind == Kind::Q5K {
                for (x, &h) in u.iter_mut().zip(&b[16..48]) {
                    *x |= ((h >> c) & 1) << 4;
                }
            }
        }
        Kind::Q6K => {
            let (half_, g) = (c / 4, c % 4);
            let ql = &b[64 * half_ + 32 * (g % 2)..];
            let qh = &b[128 + 32 * half_..];
            for i in 0..32 {
                let low = (ql[i] >> (4 * (g / 2))) & 0xF;
                u[i] = low | (((qh[i] >> (2 * g)) & 3) << 4);
            }
        }
        Kind::F32 | Kind::F16 | Kind::Bf16 => unreachable!("plain floats are not blocks"),
    }
}

/// [`unpack`] into one register, bytes in element order.
///
/// # Safety
/// The CPU must have AVX2; `b` points to a whole block of `kind`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_avx2(kind: Kind, b: *const u8, c: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let low4 = _mm256_set1_epi8(0xF);
    // The 16 bytes at `p` as 32 nibbles: low nibbles first, then high ones.
    let nibbles = |p: *const u8| {
        // SAFETY: the caller's block holds 16 bytes at p.
        let q = unsafe { _mm_loadu_si128(p.cast()) };
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
        _mm256_and_si256(both, low4)
    };
    // Byte i is 0xFF where bit i of the 32 bits at `p` is set.
    let bits = |p: *const u8| {
        // SAFETY: the caller's block holds 4 bytes at p.
        let v = unsafe { p.cast::<u32>().read_unaligned() };
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(v as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask)
    };
    // SAFETY: every load below reads offsets inside the caller's block of `kind`.
    unsafe {
        let load32 = |p: *const u8| _mm256_loadu_si256(p.cast());
        match kind {
            Kind::Q4_0 => nibbles(b.add(2)),
            Kind::Q4_1 => nibbles(b.add(4)),
            Kind::Q5_0 | Kind::Q5_1 => {
                let (qh, qs) = if kind == Kind::Q5_0 { (2, 6) } else { (4, 8) };
                let high = _mm256_and_si256(bits(b.add(qh)), _mm256_set1_epi8(16));
                _mm256_or_si256(nibbles(b.add(qs)), high)
            }
            Kind::Q8_0 => _mm256_xor_si256(load32(b.add(2)), _mm256_set1_epi8(-128)),
            Kind::Q2K | Kind::Q3K => {
                let base = if kind == Kind::Q2K { 16 } else { 32 };
                let q = load32(b.add(base + 32 * (c / 4)));
                let shifted = _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * (c % 4) as i32));
                let low = _mm256_and_si256(shifted, _mm256_set1_epi8(3));
                if kind == Kind::Q2K {
                    return low;
                }
                let bit = _mm256_set1_epi8(1 << c);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(load32(b), bit), bit);
                _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(4)))
            }
            Kind::Q4K | Kind::Q5K => {
                let qs = if kind == Kind::Q4K { 16 } else { 48 };
                let q = load32(b.add(qs + 32 * (c / 2)));
                let shifted = _mm256_srl_epi16(q, _mm_cvtsi32_si128(4 * (c % 2) as i32));
                let low = _mm256_and_si256(shifted, low4);
                if kind == Kind::Q4K {
                    return low;
                }
                let bit = _mm256_set1_epi8(1 << c);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(load32(b.add(16)), bit), bit);
                _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(16)))
            }
            Kind::Q6K => {
                let (half_, g) = (c / 4, c % 4);
                let ql = load32(b.add(64 * half_ + 32 * (g % 2)));
                let low = _mm256_and_si256(
                    _mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (g / 2) as i32)),
                    low4,
                );
                let qh = load32(b.add(128 + 32 * half_));
                let two = _mm256_and_si256(
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)),
                    _mm256_set1_epi8(3),
                );
                _mm256_or_si256(low, _mm256_slli_epi16::<4>(two))
            }
            Kind::F32 | Kind::F16 | Kind::Bf16 => unreachable!("plain floats are not blocks"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BLOCKS, random_blocks};
    use super::super::{Kind, dequantize};
    use super::*;

    /// Every chunk's `scale · u + offset` equals ggml's dequantisation of the block.
    #[test]
    fn chunks_read_as_ggml_dequantises() {
        for kind in BLOCKS {
            let (per, size) = kind.block();
            let raw = random_blocks(kind, 3, 7);
            let want = dequantize(kind, &raw, 3 * per);
            for (bi, b) in raw.chunks_exact(size).enumerate() {
                for c in 0..chunks(kind) {
                    let mut u = [0u8; 32];
                    unpack(kind, b, c, &mut u);
                    let s = scales::<false>(kind, b, c);
                    for (i, &x) in u.iter().enumerate() {
                        let [scale, offset] = s[i / 16];
                        let got = scale * x as f32 + offset;
                        let w = want[bi * per + 32 * c + i];
                        assert!(
                            (got - w).abs() <= 1e-6 * (1.0 + w.abs()),
                            "{kind:?} block {bi} chunk {c} element {i}: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_reading_equals_the_portable_one() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for kind in BLOCKS {
            let raw = random_blocks(kind, 2, 11);
            for b in raw.chunks_exact(kind.block().1) {
                for c in 0..chunks(kind) {
                    let mut want = [0u8; 32];
                    unpack(kind, b, c, &mut want);
                    let mut got = [0u8; 32];
                    // SAFETY: the CPU has AVX2; b is a whole block.
                    unsafe {
                        let v = unpack_avx2(kind, b.as_ptr(), c);
                        std::arch::x86_64::_mm256_storeu_si256(got.as_mut_ptr().cast(), v);
                    }
                    assert_eq!(got, want, "{kind:?} chunk {c}");
                }
            }
        }
        let _ = Kind::Q4_0;
    }
}
