//! Rotary position embeddings on burn tensors: the cos/sin tables of a run of positions, and
//! the rotation of a tensor's last axis by them (shared by the attention of
//! [`super::transformer`] and [`super::mla`]).

use crate::cpu::math::{RopeSpec, rope_table};
use burn::tensor::{Device, Tensor, TensorData};

/// cos and sin tables for `len` positions from `start`, shaped `[1, 1, len, head_dim / 2]`.
pub fn rope_tables(
    start: usize,
    len: usize,
    head_dim: usize,
    rope: RopeSpec,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let (cos, sin) = rope_table(start, len, head_dim, rope);
    let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, len, half]), device);
    (t(cos), t(sin))
}

/// Rotate pairs (i, i + half) of the last axis by the position's angle.
pub fn rotate_pairs(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.slice([0..b, 0..h, 0..t, half..d]);
    Tensor::cat(
        vec![
            x1.clone() * cos.clone() - x2.clone() * sin.clone(),
            x1 * sin.clone() + x2 * cos.clone(),
        ],
        3,
    )
}
