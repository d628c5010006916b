//! The decoder-only transformer: token embedding, RoPE, RMSNorm, SwiGLU MLP and causal
//! multi-head attention, from burn's `nn` modules, plus an incremental forward over a
//! [`KvCache`] for decoding.

use super::config::ModelConfig;
use super::fused;
use crate::cpu::math::rope_table;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// One transformer block (pre-norm).
#[derive(Module, Debug)]
pub struct Block {
    attn_norm: RmsNorm,
    qkv: Linear,
    out: Linear,
    mlp_norm: RmsNorm,
    gate_up: Linear,
    down: Linear,
    heads: usize,
    mlp: usize,
}

/// The whole model.
#[derive(Module, Debug)]
pub struct Gpt {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    heads: usize,
    rope_theta: f64,
}

/// Keys and values of every layer for the positions seen so far, `[batch, heads, t, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Positions already in the cache.
    pub len: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
            len: 0,
        }
    }

    /// Keep only the batch rows in `rows` (sequences that are still generating).
    pub fn retain_rows(&mut self, rows: &[usize], device: &Device) {
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            device,
        );
        for layer in self.layers.iter_mut().flatten() {
            layer.0 = layer.0.clone().select(0, idx.clone());
            layer.1 = layer.1.clone().select(0, idx.clone());
        }
    }
}

/// `x · W` for `x` of shape `[b, t, d_in]`, as one `[b·t, d_in] × [d_in, d_out]` matmul: one
/// large GEMM instead of `b` small batched ones (measured: faster, and large enough for the
/// backend to use every core); the fused op on the CPU backend.
fn dense(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let w = layer.weight.val();
    if fused::available(&x.device()) {
        return fused::linear(x, w);
    }
    let [b, t, d] = x.dims();
    let out = w.dims()[1];
    x.reshape([b * t, d]).matmul(w).reshape([b, t, out])
}

/// RMSNorm, fused on the CPU backend (see [`super::fused`]).
fn norm<const D: usize>(layer: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    if fused::available(&x.device()) {
        fused::rms_norm(x, layer.gamma.val(), layer.epsilon)
    } else {
        layer.forward(x)
    }
}

/// `silu(gate) · up` for `gate_up = [gate, up]` on the last axis of size `2m`.
fn swiglu(gate_up: Tensor<3>, m: usize) -> Tensor<3> {
    let [b, t, _] = gate_up.dims();
    let gate = gate_up.clone().slice([0..b, 0..t, 0..m]);
    let up = gate_up.slice([0..b, 0..t, m..2 * m]);
    silu(gate) * up
}

fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(false).init(device)
}

/// cos and sin tables for `len` positions from `start`, shaped `[1, 1, len, head_dim / 2]`.
fn rope_tables(
    start: usize,
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let (cos, sin) = rope_table(start, len, head_dim, theta);
    let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, len, half]), device);
    (t(cos), t(sin))
}

/// Rotate pairs (i, i + half) of the last axis by the position's angle.
fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
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

impl Block {
    fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let d = cfg.d_model;
        Block {
            attn_norm: RmsNormConfig::new(d).init(device),
            qkv: linear(d, 3 * d, device),
            out: linear(d, d, device),
            mlp_norm: RmsNormConfig::new(d).init(device),
            gate_up: linear(d, 2 * cfg.mlp, device),
            down: linear(cfg.mlp, d, device),
            heads: cfg.heads,
            mlp: cfg.mlp,
        }
    }

    /// `x`: `[b, t, d]`. With a cache, keys/values of earlier positions are reused and the new
    /// ones appended. `mask` (true = hidden) is `[b, heads, t, t_total]`; without one, attention
    /// is causal over `t` (only valid with an empty cache).
    fn forward(
        &self,
        x: Tensor<3>,
        rope_cs: &(Tensor<4>, Tensor<4>),
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.heads, d / self.heads);
        let qkv = dense(&self.qkv, norm(&self.attn_norm, x.clone())).reshape([b, t, 3, h, hd]);
        // Queries and keys rotated together: one RoPE over 2h heads instead of two over h.
        let qk = qkv
            .clone()
            .slice([0..b, 0..t, 0..2, 0..h, 0..hd])
            .reshape([b, t, 2 * h, hd])
            .swap_dims(1, 2);
        let qk = rope(qk, &rope_cs.0, &rope_cs.1);
        let q = qk.clone().slice([0..b, 0..h, 0..t, 0..hd]);
        let mut k = qk.slice([0..b, h..2 * h, 0..t, 0..hd]);
        let mut v = qkv
            .slice([0..b, 0..t, 2..3, 0..h, 0..hd])
            .reshape([b, t, h, hd])
            .swap_dims(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let opts = AttentionModuleOptions {
            is_causal: mask.is_none(),
            ..Default::default()
        };
        let a = attention(q, k, v, mask, None, opts)
            .swap_dims(1, 2)
            .reshape([b, t, d]);
        self.mlp(x + dense(&self.out, a))
    }

    /// [`Block::forward`] over a whole sequence with the fused causal attention (CPU backend).
    fn forward_fused(&self, x: Tensor<3>, rope_theta: f64) -> Tensor<3> {
        let qkv = dense(&self.qkv, norm(&self.attn_norm, x.clone()));
        let a = fused::causal_attention(qkv, self.heads, rope_theta);
        self.mlp(x + dense(&self.out, a))
    }

    /// The MLP half with its residual.
    fn mlp(&self, x: Tensor<3>) -> Tensor<3> {
        let gu = dense(&self.gate_up, norm(&self.mlp_norm, x.clone()));
        if fused::available(&gu.device()) {
            return x + fused::swiglu_down(gu, self.down.weight.val());
        }
        x + dense(&self.down, swiglu(gu, self.mlp))
    }
}

/// Gives parameters ids by traversal order, so a model rebuilt from a checkpoint has the same
/// ids as the one that was saved (burn keys optimizer state by parameter id).
struct StableIds(u64);

impl ModuleMapper for StableIds {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.0 += 1;
        param.id = ParamId::from(self.0);
        param
    }
}

impl Gpt {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let model = Gpt {
            embed: EmbeddingConfig::new(cfg.vocab, cfg.d_model).init(device),
            blocks: (0..cfg.layers).map(|_| Block::new(cfg, device)).collect(),
            norm: RmsNormConfig::new(cfg.d_model).init(device),
            head: linear(cfg.d_model, cfg.vocab, device),
            heads: cfg.heads,
            rope_theta: cfg.rope_theta,
        };
        model.map(&mut StableIds(0))
    }

    fn head_dim(&self, d: usize) -> usize {
        d / self.heads
    }

    /// Logits `[b, t, vocab]` for a batch of right-padded sequences (causal attention; padding
    /// at the end never influences earlier positions).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let device = tokens.device();
        let [_, t] = tokens.dims();
        let mut x = self.embed.forward(tokens);
        if fused::available(&device) {
            for block in &self.blocks {
                x = block.forward_fused(x, self.rope_theta);
            }
        } else {
            let d = x.dims()[2];
            let cs = rope_tables(0, t, self.head_dim(d), self.rope_theta, &device);
            for block in &self.blocks {
                x = block.forward(x, &cs, None, None);
            }
        }
        dense(&self.head, norm(&self.norm, x))
    }

    /// Logits for `tokens` (`[b, t]`) at positions `cache.len..`, reusing and extending the
    /// cache. `key_pad` marks, per row, key positions (over the whole cached length plus `t`)
    /// that are padding and must not be attended to.
    pub fn forward_cached(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
        key_pad: Option<&[Vec<bool>]>,
    ) -> Tensor<3> {
        let device = tokens.device();
        let [b, t] = tokens.dims();
        let start = cache.len;
        let total = start + t;
        let mut x = self.embed.forward(tokens);
        let d = x.dims()[2];
        let cs = rope_tables(start, t, self.head_dim(d), self.rope_theta, &device);
        // Always an explicit mask here: causal by absolute position, plus padding.
        let mut m = Vec::with_capacity(b * t * total);
        for row in 0..b {
            for qi in 0..t {
                let qpos = start + qi;
                for kpos in 0..total {
                    let pad = key_pad
                        .and_then(|p| p.get(row))
                        .and_then(|r| r.get(kpos))
                        .copied()
                        .unwrap_or(false);
                    m.push(kpos > qpos || pad);
                }
            }
        }
        let mask = Some(
            Tensor::<3, Bool>::from_data(TensorData::new(m, [b, t, total]), &device)
                .unsqueeze_dim::<4>(1)
                .expand([b, self.heads, t, total]),
        );
        let layers = cache.layers.iter_mut();
        for (block, slot) in self.blocks.iter().zip(layers) {
            x = block.forward(x, &cs, Some(slot), mask.clone());
        }
        cache.len = total;
        dense(&self.head, norm(&self.norm, x))
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The weights as plain tensors (`[d_in, d_out]` matrices), for the CPU decoder.
    pub fn weights(&self) -> Weights {
        let norm = |n: &RmsNorm| (n.gamma.val(), n.epsilon);
        Weights {
            d_model: self.embed.weight.dims()[1],
            heads: self.heads,
            rope_theta: self.rope_theta,
            embed: self.embed.weight.val(),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    attn_norm: norm(&b.attn_norm),
                    qkv: b.qkv.weight.val(),
                    out: b.out.weight.val(),
                    mlp_norm: norm(&b.mlp_norm),
                    gate_up: b.gate_up.weight.val(),
                    down: b.down.weight.val(),
                })
                .collect(),
            norm: norm(&self.norm),
            head: self.head.weight.val(),
        }
    }
}

/// A norm's gain and epsilon.
pub type NormWeights = (Tensor<1>, f64);

/// The weights of one block (see [`Gpt::weights`]).
pub struct BlockWeights {
    pub attn_norm: NormWeights,
    pub qkv: Tensor<2>,
    pub out: Tensor<2>,
    pub mlp_norm: NormWeights,
    pub gate_up: Tensor<2>,
    pub down: Tensor<2>,
}

/// The weights of a whole model (see [`Gpt::weights`]).
pub struct Weights {
    pub d_model: usize,
    pub heads: usize,
    pub rope_theta: f64,
    pub embed: Tensor<2>,
    pub blocks: Vec<BlockWeights>,
    pub norm: NormWeights,
    pub head: Tensor<2>,
}
