//! `stageloop export RUN`: a run's charts (SVG) and metric table (CSV or Parquet); with
//! `--format hf`, its latest checkpoint (or a checkpoint, or a pretrained model) as a Hugging
//! Face folder; `export EXP --stage NAME --to trl`, a stage handed to TRL ([`crate::handoff`]).

use crate::analysis::export::export_run;
use crate::runfs::RunDir;
use anyhow::Context;
use std::path::{Path, PathBuf};

pub fn run(run: &Path, formats: &[String], out: Option<PathBuf>) -> anyhow::Result<()> {
    if formats.iter().any(|f| f == "hf") {
        anyhow::ensure!(
            formats.len() == 1,
            "--format hf writes a model folder; export charts and tables separately"
        );
        return export_hf(run, out);
    }
    let rd = RunDir::new(run);
    if !rd.is_run() {
        anyhow::bail!(
            "{}: not a run folder (no run.json or metrics log)",
            run.display()
        );
    }
    let out = out.unwrap_or_else(|| run.join("export"));
    let formats: Vec<&str> = formats.iter().map(String::as_str).collect();
    let done = export_run(&rd, &out, &formats)?;
    for f in &done.files {
        outln!("{}", f.display());
    }
    if let Some(s) = done.note() {
        eprintln!("{}", crate::untrusted::display(&s));
    }
    Ok(())
}

/// `export EXP --stage NAME --to trl`: the folder, what was written and what TRL lacks.
pub fn handoff(
    exp: &Path,
    stage: &str,
    to: &str,
    out: Option<PathBuf>,
    model: Option<&Path>,
) -> anyhow::Result<()> {
    let e = crate::spec::load(exp)?;
    let out = out.unwrap_or_else(|| e.dir.join("handoff").join(format!("{stage}-{to}")));
    let report = crate::handoff::export(&e, stage, to, &out, model)?;
    for f in &report.files {
        outln!("{}", crate::untrusted::display(&f.display().to_string()));
    }
    eprintln!(
        "model: {}",
        crate::untrusted::display(&report.model.display().to_string())
    );
    for u in &report.unmapped {
        eprintln!(
            "not carried over: {}: {}",
            crate::untrusted::display(&u.key),
            crate::untrusted::display(&u.why)
        );
    }
    eprintln!("run it:  cd {} && {}", out.display(), report.launch[0]);
    eprintln!("on more GPUs:  {}", report.launch[1]);
    eprintln!("watch it:  stageloop tui {}", out.join("runs").display());
    Ok(())
}

/// The model of a run (its latest checkpoint), a checkpoint folder, or a pretrained model, as a
/// Hugging Face folder.
fn export_hf(target: &Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    use crate::model::pretrained::{self, export};
    let dev = crate::model::device()?;
    let (written, out) = if pretrained::is_pretrained(target) {
        let out = out.context("--out DIR is needed to export a pretrained model")?;
        let p = pretrained::load(target, &dev)?;
        let tok = export::TokenizerFiles::of_pretrained(&p.tokenizer)?;
        (export::write_folder(&out, &p.model, &p.cfg, &tok)?, out)
    } else {
        let dir = crate::runfs::checkpoint::resolve(target).with_context(|| {
            format!(
                "{}: not a run, a checkpoint, a Hugging Face folder or a .gguf file",
                target.display()
            )
        })?;
        let out = out.unwrap_or_else(|| target.join("export").join("hf"));
        let (model, cfg, tok) = crate::model::checkpoint::load_model(&dir, &dev)?;
        let files = match &tok {
            crate::model::text::Text::Chars(t) => export::TokenizerFiles::of_chars(t),
            crate::model::text::Text::Pretrained(c) => {
                export::TokenizerFiles::of_pretrained(&c.tok)?
            }
        };
        if cfg.arch.mtp.is_some() {
            eprintln!(
                "note: the multi-token-prediction depth is left out (no transformers model runs one)"
            );
        }
        (export::write_folder(&out, &model, &cfg, &files)?, out)
    };
    for f in written {
        outln!("{}", crate::untrusted::display(&f.display().to_string()));
    }
    eprintln!(
        "load it with AutoModelForCausalLM.from_pretrained({:?})",
        out.display().to_string()
    );
    Ok(())
}
