//! `pretrain`: next-token loss on the task's generated corpus (prompt and completion both
//! learned), mixed as `[task.corpus]` says so the base model can be imperfect on purpose.

use super::common::Setup;
use super::context::{Outcome, StageCtx};
use super::supervised;

pub fn run(ctx: &mut StageCtx<'_>) -> anyhow::Result<Outcome> {
    let setup = Setup::new(ctx.exp)?;
    let source = |i: u64| {
        let (p, completion, _) = setup.task.corpus_example(i);
        Ok((p.prompt, completion))
    };
    supervised::train(ctx, &setup, "pretrain", true, 0.0, &source)
}
