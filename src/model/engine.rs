//! The glue between the burn model and the CPU decoder ([`crate::cpu::decoder`]): reads a
//! [`Gpt`]'s weights out of burn (any backend) into the decoder's layout.

use super::transformer::{Gpt, NormWeights};
use crate::cpu::decoder::{Engine, LayerExtras, Weights};
use burn::tensor::{Tensor, TensorData};

/// The values as `f32` (one copy; a conversion first if the backend stores another type).
fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("data converted to f32 reads back as f32")
}

/// Data converted to `f32`, as a slice.
struct F32s(TensorData);

impl AsRef<[f32]> for F32s {
    fn as_ref(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("data converted to f32 reads back as f32")
    }
}

impl Gpt {
    /// A CPU decoder of this model for contexts up to `ctx`. The matrices are read out of burn
    /// and packed a matrix at a time on each core (packed straight from burn's data: reading
    /// them out of burn already copies them twice).
    pub fn engine(&self, ctx: usize) -> Engine {
        let w = self.weights();
        let mut tensors = Vec::new();
        let mut norms = Vec::new();
        let mut extras = Vec::new();
        let gain = |n: NormWeights| (f32s(n.0), n.1 as f32);
        for b in w.blocks {
            tensors.extend([b.qkv, b.out, b.gate_up, b.down]);
            norms.push([gain(b.attn_norm), gain(b.mlp_norm)]);
            let (q_norm, k_norm) = match b.qk_norm {
                Some((q, k)) => (Some(gain(q)), Some(gain(k))),
                None => (None, None),
            };
            extras.push(LayerExtras {
                qkv_bias: b.qkv_bias.map(f32s),
                q_norm,
                k_norm,
            });
        }
        tensors.push(w.head);
        let matrices = tensors
            .iter()
            .map(|t| {
                let [k, n] = t.dims();
                (k, n)
            })
            .collect();
        let spec = Weights {
            d_model: w.d_model,
            heads: w.heads,
            kv_heads: w.kv_heads,
            head_dim: w.head_dim,
            rope: w.rope,
            embed: f32s(w.embed),
            norms,
            extras,
            norm: (f32s(w.norm.0), w.norm.1 as f32),
            matrices,
        };
        Engine::new(spec, ctx, |i| F32s(tensors[i].to_data().convert::<f32>()))
    }
}
