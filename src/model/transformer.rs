//! The decoder-only transformer: token embedding, RoPE, RMSNorm, SwiGLU MLP and causal
//! attention with grouped-query heads (and the Qwen variations: q/k/v biases, q/k norms), from
//! burn's `nn` modules, plus an incremental forward over a [`KvCache`] for decoding.

use super::config::ModelConfig;
use super::flex::f32s;
use super::frozen::Frozen;
use super::fused;
use super::mla::Mla;
use super::moe::{Loads, Moe};
use super::mtp::Mtp;
use super::rope::{rope_tables, rotate_pairs};
use crate::cpu::math::RopeSpec;
use crate::cpu::shape::Shape;
use crate::spec::LORA_TARGETS;
use burn::module::{Lora, Module, ModuleMapper, Param, ParamGroup, ParamId};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// One transformer block (pre-norm).
#[derive(Module, Debug)]
pub struct Block {
    attn_norm: RmsNorm,
    /// Queries, keys and values in one product: `[d, (heads + 2·kv_heads) · head_dim]`, each
    /// part head-major; with biases on Qwen2.
    qkv: Linear,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3).
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    out: Linear,
    mlp_norm: RmsNorm,
    /// The SwiGLU MLP; with `moe`, the shared experts.
    gate_up: Linear,
    down: Linear,
    /// DeepSeekMoE's routed experts, beside the MLP.
    moe: Option<Moe>,
    /// Multi-head Latent Attention: `qkv` then makes queries, the latent and the shared
    /// rotary key, and this makes keys and values from the latent.
    mla: Option<Mla>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    mlp: usize,
    /// QLoRA: `qkv`, `out`, `gate_up` and `down` ([`LORA_TARGETS`]' order) as quantised blocks,
    /// where the [`Linear`]'s own weight is then an empty placeholder (its adapter, if any,
    /// stays on it).
    #[module(skip)]
    frozen: [Option<Frozen>; 4],
}

/// A block matrix's base as the model holds it ([`Gpt::held_layer`]).
pub enum HeldBase {
    /// A QLoRA model's frozen quantised blocks.
    Blocks(Frozen),
    /// A float `[k, n]` weight (without its adapter).
    Floats(Box<Tensor<2>>),
}

/// The whole model.
#[derive(Module, Debug)]
pub struct Gpt {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// `None` when tied to the embedding.
    head: Option<Linear>,
    /// Multi-token prediction: its input projection, and its block.
    mtp: Option<Mtp>,
    mtp_block: Option<Block>,
    /// The architecture the blocks were built with.
    #[module(skip)]
    shape: Shape,
}

/// Keys and values of every layer for the positions seen so far, `[batch, kv_heads, t,
/// head_dim]`.
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

    /// Forget every position from `len` on (a rejected draft's), in every layer.
    pub fn truncate(&mut self, len: usize) {
        for layer in self.layers.iter_mut().flatten() {
            let [b, h, t, d] = layer.0.dims();
            if t > len {
                let [_, h1, _, d1] = layer.1.dims();
                layer.0 = layer.0.clone().slice([0..b, 0..h, 0..len, 0..d]);
                layer.1 = layer.1.clone().slice([0..b, 0..h1, 0..len, 0..d1]);
            }
        }
        self.len = self.len.min(len);
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

/// Prompts that several training rows continue, each run once ([`Gpt::hidden_after`]).
#[derive(Debug, Clone)]
pub struct Prefix {
    /// `[prompts, t]`: every prompt of one length.
    pub tokens: Tensor<2, Int>,
    /// For each continuing row, the prompt it continues.
    pub rows: Vec<usize>,
}

impl Prefix {
    /// The same prefix on `device`.
    pub fn to_device(&self, device: &Device) -> Prefix {
        Prefix {
            tokens: Tensor::from_data(self.tokens.to_data(), device),
            rows: self.rows.clone(),
        }
    }
}

/// What every block of [`Gpt::hidden_after`] shares: the sizes, the two RoPE tables, the
/// continuing rows' mask over prompt and own keys, and their prompts as an index.
struct Shared {
    prompts: usize,
    prompt_len: usize,
    rows: usize,
    len: usize,
    rope_prompt: (Tensor<4>, Tensor<4>),
    rope_rows: (Tensor<4>, Tensor<4>),
    mask: Tensor<4, Bool>,
    index: Tensor<1, Int>,
}

/// `x · W + b` for `x` of shape `[b, t, d_in]`, as one `[b·t, d_in] × [d_in, d_out]` matmul:
/// one large GEMM instead of `b` small batched ones (measured: faster, and large enough for the
/// backend to use every core); the fused op on the CPU backend. A LoRA-adapted `W` is applied as
/// `x · W₀ + s · (x · A) · B`, so the frozen `W₀` gets no gradient (the merged `W₀ + s·A·B`
/// would cost a full `[d_in, d_out]` weight gradient per step).
///
/// With a `frozen` base (QLoRA) the product reads its blocks: the fused op on the CPU backend, a
/// dequantised copy on other backends.
fn dense(layer: &Linear, frozen: Option<&Frozen>, x: Tensor<3>) -> Tensor<3> {
    let base = |x: Tensor<3>| match frozen {
        Some(f) if fused::available(&x.device()) => fused::frozen_linear(x, f),
        Some(f) => {
            let device = x.device();
            product(x, f.tensor(&device))
        }
        None => product(x, layer.weight.base()),
    };
    let y = match (layer.weight.adapter(), frozen) {
        // QLoRA's adapted layer as one op on the CPU backend.
        (Some(ad), Some(f)) if fused::available(&x.device()) => {
            fused::frozen_lora(x, f, ad.a.val(), ad.b.val(), ad.scale)
        }
        (Some(ad), _) => {
            // The scale on the small `A` rather than on the `[b·t, d_out]` product: the same
            // sum, one pass over a large tensor fewer each way.
            let low = product(
                product(x.clone(), ad.a.val().mul_scalar(ad.scale)),
                ad.b.val(),
            );
            base(x) + low
        }
        (None, _) => base(x),
    };
    match &layer.bias {
        Some(b) => y + b.val().unsqueeze::<3>(),
        None => y,
    }
}

/// `x · w` for `x` `[b, t, k]` and `w` `[k, n]`.
fn product(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
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

fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
}

fn rms(d: usize, eps: f64, device: &Device) -> RmsNorm {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

/// Each of `kv` heads repeated for the `groups` query heads that share it, on axis `axis` of
/// `x` (heads of `head_dim` on that axis and the next).
fn repeat_heads<const D: usize, const E: usize>(
    x: Tensor<D>,
    axis: usize,
    groups: usize,
) -> Tensor<D> {
    if groups == 1 {
        return x;
    }
    let dims = x.dims();
    let mut grown = [0usize; E];
    let mut out = dims;
    for i in 0..E {
        grown[i] = match i.cmp(&(axis + 1)) {
            std::cmp::Ordering::Less => dims[i],
            std::cmp::Ordering::Equal => groups,
            std::cmp::Ordering::Greater => dims[i - 1],
        };
    }
    out[axis] = dims[axis] * groups;
    x.unsqueeze_dim::<E>(axis + 1).expand(grown).reshape(out)
}

impl Block {
    /// The weight matrix LoRA calls `name`.
    fn matrix(&self, name: &str) -> Option<&Linear> {
        match name {
            "qkv" => Some(&self.qkv),
            "out" => Some(&self.out),
            "gate_up" => Some(&self.gate_up),
            "down" => Some(&self.down),
            _ => None,
        }
    }

    /// [`LORA_TARGETS`]`[i]`'s layer and its frozen blocks, if any.
    fn layer(&self, i: usize) -> (&Linear, Option<&Frozen>) {
        let l = self
            .matrix(LORA_TARGETS[i])
            .expect("LORA_TARGETS names block matrices");
        (l, self.frozen[i].as_ref())
    }

    /// `x` through [`LORA_TARGETS`]`[i]` (see [`dense`]).
    fn dense(&self, i: usize, x: Tensor<3>) -> Tensor<3> {
        let (l, f) = self.layer(i);
        dense(l, f, x)
    }

    /// [`LORA_TARGETS`]`[i]`'s effective `[k, n]` weight: its adapter merged, a frozen base
    /// dequantised.
    fn value(&self, i: usize) -> Tensor<2> {
        match self.layer(i) {
            (l, None) => l.weight.val(),
            (l, Some(f)) => {
                let base = f.tensor(&l.weight.base().device());
                match l.weight.adapter() {
                    Some(ad) => base + ad.delta(),
                    None => base,
                }
            }
        }
    }

    fn new(s: &Shape, arch: &super::config::Arch, device: &Device) -> Self {
        let (d, eps, hd) = (s.d_model, s.norm_eps, s.head_dim);
        let qkv_width = match &arch.mla {
            Some(m) => s.heads * (hd + m.rope_dim(hd)) + m.kv_rank(hd) + m.rope_dim(hd),
            None => s.qkv_width(),
        };
        let qk_norm = || s.qk_norm.then(|| rms(hd, eps, device));
        Block {
            attn_norm: rms(d, eps, device),
            qkv: linear(d, qkv_width, s.qkv_bias, device),
            q_norm: qk_norm(),
            k_norm: qk_norm(),
            out: linear(s.q_dim(), d, false, device),
            mlp_norm: rms(d, eps, device),
            gate_up: linear(d, 2 * s.mlp, false, device),
            down: linear(s.mlp, d, false, device),
            moe: arch.moe.as_ref().map(|m| Moe::new(d, m, device)),
            mla: arch
                .mla
                .as_ref()
                .map(|m| Mla::new(s.heads, hd, m, eps, s.rope, device)),
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: hd,
            mlp: s.mlp,
            frozen: [None, None, None, None],
        }
    }

    /// The projection split into queries `[b, t, heads, hd]`, keys and values
    /// `[b, t, kv_heads, hd]`, queries and keys normed when the block has q/k norms.
    fn project(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.dense(0, norm(&self.attn_norm, x));
        let (qd, kd) = (h * hd, kv * hd);
        let mut q = qkv
            .clone()
            .slice([0..b, 0..t, 0..qd])
            .reshape([b, t, h, hd]);
        let mut k = qkv
            .clone()
            .slice([0..b, 0..t, qd..qd + kd])
            .reshape([b, t, kv, hd]);
        let v = qkv
            .slice([0..b, 0..t, qd + kd..qd + 2 * kd])
            .reshape([b, t, kv, hd]);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = norm(qn, q);
            k = norm(kn, k);
        }
        (q, k, v)
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
        if let Some(mla) = &self.mla {
            let qkv = self.dense(0, norm(&self.attn_norm, x.clone()));
            return self.mlp(x + self.dense(1, mla.attend(qkv, cache, mask)));
        }
        let [b, t, _] = x.dims();
        let (q, k, v) = self.project(x.clone());
        let q = rotate_pairs(q.swap_dims(1, 2), &rope_cs.0, &rope_cs.1);
        let mut k = rotate_pairs(k.swap_dims(1, 2), &rope_cs.0, &rope_cs.1);
        let mut v = v.swap_dims(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let groups = self.heads / self.kv_heads;
        let (k, v) = (
            repeat_heads::<4, 5>(k, 1, groups),
            repeat_heads::<4, 5>(v, 1, groups),
        );
        let opts = AttentionModuleOptions {
            is_causal: mask.is_none(),
            ..Default::default()
        };
        let a = attention(q, k, v, mask, None, opts)
            .swap_dims(1, 2)
            .reshape([b, t, self.heads * self.head_dim]);
        self.mlp(x + self.dense(1, a))
    }

    /// [`Block::forward`] over a whole sequence with the fused causal attention (CPU backend).
    /// Grouped-query heads are repeated and q/k norms applied before the fused op, which takes
    /// one key and value per query head.
    fn forward_fused(&self, x: Tensor<3>, rope: RopeSpec) -> Tensor<3> {
        if let Some(mla) = &self.mla {
            let qkv = self.dense(0, norm(&self.attn_norm, x.clone()));
            return self.mlp(x + self.dense(1, mla.attend(qkv, None, None)));
        }
        let plain = self.kv_heads == self.heads && self.q_norm.is_none();
        let qkv = if plain {
            self.dense(0, norm(&self.attn_norm, x.clone()))
        } else {
            let [b, t, _] = x.dims();
            let (q, k, v) = self.project(x.clone());
            let groups = self.heads / self.kv_heads;
            let (k, v) = (
                repeat_heads::<4, 5>(k, 2, groups),
                repeat_heads::<4, 5>(v, 2, groups),
            );
            let qd = self.heads * self.head_dim;
            Tensor::cat(
                vec![
                    q.reshape([b, t, qd]),
                    k.reshape([b, t, qd]),
                    v.reshape([b, t, qd]),
                ],
                2,
            )
        };
        let a = fused::causal_attention(qkv, self.heads, rope);
        self.mlp(x + self.dense(1, a))
    }

    /// [`Block::forward`] for [`Gpt::hidden_after`]: `x` `[1, n, d]` holds the prompts' rows
    /// (`prompts · prompt_len` positions) and then the continuing rows' (`rows · len`). They
    /// share every product; the prompts attend causally to themselves, each continuing row to
    /// its prompt's keys (gathered, so their gradients add up) and causally to its own.
    fn forward_shared(&self, x: Tensor<3>, s: &Shared) -> Tensor<3> {
        let [_, n, _] = x.dims();
        let p = s.prompts * s.prompt_len;
        let (q, k, v) = self.project(x.clone());
        // `[1, n, h, hd]` into the prompts' `[prompts, h, prompt_len, hd]` and the rows'
        // `[rows, h, len, hd]`.
        let split = |x: Tensor<4>| {
            let [_, _, h, hd] = x.dims();
            let prompt = x.clone().slice([0..1, 0..p, 0..h, 0..hd]);
            let rows = x.slice([0..1, p..n, 0..h, 0..hd]);
            (
                prompt
                    .reshape([s.prompts, s.prompt_len, h, hd])
                    .swap_dims(1, 2),
                rows.reshape([s.rows, s.len, h, hd]).swap_dims(1, 2),
            )
        };
        let ((qp, qs), (kp, ks), (vp, vs)) = (split(q), split(k), split(v));
        let (pc, ps) = &s.rope_prompt;
        let (rc, rs) = &s.rope_rows;
        let (qp, kp) = (rotate_pairs(qp, pc, ps), rotate_pairs(kp, pc, ps));
        let (qs, ks) = (rotate_pairs(qs, rc, rs), rotate_pairs(ks, rc, rs));
        let groups = self.heads / self.kv_heads;
        let heads = |x: Tensor<4>| repeat_heads::<4, 5>(x, 1, groups);
        let qd = self.heads * self.head_dim;
        let causal = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let kr = Tensor::cat(vec![kp.clone().select(0, s.index.clone()), ks], 2);
        let vr = Tensor::cat(vec![vp.clone().select(0, s.index.clone()), vs], 2);
        let ap = attention(qp, heads(kp), heads(vp), None, None, causal);
        let mask = Some(s.mask.clone());
        let ar = attention(qs, heads(kr), heads(vr), mask, None, Default::default());
        let a = Tensor::cat(
            vec![
                ap.swap_dims(1, 2).reshape([p, qd]),
                ar.swap_dims(1, 2).reshape([s.rows * s.len, qd]),
            ],
            0,
        );
        self.mlp(x + self.dense(1, a.reshape([1, n, qd])))
    }

    /// The MLP half with its residual.
    fn mlp(&self, x: Tensor<3>) -> Tensor<3> {
        let h = norm(&self.mlp_norm, x.clone());
        let x = match &self.moe {
            Some(moe) => x + moe.forward(h.clone()),
            None => x,
        };
        let gu = self.dense(2, h);
        if fused::available(&gu.device()) {
            if self.down.weight.adapter().is_none() && self.frozen[3].is_none() {
                return x + fused::swiglu_down(gu, self.down.weight.val());
            }
            // An adapted or frozen output projection runs as `dense`'s product.
            return x + self.dense(3, fused::swiglu(gu));
        }
        x + self.dense(3, swiglu(gu, self.mlp))
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
        let s = cfg.shape();
        let model = Gpt {
            embed: EmbeddingConfig::new(s.vocab, s.d_model).init(device),
            blocks: (0..s.layers)
                .map(|_| Block::new(&s, &cfg.arch, device))
                .collect(),
            norm: rms(s.d_model, s.norm_eps, device),
            head: (!s.tied).then(|| linear(s.d_model, s.vocab, false, device)),
            mtp: cfg
                .arch
                .mtp
                .map(|m| Mtp::new(s.d_model, &m, s.norm_eps, device)),
            mtp_block: cfg.arch.mtp.map(|_| Block::new(&s, &cfg.arch, device)),
            shape: s,
        };
        model.map(&mut StableIds(0))
    }

    /// LoRA adapters of rank `rank` (scale `alpha / rank`) on the block matrices named in
    /// `targets` (`qkv`, `out`, `gate_up`, `down`); every other weight is frozen. Parameter ids
    /// are renumbered so that a model rebuilt the same way matches its optimizer state.
    pub fn with_lora(self, rank: usize, alpha: f64, targets: &[&str]) -> Self {
        let ids = self
            .blocks
            .iter()
            .flat_map(|b| {
                targets
                    .iter()
                    .filter_map(move |t| b.matrix(t).map(|l| l.weight.id))
            })
            .collect();
        let lora = Lora::new(rank, alpha).set_param_group(ParamGroup::from_ids(ids));
        self.apply_lora(lora).map(&mut StableIds(0))
    }

    /// The same model with block matrices frozen as quantised blocks (QLoRA): `layers[l][i]`
    /// replaces block `l`'s [`LORA_TARGETS`]`[i]` where given (its f32 weight is dropped; an
    /// adapter on it stays). Panics if a matrix's shape differs from the weight it replaces.
    pub fn with_frozen(mut self, layers: Vec<[Option<crate::cpu::quant::QMatrix>; 4]>) -> Gpt {
        assert_eq!(
            layers.len(),
            self.blocks.len(),
            "a set of matrices per block"
        );
        let mut ids = std::collections::HashSet::new();
        for (b, qs) in self.blocks.iter_mut().zip(layers) {
            for (i, q) in qs.into_iter().enumerate() {
                let Some(q) = q else { continue };
                let (l, _) = b.layer(i);
                let shape = l.weight.lazy_shape();
                assert_eq!(
                    (q.rows(), q.cols()),
                    (shape[0], shape[1]),
                    "frozen {} has the weight's shape",
                    LORA_TARGETS[i]
                );
                ids.insert(l.weight.id);
                b.frozen[i] = Some(Frozen::new(q));
            }
        }
        /// Empties the weights whose ids it holds (an adapter, traversed apart, stays).
        struct Placeholder(std::collections::HashSet<ParamId>);
        impl ModuleMapper for Placeholder {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
                if !self.0.contains(&p.id) {
                    return p;
                }
                p.map(|t| {
                    let device = t.device();
                    Tensor::empty([0; D], &device)
                })
            }
        }
        self.map(&mut Placeholder(ids))
    }

    /// The same model with every block matrix frozen as `kind` blocks (Q8_0 or Q4_1),
    /// quantised from its f32 weights (an adapter on a weight stays beside it). Errors if a
    /// matrix's inputs are not whole 32-element blocks.
    pub fn quantized_base(self, kind: crate::cpu::quant::Kind) -> anyhow::Result<Gpt> {
        let mut layers = Vec::new();
        for b in &self.blocks {
            let mut qs: [Option<crate::cpu::quant::QMatrix>; 4] = Default::default();
            for (i, q) in qs.iter_mut().enumerate() {
                let (l, f) = b.layer(i);
                if f.is_some() {
                    continue;
                }
                let w = l.weight.base();
                let [k, n] = w.dims();
                *q = Some(super::frozen::quantize(&f32s(w), k, n, false, kind)?);
            }
            layers.push(qs);
        }
        Ok(self.with_frozen(layers))
    }

    /// Whether any block matrix is frozen as quantised blocks (QLoRA).
    pub fn has_frozen(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| b.frozen.iter().any(Option::is_some))
    }

    /// Block `l`'s matrices for the decoder, in [`LORA_TARGETS`]' order: frozen blocks (with
    /// their adapter's factors `(scale · A, B)`, if any), or `None` for a float weight.
    /// Layer `l`'s block matrices as they are held, in [`LORA_TARGETS`] order: the base (a
    /// QLoRA model's frozen blocks, or the float `[k, n]` weight without its adapter) and the
    /// adapter's factors `(scale · A, B)` when the matrix has one.
    pub fn held_layer(&self, l: usize) -> [(HeldBase, Option<(Tensor<2>, Tensor<2>)>); 4] {
        let b = &self.blocks[l];
        std::array::from_fn(|i| {
            let (lin, f) = b.layer(i);
            let factors = lin.weight.adapter().map(|ad| {
                (
                    ad.a.val().mul_scalar(ad.scale).detach(),
                    ad.b.val().detach(),
                )
            });
            let base = match f {
                Some(f) => HeldBase::Blocks(f.clone()),
                None => HeldBase::Floats(Box::new(match lin.weight.adapter() {
                    Some(_) => lin.weight.base(),
                    None => lin.weight.val(),
                })),
            };
            (base, factors)
        })
    }

    pub fn frozen_layer(&self, l: usize) -> [Option<super::frozen::Adapted>; 4] {
        let b = &self.blocks[l];
        std::array::from_fn(|i| {
            let (lin, f) = b.layer(i);
            let factors = lin.weight.adapter().map(|ad| {
                (
                    ad.a.val().mul_scalar(ad.scale).detach(),
                    ad.b.val().detach(),
                )
            });
            f.cloned().map(|f| (f, factors))
        })
    }

    /// Parameters that receive gradients (on an autodiff device): all of them for full
    /// fine-tuning, the adapter factors with LoRA.
    pub fn num_params_trainable(&self) -> usize {
        struct Count(usize);
        impl burn::module::ModuleVisitor for Count {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let t = p.val();
                if t.is_require_grad() {
                    self.0 += t.shape().num_elements();
                }
            }
        }
        let mut c = Count(0);
        self.visit(&mut c);
        c.0
    }

    /// How many weight matrices carry a LoRA adapter.
    pub fn adapted_matrices(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| LORA_TARGETS.iter().filter_map(|t| b.matrix(t)))
            .filter(|l| l.weight.adapter().is_some())
            .count()
    }

    /// Whether the head is the embedding transposed (no head matrix of its own).
    pub fn tied(&self) -> bool {
        self.head.is_none()
    }

    /// Whether any weight carries a LoRA adapter.
    pub fn has_lora(&self) -> bool {
        self.adapted_matrices() > 0
    }

    /// Whether the CPU decoder ([`Gpt::engine`]) can run this model: not with routed experts
    /// or latent attention, which decode through burn's ops.
    pub fn decodes_on_cpu(&self) -> bool {
        self.blocks
            .iter()
            .all(|b| b.moe.is_none() && b.mla.is_none())
    }

    /// The routed experts' balance loss of the last training pass, summed over the blocks
    /// (`None` without MoE or with `aux_loss = 0`).
    pub fn take_aux_loss(&self) -> Option<Tensor<1>> {
        let losses = self
            .blocks
            .iter()
            .filter_map(|b| b.moe.as_ref()?.take_aux_loss());
        losses.reduce(|a, b| a + b)
    }

    /// After an optimizer step: every block's routing biases nudged towards an even load
    /// (`bias_rate` each), and the loads the step saw, per block (empty without MoE).
    pub fn balance_experts(&mut self, rate: f64) -> Vec<Loads> {
        self.blocks
            .iter_mut()
            .filter_map(|b| b.moe.as_mut()?.balance(rate))
            .collect()
    }

    /// Each block's DeepSeek parts, for the DeepseekV3 export: its latent attention's weights
    /// and its routed experts' (`None` where the block has none).
    pub fn deepseek_parts(&self) -> Vec<DeepseekParts> {
        self.blocks
            .iter()
            .map(|b| DeepseekParts {
                mla: b.mla.as_ref().map(Mla::weights),
                moe: b.moe.as_ref().map(Moe::weights),
            })
            .collect()
    }

    /// Every block's routing biases (empty rows without MoE).
    pub fn expert_biases(&self) -> Vec<Vec<f32>> {
        let biases = self.blocks.iter().map(|b| b.moe.as_ref().map(Moe::biases));
        biases.map(Option::unwrap_or_default).collect()
    }

    /// The same model with every adapter merged into its weight (`W₀ + s·A·B`), all weights
    /// trainable again.
    pub fn merged(&self, cfg: &ModelConfig) -> Gpt {
        let device = self.embed.weight.device();
        let w = self.weights().detached();
        Gpt::from_weights(cfg, w, &device)
    }

    /// Logits from the last hidden states: the head, or the embedding transposed when tied.
    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let x = norm(&self.norm, x);
        match &self.head {
            Some(head) => dense(head, None, x),
            None => product(x, self.embed.weight.val().transpose()),
        }
    }

    /// Logits `[b, t, vocab]` for a batch of right-padded sequences (causal attention; padding
    /// at the end never influences earlier positions).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.trunk(tokens))
    }

    /// The final hidden states `[b, t, d]` (after the last norm): what the head multiplies.
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        norm(&self.norm, self.trunk(tokens))
    }

    /// Whether [`Gpt::hidden_after`] can run this model: blocks of plain attention and a dense
    /// MLP (MLA caches a latent, MoE's balance loss and MTP's depth read whole sequences).
    pub fn shares_prefixes(&self) -> bool {
        self.mtp.is_none()
            && self
                .blocks
                .iter()
                .all(|b| b.mla.is_none() && b.moe.is_none())
    }

    /// The final hidden states `[b, t, d]` (as [`Gpt::hidden`] gives them) of `tokens`, row
    /// `r` continuing prompt `prefix.rows[r]`: each row's values are those of the whole
    /// sequence (its prompt, then its tokens) at the tokens' positions, but each prompt runs
    /// once for all the rows that continue it, in the same products as the rows.
    pub fn hidden_after(&self, prefix: &Prefix, tokens: Tensor<2, Int>) -> Tensor<3> {
        let device = tokens.device();
        let [prompts, prompt_len] = prefix.tokens.dims();
        let [rows, len] = tokens.dims();
        let (d, hd, rope) = (self.shape.d_model, self.shape.head_dim, self.shape.rope);
        let index = prefix.rows.iter().map(|&r| r as i64).collect::<Vec<_>>();
        let shared = Shared {
            prompts,
            prompt_len,
            rows,
            len,
            rope_prompt: rope_tables(0, prompt_len, hd, rope, &device),
            rope_rows: rope_tables(prompt_len, len, hd, rope, &device),
            mask: self.cached_mask(rows, len, prompt_len, None, &device),
            index: Tensor::from_data(TensorData::new(index, [rows]), &device),
        };
        let p = prompts * prompt_len;
        let xp = self.embed.forward(prefix.tokens.clone()).reshape([1, p, d]);
        let xr = self.embed.forward(tokens).reshape([1, rows * len, d]);
        let mut x = Tensor::cat(vec![xp, xr], 1);
        for block in &self.blocks {
            x = block.forward_shared(x, &shared);
        }
        let x = x.slice([0..1, p..p + rows * len, 0..d]);
        norm(&self.norm, x.reshape([rows, len, d]))
    }

    /// The output head as a `[d, vocab]` weight, when it is one plain matrix (tied: the
    /// embedding transposed; a head with a LoRA adapter is not).
    pub fn head_matrix(&self) -> Option<Tensor<2>> {
        match &self.head {
            None => Some(self.embed.weight.val().transpose()),
            Some(h) if h.weight.adapter().is_none() && h.bias.is_none() => Some(h.weight.val()),
            Some(_) => None,
        }
    }

    /// The blocks' output for `tokens`, before the final norm. A training pass of a model with
    /// multi-token prediction leaves it and the tokens for [`Gpt::mtp_hidden`].
    fn trunk(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let kept = self.mtp.as_ref().map(|m| (m, tokens.clone()));
        let x = self.run_blocks(self.embed.forward(tokens), self.blocks.iter());
        if let Some((mtp, tokens)) = kept.filter(|(m, _)| m.trains()) {
            mtp.keep(x.clone(), tokens);
        }
        x
    }

    /// `x` through `blocks` over a whole sequence (fused ops on the CPU backend).
    fn run_blocks<'b>(
        &self,
        mut x: Tensor<3>,
        blocks: impl Iterator<Item = &'b Block>,
    ) -> Tensor<3> {
        let device = x.device();
        let [_, t, _] = x.dims();
        if fused::available(&device) {
            for block in blocks {
                x = block.forward_fused(x, self.shape.rope);
            }
        } else {
            let cs = rope_tables(0, t, self.shape.head_dim, self.shape.rope, &device);
            for block in blocks {
                x = block.forward(x, &cs, None, None);
            }
        }
        x
    }

    /// The multi-token-prediction depth over the last training pass (taken: once per pass):
    /// its final hidden states `[b, t - 1, d]`, normed as the head takes them (position `i`
    /// predicts token `i + 2`), and the loss weight. `None` without the depth, after no
    /// training pass, or for sequences of one token.
    pub fn mtp_hidden(&self) -> Option<(Tensor<3>, f64)> {
        let (mtp, block) = (self.mtp.as_ref()?, self.mtp_block.as_ref()?);
        let (h, tokens) = mtp.take()?;
        let [b, t, d] = h.dims();
        if t < 2 {
            return None;
        }
        let next = self.embed.forward(tokens.slice([0..b, 1..t]));
        let x = mtp.input(h.slice([0..b, 0..t - 1, 0..d]), next);
        let x = self.run_blocks(x, std::iter::once(block));
        Some((norm(&self.norm, x), mtp.weight()))
    }

    /// Logits from hidden states already normed (what [`Gpt::hidden`] gives).
    pub fn head_logits(&self, h: Tensor<3>) -> Tensor<3> {
        match &self.head {
            Some(head) => dense(head, None, h),
            None => product(h, self.embed.weight.val().transpose()),
        }
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
        self.forward_cached_hidden(tokens, cache, key_pad).0
    }

    /// [`Gpt::forward_cached`], and the blocks' output (before the final norm) at the new
    /// positions, `[b, t, d]`: what the multi-token-prediction depth reads.
    pub fn forward_cached_hidden(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
        key_pad: Option<&[Vec<bool>]>,
    ) -> (Tensor<3>, Tensor<3>) {
        let device = tokens.device();
        let [b, t] = tokens.dims();
        let start = cache.len;
        let mut x = self.embed.forward(tokens);
        let cs = rope_tables(start, t, self.shape.head_dim, self.shape.rope, &device);
        let mask = Some(self.cached_mask(b, t, start, key_pad, &device));
        let layers = cache.layers.iter_mut();
        for (block, slot) in self.blocks.iter().zip(layers) {
            x = block.forward(x, &cs, Some(slot), mask.clone());
        }
        cache.len = start + t;
        (self.logits(x.clone()), x)
    }

    /// `[b, heads, t, start + t]`, true where a key is hidden from a query: causal by absolute
    /// position, plus the keys `key_pad` marks as padding.
    fn cached_mask(
        &self,
        b: usize,
        t: usize,
        start: usize,
        key_pad: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Tensor<4, Bool> {
        let total = start + t;
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
        Tensor::<3, Bool>::from_data(TensorData::new(m, [b, t, total]), device)
            .unsqueeze_dim::<4>(1)
            .expand([b, self.shape.heads, t, total])
    }

    /// Whether the model has a multi-token-prediction depth.
    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    /// The multi-token-prediction depth's logits `[1, t, vocab]` (position `i`: the token after
    /// next) for `t` new positions of one sequence whose trunk outputs are `h` `[1, t, d]` and
    /// whose next tokens are `next`, extending `cache` (one layer: the depth's block). `None`
    /// without the depth.
    pub fn mtp_logits_cached(
        &self,
        h: Tensor<3>,
        next: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Option<Tensor<3>> {
        let (mtp, block) = (self.mtp.as_ref()?, self.mtp_block.as_ref()?);
        let device = h.device();
        let [b, t, _] = h.dims();
        let start = cache.len;
        let x = mtp.input(h, self.embed.forward(next));
        let cs = rope_tables(start, t, self.shape.head_dim, self.shape.rope, &device);
        let mask = Some(self.cached_mask(b, t, start, None, &device));
        let x = block.forward(x, &cs, Some(&mut cache.layers[0]), mask);
        cache.len = start + t;
        Some(self.logits(x))
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The weights as plain tensors (`[d_in, d_out]` matrices), for the CPU decoder: adapters
    /// merged, frozen blocks dequantised.
    pub fn weights(&self) -> Weights {
        self.weights_of(Block::value)
    }

    /// [`Gpt::weights`] with each frozen block matrix an empty placeholder (the decoder reads
    /// its blocks instead, see [`Gpt::frozen_layer`]).
    pub fn weights_without_blocks(&self) -> Weights {
        self.weights_of(|b, i| match b.layer(i) {
            (l, Some(_)) => l.weight.base(),
            _ => b.value(i),
        })
    }

    fn weights_of(&self, value: impl Fn(&Block, usize) -> Tensor<2>) -> Weights {
        let norm = |n: &RmsNorm| (n.gamma.val(), n.epsilon);
        Weights {
            shape: self.shape,
            embed: self.embed.weight.val(),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    attn_norm: norm(&b.attn_norm),
                    qkv: value(b, 0),
                    qkv_bias: b.qkv.bias.as_ref().map(|p| p.val()),
                    qk_norm: b
                        .q_norm
                        .as_ref()
                        .zip(b.k_norm.as_ref())
                        .map(|(q, k)| (norm(q), norm(k))),
                    out: value(b, 1),
                    mlp_norm: norm(&b.mlp_norm),
                    gate_up: value(b, 2),
                    down: value(b, 3),
                })
                .collect(),
            norm: norm(&self.norm),
            head: match &self.head {
                Some(h) => h.weight.val(),
                None => self.embed.weight.val().transpose(),
            },
        }
    }

    /// The model built from given weights (a pretrained checkpoint's), in [`Gpt::weights`]'
    /// layout; shapes are checked against `cfg` by the caller ([`super::pretrained`]).
    pub fn from_weights(cfg: &ModelConfig, w: Weights, device: &Device) -> Self {
        let mut model = Gpt::new(cfg, device);
        let set1 = |n: &mut RmsNorm, g: Tensor<1>| n.gamma = Param::from_tensor(g);
        let set2 = |l: &mut Linear, t: Tensor<2>| l.weight = Param::from_tensor(t);
        model.embed.weight = Param::from_tensor(w.embed);
        for (b, bw) in model.blocks.iter_mut().zip(w.blocks) {
            set1(&mut b.attn_norm, bw.attn_norm.0);
            set2(&mut b.qkv, bw.qkv);
            if let (Some(bias), Some(v)) = (&mut b.qkv.bias, bw.qkv_bias) {
                *bias = Param::from_tensor(v);
            }
            if let (Some(qn), Some(kn), Some((q, k))) = (&mut b.q_norm, &mut b.k_norm, bw.qk_norm) {
                set1(qn, q.0);
                set1(kn, k.0);
            }
            set2(&mut b.out, bw.out);
            set1(&mut b.mlp_norm, bw.mlp_norm.0);
            set2(&mut b.gate_up, bw.gate_up);
            set2(&mut b.down, bw.down);
        }
        set1(&mut model.norm, w.norm.0);
        if let Some(h) = &mut model.head {
            set2(h, w.head);
        }
        model.map(&mut StableIds(0))
    }
}

/// A block's DeepSeek weights ([`Gpt::deepseek_parts`]): MLA's latent norm and up-projection;
/// MoE's router, balancing biases and experts' `(gate_up, down)`.
pub struct DeepseekParts {
    pub mla: Option<(Tensor<1>, Tensor<2>)>,
    pub moe: Option<super::moe::Weights>,
}

/// A norm's gain and epsilon.
pub type NormWeights = (Tensor<1>, f64);

/// The weights of one block (see [`Gpt::weights`]).
pub struct BlockWeights {
    pub attn_norm: NormWeights,
    /// `[d, (heads + 2·kv_heads) · head_dim]`.
    pub qkv: Tensor<2>,
    pub qkv_bias: Option<Tensor<1>>,
    /// Query and key norms (Qwen3).
    pub qk_norm: Option<(NormWeights, NormWeights)>,
    /// `[heads · head_dim, d]`.
    pub out: Tensor<2>,
    pub mlp_norm: NormWeights,
    pub gate_up: Tensor<2>,
    pub down: Tensor<2>,
}

impl Weights {
    /// The same weights cut from any autodiff graph.
    pub fn detached(self) -> Weights {
        let n = |(g, e): NormWeights| (g.detach(), e);
        Weights {
            embed: self.embed.detach(),
            blocks: self
                .blocks
                .into_iter()
                .map(|b| BlockWeights {
                    attn_norm: n(b.attn_norm),
                    qkv: b.qkv.detach(),
                    qkv_bias: b.qkv_bias.map(|t| t.detach()),
                    qk_norm: b.qk_norm.map(|(q, k)| (n(q), n(k))),
                    out: b.out.detach(),
                    mlp_norm: n(b.mlp_norm),
                    gate_up: b.gate_up.detach(),
                    down: b.down.detach(),
                })
                .collect(),
            norm: n(self.norm),
            head: self.head.detach(),
            ..self
        }
    }
}

/// The weights of a whole model (see [`Gpt::weights`]).
pub struct Weights {
    pub shape: Shape,
    pub embed: Tensor<2>,
    pub blocks: Vec<BlockWeights>,
    pub norm: NormWeights,
    /// `[d, vocab]` (the embedding transposed when tied).
    pub head: Tensor<2>,
}
