//! The model's shape, with the vocabulary size from the tokenizer. Stored as `config.json` in
//! every checkpoint and compared on load.

pub use crate::cpu::math::RopeScaling;
use crate::cpu::math::RopeSpec;
use crate::cpu::shape::Shape;
use crate::spec::ModelSpec;
pub use crate::spec::types::{MlaSpec, MoeSpec, MtpSpec};
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
    /// What pretrained architectures add to the from-scratch shape; absent (all defaults) for
    /// stageloop's own models, so their `config.json` is unchanged.
    #[serde(default, skip_serializing_if = "Arch::is_plain")]
    pub arch: Arch,
}

/// The Llama / Qwen2 / Qwen3 variations of the block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Arch {
    /// Key/value heads (grouped-query attention); `None` = `heads`.
    pub kv_heads: Option<usize>,
    /// Size of a head when it is not `d_model / heads` (Qwen3).
    pub head_dim: Option<usize>,
    /// Biases on the query, key and value projections (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm over each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The output head is the embedding, transposed.
    pub tied: bool,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The Hugging Face `model_type` it was loaded from (`llama`, `qwen2`, `qwen3`), used when
    /// exporting; `None` for stageloop's own models.
    pub family: Option<String>,
    /// DeepSeekMoE blocks (from-scratch models): the MLP (`mlp` wide) is then the shared
    /// experts, `moe.shared × moe.expert_mlp`, and the routed experts come beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeSpec>,
    /// Multi-head Latent Attention (from-scratch models), its widths resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mla: Option<MlaSpec>,
    /// Multi-token prediction (from-scratch models): one extra depth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtp: Option<MtpSpec>,
}

impl Default for Arch {
    fn default() -> Self {
        Arch {
            kv_heads: None,
            head_dim: None,
            qkv_bias: false,
            qk_norm: false,
            tied: false,
            norm_eps: 1e-5,
            rope_scaling: None,
            family: None,
            moe: None,
            mla: None,
            mtp: None,
        }
    }
}

impl Arch {
    pub fn is_plain(&self) -> bool {
        *self == Arch::default()
    }
}

impl ModelConfig {
    pub fn from_spec(spec: &ModelSpec, vocab: usize) -> ModelConfig {
        // With MoE the dense MLP's width is shared among `top_k + shared` experts' worth of
        // active width; the block's own MLP holds the shared ones.
        let moe = spec.moe.map(|m| MoeSpec {
            expert_mlp: Some(m.width(spec.mlp_width())),
            ..m
        });
        let head_dim = spec.d_model / spec.heads.max(1);
        ModelConfig {
            vocab,
            d_model: spec.d_model,
            layers: spec.layers,
            heads: spec.heads,
            mlp: match moe {
                Some(m) => m.shared * m.width(0),
                None => spec.mlp_width(),
            },
            ctx: spec.ctx,
            rope_theta: spec.rope_theta,
            arch: Arch {
                moe,
                mla: spec.mla.map(|m| m.resolved(head_dim)),
                mtp: spec.mtp,
                ..Arch::default()
            },
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
            || (self.arch.head_dim.is_none() && !self.d_model.is_multiple_of(self.heads))
            || !self.head_dim().is_multiple_of(2)
            || !(2..=1024).contains(&self.head_dim())
        {
            return bad("heads must divide d_model into an even head size (at most 1024)");
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.heads.is_multiple_of(kv) {
            return bad("kv_heads must divide heads");
        }
        if !(self.arch.norm_eps.is_finite() && self.arch.norm_eps > 0.0 && self.arch.norm_eps < 1.0)
        {
            return bad("norm_eps must be between 0 and 1");
        }
        if let Some(r) = self.arch.rope_scaling {
            let ok = [
                r.factor,
                r.low_freq_factor,
                r.high_freq_factor,
                r.original_max_position_embeddings,
            ]
            .iter()
            .all(|x| x.is_finite() && *x > 0.0)
                && r.high_freq_factor > r.low_freq_factor;
            if !ok {
                return bad(
                    "rope_scaling needs positive factors and high_freq_factor > low_freq_factor",
                );
            }
        }
        if !(1..=4 * MAX_WIDTH).contains(&self.mlp) {
            return bad(&format!("mlp must be between 1 and {}", 4 * MAX_WIDTH));
        }
        if let Some(m) = self.arch.mla {
            let ok = m.kv_rank.is_some_and(|c| (1..=MAX_WIDTH).contains(&c))
                && m.rope_dim
                    .is_some_and(|r| (2..=1024).contains(&r) && r % 2 == 0);
            if !ok {
                return bad("mla needs a kv_rank width and an even rope_dim of at least 2");
            }
        }
        if let Some(m) = self.arch.moe {
            let ok = (2..=256).contains(&m.experts)
                && (1..=m.experts).contains(&m.top_k)
                && (1..=16).contains(&m.shared)
                && m.expert_mlp
                    .is_some_and(|w| (1..=4 * MAX_WIDTH).contains(&w))
                && (0.0..=1.0).contains(&m.bias_rate)
                && (0.0..=1.0).contains(&m.aux_loss);
            if !ok {
                return bad(
                    "moe needs 2-256 experts, top_k up to experts, 1-16 shared, an expert_mlp width \
                     and bias_rate, aux_loss between 0 and 1",
                );
            }
        }
        if !(8..=1 << 17).contains(&self.ctx) {
            return bad("ctx must be between 8 and 131072");
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
        self.arch
            .head_dim
            .unwrap_or(self.d_model / self.heads.max(1))
    }

    pub fn kv_heads(&self) -> usize {
        self.arch.kv_heads.unwrap_or(self.heads)
    }

    /// Width of the attention's queries (`heads · head_dim`) and of its keys or values.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim()
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads() * self.head_dim()
    }

    /// The architecture as both the burn model and the CPU decoder read it.
    pub fn shape(&self) -> Shape {
        Shape {
            d_model: self.d_model,
            heads: self.heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_dim(),
            mlp: self.mlp,
            vocab: self.vocab,
            layers: self.layers,
            rope: self.rope(),
            norm_eps: self.arch.norm_eps,
            qkv_bias: self.arch.qkv_bias,
            qk_norm: self.arch.qk_norm,
            tied: self.arch.tied,
        }
    }

    pub fn rope(&self) -> RopeSpec {
        RopeSpec {
            theta: self.rope_theta,
            scaling: self.arch.rope_scaling,
        }
    }

    /// FLOPs of one forward pass over a sequence of `len` tokens: every matrix product of the
    /// blocks and the output head (2 per multiply-add), and attention's scores and weighted
    /// sums over the positions each query sees (causal: `len·(len+1)/2` query-key pairs).
    /// Norms, activations, softmax and the embedding lookup are not counted (under 1% here).
    /// Sampling with a KV cache does the same arithmetic for the prompt and completion, and
    /// training's backward pass two products per forward one (see [`Self::train_flops`]).
    pub fn forward_flops(&self, len: usize) -> f64 {
        let d = self.d_model as f64;
        let (q, m) = (self.q_dim() as f64, self.mlp as f64);
        let per_layer = self.projection_macs() + q * d + d * 2.0 * m + m * d + self.routed_active();
        let matrices = self.layers as f64 * per_layer + d * self.vocab as f64;
        let n = len as f64;
        2.0 * matrices * n + self.layers as f64 * self.pair_flops() * n * (n + 1.0) / 2.0
    }

    /// Columns of a block's query-key-value projection: queries, keys and values; with MLA
    /// queries of `head_dim + rope_dim` per head, the latent and the shared rotary key.
    pub fn qkv_width(&self) -> usize {
        match self.arch.mla {
            Some(m) => {
                let (hd, r) = (self.head_dim(), m.rope_dim(self.head_dim()));
                self.heads * (hd + r) + m.kv_rank(hd) + r
            }
            None => self.q_dim() + 2 * self.kv_dim(),
        }
    }

    /// Multiply-adds a token spends making its queries, keys and values (with MLA: the
    /// projection, then keys and values up from the latent).
    fn projection_macs(&self) -> f64 {
        let up = self.arch.mla.map_or(0, |m| {
            m.kv_rank(self.head_dim()) * 2 * self.heads * self.head_dim()
        });
        (self.d_model * self.qkv_width() + up) as f64
    }

    /// FLOPs of attention per query-key pair and layer: the score (`qk` wide per head) and the
    /// weighted value sum (`head_dim` per head), 2 per multiply-add.
    fn pair_flops(&self) -> f64 {
        let hd = self.head_dim();
        let qk = hd + self.arch.mla.map_or(0, |m| m.rope_dim(hd));
        2.0 * (self.heads * (qk + hd)) as f64
    }

    /// What run.json says of this model.
    pub fn facts(&self) -> crate::runfs::status::ModelFacts {
        let hd = self.head_dim();
        let mut blocks = Vec::new();
        if let Some(m) = self.arch.moe {
            blocks.push(format!(
                "moe: {} routed experts (top {}) + {} shared, {} wide",
                m.experts,
                m.top_k,
                m.shared,
                m.width(0)
            ));
        }
        if let Some(m) = self.arch.mla {
            blocks.push(format!(
                "mla: latent {} + rope {}",
                m.kv_rank(hd),
                m.rope_dim(hd)
            ));
        }
        if let Some(m) = self.arch.mtp {
            blocks.push(format!("mtp: 1 depth, loss weight {}", m.weight));
        }
        crate::runfs::status::ModelFacts {
            params: self.params(),
            kv_bytes_per_token: self.kv_bytes_per_token(),
            blocks,
        }
    }

    /// Bytes of KV cache a token holds over all layers, in f32: keys and values, or with MLA
    /// the latent and the shared rotary key.
    pub fn kv_bytes_per_token(&self) -> usize {
        let per_layer = match self.arch.mla {
            Some(m) => m.kv_rank(self.head_dim()) + m.rope_dim(self.head_dim()),
            None => 2 * self.kv_dim(),
        };
        4 * self.layers * per_layer
    }

    /// Multiply-adds a token spends in one block's routed experts and router (0 when dense):
    /// FLOPs are counted on active parameters, the `top_k` experts a token goes through.
    fn routed_active(&self) -> f64 {
        self.arch.moe.map_or(0.0, |moe| {
            let (d, w) = (self.d_model as f64, moe.width(0) as f64);
            d * moe.experts as f64 + moe.top_k as f64 * 3.0 * d * w
        })
    }

    /// FLOPs of one training step's forward and backward passes over a sequence of `len`
    /// tokens: 3× the forward pass (the backward pass needs the input and the weight gradient
    /// of each product), 2× with LoRA (the frozen matrices get no weight gradient; the
    /// adapters' own small products are not counted).
    pub fn train_flops(&self, len: usize, lora: bool) -> f64 {
        (if lora { 2.0 } else { 3.0 }) * (self.forward_flops(len) + self.mtp_flops(len))
    }

    /// FLOPs of the multi-token-prediction depth's forward pass over a sequence of `len`
    /// tokens (0 without one): its projection, one more block and the head, at `len - 1`
    /// positions.
    pub fn mtp_flops(&self, len: usize) -> f64 {
        if self.arch.mtp.is_none() || len < 2 {
            return 0.0;
        }
        let one_layer = ModelConfig {
            layers: 1,
            arch: Arch {
                mtp: None,
                ..self.arch.clone()
            },
            ..self.clone()
        };
        let d = self.d_model as f64;
        one_layer.forward_flops(len - 1) + 2.0 * 2.0 * d * d * (len - 1) as f64
    }

    /// Parameter count (the head counted once when tied).
    pub fn params(&self) -> usize {
        let d = self.d_model;
        let qkv = self.qkv_width();
        let mut per_layer = 2 * d + d * qkv + self.q_dim() * d + d * 2 * self.mlp + self.mlp * d;
        if let Some(m) = self.arch.mla {
            // The latent's norm and the keys' and values' up-projection.
            let c = m.kv_rank(self.head_dim());
            per_layer += c + c * 2 * self.q_dim();
        }
        if self.arch.qkv_bias {
            per_layer += qkv;
        }
        if self.arch.qk_norm {
            per_layer += 2 * self.head_dim();
        }
        if let Some(moe) = self.arch.moe {
            // The router, every routed expert's three matrices, and the balancing biases.
            per_layer += d * moe.experts + moe.experts * 3 * d * moe.width(0) + moe.experts;
        }
        let head = if self.arch.tied { 0 } else { d * self.vocab };
        // Multi-token prediction: two norms, the projection and one more block.
        let mtp = self.arch.mtp.map_or(0, |_| 2 * d + 2 * d * d + per_layer);
        self.vocab * d + self.layers * per_layer + d + head + mtp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(kv_heads: Option<usize>) -> ModelConfig {
        ModelConfig {
            vocab: 10,
            d_model: 8,
            layers: 2,
            heads: 2,
            mlp: 16,
            ctx: 32,
            rope_theta: 10_000.0,
            arch: Arch {
                kv_heads,
                ..Arch::default()
            },
        }
    }

    #[test]
    fn moe_flops_count_active_experts_and_params_count_all() {
        // Dense: mlp 16. MoE with 4 experts, top 2 + 1 shared of width 16 / 3 = 5: the shared
        // MLP is 5 wide; per token and layer the router 8×4 and two experts' 3·8·5 are added.
        let spec = crate::spec::ModelSpec {
            d_model: 8,
            layers: 2,
            heads: 2,
            mlp: Some(16),
            ctx: 32,
            moe: Some(MoeSpec {
                experts: 4,
                top_k: 2,
                shared: 1,
                expert_mlp: None,
                bias_rate: 0.001,
                aux_loss: 0.0,
            }),
            ..Default::default()
        };
        let c = ModelConfig::from_spec(&spec, 10);
        assert_eq!(c.mlp, 5);
        assert_eq!(c.arch.moe.unwrap().expert_mlp, Some(5));
        let dense = ModelConfig {
            mlp: 5,
            arch: Arch::default(),
            ..c.clone()
        };
        let per_token = 2.0 * 2.0 * (8.0 * 4.0 + 2.0 * 3.0 * 8.0 * 5.0);
        assert_eq!(c.forward_flops(1), dense.forward_flops(1) + per_token);
        // Parameters: every expert, the router and the biases.
        assert_eq!(c.params(), dense.params() + 2 * (8 * 4 + 4 * 3 * 8 * 5 + 4));
    }

    #[test]
    fn forward_flops_count_products_and_causal_attention() {
        // Per layer: qkv 8×24, out 8×8, gate_up 8×32, down 16×8 = 192+64+256+128 = 640
        // multiply-adds per token; two layers and the 8×10 head: 1360, so 2720 FLOPs a token.
        // Attention: 4 · layers · q_dim = 64 FLOPs per query-key pair.
        let c = tiny(None);
        assert_eq!(c.forward_flops(1), 2720.0 + 64.0);
        assert_eq!(c.forward_flops(3), 3.0 * 2720.0 + 6.0 * 64.0);
        assert_eq!(c.train_flops(3, false), 3.0 * c.forward_flops(3));
        assert_eq!(c.train_flops(3, true), 2.0 * c.forward_flops(3));
        // Grouped-query attention narrows k and v: qkv 8×(8+4+4) = 128 instead of 192.
        assert_eq!(
            tiny(Some(1)).forward_flops(1),
            2.0 * (1360.0 - 128.0) + 64.0
        );
    }
}
