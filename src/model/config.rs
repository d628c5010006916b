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

    /// Whether the shape is one this build can run: the ranges `check` enforces on a spec,
    /// plus a vocabulary; the error names the field (a checkpoint's `config.json` is data).
    pub fn check(&self) -> Result<(), String> {
        use crate::spec::validate::{MAX_LAYERS, MAX_WIDTH};
        let bad = |what: &str| Err(format!("{what} (got {self:?})"));
        if !(1..=1 << 20).contains(&self.vocab) {
            return bad("vocab must be between 1 and 1048576");
        }
        if !(4..=MAX_WIDTH).contains(&self.d_model) {
            return bad(&format!("d_model must be between 4 and {MAX_WIDTH}"));
        }
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            return bad(&format!("layers must be between 1 and {MAX_LAYERS}"));
        }
        if self.heads == 0
            || !self.d_model.is_multiple_of(self.heads)
            || !self.head_dim().is_multiple_of(2)
        {
            return bad("heads must divide d_model into an even head size");
        }
        if !(1..=4 * MAX_WIDTH).contains(&self.mlp) {
            return bad(&format!("mlp must be between 1 and {}", 4 * MAX_WIDTH));
        }
        if !(8..=4096).contains(&self.ctx) {
            return bad("ctx must be between 8 and 4096");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad("rope_theta must be greater than 1");
        }
        // Each field in range can still multiply out to more than the machine holds: the weights
        // alone (f32) must fit in half of its memory, or loading would abort, not fail.
        let bytes = self.params() as f64 * 4.0;
        let limit = crate::spec::validate::memory_limit();
        if bytes > limit / 2.0 {
            return bad(&format!(
                "the weights would take {:.1} GB, more than half of this machine's {:.1} GB",
                bytes / 1e9,
                limit / 1e9
            ));
        }
        Ok(())
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
