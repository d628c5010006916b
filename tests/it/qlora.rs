//! QLoRA: a LoRA model whose block matrices are frozen as quantised blocks computes what the
//! same model with those blocks dequantised computes (values and adapter gradients, fused ops
//! against burn's composite ops), trains only its adapters, stays close to its f32 base, and
//! samples the same through the CPU decoder (blocks with the adapters beside them).

use crate::model_fused::{FUSED_SWITCH, arch_variants, cfg, worst_relative};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use stageloop::cpu::quant::Kind;
use stageloop::model::{Gpt, fused};

/// The model with every all-zero parameter (LoRA's `B` factors at init) drawn at random, so
/// the adapters change what the model computes.
fn nonzero_b(model: Gpt) -> Gpt {
    struct Fill;
    impl ModuleMapper for Fill {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let zero = p.val().abs().max().into_scalar::<f32>() == 0.0;
            if !zero {
                return p;
            }
            p.map(|t| {
                let (shape, device) = (t.shape(), t.device());
                // A trainable factor stays trainable.
                Tensor::random(shape, Distribution::Normal(0.0, 0.2), &device).require_grad()
            })
        }
    }
    model.map(&mut Fill)
}

fn tokens(device: &Device) -> Tensor<2, Int> {
    let seq: Vec<i64> = vec![1, 9, 12, 7, 15, 8, 10, 11, 13, 14, 3, 4];
    Tensor::from_data(TensorData::new(seq, [2, 6]), device)
}

/// The loss, and the gradient of every parameter that has one (flattened in traversal
/// order), with how many parameters have one.
fn loss_and_grads(model: &Gpt, device: &Device) -> (f32, Vec<f32>, usize) {
    let logits = model.forward(tokens(device));
    let loss = logits.clone().powf_scalar(2.0).mean() + logits.sum() * 0.01;
    let grads = GradientsParams::from_grads(loss.backward(), model);
    struct Collect<'a>(&'a GradientsParams, Vec<f32>, usize);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(p.id) {
                self.1.extend(g.into_data().iter::<f32>());
                self.2 += 1;
            }
        }
    }
    let mut c = Collect(&grads, Vec::new(), 0);
    model.visit(&mut c);
    (loss.into_scalar::<f32>(), c.1, c.2)
}

fn logits(model: &Gpt, device: &Device) -> Vec<f32> {
    model
        .forward(tokens(device))
        .into_data()
        .iter::<f32>()
        .collect()
}

#[test]
fn a_quantised_base_computes_what_its_dequantised_weights_compute() {
    let _switch = FUSED_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mut tried = 0;
    for (name, cfg) in arch_variants(cfg()) {
        device.seed(5);
        // Two of the four matrices adapted: the other two are frozen without an adapter.
        let adapted = nonzero_b(Gpt::new(&cfg, &device).with_lora(4, 8.0, &["qkv", "down"]));
        let q = match adapted.clone().quantized_base(Kind::Q8_0) {
            Ok(q) => q,
            Err(e) => {
                // A head size of 12 makes the output projection 48 wide: refused, named.
                assert!(
                    e.to_string().contains("whole 32-element blocks"),
                    "{name}: {e}"
                );
                continue;
            }
        };
        tried += 1;
        assert!(q.has_frozen() && !adapted.has_frozen());
        assert_eq!(q.num_params_trainable(), adapted.num_params_trainable());

        // Fused (the blocks read by the frozen product) against composite (dequantised).
        let (loss, grads, n) = loss_and_grads(&q, &device);
        assert_eq!(
            n,
            2 * 2 * cfg.layers,
            "{name}: only the A and B factors train"
        );
        fused::set_enabled(false);
        let (loss_c, grads_c, _) = loss_and_grads(&q, &device);
        let logits_c = logits(&q, &device);
        fused::set_enabled(true);
        assert!(
            (loss - loss_c).abs() <= 1e-5 * loss_c.abs().max(1.0),
            "{name}: {loss} vs {loss_c}"
        );
        let w = worst_relative(&grads, &grads_c);
        assert!(w < 2e-3, "{name}: adapter gradients differ by {w}");

        // Close to the f32 base (Q8_0's rounding), never equal.
        let f32_logits = logits(&adapted, &device);
        let scale = f32_logits.iter().fold(1f32, |m, x| m.max(x.abs()));
        let d = f32_logits
            .iter()
            .zip(&logits_c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d > 0.0 && d < 0.03 * scale, "{name}: {d} from the f32 base");

        // The decoder (blocks, adapters beside them) at every position of both rows.
        let engine = q.engine(cfg.ctx);
        let seq: Vec<u32> = vec![1, 9, 12, 7, 15, 8, 10, 11, 13, 14, 3, 4];
        let mut cache = engine.cache(2);
        let got = engine.forward(&mut cache, &[(0, &seq[..6]), (1, &seq[6..])], true);
        let d = got
            .iter()
            .zip(&logits_c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 0.02 * scale, "{name}: decoder {d} from the model");

        // Merged (blocks dequantised, adapters added): the same function as floats.
        let merged = q.merged(&cfg);
        assert!(!merged.has_frozen() && !merged.has_lora());
        let m = logits(&merged, &device);
        let d = m
            .iter()
            .zip(&logits_c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4 * scale, "{name}: merged {d}");
    }
    assert!(tried >= 3, "most variants have whole blocks");
}
