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

/// The block type a matrix of `k` inputs is quantised to when `kind` is asked for: Q4_K needs
/// rows of whole 256-element super-blocks, and other rows get Q5_0 (llama.cpp's quantiser falls
/// back the same way, which is why Q4_K_M files hold Q5_0 tensors).
pub fn block_kind(kind: Kind, k: usize) -> Kind {
    match kind {
        Kind::Q4K if !k.is_multiple_of(256) => Kind::Q5_0,
        other => other,
    }
}

/// A `[k, n]` float weight (`x · W`; `transposed` when given as `[n, k]`, one row per output)
/// quantised to `kind` (Q8_0, Q4_1, Q5_0 or Q4_K, see [`block_kind`]) as rows of blocks. Errors
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
    let kind = block_kind(kind, k);
    let store = match kind {
        Kind::Q8_0 => Store::Q8_0,
        Kind::Q4_1 => Store::Q4_1,
        Kind::Q5_0 => Store::Q5_0,
        Kind::Q4K => Store::Q4K,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_takes_whole_super_blocks_and_q5_0_the_other_rows() {
        for (k, kind, row_bytes) in [(256, Kind::Q4K, 144), (64, Kind::Q5_0, 2 * 22)] {
            let n = 3;
            // One row per output (`transposed_rows`), values of a weight's size.
            let w: Vec<f32> = (0..k * n)
                .map(|i| 0.05 * ((i as f32) * 0.37).sin())
                .collect();
            let q = quantize(&w, k, n, true, Kind::Q4K).unwrap();
            assert_eq!(block_kind(Kind::Q4K, k), kind);
            assert_eq!(q.bytes(), n * row_bytes, "{kind:?}");
            let mut row = vec![0f32; k];
            for j in 0..n {
                q.row_f32(j, &mut row);
                let worst = row
                    .iter()
                    .zip(&w[j * k..(j + 1) * k])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Within a step of a 4-bit (Q4_K) or 5-bit (Q5_0) grid over the row's range.
                assert!(worst < 0.1 / 15.0, "{kind:?} row {j}: {worst}");
            }
        }
    }
}
