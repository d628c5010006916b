//! The experiment spec: `experiments/<name>/experiment.toml` parsed, validated and resolved.
//!
//! Loading goes in three steps: a span index of the raw TOML (for error positions), serde into
//! [`types::ExperimentSpec`] (unknown keys and wrong types), then [`validate`] (cross-references
//! and ranges). Every error names `file:line:col`.

pub mod overrides;
pub mod resolve;
pub mod source;
pub mod span;
pub mod types;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use resolve::StageConfig;
pub use types::*;

/// Where a problem is: a place in a file, or a command-line override.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File {
        file: PathBuf,
        line: usize,
        col: usize,
    },
    /// A `--set KEY=VALUE` argument.
    Override(String),
    /// The file as a whole (missing, unreadable).
    Path(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line, col } => write!(f, "{}:{line}:{col}", file.display()),
            Origin::Override(s) => write!(f, "--set {s}"),
            Origin::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One problem with a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub origin: Origin,
    pub message: String,
}

impl SpecError {
    /// Line and column, when the error points into the file.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match &self.origin {
            Origin::File { line, col, .. } => Some((*line, *col)),
            _ => None,
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// All the problems found in one spec (validation reports every one, not just the first).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }
}

/// A loaded, validated experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The experiment folder (holds `experiment.toml` and `runs/`).
    pub dir: PathBuf,
    /// The spec file.
    pub file: PathBuf,
    /// Display name: the spec's `name`, else the folder name.
    pub name: String,
    pub spec: ExperimentSpec,
}

impl Experiment {
    /// The folder that holds this experiment's runs.
    pub fn runs_dir(&self) -> PathBuf {
        self.dir.join("runs")
    }

    /// A stage by name.
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.spec.stage.iter().find(|s| s.name == name)
    }

    /// Position of a stage in the pipeline.
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.spec.stage.iter().position(|s| s.name == name)
    }

    /// The external programs running `stages` (empty: every stage) would start, as
    /// `stage/reward: command` lines in pipeline order: what the notebook shows before it starts
    /// such a run, and what `run --programs-shown` checks it against.
    pub fn programs(&self, stages: &[String]) -> Vec<String> {
        self.spec
            .stage
            .iter()
            .filter(|s| stages.is_empty() || stages.contains(&s.name))
            .filter_map(|s| self.resolved(&s.name))
            .flat_map(|c| {
                c.reward_programs()
                    .map(|(name, p)| format!("{}/{name}: {}", c.name, p.shown()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A stage with every default applied.
    pub fn resolved(&self, name: &str) -> Option<StageConfig> {
        self.stage(name)
            .map(|s| StageConfig::resolve(s, &self.spec.model, self.spec.task.heldout))
    }
}

/// A short fingerprint of program lines ([`Experiment::programs`]): FNV-1a over the lines, as
/// 16 hex digits. The notebook passes it to the child it starts, which refuses to run programs
/// other than the ones shown (a spec edited between the dialog and the start).
pub fn programs_digest(lines: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lines.join("\n").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `EXP` on the command line: an experiment folder or its `experiment.toml`.
pub fn spec_path(exp: &Path) -> PathBuf {
    if exp.is_dir() {
        exp.join("experiment.toml")
    } else {
        exp.to_path_buf()
    }
}

/// Load and validate an experiment, with `--set` overrides applied.
pub fn load_with(exp: &Path, sets: &[String]) -> Result<Experiment, SpecErrors> {
    let file = spec_path(exp);
    // Not waited on if it is a FIFO; a spec is a small file.
    let text = crate::untrusted::read_small(&file, 16 << 20).map_err(|e| SpecError {
        origin: Origin::Path(file.clone()),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "no such experiment file (EXP is a folder holding experiment.toml, or the file itself)"
                .to_string()
        } else {
            format!("cannot read: {e}")
        },
    })?;
    let mut spec = parse_str(&text, &file)?;
    let applied = overrides::apply(&mut spec, sets)?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    resolve_data_paths(&mut spec, &dir);
    let index = span::SpanIndex::parse(&text).expect("parsed once already");
    let errors = validate::validate(
        &spec,
        &validate::Locator::new(&file, &index, &applied),
        &dir,
    );
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    let name = spec.name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "experiment".into())
    });
    Ok(Experiment {
        dir,
        file,
        name,
        spec,
    })
}

/// Make a dataset task's relative `path` and `test`, and `[model] from`, absolute: the first of
/// the experiment folder, the project root (two levels up: `experiments/<exp>`) and the current
/// folder that holds the file or folder. A path found nowhere is left as written (validation
/// reports it).
fn resolve_data_paths(spec: &mut ExperimentSpec, dir: &Path) {
    let t = &mut spec.task;
    let from = spec.model.from.as_mut();
    for p in [&mut t.path, &mut t.test].into_iter().flatten().chain(from) {
        let rel = PathBuf::from(&*p);
        if rel.is_absolute() {
            continue;
        }
        let candidates = [
            Some(dir.join(&rel)),
            dir.parent().and_then(Path::parent).map(|r| r.join(&rel)),
            Some(rel.clone()),
        ];
        if let Some(found) = candidates.into_iter().flatten().find(|c| c.exists()) {
            *p = found
                .canonicalize()
                .unwrap_or(found)
                .to_string_lossy()
                .into_owned();
        }
    }
}

/// Load and validate an experiment as the file says.
pub fn load(exp: &Path) -> Result<Experiment, SpecErrors> {
    load_with(exp, &[])
}

/// Parse TOML text into the typed spec (syntax, unknown keys, types); no validation.
pub fn parse_str(text: &str, file: &Path) -> Result<ExperimentSpec, SpecError> {
    let at = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, col) = span::line_col(text, span.map(|s| s.start).unwrap_or(0));
        SpecError {
            origin: Origin::File {
                file: file.to_path_buf(),
                line,
                col,
            },
            message,
        }
    };
    if let Err((span, msg)) = span::SpanIndex::parse(text) {
        return Err(at(span, format!("invalid TOML: {}", msg.trim())));
    }
    toml::from_str::<ExperimentSpec>(text).map_err(|e| at(e.span(), e.message().trim().to_string()))
}
