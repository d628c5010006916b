//! LoRA: adapters leave the model unchanged until trained, the split product equals the merged
//! weights, only the adapters train, checkpoints hold only the adapters, and a LoRA stage on a
//! pretrained model runs, evaluates, exports merged weights and resumes after a kill onto the
//! same loss curve.

use crate::common;
use crate::model_fused::{arch_variants, cfg};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use stageloop::model::checkpoint;
use stageloop::model::pretrained::export::{self, TokenizerFiles};
use stageloop::model::sample::{SampleOptions, generate};
use stageloop::model::tokenizer::Tokenizer;
use stageloop::model::{Gpt, lora};
use stageloop::runfs;
use std::collections::BTreeMap;
use std::path::Path;

const TARGETS: [&str; 4] = ["qkv", "out", "gate_up", "down"];

fn tokens(device: &Device) -> Tensor<2, Int> {
    let seq: Vec<i64> = vec![1, 9, 12, 7, 15, 8, 10, 11, 13, 14, 3, 4];
    Tensor::from_data(TensorData::new(seq, [2, 6]), device)
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Parameters with a gradient, counted.
fn with_grads(model: &Gpt, grads: &GradientsParams) -> usize {
    struct Count<'a>(&'a GradientsParams, usize);
    impl burn::module::ModuleVisitor for Count<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if self.0.get::<D>(p.id).is_some() {
                self.1 += 1;
            }
        }
    }
    let mut c = Count(grads, 0);
    model.visit(&mut c);
    c.1
}

#[test]
fn adapters_train_alone_and_merge_into_the_same_model() {
    let device = Device::flex().autodiff();
    for (name, cfg) in arch_variants(cfg()) {
        device.seed(5);
        let base = Gpt::new(&cfg, &device);
        let before = values(base.forward(tokens(&device)));
        let adapted = base.with_lora(4, 8.0, &TARGETS);
        assert!(adapted.has_lora());
        // B starts at zero: attaching adapters changes nothing.
        let at_init = values(adapted.forward(tokens(&device)));
        assert!(max_diff(&before, &at_init) < 1e-5, "{name}");

        // One optimiser step: only the adapters have gradients, and the model moves.
        let loss = adapted.forward(tokens(&device)).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &adapted);
        assert_eq!(
            with_grads(&adapted, &grads),
            2 * TARGETS.len() * cfg.layers,
            "{name}: only the A and B factors train"
        );
        let mut optim = AdamWConfig::new().init();
        let trained = optim.step(1e-2, adapted, grads);
        let split = values(trained.forward(tokens(&device)));
        assert!(
            max_diff(&before, &split) > 1e-4,
            "{name}: the step moved nothing"
        );

        // The merged model (W + s·A·B, no adapters) computes the same logits.
        let merged = trained.merged(&cfg);
        assert!(!merged.has_lora());
        let d = max_diff(&split, &values(merged.forward(tokens(&device))));
        assert!(d < 1e-4, "{name}: split and merged differ by {d}");
    }
}

fn char_tok() -> Tokenizer {
    Tokenizer::new("0123456789+=,")
}

/// A tiny Llama-shaped HF folder (tied head, grouped-query heads) for the arith task (whose
/// alphabet the character tokenizer covers).
pub(crate) fn pretrained_folder(dir: &Path) {
    let tok = char_tok();
    let mut cfg = cfg();
    cfg.vocab = tok.vocab_size();
    cfg.arch.kv_heads = Some(1);
    cfg.arch.tied = true;
    cfg.arch.family = Some("llama".into());
    let device = Device::flex();
    device.seed(11);
    let model = Gpt::new(&cfg, &device);
    export::write_folder(dir, &model, &cfg, &TokenizerFiles::of_chars(&tok)).unwrap();
}

const SPEC: &str = r#"
name = "lora"
seed = 3
[model]
from = "base"
ctx = 48
chat = false
[task]
name = "arith"
heldout = 8
[[stage]]
name = "sft"
kind = "sft"
steps = 10
batch = 4
lr = 1e-2
warmup = 0
examples = 40
checkpoint_every = 4
sample_every = 100
lora = { rank = 4, targets = ["q_proj", "v_proj", "down_proj"] }
[[stage]]
name = "eval"
kind = "eval"
init = "sft"
prompts = 4
k = 2
max_new_tokens = 12
"#;

pub(crate) fn losses(run: &Path) -> BTreeMap<u64, f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

pub(crate) fn latest_run(exp: &Path, stage: &str) -> runfs::RunDir {
    runfs::latest_run_of(&exp.join("runs"), stage).unwrap().0
}

fn run(exp: &Path, stage: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
        .arg("run")
        .arg(exp)
        .args(["--stage", stage])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_lora_stage_on_a_pretrained_model_checkpoints_adapters_evaluates_exports_and_resumes() {
    let a = tempfile::tempdir().unwrap();
    pretrained_folder(&a.path().join("base"));
    std::fs::write(a.path().join("experiment.toml"), SPEC).unwrap();
    run(a.path(), "sft");
    run(a.path(), "eval");
    let sft = latest_run(a.path(), "sft");
    let ck = runfs::checkpoint::latest(&sft.path).unwrap();
    assert!(ck.ends_with("step-000010"), "{}", ck.display());
    // Only the adapters, and what they adapt.
    assert!(ck.join(lora::ADAPTER_WEIGHTS).is_file());
    assert!(!ck.join(checkpoint::WEIGHTS).exists());
    let meta = lora::read_meta(&ck).unwrap();
    assert_eq!((meta.rank, meta.alpha), (4, 8.0));
    assert_eq!(meta.targets, ["qkv", "down"]);
    assert_eq!(
        meta.base,
        std::fs::canonicalize(a.path().join("base")).unwrap()
    );
    let base_size = std::fs::metadata(a.path().join("base/model.safetensors"))
        .unwrap()
        .len();
    let adapter_size = std::fs::metadata(ck.join(lora::ADAPTER_WEIGHTS))
        .unwrap()
        .len();
    assert!(adapter_size < base_size, "{adapter_size} vs {base_size}");
    let l = losses(&sft.path);
    assert!(l[&10] < l[&1], "LoRA SFT did not lower the loss: {:?}", l);
    // The eval ran on the adapted model.
    let eval = latest_run(a.path(), "eval");
    assert!(eval.eval_json().is_file());

    // Export merges the adapters; the folder reloads with the same greedy continuations.
    let device = Device::flex();
    let (model, cfg, text) = checkpoint::load_model(&ck, &device).unwrap();
    assert!(model.has_lora());
    let out = a.path().join("exported");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
        .arg("export")
        .arg(&ck)
        .args(["--format", "hf", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (reloaded, _, _) = checkpoint::load_model(&out, &device).unwrap();
    assert!(!reloaded.has_lora());
    let prompt = text.prompt_ids("12+7=").unwrap();
    let opts = SampleOptions {
        temperature: 0.0,
        max_new_tokens: 10,
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let g1 = generate(
        &model,
        std::slice::from_ref(&prompt),
        cfg.ctx,
        &opts,
        &mut rng,
        &device,
    );
    let g2 = generate(&reloaded, &[prompt], cfg.ctx, &opts, &mut rng, &device);
    assert_eq!(g1[0].tokens, g2[0].tokens);

    // Killed after its first checkpoint and run again: the same loss curve.
    resumes_onto(a.path(), SPEC, &l);
}

/// `spec` over a copy of `exp`'s base folder, its `sft` stage killed after its step-4
/// checkpoint and run again, logs the `uninterrupted` losses of every step. (The same base
/// files: the device seed is shared by tests running at once.)
pub(crate) fn resumes_onto(exp: &Path, spec: &str, uninterrupted: &BTreeMap<u64, f64>) {
    let b = tempfile::tempdir().unwrap();
    common::copy_folder(&exp.join("base"), &b.path().join("base"));
    std::fs::write(b.path().join("experiment.toml"), spec).unwrap();
    common::kill_at_checkpoint(b.path(), "sft", "step-000004");
    run(b.path(), "sft");
    let resumed = losses(&latest_run(b.path(), "sft").path);
    assert_eq!(resumed.len(), uninterrupted.len());
    for (step, loss) in uninterrupted {
        let r = resumed[step];
        assert!(
            (r - loss).abs() < 1e-4,
            "step {step}: {r} after resuming, {loss} uninterrupted"
        );
    }
}

#[test]
fn lora_specs_and_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let bad = SPEC
        .replace("lora = { rank = 4,", "lora = { rank = 0,")
        .replace("\"q_proj\"", "\"q_projj\"");
    std::fs::write(dir.path().join("experiment.toml"), bad).unwrap();
    std::fs::create_dir(dir.path().join("base")).unwrap();
    let err = format!("{:#}", stageloop::spec::load(dir.path()).unwrap_err());
    assert!(err.contains("lora rank must be between 1"), "{err}");
    assert!(err.contains("unknown LoRA target `q_projj`"), "{err}");

    // A LoRA checkpoint whose base is gone: the error names adapter.json and the base.
    let ck = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let mut cfg = cfg();
    cfg.vocab = char_tok().vocab_size();
    let model = Gpt::new(&cfg, &device).with_lora(2, 4.0, &TARGETS);
    let meta = lora::AdapterMeta {
        rank: 2,
        alpha: 4.0,
        targets: TARGETS.iter().map(|t| t.to_string()).collect(),
        base: dir.path().join("nowhere"),
        quantize: None,
    };
    checkpoint::save_model(
        ck.path(),
        &model,
        &cfg,
        &stageloop::model::text::Text::Chars(char_tok()),
        Some(&meta),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        checkpoint::load_model(ck.path(), &device).unwrap_err()
    );
    assert!(
        err.contains("adapter.json") && err.contains("nowhere"),
        "{err}"
    );
}
