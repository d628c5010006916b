//! DeepSeekMoE's routed experts, beside a block's MLP (which then holds the shared experts).
//!
//! Each token's affinity to expert `i` is `sᵢ = sigmoid(x · rᵢ)`. The `top_k` experts with the
//! highest `sᵢ + bᵢ` are chosen, where `bᵢ` is a balancing bias that steers the choice only:
//! the chosen experts' outputs are weighted by `sᵢ` normalised over the chosen ones
//! (DeepSeek-V3). The bias is not trained by gradient: after each optimizer step
//! [`Moe::balance`] moves it by `bias_rate` towards the mean load (auxiliary-loss-free
//! balancing). An optional sequence-wise balance loss `α · Σᵢ fᵢ·Pᵢ` is kept for the training
//! loop to add ([`Moe::take_aux_loss`]). Tokens are routed for real: each expert multiplies only
//! the rows routed to it (gathered with `select`, added back with `select_assign`), so the
//! FLOPs are the active parameters'. No capacity limit: no token is ever dropped.

use super::config::MoeSpec;
use super::flex::f32s;
use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::{Device, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};
use std::sync::{Arc, Mutex};

/// The routed experts of one block.
#[derive(Module, Debug)]
pub struct Moe {
    /// `[d, experts]`.
    router: Param<Tensor<2>>,
    /// Per expert, its gate and up projections `[d, 2·width]` and its down projection
    /// `[width, d]`.
    gate_up: Vec<Param<Tensor<2>>>,
    down: Vec<Param<Tensor<2>>>,
    /// `[experts]`: the balancing bias (no gradient; saved with the weights).
    bias: Param<Tensor<1>>,
    #[module(skip)]
    top_k: usize,
    #[module(skip)]
    width: usize,
    #[module(skip)]
    aux_weight: f64,
    /// What the training forward passes saw since the last [`Moe::balance`].
    #[module(skip)]
    seen: Arc<Mutex<Seen>>,
}

/// Routing counts and the balance loss of the training forward passes since the last
/// [`Moe::balance`] (shared between clones of the model, which is why they are only counted
/// for passes that train).
#[derive(Debug, Default)]
struct Seen {
    /// Tokens routed to each expert.
    load: Vec<u64>,
    /// The sequence-wise balance loss of the last pass, weighted.
    aux: Option<Tensor<1>>,
}

/// A block's routed experts as tensors ([`Moe::weights`]).
pub type Weights = (Tensor<2>, Tensor<1>, Vec<(Tensor<2>, Tensor<2>)>);

/// One block's routing over the steps since the last balance: each expert's load relative to
/// a perfectly even split (1.0 each; the loads average 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Loads(pub Vec<f64>);

fn matrix(rows: usize, cols: usize, device: &Device) -> Param<Tensor<2>> {
    // Kaiming-uniform-like scale, as burn's Linear initialises.
    let bound = 1.0 / (rows as f64).sqrt();
    Param::from_tensor(Tensor::random(
        [rows, cols],
        Distribution::Uniform(-bound, bound),
        device,
    ))
}

impl Moe {
    pub fn new(d: usize, spec: &MoeSpec, device: &Device) -> Moe {
        let (n, w) = (spec.experts, spec.width(0));
        Moe {
            router: matrix(d, n, device),
            gate_up: (0..n).map(|_| matrix(d, 2 * w, device)).collect(),
            down: (0..n).map(|_| matrix(w, d, device)).collect(),
            bias: Param::from_tensor(Tensor::zeros([n], device)).set_require_grad(false),
            top_k: spec.top_k,
            width: w,
            aux_weight: spec.aux_loss,
            seen: Arc::default(),
        }
    }

    fn experts(&self) -> usize {
        self.gate_up.len()
    }

    /// The routed experts' output for normed inputs `h` `[b, t, d]` (without the residual).
    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = h.dims();
        let (n, e, k, w) = (b * t, self.experts(), self.top_k, self.width);
        let device = h.device();
        let training = self.router.val().is_require_grad();
        let flat = h.reshape([n, d]);
        let scores = sigmoid(flat.clone().matmul(self.router.val()));
        // The choice, on the host: top_k of score + bias per token.
        let host = f32s(scores.clone().detach());
        let bias = f32s(self.bias.val());
        let chosen = choose(&host, &bias, e, k);
        let mut mask = vec![0f32; n * e];
        let mut rows: Vec<Vec<i64>> = vec![Vec::new(); e];
        for (token, picks) in chosen.chunks_exact(k).enumerate() {
            for &i in picks {
                mask[token * e + i] = 1.0;
                rows[i].push(token as i64);
            }
        }
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [n, e]), &device);
        let picked = scores.clone() * mask.clone();
        let gates = picked.clone() / picked.sum_dim(1).add_scalar(1e-20);
        let mut out = Tensor::<2>::zeros([n, d], &device);
        for (i, tokens) in rows.iter().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let m = tokens.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(tokens.clone(), [m]), &device);
            let x = flat.clone().select(0, idx.clone());
            let gu = x.matmul(self.gate_up[i].val());
            let act = silu(gu.clone().slice([0..m, 0..w])) * gu.slice([0..m, w..2 * w]);
            let gate = gates.clone().select(0, idx.clone()).slice([0..m, i..i + 1]);
            let y = act.matmul(self.down[i].val()) * gate;
            out = out.select_assign(0, idx, y, IndexingUpdateOp::Add);
        }
        if training {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.load.resize(e, 0);
            for (l, r) in seen.load.iter_mut().zip(&rows) {
                *l += r.len() as u64;
            }
            if self.aux_weight > 0.0 {
                seen.aux = Some(self.balance_loss(scores, mask, [b, t], k));
            }
        }
        out.reshape([b, t, d])
    }

    /// DeepSeek-V3's sequence-wise balance loss, `α · Σᵢ fᵢ·Pᵢ` averaged over the sequences:
    /// `fᵢ = E/(k·T) · (tokens of the sequence routed to i)`, `Pᵢ` the sequence's mean of the
    /// affinities normalised over all experts. Padding positions count as tokens.
    fn balance_loss(
        &self,
        scores: Tensor<2>,
        mask: Tensor<2>,
        [b, t]: [usize; 2],
        k: usize,
    ) -> Tensor<1> {
        let e = self.experts();
        let norm = scores.clone() / scores.sum_dim(1);
        let p = norm.reshape([b, t, e]).mean_dim(1);
        let f = mask
            .reshape([b, t, e])
            .sum_dim(1)
            .mul_scalar(e as f64 / (k * t) as f64);
        (f * p).sum().mul_scalar(self.aux_weight / b as f64)
    }

    /// The balance loss of the last training pass, if `aux_loss` is on (taken: a second call
    /// gives `None`).
    pub fn take_aux_loss(&self) -> Option<Tensor<1>> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .aux
            .take()
    }

    /// After an optimizer step: each expert's bias moves by `rate` towards the mean load (up
    /// when it had fewer tokens than the mean, down when more), and the counts start over.
    /// Returns the loads the step saw, `None` if no training pass ran since the last call.
    pub fn balance(&mut self, rate: f64) -> Option<Loads> {
        let load = std::mem::take(&mut self.seen.lock().unwrap_or_else(|p| p.into_inner()).load);
        let total: u64 = load.iter().sum();
        if total == 0 {
            return None;
        }
        let mean = total as f64 / load.len() as f64;
        let nudge: Vec<f32> = load
            .iter()
            .map(|&l| match (l as f64).total_cmp(&mean) {
                std::cmp::Ordering::Less => rate as f32,
                std::cmp::Ordering::Greater => -rate as f32,
                std::cmp::Ordering::Equal => 0.0,
            })
            .collect();
        let device = self.bias.val().device();
        let step = Tensor::<1>::from_data(TensorData::new(nudge, [load.len()]), &device);
        let bias = self.bias.val().detach() + step;
        self.bias = Param::initialized(self.bias.id, bias).set_require_grad(false);
        Some(Loads(load.iter().map(|&l| l as f64 / mean).collect()))
    }

    /// The router `[d, experts]`, the balancing biases and each expert's `[d, 2·width]` gate
    /// and up projection and `[width, d]` down projection.
    pub fn weights(&self) -> Weights {
        let experts = self.gate_up.iter().zip(&self.down);
        let experts = experts.map(|(gu, dn)| (gu.val(), dn.val())).collect();
        (self.router.val(), self.bias.val(), experts)
    }

    /// The balancing biases, as floats.
    pub fn biases(&self) -> Vec<f32> {
        f32s(self.bias.val())
    }
}

/// For each of `scores.len() / e` tokens, the `k` experts with the highest `score + bias`
/// (ties to the lower index), in order of that value; `k` entries a token.
fn choose(scores: &[f32], bias: &[f32], e: usize, k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(scores.len() / e * k);
    let mut order: Vec<usize> = Vec::with_capacity(e);
    for row in scores.chunks_exact(e) {
        order.clear();
        order.extend(0..e);
        let key = |i: usize| row[i] + bias[i];
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        out.extend_from_slice(&order[..k]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_is_top_k_of_score_plus_bias() {
        let scores = [0.9, 0.1, 0.5, 0.4, 0.2, 0.3, 0.3, 0.8];
        // Without bias: token 0 → 0, 2; token 1 → 3, then 1 and 2 tie at 0.3 → 1.
        assert_eq!(choose(&scores, &[0.0; 4], 4, 2), vec![0, 2, 3, 1]);
        // A bias on expert 1 makes it first for both tokens; the gate still uses the score.
        assert_eq!(
            choose(&scores, &[0.0, 1.0, 0.0, 0.0], 4, 2),
            vec![1, 0, 1, 3]
        );
    }

    fn spec(experts: usize, top_k: usize, aux_loss: f64) -> MoeSpec {
        MoeSpec {
            experts,
            top_k,
            shared: 1,
            expert_mlp: Some(3),
            bias_rate: 0.01,
            aux_loss,
        }
    }

    fn values<const D: usize>(t: &Param<Tensor<D>>) -> Vec<f64> {
        f32s(t.val()).into_iter().map(f64::from).collect()
    }

    /// The routed output, token by token in f64, from the definition: sigmoid affinities, the
    /// top k of affinity + bias, gates the chosen affinities over their sum, each chosen
    /// expert's SwiGLU.
    fn reference(m: &Moe, h: &[f32], d: usize) -> Vec<f64> {
        let (e, k, w) = (m.experts(), m.top_k, m.width);
        let (r, bias) = (values(&m.router), values(&m.bias));
        let silu = |x: f64| x / (1.0 + (-x).exp());
        let mut out = Vec::new();
        for x in h.chunks_exact(d) {
            let s: Vec<f64> = (0..e)
                .map(|i| {
                    let z: f64 = (0..d).map(|j| x[j] as f64 * r[j * e + i]).sum();
                    1.0 / (1.0 + (-z).exp())
                })
                .collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| (s[b] + bias[b]).total_cmp(&(s[a] + bias[a])));
            let chosen = &order[..k];
            let total: f64 = chosen.iter().map(|&i| s[i]).sum();
            let mut y = vec![0.0; d];
            for &i in chosen {
                let (gu, dn) = (values(&m.gate_up[i]), values(&m.down[i]));
                let hidden: Vec<f64> = (0..w)
                    .map(|c| {
                        let dot = |col: usize| -> f64 {
                            (0..d).map(|j| x[j] as f64 * gu[j * 2 * w + col]).sum()
                        };
                        silu(dot(c)) * dot(w + c)
                    })
                    .collect();
                for (o, yo) in y.iter_mut().enumerate() {
                    let v: f64 = (0..w).map(|c| hidden[c] * dn[c * d + o]).sum();
                    *yo += s[i] / total * v;
                }
            }
            out.extend(y);
        }
        out
    }

    #[test]
    fn routed_output_matches_the_definition_and_the_bias_only_steers() {
        let device = Device::flex();
        device.seed(7);
        let (b, t, d) = (2, 5, 6);
        let mut m = Moe::new(d, &spec(5, 2, 0.0), &device);
        let h = Tensor::<3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device);
        let hv = f32s(h.clone());
        for bias in [vec![0.0f32; 5], vec![0.0, 0.6, -0.3, 0.0, 0.2]] {
            let n = bias.len();
            m.bias = Param::from_tensor(Tensor::from_data(TensorData::new(bias, [n]), &device));
            let got = f32s(m.forward(h.clone()));
            let want = reference(&m, &hv, d);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn gradients_reach_the_router_and_only_the_chosen_experts() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let d = 4;
        let mut m = Moe::new(d, &spec(4, 1, 0.0), &device);
        // Expert 3's bias keeps it from ever being chosen.
        let bias = TensorData::new(vec![0.0f32, 0.0, 0.0, -10.0], [4]);
        m.bias = Param::from_tensor(Tensor::from_data(bias, &device)).set_require_grad(false);
        let h = Tensor::<3>::random([1, 6, d], Distribution::Normal(0.0, 1.0), &device);
        let grads = m.forward(h).sum().backward();
        assert!(m.router.val().grad(&grads).is_some(), "router");
        assert!(m.gate_up[3].val().grad(&grads).is_none(), "expert 3 unused");
        let used = (0..3).filter(|&i| m.gate_up[i].val().grad(&grads).is_some());
        assert!(used.count() >= 1);
        // A training pass counted its six tokens, one expert each.
        let loads = m.balance(0.01).expect("a training pass ran");
        assert_eq!(loads.0.iter().sum::<f64>(), 4.0, "loads average 1");
        assert_eq!(loads.0[3], 0.0);
        // Under-loaded experts' biases rose by the rate, over-loaded ones fell.
        let after = m.biases();
        for (i, l) in loads.0.iter().enumerate() {
            let moved = after[i] - [0.0, 0.0, 0.0, -10.0][i];
            let want = if *l < 1.0 { 0.01 } else { -0.01 };
            assert!(
                (moved - want).abs() < 1e-6,
                "expert {i}: load {l}, moved {moved}"
            );
        }
        assert!(m.balance(0.01).is_none(), "counts start over");
    }

    #[test]
    fn balance_loss_is_the_sequence_wise_formula() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let (b, t, d, e, k) = (2, 3, 4, 4, 2);
        let m = Moe::new(d, &spec(e, k, 0.5), &device);
        let h = Tensor::<3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device);
        let hv = f32s(h.clone());
        let _ = m.forward(h);
        let got = m
            .take_aux_loss()
            .expect("aux_loss is on")
            .into_scalar::<f32>() as f64;
        assert!(m.take_aux_loss().is_none(), "taken once");
        let r = values(&m.router);
        let mut want = 0.0;
        for seq in hv.chunks_exact(t * d) {
            let (mut f, mut p) = (vec![0.0; e], vec![0.0; e]);
            for x in seq.chunks_exact(d) {
                let s: Vec<f64> = (0..e)
                    .map(|i| {
                        let z: f64 = (0..d).map(|j| x[j] as f64 * r[j * e + i]).sum();
                        1.0 / (1.0 + (-z).exp())
                    })
                    .collect();
                let sum: f64 = s.iter().sum();
                let mut order: Vec<usize> = (0..e).collect();
                order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
                for &i in &order[..k] {
                    f[i] += e as f64 / (k * t) as f64;
                }
                for i in 0..e {
                    p[i] += s[i] / sum / t as f64;
                }
            }
            want += 0.5 * (0..e).map(|i| f[i] * p[i]).sum::<f64>() / b as f64;
        }
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
