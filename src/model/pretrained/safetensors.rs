//! Reading Hugging Face `.safetensors` files (one file, or shards listed in
//! `model.safetensors.index.json`): the JSON header's table of tensors and their F32, F16 or BF16
//! data, converted to f32. Every offset is checked against the file; a bad file is an error
//! naming it and the tensor.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Element types read; the others are named in the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        match s {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::Bf16),
            _ => None,
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// One tensor of a file's table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Which file of the set, and the byte range in it.
    file: usize,
    start: usize,
    end: usize,
}

/// The tensors of one or more safetensors files, by name.
pub struct Tensors {
    files: Vec<(PathBuf, Vec<u8>)>,
    pub entries: BTreeMap<String, Entry>,
}

impl Tensors {
    /// The weights of a Hugging Face folder: `model.safetensors`, or the shards its
    /// `model.safetensors.index.json` lists.
    pub fn open_folder(dir: &Path) -> Result<Tensors> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Tensors::open(&[single]);
        }
        if !index.is_file() {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json (is this a Hugging Face model folder?)",
                dir.display()
            );
        }
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = crate::untrusted::read_small(&index, 256 << 20)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let idx: Index = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", index.display(), e.line(), e.column()))?;
        let mut shards: Vec<String> = idx.weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        let mut paths = Vec::new();
        for s in shards {
            // Shard names are data: only plain file names inside the folder.
            if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                bail!(
                    "{}: shard name {s:?} is not a file in the folder",
                    index.display()
                );
            }
            paths.push(dir.join(s));
        }
        let t = Tensors::open(&paths)?;
        for (name, file) in &idx.weight_map {
            if !t.entries.contains_key(name) {
                bail!(
                    "{}: lists {name} in {file}, which does not hold it",
                    index.display()
                );
            }
        }
        Ok(t)
    }

    /// Read and check the files' headers.
    pub fn open(paths: &[PathBuf]) -> Result<Tensors> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let bytes = crate::untrusted::read_bytes(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let table =
                parse_header(&bytes).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            for (name, (dtype, shape, start, end)) in table {
                if entries.contains_key(&name) {
                    bail!("{}: tensor {name} is also in another shard", path.display());
                }
                entries.insert(
                    name,
                    Entry {
                        dtype,
                        shape,
                        file: fi,
                        start,
                        end,
                    },
                );
            }
            files.push((path.clone(), bytes));
        }
        Ok(Tensors { files, entries })
    }

    /// The file that holds `name`, for messages.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries
            .get(name)
            .map(|e| self.files[e.file].0.as_path())
    }

    /// A tensor's values as f32 (row-major), checked to have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.entries.get(name).with_context(|| {
            format!(
                "{}: tensor {name} is missing",
                self.files
                    .first()
                    .map_or(Path::new("?"), |f| f.0.as_path())
                    .display()
            )
        })?;
        let path = &self.files[e.file].0;
        if e.shape != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, expected {shape:?} from config.json",
                path.display(),
                e.shape
            );
        }
        let raw = &self.files[e.file].1[e.start..e.end];
        Ok(match e.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

type Table = BTreeMap<String, (Dtype, Vec<usize>, usize, usize)>;

/// The header's tensors: dtype, shape and absolute byte range, each checked.
fn parse_header(bytes: &[u8]) -> Result<Table> {
    if bytes.len() < 8 {
        bail!(
            "{} bytes: too short for a safetensors header (truncated?)",
            bytes.len()
        );
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > (bytes.len() - 8) as u64 || n > 100 << 20 {
        bail!(
            "header of {n} bytes does not fit the file of {} bytes (truncated?)",
            bytes.len()
        );
    }
    let header = &bytes[8..8 + n as usize];
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).context("the header is not a JSON object")?;
    let data = 8 + n as usize;
    let mut table = Table::new();
    for (name, v) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry = serde_json::from_value(v)
            .with_context(|| format!("tensor {name}: not a tensor entry"))?;
        let dtype = Dtype::parse(&e.dtype).with_context(|| {
            format!(
                "tensor {name} is {}, which is not supported (F32, F16, BF16)",
                e.dtype
            )
        })?;
        let elements = e
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&x| x < 1 << 40)
            .with_context(|| format!("tensor {name}: shape {:?} overflows", e.shape))?;
        let [s, t] = e.data_offsets;
        if t < s || t - s != elements * dtype.size() as u64 {
            bail!(
                "tensor {name}: data_offsets {s}..{t} do not hold shape {:?} of {}",
                e.shape,
                e.dtype
            );
        }
        if data as u64 + t > bytes.len() as u64 {
            bail!("tensor {name}: data ends past the end of the file (truncated?)");
        }
        let shape = e.shape.iter().map(|&d| d as usize).collect();
        table.insert(name, (dtype, shape, data + s as usize, data + t as usize));
    }
    // No two tensors share bytes.
    let spans = table
        .iter()
        .map(|(n, (_, _, s, t))| (*s as u64, *t as u64, n.as_str()))
        .filter(|(s, t, _)| s < t)
        .collect();
    if let Some([a, b]) = crate::model::extents::overlap(spans) {
        bail!("tensors {} and {} overlap in the file", a.2, b.2);
    }
    Ok(table)
}

/// Write `tensors` (name, shape, f32 values) as one safetensors file with `dtype`: what the
/// HF export and the tests' tiny models use.
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    let name = match dtype {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::Bf16 => "BF16",
    };
    for (n, shape, v) in tensors {
        let len = (v.len() * dtype.size()) as u64;
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": name, "shape": shape, "data_offsets": [at, at + len]}),
        );
        at += len;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut h = serde_json::to_vec(&header)?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + at as usize);
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    for (_, _, v) in tensors {
        for &x in v {
            match dtype {
                Dtype::F32 => out.extend(x.to_le_bytes()),
                Dtype::F16 => out.extend(half::f16::from_f32(x).to_le_bytes()),
                Dtype::Bf16 => out.extend(half::bf16::from_f32(x).to_le_bytes()),
            }
        }
    }
    crate::runfs::atomic::write_file(path, &out)
        .with_context(|| format!("{}: cannot write", path.display()))
}
