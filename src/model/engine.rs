//! The glue between the burn model and the CPU decoder ([`crate::cpu::decoder`]): reads a
//! [`Gpt`]'s weights out of burn (any backend) into the decoder's layout.

use super::transformer::Gpt;
use crate::cpu::decoder::{Engine, Weights};
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
        for b in w.blocks {
            tensors.extend([b.qkv, b.out, b.gate_up, b.down]);
            norms.push([
                (f32s(b.attn_norm.0), b.attn_norm.1 as f32),
                (f32s(b.mlp_norm.0), b.mlp_norm.1 as f32),
            ]);
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
            rope_theta: w.rope_theta,
            embed: f32s(w.embed),
            norms,
            norm: (f32s(w.norm.0), w.norm.1 as f32),
            matrices,
        };
        Engine::new(spec, ctx, |i| F32s(tensors[i].to_data().convert::<f32>()))
    }
}
