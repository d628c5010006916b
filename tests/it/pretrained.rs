//! Pretrained models in and out, without Python or the network: tiny models the tests write in
//! Hugging Face layout (config.json, safetensors under HF names, a tokenizer.json the
//! `tokenizers` crate reads) and as GGUF files with Q8_0 and Q4_1 blocks, loaded and compared
//! with the models they were written from; bad files give errors naming them.

use crate::model_fused::arch_variants;
use assert_cmd::Command;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use stageloop::model::gguf::{Value, dequantize};
use stageloop::model::gguf_write::{self, Store, quantize};
use stageloop::model::pretrained::export::{self, TokenizerFiles};
use stageloop::model::pretrained::{self, safetensors};
use stageloop::model::sample::{SampleOptions, generate};
use stageloop::model::tokenizer::Tokenizer;
use stageloop::model::{Gpt, ModelConfig};
use std::path::Path;

/// 13 characters + 7 specials: the 20 tokens of the test shapes.
fn char_tok() -> Tokenizer {
    Tokenizer::new("0123456789+=,")
}

fn logits(model: &Gpt, seq: &[u32], device: &Device) -> Vec<f32> {
    let flat: Vec<i64> = seq.iter().map(|&x| x as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [1, seq.len()]), device);
    model.forward(ids).into_data().iter::<f32>().collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Each architecture under the Hugging Face family that has it.
fn families() -> Vec<(&'static str, ModelConfig)> {
    arch_variants(crate::model_fused::cfg())
        .into_iter()
        .map(|(name, mut c)| {
            c.arch.family = Some(
                if c.arch.qk_norm {
                    "qwen3"
                } else if c.arch.qkv_bias {
                    "qwen2"
                } else {
                    "llama"
                }
                .into(),
            );
            (name, c)
        })
        .collect()
}

#[test]
fn hf_folders_round_trip_every_architecture() {
    let device = Device::flex();
    let tok = char_tok();
    for (name, cfg) in families() {
        assert_eq!(cfg.vocab, tok.vocab_size());
        device.seed(31);
        let model = Gpt::new(&cfg, &device);
        let dir = tempfile::tempdir().unwrap();
        export::write_folder(dir.path(), &model, &cfg, &TokenizerFiles::of_chars(&tok)).unwrap();
        assert!(pretrained::is_pretrained(dir.path()));
        let p = pretrained::load(dir.path(), &device).unwrap();
        assert_eq!(p.cfg.kv_heads(), cfg.kv_heads(), "{name}");
        assert_eq!(
            (
                p.cfg.arch.tied,
                p.cfg.arch.qkv_bias,
                p.cfg.arch.qk_norm,
                p.cfg.head_dim()
            ),
            (
                cfg.arch.tied,
                cfg.arch.qkv_bias,
                cfg.arch.qk_norm,
                cfg.head_dim()
            ),
            "{name}"
        );
        let seq = [1u32, 9, 12, 7, 15, 8, 10, 11, 13, 14];
        let d = max_diff(
            &logits(&model, &seq, &device),
            &logits(&p.model, &seq, &device),
        );
        assert!(
            d < 1e-5,
            "{name}: logits differ by {d} after export and reload"
        );
        // The tokenizer.json the tokenizers crate reads gives the character tokenizer's ids,
        // with BOS first (as the model was trained) and tags as single tokens.
        let text = "12+3=<think>15</think>";
        let mut want = vec![stageloop::model::tokenizer::BOS];
        want.extend(tok.encode(text).unwrap());
        assert_eq!(p.tokenizer.encode(text, true).unwrap(), want, "{name}");
        assert_eq!(p.tokenizer.decode(&want[1..], false), text);
        // Greedy continuations of the reloaded model equal the original's (CPU decoder).
        let opts = SampleOptions {
            temperature: 0.0,
            max_new_tokens: 12,
            ..Default::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let prompts = vec![want.clone()];
        let a = generate(&model, &prompts, cfg.ctx, &opts, &mut rng, &device);
        let b = generate(&p.model, &prompts, cfg.ctx, &opts, &mut rng, &device);
        assert_eq!(a[0].tokens, b[0].tokens, "{name}");
    }
}

/// llama.cpp's `permute` of a `llama` file's query and key rows.
fn permute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let hd = w.len() / cols / heads;
    let half = hd / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let (src, dst) = (h * hd + i * half + j, h * hd + 2 * j + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A byte-level BPE vocabulary for the GGUF: specials, single characters, one merge.
fn gguf_tokens(vocab: usize) -> (Vec<String>, Vec<u64>) {
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    toks.extend("0123456789+=,".chars().map(String::from));
    toks.push("12".into());
    while toks.len() < vocab {
        toks.push(format!("<extra{}>", toks.len()));
    }
    let types = (0..toks.len())
        .map(|i| if (3..=16).contains(&i) { 1 } else { 3 })
        .collect();
    (toks, types)
}

/// Write `model` as a GGUF: projections in Q8_0 (attention) and Q4_1 (MLP), norms F32, Q/K
/// permuted as llama.cpp does; and, beside it, the HF folder of the same dequantised values.
fn write_gguf(model: &Gpt, cfg: &ModelConfig, path: &Path, hf: &Path) {
    let mut gguf_tensors = Vec::new();
    let mut hf_tensors = Vec::new();
    for (name, shape, values) in export::hf_tensors(model, cfg) {
        let gname = pretrained::gguf_model::gguf_name(&name).unwrap();
        let store = if shape.len() == 1 {
            Store::F32
        } else if gname.contains("ffn") {
            Store::Q4_1
        } else {
            Store::Q8_0
        };
        let kind = store.kind();
        let stored = dequantize(kind, &quantize(&values, store), values.len());
        hf_tensors.push((name.clone(), shape.clone(), stored.clone()));
        let cols = *shape.last().unwrap();
        let on_disk = if gname.contains("attn_q.") {
            permute(&stored, cfg.heads, cols)
        } else if gname.contains("attn_k.") {
            permute(&stored, cfg.kv_heads(), cols)
        } else {
            stored
        };
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        gguf_tensors.push((gname, dims, store, on_disk));
    }
    let (toks, types) = gguf_tokens(cfg.vocab);
    let s = |x: &str| Value::Str(x.into());
    let u = |x: usize| Value::Uint(x as u64);
    let meta = [
        ("general.architecture", s("llama")),
        ("llama.embedding_length", u(cfg.d_model)),
        ("llama.block_count", u(cfg.layers)),
        ("llama.attention.head_count", u(cfg.heads)),
        ("llama.attention.head_count_kv", u(cfg.kv_heads())),
        ("llama.feed_forward_length", u(cfg.mlp)),
        ("llama.context_length", u(cfg.ctx)),
        ("llama.rope.freq_base", Value::Float(cfg.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", Value::Float(1e-5)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt2")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(toks.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::Uint).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![s("1 2")])),
        ("tokenizer.ggml.bos_token_id", u(1)),
        ("tokenizer.ggml.eos_token_id", u(2)),
        (
            "tokenizer.chat_template",
            s(
                "{% for m in messages %}<s>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}",
            ),
        ),
    ];
    gguf_write::write(path, &meta, &gguf_tensors).unwrap();
    std::fs::create_dir_all(hf).unwrap();
    safetensors::write(
        &hf.join("model.safetensors"),
        &hf_tensors,
        safetensors::Dtype::F32,
    )
    .unwrap();
    let cfg_json = export::hf_config(cfg, Some(1), &[2]);
    std::fs::write(hf.join("config.json"), cfg_json.to_string()).unwrap();
}

#[test]
fn a_gguf_with_q8_0_and_q4_1_blocks_loads_as_its_dequantised_weights() {
    let device = Device::flex();
    // Row lengths are whole blocks of 32: d_model 32, mlp 64.
    for (name, mut cfg) in families()
        .into_iter()
        .filter(|(_, c)| c.arch.family.as_deref() == Some("llama") && c.arch.rope_scaling.is_none())
    {
        cfg.vocab = 24;
        device.seed(41);
        let model = Gpt::new(&cfg, &device);
        let dir = tempfile::tempdir().unwrap();
        let (gguf, hf) = (dir.path().join("m.gguf"), dir.path().join("hf"));
        write_gguf(&model, &cfg, &gguf, &hf);
        let p = pretrained::load(&gguf, &device).unwrap();
        assert_eq!(
            (p.cfg.arch.tied, p.cfg.kv_heads()),
            (cfg.arch.tied, cfg.kv_heads()),
            "{name}"
        );
        // The same dequantised values through the HF path (no permutation there).
        let (hf_cfg, _) = pretrained::hf_config::read(&hf).unwrap();
        let want = pretrained::build(
            &hf_cfg,
            &safetensors::Tensors::open_folder(&hf).unwrap(),
            &device,
        )
        .unwrap();
        let seq = [1u32, 5, 9, 12, 7, 15, 8, 3];
        let d = max_diff(
            &logits(&want, &seq, &device),
            &logits(&p.model, &seq, &device),
        );
        assert!(
            d < 1e-5,
            "{name}: GGUF and dequantised HF logits differ by {d}"
        );
        // Quantisation changed the weights (the comparison above is not trivially of the
        // original model) but not by much.
        let orig = logits(&model, &seq, &device);
        let q = max_diff(&orig, &logits(&p.model, &seq, &device));
        assert!(
            q > 0.0 && q < 0.5,
            "{name}: quantisation moved logits by {q}"
        );
        // The decoder reading the file's blocks in place against the f32 decoder of the
        // loaded model. A whole prompt (8 rows: dequantised f32 tiles) gives the same logits
        // up to f32 rounding; one token at a time (the int8 kernel) the same up to the
        // activations' rounding.
        let (g, g_cfg, _) = pretrained::gguf_model::open(&gguf).unwrap();
        let blocks = pretrained::gguf_engine::engine(&g, &g_cfg, 16).unwrap();
        let floats = p.model.engine(16);
        let whole = |e: &stageloop::cpu::decoder::Engine| {
            let mut cache = e.cache(1);
            e.forward(&mut cache, &[(0, &seq[..])], true)
        };
        let stepwise = |e: &stageloop::cpu::decoder::Engine| {
            let mut cache = e.cache(1);
            seq.iter()
                .flat_map(|t| e.forward(&mut cache, &[(0, std::slice::from_ref(t))], true))
                .collect::<Vec<f32>>()
        };
        let f = whole(&floats);
        let scale = f.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        let tiles = max_diff(&whole(&blocks), &f);
        assert!(tiles < 1e-4 * scale, "{name}: f32 tiles differ by {tiles}");
        let q = max_diff(&stepwise(&blocks), &stepwise(&floats));
        assert!(
            q > 0.0 && q < 0.02 * scale,
            "{name}: int8 and f32 decoders differ by {q} (logits up to {scale})"
        );
        // QLoRA's `auto` freezes the file's own blocks (llama's Q/K order undone): the same
        // function as the loaded floats; re-quantising them to Q8_0 is not.
        use stageloop::model::qlora::{Quantize, freeze};
        let adapted = || p.model.clone().with_lora(2, 4.0, &["qkv", "down"]);
        let frozen = freeze(adapted(), Quantize::Auto, Some(&gguf), &p.cfg).unwrap();
        assert!(frozen.has_frozen());
        let d = max_diff(
            &logits(&frozen, &seq, &device),
            &logits(&p.model, &seq, &device),
        );
        assert!(
            d < 1e-4 * scale,
            "{name}: the file's blocks frozen differ by {d}"
        );
        let requantised = freeze(adapted(), Quantize::Q8_0, Some(&gguf), &p.cfg).unwrap();
        let d = max_diff(
            &logits(&requantised, &seq, &device),
            &logits(&p.model, &seq, &device),
        );
        assert!(d > 0.0, "{name}: Q8_0 of Q4_1 values is not exact");
        // The GGUF's vocabulary as a byte-level BPE: the merge applies, specials match whole.
        let ids = p.tokenizer.encode("</s>123+4", false).unwrap();
        assert_eq!(ids, vec![2, 16, 6, 13, 7], "{name}");
        assert_eq!(p.tokenizer.decode(&ids, true), "</s>123+4");
        assert_eq!(
            (p.tokenizer.bos, p.tokenizer.eos.clone()),
            (Some(1), vec![2])
        );
        let chat = p
            .tokenizer
            .chat(
                &[pretrained::tokenizer::Message {
                    role: "user".into(),
                    content: "1+2".into(),
                }],
                true,
            )
            .unwrap();
        assert_eq!(chat, "<s>1+2=");
    }
}

fn rewrite_safetensors(dir: &Path, f: impl Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let t = safetensors::Tensors::open_folder(dir).unwrap();
    let mut all: Vec<_> = t
        .entries
        .iter()
        .map(|(n, e)| (n.clone(), e.shape.clone(), t.f32(n, &e.shape).unwrap()))
        .collect();
    f(&mut all);
    safetensors::write(
        &dir.join("model.safetensors"),
        &all,
        safetensors::Dtype::Bf16,
    )
    .unwrap();
}

#[test]
fn bad_pretrained_files_are_errors_naming_the_file() {
    let device = Device::flex();
    let (_, cfg) = families().remove(1);
    let model = Gpt::new(&cfg, &device);
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        export::write_folder(
            dir.path(),
            &model,
            &cfg,
            &TokenizerFiles::of_chars(&char_tok()),
        )
        .unwrap();
        dir
    };
    let err = |dir: &Path| {
        format!(
            "{:#}",
            pretrained::load(dir, &device).err().expect("an error")
        )
    };
    // BF16 weights load (checked against the F32 ones below by the round trip above).
    let d = fresh();
    rewrite_safetensors(d.path(), |_| {});
    pretrained::load(d.path(), &device).unwrap();
    // A missing tensor.
    rewrite_safetensors(d.path(), |all| {
        all.retain(|(n, _, _)| !n.contains("layers.1.mlp.up_proj"))
    });
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.1.mlp.up_proj.weight is missing"),
        "{e}"
    );
    // A wrong shape.
    let d = fresh();
    rewrite_safetensors(d.path(), |all| {
        let t = all
            .iter_mut()
            .find(|(n, _, _)| n.ends_with("layers.0.mlp.gate_proj.weight"))
            .unwrap();
        t.1 = vec![t.1[1], t.1[0]];
    });
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("gate_proj.weight has shape"),
        "{e}"
    );
    // An unsupported dtype: the header says I8.
    let d = fresh();
    let w = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let at = bytes.windows(5).position(|x| x == b"\"F32\"").unwrap();
    bytes[at..at + 5].copy_from_slice(b"\"I8\" ");
    std::fs::write(&w, &bytes).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not supported"),
        "{e}"
    );
    // A NaN or infinite weight: refused, naming the tensor (it would only give garbage).
    for bad in [f32::NAN, f32::INFINITY] {
        let d = fresh();
        rewrite_safetensors(d.path(), |all| {
            let t = all
                .iter_mut()
                .find(|(n, _, _)| n.ends_with("layers.0.input_layernorm.weight"))
                .unwrap();
            t.2[1] = bad;
        });
        let e = err(d.path());
        assert!(
            e.contains("input_layernorm.weight") && e.contains("finite"),
            "{e}"
        );
    }
    // Two tensors over the same bytes: the second's offsets moved onto the first's.
    let d = fresh();
    let w = d.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let map = header.as_object_mut().unwrap();
    let names: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let offs = |v: &serde_json::Value| {
        let o = &v["data_offsets"];
        (o[0].as_u64().unwrap(), o[1].as_u64().unwrap())
    };
    // Two tensors of the same size.
    let (a, b) = names
        .iter()
        .flat_map(|a| names.iter().map(move |b| (a, b)))
        .find(|(a, b)| {
            a != b && {
                let (s, t) = offs(&map[*a]);
                let (u, v) = offs(&map[*b]);
                t - s == v - u && s < u
            }
        })
        .unwrap();
    let first = map[a]["data_offsets"].clone();
    map.get_mut(b).unwrap()["data_offsets"] = first;
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(n, b' ');
    let mut out = bytes[..8].to_vec();
    out.extend(&text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&w, &out).unwrap();
    let e = err(d.path());
    assert!(e.contains("overlap"), "{e}");
    // A truncated file.
    let d = fresh();
    let w = d.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // A tokenizer larger than the model's vocabulary.
    let d = fresh();
    let big = Tokenizer::new("0123456789+=,abc");
    std::fs::write(
        d.path().join("tokenizer.json"),
        export::char_tokenizer_json(&big).to_string(),
    )
    .unwrap();
    let e = err(d.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size"),
        "{e}"
    );
    // An unsupported architecture, through the CLI: exit status 1, the file named, no panic.
    let d = fresh();
    let c = d.path().join("config.json");
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("\"llama\"", "\"mixtral\"");
    std::fs::write(&c, text).unwrap();
    let out = Command::cargo_bin("stageloop")
        .unwrap()
        .args(["sample", d.path().to_str().unwrap(), "--prompt", "1+2="])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("config.json")
            && stderr.contains("model_type \"mixtral\" is not supported"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    // A truncated GGUF.
    let dir = tempfile::tempdir().unwrap();
    let (g, hf) = (dir.path().join("m.gguf"), dir.path().join("hf"));
    write_gguf(
        &model,
        &ModelConfig {
            vocab: 24,
            ..cfg.clone()
        },
        &g,
        &hf,
    );
    let bytes = std::fs::read(&g).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() - 64]).unwrap();
    let e = format!("{:#}", pretrained::load(&g, &device).err().unwrap());
    assert!(e.contains("m.gguf") && e.contains("truncated"), "{e}");
}

#[test]
fn chat_templates_come_from_chat_template_jinja_and_hostile_ones_are_bounded() {
    use stageloop::model::pretrained::tokenizer::{HfTokenizer, Message};
    let d = tempfile::tempdir().unwrap();
    let tok = char_tok();
    std::fs::write(
        d.path().join("tokenizer.json"),
        export::char_tokenizer_json(&tok).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        r#"{"chat_template": "from the config"}"#,
    )
    .unwrap();
    let specials = stageloop::model::pretrained::hf_config::Specials {
        bos: Some(stageloop::model::tokenizer::BOS),
        eos: vec![stageloop::model::tokenizer::EOS],
    };
    let load = || HfTokenizer::from_folder(d.path(), &specials).unwrap();
    let user = [Message {
        role: "user".into(),
        content: "1+2=".into(),
    }];
    assert_eq!(load().chat(&user, true).unwrap(), "from the config");
    // transformers 4.43+ keep it in chat_template.jinja, which wins; the source is named.
    let jinja = d.path().join("chat_template.jinja");
    std::fs::write(
        &jinja,
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let t = load();
    assert_eq!(t.chat(&user, true).unwrap(), "<user>1+2=");
    assert!(
        t.chat_template_source
            .unwrap()
            .ends_with("chat_template.jinja")
    );
    // Nested loops that would run for minutes run out of fuel instead.
    std::fs::write(
        &jinja,
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = load().chat(&user, true).unwrap_err().to_string();
    assert!(e.contains("chat template"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A template's own error text reaches the terminal inert.
    std::fs::write(&jinja, "{{ raise_exception('bad \u{1b}]0;T\u{7} title') }}").unwrap();
    let e = load().chat(&user, true).unwrap_err().to_string();
    assert!(
        e.contains("bad") && !e.contains(['\u{1b}', '\u{7}']),
        "{e:?}"
    );
    // A huge template is refused before anything is rendered or tokenised.
    std::fs::write(&jinja, "x".repeat(2 << 20)).unwrap();
    assert!(HfTokenizer::from_folder(d.path(), &specials).is_err());
}
