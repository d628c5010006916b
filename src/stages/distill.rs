//! `distill`: a teacher stage's verified samples train a student of another (usually smaller)
//! shape, given by the stage's `model = { … }` changes to `[model]`. The student starts from
//! scratch, or from `init` when that stage has the student's shape. The teacher may be a
//! pretrained model's stage: the student then learns from its completions as text.

use super::common::Setup;
use super::context::{Outcome, StageCtx};
use super::{pipeline, rejection, supervised};
use anyhow::{Context, Result};

pub fn run(ctx: &mut StageCtx<'_>) -> Result<Outcome> {
    let teacher = ctx
        .cfg
        .teacher
        .clone()
        .context("a distill stage needs `teacher`")?;
    let teacher_dir = pipeline::checkpoint_of_stage(ctx.exp, &teacher, &ctx.cfg.name)?;
    let student_spec = ctx.cfg.student.clone().context("student shape")?;
    let student = Setup::from_specs(&ctx.exp.spec.task, &student_spec)?;
    let (mut rows, sampled) = rejection::dataset_for_run(ctx, &teacher_dir)?;
    // A pretrained teacher writes text the student's character tokenizer may not cover
    // (spaces, letters): such rows are left out, and counted.
    let before = rows.len();
    rows.retain(|(p, c)| {
        student.tok.prompt_ids(p).is_ok() && student.tok.completion_ids(c).is_ok()
    });
    if rows.len() < before {
        ctx.reporter.message(&format!(
            "left out {} of {before} teacher completions the student's tokenizer cannot write",
            before - rows.len()
        ));
    }
    if rows.is_empty() {
        anyhow::bail!(
            "none of the teacher's {before} accepted completions can be written with the student's tokenizer (task `{}` alphabet)",
            ctx.exp.spec.task.name
        );
    }
    ctx.reporter.message(&format!(
        "student: {} params (d_model {}, layers {})",
        student.model_cfg.params(),
        student.model_cfg.d_model,
        student.model_cfg.layers
    ));
    let source = |i: u64| Ok(rows[(i % rows.len() as u64) as usize].clone());
    supervised::train(ctx, &student, "distill", false, sampled, &source)
}
