//! llama.cpp's block-quantised weight formats, kept as they are in a GGUF file: what each type's
//! blocks hold ([`Kind`]), their values as floats ([`dequantize`], the definition the kernels
//! are tested against), and the product of a few rows of activations with a matrix of blocks
//! ([`QMatrix`]), which reads the blocks directly.
//!
//! Every type is read as 32-element chunks of small unsigned integers `u` with a scale and an
//! offset per 16 elements, `w = scale · u + offset` ([`format`]): one integer dot product
//! kernel then serves all of them.

pub mod format;
pub mod frozen;
pub mod matmul;

pub use matmul::{QMatrix, QRows};

/// A tensor's element type: plain floats, or one of ggml's block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl Kind {
    /// The type with ggml's id `id` (`enum ggml_type`), if it is one of these.
    pub fn from_ggml(id: u32) -> Option<Kind> {
        Some(match id {
            0 => Kind::F32,
            1 => Kind::F16,
            2 => Kind::Q4_0,
            3 => Kind::Q4_1,
            6 => Kind::Q5_0,
            7 => Kind::Q5_1,
            8 => Kind::Q8_0,
            10 => Kind::Q2K,
            11 => Kind::Q3K,
            12 => Kind::Q4K,
            13 => Kind::Q5K,
            14 => Kind::Q6K,
            30 => Kind::Bf16,
            _ => return None,
        })
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Kind::F32 => "F32",
            Kind::F16 => "F16",
            Kind::Bf16 => "BF16",
            Kind::Q4_0 => "Q4_0",
            Kind::Q4_1 => "Q4_1",
            Kind::Q5_0 => "Q5_0",
            Kind::Q5_1 => "Q5_1",
            Kind::Q8_0 => "Q8_0",
            Kind::Q2K => "Q2_K",
            Kind::Q3K => "Q3_K",
            Kind::Q4K => "Q4_K",
            Kind::Q5K => "Q5_K",
            Kind::Q6K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Kind::F32 => (1, 4),
            Kind::F16 | Kind::Bf16 => (1, 2),
            Kind::Q4_0 => (32, 18),
            Kind::Q4_1 => (32, 20),
            Kind::Q5_0 => (32, 22),
            Kind::Q5_1 => (32, 24),
            Kind::Q8_0 => (32, 34),
            Kind::Q2K => (256, 84),
            Kind::Q3K => (256, 110),
            Kind::Q4K => (256, 144),
            Kind::Q5K => (256, 176),
            Kind::Q6K => (256, 210),
        }
    }

    /// The type of a ggml id known to be one of these (a constant in the kernels, which are
    /// compiled once per type: see [`for_kind`]).
    #[inline(always)]
    pub const fn of(id: u8) -> Kind {
        match id {
            2 => Kind::Q4_0,
            3 => Kind::Q4_1,
            6 => Kind::Q5_0,
            7 => Kind::Q5_1,
            8 => Kind::Q8_0,
            10 => Kind::Q2K,
            11 => Kind::Q3K,
            12 => Kind::Q4K,
            13 => Kind::Q5K,
            14 => Kind::Q6K,
            1 => Kind::F16,
            30 => Kind::Bf16,
            _ => Kind::F32,
        }
    }

    /// Whether the type is a block format (read by [`QMatrix`]) rather than plain floats.
    pub fn is_blocks(self) -> bool {
        self.block().0 > 1
    }

    /// Bytes of a row of `k` elements (`k` a multiple of the block size).
    pub fn row_bytes(self, k: usize) -> usize {
        let (per, size) = self.block();
        k / per * size
    }
}

/// An f16's value from its two little-endian bytes.
#[inline(always)]
pub fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// [`f16`] with the F16C instruction when `F16C` (then the caller must be compiled with that
/// feature, and the CPU have it): one instruction instead of a call.
#[inline(always)]
pub fn f16_with<const F16C: bool>(b: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if F16C {
        use std::arch::x86_64::*;
        let bits = u16::from_le_bytes([b[0], b[1]]);
        // SAFETY: F16C is only set by callers compiled with the f16c feature, which run only
        // where the CPU has it.
        return unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) };
    }
    f16(b)
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K or
/// Q5_K block (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The sixteen 6-bit scales of a Q3_K block (stored offset by 32) from its 12 packed bytes.
#[inline(always)]
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// `for_kind!(kind, |ID| body)`: `body` with the constant `ID` bound to the ggml id of the
/// block type `kind` (so `Kind::of(ID)` is a constant and a kernel generic over `ID` is
/// compiled once per type, its format's branches folded away). Panics on a float type.
macro_rules! for_kind {
    ($kind:expr, |$id:ident| $body:expr) => {
        match $kind {
            Kind::Q4_0 => {
                const $id: u8 = 2;
                $body
            }
            Kind::Q4_1 => {
                const $id: u8 = 3;
                $body
            }
            Kind::Q5_0 => {
                const $id: u8 = 6;
                $body
            }
            Kind::Q5_1 => {
                const $id: u8 = 7;
                $body
            }
            Kind::Q8_0 => {
                const $id: u8 = 8;
                $body
            }
            Kind::Q2K => {
                const $id: u8 = 10;
                $body
            }
            Kind::Q3K => {
                const $id: u8 = 11;
                $body
            }
            Kind::Q4K => {
                const $id: u8 = 12;
                $body
            }
            Kind::Q5K => {
                const $id: u8 = 13;
                $body
            }
            Kind::Q6K => {
                const $id: u8 = 14;
                $body
            }
            Kind::F32 | Kind::F16 | Kind::Bf16 => unreachable!("plain floats are not blocks"),
        }
    };
}
pub(crate) use for_kind;

/// Dequantise `n` values of `kind` from `raw` (whose length the caller checked), following
/// ggml's `dequantize_row_*` loop by loop.
pub fn dequantize(kind: Kind, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let (_, size) = kind.block();
    match kind {
        Kind::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Kind::F16 => out.extend(raw.chunks_exact(2).map(f16)),
        Kind::Bf16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => {
            for b in raw.chunks_exact(size) {
                dequantize_block(kind, b, &mut out);
            }
        }
    }
    out
}

/// Append one block's values.
fn dequantize_block(kind: Kind, b: &[u8], out: &mut Vec<f32>) {
    match kind {
        Kind::Q8_0 => {
            let d = f16(&b[0..2]);
            out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
        }
        Kind::Q4_0 | Kind::Q4_1 => {
            let d = f16(&b[0..2]);
            let (m, qs) = match kind {
                Kind::Q4_0 => (-8.0 * d, &b[2..18]),
                _ => (f16(&b[2..4]), &b[4..20]),
            };
            out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
            out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
        }
        Kind::Q5_0 | Kind::Q5_1 => {
            let d = f16(&b[0..2]);
            let (m, rest) = match kind {
                Kind::Q5_0 => (-16.0 * d, &b[2..]),
                _ => (f16(&b[2..4]), &b[4..]),
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let qs = &rest[4..20];
            for half_ in 0..2 {
                for (j, &q) in qs.iter().enumerate() {
                    let low = if half_ == 0 { q & 0xF } else { q >> 4 };
                    let high = ((qh >> (j + 16 * half_)) & 1) as u8;
                    out.push((low | (high << 4)) as f32 * d + m);
                }
            }
        }
        Kind::Q2K => {
            let (sc, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16(&b[80..82]), f16(&b[82..84]));
            for (half_, q) in qs.chunks_exact(32).enumerate() {
                for j in 0..4 {
                    for (h, q) in q.chunks_exact(16).enumerate() {
                        let s = sc[8 * half_ + 2 * j + h];
                        let (dl, ml) = (d * (s & 0xF) as f32, dmin * (s >> 4) as f32);
                        out.extend(q.iter().map(|&v| dl * ((v >> (2 * j)) & 3) as f32 - ml));
                    }
                }
            }
        }
        Kind::Q3K => {
            let (hm, qs) = (&b[0..32], &b[32..96]);
            let scales = q3k_scales(&b[96..108]);
            let d = f16(&b[108..110]);
            for (half_, q) in qs.chunks_exact(32).enumerate() {
                for j in 0..4 {
                    let bit = 1u8 << (4 * half_ + j);
                    for h in 0..2 {
                        let dl = d * scales[8 * half_ + 2 * j + h] as f32;
                        for l in 16 * h..16 * h + 16 {
                            let low = ((q[l] >> (2 * j)) & 3) as i32;
                            let v = low - if hm[l] & bit != 0 { 0 } else { 4 };
                            out.push(dl * v as f32);
                        }
                    }
                }
            }
        }
        Kind::Q4K | Kind::Q5K => {
            let (d, dmin) = (f16(&b[0..2]), f16(&b[2..4]));
            let scales = &b[4..16];
            let (qh, qs) = match kind {
                Kind::Q4K => (None, &b[16..144]),
                _ => (Some(&b[16..48]), &b[48..176]),
            };
            for (c, q) in qs.chunks_exact(32).enumerate() {
                for h in 0..2 {
                    let sb = 2 * c + h;
                    let (s, m) = scale_min_k4(sb, scales);
                    let (dl, ml) = (d * s as f32, dmin * m as f32);
                    for (l, &v) in q.iter().enumerate() {
                        let low = (v >> (4 * h)) & 0xF;
                        let high = qh.map_or(0, |qh| ((qh[l] >> sb) & 1) << 4);
                        out.push(dl * (low | high) as f32 - ml);
                    }
                }
            }
        }
        Kind::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16(&b[208..210]);
            let mut y = [0f32; 256];
            for half_ in 0..2 {
                let (ql, qh, sc) = (&ql[64 * half_..], &qh[32 * half_..], &sc[8 * half_..]);
                let y = &mut y[128 * half_..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| sc[is + k] as i8 as f32 * d;
                    y[l] = s(0) * q1 as f32;
                    y[l + 32] = s(2) * q2 as f32;
                    y[l + 64] = s(4) * q3 as f32;
                    y[l + 96] = s(6) * q4 as f32;
                }
            }
            out.extend_from_slice(&y);
        }
        Kind::F32 | Kind::F16 | Kind::Bf16 => unreachable!("plain floats are not blocks"),
    }
}

/// Blocks of every quantised type filled with random bytes and finite scales, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Kind;

    /// All block formats.
    pub const BLOCKS: [Kind; 10] = [
        Kind::Q4_0,
        Kind::Q4_1,
        Kind::Q5_0,
        Kind::Q5_1,
        Kind::Q8_0,
        Kind::Q2K,
        Kind::Q3K,
        Kind::Q4K,
        Kind::Q5K,
        Kind::Q6K,
    ];

    /// Byte offsets of a block's f16 fields.
    fn f16_fields(kind: Kind) -> &'static [usize] {
        match kind {
            Kind::Q4_0 | Kind::Q5_0 | Kind::Q8_0 => &[0],
            Kind::Q4_1 | Kind::Q5_1 | Kind::Q4K | Kind::Q5K => &[0, 2],
            Kind::Q2K => &[80, 82],
            Kind::Q3K => &[108],
            Kind::Q6K => &[208],
            _ => &[],
        }
    }

    /// `blocks` random blocks of `kind` from a seed (a small xorshift: no dependency).
    pub fn random_blocks(kind: Kind, blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let size = kind.block().1;
        let mut out: Vec<u8> = (0..blocks * size).map(|_| next() as u8).collect();
        for b in out.chunks_exact_mut(size) {
            for &at in f16_fields(kind) {
                // A scale in ±[0.001, 0.1).
                let mag = 0.001 + (next() % 1000) as f32 / 10_000.0;
                let v = if next() % 2 == 0 { mag } else { -mag };
                b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn five_bit_blocks_take_their_fifth_bit_from_qh() {
        // Q5_0: d = 1, qh has bit j set for j odd, nibbles all 3: values (3 | 16·bit) − 16.
        let mut b = h(1.0).to_vec();
        b.extend(0xAAAA_AAAAu32.to_le_bytes());
        b.extend([0x33u8; 16]);
        let v = dequantize(Kind::Q5_0, &b, 32);
        for (j, x) in v.iter().enumerate() {
            let want = if j % 2 == 1 { 3.0 } else { -13.0 };
            assert_eq!(*x, want, "element {j}");
        }
        // Q5_1: d = 0.5, m = 1, qh all ones, nibbles 0 (low) and 1 (high): 16·0.5 + 1 and
        // 17·0.5 + 1.
        let mut b = h(0.5).to_vec();
        b.extend(h(1.0));
        b.extend(u32::MAX.to_le_bytes());
        b.extend([0x10u8; 16]);
        let v = dequantize(Kind::Q5_1, &b, 32);
        assert!(v[..16].iter().all(|&x| x == 9.0) && v[16..].iter().all(|&x| x == 9.5));
    }

    #[test]
    fn k_quant_blocks_follow_their_scales() {
        // Q2_K: scales byte 0x21 (scale 1, min 2) everywhere, d = 1, dmin = 0.5, all 2-bit
        // values 3: 1·3 − 0.5·2 = 2.
        let mut b = vec![0x21u8; 16];
        b.extend([0xFFu8; 64]);
        b.extend(h(1.0));
        b.extend(h(0.5));
        assert!(dequantize(Kind::Q2K, &b, 256).iter().all(|&x| x == 2.0));
        // Q3_K: every packed scale 32 + 1 (low nibbles 1, high bits 2 → 33 − 32 = 1), d = 2,
        // hmask all set, 2-bit values 1: 2 · 1 · 1 = 2; with hmask clear: 2 · (1 − 4) = −6.
        for (mask, want) in [(0xFFu8, 2.0), (0x00, -6.0)] {
            let mut b = vec![mask; 32];
            b.extend([0x55u8; 64]);
            b.extend([0x11u8; 8]);
            b.extend([0xAAu8; 4]);
            b.extend(h(2.0));
            let v = dequantize(Kind::Q3K, &b, 256);
            assert!(v.iter().all(|&x| x == want), "{mask:#x}: {:?}", &v[..4]);
        }
        // Q5_K: d = 1, dmin = 0, scales 1 (bytes 0..8 = 1, high parts 0), qh all set,
        // nibbles 0: 16 everywhere.
        let mut b = h(1.0).to_vec();
        b.extend(h(0.0));
        b.extend([1, 1, 1, 1, 1, 1, 1, 1, 0x01, 0x01, 0x01, 0x01]);
        b.extend([0xFFu8; 32]);
        b.extend([0u8; 128]);
        assert!(dequantize(Kind::Q5K, &b, 256).iter().all(|&x| x == 16.0));
    }

    #[test]
    fn every_block_type_has_its_constant() {
        for kind in testing::BLOCKS {
            assert_eq!(for_kind!(kind, |ID| Kind::of(ID)), kind);
        }
    }

    #[test]
    fn ggml_ids_map_to_the_block_sizes_of_ggml() {
        for (id, name, size) in [
            (6, "Q5_0", 22),
            (7, "Q5_1", 24),
            (10, "Q2_K", 84),
            (11, "Q3_K", 110),
            (13, "Q5_K", 176),
        ] {
            let k = Kind::from_ggml(id).unwrap();
            assert_eq!((k.name(), k.block().1), (name, size));
        }
        assert_eq!(Kind::from_ggml(20), None);
    }
}
