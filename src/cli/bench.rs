//! `stageloop bench train`, `bench decode`, `bench kernels` and `bench notebook`: the figures as a table or one JSON
//! line.

use crate::bench::train::{BenchConfig, run as measure};
use crate::model::ModelConfig;

/// `stageloop bench`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Training and sampling throughput of one model shape, and peak memory.
    Train(TrainArgs),
    /// The notebook: open, frame, append-to-screen and memory on a synthetic workspace.
    Notebook(NotebookArgs),
    /// Sampling speed of a pretrained model (a GGUF's blocks, f32, or quantised at load) and
    /// peak memory.
    Decode(DecodeArgs),
    /// Each product kind's speed against this CPU's measured peak for f32, bf16 and int8.
    Kernels(KernelsArgs),
    /// The GRPO objectives (losses, advantages, KL estimators) on cases read as JSON from
    /// stdin, printed as JSON: what `benches/objectives_check.py` compares with TRL and verl.
    Objectives,
    /// One sequence at a time through burn's ops, plain, and for a model with a
    /// multi-token-prediction depth with its drafts (speculative sampling): tokens/s and how
    /// many drafts were kept.
    Draft(DraftArgs),
}

/// The flags of `stageloop bench draft`.
#[derive(Debug, clap::Args)]
pub struct DraftArgs {
    /// Run folder or checkpoint (drafts need `[model.mtp]`).
    pub target: std::path::PathBuf,
    /// Held-out prompts, each sampled once each way.
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// New tokens per prompt (capped by the context).
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `stageloop bench kernels`.
#[derive(Debug, clap::Args)]
pub struct KernelsArgs {
    /// Rows of the training products (tokens of a micro-batch).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub rows: u64,
    /// One JSON object per figure.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `stageloop bench decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// A .gguf file or a Hugging Face folder.
    pub model: std::path::PathBuf,
    /// How the weights are held: `auto` a GGUF's blocks as in the file (a folder: f32),
    /// `none` every weight f32, `q8_0` / `q4_1` / `q4_k` quantised at load.
    #[arg(long, value_enum, default_value_t = crate::cli::sample::Quantize::Auto)]
    pub quantize: crate::cli::sample::Quantize,
    /// Sequences sampled at once.
    #[arg(long, default_value_t = 1)]
    pub prompts: usize,
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed calls (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `stageloop bench train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 1024)]
    pub mlp: usize,
    #[arg(long, default_value_t = 128)]
    pub ctx: usize,
    /// Training batch (sequences of ctx tokens).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Prompts sampled at once.
    #[arg(long, default_value_t = 16)]
    pub prompts: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Train with burn's composite ops instead of the fused CPU ops, to measure what the fused
    /// ones buy.
    #[arg(long)]
    pub composite: bool,
    /// A named shape instead of the shape flags: `smollm2-135m` (d 576, 30 layers, 9 heads / 3
    /// KV heads, MLP 1536, vocab 49152, tied head).
    #[arg(long, value_parser = ["smollm2-135m"], conflicts_with = "model")]
    pub preset: Option<String>,
    /// Pretrained weights (a Hugging Face folder or a .gguf file) instead of random ones; the
    /// shape is the file's.
    #[arg(long, value_name = "PATH")]
    pub model: Option<std::path::PathBuf>,
    /// Train LoRA adapters of this rank on every block matrix instead of every weight.
    #[arg(long, value_name = "RANK")]
    pub lora: Option<usize>,
    /// With --lora, hold the frozen base as quantised blocks (QLoRA): `auto` (a GGUF's own
    /// blocks, else Q8_0), `q8_0`, `q4_1` or `q4_k`; as `[model] quantize`.
    #[arg(long, value_enum, default_value_t = crate::cli::sample::Quantize::None, requires = "lora")]
    pub quantize: crate::cli::sample::Quantize,
    /// Skip the sampling run without a KV cache (minutes at real-model size).
    #[arg(long)]
    pub cache_only: bool,
    /// DeepSeekMoE MLPs with this many routed experts (top 2 and 1 shared, each `mlp / 3`
    /// wide), as `[model.moe]`.
    #[arg(long, value_name = "EXPERTS", conflicts_with = "model")]
    pub moe: Option<usize>,
    /// Multi-head Latent Attention with its default widths (latent 2·head_dim, rope
    /// head_dim / 2), as `[model.mla]`.
    #[arg(long, conflicts_with = "model")]
    pub mla: bool,
    /// The products' number type, as `[model] precision`: `bf16` rounds their operands (and
    /// the decoder's weights) to bf16 where the CPU has AVX512_BF16, sums stay f32.
    #[arg(long, value_parser = ["f32", "bf16"], default_value = "f32")]
    pub precision: String,
}

/// The SmolLM2-135M shape (its config.json).
fn smollm2_135m(ctx: usize) -> ModelConfig {
    ModelConfig {
        vocab: 49_152,
        d_model: 576,
        layers: 30,
        heads: 9,
        mlp: 1536,
        ctx,
        rope_theta: 100_000.0,
        arch: crate::model::config::Arch {
            kv_heads: Some(3),
            tied: true,
            family: Some("llama".into()),
            ..Default::default()
        },
    }
}

/// The flags of `stageloop bench notebook`.
#[derive(Debug, clap::Args)]
pub struct NotebookArgs {
    /// Runs in the synthetic workspace.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Metric lines per run.
    #[arg(long, default_value_t = 200_000)]
    pub points: usize,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Instead: one run with a metrics log of this many MB (1024 for the 1 GB case): `runs`
    /// summary time, time to the first chart, key latency while loading, peak RSS.
    #[arg(long, value_name = "MB", conflicts_with = "idle_secs")]
    pub big_log: Option<u64>,
    /// Instead: an idle notebook over `--runs` runs (of `--points` lines) for this many seconds,
    /// with the real file watcher: CPU used.
    #[arg(long, value_name = "SECS")]
    pub idle_secs: Option<f64>,
    /// With `--idle-secs`: the first run is running (this process holds its lock) and gets this
    /// many metric lines a second appended, one write each: what watching a live run costs.
    #[arg(
        long,
        value_name = "LINES",
        default_value_t = 0,
        requires = "idle_secs"
    )]
    pub append: usize,
}

/// `stageloop bench train|notebook`.
pub fn dispatch(a: Args) -> anyhow::Result<()> {
    match a {
        Args::Train(a) => train(a),
        Args::Notebook(a) => notebook(a),
        Args::Decode(a) => decode(a),
        Args::Kernels(a) => kernels(a),
        Args::Draft(a) => draft(a),
        Args::Objectives => {
            use std::io::Read;
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            outln!("{}", crate::bench::objectives::run(&input)?);
            Ok(())
        }
    }
}

fn draft(a: DraftArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=1000).contains(&a.prompts)
            && (1..=4096).contains(&a.new_tokens)
            && a.temperature.is_finite()
            && a.temperature >= 0.0,
        "--prompts must be 1 to 1000, --new-tokens 1 to 4096, --temperature at least 0"
    );
    let r = crate::bench::draft::run(&crate::bench::draft::DraftConfig {
        target: a.target,
        prompts: a.prompts,
        new_tokens: a.new_tokens,
        temperature: a.temperature,
    })?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "tokens/s, plain                {:.1}",
            r.plain_tokens_per_sec
        );
        if let (Some(tps), Some(acc), Some(per)) =
            (r.draft_tokens_per_sec, r.acceptance, r.tokens_per_pass)
        {
            outln!("tokens/s, MTP drafts           {tps:.1}");
            outln!("drafts kept                    {:.1}%", 100.0 * acc);
            outln!("tokens per main pass           {per:.2}");
        }
        outln!(
            "({} prompts × {} new tokens, one sequence at a time, burn's ops)",
            r.prompts,
            r.new_tokens
        );
    }
    Ok(())
}

fn kernels(a: KernelsArgs) -> anyhow::Result<()> {
    for f in crate::bench::kernels::run(a.rows as usize) {
        if a.json {
            outln!("{}", serde_json::to_string(&f)?);
        } else {
            let of = f
                .of_peak
                .map_or(String::new(), |p| format!("{:5.1}% of peak", 100.0 * p));
            outln!(
                "{:>8.1} G{}/s {:<4} {of:>15}  {}",
                f.gops,
                if f.kind == "f32" { "FLOP" } else { "OP" },
                f.kind,
                f.what
            );
        }
    }
    Ok(())
}

fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=crate::spec::validate::MAX_SAMPLES).contains(&a.prompts)
            && (2..=4096).contains(&a.prompt_len)
            && (1..=4096).contains(&a.new_tokens)
            && (1..=100).contains(&a.rounds),
        "--prompts must be 1 to {}, --prompt-len 2 to 4096, --new-tokens 1 to 4096, --rounds 1 to 100",
        crate::spec::validate::MAX_SAMPLES
    );
    let r = crate::bench::decode::run(&crate::bench::decode::DecodeConfig {
        model: a.model,
        weights: {
            use crate::bench::decode::Held;
            use crate::cli::sample::Quantize;
            match a.quantize {
                Quantize::Auto => Held::File,
                Quantize::None => Held::F32,
                q => Held::Quantized(q.store().expect("a block format")),
            }
        },
        prompts: a.prompts,
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        rounds: a.rounds,
    })?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "weights                        {} ({} kernel)",
            r.weights,
            r.kernel
        );
        outln!("decoder built in               {:.2} s", r.load_secs);
        outln!("tokens/s                       {:.1}", r.tokens_per_sec);
        outln!(
            "peak RSS                       {:.0} MB (file {:.0} MB)",
            r.peak_rss_bytes as f64 / 1e6,
            r.file_bytes as f64 / 1e6
        );
    }
    Ok(())
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    if a.heads == 0
        || !a.d_model.is_multiple_of(a.heads)
        || !(a.d_model / a.heads).is_multiple_of(2)
    {
        anyhow::bail!("--heads must divide --d-model into an even head size");
    }
    if a.new_tokens.saturating_add(2) > a.ctx {
        anyhow::bail!("--new-tokens must leave room for a prompt within --ctx");
    }
    if a.lora == Some(0) {
        anyhow::bail!("--lora must be a rank of at least 1");
    }
    let model = match a.preset.as_deref() {
        Some(_) => smollm2_135m(a.ctx),
        None => ModelConfig {
            vocab: 64,
            d_model: a.d_model,
            layers: a.layers,
            heads: a.heads,
            mlp: a.mlp,
            ctx: a.ctx,
            rope_theta: 10_000.0,
            arch: Default::default(),
        },
    };
    let mut model = model;
    if let Some(experts) = a.moe {
        anyhow::ensure!(
            (2..=256).contains(&experts),
            "--moe must be 2 to 256 experts"
        );
        let moe = crate::spec::types::MoeSpec {
            experts,
            top_k: 2,
            shared: 1,
            expert_mlp: Some((model.mlp / 3).max(1)),
            bias_rate: 0.001,
            aux_loss: 0.0,
        };
        model.mlp = moe.width(0);
        model.arch.moe = Some(moe);
    }
    if a.mla {
        let mla = crate::spec::types::MlaSpec::default().resolved(model.head_dim());
        model.arch.mla = Some(mla);
    }
    // The shape flags are checked as a spec's [model] is (no zero width, no overflow).
    model
        .check()
        .map_err(|e| anyhow::anyhow!("bench train: {e}"))?;
    anyhow::ensure!(
        (1..=crate::spec::validate::MAX_BATCH).contains(&a.batch)
            && (1..=crate::spec::validate::MAX_SAMPLES).contains(&a.prompts),
        "--batch must be between 1 and {} and --prompts between 1 and {}",
        crate::spec::validate::MAX_BATCH,
        crate::spec::validate::MAX_SAMPLES
    );
    let cfg = BenchConfig {
        model,
        batch: a.batch,
        prompts: a.prompts,
        new_tokens: a.new_tokens,
        train_steps: a.steps,
        weights: a.model,
        lora: a.lora,
        quantize: a.quantize.into(),
        cache_only: a.cache_only,
    };
    crate::model::fused::set_enabled(!a.composite);
    let (_, r) = crate::cpu::gemm::with_bf16(a.precision == "bf16", || measure(&cfg));
    let r = r?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!("params                         {}", r.params);
        outln!("trainable params               {}", r.trainable_params);
        outln!("precision                      {}", r.precision);
        outln!(
            "KV cache a token               {} bytes",
            r.kv_bytes_per_token
        );
        outln!(
            "train tokens/s                 {:.0}",
            r.train_tokens_per_sec
        );
        outln!(
            "sample tokens/s (KV cache)     {:.0}",
            r.sample_tokens_per_sec_cache
        );
        if let Some(nocache) = r.sample_tokens_per_sec_nocache {
            outln!("sample tokens/s (no cache)     {nocache:.0}");
            outln!(
                "cache speed-up                 {:.1}×",
                r.sample_tokens_per_sec_cache / nocache
            );
        }
        outln!(
            "peak RSS                       {:.0} MB",
            r.peak_rss_bytes as f64 / 1e6
        );
    }
    Ok(())
}

fn notebook(a: NotebookArgs) -> anyhow::Result<()> {
    if let Some(mb) = a.big_log {
        let r = crate::bench::notebook::big(mb)?;
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            let mb = |b: u64| b as f64 / 1e6;
            outln!(
                "log                            {:.0} MB, {} lines",
                mb(r.log_bytes),
                r.lines
            );
            outln!(
                "runs (last values)             {:.3} s, peak RSS {:.0} MB",
                r.runs_secs,
                mb(r.runs_peak_rss_bytes)
            );
            outln!("first chart on screen          {:.2} s", r.first_chart_secs);
            outln!("whole log read                 {:.1} s", r.full_load_secs);
            outln!(
                "key → screen while loading     median {:.1} ms, max {:.1} ms ({} keys)",
                r.key_ms_median,
                r.key_ms_max,
                r.keys
            );
            outln!("points kept for charts         {}", r.points_kept);
            outln!(
                "peak RSS                       {:.0} MB",
                mb(r.peak_rss_bytes)
            );
        }
        return Ok(());
    }
    if let Some(secs) = a.idle_secs {
        let r = crate::bench::notebook::idle(a.runs, a.points, secs, a.append)?;
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            outln!(
                "workspace                      {} runs ({})",
                r.runs,
                r.watcher
            );
            outln!(
                "{:<31}{:.2}% of a core over {:.0} s",
                if r.appended > 0 {
                    "CPU watching the live run"
                } else {
                    "idle CPU"
                },
                r.cpu_percent,
                r.secs
            );
            if r.appended > 0 {
                outln!(
                    "lines appended                 {} ({:.0} a second)",
                    r.appended,
                    r.appended as f64 / r.secs
                );
            }
        }
        return Ok(());
    }
    let r = crate::bench::notebook::run(a.runs, a.points)?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "workspace                      {} runs × {} points",
            r.runs,
            r.points_per_run
        );
        outln!("open (selected run read, drawn) {:.2} s", r.open_secs);
        outln!("everything read                {:.2} s", r.full_load_secs);
        outln!("frame, median                  {:.2} ms", r.frame_ms_median);
        outln!(
            "frame, all runs overlaid       {:.2} ms",
            r.frame_ms_median_overlay_all
        );
        outln!(
            "appended line → on screen      {:.1} ms",
            r.append_to_screen_ms
        );
        outln!(
            "peak RSS                       {:.0} MB",
            r.peak_rss_bytes as f64 / 1e6
        );
    }
    Ok(())
}
