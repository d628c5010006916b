//! The KV cache and the CPU decoder (`cpu::decoder::Engine`) compute the same function as the full
//! forward pass of the burn model.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stageloop::cpu::pair::with_pair;
use stageloop::model::sample::{SampleOptions, Sampler, generate};
use stageloop::model::{Gpt, KvCache, ModelConfig};

fn cfg() -> ModelConfig {
    ModelConfig {
        vocab: 20,
        d_model: 32,
        layers: 2,
        heads: 4,
        mlp: 64,
        ctx: 40,
        rope_theta: 10_000.0,
        arch: Default::default(),
    }
}

fn ids(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

#[test]
fn incremental_logits_match_the_full_forward() {
    let device = Device::flex();
    for (name, c) in crate::model_fused::arch_variants(cfg()) {
        device.seed(7);
        let model = Gpt::new(&c, &device);
        incremental_matches_full(&model, &device, name);
    }
}

/// DeepSeek's blocks (routed experts, latent attention, both) through the KV cache of burn's
/// path, which is how they sample: the same logits as the full forward pass.
#[test]
fn deepseek_blocks_decode_incrementally_like_the_full_forward() {
    let device = Device::flex();
    for (name, c) in deepseek_variants() {
        device.seed(11);
        let model = Gpt::new(&c, &device);
        assert!(!model.decodes_on_cpu(), "{name}");
        incremental_matches_full(&model, &device, name);
    }
}

/// [`cfg`] with routed experts, with latent attention, and with both.
fn deepseek_variants() -> Vec<(&'static str, ModelConfig)> {
    use stageloop::model::config::{MlaSpec, MoeSpec};
    let moe = MoeSpec {
        experts: 4,
        top_k: 2,
        shared: 1,
        expert_mlp: Some(16),
        bias_rate: 0.001,
        aux_loss: 0.0,
    };
    let mla = MlaSpec {
        kv_rank: Some(12),
        rope_dim: Some(4),
    };
    [
        ("moe", Some(moe), None),
        ("mla", None, Some(mla)),
        ("moe+mla", Some(moe), Some(mla)),
    ]
    .into_iter()
    .map(|(name, moe, mla)| {
        let mut c = cfg();
        c.arch.moe = moe;
        c.arch.mla = mla;
        (name, c)
    })
    .collect()
}

/// DeepSeek's blocks sample through burn's ops with left-padded batches: each row of a batch
/// of prompts of different lengths, greedy, gets exactly the tokens it gets alone (padding
/// never leaks into a real position, not even as NaN through a fully masked padding query),
/// with and without the KV cache.
#[test]
fn deepseek_blocks_sample_padded_batches_like_single_rows() {
    let device = Device::flex();
    let prompts = vec![vec![1, 9, 12], vec![1, 15, 8, 10, 11, 7], vec![1, 13]];
    for (name, c) in deepseek_variants() {
        device.seed(13);
        let model = Gpt::new(&c, &device);
        for use_cache in [true, false] {
            let opts = SampleOptions {
                temperature: 0.0,
                max_new_tokens: 12,
                ignore_eos: true,
                use_cache,
                ..Default::default()
            };
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let batch = generate(&model, &prompts, 40, &opts, &mut rng, &device);
            for (p, got) in prompts.iter().zip(&batch) {
                let alone = generate(
                    &model,
                    std::slice::from_ref(p),
                    40,
                    &opts,
                    &mut rng,
                    &device,
                );
                assert_eq!(
                    got.tokens, alone[0].tokens,
                    "{name}, cache {use_cache}, {p:?}"
                );
                let d = max_diff(&got.logprobs, &alone[0].logprobs);
                assert!(d < 1e-4, "{name}: logprob diff {d}");
            }
        }
    }
}

fn incremental_matches_full(model: &Gpt, device: &Device, name: &str) {
    let (model, device) = (model, device.clone());
    let seq: Vec<u32> = vec![1, 9, 12, 7, 15, 8, 10, 11, 13, 14];
    let full = full_logits(model, &seq, &device);
    let mut cache = KvCache::new(2);
    let mut inc: Vec<f32> = model
        .forward_cached(ids(&[seq[..4].to_vec()], &device), &mut cache, None)
        .into_data()
        .iter::<f32>()
        .collect();
    for &t in &seq[4..] {
        inc.extend(
            model
                .forward_cached(ids(&[vec![t]], &device), &mut cache, None)
                .into_data()
                .iter::<f32>(),
        );
    }
    let max = max_diff(&full, &inc);
    assert!(max < 1e-4, "{name}: max abs diff {max}");
}

#[test]
fn greedy_decoding_is_identical_with_and_without_the_cache() {
    let device = Device::flex();
    device.seed(3);
    let model = Gpt::new(&cfg(), &device);
    // Prompts of different lengths exercise left padding and rows leaving the batch.
    let prompts = vec![vec![1, 9, 12], vec![1, 15, 8, 10, 11, 7], vec![1, 13]];
    let mut opts = SampleOptions {
        temperature: 0.0,
        max_new_tokens: 20,
        engine: false,
        ..Default::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cached = generate(&model, &prompts, 40, &opts, &mut rng, &device);
    opts.use_cache = false;
    let plain = generate(&model, &prompts, 40, &opts, &mut rng, &device);
    for (a, b) in cached.iter().zip(&plain) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.finished, b.finished);
        assert!(max_diff(&a.logprobs, &b.logprobs) < 1e-4);
    }
    // Padding does not change a prompt's continuation: alone or in a batch, the same tokens.
    let alone = generate(&model, &prompts[2..], 40, &opts, &mut rng, &device);
    assert_eq!(alone[0].tokens, plain[2].tokens);
    assert!(cached.iter().any(|c| !c.tokens.is_empty()));
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn full_logits(model: &Gpt, seq: &[u32], device: &Device) -> Vec<f32> {
    model
        .forward(ids(&[seq.to_vec()], device))
        .into_data()
        .iter::<f32>()
        .collect()
}

#[test]
fn engine_logits_match_the_burn_model_for_prefill_and_decode() {
    let device = Device::flex();
    // Every architecture variation (grouped-query heads, biases, q/k norms, tied head, RoPE
    // scaling) on the small shape, then the plain one at a size that splits products.
    let variants = crate::model_fused::arch_variants(cfg());
    let variants = variants
        .into_iter()
        .enumerate()
        .map(|(i, (_, c))| (20 + i as u64, c));
    for (seed, c) in variants.chain([
        (11, cfg()),
        // Large enough that the projections run on several threads.
        (
            12,
            ModelConfig {
                vocab: 30,
                d_model: 128,
                heads: 4,
                mlp: 256,
                layers: 2,
                ctx: 64,
                rope_theta: 10_000.0,
                arch: Default::default(),
            },
        ),
    ]) {
        device.seed(seed);
        let model = Gpt::new(&c, &device);
        let engine = model.engine(c.ctx);
        let v = engine.vocab();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        use rand::Rng;
        // 24 sequences of different lengths, fed together: every position's logits.
        let seqs: Vec<Vec<u32>> = (0..24)
            .map(|i| {
                (0..3 + i % 9)
                    .map(|_| rng.random_range(0..c.vocab as u32))
                    .collect()
            })
            .collect();
        // Room for the longest (11) plus the five decode steps below, less than the context:
        // a cache's row layout follows its own room, not the model's context.
        let mut cache = engine.cache_for(seqs.len(), 16);
        let feed: Vec<(usize, &[u32])> = seqs.iter().map(Vec::as_slice).enumerate().collect();
        let all = engine.forward(&mut cache, &feed, true);
        let mut off = 0;
        for s in &seqs {
            let want = full_logits(&model, s, &device);
            let got = &all[off..off + s.len() * v];
            let d = max_diff(&want, got);
            assert!(d < 1e-4, "prefill, {:?}: max abs diff {d}", c.arch);
            off += s.len() * v;
        }
        // The same rows on the spinning pair: 24 rows split each product and the per-token
        // work between the threads, 48 (every row twice) run as two halves.
        with_pair(|pair| {
            for copies in [1, 2] {
                let rows: Vec<&[u32]> = (0..copies)
                    .flat_map(|_| seqs.iter().map(Vec::as_slice))
                    .collect();
                let mut cache = engine.cache_for(rows.len(), 16);
                let feed: Vec<(usize, &[u32])> = rows.iter().copied().enumerate().collect();
                let got = engine.forward_on(&mut cache, &feed, true, pair);
                let want: Vec<f32> = (0..copies).flat_map(|_| all.iter().copied()).collect();
                let d = max_diff(&want, &got);
                assert!(d < 1e-5, "{} rows on a pair: max abs diff {d}", rows.len());
            }
        });
        // One sequence alone, each product split with the spinning helper: prefill, then
        // decode steps.
        with_pair(|pair| {
            let mut one = engine.cache(1);
            let s = &seqs[8];
            let got = engine.forward_on(&mut one, &[(0, &s[..4])], true, pair);
            let want = full_logits(&model, &s[..4], &device);
            assert!(max_diff(&want, &got) < 1e-4, "paired prefill");
            for n in 5..=s.len() {
                let got = engine.forward_on(&mut one, &[(0, &s[n - 1..n])], false, pair);
                let want = full_logits(&model, &s[..n], &device);
                let d = max_diff(&want[(n - 1) * v..], &got);
                assert!(d < 1e-4, "paired decode at {n}: max abs diff {d}");
            }
        });
        // Then five decode steps, one token per row: last-position logits.
        let mut seqs = seqs;
        for _ in 0..5 {
            let toks: Vec<[u32; 1]> = seqs
                .iter()
                .map(|_| [rng.random_range(0..c.vocab as u32)])
                .collect();
            let feed: Vec<(usize, &[u32])> =
                toks.iter().map(|t| t.as_slice()).enumerate().collect();
            let got = engine.forward(&mut cache, &feed, false);
            for (r, s) in seqs.iter_mut().enumerate() {
                s.push(toks[r][0]);
                let want = full_logits(&model, s, &device);
                let d = max_diff(&want[(s.len() - 1) * v..], &got[r * v..(r + 1) * v]);
                assert!(d < 1e-4, "decode row {r}: max abs diff {d}");
            }
        }
    }
}

#[test]
fn engine_samples_the_same_tokens_and_logprobs_as_the_reference() {
    let device = Device::flex();
    device.seed(5);
    let model = Gpt::new(&cfg(), &device);
    // Repeated prompts (as in GRPO groups): the engine prefills each once and copies it (one
    // longer than a block of cached keys, 32 positions); the runs reuse the engine's KV-cache
    // buffers, dirty from the run before.
    let long: Vec<u32> = (0..34).map(|i| 1 + (i * 7 % 15) as u32).collect();
    let prompts = vec![
        vec![1, 9, 12],
        long.clone(),
        vec![1, 15, 8, 10, 11, 7],
        vec![1, 9, 12],
        vec![1, 13],
        long,
        vec![1, 4, 4, 4],
        vec![1, 13],
        vec![1, 9, 12],
    ];
    for temperature in [0.0, 1.0] {
        for use_cache in [true, false] {
            let run = |engine: bool| {
                let opts = SampleOptions {
                    temperature,
                    max_new_tokens: 25,
                    use_cache,
                    engine,
                    ..Default::default()
                };
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                generate(&model, &prompts, 40, &opts, &mut rng, &device)
            };
            let (fast, reference) = (run(true), run(false));
            for (a, b) in fast.iter().zip(&reference) {
                assert_eq!(a.tokens, b.tokens, "T {temperature}, cache {use_cache}");
                assert_eq!(a.finished, b.finished);
                let d = max_diff(&a.logprobs, &b.logprobs);
                assert!(d < 1e-4, "T {temperature}: logprob diff {d}");
            }
            assert!(fast.iter().map(|c| c.tokens.len()).sum::<usize>() > 10);
        }
    }
    // One Sampler for several calls (its decoder built once) draws what separate calls draw.
    let opts = SampleOptions {
        max_new_tokens: 25,
        ..Default::default()
    };
    let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
    let mut held = Sampler::new(&model);
    for ctx in [40, 40, 36] {
        let want = generate(&model, &prompts, ctx, &opts, &mut a, &device);
        let got = held.generate(&prompts, ctx, &opts, &mut b, &device);
        assert_eq!(want, got, "ctx {ctx}");
    }
}

#[test]
fn engine_prefill_larger_than_one_pass_keeps_every_row_in_order() {
    // ~1,600 tokens: fed in several groups (1,024 tokens a pass), each split over threads.
    let c = ModelConfig {
        vocab: 30,
        d_model: 64,
        heads: 4,
        mlp: 128,
        layers: 2,
        ctx: 64,
        rope_theta: 10_000.0,
        arch: Default::default(),
    };
    let device = Device::flex();
    device.seed(13);
    let model = Gpt::new(&c, &device);
    let engine = model.engine(c.ctx);
    let v = engine.vocab();
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let seqs: Vec<Vec<u32>> = (0..40)
        .map(|i| {
            (0..20 + (i * 7) % 41)
                .map(|_| rng.random_range(0..c.vocab as u32))
                .collect()
        })
        .collect();
    assert!(seqs.iter().map(Vec::len).sum::<usize>() > 1_500);
    let mut cache = engine.cache(seqs.len());
    let feed: Vec<(usize, &[u32])> = seqs.iter().map(Vec::as_slice).enumerate().collect();
    let last = engine.forward(&mut cache, &feed, false);
    assert_eq!(last.len(), seqs.len() * v);
    for (r, s) in seqs.iter().enumerate() {
        let want = full_logits(&model, s, &device);
        let d = max_diff(&want[(s.len() - 1) * v..], &last[r * v..(r + 1) * v]);
        assert!(d < 1e-4, "row {r}: max abs diff {d}");
        assert_eq!(cache.len(r), s.len());
    }
}

/// `--quantize q8_0 | q4_1`: the decoder over weights quantised at load against the f32
/// decoder, every architecture variation, every position of a prompt and a batch of rows:
/// close (Q8_0 closer than Q4_1), never equal.
#[test]
fn engine_quantized_at_load_stays_close_to_the_f32_decoder() {
    use stageloop::model::gguf_write::Store;
    let device = Device::flex();
    'variants: for (name, c) in crate::model_fused::arch_variants(cfg()) {
        device.seed(3);
        let model = Gpt::new(&c, &device);
        let f32_engine = model.engine(32);
        let seq: Vec<u32> = (0..12).map(|i| (i * 5 % 19 + 1) as u32).collect();
        let run = |e: &stageloop::cpu::decoder::Engine| {
            let mut cache = e.cache(2);
            e.forward(&mut cache, &[(0, &seq[..]), (1, &seq[3..])], true)
        };
        let want = run(&f32_engine);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        let mut diffs = Vec::new();
        // Q4_1's step is a fifteenth of each block's range: on random weights, ~10% of the
        // logits' scale; Q8_0's a 127th of its largest magnitude.
        for (store, bound) in [(Store::Q8_0, 0.03), (Store::Q4_1, 0.3)] {
            let q = match model.engine_quantized(32, store) {
                Ok(q) => q,
                Err(e) => {
                    // A head size of 12 makes the output projection 48 wide: refused, named.
                    assert!(
                        e.to_string().contains("whole 32-element blocks"),
                        "{name}: {e}"
                    );
                    continue 'variants;
                }
            };
            let d = max_diff(&run(&q), &want);
            assert!(
                d > 0.0 && d < bound * scale,
                "{name} {store:?}: {d} (logits up to {scale})"
            );
            diffs.push(d);
        }
        assert!(
            diffs[0] < diffs[1],
            "{name}: Q8_0 {} vs Q4_1 {}",
            diffs[0],
            diffs[1]
        );
    }
}

/// A bf16 run's decoder (built inside `with_bf16`): bf16 panels, close to the f32 decoder for
/// every architecture variation and a batch of rows (bf16 rounds each operand by at most
/// 2⁻⁹ of its magnitude), never equal; the same greedy tokens as the f32 decoder on most
/// steps. Skipped on CPUs without AVX512_BF16, where `with_bf16` keeps f32.
#[test]
fn bf16_engine_stays_close_to_the_f32_decoder() {
    use stageloop::cpu::gemm::with_bf16;
    if !stageloop::cpu::bf16::available() {
        return;
    }
    let device = Device::flex();
    for (name, c) in crate::model_fused::arch_variants(cfg()) {
        device.seed(3);
        let model = Gpt::new(&c, &device);
        let seq: Vec<u32> = (0..12).map(|i| (i * 5 % 19 + 1) as u32).collect();
        let run = |e: &stageloop::cpu::decoder::Engine| {
            let mut cache = e.cache(3);
            let feed = [(0, &seq[..]), (1, &seq[3..]), (2, &seq[..1])];
            e.forward(&mut cache, &feed, true)
        };
        let want = run(&model.engine(32));
        let (on, bf16) = with_bf16(true, || model.engine(32));
        assert!(on, "with_bf16 reports bf16 on a CPU that has it");
        let got = run(&bf16);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        let d = max_diff(&got, &want);
        assert!(
            d > 0.0 && d < 0.02 * scale,
            "{name}: {d} (logits up to {scale})"
        );
        // The argmax of each position agrees wherever the f32 logits' top two are apart.
        let vocab = c.vocab;
        for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
            if w[order[0]] - w[order[1]] > 0.05 * scale {
                let top = (0..vocab).max_by(|&a, &b| g[a].total_cmp(&g[b]));
                assert_eq!(top, Some(order[0]), "{name}");
            }
        }
    }
}
