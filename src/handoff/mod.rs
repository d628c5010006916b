//! Hand a stage over to another framework: `stageloop export EXP --stage NAME --to trl` (or
//! `--to verl`) writes a folder a GPU cluster runs as it is. The stage's settings are mapped one to one where the
//! framework has them ([`trl::settings`]); what has no equivalent is named. The rewards stay
//! stageloop's own (the script pipes completions to `stageloop score`), and the script writes a
//! stageloop run folder as it trains, so the notebook watches the cluster's run beside the
//! local ones.
//!
//! ```text
//! OUT/  train.py  stage.json  data/train.jsonl  model/ (when exported)  requirements.txt
//!       README.md  runs/<yyyymmdd-HHMMSS>-<stage>/ (written by train.py)
//! ```

pub mod trl;
pub mod verl;

use crate::spec::resolve::StageConfig;
use crate::spec::{Experiment, StageKind};
use crate::tasks::TaskSet;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A setting the target framework has no equivalent for, and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmapped {
    pub key: String,
    pub why: String,
}

impl Unmapped {
    pub fn new(key: &str, why: &str) -> Unmapped {
        Unmapped {
            key: key.to_string(),
            why: why.to_string(),
        }
    }
}

/// Comment lines for a script's head: each setting `framework` has no equivalent for, or, when
/// there is none, that every setting carried over (`where_` says where to, may be empty).
pub fn unmapped_comment(unmapped: &[Unmapped], framework: &str, where_: &str) -> String {
    if unmapped.is_empty() {
        return format!("# Every setting of the stage has a {framework} equivalent{where_}.\n");
    }
    let mut h = format!("# Settings with no {framework} equivalent (not carried over):\n");
    for u in unmapped {
        h += &format!("#   {}: {}\n", u.key, u.why);
    }
    h
}

/// This binary's path, which the handed-over scripts call as `stageloop score`.
pub fn stageloop_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "stageloop".into())
}

/// The last of an export: its README, its script made executable, and the report.
pub fn finish(
    out: &Path,
    readme: &str,
    script: &str,
    mut files: Vec<PathBuf>,
    unmapped: Vec<Unmapped>,
    model: PathBuf,
    launch: Vec<String>,
) -> Result<Report> {
    write_to(out, "README.md", readme, &mut files)?;
    executable(&out.join(script));
    Ok(Report {
        files,
        unmapped,
        model,
        launch,
    })
}

/// What an export wrote and left out.
#[derive(Debug)]
pub struct Report {
    pub files: Vec<PathBuf>,
    pub unmapped: Vec<Unmapped>,
    /// The model the script trains: a Hugging Face folder referenced where it is, or exported.
    pub model: PathBuf,
    /// The command that runs it on one machine, and on several GPUs.
    pub launch: Vec<String>,
}

/// The model a handed-over stage starts from, as a Hugging Face folder: `--model` when given;
/// else its `init` stage's latest finished checkpoint, or `[model] from`, exported into
/// `out/model` unless it is a Hugging Face folder already (then it is referenced in place).
pub fn model_folder(
    exp: &Experiment,
    cfg: &StageConfig,
    given: Option<&Path>,
    out: &Path,
) -> Result<(PathBuf, Vec<PathBuf>)> {
    let source = match (given, &cfg.init) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(init)) => crate::stages::pipeline::checkpoint_of_stage(exp, init, &cfg.name)?,
        (None, None) => match &exp.spec.model.from {
            Some(f) => PathBuf::from(f),
            None => bail!(
                "stage `{}` has no model to start from: it has no `init` and `[model]` has no `from` (pass --model PATH)",
                cfg.name
            ),
        },
    };
    if crate::spec::source::is_pretrained(&source) && source.is_dir() {
        let abs = source.canonicalize().unwrap_or(source);
        return Ok((abs, Vec::new()));
    }
    let dest = out.join("model");
    let dev = crate::model::device()?;
    use crate::model::pretrained::{self, export};
    let written = if crate::spec::source::is_pretrained(&source) {
        let p = pretrained::load(&source, &dev)?;
        let tok = export::TokenizerFiles::of_pretrained(&p.tokenizer)?;
        export::write_folder(&dest, &p.model, &p.cfg, &tok)?
    } else {
        let dir = crate::runfs::checkpoint::resolve(&source).with_context(|| {
            format!(
                "{}: not a checkpoint, a run, a Hugging Face folder or a .gguf file",
                source.display()
            )
        })?;
        // A LoRA checkpoint loads as its base with the adapters attached; the folder holds
        // them merged (the handed-over stage adds adapters of its own).
        let (model, mcfg, text) = crate::model::checkpoint::load_model(&dir, &dev)?;
        let files = match &text {
            crate::model::text::Text::Chars(t) => export::TokenizerFiles::of_chars(t),
            crate::model::text::Text::Pretrained(c) => {
                export::TokenizerFiles::of_pretrained(&c.tok)?
            }
        };
        export::write_folder(&dest, &model, &mcfg, &files)?
    };
    Ok((dest.canonicalize().unwrap_or(dest), written))
}

/// How the task's prompts are given to the other framework: as chat messages (its chat
/// template applied, the system prompt first) for a pretrained chat model; else as text, with
/// the beginning-of-sequence token stageloop's character models expect written in front.
#[derive(Debug, Clone)]
pub enum PromptForm {
    Chat { system: Option<String> },
    Text { prefix: String },
}

impl PromptForm {
    /// The prompt form of an experiment's model (the `model` folder's tokenizer tells a
    /// character model's BOS text).
    pub fn of(exp: &Experiment, model: &Path) -> PromptForm {
        let m = &exp.spec.model;
        let tok_cfg = crate::untrusted::read_small(&model.join("tokenizer_config.json"), 64 << 20)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if m.from.is_some() {
            let style = crate::model::text::style(m.chat, m.system.as_deref());
            let has_template = tok_cfg
                .as_ref()
                .is_some_and(|v| v.get("chat_template").is_some())
                || model.join("chat_template.jinja").is_file();
            if style.chat && has_template {
                return PromptForm::Chat {
                    system: style.system,
                };
            }
            return PromptForm::Text {
                prefix: String::new(),
            };
        }
        let bos = tok_cfg
            .and_then(|v| v.get("bos_token")?.as_str().map(str::to_string))
            .unwrap_or_default();
        PromptForm::Text { prefix: bos }
    }

    /// A task prompt in this form (a JSON string, or a list of chat messages).
    pub fn prompt(&self, text: &str) -> serde_json::Value {
        match self {
            PromptForm::Chat { system } => {
                let mut msgs = Vec::new();
                if let Some(s) = system {
                    msgs.push(serde_json::json!({"role": "system", "content": s}));
                }
                msgs.push(serde_json::json!({"role": "user", "content": text}));
                serde_json::Value::Array(msgs)
            }
            PromptForm::Text { prefix } => serde_json::Value::String(format!("{prefix}{text}")),
        }
    }

    /// A supervised completion in this form.
    pub fn completion(&self, text: &str) -> serde_json::Value {
        match self {
            PromptForm::Chat { .. } => {
                serde_json::json!([{"role": "assistant", "content": text}])
            }
            PromptForm::Text { .. } => serde_json::Value::String(text.to_string()),
        }
    }
}

/// The stage's training problems, drawn from the task's training split as the local stage
/// draws them: GRPO's `steps × prompts` prompts, SFT's `examples` pairs.
pub fn training_problems(cfg: &StageConfig, tasks: &TaskSet) -> Vec<crate::tasks::Problem> {
    let n = match cfg.kind {
        StageKind::Grpo => cfg.steps as usize * cfg.prompts,
        _ => cfg.examples,
    };
    (0..n as u64).map(|i| tasks.train_problem(i)).collect()
}

/// The training problems as JSON lines: the prompt in `form`, `problem` (the task's own
/// prompt, what `stageloop score` reads) and `answer`; an SFT stage's with their completion.
pub fn training_rows(
    cfg: &StageConfig,
    tasks: &TaskSet,
    problems: &[crate::tasks::Problem],
    form: &PromptForm,
) -> Vec<String> {
    problems
        .iter()
        .map(|p| {
            let mut row = serde_json::json!({
                "prompt": form.prompt(&p.prompt),
                "problem": p.prompt,
                "answer": p.answer,
            });
            if cfg.kind == StageKind::Sft {
                row["completion"] = form.completion(&tasks.completion(p));
            }
            row.to_string()
        })
        .collect()
}

/// Write `text` to `out/name` (atomically) and add the path to `files`.
fn write_to(out: &Path, name: &str, text: &str, files: &mut Vec<PathBuf>) -> Result<()> {
    let p = out.join(name);
    crate::runfs::atomic::write_file(&p, text.as_bytes())
        .map_err(|e| crate::runfs::atomic::named(&p, e))?;
    files.push(p);
    Ok(())
}

/// Make a written script executable (where files have modes).
fn executable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The unmapped settings as `stage.json` lists them.
fn unmapped_json(unmapped: &[Unmapped]) -> serde_json::Value {
    serde_json::Value::Array(
        unmapped
            .iter()
            .map(|u| serde_json::json!({"key": u.key, "why": u.why}))
            .collect(),
    )
}

/// Export `stage` of `exp` for `to` (`trl` or `verl`) into `out`.
pub fn export(
    exp: &Experiment,
    stage: &str,
    to: &str,
    out: &Path,
    model: Option<&Path>,
) -> Result<Report> {
    let Some(cfg) = exp.resolved(stage) else {
        let names: Vec<&str> = exp.spec.stage.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "{}: no stage `{stage}` (stages: {})",
            exp.file.display(),
            names.join(", ")
        );
    };
    match to {
        "trl" => trl::export(exp, &cfg, out, model),
        "verl" => verl::export(exp, &cfg, out, model),
        other => bail!(
            "--to {other}: stageloop hands stages to `trl` (TRL's GRPOTrainer and SFTTrainer) or `verl` (its main_ppo, GRPO stages)"
        ),
    }
}
