//! QLoRA's frozen base: the block matrices of a LoRA stage kept as quantised blocks
//! ([`QMatrix`]) instead of f32 tensors. Training reads them through the fused
//! [`super::fused::frozen_linear`] op (forward, and the input gradient of the backward pass);
//! the sampler's decoder dequantises them with the adapters merged as it packs them. The blocks come
//! from a GGUF file as they are in it, or from f32 weights quantised at load.

use crate::cpu::quant::{Kind, QMatrix};
use crate::cpu::transpose::transposed;
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

/// A frozen `[k, n]` weight (`x · W`, `k` inputs and `n` outputs) as quantised blocks, one row
/// of blocks per output. A clone shares the blocks.
#[derive(Clone)]
pub struct Frozen(pub Arc<QMatrix>);

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frozen([{}, {}], {} bytes)",
            self.0.rows(),
            self.0.cols(),
            self.0.bytes()
        )
    }
}

impl Frozen {
    pub fn new(q: QMatrix) -> Frozen {
        Frozen(Arc::new(q))
    }

    /// The weight's values as a `[k, n]` tensor on `device` (for the composite ops of other
    /// backends, merges and export: a float copy, never kept by the model).
    pub fn tensor(&self, device: &Device) -> Tensor<2> {
        let (k, n) = (self.0.rows(), self.0.cols());
        let w = transposed(&self.0.dequantized(), n, k);
        Tensor::from_data(TensorData::new(w, [k, n]), device)
    }
}

/// A frozen block matrix with its adapter's factors `(scale · A, B)`, if it has one.
pub type Adapted = (Frozen, Option<(Tensor<2>, Tensor<2>)>);

/// A `[k, n]` float weight (`x · W`; `transposed` when given as `[n, k]`, one row per output)
/// quantised to `kind` (Q8_0 or Q4_1: ggml's reference quantisers) as rows of blocks. Errors
/// if `k` is not whole 32-element blocks.
pub fn quantize(
    values: &[f32],
    k: usize,
    n: usize,
    transposed_rows: bool,
    kind: Kind,
) -> anyhow::Result<QMatrix> {
    use super::gguf_write::Store;
    anyhow::ensure!(
        k.is_multiple_of(32),
        "quantising needs rows of whole 32-element blocks (a matrix has {k} inputs)"
    );
    let store = match kind {
        Kind::Q8_0 => Store::Q8_0,
        Kind::Q4_1 => Store::Q4_1,
        other => anyhow::bail!("no quantiser for {}", other.name()),
    };
    let bytes = if transposed_rows {
        super::gguf_write::quantize(values, store)
    } else {
        super::gguf_write::quantize(&transposed(values, k, n), store)
    };
    let rb = kind.row_bytes(k);
    let offsets = (0..n).map(|j| j * rb).collect();
    Ok(QMatrix::new(k, Arc::new(bytes), vec![(kind, offsets)]))
}
