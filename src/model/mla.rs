//! DeepSeek-V2's Multi-head Latent Attention, from a block's query-key-value projection.
//!
//! The block's `qkv` product gives, per token, `heads` queries of `head_dim + rope_dim`, a
//! latent `c` (`kv_rank` wide) and one rotary key `k_r` (`rope_dim`) shared by every head. The
//! latent is RMS-normed and projected up into each head's key (`head_dim`, no position) and
//! value; a head's key is that key with `k_r` appended, so a score is
//! `q_nope·k_nope + q_rope·k_r` (decoupled RoPE), scaled by `1/√(head_dim + rope_dim)`. The
//! cache keeps only `c` and the rotated `k_r`: `kv_rank + rope_dim` floats a token and layer.
//! Keys and values are made again from the cached latents at each step (no weight absorption:
//! at this scale the products are small). Composite burn ops, on any backend.

use super::config::MlaSpec;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor, TensorData};

/// The latent's norm and up-projection of one block.
#[derive(Module, Debug)]
pub struct Mla {
    kv_norm: RmsNorm,
    /// `[kv_rank, heads · 2 · head_dim]`: per head its key, then per head its value.
    up: Linear,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    head_dim: usize,
    #[module(skip)]
    rope_dim: usize,
    #[module(skip)]
    kv_rank: usize,
    #[module(skip)]
    rope: crate::cpu::math::RopeSpec,
}

/// A layer's cached latents `[b, 1, t, kv_rank]` and rotated shared keys `[b, 1, t, rope_dim]`.
pub type Cached = (Tensor<4>, Tensor<4>);

impl Mla {
    pub fn new(
        heads: usize,
        head_dim: usize,
        spec: &MlaSpec,
        eps: f64,
        rope: crate::cpu::math::RopeSpec,
        device: &Device,
    ) -> Mla {
        let (c, r) = (spec.kv_rank(head_dim), spec.rope_dim(head_dim));
        Mla {
            kv_norm: RmsNormConfig::new(c).with_epsilon(eps).init(device),
            up: LinearConfig::new(c, 2 * heads * head_dim)
                .with_bias(false)
                .init(device),
            heads,
            head_dim,
            rope_dim: r,
            kv_rank: c,
            rope,
        }
    }

    /// The latent's norm gain `[kv_rank]` and the up-projection `[kv_rank, heads · 2 ·
    /// head_dim]` (per head its key, then per head its value).
    pub fn weights(&self) -> (Tensor<1>, Tensor<2>) {
        (self.kv_norm.gamma.val(), self.up.weight.val())
    }

    /// Attention output `[b, t, heads · head_dim]` from the projection `qkv` `[b, t, width]` of
    /// `t` new tokens. With a cache their latents are appended to the earlier ones and `mask`
    /// (`[b, heads, t, total]`, true = hidden) says what each query sees; without one,
    /// attention is causal over the `t` tokens.
    pub fn attend(
        &self,
        qkv: Tensor<3>,
        cache: Option<&mut Option<Cached>>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, _] = qkv.dims();
        let (h, hd, r, c) = (self.heads, self.head_dim, self.rope_dim, self.kv_rank);
        let device = qkv.device();
        let qw = h * (hd + r);
        let q = qkv
            .clone()
            .slice([0..b, 0..t, 0..qw])
            .reshape([b, t, h, hd + r]);
        let q = q.swap_dims(1, 2); // [b, h, t, hd + r]
        let latent = qkv.clone().slice([0..b, 0..t, qw..qw + c]);
        let latent = self.kv_norm.forward(latent).unsqueeze_dim::<4>(1); // [b, 1, t, c]
        let k_r = qkv
            .slice([0..b, 0..t, qw + c..qw + c + r])
            .unsqueeze_dim::<4>(1);
        let start = match &cache {
            Some(Some((prev, _))) => prev.dims()[2],
            _ => 0,
        };
        let (cos, sin) = super::rope::rope_tables(start, t, r, self.rope, &device);
        let k_r = super::rope::rotate_pairs(k_r, &cos, &sin);
        let q_nope = q.clone().slice([0..b, 0..h, 0..t, 0..hd]);
        let q_rope = q.slice([0..b, 0..h, 0..t, hd..hd + r]);
        let q = Tensor::cat(
            vec![q_nope, super::rope::rotate_pairs(q_rope, &cos, &sin)],
            3,
        );
        let (latent, k_r) = match cache {
            Some(slot) => {
                let (latent, k_r) = match slot.take() {
                    Some((pl, pk)) => (
                        Tensor::cat(vec![pl, latent], 2),
                        Tensor::cat(vec![pk, k_r], 2),
                    ),
                    None => (latent, k_r),
                };
                *slot = Some((latent.clone(), k_r.clone()));
                (latent, k_r)
            }
            None => (latent, k_r),
        };
        let total = latent.dims()[2];
        // Keys and values of every position, up from the latents.
        let kv = self
            .up
            .forward(latent.squeeze_dim::<3>(1))
            .reshape([b, total, 2, h, hd]);
        let k_nope = kv
            .clone()
            .slice([0..b, 0..total, 0..1, 0..h, 0..hd])
            .reshape([b, total, h, hd])
            .swap_dims(1, 2);
        let v = kv
            .slice([0..b, 0..total, 1..2, 0..h, 0..hd])
            .reshape([b, total, h, hd])
            .swap_dims(1, 2);
        let k = Tensor::cat(vec![k_nope, k_r.expand([b, h, total, r])], 3);
        let scale = 1.0 / ((hd + r) as f64).sqrt();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [b, h, t, total]
        let hidden = match mask {
            Some(m) => m,
            None => causal(t, total, &device).expand([b, h, t, total]),
        };
        // A large finite value, not -inf: a left-padded row's padding queries see only hidden
        // keys, and an all -inf row would give NaN weights, which the value product would carry
        // into every real position (0 · NaN).
        let weights = softmax(scores.mask_fill(hidden, -1e30), 3);
        weights.matmul(v).swap_dims(1, 2).reshape([b, t, h * hd])
    }
}

/// `[1, 1, t, total]`: true where key position `k` lies after query `q`'s position
/// (`total - t + q`).
fn causal(t: usize, total: usize, device: &Device) -> Tensor<4, Bool> {
    let start = total - t;
    let m: Vec<bool> = (0..t)
        .flat_map(|q| (0..total).map(move |k| k > start + q))
        .collect();
    Tensor::<2, Bool>::from_data(TensorData::new(m, [t, total]), device)
        .unsqueeze_dim::<3>(0)
        .unsqueeze_dim::<4>(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::math::{RopeSpec, rope_table};
    use crate::model::flex::f32s;
    use burn::tensor::Distribution;

    /// Against the definition in f64, token by token: normed latent up into per-head keys
    /// and values, the shared rotary key appended to each head's key, causal softmax.
    #[test]
    fn attention_matches_the_definition() {
        let device = Device::flex();
        device.seed(5);
        let (h, hd, r, c, t) = (2, 4, 2, 3, 5);
        let rope = RopeSpec {
            theta: 10_000.0,
            scaling: None,
        };
        let spec = MlaSpec {
            kv_rank: Some(c),
            rope_dim: Some(r),
        };
        let m = Mla::new(h, hd, &spec, 1e-5, rope, &device);
        let width = h * (hd + r) + c + r;
        let qkv = Tensor::<3>::random([1, t, width], Distribution::Normal(0.0, 1.0), &device);
        let x: Vec<f64> = f32s(qkv.clone()).into_iter().map(f64::from).collect();
        let got = f32s(m.attend(qkv, None, None));
        let up: Vec<f64> = f32s(m.up.weight.val()).into_iter().map(f64::from).collect();
        let (cos, sin) = rope_table(0, t, r, rope);
        let rot = |v: &[f64], pos: usize| -> Vec<f64> {
            let half = r / 2;
            let (cs, sn) = (&cos[pos * half..], &sin[pos * half..]);
            let mut o = v.to_vec();
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                o[i] = a * cs[i] as f64 - b * sn[i] as f64;
                o[i + half] = a * sn[i] as f64 + b * cs[i] as f64;
            }
            o
        };
        let qw = h * (hd + r);
        // Per position: each head's key (nope part, then the rotary key) and value.
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for p in 0..t {
            let row = &x[p * width..(p + 1) * width];
            let lat = &row[qw..qw + c];
            let rms = (lat.iter().map(|v| v * v).sum::<f64>() / c as f64 + 1e-5).sqrt();
            let lat: Vec<f64> = lat.iter().map(|v| v / rms).collect();
            let kr = rot(&row[qw + c..], p);
            let proj = |col: usize| {
                (0..c)
                    .map(|i| lat[i] * up[i * 2 * h * hd + col])
                    .sum::<f64>()
            };
            keys.push(
                (0..h)
                    .map(|hh| {
                        let mut k: Vec<f64> = (0..hd).map(|j| proj(hh * hd + j)).collect();
                        k.extend(&kr);
                        k
                    })
                    .collect::<Vec<_>>(),
            );
            values.push(
                (0..h)
                    .map(|hh| {
                        (0..hd)
                            .map(|j| proj(h * hd + hh * hd + j))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>(),
            );
        }
        for p in 0..t {
            let row = &x[p * width..(p + 1) * width];
            for hh in 0..h {
                let q = &row[hh * (hd + r)..(hh + 1) * (hd + r)];
                let mut q = q.to_vec();
                let qr = rot(&q[hd..], p);
                q[hd..].copy_from_slice(&qr);
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        let k = &keys[j][hh];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / ((hd + r) as f64).sqrt()
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..hd {
                    let want: f64 = (0..=p).map(|k| e[k] / z * values[k][hh][j]).sum();
                    let g = got[p * h * hd + hh * hd + j] as f64;
                    assert!(
                        (g - want).abs() < 1e-4,
                        "pos {p} head {hh} [{j}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
