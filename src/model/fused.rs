//! Fused training ops for burn's CPU backend (`flex`): RMSNorm, SwiGLU with the MLP's output
//! projection, causal attention with RoPE, the dense layers' products, and the targets'
//! log-probabilities over the vocabulary, each one op with a
//! hand-written forward and backward pass instead of the five to twenty small ops (and saved
//! intermediates) burn's autodiff graph builds for them. This file is only the burn glue: the
//! kernels are [`crate::cpu`]'s (`rows`, `attention`, `gemm`), on plain slices.
//!
//! They are registered through burn's backend-extension mechanism ([`FusedOps`], implemented for
//! `Flex` and `Autodiff<Flex>`), so they take part in `loss.backward()` like any other op. The
//! model uses them only on the flex device ([`available`]); other backends keep the composite
//! ops, which `tests/it/model_fused.rs` checks give the same values and gradients.

use super::flex::contiguous;
use super::frozen::Frozen;
use crate::cpu::attention;
use crate::cpu::gemm::{View, matmul, matmul_add};
use crate::cpu::head::{Bf16Head, Weight as HeadWeight};
use crate::cpu::math::RopeSpec;
use crate::cpu::rows::{
    rms_backward, rms_forward, swiglu_backward, swiglu_forward, target_logprob_backward,
    target_logprob_forward,
};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::{Device, Tensor, TensorData};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: burn::backend::Backend {
    /// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · gamma`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    /// SwiGLU then the MLP's output projection: `(silu(gate) · up) · w` for `gate_up`
    /// `[b, t, 2m]` (gate then up on the last axis) and `w` `[m, d]`. The `[b, t, m]` product
    /// is recomputed in the backward pass instead of saved.
    fn swiglu_down(gate_up: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// SwiGLU alone, `silu(gate) · up` as `[b, t, m]` (for a LoRA-adapted output projection,
    /// which then runs as its own product).
    fn swiglu(gate_up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Causal self-attention with RoPE (angles from `rope`) on a `[b, t, 3·d]` QKV projection
    /// (`[b, t, 3, heads, d / heads]`): the `[b, t, d]` result, see [`crate::cpu::attention`].
    fn causal_attention(qkv: FloatTensor<Self>, heads: usize, rope: RopeSpec) -> FloatTensor<Self>;
    /// A dense layer without bias: `x · w` for `x` `[.., k]` and `w` `[k, n]`, as `[.., n]`.
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`FusedOps::linear`] with a frozen weight of quantised blocks (QLoRA's base): `[.., n]`
    /// from `x` `[.., k]`; the gradient flows to `x` only.
    fn frozen_linear(x: FloatTensor<Self>, w: Frozen) -> FloatTensor<Self>;
    /// A LoRA-adapted frozen layer in one op: `x · W + (x · s·A) · B` for `x` `[.., k]`, the
    /// frozen `W` (`[k, n]` as blocks), `a` `[k, r]` and `b` `[r, n]`; gradients flow to `x`,
    /// `a` and `b`. The low-rank product is added into the base product's output, and the
    /// input gradient's two parts into one buffer, instead of as separate ops' tensors.
    fn frozen_lora(
        x: FloatTensor<Self>,
        w: Frozen,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
    /// The log-probability of each target under `softmax(scale · logits)` over the last axis:
    /// `[b, t]` from logits `[b, t, v]` and target ids `[b, t]` (as floats), without the
    /// `[b, t, v]` log-softmax tensor.
    fn target_logprobs(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
    /// The targets' log-probabilities through the output head, the logits never whole (see
    /// [`crate::cpu::head`]): `[b, t, 2]` from the final hidden states `h` `[b, t, d]`, the
    /// head `w` `[d, v]` and target ids `[b, t]` (as floats). Channel 0 is
    /// `log softmax(scale · h·w)[target]`, channel 1 that distribution's entropy (both carry
    /// gradients: the entropy's for an entropy bonus).
    fn head_logprobs(
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the fused ops off (or back on) for the whole process, e.g. to measure what they buy
/// (`stageloop bench --composite`) or to compare against the composite ops in tests.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused ops run on `device`: burn's flex CPU backend, with or without autodiff,
/// unless turned off with [`set_enabled`].
pub fn available(device: &Device) -> bool {
    ENABLED.load(Ordering::Relaxed)
        && (*device == Device::flex() || *device == Device::flex().autodiff())
}

/// [`FusedOps::rms_norm`] on tensors.
pub fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::rms_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        eps as f32,
    ))
}

/// [`FusedOps::swiglu`] on tensors.
pub fn swiglu(gate_up: Tensor<3>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::swiglu(gate_up.into_dispatch()))
}

/// [`FusedOps::causal_attention`] on tensors.
pub fn causal_attention(qkv: Tensor<3>, heads: usize, rope: RopeSpec) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::causal_attention(
        qkv.into_dispatch(),
        heads,
        rope,
    ))
}

/// [`FusedOps::linear`] on tensors.
pub fn linear(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::linear(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// [`FusedOps::frozen_linear`] on tensors.
pub fn frozen_linear(x: Tensor<3>, w: &Frozen) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::frozen_linear(
        x.into_dispatch(),
        w.clone(),
    ))
}

/// [`FusedOps::frozen_lora`] on tensors.
pub fn frozen_lora(x: Tensor<3>, w: &Frozen, a: Tensor<2>, b: Tensor<2>, scale: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::frozen_lora(
        x.into_dispatch(),
        w.clone(),
        a.into_dispatch(),
        b.into_dispatch(),
        scale as f32,
    ))
}

/// [`FusedOps::target_logprobs`] on tensors.
pub fn target_logprobs(logits: Tensor<3>, targets: Tensor<2>, scale: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::target_logprobs(
        logits.into_dispatch(),
        targets.into_dispatch(),
        scale as f32,
    ))
}

/// [`FusedOps::head_logprobs`] on tensors: the targets' log-probabilities `[b, t]` and the
/// entropies `[b, t]` (which carry a gradient; detach them for statistics).
pub fn head_logprobs(
    h: Tensor<3>,
    w: Tensor<2>,
    targets: Tensor<2>,
    scale: f64,
) -> (Tensor<2>, Tensor<2>) {
    let out: Tensor<3> = Tensor::from_dispatch(<Dispatch as FusedOps>::head_logprobs(
        h.into_dispatch(),
        w.into_dispatch(),
        targets.into_dispatch(),
        scale as f32,
    ));
    let [b, t, _] = out.dims();
    let logp = out.clone().slice([0..b, 0..t, 0..1]).reshape([b, t]);
    let entropy = out.slice([0..b, 0..t, 1..2]).reshape([b, t]);
    (logp, entropy)
}

/// [`FusedOps::swiglu_down`] on tensors.
pub fn swiglu_down(gate_up: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::swiglu_down(
        gate_up.into_dispatch(),
        w.into_dispatch(),
    ))
}

// ---- flex tensors as slices ------------------------------------------------------------------

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused op: f32 contiguous tensor")
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

fn tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

// ---- flex: forward only --------------------------------------------------------------------

fn rms_norm_flex(x: FlexTensor, gamma: FlexTensor, eps: f32) -> (FlexTensor, Vec<f32>) {
    let (x, gamma) = (contiguous(x), contiguous(gamma));
    let (y, rstd) = rms_forward(slice(&x), slice(&gamma), eps);
    (tensor(y, dims(&x)), rstd)
}

fn swiglu_flex(gu: FlexTensor) -> FlexTensor {
    let gu = contiguous(gu);
    let mut shape = dims(&gu);
    let m = shape[shape.len() - 1] / 2;
    *shape.last_mut().expect("swiglu: scalar input") = m;
    tensor(swiglu_forward(slice(&gu), m), shape)
}

/// The attention shape of a `[b, t, 3·d]` QKV tensor.
fn attention_shape(qkv: &FlexTensor, heads: usize) -> attention::Shape {
    let [batch, len, d3] = dims(qkv)[..] else {
        panic!("causal_attention: qkv must be [b, t, 3·d]")
    };
    attention::Shape {
        batch,
        len,
        heads,
        head_dim: d3 / 3 / heads,
    }
}

/// Attention forward: the output and the log-sum-exps.
fn attention_flex(qkv: &FlexTensor, heads: usize, rope: RopeSpec) -> (FlexTensor, Vec<f32>) {
    let s = attention_shape(qkv, heads);
    let (out, lse) = attention::forward(slice(qkv), &s, rope);
    (tensor(out, vec![s.batch, s.len, s.heads * s.head_dim]), lse)
}

/// `x` (`[.., k]`, contiguous) as a `[rows, k]` matrix view.
fn rows_of(x: &FlexTensor) -> View<'_> {
    let shape = dims(x);
    let k = shape[shape.len() - 1];
    View::new(slice(x), shape.iter().product::<usize>() / k, k)
}

/// A `[k, n]` weight as it is laid out when that is a plain strided `f32` matrix (a
/// transposed view: the tied head's `embedᵀ`), a contiguous copy otherwise.
fn matrix(w: FlexTensor) -> FlexTensor {
    let plain = w.as_slice::<f32>().is_some()
        || (w.dtype() == burn::tensor::DType::F32
            && w.layout().as_2d_strides().is_some()
            && w.layout().has_positive_strides());
    if plain { w } else { w.to_contiguous() }
}

thread_local! {
    /// bf16 panels of the head weight this thread's bf16 products read last, and that weight.
    /// Holding the tensor keeps its memory from becoming another tensor's, and flex writes in
    /// place only into a tensor nothing else holds: the same address and layout is the same
    /// values. A frozen head (LoRA) is packed once per stage; a trained one once per step.
    static HEAD_PANELS: RefCell<Option<(FlexTensor, Rc<Bf16Head>)>> = const { RefCell::new(None) };
}

/// The head weight `w`'s bf16 panels when this thread's products are bf16 (from
/// [`HEAD_PANELS`], packed and kept when `w` is not the weight kept there).
fn head_panels(w: &FlexTensor) -> Option<Rc<Bf16Head>> {
    if !crate::cpu::gemm::bf16_on() {
        return None;
    }
    let key = |t: &FlexTensor| {
        let data = t.storage::<f32>().as_ptr();
        (data, t.layout().start_offset(), t.layout().as_2d_strides())
    };
    HEAD_PANELS.with(|cell| {
        let mut kept = cell.borrow_mut();
        if let Some((t, p)) = kept.as_ref()
            && key(t) == key(w)
        {
            return Some(Rc::clone(p));
        }
        // Drop the old panels before packing the new ones.
        *kept = None;
        let p = Rc::new(Bf16Head::new(weight(w)));
        *kept = Some((w.clone(), Rc::clone(&p)));
        Some(p)
    })
}

/// The head weight as [`crate::cpu::head`] reads it: its bf16 panels, or the matrix view.
fn head_weight<'a>(w: &'a FlexTensor, packed: &'a Option<Rc<Bf16Head>>) -> HeadWeight<'a> {
    match packed {
        Some(p) => HeadWeight::Panels(p),
        None => HeadWeight::View(weight(w)),
    }
}

/// A `[k, n]` weight (see [`matrix`]) as a matrix view.
fn weight(w: &FlexTensor) -> View<'_> {
    let Some((k, n, rs, cs)) = w.layout().as_2d_strides() else {
        panic!("weight must be a matrix")
    };
    View {
        data: &w.storage::<f32>()[w.layout().start_offset()..],
        rows: k,
        cols: n,
        row_stride: rs.unsigned_abs(),
        col_stride: cs.unsigned_abs(),
    }
}

/// `x · w` as `[.., n]`, for contiguous `x` `[.., k]` and `w` `[k, n]`.
fn linear_flex(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let mut shape = dims(x);
    let w = weight(w);
    *shape.last_mut().expect("linear: scalar input") = w.cols;
    tensor(matmul(rows_of(x), w), shape)
}

/// `x · w` as `[.., n]` for contiguous `x` `[.., k]` and a frozen `w`.
fn frozen_linear_flex(x: &FlexTensor, w: &Frozen) -> FlexTensor {
    let mut shape = dims(x);
    let rows = rows_of(x);
    *shape.last_mut().expect("frozen_linear: scalar input") = w.0.cols();
    tensor(w.0.forward_rows(rows.data, rows.rows), shape)
}

/// [`FusedOps::frozen_lora`]'s result, and `s · x · A` `[m, r]` (its backward pass's input).
fn frozen_lora_flex(
    x: &FlexTensor,
    w: &Frozen,
    a: &FlexTensor,
    b: &FlexTensor,
    scale: f32,
) -> (FlexTensor, Vec<f32>) {
    let mut shape = dims(x);
    let rows = rows_of(x);
    let mut xa = matmul(rows, weight(a));
    xa.iter_mut().for_each(|v| *v *= scale);
    let mut y = w.0.forward_rows(rows.data, rows.rows);
    matmul_add(&mut y, View::new(&xa, rows.rows, weight(a).cols), weight(b));
    *shape.last_mut().expect("frozen_lora: scalar input") = w.0.cols();
    (tensor(y, shape), xa)
}

/// SwiGLU then the product with `w`, as `[b, t, d]`.
fn swiglu_down_flex(gu: FlexTensor, w: FlexTensor) -> FlexTensor {
    linear_flex(&swiglu_flex(gu), &contiguous(w))
}

/// Target ids from a float tensor of them.
fn ids(t: FlexTensor) -> Vec<u32> {
    slice(&contiguous(t)).iter().map(|&v| v as u32).collect()
}

/// [`FusedOps::target_logprobs`]' result and each row's log-sum-exp.
fn target_logprobs_flex(
    logits: &FlexTensor,
    targets: &[u32],
    scale: f32,
) -> (FlexTensor, Vec<f32>) {
    let shape = dims(logits);
    let v = shape[shape.len() - 1];
    let (out, lse) = target_logprob_forward(slice(logits), targets, v, scale);
    (tensor(out, shape[..shape.len() - 1].to_vec()), lse)
}

/// [`FusedOps::head_logprobs`]' result and each row's log-sum-exp.
fn head_logprobs_flex(
    h: &FlexTensor,
    w: &FlexTensor,
    targets: &[u32],
    scale: f32,
) -> (FlexTensor, Vec<f32>) {
    let mut shape = dims(h);
    let packed = head_panels(w);
    let out = crate::cpu::head::forward(rows_of(h), head_weight(w, &packed), targets, scale);
    let both: Vec<f32> = out
        .logp
        .iter()
        .zip(&out.entropy)
        .flat_map(|(&l, &e)| [l, e])
        .collect();
    *shape.last_mut().expect("head_logprobs: scalar input") = 2;
    (tensor(both, shape), out.lse)
}

impl FusedOps for Flex {
    fn head_logprobs(h: FlexTensor, w: FlexTensor, targets: FlexTensor, scale: f32) -> FlexTensor {
        head_logprobs_flex(&contiguous(h), &matrix(w), &ids(targets), scale).0
    }

    fn target_logprobs(logits: FlexTensor, targets: FlexTensor, scale: f32) -> FlexTensor {
        target_logprobs_flex(&contiguous(logits), &ids(targets), scale).0
    }

    fn linear(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        linear_flex(&contiguous(x), &matrix(w))
    }

    fn frozen_linear(x: FlexTensor, w: Frozen) -> FlexTensor {
        frozen_linear_flex(&contiguous(x), &w)
    }

    fn frozen_lora(
        x: FlexTensor,
        w: Frozen,
        a: FlexTensor,
        b: FlexTensor,
        scale: f32,
    ) -> FlexTensor {
        frozen_lora_flex(&contiguous(x), &w, &matrix(a), &matrix(b), scale).0
    }

    fn swiglu_down(gate_up: FlexTensor, w: FlexTensor) -> FlexTensor {
        swiglu_down_flex(gate_up, w)
    }

    fn swiglu(gate_up: FlexTensor) -> FlexTensor {
        swiglu_flex(contiguous(gate_up))
    }

    fn causal_attention(qkv: FlexTensor, heads: usize, rope: RopeSpec) -> FlexTensor {
        attention_flex(&contiguous(qkv), heads, rope).0
    }

    fn rms_norm(x: FlexTensor, gamma: FlexTensor, eps: f32) -> FlexTensor {
        rms_norm_flex(x, gamma, eps).0
    }
}

// ---- autodiff: forward with saved state, and the backward steps ------------------------------

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// Input, gain, and each row's `1 / rms`.
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, gamma, rstd) = ops.state;
        let (dx, dgamma) = rms_backward(slice(&dy), slice(&x), slice(&gamma), &rstd);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, dims(&x)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, dims(&gamma)));
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    /// Input, output, log-sum-exps, heads and RoPE.
    type State = (FlexTensor, FlexTensor, Vec<f32>, usize, RopeSpec);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let (qkv, out, lse, heads, rope) = ops.state;
        if let Some(node) = node {
            let s = attention_shape(&qkv, heads);
            let dqkv = attention::backward(slice(&qkv), slice(&out), &lse, slice(&dout), &s, rope);
            grads.register::<Flex>(node.id, tensor(dqkv, dims(&qkv)));
        }
    }
}

#[derive(Debug)]
struct SwigluDownBackward;

impl Backward<Flex, 2> for SwigluDownBackward {
    /// The `[.., 2m]` input and the `[m, d]` weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gu, node_w] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (gu, w) = ops.state;
        let dy = rows_of(&dy);
        if let Some(node) = node_w {
            let h = swiglu_flex(gu.clone());
            let dw = matmul(rows_of(&h).t(), dy);
            grads.register::<Flex>(node.id, tensor(dw, dims(&w)));
        }
        if let Some(node) = node_gu {
            let dh = matmul(dy, weight(&w).t());
            let shape = dims(&gu);
            let m = shape[shape.len() - 1] / 2;
            let dgu = swiglu_backward(&dh, slice(&gu), m);
            grads.register::<Flex>(node.id, tensor(dgu, shape));
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 1> for SwigluBackward {
    /// The `[.., 2m]` input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dh = contiguous(grads.consume::<Flex>(&ops.node));
        let gu = ops.state;
        if let Some(node) = node {
            let shape = dims(&gu);
            let m = shape[shape.len() - 1] / 2;
            let dgu = swiglu_backward(slice(&dh), slice(&gu), m);
            grads.register::<Flex>(node.id, tensor(dgu, shape));
        }
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// The contiguous `[.., k]` input and the `[k, n]` weight (see [`matrix`]).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w) = ops.state;
        let dy = rows_of(&dy);
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, tensor(matmul(rows_of(&x).t(), dy), dims(&w)));
        }
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(matmul(dy, weight(&w).t()), dims(&x)));
        }
    }
}

#[derive(Debug)]
struct FrozenLinearBackward;

impl Backward<Flex, 1> for FrozenLinearBackward {
    /// The frozen weight and the input's shape.
    type State = (Frozen, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (w, shape) = ops.state;
        if let Some(node) = node {
            let dy = rows_of(&dy);
            grads.register::<Flex>(node.id, tensor(w.0.backward_rows(dy.data, dy.rows), shape));
        }
    }
}

#[derive(Debug)]
struct FrozenLoraBackward;

impl Backward<Flex, 3> for FrozenLoraBackward {
    /// The contiguous input, the frozen weight, `a`, `b`, `s · x · A` and `s`.
    type State = (FlexTensor, Frozen, FlexTensor, FlexTensor, Vec<f32>, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_a, node_b] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w, a, b, xa, scale) = ops.state;
        let dy = rows_of(&dy);
        let (m, r) = (dy.rows, weight(&a).cols);
        if let Some(node) = node_b {
            let db = matmul(View::new(&xa, m, r).t(), dy);
            grads.register::<Flex>(node.id, tensor(db, dims(&b)));
        }
        // The gradient of `x · A`'s output: `s · dy · Bᵀ`.
        let mut g = matmul(dy, weight(&b).t());
        g.iter_mut().for_each(|v| *v *= scale);
        let g = View::new(&g, m, r);
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, tensor(matmul(rows_of(&x).t(), g), dims(&a)));
        }
        if let Some(node) = node_x {
            let mut dx = w.0.backward_rows(dy.data, m);
            matmul_add(&mut dx, g, weight(&a).t());
            grads.register::<Flex>(node.id, tensor(dx, dims(&x)));
        }
    }
}

#[derive(Debug)]
struct TargetLogprobsBackward;

impl Backward<Flex, 1> for TargetLogprobsBackward {
    /// Logits, target ids, log-sum-exps and the scale.
    type State = (FlexTensor, Vec<u32>, Vec<f32>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (logits, targets, lse, scale) = ops.state;
        if let Some(node) = node {
            let shape = dims(&logits);
            let v = shape[shape.len() - 1];
            let dx = target_logprob_backward(slice(&dy), slice(&logits), &targets, &lse, v, scale);
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

#[derive(Debug)]
struct HeadLogprobsBackward;

impl Backward<Flex, 2> for HeadLogprobsBackward {
    /// Hidden states, the head, target ids, log-sum-exps and the scale.
    type State = (FlexTensor, FlexTensor, Vec<u32>, Vec<f32>, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_h, node_w] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (h, w, targets, lse, scale) = ops.state;
        // Channel 0 the log-probabilities', channel 1 the entropies' (an entropy bonus).
        let dy_logp: Vec<f32> = slice(&dy).iter().step_by(2).copied().collect();
        let dy_ent: Vec<f32> = slice(&dy).iter().skip(1).step_by(2).copied().collect();
        let packed = head_panels(&w);
        let (dh, dw) = crate::cpu::head::backward(
            &dy_logp,
            Some(&dy_ent),
            rows_of(&h),
            head_weight(&w, &packed),
            &targets,
            &lse,
            scale,
            node_w.is_some(),
        );
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, tensor(dw, dims(&w)));
        }
        if let Some(node) = node_h {
            grads.register::<Flex>(node.id, tensor(dh, dims(&h)));
        }
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn head_logprobs(
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let targets = ids(targets.into_primitive());
        match HeadLogprobsBackward
            .prepare::<C>([h.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (h, w) = (contiguous(h.into_primitive()), matrix(w.into_primitive()));
                let (out, lse) = head_logprobs_flex(&h, &w, &targets, scale);
                prep.finish((h, w, targets, lse, scale), out)
            }
            OpsKind::UnTracked(prep) => {
                let (h, w) = (contiguous(h.into_primitive()), matrix(w.into_primitive()));
                prep.finish(head_logprobs_flex(&h, &w, &targets, scale).0)
            }
        }
    }

    fn target_logprobs(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let targets = ids(targets.into_primitive());
        match TargetLogprobsBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(logits.into_primitive());
                let (out, lse) = target_logprobs_flex(&x, &targets, scale);
                prep.finish((x, targets, lse, scale), out)
            }
            OpsKind::UnTracked(prep) => {
                let x = contiguous(logits.into_primitive());
                prep.finish(target_logprobs_flex(&x, &targets, scale).0)
            }
        }
    }

    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (contiguous(x.into_primitive()), matrix(w.into_primitive()));
                let y = linear_flex(&x, &w);
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as FusedOps>::linear(
                x.into_primitive(),
                w.into_primitive(),
            )),
        }
    }

    fn frozen_linear(x: FloatTensor<Self>, w: Frozen) -> FloatTensor<Self> {
        match FrozenLinearBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x.into_primitive());
                let y = frozen_linear_flex(&x, &w);
                prep.finish((w, dims(&x)), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(frozen_linear_flex(&contiguous(x.into_primitive()), &w))
            }
        }
    }

    fn frozen_lora(
        x: FloatTensor<Self>,
        w: Frozen,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        match FrozenLoraBackward
            .prepare::<C>([x.node(), a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x.into_primitive());
                let (a, b) = (matrix(a.into_primitive()), matrix(b.into_primitive()));
                let (y, xa) = frozen_lora_flex(&x, &w, &a, &b, scale);
                prep.finish((x, w, a, b, xa, scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as FusedOps>::frozen_lora(
                x.into_primitive(),
                w,
                a.into_primitive(),
                b.into_primitive(),
                scale,
            )),
        }
    }

    fn swiglu_down(gate_up: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluDownBackward
            .prepare::<C>([gate_up.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (gu, w) = (
                    contiguous(gate_up.into_primitive()),
                    contiguous(w.into_primitive()),
                );
                let y = swiglu_down_flex(gu.clone(), w.clone());
                prep.finish((gu, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(swiglu_down_flex(
                gate_up.into_primitive(),
                w.into_primitive(),
            )),
        }
    }

    fn swiglu(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward
            .prepare::<C>([gate_up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let gu = contiguous(gate_up.into_primitive());
                let h = swiglu_flex(gu.clone());
                prep.finish(gu, h)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(swiglu_flex(contiguous(gate_up.into_primitive())))
            }
        }
    }

    fn causal_attention(qkv: FloatTensor<Self>, heads: usize, rope: RopeSpec) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = contiguous(qkv.into_primitive());
                let (out, lse) = attention_flex(&qkv, heads, rope);
                prep.finish((qkv, out.clone(), lse, heads, rope), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(attention_flex(&contiguous(qkv.into_primitive()), heads, rope).0)
            }
        }
    }

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        match RmsNormBackward
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xs, gs) = (
                    contiguous(x.into_primitive()),
                    contiguous(gamma.into_primitive()),
                );
                let (y, rstd) = rms_norm_flex(xs.clone(), gs.clone(), eps);
                prep.finish((xs, gs, rstd), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(rms_norm_flex(x.into_primitive(), gamma.into_primitive(), eps).0)
            }
        }
    }
}
