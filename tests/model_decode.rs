//! The KV cache computes the same function as the full forward pass.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stageloop::model::sample::{SampleOptions, generate};
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
    }
}

fn ids(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

#[test]
fn incremental_logits_match_the_full_forward() {
    let device = Device::flex();
    device.seed(7);
    let model = Gpt::new(&cfg(), &device);
    let seq: Vec<u32> = vec![1, 9, 12, 7, 15, 8, 10, 11, 13, 14];
    let full: Vec<f32> = model
        .forward(ids(std::slice::from_ref(&seq), &device))
        .into_data()
        .iter::<f32>()
        .collect();
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
    assert_eq!(full.len(), inc.len());
    let max = full
        .iter()
        .zip(&inc)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-4, "max abs diff {max}");
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
        ..Default::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cached = generate(&model, &prompts, 40, &opts, &mut rng, &device);
    opts.use_cache = false;
    let plain = generate(&model, &prompts, 40, &opts, &mut rng, &device);
    for (a, b) in cached.iter().zip(&plain) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.finished, b.finished);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4);
        }
    }
    // Padding does not change a prompt's continuation: alone or in a batch, the same tokens.
    let alone = generate(&model, &prompts[2..], 40, &opts, &mut rng, &device);
    assert_eq!(alone[0].tokens, plain[2].tokens);
    assert!(cached.iter().any(|c| !c.tokens.is_empty()));
}
