//! QLoRA: a LoRA model whose block matrices are frozen as quantised blocks computes what the
//! same model with those blocks dequantised computes (values and adapter gradients, fused ops
//! against burn's composite ops), trains only its adapters, stays close to its f32 base, and
//! samples the same through the CPU decoder (blocks dequantised, adapters merged).

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

        // The decoder (blocks dequantised, adapters merged) at every position of both rows.
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

        // The decoder reading the frozen blocks as they are, adapters added beside them
        // (`engine_adapted`): the same function, through the integer kernels.
        let kept = q.engine_adapted(cfg.ctx, None).unwrap();
        let mut cache = kept.cache(2);
        let got = kept.forward(&mut cache, &[(0, &seq[..6]), (1, &seq[6..])], true);
        let d = got
            .iter()
            .zip(&logits_c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 0.02 * scale,
            "{name}: blocks and adapters {d} from the model"
        );
        // In a bf16 run the frozen products and the decoder read bf16 panels of the blocks,
        // packed once and kept (`QMatrix::bf16_panels`): close to the blocks' function.
        if stageloop::cpu::bf16::available() {
            use stageloop::cpu::gemm::with_bf16;
            let (_, (loss_b, grads_b, got)) = with_bf16(true, || {
                let (l, g, _) = loss_and_grads(&q, &device);
                let engine = q.engine(cfg.ctx);
                let mut cache = engine.cache(2);
                let got = engine.forward(&mut cache, &[(0, &seq[..6]), (1, &seq[6..])], true);
                (l, g, got)
            });
            assert!(
                (loss_b - loss_c).abs() <= 1e-2 * loss_c.abs().max(1.0) && loss_b != loss_c,
                "{name}: bf16 loss {loss_b} vs {loss_c}"
            );
            // bf16 rounds every product's operands: the gradients as a whole stay close (a
            // few of the smallest components can differ by more in relative terms).
            let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
            let apart = norm(&mut grads_b.iter().zip(&grads_c).map(|(a, b)| a - b));
            let rel = apart / norm(&mut grads_c.iter().copied());
            assert!(rel < 0.02, "{name}: bf16 adapter gradients {rel} apart");
            let d = got
                .iter()
                .zip(&logits_c)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 0.03 * scale, "{name}: bf16 decoder {d} from the model");
            let frozen = q.frozen_layer(0)[0].clone().expect("qkv is frozen").0;
            let (_, (p1, p2)) =
                with_bf16(true, || (frozen.0.bf16_panels(), frozen.0.bf16_panels()));
            assert!(std::sync::Arc::ptr_eq(&p1.unwrap(), &p2.unwrap()));
            assert!(
                frozen.0.bf16_panels().is_none(),
                "f32 products outside bf16"
            );
        }
        // A plain LoRA model quantised to Q8_0 at load, its adapters apart in f32: close to
        // its f32 function (the base's rounding only).
        let q8 = adapted
            .engine_adapted(cfg.ctx, Some(stageloop::model::gguf_write::Store::Q8_0))
            .unwrap();
        let mut cache = q8.cache(2);
        let got = q8.forward(&mut cache, &[(0, &seq[..6]), (1, &seq[6..])], true);
        let d = got
            .iter()
            .zip(&f32_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 0.03 * scale,
            "{name}: q8_0 with adapters apart {d} from f32"
        );

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

const SPEC: &str = r#"
name = "qlora"
seed = 3
[model]
from = "base"
ctx = 48
chat = false
quantize = "q8_0"
[task]
name = "arith"
heldout = 8
[[stage]]
name = "sft"
kind = "sft"
steps = 8
batch = 4
lr = 1e-2
warmup = 0
examples = 40
checkpoint_every = 4
sample_every = 100
lora = { rank = 4 }
[[stage]]
name = "rl"
kind = "grpo"
init = "sft"
steps = 2
prompts = 2
group_size = 4
max_new_tokens = 8
lr = 1e-3
warmup = 0
lora = { rank = 4 }
"#;

fn stageloop(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
        .args(args)
        .output()
        .unwrap()
}

/// A QLoRA SFT stage then a QLoRA GRPO stage from its adapters, on a pretrained folder
/// quantised to Q8_0 at load: both run, the SFT lowers its loss, its checkpoints hold only
/// adapters, and a run killed after its first checkpoint resumes onto the same loss curve.
#[test]
fn qlora_stages_train_checkpoint_adapters_and_resume() {
    use crate::lora::{latest_run, losses};
    let a = tempfile::tempdir().unwrap();
    crate::lora::pretrained_folder(&a.path().join("base"));
    std::fs::write(a.path().join("experiment.toml"), SPEC).unwrap();
    let exp = a.path().as_os_str();
    let out = stageloop(&["run".as_ref(), exp]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sft = latest_run(a.path(), "sft");
    let l = losses(&sft.path);
    assert_eq!(l.len(), 8);
    assert!(l[&8] < l[&1], "QLoRA SFT did not lower the loss: {l:?}");
    let ck = stageloop::runfs::checkpoint::latest(&sft.path).unwrap();
    assert!(ck.join(stageloop::model::lora::ADAPTER_WEIGHTS).is_file());
    assert!(!ck.join(stageloop::model::checkpoint::WEIGHTS).exists());
    // The checkpoint says how its base was held, and loads with the same frozen blocks.
    let meta = stageloop::model::lora::read_meta(&ck).unwrap();
    assert_eq!(meta.quantize, Some(stageloop::spec::Quantize::Q8_0));
    let (loaded, _, _) =
        stageloop::model::checkpoint::load_model(&ck, &burn::tensor::Device::flex()).unwrap();
    assert!(loaded.has_frozen() && loaded.has_lora());
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sft.path.join("run.json")).unwrap()).unwrap();
    assert_eq!(status["frozen_base"], "q8_0");
    let rl = latest_run(a.path(), "rl");
    let rl_lines = std::fs::read_to_string(rl.path.join("metrics.jsonl")).unwrap();
    assert_eq!(rl_lines.lines().count(), 2, "{rl_lines}");

    // Killed after its first checkpoint and run again: the same losses.
    crate::lora::resumes_onto(a.path(), SPEC, &l);
}

/// `quantize` with a stage that trains every weight is refused, naming the stage and the key.
#[test]
fn quantize_without_lora_is_refused() {
    let a = tempfile::tempdir().unwrap();
    crate::lora::pretrained_folder(&a.path().join("base"));
    let spec = SPEC.replace("lora = { rank = 4 }\n[[stage]]", "[[stage]]");
    std::fs::write(a.path().join("experiment.toml"), spec).unwrap();
    let out = stageloop(&["check".as_ref(), a.path().as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("quantize") && err.contains("stage `sft` trains every weight"),
        "{err}"
    );
    assert!(err.contains("experiment.toml:8"), "{err}");
}
