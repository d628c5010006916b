//! Writing GGUF files: metadata (integers, floats, strings and arrays of them) and tensors as
//! F32, Q8_0, Q4_1, Q5_0 or Q4_K blocks, in ggml's layouts (Q8_0, Q4_1 and Q5_0 as its reference
//! quantisers round; Q4_K with plain min–max sub-blocks, no search for better scales). Used to build the
//! small GGUF models the tests load, byte for byte in the layout [`super::gguf`] reads.

use super::gguf::Value;
use std::io;
use std::path::Path;

/// How a tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    F32,
    Q8_0,
    Q4_1,
    Q5_0,
    Q4K,
}

impl Store {
    /// The block type this writes.
    pub fn kind(self) -> crate::cpu::quant::Kind {
        use crate::cpu::quant::Kind;
        match self {
            Store::F32 => Kind::F32,
            Store::Q8_0 => Kind::Q8_0,
            Store::Q4_1 => Kind::Q4_1,
            Store::Q5_0 => Kind::Q5_0,
            Store::Q4K => Kind::Q4K,
        }
    }

    fn id(self) -> u32 {
        match self {
            Store::F32 => 0,
            Store::Q4_1 => 3,
            Store::Q5_0 => 6,
            Store::Q8_0 => 8,
            Store::Q4K => 12,
        }
    }
}

/// One Q4_K super-block (256 values): eight 32-value sub-blocks, each `w = d·sc·q − dmin·m`
/// with 4-bit `q` and 6-bit `sc`, `m` (ggml's `block_q4_K`: `d`, `dmin`, 12 bytes of packed
/// scales and minima, 128 bytes of nibbles).
fn q4k_block(x: &[f32], out: &mut Vec<u8>) {
    let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
    // Each sub-block's step and offset: w ≈ scale·q − min, q in 0..=15.
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, b) in x.chunks_exact(32).enumerate() {
        let lo = b.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
        let hi = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scales[j] = (hi - lo) / 15.0;
        mins[j] = -lo;
    }
    let max_scale = scales.iter().copied().fold(0.0, f32::max);
    let max_min = mins.iter().copied().fold(0.0, f32::max);
    let d = half::f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = half::f16::from_f32(max_min / 63.0).to_f32();
    let six = |v: f32, unit: f32| {
        if unit > 0.0 {
            ((v / unit).round() as i32).clamp(0, 63) as u8
        } else {
            0
        }
    };
    let ls: Vec<u8> = scales.iter().map(|&v| six(v, d)).collect();
    let lm: Vec<u8> = mins.iter().map(|&v| six(v, dmin)).collect();
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    let mut q = [0u8; 256];
    for j in 0..8 {
        let step = d * f32::from(ls[j]);
        let off = dmin * f32::from(lm[j]);
        for i in 0..32 {
            let v = if step > 0.0 {
                ((x[32 * j + i] + off) / step).round()
            } else {
                0.0
            };
            q[32 * j + i] = v.clamp(0.0, 15.0) as u8;
        }
    }
    out.extend(h(d));
    out.extend(h(dmin));
    out.extend(packed);
    // Two sub-blocks per 32 bytes: the first in the low nibbles, the second in the high.
    for g in 0..4 {
        for l in 0..32 {
            out.push(q[64 * g + l] | (q[64 * g + 32 + l] << 4));
        }
    }
}

/// `values` as blocks in `store` (the length must be a multiple of 32, of 256 for Q4_K).
pub fn quantize(values: &[f32], store: Store) -> Vec<u8> {
    let h = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let mut out = Vec::new();
    match store {
        Store::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        Store::Q8_0 => {
            for b in values.chunks_exact(32) {
                let amax = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(h(d));
                out.extend(b.iter().map(|x| ((x * inv).round() as i8) as u8));
            }
        }
        Store::Q4_1 => {
            for b in values.chunks_exact(32) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(h(d));
                out.extend(h(min));
                let q = |x: f32| (((x - min) * inv + 0.5) as u8).min(15);
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        Store::Q5_0 => {
            for b in values.chunks_exact(32) {
                // ggml's quantize_row_q5_0_ref: the value of largest magnitude maps to -16.
                let max = b
                    .iter()
                    .copied()
                    .fold(0.0f32, |m, x| if x.abs() > m.abs() { x } else { m });
                let d = max / -16.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |x: f32| ((x * inv + 16.5) as i32).clamp(0, 31) as u32;
                let mut qh = 0u32;
                let mut qs = [0u8; 16];
                for j in 0..16 {
                    let (a, c) = (q(b[j]), q(b[j + 16]));
                    qs[j] = (a & 0xF) as u8 | (((c & 0xF) as u8) << 4);
                    qh |= ((a >> 4) & 1) << j;
                    qh |= ((c >> 4) & 1) << (j + 16);
                }
                out.extend(h(d));
                out.extend(qh.to_le_bytes());
                out.extend(qs);
            }
        }
        Store::Q4K => {
            for b in values.chunks_exact(256) {
                q4k_block(b, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod quantiser_tests {
    use super::*;
    use crate::cpu::quant::{Kind, dequantize};

    /// Quantise, then dequantise with the definition the kernels are tested against.
    fn roundtrip(values: &[f32], store: Store, kind: Kind) -> Vec<f32> {
        let bytes = quantize(values, store);
        assert_eq!(bytes.len(), kind.row_bytes(values.len()));
        dequantize(kind, &bytes, values.len())
    }

    fn values(n: usize) -> Vec<f32> {
        // Sub-blocks of different ranges and signs, as weight rows have.
        (0..n)
            .map(|i| {
                let scale = 0.02 * (1 + i / 32 % 5) as f32;
                scale * ((i as f32 * 0.7).sin() + 0.3 * ((i * i) as f32 * 0.13).cos())
            })
            .collect()
    }

    #[test]
    fn q5_0_and_q4_k_round_trip_within_their_steps() {
        let v = values(1024);
        let mut rms = Vec::new();
        for (store, kind, levels) in [
            (Store::Q5_0, Kind::Q5_0, 31.0),
            (Store::Q4K, Kind::Q4K, 15.0),
            (Store::Q4_1, Kind::Q4_1, 15.0),
        ] {
            let back = roundtrip(&v, store, kind);
            for (b, (x, y)) in v.chunks(32).zip(back.chunks(32)).enumerate() {
                let lo = x.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
                let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max).max(0.0);
                // Half a step of the block's range, plus the scales' own rounding (6-bit
                // sub-block scales for Q4_K: up to half a unit of 1/63 of the largest).
                let bound = (hi - lo) / levels * 0.5 + (hi - lo) * 0.06;
                for (a, c) in x.iter().zip(y) {
                    assert!(
                        (a - c).abs() <= bound,
                        "{kind:?} block {b}: {a} vs {c} (bound {bound})"
                    );
                }
            }
            rms.push(
                (v.iter()
                    .zip(&back)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f32>()
                    / v.len() as f32)
                    .sqrt(),
            );
        }
        // Q5_0 has twice Q4_1's levels; Q4_K's 6-bit sub-block scales cost it a little against
        // Q4_1's f16 ones, not more than half as much again.
        let [q5_0, q4_k, q4_1] = rms[..] else {
            unreachable!()
        };
        assert!(q5_0 < 0.75 * q4_1, "{rms:?}");
        assert!(q4_k < 1.5 * q4_1, "{rms:?}");
        // A block of zeros stays zeros.
        assert!(
            roundtrip(&[0.0; 256], Store::Q4K, Kind::Q4K)
                .iter()
                .all(|x| *x == 0.0)
        );
        assert!(
            roundtrip(&[0.0; 32], Store::Q5_0, Kind::Q5_0)
                .iter()
                .all(|x| *x == 0.0)
        );
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// Type id and payload of a metadata value (arrays hold one type).
fn put_value(b: &mut Vec<u8>, v: &Value, with_type: bool) {
    let (ty, payload): (u32, Vec<u8>) = match v {
        Value::Uint(u) => (4, (*u as u32).to_le_bytes().to_vec()),
        Value::Int(i) => (5, (*i as i32).to_le_bytes().to_vec()),
        Value::Float(f) => (6, (*f as f32).to_le_bytes().to_vec()),
        Value::Bool(x) => (7, vec![*x as u8]),
        Value::Str(s) => {
            let mut p = Vec::new();
            put_str(&mut p, s);
            (8, p)
        }
        Value::Array(items) => {
            let mut p = Vec::new();
            let inner = items.first().map_or(4, |first| {
                let mut probe = Vec::new();
                put_value(&mut probe, first, true);
                u32::from_le_bytes(probe[..4].try_into().expect("4 bytes"))
            });
            p.extend(inner.to_le_bytes());
            p.extend((items.len() as u64).to_le_bytes());
            for it in items {
                put_value(&mut p, it, false);
            }
            (9, p)
        }
    };
    if with_type {
        b.extend(ty.to_le_bytes());
    }
    b.extend(payload);
}

/// Write a GGUF v3 file: `tensors` are (name, ggml dims with the row length first, store,
/// values).
pub fn write(
    path: &Path,
    metadata: &[(&str, Value)],
    tensors: &[(String, Vec<u64>, Store, Vec<f32>)],
) -> io::Result<()> {
    const ALIGN: usize = 32;
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut b, k);
        put_value(&mut b, v, true);
    }
    let data: Vec<Vec<u8>> = tensors.iter().map(|(_, _, s, v)| quantize(v, *s)).collect();
    let mut offset = 0u64;
    for ((name, dims, store, _), bytes) in tensors.iter().zip(&data) {
        put_str(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(store.id().to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += bytes.len().div_ceil(ALIGN) as u64 * ALIGN as u64;
    }
    for bytes in std::iter::once(&Vec::new()).chain(&data) {
        b.extend(bytes);
        while !b.len().is_multiple_of(ALIGN) {
            b.push(0);
        }
    }
    crate::runfs::atomic::write_file(path, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::{Gguf, Kind, dequantize};

    #[test]
    fn quantised_blocks_read_back_within_their_step() {
        let v: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 29) as f32 / 7.0 - 2.0)
            .collect();
        for (store, kind, step) in [
            (Store::Q8_0, Kind::Q8_0, 2.2 / 127.0),
            (Store::Q4_1, Kind::Q4_1, 4.0 / 15.0),
        ] {
            let back = dequantize(kind, &quantize(&v, store), v.len());
            for (a, b) in v.iter().zip(&back) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3, "{store:?}: {a} vs {b}");
            }
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let meta = [
            ("general.architecture", Value::Str("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]),
            ),
            ("x.eps", Value::Float(1e-5)),
        ];
        write(
            &p,
            &meta,
            &[("t".into(), vec![32, 2], Store::Q8_0, v.clone())],
        )
        .unwrap();
        let g = Gguf::open(&p).unwrap();
        assert_eq!(g.get("tokenizer.ggml.tokens"), Some(&meta[1].1));
        let back = g.read_f32(g.tensor("t").unwrap());
        assert_eq!(back, dequantize(Kind::Q8_0, &quantize(&v, Store::Q8_0), 64));
    }
}
