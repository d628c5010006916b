//! A GGUF file straight into the CPU decoder, its quantised matrices kept as they are in the
//! file ([`crate::cpu::quant::QMatrix`] over the file's bytes, read once): sampling a
//! quantised model needs no float copy of it and no burn model. A fused projection whose
//! tensors are all blocks reads them in place (each part in its own type, llama's Q/K row
//! permutation undone by reading rows in another order); one with a float tensor (F32, F16,
//! BF16) is dequantised and packed as floats.

use super::gguf_model::{tensor_shaped, unpermuted_rows};
use crate::cpu::decoder::{Embedding, Engine, LayerExtras, Matrix, Weights};
use crate::cpu::packed::{Order, Packed};
use crate::cpu::quant::{Kind, QMatrix};
use crate::model::config::ModelConfig;
use crate::model::gguf::{Gguf, TensorInfo};
use anyhow::{Result, bail};
use std::sync::Arc;

/// The decoder of a GGUF model for contexts up to `ctx`; `cfg` is the file's own
/// ([`super::gguf_model::open`] reads it with the tokenizer).
pub fn engine(g: &Gguf, cfg: &ModelConfig, ctx: usize) -> Result<Engine> {
    let b = Builder {
        g,
        cfg,
        bytes: g.shared_bytes(),
    };
    let eps = cfg.arch.norm_eps as f32;
    let (d, qd, kvd) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
    let mut norms = Vec::new();
    let mut extras = Vec::new();
    let mut matrices = Vec::new();
    for i in 0..cfg.layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let w = |s: &str| p(&format!("{s}.weight"));
        norms.push([
            (b.floats(&w("input_layernorm"), &[d])?, eps),
            (b.floats(&w("post_attention_layernorm"), &[d])?, eps),
        ]);
        let qkv_bias = if cfg.arch.qkv_bias {
            let mut v = b.floats(&p("self_attn.q_proj.bias"), &[qd])?;
            v.extend(b.floats(&p("self_attn.k_proj.bias"), &[kvd])?);
            v.extend(b.floats(&p("self_attn.v_proj.bias"), &[kvd])?);
            Some(v)
        } else {
            None
        };
        let (q_norm, k_norm) = if cfg.arch.qk_norm {
            let hd = cfg.head_dim();
            (
                Some((b.floats(&w("self_attn.q_norm"), &[hd])?, eps)),
                Some((b.floats(&w("self_attn.k_norm"), &[hd])?, eps)),
            )
        } else {
            (None, None)
        };
        extras.push(LayerExtras {
            qkv_bias,
            q_norm,
            k_norm,
        });
        matrices.extend(b.layer(i)?);
    }
    let embed_name = "model.embed_tokens.weight";
    let head_name = if cfg.arch.tied {
        embed_name
    } else {
        "lm_head.weight"
    };
    matrices.push(b.matrix(d, &[(head_name.to_string(), cfg.vocab, 0)])?);
    let (t, _) = b.tensor(embed_name, &[cfg.vocab, d])?;
    let embed = if t.kind.is_blocks() {
        b.check_finite(t)?;
        Embedding::Blocks(b.blocks(t, cfg.vocab, d, 0))
    } else {
        Embedding::Floats(Box::new(b.floats(embed_name, &[cfg.vocab, d])?))
    };
    let weights = Weights {
        shape: cfg.shape(),
        embed,
        norms,
        extras,
        norm: (b.floats("model.norm.weight", &[d])?, eps),
        matrices: Vec::new(),
    };
    Ok(Engine::with_matrices(weights, ctx.min(cfg.ctx), matrices))
}

/// Each block's four matrices (`qkv`, `out`, `gate_up`, `down`) as the file's blocks, read in
/// place, for a QLoRA stage's frozen base; `None` for a matrix the file stores as floats.
pub fn block_matrices(g: &Gguf, cfg: &ModelConfig) -> Result<Vec<[Option<QMatrix>; 4]>> {
    let b = Builder {
        g,
        cfg,
        bytes: g.shared_bytes(),
    };
    (0..cfg.layers)
        .map(|i| {
            Ok(b.layer(i)?.map(|m| match m {
                Matrix::Blocks(q) => Some(q),
                _ => None,
            }))
        })
        .collect()
}

/// Reads tensors of one file by their Hugging Face names.
struct Builder<'a> {
    g: &'a Gguf,
    cfg: &'a ModelConfig,
    bytes: Arc<Vec<u8>>,
}

impl Builder<'_> {
    /// The tensor named (in Hugging Face's terms) `name`, checked to be `[rows, k]` (or `[k]`).
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<(&TensorInfo, String)> {
        tensor_shaped(self.g, name, shape)
    }

    /// A tensor's values as floats, checked finite.
    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (t, _) = self.tensor(name, shape)?;
        self.finite_floats(t)
    }

    /// A found tensor's values as floats, checked finite.
    fn finite_floats(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let at = format!("{}: {}", self.g.path.display(), t.name);
        super::finite(self.g.read_f32(t), &at)
    }

    /// Every value of a block tensor is finite (checked a row at a time: no float copy of
    /// the tensor is held).
    fn check_finite(&self, t: &TensorInfo) -> Result<()> {
        let k = t.dims[0] as usize;
        let rb = t.kind.row_bytes(k);
        let raw = &self.bytes[t.offset as usize..(t.offset + t.bytes) as usize];
        for (r, row) in raw.chunks_exact(rb).enumerate() {
            let v = crate::cpu::quant::dequantize(t.kind, row, k);
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{}: tensor {}: value {} is {} (a model's weights are finite numbers)",
                    self.g.path.display(),
                    t.name,
                    r * k + i,
                    v[i]
                );
            }
        }
        Ok(())
    }

    /// Rows of a block tensor `[rows, k]` as a one-part matrix, llama's Q/K permutation
    /// undone over `heads` heads when `heads > 0` (and the file is a llama one).
    fn blocks(&self, t: &TensorInfo, rows: usize, k: usize, heads: usize) -> QMatrix {
        QMatrix::new(k, self.bytes.clone(), vec![self.part(t, rows, k, heads)])
    }

    fn part(&self, t: &TensorInfo, rows: usize, k: usize, heads: usize) -> (Kind, Vec<usize>) {
        let rb = t.kind.row_bytes(k);
        let base = t.offset as usize;
        let order = self.order(rows, heads);
        (t.kind, order.into_iter().map(|r| base + r * rb).collect())
    }

    /// Which file row each output row reads: llama's query and key rows un-permuted
    /// ([`unpermuted_rows`]) when `heads > 0`, other rows in order.
    fn order(&self, rows: usize, heads: usize) -> Vec<usize> {
        let llama = self.cfg.arch.family.as_deref() == Some("llama");
        if !llama || heads == 0 {
            return (0..rows).collect();
        }
        unpermuted_rows(rows, heads)
    }

    /// Block `i`'s `qkv`, `out`, `gate_up` and `down` matrices.
    fn layer(&self, i: usize) -> Result<[Matrix; 4]> {
        let cfg = self.cfg;
        let (d, qd, kvd, m) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim(), cfg.mlp);
        let w = |s: &str| format!("model.layers.{i}.{s}.weight");
        Ok([
            self.matrix(
                d,
                &[
                    (w("self_attn.q_proj"), qd, cfg.heads),
                    (w("self_attn.k_proj"), kvd, cfg.kv_heads()),
                    (w("self_attn.v_proj"), kvd, 0),
                ],
            )?,
            self.matrix(qd, &[(w("self_attn.o_proj"), d, 0)])?,
            self.matrix(d, &[(w("mlp.gate_proj"), m, 0), (w("mlp.up_proj"), m, 0)])?,
            self.matrix(m, &[(w("mlp.down_proj"), d, 0)])?,
        ])
    }

    /// A `[k] → [Σ rows]` matrix from tensors `(name, rows, heads)`: blocks in place when
    /// every tensor is a block type, else floats packed.
    fn matrix(&self, k: usize, parts: &[(String, usize, usize)]) -> Result<Matrix> {
        let tensors = parts
            .iter()
            .map(|(name, rows, _)| self.tensor(name, &[*rows, k]).map(|(t, _)| t))
            .collect::<Result<Vec<_>>>()?;
        if tensors.iter().all(|t| t.kind.is_blocks()) {
            let mut out = Vec::new();
            for (t, (_, rows, heads)) in tensors.iter().zip(parts) {
                self.check_finite(t)?;
                out.push(self.part(t, *rows, k, *heads));
            }
            return Ok(Matrix::Blocks(QMatrix::new(k, self.bytes.clone(), out)));
        }
        // Floats, `[n, k]` row-major (Hugging Face's orientation), packed as a transpose.
        let mut w = Vec::new();
        for (t, (_, rows, heads)) in tensors.iter().zip(parts) {
            let v = self.finite_floats(t)?;
            for r in self.order(*rows, *heads) {
                w.extend_from_slice(&v[r * k..(r + 1) * k]);
            }
        }
        let n = w.len() / k;
        let packed = Packed::new_all(&[(k, n, Order::Columns)], |_| &w[..]);
        Ok(Matrix::Floats(
            packed.into_iter().next().expect("one matrix packed"),
        ))
    }
}
