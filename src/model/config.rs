//! The model's shape, with the vocabulary size from the tokenizer. Stored as `config.json` in
//! every checkpoint and compared on load.

use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: usize,
    pub ctx: usize,
    pub rope_theta: f64,
}

impl ModelConfig {
    pub fn from_spec(spec: &ModelSpec, vocab: usize) -> ModelConfig {
        ModelConfig {
            vocab,
            d_model: spec.d_model,
            layers: spec.layers,
            heads: spec.heads,
            mlp: spec.mlp_width(),
            ctx: spec.ctx,
            rope_theta: spec.rope_theta,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Parameter count (embedding and head untied).
    pub fn params(&self) -> usize {
        let d = self.d_model;
        let per_layer = 2 * d + d * 3 * d + d * d + d * 2 * self.mlp + self.mlp * d;
        self.vocab * d + self.layers * per_layer + d + d * self.vocab
    }
}
