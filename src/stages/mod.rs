//! Stage runners and the pipeline that sequences them. A stage is a function of (spec, init
//! checkpoint) → run folder; it reports through the run folder and a [`Reporter`] (the CLI's
//! progress bar), never through a screen.

pub mod common;
pub mod context;
pub mod distill;
pub mod eval;
pub mod grpo;
pub mod grpo_math;
pub mod pipeline;
pub mod pretrain;
pub mod rejection;
pub mod reward_program;
pub mod sft;
pub mod supervised;

pub use context::{Outcome, Quiet, Reporter, StageCtx};
pub use pipeline::{RunOptions, run_pipeline};

use crate::spec::StageKind;

/// Run one stage to completion (or until stopped).
pub fn run_stage(ctx: &mut StageCtx<'_>) -> anyhow::Result<Outcome> {
    match ctx.cfg.kind {
        StageKind::Pretrain => pretrain::run(ctx),
        StageKind::Sft => sft::run(ctx),
        StageKind::Eval => eval::run(ctx),
        StageKind::Grpo => grpo::run(ctx),
        StageKind::Rejection => rejection::run(ctx),
        StageKind::Distill => distill::run(ctx),
    }
}
