//! The glue between the burn model and the CPU decoder ([`crate::cpu::decoder`]): reads a
//! [`Gpt`]'s weights out of burn (any backend) into the decoder's layout.

use super::flex::{self, f32s};
use super::gguf_write::Store;
use super::transformer::{BlockWeights, Gpt, HeldBase, NormWeights};
use crate::cpu::decoder::{Embedding, Engine, LayerExtras, Matrix, Weights};
use crate::cpu::gemm::{View, matmul};
use crate::cpu::packed::{Order, Packed};
use crate::cpu::packed_bf16::Panels;
use crate::cpu::quant::{Kind, QMatrix};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;

/// A tensor's `f32` values: read in place from burn's CPU backend when they are contiguous
/// `f32` there (the model's own memory, shared, not copied), a converted copy otherwise.
enum F32s {
    Flex(FlexTensor),
    Copy(Vec<f32>),
}

impl F32s {
    fn of<const D: usize>(t: Tensor<D>) -> F32s {
        match flex::of(t) {
            Ok(f) if f.as_slice::<f32>().is_some() => F32s::Flex(f),
            Ok(f) => F32s::Copy(f32s(flex::tensor::<D>(f))),
            Err(t) => F32s::Copy(f32s(*t)),
        }
    }
}

impl AsRef<[f32]> for F32s {
    fn as_ref(&self) -> &[f32] {
        match self {
            F32s::Flex(t) => t
                .as_slice::<f32>()
                .expect("checked contiguous f32 in F32s::of"),
            F32s::Copy(v) => v,
        }
    }
}

/// A matrix's values for [`Engine::new`]: the model's own, or dequantised blocks.
enum Values {
    Floats(F32s),
    Owned(Vec<f32>),
}

impl AsRef<[f32]> for Values {
    fn as_ref(&self) -> &[f32] {
        match self {
            Values::Floats(v) => v.as_ref(),
            Values::Owned(v) => v,
        }
    }
}

/// A norm's gain as floats, and its epsilon.
fn gain(n: NormWeights) -> (Vec<f32>, f32) {
    (f32s(n.0), n.1 as f32)
}

/// One block for the decoder: its two norms, its extras, and its four matrices (`qkv`, `out`,
/// `gate_up`, `down`, each `[k, n]`).
type Layer = ([(Vec<f32>, f32); 2], LayerExtras, [Tensor<2>; 4]);

/// [`Layer`] of a block's weights.
fn layer(b: BlockWeights) -> Layer {
    let (q_norm, k_norm) = match b.qk_norm {
        Some((q, k)) => (Some(gain(q)), Some(gain(k))),
        None => (None, None),
    };
    let extras = LayerExtras {
        qkv_bias: b.qkv_bias.map(f32s),
        q_norm,
        k_norm,
    };
    (
        [gain(b.attn_norm), gain(b.mlp_norm)],
        extras,
        [b.qkv, b.out, b.gate_up, b.down],
    )
}

impl Gpt {
    /// A CPU decoder of this model whose matrices and embedding are quantised to `store`
    /// (Q8_0 or Q4_1, ggml's blocks of 32) as they are read: what `--quantize q8_0` does for
    /// a Hugging Face folder or a checkpoint. Errors if a matrix's rows are not whole blocks.
    pub fn engine_quantized(&self, ctx: usize, store: Store) -> anyhow::Result<Engine> {
        anyhow::ensure!(store != Store::F32, "F32 is not a block format");
        let kind = store.kind();
        let w = self.weights();
        let (mut matrices, mut norms, mut extras) = (Vec::new(), Vec::new(), Vec::new());
        // A `[k, n]` weight as rows of blocks, one per output.
        let blocks = |t: Tensor<2>, transposed: bool| -> anyhow::Result<QMatrix> {
            let [a, b] = t.dims();
            let (k, n) = if transposed { (b, a) } else { (a, b) };
            super::frozen::quantize(&f32s(t), k, n, transposed, kind)
                .map_err(|e| anyhow::anyhow!("--quantize: {e}"))
        };
        for b in w.blocks {
            let (layer_norms, layer_extras, [qkv, out, gate_up, down]) = layer(b);
            for t in [qkv, out, gate_up, down] {
                matrices.push(Matrix::Blocks(blocks(t, false)?));
            }
            norms.push(layer_norms);
            extras.push(layer_extras);
        }
        // The embedding `[vocab, d]` is already one row per token: the tied head reads the
        // same blocks.
        let embed = blocks(w.embed, true)?;
        let head = if self.tied() {
            embed.clone()
        } else {
            blocks(w.head, false)?
        };
        matrices.push(Matrix::Blocks(head));
        let spec = Weights {
            shape: w.shape,
            embed: Embedding::Blocks(embed),
            norms,
            extras,
            norm: (f32s(w.norm.0), w.norm.1 as f32),
            matrices: Vec::new(),
        };
        Ok(Engine::with_matrices(spec, ctx, matrices))
    }

    /// A CPU decoder of a LoRA model whose adapters stay apart from their bases
    /// ([`Matrix::Adapted`]): each base quantised to `store` (a QLoRA model's frozen blocks
    /// kept as they are when `store` is `None`, other bases as floats), the low-rank update
    /// added in f32 beside it. Quantising merged weights instead rounds an update smaller than
    /// a block's step away (docs/PERF.md). The embedding and head in Q8_0 when `store` is
    /// given, else floats.
    pub fn engine_adapted(&self, ctx: usize, store: Option<Store>) -> anyhow::Result<Engine> {
        if let Some(s) = store {
            anyhow::ensure!(s != Store::F32, "F32 is not a block format");
        }
        let kind = store.map(Store::kind);
        // Float bases and the head as bf16 panels in a bf16 run without a block format.
        let bf16 = kind.is_none() && crate::cpu::gemm::bf16_on();
        let w = self.weights_without_blocks();
        let quantized = |values: &[f32], k: usize, n: usize, transposed: bool| {
            super::frozen::quantize(values, k, n, transposed, kind.expect("a block format"))
                .map_err(|e| anyhow::anyhow!("--quantize: {e}"))
        };
        let (mut matrices, mut norms, mut extras) = (Vec::new(), Vec::new(), Vec::new());
        for (l, b) in w.blocks.into_iter().enumerate() {
            let (layer_norms, layer_extras, _) = layer(b);
            norms.push(layer_norms);
            extras.push(layer_extras);
            for (base, factors) in self.held_layer(l) {
                let base = match (base, kind) {
                    (HeldBase::Blocks(f), None) => match f.0.bf16_panels() {
                        // A bf16 run's training products keep the base as bf16 panels.
                        Some(p) => Matrix::Bf16(p.forward.clone()),
                        None => Matrix::Blocks((*f.0).clone()),
                    },
                    (HeldBase::Blocks(f), Some(_)) => {
                        // `[n, k]` rows, one per output.
                        Matrix::Blocks(quantized(&f.0.dequantized(), f.0.rows(), f.0.cols(), true)?)
                    }
                    (HeldBase::Floats(t), None) => {
                        let [k, n] = t.dims();
                        match bf16 {
                            true => Matrix::Bf16(Panels::new(&f32s(*t), k, n)),
                            false => Matrix::Floats(Packed::new(&f32s(*t), k, n)),
                        }
                    }
                    (HeldBase::Floats(t), Some(_)) => {
                        let [k, n] = t.dims();
                        Matrix::Blocks(quantized(&f32s(*t), k, n, false)?)
                    }
                };
                matrices.push(match factors {
                    Some((a, b)) => {
                        let ([k, r], [_, n]) = (a.dims(), b.dims());
                        Matrix::Adapted {
                            base: Box::new(base),
                            a: Packed::new(&f32s(a), k, r),
                            b: Packed::new(&f32s(b), r, n),
                        }
                    }
                    None => base,
                });
            }
        }
        let (embed, head) = match kind {
            Some(_) => {
                // The embedding and head in Q8_0 whatever the blocks' type (as llama.cpp keeps
                // them above 4 bits): a fine-tuned model's format tokens lived in logit
                // differences a 4-bit head loses (docs/PERF.md).
                let q8 = |values: &[f32], k: usize, n: usize, transposed: bool| {
                    super::frozen::quantize(values, k, n, transposed, Kind::Q8_0)
                        .map_err(|e| anyhow::anyhow!("--quantize: {e}"))
                };
                let [v, d] = w.embed.dims();
                let embed = q8(&f32s(w.embed.clone()), d, v, true)?;
                let head = if self.tied() {
                    embed.clone()
                } else {
                    let [k, n] = w.head.dims();
                    q8(&f32s(w.head), k, n, false)?
                };
                (Embedding::Blocks(embed), Matrix::Blocks(head))
            }
            None => {
                let (values, (k, n, order)) = if self.tied() {
                    let [v, d] = w.embed.dims();
                    (f32s(w.embed.clone()), (d, v, Order::Columns))
                } else {
                    let [k, n] = w.head.dims();
                    (f32s(w.head), (k, n, Order::Rows))
                };
                let head = match (bf16, order) {
                    (true, _) => {
                        Matrix::Bf16(Panels::new_all(&[(k, n, order)], |_| &values[..]).remove(0))
                    }
                    (false, Order::Columns) => {
                        Matrix::Floats(Packed::from_transpose(&values, k, n))
                    }
                    (false, Order::Rows) => Matrix::Floats(Packed::new(&values, k, n)),
                };
                (Embedding::Floats(Box::new(F32s::of(w.embed))), head)
            }
        };
        matrices.push(head);
        let spec = Weights {
            shape: w.shape,
            embed,
            norms,
            extras,
            norm: (f32s(w.norm.0), w.norm.1 as f32),
            matrices: Vec::new(),
        };
        Ok(Engine::with_matrices(spec, ctx, matrices))
    }

    /// A CPU decoder of this model for contexts up to `ctx`. The matrices are packed a matrix
    /// at a time on each core, read where burn keeps them (a tied head straight from the
    /// embedding, which the decoder also reads in place). A QLoRA model's frozen blocks are
    /// dequantised and their adapters merged as each is packed: sampling many rows reads
    /// packed floats faster than it would dequantise blocks at every step, and the copy lives
    /// only as long as the decoder (see `sample::release_buffers`). In a bf16 run a QLoRA
    /// model instead reads the bf16 panels its training products keep, adapters beside them.
    pub fn engine(&self, ctx: usize) -> Engine {
        assert!(
            self.decodes_on_cpu(),
            "the CPU decoder has no routed experts (callers check decodes_on_cpu)"
        );
        if self.has_frozen() && crate::cpu::gemm::bf16_on() {
            // A bf16 run's QLoRA model samples from the bf16 panels its training products
            // keep (`QMatrix::bf16_panels`), the adapters beside them: nothing to dequantise
            // or pack again at each rollout.
            return self
                .engine_adapted(ctx, None)
                .expect("no block format asked for, so nothing is quantised");
        }
        let w = self.weights_without_blocks();
        // Per block matrix: its frozen blocks and adapter factors `(r, sA, B)`, if frozen.
        let frozen: Vec<_> = (0..w.blocks.len())
            .flat_map(|l| self.frozen_layer(l))
            .map(|f| f.map(|(f, ab)| (f, ab.map(|(a, b)| (a.dims()[1], f32s(a), f32s(b))))))
            .collect();
        let (mut tensors, mut norms, mut extras) = (Vec::new(), Vec::new(), Vec::new());
        for b in w.blocks {
            let (layer_norms, layer_extras, matrices) = layer(b);
            tensors.extend(matrices);
            norms.push(layer_norms);
            extras.push(layer_extras);
        }
        let mut shapes: Vec<(usize, usize, Order)> = tensors
            .iter()
            .zip(&frozen)
            .map(|(t, f)| match f {
                Some((f, _)) => (f.0.rows(), f.0.cols(), Order::Columns),
                None => {
                    let [k, n] = t.dims();
                    (k, n, Order::Rows)
                }
            })
            .collect();
        let embed = w.embed;
        if self.tied() {
            let [v, d] = embed.dims();
            shapes.push((d, v, Order::Columns));
            tensors.push(embed.clone());
        } else {
            let [k, n] = w.head.dims();
            shapes.push((k, n, Order::Rows));
            tensors.push(w.head);
        }
        let spec = Weights {
            shape: w.shape,
            embed: Embedding::Floats(Box::new(F32s::of(embed))),
            norms,
            extras,
            norm: (f32s(w.norm.0), w.norm.1 as f32),
            matrices: shapes,
        };
        Engine::new(spec, ctx, |i| match frozen.get(i) {
            Some(Some((f, ab))) => {
                // `[n, k]`: one dequantised row per output, plus `(sA · B)ᵀ`.
                let (k, n) = (f.0.rows(), f.0.cols());
                let mut rows = f.0.dequantized();
                if let Some((r, a, b)) = ab {
                    let delta = matmul(View::new(b, *r, n).t(), View::new(a, k, *r).t());
                    rows.iter_mut().zip(delta).for_each(|(w, d)| *w += d);
                }
                Values::Owned(rows)
            }
            _ => Values::Floats(F32s::of(tensors[i].clone())),
        })
    }
}
