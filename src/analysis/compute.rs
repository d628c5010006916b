//! Compute along a checkpoint's lineage: the FLOPs its stage had spent when it was written
//! (`flops` in the checkpoint's `state.json`), plus those of the checkpoint that stage started
//! from, and so on back to a fresh or pretrained model. Reads run folders only; the report and
//! the notebook both call it.

use crate::runfs::{RunStatus, checkpoint::LATEST};
use std::path::{Path, PathBuf};

/// The file in a checkpoint folder that records its stage's `flops` (written by the stages).
const STATE: &str = "state.json";

/// How far back a lineage is followed (a guard against a cycle of hand-edited `run.json`s).
const MAX_DEPTH: usize = 64;

/// FLOPs along a lineage, and the stages it passed through (newest first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lineage {
    pub flops: f64,
    pub stages: Vec<String>,
    /// Some checkpoint on the way had no `flops` (written by an older build) or could not be
    /// read: `flops` is then a lower bound.
    pub partial: bool,
}

/// The `flops` a checkpoint records; None when it records none or cannot be read.
pub fn checkpoint_flops(ckpt: &Path) -> Option<f64> {
    let text = crate::untrusted::read_small(&ckpt.join(STATE), 1 << 20).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("flops")?.as_f64().filter(|f| f.is_finite())
}

/// The run folder a checkpoint folder belongs to (`<run>/checkpoints/step-N`).
fn run_of(ckpt: &Path) -> Option<PathBuf> {
    let parent = ckpt.parent()?;
    (parent.file_name()? == crate::runfs::CHECKPOINTS)
        .then(|| parent.parent().map(Path::to_path_buf))?
}

/// Where a recorded `init` path is now: as written, or (recorded relative to another working
/// directory) the same `<run-id>/checkpoints/<step>` under `runs_dir`.
pub fn locate(init: &str, runs_dir: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(init);
    if p.exists() {
        return p;
    }
    let tail: Vec<_> = p.components().rev().take(3).collect();
    match runs_dir {
        Some(dir) if tail.len() == 3 => tail.iter().rev().fold(dir.to_path_buf(), |d, c| d.join(c)),
        _ => p,
    }
}

/// FLOPs spent to produce the checkpoint `ckpt` (see the module doc). A pretrained model's own
/// training is not known and counts as nothing; the lineage ends there.
pub fn lineage(ckpt: &Path) -> Lineage {
    let mut out = Lineage::default();
    let mut at = Some(ckpt.to_path_buf());
    let mut seen = Vec::new();
    while let Some(ck) = at.take() {
        let Some(run) = run_of(&ck) else { break };
        if seen.contains(&run) || seen.len() >= MAX_DEPTH {
            out.partial = true;
            break;
        }
        let status = RunStatus::load(&run).ok();
        match checkpoint_flops(&ck) {
            Some(f) => out.flops += f,
            None => out.partial = true,
        }
        out.stages
            .push(status.as_ref().map(|s| s.stage.clone()).unwrap_or_default());
        at = status
            .and_then(|s| s.init)
            .map(|init| locate(&init, run.parent()));
        seen.push(run);
    }
    out
}

/// The checkpoint a finished run ended on (what `checkpoints/latest` names).
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    let dir = run.join(crate::runfs::CHECKPOINTS);
    let name = crate::untrusted::read_small(&dir.join(LATEST), 4096).ok()?;
    let p = dir.join(name.trim());
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfs::{Progress, Status};

    fn run(
        root: &Path,
        id: &str,
        stage: &str,
        init: Option<String>,
        flops: Option<f64>,
    ) -> PathBuf {
        let dir = root.join(id);
        let ck = dir.join("checkpoints").join("step-000010");
        std::fs::create_dir_all(&ck).unwrap();
        let state = match flops {
            Some(f) => serde_json::json!({"step": 10, "flops": f}),
            None => serde_json::json!({"step": 10}),
        };
        std::fs::write(ck.join(STATE), state.to_string()).unwrap();
        std::fs::write(dir.join("checkpoints").join(LATEST), "step-000010\n").unwrap();
        RunStatus {
            id: id.into(),
            experiment: "x".into(),
            stage: stage.into(),
            kind: "sft".into(),
            status: Status::Done,
            pid: None,
            started: None,
            ended: None,
            progress: Progress::default(),
            config: serde_json::Value::Null,
            init,
            iteration: None,
            error: None,
            resumed_at: vec![],
            device: None,
            seed: None,
            precision: None,
            frozen_base: None,
            writer: None,
            model: None,
        }
        .save(&dir)
        .unwrap();
        ck
    }

    #[test]
    fn lineage_adds_each_ancestor_once_and_finds_moved_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        let base = run(
            &root,
            "20260101-000000-pretrain",
            "pretrain",
            None,
            Some(100.0),
        );
        // Recorded relative to another working directory: found under the same runs folder.
        let moved = "elsewhere/runs/20260101-000000-pretrain/checkpoints/step-000010".to_string();
        let sft = run(&root, "20260101-000001-sft", "sft", Some(moved), Some(10.0));
        let grpo = run(
            &root,
            "20260101-000002-grpo",
            "grpo",
            Some(sft.display().to_string()),
            Some(1.0),
        );
        let l = lineage(&grpo);
        assert_eq!(l.flops, 111.0);
        assert_eq!(l.stages, vec!["grpo", "sft", "pretrain"]);
        assert!(!l.partial);
        assert_eq!(lineage(&base).flops, 100.0);
        assert_eq!(
            latest_checkpoint(&root.join("20260101-000001-sft")),
            Some(sft)
        );
        // An older checkpoint without flops makes the figure a lower bound.
        let old = run(&root, "20260101-000003-old", "old", None, None);
        assert!(lineage(&old).partial);
        // A pretrained model as the start ends the lineage.
        let p = run(
            &root,
            "20260101-000004-lora",
            "lora",
            Some("/no/such/model.gguf".into()),
            Some(5.0),
        );
        assert_eq!(lineage(&p).flops, 5.0);
    }

    #[test]
    fn a_cycle_of_run_jsons_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        let a_ck = root.join("20260101-000000-a/checkpoints/step-000010");
        let b = run(
            &root,
            "20260101-000001-b",
            "b",
            Some(a_ck.display().to_string()),
            Some(1.0),
        );
        run(
            &root,
            "20260101-000000-a",
            "a",
            Some(b.display().to_string()),
            Some(2.0),
        );
        let l = lineage(&b);
        assert_eq!(l.flops, 3.0);
        assert!(l.partial);
    }
}
