//! `stageloop sample RUN|CKPT --prompt TEXT`: complete a prompt with a checkpoint (the notebook's
//! prompt box runs this with `--json`).

use crate::model::gguf_write::Store;
use crate::model::pretrained::{self, gguf_engine, gguf_model, tokenizer::Message};
use crate::model::sample::{SampleOptions, generate, generate_on};
use crate::model::{checkpoint, device};
use crate::runfs;
use crate::stages::common::Setup;
use crate::untrusted::display;
use anyhow::Context;
use rand::SeedableRng;
use std::path::PathBuf;

/// `stageloop sample`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folder, checkpoint folder, Hugging Face model folder or .gguf file.
    pub target: PathBuf,
    /// The prompt, e.g. `37+5+82=`.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in a pretrained model's chat template (as a user message).
    #[arg(long)]
    pub chat: bool,
    /// How many completions.
    #[arg(short, long, default_value_t = 1)]
    pub n: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// New-token budget (0 = up to the context).
    #[arg(long, default_value_t = 0)]
    pub max_new_tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per completion.
    #[arg(long)]
    pub json: bool,
    /// How the weights are held while sampling: `auto` keeps a GGUF's quantised blocks as
    /// they are in the file (integer kernels, no float copy) and anything else f32; `none`
    /// reads every weight as f32 (the reference path); `q8_0` / `q4_1` / `q4_k` quantise every matrix
    /// and the embedding at load (a Hugging Face folder, a checkpoint or a GGUF).
    #[arg(long, value_enum, default_value_t = Quantize::Auto)]
    pub quantize: Quantize,
    /// The decoder's float weights and products: `bf16` rounds them to bf16 (f32 sums) where
    /// the CPU has AVX512_BF16, half the bytes a token reads; quantised blocks are unaffected.
    #[arg(long, value_parser = ["f32", "bf16"], default_value = "f32")]
    pub precision: String,
}

/// `--quantize`: how a model's weights are held while sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    Auto,
    None,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_1")]
    Q4_1,
    /// Q4_K where rows are whole 256-element super-blocks, else Q5_0.
    #[value(name = "q4_k")]
    Q4K,
}

/// `bench train --quantize` is `[model] quantize` as a flag: the same values.
impl From<Quantize> for crate::spec::Quantize {
    fn from(q: Quantize) -> Self {
        match q {
            Quantize::None => Self::None,
            Quantize::Auto => Self::Auto,
            Quantize::Q8_0 => Self::Q8_0,
            Quantize::Q4_1 => Self::Q4_1,
            Quantize::Q4K => Self::Q4K,
        }
    }
}

impl Quantize {
    /// The flag's value as typed.
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Auto => "auto",
            Quantize::None => "none",
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4_1 => "q4_1",
            Quantize::Q4K => "q4_k",
        }
    }

    /// The block format to quantise to at load, if any.
    pub fn store(self) -> Option<Store> {
        match self {
            Quantize::Q8_0 => Some(Store::Q8_0),
            Quantize::Q4_1 => Some(Store::Q4_1),
            Quantize::Q4K => Some(Store::Q4K),
            Quantize::Auto | Quantize::None => None,
        }
    }
}

/// The decoder `--quantize` asks for, when it is not the model's own f32 one: a LoRA model's
/// bases quantised (or a QLoRA model's frozen blocks as they are, for `auto`) with the
/// adapters' update added in f32 beside them, so quantising does not round it away; any other
/// model's weights quantised. `None`: the f32 decoder.
pub fn quantized_engine(
    model: &crate::model::transformer::Gpt,
    q: Quantize,
    ctx: usize,
) -> anyhow::Result<Option<crate::cpu::decoder::Engine>> {
    anyhow::ensure!(
        q.store().is_none() || model.decodes_on_cpu(),
        "--quantize {}: a model with routed experts or latent attention ([model.moe], \
         [model.mla]) decodes through burn's ops, in f32 only",
        q.name()
    );
    Ok(match q.store() {
        Some(store) if model.has_lora() => Some(model.engine_adapted(ctx, Some(store))?),
        Some(store) => Some(model.engine_quantized(ctx, store)?),
        None if q == Quantize::Auto && model.has_frozen() => Some(model.engine_adapted(ctx, None)?),
        None => None,
    })
}

/// Sample with `model`, quantised at load when `--quantize` asks for blocks.
fn sample_with(
    model: &crate::model::transformer::Gpt,
    q: Quantize,
    prompts: &[Vec<u32>],
    ctx: usize,
    opts: &SampleOptions,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> anyhow::Result<Vec<crate::model::sample::Completion>> {
    Ok(match quantized_engine(model, q, ctx)? {
        Some(engine) => generate_on(&engine, prompts, ctx, opts, rng),
        None => generate(model, prompts, ctx, opts, rng, &device()?),
    })
}

/// Refuse sampling settings that would panic, hang or allocate without bound.
fn check_args(a: &Args) -> anyhow::Result<()> {
    let max = crate::spec::validate::MAX_SAMPLES;
    anyhow::ensure!(
        (1..=max).contains(&a.n),
        "--n must be between 1 and {max} (got {})",
        a.n
    );
    anyhow::ensure!(
        crate::spec::validate::temperature_ok(a.temperature),
        "--temperature {} (got {})",
        crate::spec::validate::TEMPERATURE_RULE,
        a.temperature
    );
    anyhow::ensure!(
        a.top_p > 0.0 && a.top_p <= 1.0,
        "--top-p must be in (0, 1] (got {})",
        a.top_p
    );
    Ok(())
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    check_args(a)?;
    crate::cpu::gemm::with_bf16(a.precision == "bf16", || run_checked(a)).1
}

fn run_checked(a: &Args) -> anyhow::Result<()> {
    if pretrained::is_pretrained(&a.target) {
        return run_pretrained(a);
    }
    anyhow::ensure!(
        !a.chat,
        "--chat needs a pretrained model (a Hugging Face folder or a .gguf file)"
    );
    let dir = runfs::checkpoint::resolve(&a.target).with_context(|| {
        format!(
            "{}: not a checkpoint or a run folder with checkpoints",
            a.target.display()
        )
    })?;
    let dev = device()?;
    let (model, _, _) = checkpoint::load_model(&dir, &dev)?;
    let setup = Setup::from_checkpoint(&dir, None)?;
    let ids = setup.prompt_ids(&a.prompt)?;
    anyhow::ensure!(
        ids.len() < setup.model_cfg.ctx,
        "the prompt is {} tokens with BOS; the model's context is {} (it needs room for at \
         least one new token)",
        ids.len(),
        setup.model_cfg.ctx
    );
    let opts = SampleOptions {
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        ..Default::default()
    }
    .with_eos(&setup.tok.eos());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let outs = sample_with(
        &model,
        a.quantize,
        &vec![ids.clone(); a.n],
        setup.model_cfg.ctx,
        &opts,
        &mut rng,
    )?;
    for c in outs {
        let text = setup.tok.decode(&c.tokens);
        let r = setup.task.rewards(&a.prompt, &text);
        if a.json {
            outln!(
                "{}",
                serde_json::json!({
                    "prompt": a.prompt, "completion": text, "rewards": r.as_map(),
                    "reward": r.accuracy, "finished": c.finished, "tokens": c.tokens.len(),
                    "token_ids": c.tokens, "logprobs": c.logprobs, "prompt_ids": ids,
                    "checkpoint": dir.display().to_string(),
                })
            );
        } else {
            outln!(
                "{}{}   [accuracy {} format {}]",
                display(&a.prompt),
                display(&text),
                r.accuracy,
                r.format
            );
        }
    }
    Ok(())
}

/// A pretrained model's weights as `sample` holds them.
enum Held {
    /// Every weight f32, in burn.
    Model(Box<crate::model::transformer::Gpt>),
    /// A GGUF file, its blocks to be read in place.
    Blocks(crate::model::gguf::Gguf),
}

/// What `sample` needs of a pretrained model besides its weights.
struct Loaded {
    cfg: crate::model::ModelConfig,
    tokenizer: pretrained::HfTokenizer,
    path: PathBuf,
}

/// New tokens when `--max-new-tokens` is 0 for a pretrained model (its own context is long).
const PRETRAINED_NEW_TOKENS: usize = 256;

/// `sample` on a Hugging Face folder or a GGUF file: the prompt as it is (with what the
/// tokenizer adds, as transformers' `tokenizer(prompt)`) or, with `--chat`, as a user message
/// in the model's chat template.
fn run_pretrained(a: &Args) -> anyhow::Result<()> {
    let dev = device()?;
    let gguf = a.quantize == Quantize::Auto && pretrained::is_gguf(&a.target);
    // A GGUF's blocks are read in place by the decoder; anything else loads the burn model.
    let (held, p) = if gguf {
        let (g, cfg, tokenizer) = gguf_model::open(&a.target)?;
        let p = Loaded {
            cfg,
            tokenizer,
            path: a.target.clone(),
        };
        (Held::Blocks(g), p)
    } else {
        let p = pretrained::load(&a.target, &dev)?;
        let loaded = Loaded {
            cfg: p.cfg,
            tokenizer: p.tokenizer,
            path: p.path,
        };
        (Held::Model(Box::new(p.model)), loaded)
    };
    let ids = if a.chat {
        if let Some(from) = &p.tokenizer.chat_template_source {
            eprintln!("chat template: {}", crate::untrusted::display(from));
        }
        let text = p.tokenizer.chat(
            &[Message {
                role: "user".into(),
                content: a.prompt.to_string(),
            }],
            true,
        )?;
        p.tokenizer.encode(&text, false)?
    } else {
        p.tokenizer.encode(a.prompt.as_str(), true)?
    };
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty after tokenizing");
    let new = if a.max_new_tokens == 0 {
        PRETRAINED_NEW_TOKENS
    } else {
        a.max_new_tokens
    };
    let ctx = p.cfg.ctx.min(ids.len() + new);
    anyhow::ensure!(
        ids.len() < ctx,
        "the prompt is {} tokens; the model's context is {}",
        ids.len(),
        p.cfg.ctx
    );
    let opts = SampleOptions {
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: new,
        ..Default::default()
    }
    .with_eos(&p.tokenizer.eos);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let prompts = vec![ids.clone(); a.n];
    let outs = match held {
        Held::Model(model) => sample_with(&model, a.quantize, &prompts, ctx, &opts, &mut rng)?,
        Held::Blocks(g) => {
            let engine = gguf_engine::engine(&g, &p.cfg, ctx)?;
            drop(g);
            generate_on(&engine, &prompts, ctx, &opts, &mut rng)
        }
    };
    for c in outs {
        let text = p.tokenizer.decode(&c.tokens, false);
        if a.json {
            outln!(
                "{}",
                serde_json::json!({
                    "prompt": a.prompt, "completion": text, "finished": c.finished,
                    "tokens": c.tokens.len(), "token_ids": c.tokens, "prompt_ids": ids,
                    "model": p.path.display().to_string(),
                })
            );
        } else {
            outln!("{}{}", display(&a.prompt), display(&text));
        }
    }
    Ok(())
}
