//! DeepSeek-V3's multi-token prediction, one depth: from the main model's last hidden state at
//! position `i` and the embedding of token `i + 1`, one more transformer block predicts token
//! `i + 2` through the model's own final norm and head (shared, as the embedding is):
//! `h'ᵢ = W·[norm(hᵢ); norm(emb(tᵢ₊₁))]`, then the block (causal over the `h'`), then the head.
//! Training adds `weight` times its cross-entropy to the loss ([`crate::stages::common`]); the
//! trunk leaves its hidden states here when it trains ([`Mtp::keep`]), so the extra depth costs
//! one block only in the stages that use it.

use super::config::MtpSpec;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor};
use std::sync::{Arc, Mutex};

/// The extra depth: two input norms, the projection of their concatenation and a block.
#[derive(Module, Debug)]
pub struct Mtp {
    hidden_norm: RmsNorm,
    embed_norm: RmsNorm,
    /// `[2·d, d]`.
    proj: Linear,
    #[module(skip)]
    weight: f64,
    /// The last training pass's trunk output `[b, t, d]` and its input tokens.
    #[module(skip)]
    kept: Arc<Mutex<Option<Kept>>>,
}

/// A training pass's trunk output `[b, t, d]` and its input tokens `[b, t]`.
type Kept = (Tensor<3>, Tensor<2, Int>);

impl Mtp {
    pub fn new(d: usize, spec: &MtpSpec, eps: f64, device: &Device) -> Mtp {
        let norm = || RmsNormConfig::new(d).with_epsilon(eps).init(device);
        Mtp {
            hidden_norm: norm(),
            embed_norm: norm(),
            proj: LinearConfig::new(2 * d, d).with_bias(false).init(device),
            weight: spec.weight,
            kept: Arc::default(),
        }
    }

    /// The loss weight λ.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Whether its weights train (a pass on the autodiff device whose depth is not frozen).
    pub fn trains(&self) -> bool {
        self.proj.weight.val().is_require_grad()
    }

    /// Keep a training pass's trunk output and tokens for [`Mtp::take`].
    pub fn keep(&self, h: Tensor<3>, tokens: Tensor<2, Int>) {
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some((h, tokens));
    }

    /// The kept pass, taken (a second call gives `None`).
    pub fn take(&self) -> Option<Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The block's input `[b, t, d]` for positions whose next tokens' embeddings are `next`
    /// (`[b, t, d]`): the projection of both, normed and side by side.
    pub fn input(&self, h: Tensor<3>, next: Tensor<3>) -> Tensor<3> {
        let both = Tensor::cat(
            vec![self.hidden_norm.forward(h), self.embed_norm.forward(next)],
            2,
        );
        self.proj.forward(both)
    }
}
