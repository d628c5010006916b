//! `stageloop check EXP`: validate a spec and summarise it in one line.

use crate::spec;
use std::path::Path;

pub fn run(exp: &Path, sets: &[String]) -> anyhow::Result<()> {
    let e = spec::load_with(exp, sets)?;
    let s = &e.spec;
    let stages: Vec<String> = s
        .stage
        .iter()
        .map(|st| format!("{}({})", st.name, st.kind))
        .collect();
    let loops = if s.loops.is_empty() {
        String::new()
    } else {
        format!(", {} loop(s)", s.loops.len())
    };
    // A pretrained model is loaded once: its headers, every tensor's extent and shape, and
    // that its weights are finite (a broken file is an error here, not garbage in `run`).
    let model = match &s.model.from {
        Some(from) => {
            let device = crate::model::device()?;
            let cfg = crate::model::pretrained::load(Path::new(from), &device)?.cfg;
            format!(
                "model {} (d{}×{}L, {}M params)",
                crate::untrusted::display(from),
                cfg.d_model,
                cfg.layers,
                cfg.params() / 1_000_000
            )
        }
        None => format!("model d{}×{}L", s.model.d_model, s.model.layers),
    };
    outln!(
        "ok: {} — task {} (difficulty {}), {model}, {} stages{}: {}",
        e.name,
        s.task.name,
        s.task.difficulty,
        s.stage.len(),
        loops,
        stages.join(" → ")
    );
    // Programs of the user's own that `run` would start: shown before anything runs them.
    for st in &s.stage {
        if let Some(c) = e.resolved(&st.name) {
            for (name, p) in c.reward_programs() {
                outln!(
                    "runs: stage {} reward `{name}`: {} (in {})",
                    st.name,
                    p.shown(),
                    e.dir.display()
                );
            }
        }
    }
    Ok(())
}
