//! Tiny stages end to end: pretrain → sft → eval write a complete run folder, and a stage killed
//! with SIGKILL resumes from its checkpoint onto the same loss curve.

use stageloop::runfs::{self, RunStatus, Status, metrics::parse_metric_line};
use std::collections::BTreeMap;
use std::path::Path;

use crate::common;

const TINY: &str = r#"name = "tiny"
seed = 5

[model]
d_model = 32
layers = 2
heads = 2
mlp = 64
ctx = 40

[task]
name = "arith"
difficulty = 1
heldout = 50

[[stage]]
name = "pre"
kind = "pretrain"
steps = 40
batch = 16
lr = 3e-3
warmup = 5
checkpoint_every = 10
sample_every = 20

[[stage]]
name = "sft"
kind = "sft"
init = "pre"
steps = 5
batch = 8
examples = 40

[[stage]]
name = "ev"
kind = "eval"
init = "sft"
prompts = 10
k = 2
"#;

fn losses(run: &Path) -> BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for row in text.lines().filter_map(|l| parse_metric_line(l).ok()) {
        if let Some(Some(l)) = row.values.get("loss") {
            out.insert(row.step, *l); // a resumed run rewrites steps: keep the last
        }
    }
    out
}

fn run_of(exp: &Path, stage: &str) -> runfs::RunDir {
    runfs::latest_run_of(&exp.join("runs"), stage).unwrap().0
}

#[test]
fn pretrain_sft_eval_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    common::run_experiment(d.path(), TINY);

    let pre = run_of(d.path(), "pre");
    let st = RunStatus::load(&pre.path).unwrap();
    assert_eq!(st.status, Status::Done);
    assert_eq!(st.progress.step, 40);
    let l = losses(&pre.path);
    assert_eq!(l.len(), 40);
    let first: f64 = l.values().take(5).sum::<f64>() / 5.0;
    let last: f64 = l.values().rev().take(5).sum::<f64>() / 5.0;
    assert!(last < first * 0.8, "loss should fall: {first} → {last}");
    assert!(
        runfs::checkpoint::latest(&pre.path)
            .unwrap()
            .ends_with("step-000040")
    );
    let metrics = std::fs::read_to_string(pre.metrics()).unwrap();
    for key in [
        "learning_rate",
        "grad_norm",
        "tokens_per_sec",
        "step_time",
        "num_tokens",
    ] {
        assert!(metrics.contains(key), "{key}");
    }
    assert!(
        std::fs::read_to_string(pre.samples())
            .unwrap()
            .lines()
            .count()
            >= 8
    );

    let sft = run_of(d.path(), "sft");
    assert_eq!(RunStatus::load(&sft.path).unwrap().status, Status::Done);

    let ev = run_of(d.path(), "ev");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.eval_json()).unwrap()).unwrap();
    let mut keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "flops",
            "format_rate",
            "greedy",
            "k",
            "maj@k",
            "mean_length",
            "n",
            "pass@1",
            "pass@k",
            "pass_at",
            "task"
        ]
    );
    assert_eq!(report["n"], 10);
    assert!(report["flops"].as_f64().unwrap() > 0.0, "{report}");
    for k in ["pass@1", "greedy", "pass@k", "maj@k", "format_rate"] {
        let v = report[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    // 10 prompts × (1 greedy + 2 samples)
    assert_eq!(
        std::fs::read_to_string(ev.samples())
            .unwrap()
            .lines()
            .count(),
        30
    );
}

#[test]
fn killed_stage_resumes_onto_the_same_loss_curve() {
    let bin = env!("CARGO_BIN_EXE_stageloop");
    // Uninterrupted reference.
    let a = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("experiment.toml"), TINY).unwrap();
    let ok = std::process::Command::new(bin)
        .args(["run"])
        .arg(a.path())
        .args(["--stage", "pre"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let reference = losses(&run_of(a.path(), "pre").path);

    // Killed after its second checkpoint, then run again.
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("experiment.toml"), TINY).unwrap();
    common::kill_at_checkpoint(b.path(), "pre", "step-000020");
    let run = run_of(b.path(), "pre");
    let st = RunStatus::load(&run.path).unwrap();
    assert_eq!(st.effective_status(&run.path), Status::Crashed);
    // Liveness is the lock, not run.json's pid: pid 0, -1 as u32, or a live unrelated process
    // (this test; a pid reused after a power loss) still say crashed, and the run resumes below.
    for pid in [0, u32::MAX, std::process::id()] {
        let mut s = st.clone();
        s.pid = Some(pid);
        s.save(&run.path).unwrap();
        assert_eq!(s.effective_status(&run.path), Status::Crashed, "pid {pid}");
    }
    let st = RunStatus::load(&run.path).unwrap();

    // While another process writes the run (here: this test holds its lock), it is running:
    // `run` leaves it alone and starts a run of its own beside it (what the notebook's "start
    // it again" asks about); a resume of the held folder itself is refused before it writes
    // anything, naming the run and the holder.
    let held = runfs::lock::RunLock::acquire(&run.path).unwrap();
    assert_eq!(st.effective_status(&run.path), Status::Running);
    let beside = std::process::Command::new(bin)
        .args(["run"])
        .arg(b.path())
        .args(["--stage", "pre"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&beside.stderr);
    assert!(beside.status.success(), "{err}");
    let other = run_of(b.path(), "pre");
    assert_ne!(other.path, run.path);
    assert_eq!(
        RunStatus::load(&run.path).unwrap(),
        st,
        "run.json untouched"
    );
    std::fs::remove_dir_all(&other.path).unwrap();
    let e = runfs::lock::RunLock::acquire(&run.path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&run.id()) && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    drop(held);

    let again = std::process::Command::new(bin)
        .args(["run"])
        .arg(b.path())
        .args(["--stage", "pre"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("resuming"));
    // Same folder, finished, and the loss curve matches the uninterrupted one.
    assert_eq!(run_of(b.path(), "pre").path, run.path);
    assert_eq!(RunStatus::load(&run.path).unwrap().status, Status::Done);
    // The run's own log has both attempts (the notebook's logs pane reads it).
    let log = std::fs::read_to_string(run.stdout_log()).unwrap();
    assert_eq!(log.matches("▶ pre").count(), 2, "{log}");
    assert!(log.contains("✔ pre done"), "{log}");
    // run.json says where the run went on from; num_tokens counts on from the checkpoint.
    let st = RunStatus::load(&run.path).unwrap();
    assert_eq!(
        st.resumed_at.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![20]
    );
    let last_tokens = |run: &Path| {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines()
            .rev()
            .filter_map(|l| parse_metric_line(l).ok())
            .find_map(|row| row.values.get("num_tokens").copied().flatten())
            .unwrap()
    };
    assert_eq!(
        last_tokens(&run.path),
        last_tokens(&run_of(a.path(), "pre").path)
    );
    let resumed = losses(&run.path);
    assert_eq!(resumed.len(), reference.len());
    for (step, l) in &reference {
        let r = resumed[step];
        assert!(
            (l - r).abs() <= 1e-4 * l.abs().max(1.0),
            "step {step}: {l} vs {r}"
        );
    }
}

/// `[model] precision = "bf16"`: the same pretraining with bf16 product operands ends near the
/// f32 run's loss, and run.json says which precision ran (bf16 only where the CPU has
/// AVX512_BF16).
#[test]
fn bf16_products_train_like_f32_and_run_json_says_so() {
    // Products of at least 192³ multiply-adds run in bf16: 32 × 64 tokens through d 96.
    let spec = |precision: &str| {
        format!(
            "name = \"p\"\nseed = 3\n[model]\nd_model = 96\nlayers = 2\nheads = 4\nmlp = 384\n\
             ctx = 64\nprecision = \"{precision}\"\n[task]\nname = \"arith\"\nheldout = 10\n\
             [[stage]]\nname = \"pre\"\nkind = \"pretrain\"\nsteps = 30\nbatch = 32\n\
             lr = 3e-3\nsample_every = 0\n"
        )
    };
    let mut last = Vec::new();
    for precision in ["f32", "bf16"] {
        let d = tempfile::tempdir().unwrap();
        common::run_experiment(d.path(), &spec(precision));
        let run = run_of(d.path(), "pre");
        let status = runfs::status::RunStatus::load(&run.path).unwrap();
        let said = status.precision.unwrap();
        if precision == "f32" {
            assert_eq!(said, "f32");
        } else if stageloop::cpu::bf16::available() {
            assert_eq!(said, "bf16");
        } else {
            assert!(said.starts_with("f32 (bf16 asked"), "{said}");
        }
        let l = losses(&run.path);
        let first = *l.values().next().unwrap();
        let end = *l.values().last().unwrap();
        assert!(
            end.is_finite() && end < first - 0.3,
            "{precision}: {first} → {end}"
        );
        last.push(end);
    }
    // Operands rounded to 8 bits of mantissa: the curves stay close.
    assert!(
        (last[0] - last[1]).abs() < 0.05 * last[0],
        "f32 ends at {}, bf16 at {}",
        last[0],
        last[1]
    );
}
