//! The architecture of a decoder-only transformer in one plain value: its sizes and every
//! option the supported families add (grouped-query heads, q/k/v biases, q/k norms, a tied
//! head, the head size, RMSNorm's epsilon, RoPE's base and scaling). The burn model
//! (`model::transformer`) and the CPU decoder ([`super::decoder`]) both build from a [`Shape`],
//! so a new architecture option is one field here, read by both, plus a case in the shared test
//! matrix (`tests/it/model_fused.rs`, `arch_variants`).

use super::math::RopeSpec;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Query heads, and key/value heads (fewer with grouped-query attention).
    pub heads: usize,
    pub kv_heads: usize,
    /// Size of one head (`d_model / heads` unless the family says otherwise).
    pub head_dim: usize,
    /// Hidden width of the SwiGLU MLP.
    pub mlp: usize,
    pub vocab: usize,
    pub layers: usize,
    pub rope: RopeSpec,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f64,
    /// Biases on the query, key and value projections (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm over each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The output head is the embedding, transposed.
    pub tied: bool,
}

impl Shape {
    /// Width of the attention's queries (`heads · head_dim`).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of its keys, and of its values.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Columns of the fused query-key-value projection.
    pub fn qkv_width(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}
