//! Reading llama.cpp's GGUF files: the header, the metadata (architecture, hyperparameters, the
//! tokenizer's vocabulary and chat template) and the tensor table, and dequantising tensors to
//! f32 at load. Supported tensor types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K to
//! Q6_K (the block layouts of ggml's `ggml-quants.c`, read by [`crate::cpu::quant`]). Every length and offset is checked against the file
//! before it is used: a truncated or inconsistent file is an error naming it, never a panic or a
//! huge allocation.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Uint(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

pub use crate::cpu::quant::{Kind, dequantize};

/// ggml's names of the types this reader does not dequantise (for the error message).
fn unsupported_name(id: u32) -> String {
    let names = [
        (9, "Q8_1"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
    ];
    names
        .iter()
        .find(|(i, _)| *i == id)
        .map_or(format!("type {id}"), |(_, n)| n.to_string())
}

/// One tensor of the table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous).
    pub dims: Vec<u64>,
    pub kind: Kind,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: metadata and tensor table; tensor data is read on demand.
#[derive(Debug)]
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    bytes: std::sync::Arc<Vec<u8>>,
}

/// A cursor over the file's bytes that never reads past the end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .with_context(|| format!("truncated at byte {} (needs {n} more)", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    /// A count that must fit in what is left of the file (each item at least `min` bytes).
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.b.len() - self.at) as u64;
        if n > left / min.max(1) as u64 {
            bail!("a count of {n} at byte {} exceeds the file", self.at - 8);
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| anyhow::anyhow!("a string at byte {at} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::Uint(self.u8()? as u64),
            1 => Value::Int(self.u8()? as i8 as i64),
            2 => Value::Uint(self.u16()? as u64),
            3 => Value::Int(self.u16()? as i16 as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    bail!("arrays nested too deeply at byte {}", self.at);
                }
                let item = self.u32()?;
                let n = self.count(1)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            other => bail!("unknown metadata type {other} at byte {}", self.at - 4),
        })
    }
}

impl Gguf {
    /// Read and check a file's header and tables.
    pub fn open(path: &Path) -> Result<Gguf> {
        let bytes = crate::untrusted::read_bytes(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(path, bytes).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    fn parse(path: &Path, bytes: Vec<u8>) -> Result<Gguf> {
        let mut r = Reader { b: &bytes, at: 0 };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            bail!("not a GGUF file (no GGUF magic)");
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (2 or 3)");
        }
        let n_tensors = r.count(24)?;
        let n_kv = r.count(12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r
                .value(ty, 0)
                .with_context(|| format!("metadata `{key}`"))?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()?;
            if nd == 0 || nd > 4 {
                bail!("tensor `{name}`: {nd} dimensions");
            }
            let dims = (0..nd).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let ty = r.u32()?;
            let offset = r.u64()?;
            let kind = Kind::from_ggml(ty).with_context(|| {
                format!(
                    "tensor `{name}` is {}, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K)",
                    unsupported_name(ty)
                )
            })?;
            infos.push((name, dims, kind, offset));
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= 1 << 20)
                .with_context(|| {
                    format!("general.alignment is {v:?}: it must be a power of two (32 by default)")
                })?,
        };
        let data = (r.at as u64).div_ceil(align) * align;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, kind, offset) in infos {
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .with_context(|| format!("tensor `{name}`: its shape overflows"))?;
            let (per, size) = kind.block();
            if dims[0] % per as u64 != 0 {
                bail!(
                    "tensor `{name}`: rows of {} are not whole {per}-element blocks",
                    dims[0]
                );
            }
            let bytes_len = elements / per as u64 * size as u64;
            if offset % align != 0 {
                bail!(
                    "tensor `{name}`: offset {offset} is not a multiple of the alignment {align}"
                );
            }
            let start = data.checked_add(offset).context("offset overflows")?;
            if start
                .checked_add(bytes_len)
                .is_none_or(|e| e > bytes.len() as u64)
            {
                bail!(
                    "tensor `{name}`: data at {start}..{} is past the end of the file ({} bytes): truncated?",
                    start.saturating_add(bytes_len),
                    bytes.len()
                );
            }
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset: start,
                bytes: bytes_len,
            });
        }
        // No two tensors share bytes (a retyped or overlapping entry would read another's data).
        let spans = tensors
            .iter()
            .map(|t| (t.offset, t.offset + t.bytes, t.name.as_str()))
            .collect();
        if let Some([a, b]) = super::extents::overlap(spans) {
            bail!(
                "tensors `{}` and `{}` overlap in the file ({}..{} and {}..{})",
                a.2,
                b.2,
                a.0,
                a.1,
                b.0,
                b.1
            );
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes: std::sync::Arc::new(bytes),
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The whole file's bytes, shared (quantised matrices read their blocks in place).
    pub fn shared_bytes(&self) -> std::sync::Arc<Vec<u8>> {
        std::sync::Arc::clone(&self.bytes)
    }

    /// A tensor's values as f32, row-major with rows of `dims[0]`.
    pub fn read_f32(&self, t: &TensorInfo) -> Vec<f32> {
        let raw = &self.bytes[t.offset as usize..(t.offset + t.bytes) as usize];
        dequantize(t.kind, raw, t.elements() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF writer for tests: metadata (strings and u32s) and tensors of raw blocks.
    fn write(path: &Path, kv: &[(&str, Value)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        for (k, v) in kv {
            s(&mut b, k);
            match v {
                Value::Str(t) => {
                    b.extend(8u32.to_le_bytes());
                    s(&mut b, t);
                }
                Value::Uint(u) => {
                    b.extend(4u32.to_le_bytes());
                    b.extend((*u as u32).to_le_bytes());
                }
                _ => unreachable!(),
            }
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, _, data) in tensors {
            b.extend(data);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
        }
        std::fs::write(path, b).unwrap();
    }

    fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn reads_metadata_and_dequantises_known_blocks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tiny.gguf");
        // Q8_0: d = 0.5, q = -16..16.
        let mut q8 = h(0.5).to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        // Q4_1: d = 0.25, m = -1, nibbles: low j, high 15 - j.
        let mut q41 = h(0.25).to_vec();
        q41.extend(h(-1.0));
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        // Q4_0: d = 2, nibbles 8 (zero) low and 9 (one) high.
        let mut q40 = h(2.0).to_vec();
        q40.extend([0x98u8; 16]);
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|&v| h(v)).collect();
        write(
            &p,
            &[
                ("general.architecture", Value::Str("llama".into())),
                ("llama.block_count", Value::Uint(2)),
            ],
            &[
                ("a", vec![32], 8, q8),
                ("b", vec![32], 3, q41),
                ("c", vec![32], 2, q40),
                ("e", vec![2], 0, f32s),
                ("f", vec![2], 1, f16s),
            ],
        );
        let g = Gguf::open(&p).unwrap();
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(g.get("llama.block_count").unwrap().as_u64(), Some(2));
        let a = g.read_f32(g.tensor("a").unwrap());
        assert_eq!(a[0], -8.0);
        assert_eq!(a[31], 7.5);
        let b = g.read_f32(g.tensor("b").unwrap());
        assert_eq!(b[0], -1.0); // 0 * 0.25 - 1
        assert_eq!(b[3], -0.25);
        assert_eq!(b[16], 2.75); // 15 * 0.25 - 1
        let c = g.read_f32(g.tensor("c").unwrap());
        assert_eq!((c[0], c[16]), (0.0, 2.0));
        assert_eq!(g.read_f32(g.tensor("e").unwrap()), vec![1.5, -2.0]);
        assert_eq!(g.read_f32(g.tensor("f").unwrap()), vec![0.25, 3.0]);
    }

    #[test]
    fn k_quant_blocks_follow_ggml_layout() {
        // Q4_K: d = 1, dmin = 0.5; sub-block scales 1,2,3,4 then 5 (mins 1 then 2); nibbles 1 / 3.
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend([1, 2, 3, 4, 1, 1, 1, 1, 0x25, 0x25, 0x25, 0x25]);
        b.extend([0x31u8; 128]);
        let y = dequantize(Kind::Q4K, &b, 256);
        assert_eq!(y[0], 0.5); // 1*1*1 - 0.5*1
        assert_eq!(y[32], 5.5); // 1*2*3 - 0.5*1
        assert_eq!(y[64], 2.5); // 3*1 - 0.5
        assert_eq!(y[128], 4.0); // 5*1 - 0.5*2
        assert_eq!(y[160], 14.0); // 5*3 - 0.5*2
        // Q6_K: d = 0.5, scales 1..16, ql/qh zero: q = -32 everywhere.
        let mut b = vec![0u8; 192];
        b.extend((1..=16).map(|s: i8| s as u8));
        b.extend(h(0.5));
        let y = dequantize(Kind::Q6K, &b, 256);
        assert_eq!(y[0], -16.0); // scale 1 × 0.5 × -32
        assert_eq!(y[16], -32.0); // is = 1: scale 2
        assert_eq!(y[32], -48.0); // scale 3
        assert_eq!(y[128], -16.0 * 9.0); // second half: scale 9
    }

    #[test]
    fn bad_alignments_and_offsets_and_overlaps_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let mut q8 = h(1.0).to_vec();
        q8.extend([1u8; 32]);
        let two = [
            ("a", vec![32u64], 8u32, q8.clone()),
            ("b", vec![32u64], 8u32, q8.clone()),
        ];
        for align in [0, 3, 48] {
            write(&p, &[("general.alignment", Value::Uint(align))], &two);
            let e = Gguf::open(&p).unwrap_err().to_string();
            assert!(e.contains("general.alignment"), "{align}: {e}");
        }
        write(&p, &[], &two);
        Gguf::open(&p).unwrap();
        // The second tensor's offset moved onto the first's data, then off the alignment.
        let mut b = std::fs::read(&p).unwrap();
        let entry = |b: &[u8], name: u8| {
            // length 1 (u64), the name byte, 1 dim (u32), dim (u64), type (u32), offset (u64)
            let key = [1u8, 0, 0, 0, 0, 0, 0, 0, name];
            let i = b.windows(9).position(|w| w == key).unwrap();
            i + 9 + 4 + 8 + 4
        };
        let off_b = entry(&b, b'b');
        b[off_b..off_b + 8].copy_from_slice(&0u64.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = Gguf::open(&p).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
        b[off_b..off_b + 8].copy_from_slice(&5u64.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = Gguf::open(&p).unwrap_err().to_string();
        assert!(e.contains("not a multiple of the alignment"), "{e}");
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let mut q8 = h(1.0).to_vec();
        q8.extend([1u8; 32]);
        write(&p, &[], &[("a", vec![32], 8, q8.clone())]);
        let full = std::fs::read(&p).unwrap();
        for cut in [3, 10, 30, 64 + 20] {
            std::fs::write(&p, &full[..cut]).unwrap();
            let e = Gguf::open(&p).unwrap_err().to_string();
            assert!(e.contains("m.gguf"), "{e}");
        }
        std::fs::write(&p, b"NOPE and more bytes").unwrap();
        assert!(
            Gguf::open(&p)
                .unwrap_err()
                .to_string()
                .contains("not a GGUF file")
        );
        write(&p, &[], &[("k", vec![32], 20, vec![0u8; 18])]);
        let e = Gguf::open(&p).unwrap_err().to_string();
        assert!(e.contains("IQ4_NL") && e.contains("not supported"), "{e}");
        // A count larger than the file: refused before allocating.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        std::fs::write(&p, b).unwrap();
        assert!(
            Gguf::open(&p)
                .unwrap_err()
                .to_string()
                .contains("exceeds the file")
        );
    }
}
