//! Writing GGUF files: metadata (integers, floats, strings and arrays of them) and tensors as
//! F32, Q8_0 or Q4_1 blocks, quantised as ggml's reference quantisers do. Used to build the
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
}

impl Store {
    fn id(self) -> u32 {
        match self {
            Store::F32 => 0,
            Store::Q4_1 => 3,
            Store::Q8_0 => 8,
        }
    }
}

/// `values` as blocks of 32 in `store` (the length must be a multiple of 32 for Q8_0 / Q4_1).
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
    }
    out
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
