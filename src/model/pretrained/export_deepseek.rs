//! A model with latent attention (and routed experts) written as transformers'
//! `DeepseekV3ForCausalLM`: the one Hugging Face architecture with MLA and sigmoid-routed
//! experts. Every block's attention is MLA without a query LoRA, its rotary part
//! non-interleaved (`rope_interleave: false`, as stageloop rotates halves); a block with
//! routed experts is a `DeepseekV3MoE` (one group, `routed_scaling_factor` 1, normalised
//! top-k weights, the balancing biases as `e_score_correction_bias`), else a dense MLP
//! (`first_k_dense_replace` = every layer). Experts are written one by one
//! (`mlp.experts.N.gate_proj.weight`, as DeepSeek's own checkpoints are). A
//! multi-token-prediction depth is not written: transformers' models do not run one.

use super::super::config::ModelConfig;
use super::super::flex::f32s;
use super::super::transformer::Gpt;
use crate::cpu::transpose::transposed;
use anyhow::{Result, bail};
use serde_json::{Value, json};

/// A named tensor: name, shape, values.
type Named = (String, Vec<usize>, Vec<f32>);

/// The model's weights under DeepseekV3's names, `[out, in]` projections.
pub fn tensors(model: &Gpt, cfg: &ModelConfig) -> Result<Vec<Named>> {
    let Some(mla) = cfg.arch.mla else {
        bail!("the DeepseekV3 export needs latent attention ([model.mla])");
    };
    let (d, h, hd) = (cfg.d_model, cfg.heads, cfg.head_dim());
    let (c, r) = (mla.kv_rank(hd), mla.rope_dim(hd));
    let (qw, m, v) = (h * (hd + r), cfg.mlp, cfg.vocab);
    let w = model.weights();
    let parts = model.deepseek_parts();
    let mut out: Vec<Named> = vec![(
        "model.embed_tokens.weight".into(),
        vec![v, d],
        f32s(w.embed),
    )];
    for (i, (b, part)) in w.blocks.into_iter().zip(parts).enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let Some((kv_norm, up)) = part.mla else {
            bail!("block {i} has no latent attention");
        };
        out.push((p("input_layernorm.weight"), vec![d], f32s(b.attn_norm.0)));
        // [d, qw + c + r] → rows: the queries, then the latent and the shared rotary key.
        let qkv = transposed(&f32s(b.qkv), d, qw + c + r);
        out.push((
            p("self_attn.q_proj.weight"),
            vec![qw, d],
            qkv[..qw * d].to_vec(),
        ));
        out.push((
            p("self_attn.kv_a_proj_with_mqa.weight"),
            vec![c + r, d],
            qkv[qw * d..].to_vec(),
        ));
        out.push((p("self_attn.kv_a_layernorm.weight"), vec![c], f32s(kv_norm)));
        // [c, 2·h·hd] (every head's key, then every head's value) → rows per head: its key,
        // then its value.
        let up = transposed(&f32s(up), c, 2 * h * hd);
        let mut kv_b = Vec::with_capacity(up.len());
        for head in 0..h {
            for part in [head, h + head] {
                kv_b.extend_from_slice(&up[part * hd * c..(part + 1) * hd * c]);
            }
        }
        out.push((p("self_attn.kv_b_proj.weight"), vec![2 * h * hd, c], kv_b));
        out.push((
            p("self_attn.o_proj.weight"),
            vec![d, h * hd],
            transposed(&f32s(b.out), h * hd, d),
        ));
        out.push((
            p("post_attention_layernorm.weight"),
            vec![d],
            f32s(b.mlp_norm.0),
        ));
        let mlp = if part.moe.is_some() {
            "mlp.shared_experts"
        } else {
            "mlp"
        };
        out.extend(swiglu(&p(mlp), f32s(b.gate_up), f32s(b.down), d, m));
        if let Some((router, bias, experts)) = part.moe {
            let e = experts.len();
            out.push((
                p("mlp.gate.weight"),
                vec![e, d],
                transposed(&f32s(router), d, e),
            ));
            out.push((p("mlp.gate.e_score_correction_bias"), vec![e], f32s(bias)));
            for (j, (gu, dn)) in experts.into_iter().enumerate() {
                let width = dn.dims()[0];
                let name = p(&format!("mlp.experts.{j}"));
                out.extend(swiglu(&name, f32s(gu), f32s(dn), d, width));
            }
        }
    }
    out.push(("model.norm.weight".into(), vec![d], f32s(w.norm.0)));
    if !cfg.arch.tied {
        out.push((
            "lm_head.weight".into(),
            vec![v, d],
            transposed(&f32s(w.head), d, v),
        ));
    }
    Ok(out)
}

/// A SwiGLU MLP `{prefix}.gate_proj / up_proj / down_proj` from stageloop's `[d, 2·width]` gate
/// and up product and `[width, d]` down product.
fn swiglu(prefix: &str, gate_up: Vec<f32>, down: Vec<f32>, d: usize, width: usize) -> [Named; 3] {
    let gu = transposed(&gate_up, d, 2 * width);
    [
        (
            format!("{prefix}.gate_proj.weight"),
            vec![width, d],
            gu[..width * d].to_vec(),
        ),
        (
            format!("{prefix}.up_proj.weight"),
            vec![width, d],
            gu[width * d..].to_vec(),
        ),
        (
            format!("{prefix}.down_proj.weight"),
            vec![d, width],
            transposed(&down, width, d),
        ),
    ]
}

/// `config.json` of the DeepseekV3 folder.
pub fn config(cfg: &ModelConfig, bos: Option<u32>, eos: &[u32]) -> Value {
    let hd = cfg.head_dim();
    let mla = cfg.arch.mla.unwrap_or_default();
    let moe = cfg.arch.moe;
    json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp,
        "moe_intermediate_size": moe.map_or(cfg.mlp, |m| m.width(0)),
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.heads,
        "n_shared_experts": moe.map_or(1, |m| m.shared),
        "n_routed_experts": moe.map_or(2, |m| m.experts),
        "num_experts_per_tok": moe.map_or(1, |m| m.top_k),
        "first_k_dense_replace": if moe.is_some() { 0 } else { cfg.layers },
        "routed_scaling_factor": 1.0,
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": true,
        "kv_lora_rank": mla.kv_rank(hd),
        "q_lora_rank": null,
        "qk_rope_head_dim": mla.rope_dim(hd),
        "qk_nope_head_dim": hd,
        "v_head_dim": hd,
        "rope_interleave": false,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": cfg.ctx,
        "rms_norm_eps": cfg.arch.norm_eps,
        "tie_word_embeddings": cfg.arch.tied,
        "hidden_act": "silu",
        "attention_bias": false,
        "num_nextn_predict_layers": 0,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
    })
}
