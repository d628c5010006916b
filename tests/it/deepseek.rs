//! DeepSeek's blocks from a spec (`[model.moe]`, `[model.mla]`, `[model.mtp]`): a tiny model
//! with routed experts, latent attention and a multi-token-prediction depth pretrains, runs
//! GRPO and evaluates end to end, logs its experts' loads and balances them, saves its routing
//! biases, records its KV cache per token, resumes onto the same loss curve, and is refused
//! where it cannot go (HF export, the quantised CPU decoder, keys out of range). The MTP
//! depth reads the next token and nothing after it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use stageloop::runfs::{self, metrics::parse_metric_line};

use crate::common;

const MOE: &str = r#"name = "moe"
seed = 3

[model]
d_model = 32
layers = 2
heads = 2
mlp = 96
ctx = 40

[model.moe]
experts = 6
top_k = 2
shared = 1
bias_rate = 0.01
aux_loss = 0.001

[model.mla]
kv_rank = 12
rope_dim = 4

[model.mtp]
weight = 0.3

[task]
name = "arith"
difficulty = 1
heldout = 40

[[stage]]
name = "pre"
kind = "pretrain"
steps = 30
batch = 16
lr = 3e-3
warmup = 3
checkpoint_every = 10
log_every = 1

[[stage]]
name = "rl"
kind = "grpo"
init = "pre"
steps = 2
prompts = 4
group_size = 4
max_new_tokens = 8

[[stage]]
name = "ev"
kind = "eval"
init = "rl"
prompts = 8
k = 2
"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stageloop")
}

fn run(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(bin()).args(args).arg(dir).output().unwrap()
}

/// Each logged step's metrics.
fn rows(run: &Path) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
    for row in text.lines().filter_map(|l| parse_metric_line(l).ok()) {
        let at = out.entry(row.step).or_default();
        for (k, v) in row.values {
            if let Some(v) = v {
                at.insert(k, v);
            }
        }
    }
    out
}

fn run_of(exp: &Path, stage: &str) -> runfs::RunDir {
    runfs::latest_run_of(&exp.join("runs"), stage).unwrap().0
}

#[test]
fn moe_model_trains_balances_and_samples_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), MOE).unwrap();
    let out = run(&["run"], d.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pre = run_of(d.path(), "pre");
    let metrics = rows(&pre.path);
    assert_eq!(metrics.len(), 30);
    for (step, m) in &metrics {
        // Loads are relative to an even split, so the experts' mean is 1.
        let loads: Vec<f64> = (0..6).map(|i| m[&format!("moe/load/{i:02}")]).collect();
        let mean = loads.iter().sum::<f64>() / 6.0;
        assert!((mean - 1.0).abs() < 1e-9, "step {step}: {loads:?}");
        assert!(
            m["moe/load_max"] >= 1.0 && m["moe/load_min"] <= 1.0,
            "step {step}"
        );
        assert!(m["moe/aux_loss"] > 0.0, "step {step}");
        assert!(m["mtp/loss"] > 0.0, "step {step}");
    }
    // The MTP depth learns: its loss falls.
    let mtp = |s: u64| metrics[&s]["mtp/loss"];
    assert!(mtp(30) < mtp(1) - 0.3, "mtp/loss {} → {}", mtp(1), mtp(30));
    // Balancing narrows the spread between the first steps and the last ones.
    let spread = |s: u64| metrics[&s]["moe/load_max"] - metrics[&s]["moe/load_min"];
    let early: f64 = (1..=5).map(spread).sum();
    let late: f64 = (26..=30).map(spread).sum();
    assert!(late < early, "spread {early} → {late}");

    // The routing biases are weights of the checkpoint, and moved.
    let ckpt = runfs::checkpoint::latest(&pre.path).unwrap();
    let file = [ckpt.join("model.safetensors")];
    let st = stageloop::model::pretrained::safetensors::Tensors::open(&file).unwrap();
    let bias = st.f32("blocks.0.moe.bias", &[6]).unwrap();
    assert!(bias.iter().any(|&b| b != 0.0), "the biases moved: {bias:?}");
    // The config records the resolved experts: mlp 96 over top_k + shared = 3 experts' width.
    let cfg = std::fs::read_to_string(ckpt.join("config.json")).unwrap();
    assert!(cfg.contains("\"expert_mlp\": 32"), "{cfg}");

    // Sampling with the MTP depth's drafts is exact: greedy, the same tokens as plain
    // decoding, whether drafts are kept or not.
    {
        use rand::SeedableRng;
        use stageloop::model::sample::{SampleOptions, Sampler};
        let device = burn::tensor::Device::flex();
        let (model, _, _) = stageloop::model::checkpoint::load_model(&ckpt, &device).unwrap();
        let setup = stageloop::stages::common::Setup::from_checkpoint(&ckpt, None).unwrap();
        let opts = SampleOptions {
            temperature: 0.0,
            max_new_tokens: 12,
            ignore_eos: true,
            engine: false,
            ..Default::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (mut made, mut kept) = (0, 0);
        for p in setup.task.heldout().iter().take(6) {
            let ids = setup.prompt_ids(&p.prompt).unwrap();
            let plain = Sampler::new(&model).generate(
                std::slice::from_ref(&ids),
                40,
                &opts,
                &mut rng,
                &device,
            );
            let d =
                stageloop::model::speculative::generate(&model, &ids, 12, &opts, &mut rng, &device)
                    .unwrap();
            assert_eq!(d.completion.tokens, plain[0].tokens, "{}", p.prompt);
            for (a, b) in d.completion.logprobs.iter().zip(&plain[0].logprobs) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            made += d.drafted;
            kept += d.accepted;
        }
        assert!(
            kept > 0 && kept < made,
            "both paths: {kept} of {made} drafts kept"
        );
    }

    // run.json says what the model is: latent 12 + rope 4 floats a token in each of 2 layers.
    let st = runfs::RunStatus::load(&pre.path).unwrap();
    let facts = st.model.expect("a training run records its model");
    assert_eq!(facts.kv_bytes_per_token, 2 * (12 + 4) * 4);
    assert!(
        facts.blocks.iter().any(|b| b.starts_with("moe: 6 routed")),
        "{facts:?}"
    );
    assert!(
        facts.blocks.iter().any(|b| b == "mla: latent 12 + rope 4"),
        "{facts:?}"
    );

    // GRPO trained and balanced too; the eval sampled through burn's ops.
    let rl = rows(&run_of(d.path(), "rl").path);
    assert!(
        rl.values().all(|m| m.contains_key("moe/load_max")),
        "{rl:?}"
    );
    assert!(run_of(d.path(), "ev").path.join("eval.json").is_file());

    // With latent attention it exports as transformers' DeepseekV3 (the MTP depth left out,
    // said); `benches/deepseek_export_check.py` loads such a folder in transformers.
    let hf = d.path().join("hf");
    let out = Command::new(bin())
        .args(["export"])
        .arg(&pre.path)
        .args(["--format", "hf", "--out"])
        .arg(&hf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("multi-token-prediction depth is left out"),
        "{err}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "DeepseekV3ForCausalLM");
    assert_eq!(
        (
            cfg["n_routed_experts"].as_u64(),
            cfg["first_k_dense_replace"].as_u64()
        ),
        (Some(6), Some(0))
    );
    assert_eq!(
        (
            cfg["kv_lora_rank"].as_u64(),
            cfg["qk_rope_head_dim"].as_u64()
        ),
        (Some(12), Some(4))
    );
    let st =
        stageloop::model::pretrained::safetensors::Tensors::open(&[hf.join("model.safetensors")])
            .unwrap();
    // d 32, 2 heads of 16: queries 2·(16 + 4), the latent 12 + the rotary key 4.
    st.f32("model.layers.0.self_attn.q_proj.weight", &[40, 32])
        .unwrap();
    st.f32(
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        &[16, 32],
    )
    .unwrap();
    st.f32("model.layers.0.self_attn.kv_b_proj.weight", &[64, 12])
        .unwrap();
    st.f32("model.layers.1.mlp.experts.5.down_proj.weight", &[32, 32])
        .unwrap();
    let bias = st
        .f32("model.layers.1.mlp.gate.e_score_correction_bias", &[6])
        .unwrap();
    assert!(bias.iter().any(|&b| b != 0.0));
    assert!(
        st.f32("model.layers.2.mlp.gate.weight", &[6, 32]).is_err(),
        "two layers"
    );

    // Where a model with routed experts cannot go, said plainly.
    let out = Command::new(bin())
        .args(["sample"])
        .arg(&pre.path)
        .args(["--prompt", "1+2=", "--quantize", "q8_0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("routed experts"),
        "{err}"
    );
    let out = Command::new(bin())
        .args(["sample"])
        .arg(&pre.path)
        .args(["--prompt", "1+2=", "--max-new-tokens", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn moe_stage_resumes_onto_the_same_loss_curve() {
    let losses = |exp: &Path| -> BTreeMap<u64, (f64, f64)> {
        rows(&run_of(exp, "pre").path)
            .into_iter()
            .map(|(s, m)| (s, (m["loss"], m["moe/load_max"])))
            .collect()
    };
    let a = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("experiment.toml"), MOE).unwrap();
    assert!(run(&["run", "--stage", "pre"], a.path()).status.success());
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("experiment.toml"), MOE).unwrap();
    common::kill_at_checkpoint(b.path(), "pre", "step-000020");
    let again = run(&["run", "--stage", "pre"], b.path());
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("resuming"));
    // Same losses and the same routing after the resume: the biases came back with the weights.
    assert_eq!(losses(a.path()), losses(b.path()));
}

#[test]
fn moe_keys_are_checked_and_name_their_place() {
    let load = |text: &str| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("experiment.toml"), text).unwrap();
        stageloop::spec::load(d.path())
            .expect_err("invalid")
            .0
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = load(&MOE.replace("experts = 6", "experts = 1"));
    assert!(
        e.contains("experiment.toml:12:") && e.contains("experts must be between 2"),
        "{e}"
    );
    let e = load(&MOE.replace("top_k = 2", "top_k = 7"));
    assert!(
        e.contains("experiment.toml:13:") && e.contains("top_k"),
        "{e}"
    );
    let e = load(&MOE.replace("shared = 1", "shared = 1\ngroups = 2"));
    assert!(
        e.contains("experiment.toml:15:") && e.contains("groups"),
        "{e}"
    );
}

/// The MTP depth's position `i` predicts token `i + 2` from the trunk at `i` and token `i + 1`:
/// changing token `j` changes positions from `j - 1` on and none before.
#[test]
fn mtp_depth_reads_the_next_token_and_nothing_later() {
    use burn::module::Module;
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use stageloop::model::config::{Arch, MtpSpec};
    use stageloop::model::{Gpt, ModelConfig};
    let c = ModelConfig {
        vocab: 20,
        d_model: 32,
        layers: 2,
        heads: 4,
        mlp: 64,
        ctx: 40,
        rope_theta: 10_000.0,
        arch: Arch {
            mtp: Some(MtpSpec::default()),
            ..Arch::default()
        },
    };
    let device = Device::flex().autodiff();
    device.seed(2);
    let model = Gpt::new(&c, &device);
    let run = |seq: &[i64]| -> Vec<f32> {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(seq.to_vec(), [1, seq.len()]), &device);
        let _ = model.hidden(ids);
        let (h, weight) = model.mtp_hidden().expect("a training pass ran");
        assert_eq!(weight, 0.3);
        assert!(model.mtp_hidden().is_none(), "taken once");
        assert_eq!(h.dims(), [1, seq.len() - 1, 32]);
        h.into_data().iter::<f32>().collect()
    };
    let a = [1i64, 5, 7, 3, 9, 2, 4, 6];
    let base = run(&a);
    let mut b = a;
    b[5] = 11;
    let other = run(&b);
    let row = |v: &[f32], i: usize| v[i * 32..(i + 1) * 32].to_vec();
    for i in 0..4 {
        assert_eq!(
            row(&base, i),
            row(&other, i),
            "position {i} must not see token 5"
        );
    }
    assert_ne!(
        row(&base, 4),
        row(&other, 4),
        "position 4 reads token 5 as its next"
    );
    // An inference pass keeps nothing.
    let infer = model.valid();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(a.to_vec(), [1, 8]), &Device::flex());
    let _ = infer.hidden(ids);
    assert!(infer.mtp_hidden().is_none());
}

/// Routed experts without latent attention have no transformers architecture: the export is
/// refused with the reason, before anything is written.
#[test]
fn moe_without_mla_is_not_exported() {
    use stageloop::model::config::{Arch, MoeSpec};
    use stageloop::model::pretrained::export;
    use stageloop::model::{Gpt, ModelConfig};
    let cfg = ModelConfig {
        vocab: 20,
        d_model: 16,
        layers: 1,
        heads: 2,
        mlp: 8,
        ctx: 16,
        rope_theta: 10_000.0,
        arch: Arch {
            moe: Some(MoeSpec {
                experts: 4,
                top_k: 1,
                shared: 1,
                expert_mlp: Some(8),
                bias_rate: 0.001,
                aux_loss: 0.0,
            }),
            ..Arch::default()
        },
    };
    let model = Gpt::new(&cfg, &burn::tensor::Device::flex());
    let tok = stageloop::model::tokenizer::Tokenizer::new("0123456789+=");
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("hf");
    let e = export::write_folder(&out, &model, &cfg, &export::TokenizerFiles::of_chars(&tok))
        .unwrap_err()
        .to_string();
    assert!(e.contains("DeepseekV3") && e.contains("[model.mla]"), "{e}");
    assert!(!out.exists());
}
