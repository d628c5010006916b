//! Other frameworks' runs (TRL, verl, prime-rl, TensorBoard) on fixtures written here: the
//! notebook's workspace reads and tails them, `runs --json` lists them with their alerts, and
//! `export` writes their tables.

use assert_cmd::Command;
use stageloop::notebook::workspace::Workspace;
use stageloop::runfs::Status;
use stageloop::runfs::foreign::{self, Format, tfevents};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const STEPS: u64 = 12;

/// A value falling from `a` to `b` over the steps.
fn fall(a: f64, b: f64, step: u64) -> f64 {
    a + (b - a) * (step - 1) as f64 / (STEPS - 1) as f64
}

/// `root/cluster/` with one run of each format: TRL whose entropy collapses, verl whose
/// completions hit the limit, prime-rl (with time-keyed rows and traces), TensorBoard.
fn cluster(root: &Path) -> std::path::PathBuf {
    let c = root.join("cluster");
    // TRL: a checkpoint's trainer_state.json.
    let ck = c.join("trl-grpo/checkpoint-12");
    std::fs::create_dir_all(&ck).unwrap();
    let history: Vec<serde_json::Value> = (1..=STEPS)
        .map(|s| {
            serde_json::json!({"step": s, "loss": 0.01, "reward": fall(0.2, 0.6, s),
                "entropy": fall(1.0, 0.05, s), "completions/mean_length": 30.0})
        })
        .collect();
    std::fs::write(
        ck.join("trainer_state.json"),
        serde_json::json!({"global_step": STEPS, "max_steps": 100, "log_history": history})
            .to_string(),
    )
    .unwrap();
    // verl: the file logger's <experiment>.jsonl and a rollout dump.
    let v = c.join("verl-ppo");
    std::fs::create_dir_all(v.join("rollouts")).unwrap();
    let mut log = String::new();
    for s in 1..=STEPS {
        log += &serde_json::json!({"step": s, "data": {"critic/score/mean": fall(0.1, 0.3, s),
            "response_length/mean": 200.0, "response_length/clip_ratio": 0.5,
            "actor/entropy": 0.8}})
        .to_string();
        log.push('\n');
    }
    log += "{\"step\": 13, \"data\": {\"critic/sc\n"; // a torn line
    std::fs::write(v.join("grpo_qwen.jsonl"), log).unwrap();
    std::fs::write(
        v.join("rollouts/12.jsonl"),
        "{\"input\": \"2+3?\", \"output\": \"<answer>5</answer>\", \"gts\": \"5\", \"score\": 1.0, \"step\": 12}\n\
         {\"input\": \"2+4?\", \"output\": \"<answer>7</answer>\", \"gts\": \"6\", \"score\": 0.0, \"step\": 12}\n",
    )
    .unwrap();
    // prime-rl: metrics.jsonl with a time-keyed gauge row, and traces.
    let p = c.join("prime-rl-out");
    std::fs::create_dir_all(p.join("traces/step_3/train")).unwrap();
    let mut m = String::new();
    for s in 1..=STEPS {
        m += &serde_json::json!({"step": s, "time": 1_700_000_000.0 + s as f64,
            "reward/all/mean": fall(0.3, 0.5, s), "decode_len/all/mean": 100.0,
            "producer": "orchestrator"})
        .to_string();
        m += "\n{\"step\": null, \"time\": 1700000000.5, \"dispatcher/queue\": 3, \"producer\": \"watcher\"}\n";
    }
    std::fs::write(p.join("metrics.jsonl"), m).unwrap();
    std::fs::write(
        p.join("traces/step_3/train/traces.jsonl"),
        r#"{"prompt": [{"role": "user", "content": "sort 3 1 2"}], "completion": [{"role": "assistant", "content": "1 2 3"}], "reward": 1.0}
"#,
    )
    .unwrap();
    // TensorBoard: a SummaryWriter's events.
    let t = c.join("tb-openrlhf");
    std::fs::create_dir_all(&t).unwrap();
    let mut ev = Vec::new();
    for s in 1..=STEPS {
        ev.extend(tfevents::scalar_record(
            s as i64,
            1_700_000_000.0 + s as f64,
            &[
                ("train/loss", 2.0 - 0.1 * s as f32),
                ("train/reward", 0.1 * s as f32),
            ],
        ));
    }
    std::fs::write(t.join("events.out.tfevents.1700000000.node1.123.0"), ev).unwrap();
    c
}

/// `stageloop ARGS PATH`, asserted to succeed, its output as a JSON array.
fn json_of(args: &[&str], path: &Path) -> Vec<serde_json::Value> {
    let out = Command::cargo_bin("stageloop")
        .unwrap()
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn each_format_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    assert_eq!(foreign::detect(&c.join("trl-grpo")), Some(Format::Trl));
    assert_eq!(foreign::detect(&c.join("verl-ppo")), Some(Format::Verl));
    assert_eq!(
        foreign::detect(&c.join("prime-rl-out")),
        Some(Format::PrimeRl)
    );
    assert_eq!(
        foreign::detect(&c.join("tb-openrlhf")),
        Some(Format::TensorBoard)
    );
    assert_eq!(foreign::detect(d.path()), None);
}

#[test]
fn the_notebook_reads_each_format_with_samples_status_and_alerts() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_secs(5));
    assert_eq!(ws.experiments.len(), 1);
    let e = &ws.experiments[0];
    assert_eq!(e.runs_dir, c);
    let run = |id: &str| e.runs.iter().find(|r| r.id == id).unwrap();

    let trl = run("trl-grpo");
    assert_eq!(trl.stage(), "trl");
    assert_eq!(trl.series.len(), STEPS as usize);
    assert_eq!(
        trl.effective_status(),
        Some(Status::Running),
        "just written"
    );
    let st = trl.status.as_ref().unwrap();
    assert_eq!(
        (st.kind.as_str(), st.progress.step, st.progress.total),
        ("grpo", 12, 100)
    );
    let alerts: Vec<&str> = trl.alerts.iter().map(|a| a.name).collect();
    assert_eq!(alerts, vec!["entropy_collapse"]);

    let verl = run("verl-ppo");
    assert_eq!(verl.stage(), "verl");
    assert_eq!(verl.series.len(), STEPS as usize);
    assert_eq!(verl.bad_lines, 1, "the torn line");
    assert!(
        verl.last_error
            .as_deref()
            .unwrap()
            .contains("grpo_qwen.jsonl:13:")
    );
    let alerts: Vec<&str> = verl.alerts.iter().map(|a| a.name).collect();
    assert_eq!(
        alerts,
        vec!["truncation"],
        "verl's response_length/clip_ratio"
    );
    assert_eq!(verl.samples.len(), 2);
    assert_eq!(verl.samples[1].answer, "6");
    assert!(!verl.samples[1].correct());

    let prime = run("prime-rl-out");
    assert_eq!(prime.stage(), "prime-rl");
    assert_eq!(prime.series.len(), STEPS as usize);
    assert_eq!(prime.bad_lines, 0, "time-keyed rows are not bad lines");
    assert!(prime.series.column("dispatcher/queue").is_none());
    assert_eq!(prime.samples.len(), 1);
    assert_eq!(prime.samples[0].completion, "1 2 3");
    assert_eq!(prime.samples[0].step, 3);

    let tb = run("tb-openrlhf");
    assert_eq!(tb.stage(), "tensorboard");
    assert_eq!(tb.series.len(), STEPS as usize);
    let reward = tb.series.column("train/reward").unwrap();
    assert!((reward[11] - 1.2).abs() < 1e-6);
    assert_eq!(tb.series.last_step(), 12);
}

#[test]
fn foreign_runs_are_tailed_live() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_secs(5));
    // verl appends a record and half of another, TensorBoard writes another event, TRL saves a
    // newer checkpoint.
    let append = |p: &Path, b: &[u8]| {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b).unwrap();
    };
    append(
        &c.join("verl-ppo/grpo_qwen.jsonl"),
        b"{\"step\": 14, \"data\": {\"critic/score/mean\": 0.5}}\n{\"step\": 15, \"da",
    );
    append(
        &c.join("tb-openrlhf/events.out.tfevents.1700000000.node1.123.0"),
        &tfevents::scalar_record(13, 1_700_000_013.0, &[("train/reward", 1.3)]),
    );
    std::fs::write(c.join("prime-rl-out/final_summary.json"), "{}").unwrap();
    let ck = c.join("trl-grpo/checkpoint-20");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(
        ck.join("trainer_state.json"),
        r#"{"global_step": 100, "max_steps": 100, "log_history": [{"step": 100, "loss": 0.0}, {"step": 100, "train_runtime": 5.0}]}"#,
    )
    .unwrap();
    for e in &mut ws.experiments {
        for r in &mut e.runs {
            r.poll(Instant::now() + Duration::from_secs(5));
        }
    }
    let e = &ws.experiments[0];
    let run = |id: &str| e.runs.iter().find(|r| r.id == id).unwrap();
    assert_eq!(run("verl-ppo").series.last_step(), 14);
    assert_eq!(
        run("prime-rl-out").effective_status(),
        Some(Status::Done),
        "prime-rl's final_summary.json"
    );
    assert_eq!(
        run("verl-ppo").series.len(),
        13,
        "the half line waits for its end"
    );
    assert_eq!(run("verl-ppo").bad_lines, 1);
    assert_eq!(run("tb-openrlhf").series.last_step(), 13);
    let trl = run("trl-grpo");
    assert_eq!(trl.series.len(), 1, "the newer state replaces the older");
    assert_eq!(trl.effective_status(), Some(Status::Done));
}

#[test]
fn runs_json_lists_every_format_and_export_writes_their_tables() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let rows = json_of(&["runs", "--json"], &c);
    let by_id = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(rows.len(), 4);
    let trl = by_id("trl-grpo");
    assert_eq!(
        (trl["stage"].as_str(), trl["step"].as_u64()),
        (Some("trl"), Some(12))
    );
    assert_eq!(trl["alerts"], serde_json::json!(["entropy_collapse"]));
    assert_eq!(
        by_id("verl-ppo")["alerts"],
        serde_json::json!(["truncation"])
    );
    assert_eq!(by_id("prime-rl-out")["last"]["reward/all/mean"], 0.5);
    assert_eq!(by_id("tb-openrlhf")["stage"], "tensorboard");
    // One run folder alone; a TRL output folder is one run, not a folder of its checkpoints.
    for (dir, id) in [("verl-ppo", "verl-ppo"), ("trl-grpo", "trl-grpo")] {
        let rows = json_of(&["runs", "--json"], &c.join(dir));
        assert_eq!(rows.len(), 1, "{dir}");
        assert_eq!(rows[0]["id"], id);
    }
    // export: the TensorBoard run's scalars as a table.
    let out_dir = d.path().join("tb-export");
    Command::cargo_bin("stageloop")
        .unwrap()
        .args(["export", "--format", "csv", "--out"])
        .arg(&out_dir)
        .arg(c.join("tb-openrlhf"))
        .assert()
        .success();
    let csv = std::fs::read_to_string(out_dir.join("metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains("train/reward") && header.contains("step"),
        "{header}"
    );
    assert_eq!(csv.lines().count(), 1 + STEPS as usize);
}

#[test]
fn the_notebook_draws_foreign_runs_with_their_alerts() {
    use stageloop::notebook::app::App;
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_secs(5));
    let mut app = App::new(ws);
    // Select the TRL run.
    while app.selected_run().is_some_and(|r| r.id != "trl-grpo") {
        app.on_key(crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::Down,
            crossterm::event::KeyModifiers::NONE,
        ));
    }
    let s = crate::notebook::render(&app, 140, 40);
    for id in ["trl-grpo", "verl-ppo", "prime-rl-out", "tb-openrlhf"] {
        assert!(s.contains(id), "{id} missing");
    }
    assert!(s.contains("trl-grpo running ⚑1"), "its alert flag:\n{s}");
    assert!(s.contains("12/100"), "its progress from max_steps:\n{s}");
    assert!(s.contains("┌ entropy"), "its chart:\n{s}");
}

#[test]
fn report_summarises_foreign_runs_by_their_own_names() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let sums = json_of(&["report", "--format", "json"], &c);
    assert_eq!(sums.len(), 4);
    let reward = |id: &str| {
        let s = sums.iter().find(|s| s["id"] == id).unwrap();
        s["metrics"]["reward"].clone()
    };
    assert_eq!(reward("verl-ppo")["name"], "critic/score/mean");
    assert_eq!(reward("prime-rl-out")["name"], "reward/all/mean");
    assert_eq!(reward("tb-openrlhf")["name"], "train/reward");
    let trl = reward("trl-grpo");
    assert_eq!(
        (trl["name"].as_str(), trl["best_step"].as_u64()),
        (Some("reward"), Some(12))
    );
    let text = Command::cargo_bin("stageloop")
        .unwrap()
        .arg("report")
        .arg(&c)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().next().unwrap().contains("reward"), "{text}");
    assert!(
        text.contains("(best 1.0000 @1)"),
        "TRL's entropy fell from 1.0:\n{text}"
    );
}
