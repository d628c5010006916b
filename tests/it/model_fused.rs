//! The fused CPU ops (RMSNorm, SwiGLU with the output projection, causal attention with RoPE,
//! target log-probabilities)
//! compute the same values and gradients as burn's
//! composite ops, op by op and through the whole model. One test function: the fused ops are
//! switched off process-wide for the reference pass.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use stageloop::cpu::math::RopeSpec;
use stageloop::model::fused;
use stageloop::model::optim::{self, FusedAdamW};
use stageloop::model::{Gpt, ModelConfig};

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn rms_composite(x: Tensor<3>, gamma: Tensor<1>, eps: f64) -> Tensor<3> {
    let rms = (x.clone().powf_scalar(2.0).mean_dim(2) + eps).sqrt();
    x / rms * gamma.unsqueeze::<3>()
}

fn swiglu_down_composite(gu: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let [b, t, m2] = gu.dims();
    let m = m2 / 2;
    let gate = gu.clone().slice([0..b, 0..t, 0..m]);
    let up = gu.slice([0..b, 0..t, m..m2]);
    let h = burn::tensor::activation::silu(gate) * up;
    let d = w.dims()[1];
    h.reshape([b * t, m]).matmul(w).reshape([b, t, d])
}

/// Causal attention with RoPE from burn's ops, as the model's composite path computes it.
fn attention_composite(qkv: Tensor<3>, heads: usize, theta: f64) -> Tensor<3> {
    let [b, t, d3] = qkv.dims();
    let (d, hd) = (d3 / 3, d3 / 3 / heads);
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..t {
        for i in 0..half {
            let a = p as f64 / theta.powf(2.0 * i as f64 / hd as f64);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let device = qkv.device();
    let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, t, half]), &device);
    let (cos, sin) = (table(cos), table(sin));
    let part = |i: usize| {
        qkv.clone()
            .reshape([b, t, 3, heads, hd])
            .slice([0..b, 0..t, i..i + 1, 0..heads, 0..hd])
            .reshape([b, t, heads, hd])
            .swap_dims(1, 2)
    };
    let rope = |x: Tensor<4>| {
        let x1 = x.clone().slice([0..b, 0..heads, 0..t, 0..half]);
        let x2 = x.slice([0..b, 0..heads, 0..t, half..hd]);
        Tensor::cat(
            vec![
                x1.clone() * cos.clone() - x2.clone() * sin.clone(),
                x1 * sin.clone() + x2 * cos.clone(),
            ],
            3,
        )
    };
    let opts = burn::tensor::ops::AttentionModuleOptions {
        is_causal: true,
        ..Default::default()
    };
    burn::tensor::module::attention(rope(part(0)), rope(part(1)), part(2), None, None, opts)
        .swap_dims(1, 2)
        .reshape([b, t, d])
}

/// Value and input gradients of `sum(f(x) · w)` for a random weighting `w`.
fn grads_of(
    f: impl Fn(Tensor<3>, Tensor<1>) -> Tensor<3>,
    x: &Tensor<3>,
    gamma: &Tensor<1>,
    w: &Tensor<3>,
) -> (Tensor<3>, Tensor<3>, Option<Tensor<1>>) {
    let x = x.clone().require_grad();
    let gamma = gamma.clone().require_grad();
    let y = f(x.clone(), gamma.clone());
    let grads = (y.clone() * w.clone()).sum().backward();
    (
        y.inner(),
        x.grad(&grads).expect("x grad"),
        gamma.grad(&grads),
    )
}

pub fn cfg() -> ModelConfig {
    ModelConfig {
        vocab: 20,
        d_model: 32,
        layers: 2,
        heads: 4,
        mlp: 64,
        ctx: 24,
        rope_theta: 10_000.0,
        arch: Default::default(),
    }
}

/// Loss and every parameter gradient (flattened, in traversal order) of a tiny model.
fn model_loss_and_grads(model: &Gpt, tokens: &Tensor<2, Int>) -> (f32, Vec<f32>) {
    let logits = model.forward(tokens.clone());
    let loss = logits.clone().powf_scalar(2.0).mean() + logits.sum() * 0.01;
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (loss.into_scalar::<f32>(), flat_grads(model, &grads))
}

/// The largest difference of `a` from `b` relative to `b` (floored at 0.01).
pub(crate) fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-2))
        .fold(0.0f32, f32::max)
}

/// Held by the tests that turn the process-wide fused switch off, and by those whose result
/// depends on it, so that they never overlap.
pub(crate) static FUSED_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Every parameter's gradient, flattened in traversal order.
fn flat_grads(model: &Gpt, grads: &GradientsParams) -> Vec<f32> {
    let mut flat = Vec::new();
    struct Collect<'a>(&'a GradientsParams, &'a mut Vec<f32>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self
                .0
                .get::<D>(param.id)
                .expect("every parameter has a gradient");
            self.1.extend(g.into_data().iter::<f32>());
        }
    }
    model.visit(&mut Collect(grads, &mut flat));
    flat
}

#[test]
fn fused_ops_match_the_composite_ops_in_values_and_gradients() {
    let _switch = FUSED_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(3);
    assert!(fused::available(&device), "fused ops run on flex autodiff");

    // RMSNorm, including a strided (transposed) input.
    let x = Tensor::<3>::random([3, 7, 48], Distribution::Normal(0.5, 2.0), &device);
    let gamma = Tensor::<1>::random([48], Distribution::Normal(1.0, 0.3), &device);
    let w = Tensor::<3>::random([3, 7, 48], Distribution::Normal(0.0, 1.0), &device);
    let (y1, dx1, dg1) = grads_of(|x, g| fused::rms_norm(x, g, 1e-5), &x, &gamma, &w);
    let (y2, dx2, dg2) = grads_of(|x, g| rms_composite(x, g, 1e-5), &x, &gamma, &w);
    assert!(max_diff(y1, y2) < 1e-5);
    assert!(max_diff(dx1, dx2) < 1e-4, "rms dx");
    assert!(max_diff(dg1.unwrap(), dg2.unwrap()) < 1e-4, "rms dgamma");
    let xt =
        Tensor::<3>::random([3, 48, 7], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
    let (y1, dx1, _) = grads_of(|x, g| fused::rms_norm(x, g, 1e-5), &xt, &gamma, &w);
    let (y2, dx2, _) = grads_of(|x, g| rms_composite(x, g, 1e-5), &xt, &gamma, &w);
    assert!(max_diff(y1, y2) < 1e-5, "strided rms value");
    assert!(max_diff(dx1, dx2) < 1e-4, "strided rms dx");

    // SwiGLU with the output projection, over a wide range of gate values (the sigmoid's
    // tails); gradients of both inputs.
    let gu = Tensor::<3>::random([3, 7, 48], Distribution::Normal(0.0, 6.0), &device);
    let wd = Tensor::<2>::random([24, 10], Distribution::Normal(0.0, 0.5), &device);
    let w = Tensor::<3>::random([3, 7, 10], Distribution::Normal(0.0, 1.0), &device);
    let run = |f: &dyn Fn(Tensor<3>, Tensor<2>) -> Tensor<3>| {
        let (gu, wd) = (gu.clone().require_grad(), wd.clone().require_grad());
        let y = f(gu.clone(), wd.clone());
        let grads = (y.clone() * w.clone()).sum().backward();
        (
            y.inner(),
            gu.grad(&grads).unwrap(),
            wd.grad(&grads).unwrap(),
        )
    };
    let (y1, dgu1, dw1) = run(&|gu, wd| fused::swiglu_down(gu, wd));
    let (y2, dgu2, dw2) = run(&|gu, wd| swiglu_down_composite(gu, wd));
    assert!(max_diff(y1, y2) < 1e-4, "swiglu_down value");
    assert!(max_diff(dgu1, dgu2) < 1e-4, "swiglu_down grad of gate_up");
    assert!(max_diff(dw1, dw2) < 1e-3, "swiglu_down grad of w");
    // SwiGLU alone (a LoRA-adapted output projection runs after it): value and gradient.
    let wh = Tensor::<3>::random([3, 7, 24], Distribution::Normal(0.0, 1.0), &device);
    let run_h = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
        let g = gu.clone().require_grad();
        let y = f(g.clone());
        let grads = (y.clone() * wh.clone()).sum().backward();
        (y.inner(), g.grad(&grads).unwrap())
    };
    let (h1, dh1) = run_h(&|g| fused::swiglu(g));
    let (h2, dh2) = run_h(&|g| {
        let gate = g.clone().slice([0..3, 0..7, 0..24]);
        let up = g.slice([0..3, 0..7, 24..48]);
        burn::tensor::activation::silu(gate) * up
    });
    assert!(max_diff(h1, h2) < 1e-4, "swiglu value");
    assert!(max_diff(dh1, dh2) < 1e-4, "swiglu grad");

    // The dense layers' product, from plain and from strided (transposed) input and weight;
    // gradients of both.
    let xs = [
        Tensor::<3>::random([3, 7, 24], Distribution::Normal(0.0, 1.0), &device),
        Tensor::<3>::random([3, 24, 7], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2),
    ];
    let ws = [
        Tensor::<2>::random([24, 10], Distribution::Normal(0.0, 0.5), &device),
        Tensor::<2>::random([10, 24], Distribution::Normal(0.0, 0.5), &device).transpose(),
    ];
    for (x, wl) in xs.iter().zip(&ws) {
        let run = |f: &dyn Fn(Tensor<3>, Tensor<2>) -> Tensor<3>| {
            let (x, wl) = (x.clone().require_grad(), wl.clone().require_grad());
            let y = f(x.clone(), wl.clone());
            let grads = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap(), wl.grad(&grads).unwrap())
        };
        let (y1, dx1, dw1) = run(&|x, wl| fused::linear(x, wl));
        let (y2, dx2, dw2) = run(&|x, wl| x.matmul(wl.unsqueeze()));
        assert!(max_diff(y1, y2) < 1e-4, "linear value");
        assert!(max_diff(dx1, dx2) < 1e-4, "linear grad of x");
        assert!(max_diff(dw1, dw2) < 1e-4, "linear grad of w");
    }

    // Causal attention with RoPE on its own: a head size of two packed panels plus a ragged
    // one, a length that is not a multiple of the kernel's row block.
    for (b, t, heads, hd) in [(2, 41, 3, 40), (3, 7, 2, 8)] {
        let qkv = Tensor::<3>::random(
            [b, t, 3 * heads * hd],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<3>::random([b, t, heads * hd], Distribution::Normal(0.0, 1.0), &device);
        let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let x = qkv.clone().require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (y1, dx1) = run(&|x| fused::causal_attention(x, heads, RopeSpec::plain(10_000.0)));
        let (y2, dx2) = run(&|x| attention_composite(x, heads, 10_000.0));
        assert!(max_diff(y1, y2) < 1e-4, "attention value, t {t}");
        assert!(max_diff(dx1, dx2) < 1e-4, "attention grad, t {t}");
    }

    // The whole model: loss and every parameter's gradient, fused and composite, for the
    // plain block and each pretrained variation (grouped-query heads, q/k/v biases, q/k norms,
    // an explicit head size, a tied head, Llama 3 RoPE scaling).
    for (name, c) in arch_variants(cfg()) {
        device.seed(5);
        let model = Gpt::new(&c, &device);
        let seq: Vec<i64> = (0..2 * 24).map(|i| (i * 7 % 20) as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(seq, [2, 24]), &device);
        let (loss_f, grads_f) = model_loss_and_grads(&model, &tokens);
        fused::set_enabled(false);
        let (loss_c, grads_c) = model_loss_and_grads(&model, &tokens);
        fused::set_enabled(true);
        assert!(
            (loss_f - loss_c).abs() < 1e-4 * loss_c.abs().max(1.0),
            "{name}: {loss_f} vs {loss_c}"
        );
        assert_eq!(grads_f.len(), grads_c.len(), "{name}");
        let worst = worst_relative(&grads_f, &grads_c);
        assert!(
            worst < 1e-3,
            "{name}: worst relative gradient difference {worst}"
        );
    }
}

/// `base` and each architecture variation on it, named.
pub fn arch_variants(base: ModelConfig) -> Vec<(&'static str, ModelConfig)> {
    use stageloop::model::config::{Arch, RopeScaling};
    let with = |arch: Arch| ModelConfig {
        arch,
        ..base.clone()
    };
    vec![
        ("plain", base.clone()),
        (
            "gqa+tied",
            with(Arch {
                kv_heads: Some(2),
                tied: true,
                ..Arch::default()
            }),
        ),
        (
            "qwen2 (gqa, bias)",
            with(Arch {
                kv_heads: Some(1),
                qkv_bias: true,
                norm_eps: 1e-6,
                ..Arch::default()
            }),
        ),
        (
            "qwen3 (qk norm, head_dim)",
            with(Arch {
                kv_heads: Some(2),
                head_dim: Some(12),
                qk_norm: true,
                tied: true,
                ..Arch::default()
            }),
        ),
        (
            "llama3 rope scaling",
            with(Arch {
                kv_heads: Some(2),
                rope_scaling: Some(RopeScaling {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 16.0,
                }),
                ..Arch::default()
            }),
        ),
    ]
}

#[test]
fn fused_target_logprobs_match_log_softmax_and_gather() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let (b, t, v) = (2, 5, 300);
    let logits = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 3.0), &device);
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 97) % v) as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
    let w = Tensor::<2>::random([b, t], Distribution::Normal(0.0, 1.0), &device);
    for temperature in [1.0, 0.7] {
        let run = |fused_path: bool| {
            let x = logits.clone().require_grad();
            let y = if fused_path {
                fused::target_logprobs(x.clone(), targets.clone().float(), 1.0 / temperature)
            } else {
                burn::tensor::activation::log_softmax(x.clone().div_scalar(temperature), 2)
                    .gather(2, targets.clone().unsqueeze_dim::<3>(2))
                    .squeeze_dim::<2>(2)
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        assert!(max_diff(y1, y2) < 1e-4, "values at T {temperature}");
        assert!(max_diff(g1, g2) < 1e-5, "gradients at T {temperature}");
    }
}

/// Every parameter's values, in visiting order.
fn params_of(model: &Gpt) -> Vec<f32> {
    struct Collect<'a>(&'a mut Vec<f32>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let mut flat = Vec::new();
    model.visit(&mut Collect(&mut flat));
    flat
}

#[test]
fn fused_adamw_steps_like_burns_adamw_and_resumes_from_its_record() {
    // The fused optimizer's path depends on the process-wide switch another test turns off.
    let _switch = FUSED_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(11);
    let model = Gpt::new(&cfg(), &device);
    let seq: Vec<i64> = (0..2 * 24).map(|i| (i * 5 % 20) as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(seq, [2, 24]), &device);
    let grads = |m: &Gpt| {
        let logits = m.forward(tokens.clone());
        let loss = logits.clone().powf_scalar(2.0).mean() + logits.sum() * 0.01;
        GradientsParams::from_grads(loss.backward(), m)
    };
    let burn_adamw = || {
        AdamWConfig::new()
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.1)
            .init()
    };
    let fused_adamw = || FusedAdamW::new(0.9, 0.95, 1e-8, 0.1).init();
    let (mut plain, mut fast) = (burn_adamw(), fused_adamw());
    let (mut a, mut b) = (model.clone(), model.clone());
    for step in 0..3 {
        a = plain.step(1e-2, a.clone(), grads(&a));
        let before = optim::fused_updates();
        // At the second step another handle shares the parameters (as GRPO's policy does):
        // they are updated into fresh memory and the held copy keeps its values.
        // Otherwise the model is moved into the step, its parameters updated in place.
        let held = (step == 1).then(|| (b.valid(), params_of(&b)));
        let g = grads(&b);
        b = fast.step(1e-2, b, g);
        assert!(optim::fused_updates() > before, "the fused path ran");
        if let Some((held, values)) = held {
            assert_eq!(
                params_of(&held),
                values,
                "a shared parameter was updated in place"
            );
        }
        let (pa, pb) = (params_of(&a), params_of(&b));
        let worst = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "step {step}: worst difference {worst}");
        // The steps moved the parameters (a test that cannot fail otherwise).
        assert!(params_of(&model).iter().zip(&pb).any(|(x, y)| x != y));
    }
    // Its record is burn's AdamW state: loaded into either optimizer, the next step agrees.
    let mut from_fused = fused_adamw().load_record(fast.to_record());
    let mut into_burn = burn_adamw().load_record(fast.to_record());
    let g = grads(&b);
    let next = fast.step(1e-2, b.clone(), g);
    for other in [&mut from_fused, &mut into_burn] {
        let stepped = other.step(1e-2, b.clone(), grads(&b));
        let worst = params_of(&next)
            .iter()
            .zip(&params_of(&stepped))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "resumed step: worst difference {worst}");
    }
}

/// The targets' log-probabilities through the chunked head (`fused::head_logprobs`, used when
/// the fused ops are on) against whole logits through `log_softmax` and `gather`: values,
/// entropies and every parameter's gradient (through the log-probabilities and an entropy
/// bonus), for every architecture variation (untied and tied heads), at a temperature.
#[test]
fn chunked_head_logprobs_match_whole_logits_in_values_and_gradients() {
    use stageloop::stages::common::target_logprobs_with;
    let device = Device::flex().autodiff();
    for (name, c) in arch_variants(cfg()) {
        device.seed(8);
        let model = Gpt::new(&c, &device);
        let seq: Vec<i64> = (0..2 * 24).map(|i| (i * 5 % 19) as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(seq, [2, 24]), &device);
        let targets = tokens.clone().slice([0..2, 1..24]);
        let inputs = tokens.slice([0..2, 0..23]);
        // `chunked`: the fused path (the chunked head); otherwise whole logits from
        // `model.forward` through `log_softmax` and `gather` (no global switch: other tests
        // run meanwhile).
        let run = |chunked: bool| {
            let (lp, ent) = if chunked {
                let (lp, ent) =
                    target_logprobs_with(&model, inputs.clone(), targets.clone(), 0.8, true);
                (lp, ent.unwrap())
            } else {
                let logits = model.forward(inputs.clone()).div_scalar(0.8);
                let logp = burn::tensor::activation::log_softmax(logits, 2);
                let ent = (logp.clone().exp() * logp.clone())
                    .sum_dim(2)
                    .neg()
                    .squeeze_dim::<2>(2);
                let lp = logp
                    .gather(2, targets.clone().unsqueeze_dim::<3>(2))
                    .squeeze_dim::<2>(2);
                (lp, ent)
            };
            let w: Vec<f32> = (0..46).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let w = Tensor::<2>::from_data(TensorData::new(w, [2, 23]), &device);
            let loss = (lp * w).sum() - ent.clone().sum().mul_scalar(0.05);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let flat = flat_grads(&model, &grads);
            let ent: Vec<f32> = ent.into_data().iter::<f32>().collect();
            (loss.into_scalar::<f32>(), ent, flat)
        };
        let (loss_f, ent_f, grads_f) = run(true);
        let (loss_c, ent_c, grads_c) = run(false);
        assert!(
            (loss_f - loss_c).abs() < 1e-4 * loss_c.abs().max(1.0),
            "{name}: {loss_f} vs {loss_c}"
        );
        let ent = ent_f
            .iter()
            .zip(&ent_c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(ent < 1e-4, "{name}: entropies differ by {ent}");
        let worst = worst_relative(&grads_f, &grads_c);
        assert!(
            worst < 1e-3,
            "{name}: worst relative gradient difference {worst}"
        );
    }
}

/// Rows that continue shared prompts ([`Gpt::hidden_after`], each prompt run once) against the
/// same rows whole (prompt then continuation, right-padded): the continuation's
/// log-probabilities and entropies, and every parameter's gradient through them (the prompts'
/// positions get theirs summed over the rows that read them), for every architecture
/// variation, with rows of several prompts and lengths in one batch, through the fused ops and
/// the composite ones.
#[test]
fn shared_prompts_give_the_whole_rows_values_and_gradients() {
    let _switch = FUSED_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for on in [true, false] {
        fused::set_enabled(on);
        shared_prompts_match_whole_rows();
    }
    fused::set_enabled(true);
}

fn shared_prompts_match_whole_rows() {
    use stageloop::model::Prefix;
    use stageloop::stages::common::continuation_logprobs;
    let device = Device::flex().autodiff();
    let ids = |v: Vec<i64>, r: usize, t: usize| {
        Tensor::<2, Int>::from_data(TensorData::new(v, [r, t]), &device)
    };
    let prompts: [Vec<i64>; 2] = [vec![1, 5, 9, 3, 7, 11], vec![1, 4, 4, 8, 2, 6]];
    // (prompt, continuation): lengths 3 to 6, rows of both prompts interleaved.
    let rows: Vec<(usize, Vec<i64>)> = vec![
        (0, vec![12, 13, 14, 15]),
        (1, vec![16, 3, 5]),
        (0, vec![17, 18, 2, 9, 10, 19]),
        (0, vec![6, 6, 6]),
        (1, vec![7, 8, 9, 10, 11]),
    ];
    let n = rows.len();
    let plen = prompts[0].len();
    let cmax = rows.iter().map(|(_, c)| c.len()).max().unwrap();
    for (name, c) in arch_variants(cfg()) {
        device.seed(5);
        let model = Gpt::new(&c, &device);
        // Whole rows: inputs are the sequence but its last token, targets shifted by one.
        let t = plen + cmax - 1;
        let (mut wi, mut wt) = (Vec::new(), Vec::new());
        // The continuation after the prompt's last token: the rows [prompt end, c..] → c.
        let (mut si, mut st) = (Vec::new(), Vec::new());
        for (p, cont) in &rows {
            let seq: Vec<i64> = prompts[*p].iter().chain(cont).copied().collect();
            for j in 0..t {
                wi.push(
                    seq.get(j)
                        .copied()
                        .filter(|_| j + 1 < seq.len())
                        .unwrap_or(0),
                );
                wt.push(seq.get(j + 1).copied().unwrap_or(0));
            }
            for j in 0..cmax {
                si.push(
                    seq.get(plen - 1 + j)
                        .copied()
                        .filter(|_| j < cont.len())
                        .unwrap_or(0),
                );
                st.push(cont.get(j).copied().unwrap_or(0));
            }
        }
        let weight = |r: usize, j: usize| {
            let real = j < rows[r].1.len();
            if real {
                ((r * 7 + j * 3) % 5) as f32 * 0.2 - 0.4
            } else {
                0.0
            }
        };
        let prefix = Prefix {
            tokens: ids(
                prompts
                    .iter()
                    .flat_map(|p| p[..plen - 1].to_vec())
                    .collect(),
                2,
                plen - 1,
            ),
            rows: rows.iter().map(|(p, _)| *p).collect(),
        };
        // Per row, the continuation's (log-probability, entropy) in order, and the loss's
        // gradients.
        let run = |shared: bool| {
            let (lp, ent, offset, t) = if shared {
                let (lp, ent) = continuation_logprobs(
                    &model,
                    Some(&prefix),
                    ids(si.clone(), n, cmax),
                    ids(st.clone(), n, cmax),
                    0.8,
                    true,
                );
                (lp, ent.unwrap(), 0, cmax)
            } else {
                let (lp, ent) = continuation_logprobs(
                    &model,
                    None,
                    ids(wi.clone(), n, t),
                    ids(wt.clone(), n, t),
                    0.8,
                    true,
                );
                (lp, ent.unwrap(), plen - 1, t)
            };
            let w: Vec<f32> = (0..n)
                .flat_map(|r| (0..t).map(move |j| (r, j)))
                .map(|(r, j)| j.checked_sub(offset).map_or(0.0, |j| weight(r, j)))
                .collect();
            let w = Tensor::<2>::from_data(TensorData::new(w, [n, t]), &device);
            let loss = (lp.clone() * w.clone()).sum() - (ent.clone() * w).sum().mul_scalar(0.1);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let (lp, ent): (Vec<f32>, Vec<f32>) = (
                lp.into_data().iter::<f32>().collect(),
                ent.into_data().iter::<f32>().collect(),
            );
            let pick = |v: &[f32]| -> Vec<f32> {
                (0..n)
                    .flat_map(|r| (0..rows[r].1.len()).map(move |j| (r, j)))
                    .map(|(r, j)| v[r * t + offset + j])
                    .collect()
            };
            (pick(&lp), pick(&ent), flat_grads(&model, &grads))
        };
        let (lp_s, ent_s, grads_s) = run(true);
        let (lp_w, ent_w, grads_w) = run(false);
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            worst(&lp_s, &lp_w) < 1e-4,
            "{name}: log-probabilities differ"
        );
        assert!(worst(&ent_s, &ent_w) < 1e-4, "{name}: entropies differ");
        assert!(grads_s.iter().any(|&g| g != 0.0), "{name}: no gradient");
        let worst = worst_relative(&grads_s, &grads_w);
        assert!(
            worst < 1e-3,
            "{name}: worst relative gradient difference {worst}"
        );
    }
}

/// In a bf16 run the head's products read bf16 panels kept between calls: a second weight (a
/// trained head after its step) gets its own panels, never the first one's, and each result
/// stays within bf16's rounding of the f32 one.
#[test]
fn bf16_head_panels_follow_the_weight() {
    use stageloop::cpu::gemm::with_bf16;
    if !stageloop::cpu::bf16::available() {
        return;
    }
    let device = Device::flex();
    let (d, v) = (16, 40);
    let h = Tensor::<3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
    let targets: Vec<f32> = (0..10).map(|i| (i * 7 % v) as f32).collect();
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [2, 5]), &device);
    let w1 = Tensor::<2>::random([v, d], Distribution::Normal(0.0, 1.0), &device).transpose();
    let w2 = w1.clone().mul_scalar(-0.5).add_scalar(0.1);
    let logp = |w: &Tensor<2>| -> Vec<f32> {
        let (lp, _) = fused::head_logprobs(h.clone(), w.clone(), targets.clone(), 1.0);
        lp.into_data().iter::<f32>().collect()
    };
    let (f1, f2) = (logp(&w1), logp(&w2));
    let (_, (b1, b2, b1_again)) = with_bf16(true, || (logp(&w1), logp(&w2), logp(&w1)));
    let apart = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        apart(&b1, &f1) < 0.05 && apart(&b1, &f1) > 0.0,
        "first weight"
    );
    assert!(apart(&b2, &f2) < 0.05, "second weight: {}", apart(&b2, &f2));
    assert!(apart(&f1, &f2) > 0.5, "the weights differ");
    assert_eq!(b1, b1_again, "the first weight packed again");
}
