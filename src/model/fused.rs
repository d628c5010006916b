//! Fused training ops for burn's CPU backend (`flex`): RMSNorm, SwiGLU with the MLP's output
//! projection, causal attention with RoPE, and the dense layers' products, each one op with a
//! hand-written forward and backward pass instead of the five to twenty small ops (and saved
//! intermediates) burn's autodiff graph builds for them; products go through
//! [`super::matmul`], which writes them into fresh memory instead of copying them.
//!
//! They are registered through burn's backend-extension mechanism ([`FusedOps`], implemented for
//! `Flex` and `Autodiff<Flex>`), so they take part in `loss.backward()` like any other op. The
//! model uses them only on the flex device ([`available`]); other backends keep the composite
//! ops, which `tests/model_fused.rs` checks give the same values and gradients.

use super::attention;
use super::matmul::{View, matmul};
use super::simd::{Uninit, avx2_dispatch, written};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows per parallel work item (each row is one position's vector).
const ROWS_PER_TASK: usize = 64;

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: burn::backend::Backend {
    /// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · gamma`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    /// SwiGLU then the MLP's output projection: `(silu(gate) · up) · w` for `gate_up`
    /// `[b, t, 2m]` (gate then up on the last axis) and `w` `[m, d]`. The `[b, t, m]` product
    /// is recomputed in the backward pass instead of saved.
    fn swiglu_down(gate_up: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Causal self-attention with RoPE (angles from `theta`) on a `[b, t, 3·d]` QKV projection
    /// (`[b, t, 3, heads, d / heads]`): the `[b, t, d]` result, see [`super::attention`].
    fn causal_attention(qkv: FloatTensor<Self>, heads: usize, theta: f64) -> FloatTensor<Self>;
    /// A dense layer without bias: `x · w` for `x` `[.., k]` and `w` `[k, n]`, as `[.., n]`.
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
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

/// [`FusedOps::causal_attention`] on tensors.
pub fn causal_attention(qkv: Tensor<3>, heads: usize, theta: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::causal_attention(
        qkv.into_dispatch(),
        heads,
        theta,
    ))
}

/// [`FusedOps::linear`] on tensors.
pub fn linear(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::linear(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// [`FusedOps::swiglu_down`] on tensors.
pub fn swiglu_down(gate_up: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::swiglu_down(
        gate_up.into_dispatch(),
        w.into_dispatch(),
    ))
}

// ---- plain-slice kernels -------------------------------------------------------------------

/// A contiguous f32 view of a flex tensor (copied only when it is strided).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

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

/// `exp(x)` to ~2 ulp for `x` in the float range, branch-free so that loops over it vectorise
/// (libm's `expf` is a call per element).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick (no SSE4.1 rounding instruction needed).
    let t = x * LOG2E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold n (two's complement); shifted into the exponent field they
    // give 2^n without a float-to-int conversion (n + 127 is within 1..=254 after the clamp).
    e * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn rms_rows(y: &mut [Uninit], rstd: &mut [f32], x: &[f32], gamma: &[f32], eps: f32) {
    let d = gamma.len();
    for ((y, r), x) in y.chunks_mut(d).zip(rstd.iter_mut()).zip(x.chunks(d)) {
        let ss: f32 = x.iter().map(|v| v * v).sum();
        *r = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((y, x), g) in y.iter_mut().zip(x).zip(gamma) {
            y.write(x * *r * g);
        }
    }
}

/// Adds this block's contribution to `dgamma`.
#[inline(always)]
fn rms_rows_backward(
    dx: &mut [Uninit],
    dgamma: &mut [f32],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
) {
    let d = gamma.len();
    for (((dx, dy), x), &r) in dx
        .chunks_mut(d)
        .zip(dy.chunks(d))
        .zip(x.chunks(d))
        .zip(rstd)
    {
        // dx = r·(dy·γ − x̂·mean(dy·γ·x̂)), x̂ = x·r.
        let mut dot = 0.0f32;
        for ((dy, x), g) in dy.iter().zip(x).zip(gamma) {
            dot += dy * g * x;
        }
        let c = dot * r * r / d as f32;
        for (((dx, dy), x), (g, dg)) in dx
            .iter_mut()
            .zip(dy)
            .zip(x)
            .zip(gamma.iter().zip(dgamma.iter_mut()))
        {
            dx.write(r * (dy * g - x * c));
            *dg += dy * x * r;
        }
    }
}

#[inline(always)]
fn swiglu_rows(h: &mut [Uninit], gu: &[f32], m: usize) {
    for (h, gu) in h.chunks_mut(m).zip(gu.chunks(2 * m)) {
        let (g, u) = gu.split_at(m);
        for ((h, g), u) in h.iter_mut().zip(g).zip(u) {
            h.write(g * sigmoid(*g) * u);
        }
    }
}

#[inline(always)]
fn swiglu_rows_backward(dgu: &mut [Uninit], gu: &[f32], dh: &[f32], m: usize) {
    for ((dgu, gu), dh) in dgu
        .chunks_mut(2 * m)
        .zip(gu.chunks(2 * m))
        .zip(dh.chunks(m))
    {
        let (g, u) = gu.split_at(m);
        let (dg, du) = dgu.split_at_mut(m);
        for ((((dg, du), g), u), dh) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dh) {
            let s = sigmoid(*g);
            let silu = g * s;
            du.write(dh * silu);
            dg.write(dh * u * (s + silu * (1.0 - s)));
        }
    }
}

avx2_dispatch!(
    /// RMSNorm of rows of `gamma.len()`, each row's `1 / rms` into `rstd`.
    pub(crate) fn rms_block(y: &mut [Uninit], rstd: &mut [f32], x: &[f32], gamma: &[f32], eps: f32) = rms_rows;);
avx2_dispatch!(
    fn rms_block_backward(
        dx: &mut [Uninit],
        dgamma: &mut [f32],
        dy: &[f32],
        x: &[f32],
        gamma: &[f32],
        rstd: &[f32],
    ) = rms_rows_backward;
);
avx2_dispatch!(
    /// `h = silu(gate) · up` over rows of `gu` = `[gate, up]` (`2m` wide).
    pub(crate) fn swiglu_block(h: &mut [Uninit], gu: &[f32], m: usize) = swiglu_rows;);
avx2_dispatch!(fn swiglu_block_backward(dgu: &mut [Uninit], gu: &[f32], dh: &[f32], m: usize) = swiglu_rows_backward;);

/// RMSNorm forward over rows of `d`: the output and each row's `1 / rms`.
fn rms_forward(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let rows = x.len() / d;
    let mut rstd = vec![0.0f32; rows];
    let y = written(x.len(), |y| {
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|((y, rstd), x)| rms_block(y, rstd, x, gamma, eps))
    });
    (y, rstd)
}

/// RMSNorm backward: `(dx, dgamma)` from the output gradient, input, gain and `1 / rms`.
fn rms_backward(dy: &[f32], x: &[f32], gamma: &[f32], rstd: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut dgamma = Vec::new();
    let dx = written(x.len(), |dx| {
        dgamma = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(dy.par_chunks(d * ROWS_PER_TASK))
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .zip(rstd.par_chunks(ROWS_PER_TASK))
            .map(|(((dx, dy), x), rstd)| {
                let mut dgamma = vec![0.0f32; d];
                rms_block_backward(dx, &mut dgamma, dy, x, gamma, rstd);
                dgamma
            })
            .reduce(
                || vec![0.0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            )
    });
    (dx, dgamma)
}

/// SwiGLU forward over rows of `2m` (gate then up).
fn swiglu_forward(gu: &[f32], m: usize) -> Vec<f32> {
    written(gu.len() / 2, |h| {
        h.par_chunks_mut(m * ROWS_PER_TASK)
            .zip(gu.par_chunks(2 * m * ROWS_PER_TASK))
            .for_each(|(h, gu)| swiglu_block(h, gu, m))
    })
}

/// SwiGLU backward: the gradient of the `[.., 2m]` input.
fn swiglu_backward(dh: &[f32], gu: &[f32], m: usize) -> Vec<f32> {
    written(gu.len(), |dgu| {
        dgu.par_chunks_mut(2 * m * ROWS_PER_TASK)
            .zip(gu.par_chunks(2 * m * ROWS_PER_TASK))
            .zip(dh.par_chunks(m * ROWS_PER_TASK))
            .for_each(|((dgu, gu), dh)| swiglu_block_backward(dgu, gu, dh, m))
    })
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
fn attention_flex(qkv: &FlexTensor, heads: usize, theta: f64) -> (FlexTensor, Vec<f32>) {
    let s = attention_shape(qkv, heads);
    let (out, lse) = attention::forward(slice(qkv), &s, theta);
    (tensor(out, vec![s.batch, s.len, s.heads * s.head_dim]), lse)
}

/// `x` (`[.., k]`, contiguous) as a `[rows, k]` matrix view.
fn rows_of(x: &FlexTensor) -> View<'_> {
    let shape = dims(x);
    let k = shape[shape.len() - 1];
    View::new(slice(x), shape.iter().product::<usize>() / k, k)
}

/// A `[k, n]` weight (contiguous) as a matrix view.
fn weight(w: &FlexTensor) -> View<'_> {
    let [k, n] = dims(w)[..] else {
        panic!("weight must be a matrix")
    };
    View::new(slice(w), k, n)
}

/// `x · w` as `[.., n]`, for contiguous `x` `[.., k]` and `w` `[k, n]`.
fn linear_flex(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let mut shape = dims(x);
    let w = weight(w);
    *shape.last_mut().expect("linear: scalar input") = w.cols;
    tensor(matmul(rows_of(x), w), shape)
}

/// SwiGLU then the product with `w`, as `[b, t, d]`.
fn swiglu_down_flex(gu: FlexTensor, w: FlexTensor) -> FlexTensor {
    linear_flex(&swiglu_flex(gu), &contiguous(w))
}

impl FusedOps for Flex {
    fn linear(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        linear_flex(&contiguous(x), &contiguous(w))
    }

    fn swiglu_down(gate_up: FlexTensor, w: FlexTensor) -> FlexTensor {
        swiglu_down_flex(gate_up, w)
    }

    fn causal_attention(qkv: FlexTensor, heads: usize, theta: f64) -> FlexTensor {
        attention_flex(&contiguous(qkv), heads, theta).0
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
    /// Input, output, log-sum-exps, heads and RoPE theta.
    type State = (FlexTensor, FlexTensor, Vec<f32>, usize, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let (qkv, out, lse, heads, theta) = ops.state;
        if let Some(node) = node {
            let s = attention_shape(&qkv, heads);
            let dqkv = attention::backward(slice(&qkv), slice(&out), &lse, slice(&dout), &s, theta);
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
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// The `[.., k]` input and the `[k, n]` weight, both contiguous.
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

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (
                    contiguous(x.into_primitive()),
                    contiguous(w.into_primitive()),
                );
                let y = linear_flex(&x, &w);
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as FusedOps>::linear(
                x.into_primitive(),
                w.into_primitive(),
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

    fn causal_attention(qkv: FloatTensor<Self>, heads: usize, theta: f64) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = contiguous(qkv.into_primitive());
                let (out, lse) = attention_flex(&qkv, heads, theta);
                prep.finish((qkv, out.clone(), lse, heads, theta), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(attention_flex(&contiguous(qkv.into_primitive()), heads, theta).0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm_over_the_float_range() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0).is_finite());
    }
}
