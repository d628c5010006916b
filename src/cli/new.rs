//! `stageloop new NAME`: scaffold an experiment from a bundled template.

use anyhow::{Context, bail};
use std::path::Path;

/// Bundled templates: the experiments shipped in `experiments/`, compiled in.
pub const TEMPLATES: &[(&str, &str)] = &[(
    "r1-arith",
    include_str!("../../experiments/r1-arith/experiment.toml"),
)];

pub fn run(name: &str, template: &str, dir: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("experiment names use letters, digits, `-` and `_` only: `{name}`");
    }
    let Some((_, text)) = TEMPLATES.iter().find(|(t, _)| *t == template) else {
        let known: Vec<&str> = TEMPLATES.iter().map(|(t, _)| *t).collect();
        bail!(
            "unknown template `{template}` (known: {})",
            known.join(", ")
        );
    };
    let folder = dir.join(name);
    let file = folder.join("experiment.toml");
    if file.exists() {
        bail!("{}: already exists", file.display());
    }
    std::fs::create_dir_all(&folder).with_context(|| format!("{}", folder.display()))?;
    let text = text.replacen(
        &format!("name = \"{template}\""),
        &format!("name = \"{name}\""),
        1,
    );
    std::fs::write(&file, text).with_context(|| format!("{}", file.display()))?;
    outln!("created {}", file.display());
    Ok(())
}
