//! The real binary on good and bad inputs: exit codes and one clear line on stderr.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

fn bin() -> Command {
    Command::cargo_bin("stageloop").unwrap()
}

/// `stageloop run DIR ARGS…`, asserted to fail with exit code 1 (chain `.stderr(…)` on it).
fn run_fails(dir: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    bin().arg("run").arg(dir).args(args).assert().code(1)
}

fn bundled() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/r1-arith")
}

#[test]
fn check_accepts_the_bundled_experiments() {
    bin()
        .args(["check"])
        .arg(bundled())
        .assert()
        .success()
        .stdout(predicate::str::starts_with("ok: r1-arith"));
    bin()
        .args(["check"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/countdown"))
        .assert()
        .success()
        .stdout(predicate::str::starts_with("ok: countdown"));
}

#[test]
fn check_rejects_a_broken_copy_with_file_line_col() {
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(bundled().join("experiment.toml")).unwrap();
    let broken = text.replacen("kind = \"pretrain\"", "kind = \"pretrain\"\nstepz = 1", 1);
    assert_ne!(broken, text, "the bundled spec has a pretrain stage");
    std::fs::write(d.path().join("experiment.toml"), &broken).unwrap();
    let line = broken.lines().position(|l| l.starts_with("stepz")).unwrap() + 1;
    bin()
        .arg("check")
        .arg(d.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "experiment.toml:{line}:1:"
        )))
        .stderr(predicate::str::contains("stepz"))
        .stderr(predicate::str::contains("panicked").not());
}

#[test]
fn missing_experiment_is_one_clear_line() {
    let out = bin().args(["check", "/no/such/exp"]).assert().code(1);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/no/such/exp"));
}

#[test]
fn run_with_an_unknown_stage_lists_the_known_ones() {
    run_fails(&bundled(), &["--stage", "nope"])
        .stderr(predicate::str::contains("no stage named `nope`"))
        .stderr(predicate::str::contains("pretrain"));
}

#[test]
fn new_scaffolds_from_a_template_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    bin()
        .args(["new", "mine", "--dir"])
        .arg(d.path())
        .assert()
        .success();
    let file = d.path().join("mine/experiment.toml");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("name = \"mine\"")
    );
    bin()
        .arg("check")
        .arg(d.path().join("mine"))
        .assert()
        .success();
    bin()
        .args(["new", "mine", "--dir"])
        .arg(d.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already exists"));
    bin()
        .args(["new", "x", "--template", "nope", "--dir"])
        .arg(d.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown template"));
}

#[test]
fn runs_lists_runs_as_json() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("experiment.toml"),
        "[task]\nname = \"arith\"\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\n",
    )
    .unwrap();
    let run = d.path().join("runs/20261130-000000-pre");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"loss\":2.0}\n",
    )
    .unwrap();
    std::fs::write(
        run.join("run.json"),
        r#"{"id":"20261130-000000-pre","experiment":"e","stage":"pre","kind":"pretrain","status":"done","progress":{"step":2,"total":2}}"#,
    )
    .unwrap();
    let out = bin()
        .arg("runs")
        .arg(d.path())
        .arg("--json")
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v[0]["id"], "20261130-000000-pre");
    assert_eq!(v[0]["status"], "done");
    assert_eq!(v[0]["last"]["loss"], 2.0);
    assert_eq!(
        v[0]["alerts"],
        serde_json::json!([]),
        "too few points for any alert"
    );
    bin()
        .arg("runs")
        .arg(d.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("20261130-000000-pre"));
}

/// A run folder written by a hostile tool: an OSC title sequence in its stage, an OSC 52
/// clipboard write and a spreadsheet formula as metric names.
fn hostile_run(exp: &Path) -> std::path::PathBuf {
    std::fs::write(
        exp.join("experiment.toml"),
        "[task]\nname = \"arith\"\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\n",
    )
    .unwrap();
    let run = exp.join("runs/20261130-000000-pre");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("run.json"),
        r#"{"id":"x","experiment":"e","stage":"pre\u001b]0;pwned\u0007","kind":"pretrain\u202e","status":"done","progress":{"step":1,"total":1}}"#,
    )
    .unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":2.5,\"\\u001b]52;c;aGk=\\u0007\":1.0,\"=cmd|' /C calc'!A0\":3.0}\n",
    )
    .unwrap();
    run
}

#[test]
fn runs_and_export_print_no_escape_sequences_and_write_safe_files() {
    let d = tempfile::tempdir().unwrap();
    let run = hostile_run(d.path());
    let out = bin().arg("runs").arg(d.path()).assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("pre␛]0;pwned␇"), "{text}");
    assert!(!text.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{text:?}");
    let out_dir = d.path().join("export");
    let out = bin()
        .arg("export")
        .arg(&run)
        .args(["--format", "csv,svg", "--out"])
        .arg(&out_dir)
        .assert()
        .success();
    let printed = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(!printed.contains('\u{1b}'), "{printed:?}");
    for f in std::fs::read_dir(&out_dir).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{name:?}"
        );
    }
    let csv = std::fs::read_to_string(out_dir.join("metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.contains("'=cmd"), "{header}");
    assert!(
        !header
            .split(',')
            .any(|h| h.trim_matches('"').starts_with('=')),
        "{header}"
    );
}

/// The run folder of `exp` whose id ends with `-<stage>` (the test ran one of each).
fn run_named(exp: &Path, stage: &str) -> std::path::PathBuf {
    let suffix = format!("-{stage}");
    std::fs::read_dir(exp.join("runs"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .unwrap_or_else(|| panic!("no run of `{stage}` in {}", exp.display()))
        .path()
}

/// The `pre` run of the experiment in `exp` and its latest checkpoint.
fn pre_run(exp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = run_named(exp, "pre");
    let ck = stageloop::runfs::checkpoint::latest(&run).unwrap();
    (run, ck)
}

#[test]
fn bad_checkpoint_metadata_and_arguments_are_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    let (run, ck) = pre_run(d.path());
    let fails = |args: &[&str], says: &str| {
        let out = bin().args(args).assert().code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    };
    let run_s = run.to_str().unwrap();
    // Arguments: each refused with the flag named, before any work.
    fails(
        &["sample", run_s, "--prompt", "1+2=", "--n", "0"],
        "--n must be",
    );
    fails(
        &["sample", run_s, "--prompt", "1+2=", "--temperature", "nan"],
        "--temperature must be",
    );
    // Quantising a model whose rows are not whole blocks (d_model 16): refused, named.
    fails(
        &["sample", run_s, "--prompt", "1+2=", "--quantize", "q8_0"],
        "whole 32-element blocks",
    );
    fails(
        &["eval", run_s, "--quantize", "q8_0"],
        "whole 32-element blocks",
    );
    fails(&["eval", run_s, "--k", "100000000"], "--k must be");
    fails(&["eval", run_s, "--n", "0"], "--n must be");
    // A prompt longer than the context.
    let long = "1+".repeat(200) + "1=";
    fails(
        &["sample", run_s, "--prompt", &long],
        "the model's context is",
    );
    // task.json asking for an absurd held-out set: named, no allocation abort.
    let task = std::fs::read_to_string(ck.join("task.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&task).unwrap();
    let mut huge = v.clone();
    huge["heldout"] = serde_json::json!(1_000_000_000_000_000u64);
    std::fs::write(ck.join("task.json"), huge.to_string()).unwrap();
    fails(&["eval", run_s], "task.json");
    std::fs::write(ck.join("task.json"), task).unwrap();
    // config.json with zero heads or context: named, no panic in the decoder.
    let config = std::fs::read_to_string(ck.join("config.json")).unwrap();
    for (key, val) in [("heads", 0), ("ctx", 0)] {
        let mut c: serde_json::Value = serde_json::from_str(&config).unwrap();
        c[key] = serde_json::json!(val);
        std::fs::write(ck.join("config.json"), c.to_string()).unwrap();
        fails(&["sample", run_s, "--prompt", "1+2="], "config.json");
    }
}

#[test]
fn help_works_for_every_verb() {
    for verb in ["tui", "check", "new", "run", "runs"] {
        bin().args([verb, "--help"]).assert().success();
    }
}

const TINY: &str = "[model]\nd_model = 16\nlayers = 1\nheads = 2\nmlp = 32\nctx = 40\n[task]\nname = \"arith\"\nheldout = 5\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\nsteps = 2\nbatch = 4\nsample_every = 0\n";

#[test]
fn a_stage_whose_init_has_not_run_says_what_to_run_first() {
    let d = tempfile::tempdir().unwrap();
    let text = format!("{TINY}[[stage]]\nname = \"ev\"\nkind = \"eval\"\ninit = \"pre\"\n");
    std::fs::write(d.path().join("experiment.toml"), text).unwrap();
    run_fails(d.path(), &["--stage", "ev"])
        .stderr(predicate::str::contains(
            "starts from `pre`, which has no finished run",
        ))
        .stderr(predicate::str::contains("--stage pre"));
}

#[test]
fn checkpoint_of_another_shape_and_bad_dataset_lines_are_named() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    // Continue from that checkpoint with a wider model: refused, naming both shapes.
    let text = format!(
        "{TINY}[[stage]]\nname = \"more\"\nkind = \"pretrain\"\ninit = \"pre\"\nsteps = 1\n"
    );
    std::fs::write(d.path().join("experiment.toml"), text).unwrap();
    run_fails(d.path(), &["--stage", "more", "--set", "model.d_model=32"]).stderr(
        predicate::str::contains("config.json: checkpoint is a different model shape"),
    );
    // A dataset with a bad line: file and line number.
    std::fs::write(
        d.path().join("data.jsonl"),
        "{\"prompt\": \"1+2=\", \"completion\": \"<answer>3</answer>\"}\n{\"prompt\": 7}\n",
    )
    .unwrap();
    let text = format!(
        "{TINY}[[stage]]\nname = \"s\"\nkind = \"sft\"\ndataset = \"data.jsonl\"\nsteps = 1\n"
    );
    std::fs::write(d.path().join("experiment.toml"), text).unwrap();
    run_fails(d.path(), &["--stage", "s"]).stderr(predicate::str::contains(
        "data.jsonl:2: missing text field `prompt`",
    ));
    // A corrupt weights file: the sample verb names it.
    let (run, ck) = pre_run(d.path());
    std::fs::write(ck.join("model.safetensors"), b"not safetensors").unwrap();
    bin()
        .arg("sample")
        .arg(&run)
        .args(["--prompt", "1+2="])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("model.safetensors"))
        .stderr(predicate::str::contains("panicked").not());
    // A missing checkpoint folder.
    bin()
        .args(["eval", "/no/such/run"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("/no/such/run: not a checkpoint"));
}

/// `stageloop run EXP EXTRA` under RLIMIT_FSIZE of `kb` KB (a stand-in for a full disk: writes
/// past it fail with EFBIG).
fn run_with_file_limit(exp: &Path, kb: u64, extra: &str) -> std::process::Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f {kb}; exec {} run {} {extra}",
            env!("CARGO_BIN_EXE_stageloop"),
            exp.display()
        ))
        .output()
        .unwrap()
}

/// The single run folder of `exp` (the test ran one stage).
fn only_run(exp: &Path) -> std::path::PathBuf {
    let runs: Vec<_> = std::fs::read_dir(exp.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

#[test]
fn a_full_disk_fails_the_run_naming_the_file_and_records_it() {
    // RLIMIT_FSIZE stands in for a full disk: writes past it fail (EFBIG instead of ENOSPC)
    // through the same paths. 1,500 steps of metrics outgrow 64 KB; the tiny weights do not.
    // No `trap '' XFSZ`: the signal such a write raises must not kill the stage before it
    // records why it failed.
    let d = tempfile::tempdir().unwrap();
    let spec = TINY.replace("steps = 2", "steps = 1500");
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    let out = run_with_file_limit(d.path(), 64, "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let run = only_run(d.path());
    assert!(
        err.contains(&run.join("metrics.jsonl").display().to_string()) && !err.contains("panicked"),
        "the message names the file: {err}"
    );
    let status = stageloop::runfs::RunStatus::load(&run).unwrap();
    assert_eq!(status.status, stageloop::runfs::Status::Failed);
    let message = status.error.unwrap().message;
    assert!(message.contains(&run.display().to_string()), "{message}");
    // The line the limit cut short was cut off: every line of the log is whole.
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(log.ends_with('\n'), "torn last line");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn a_corrupt_run_json_is_not_silently_restarted() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("experiment.toml"),
        TINY.replace("steps = 2", "steps = 3"),
    )
    .unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    let run = only_run(d.path());
    std::fs::write(run.join("run.json"), "{\"id\": \"x\", \"sta").unwrap();
    run_fails(d.path(), &[])
        .stderr(predicate::str::contains("run.json:1:"))
        .stderr(predicate::str::contains("--fresh"));
    assert_eq!(std::fs::read_dir(d.path().join("runs")).unwrap().count(), 1);
    // --fresh starts a new run beside it.
    bin()
        .arg("run")
        .arg(d.path())
        .arg("--fresh")
        .assert()
        .success();
    assert_eq!(std::fs::read_dir(d.path().join("runs")).unwrap().count(), 2);
}

#[test]
fn one_bad_eval_json_does_not_hide_the_other_rows() {
    let d = tempfile::tempdir().unwrap();
    let spec = format!(
        "{TINY}[[stage]]\nname = \"ev1\"\nkind = \"eval\"\ninit = \"pre\"\nk = 1\n[[stage]]\nname = \"ev2\"\nkind = \"eval\"\ninit = \"pre\"\nk = 1\n"
    );
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    let ev1 = run_named(d.path(), "ev1");
    std::fs::write(ev1.join("eval.json"), "{\"pass@1\": ").unwrap();
    let out = bin().arg("report").arg(d.path()).assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(
        stdout.contains("ev2") && !stdout.contains("ev1"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&ev1.join("eval.json").display().to_string()),
        "{stderr}"
    );
}

#[test]
fn export_survives_huge_steps_deep_nesting_and_bad_bytes() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut log = b"{\"step\":1,\"loss\":2.0}\n".to_vec();
    log.extend(b"{\"step\":9223372036854775808,\"loss\":1.0}\n");
    log.extend(format!("{{\"step\":2,\"x\":{}}}\n", "[".repeat(100_000)).bytes());
    log.extend(b"{\"step\":3,\"loss\":1.5,\"note\":\"\xff\xfe\"}\n");
    log.extend(b"\xff\xff\xff\n{\"step\":4,\"loss\":1.0}\n");
    std::fs::write(run.join("metrics.jsonl"), log).unwrap();
    let out = bin()
        .arg("export")
        .arg(&run)
        .args(["--format", "csv,parquet"])
        .assert()
        .success();
    let err = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(
        err.contains("skipped 3 line(s)") && err.contains("metrics.jsonl:2:"),
        "{err}"
    );
    let csv = std::fs::read_to_string(run.join("export/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + steps 1, 3, 4: {csv}");
    // A folder where the log should be: an error naming it.
    let other = d.path().join("other");
    std::fs::create_dir_all(other.join("metrics.jsonl")).unwrap();
    std::fs::write(other.join("run.json"), "{}").unwrap();
    bin()
        .arg("export")
        .arg(&other)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            other.join("metrics.jsonl").display().to_string(),
        ));
}

#[test]
fn set_with_an_integer_toml_cannot_hold_says_so() {
    run_fails(&bundled(), &["--set", "seed=18446744073709551615"])
        .stderr(predicate::str::contains("out of range"))
        .stderr(predicate::str::contains("invalid type").not());
}

#[test]
fn rerunning_an_interrupted_pipeline_goes_on_where_it_stopped() {
    let d = tempfile::tempdir().unwrap();
    let spec = format!(
        "{TINY}[[stage]]\nname = \"more\"\nkind = \"pretrain\"\ninit = \"pre\"\nsteps = 3\nbatch = 4\ncheckpoint_every = 1\nsample_every = 0\n"
    );
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    let more = run_named(d.path(), "more");
    // As if `more` had been stopped half way.
    let mut st = stageloop::runfs::RunStatus::load(&more).unwrap();
    st.status = stageloop::runfs::Status::Stopped;
    st.save(&more).unwrap();
    bin()
        .arg("run")
        .arg(d.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("interrupted in stage `more`"));
    let runs = std::fs::read_dir(d.path().join("runs")).unwrap().count();
    assert_eq!(runs, 2, "pre was not run again, more resumed in place");
    let st = stageloop::runfs::RunStatus::load(&more).unwrap();
    assert_eq!(st.status, stageloop::runfs::Status::Done);
    assert_eq!(st.resumed_at.len(), 1);
    assert_eq!(
        st.device.as_deref(),
        Some("cpu"),
        "run.json names the device"
    );
    // Nothing interrupted: the whole pipeline runs again (new runs).
    bin().arg("run").arg(d.path()).assert().success();
    assert_eq!(std::fs::read_dir(d.path().join("runs")).unwrap().count(), 4);
    // `more` killed before its first checkpoint (running, no lock, nothing to resume): the
    // pipeline goes on from `more` in a new run, not from `pre`.
    let more = stageloop::runfs::latest_run_of(&d.path().join("runs"), "more")
        .unwrap()
        .0
        .path;
    let mut st = stageloop::runfs::RunStatus::load(&more).unwrap();
    st.status = stageloop::runfs::Status::Running;
    st.save(&more).unwrap();
    std::fs::remove_dir_all(more.join("checkpoints")).unwrap();
    bin()
        .arg("run")
        .arg(d.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("interrupted in stage `more`"));
    let ids: Vec<String> = std::fs::read_dir(d.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(
        ids.iter().filter(|i| i.contains("-pre")).count(),
        2,
        "{ids:?}"
    );
}

#[test]
fn a_dataset_task_runs_every_stage_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let mut rows = String::new();
    for a in 1..=6 {
        for b in 1..=6 {
            rows.push_str(&format!(
                "{{\"q\": \"{a}+{b}=\", \"answer\": \"The sum.\\n#### {}\", \"solution\": \"{a}+{b}\"}}\n",
                a + b
            ));
        }
    }
    std::fs::write(d.path().join("sums.jsonl"), rows).unwrap();
    let spec = "[model]\nd_model = 16\nlayers = 1\nheads = 2\nmlp = 32\nctx = 40\n\
        [task]\nname = \"dataset\"\npath = \"sums.jsonl\"\nprompt_field = \"q\"\nheldout = 6\n\
        [[stage]]\nname = \"pre\"\nkind = \"pretrain\"\nsteps = 2\nbatch = 4\nsample_every = 0\n\
        [[stage]]\nname = \"sft\"\nkind = \"sft\"\ninit = \"pre\"\nsteps = 2\nbatch = 4\nexamples = 8\n\
        [[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"sft\"\nsteps = 2\nprompts = 2\ngroup_size = 2\n\
        [[stage]]\nname = \"ev\"\nkind = \"eval\"\ninit = \"rl\"\nk = 2\n";
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    let out = bin()
        .arg("report")
        .arg(d.path())
        .arg("--json")
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v[0]["stage"], "ev");
    // The pass@k curve: pass_at["1"] is pass@1, pass_at["k"] is pass@k.
    let num = |x: &serde_json::Value| x.as_f64().unwrap();
    assert!(
        (num(&v[0]["pass_at"]["1"]) - num(&v[0]["pass@1"])).abs() < 1e-9,
        "{}",
        v[0]
    );
    assert!(
        (num(&v[0]["pass_at"]["2"]) - num(&v[0]["pass@k"])).abs() < 1e-9,
        "{}",
        v[0]
    );
    // The curve is monotone in k.
    let curve: Vec<f64> = ["1", "2"]
        .iter()
        .map(|k| num(&v[0]["pass_at"][k]))
        .collect();
    assert!(curve[0] <= curve[1], "{curve:?}");
    // Compute along the lineage: the GRPO checkpoint's own FLOPs plus SFT's and pretraining's.
    assert_eq!(
        v[0]["compute_stages"],
        serde_json::json!(["rl", "sft", "pre"])
    );
    let stage_flops = |name: &str| {
        let run = run_named(d.path(), name);
        let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                run.join("checkpoints")
                    .join(latest.trim())
                    .join("state.json"),
            )
            .unwrap(),
        )
        .unwrap();
        num(&state["flops"])
    };
    let (pre, sft, rl) = (stage_flops("pre"), stage_flops("sft"), stage_flops("rl"));
    assert!(pre > 0.0 && sft > 0.0 && rl > 0.0, "{pre} {sft} {rl}");
    assert!(
        (num(&v[0]["compute"]) - (pre + sft + rl)).abs() < 1.0,
        "{}",
        v[0]
    );
    assert!(num(&v[0]["eval_flops"]) > 0.0);
    // The cumulative metric ends at the checkpoint's figure.
    let last_logged = std::fs::read_to_string(run_named(d.path(), "rl").join("metrics.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["compute/flops"].as_f64())
        .unwrap();
    assert_eq!(last_logged, rl);
    for format in ["md", "svg", "text"] {
        let out = bin()
            .args(["report", "--format", format])
            .arg(d.path())
            .assert()
            .success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(text.contains("ev"), "{format}: {text}");
        if format == "svg" {
            assert!(
                text.starts_with("<svg") && text.contains("<polyline"),
                "{text}"
            );
        }
        if format == "md" {
            assert!(
                text.contains("| ev |") && text.contains("### pass@k"),
                "{text}"
            );
        }
    }
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_named(d.path(), "ev").join("eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(eval["n"], 6, "the six held-out rows: {eval}");
    // The samples of the GRPO stage were scored against the rows' answers.
    let rl = run_named(d.path(), "rl");
    assert!(
        std::fs::read_to_string(rl.join("metrics.jsonl"))
            .unwrap()
            .contains("reward")
    );
}

#[test]
fn dataset_specs_are_checked_before_running() {
    let d = tempfile::tempdir().unwrap();
    let base = "[task]\nname = \"dataset\"\n{X}\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\n";
    for (x, says) in [
        ("", "needs `path`"),
        ("path = \"nope.jsonl\"", "no such file `nope.jsonl`"),
        (
            "path = \"rows.jsonl\"\nverifier = \"fuzzy\"",
            "unknown verifier `fuzzy`",
        ),
        (
            "path = \"rows.jsonl\"\nverifier = \"regex\"",
            "needs `pattern`",
        ),
        (
            "path = \"rows.jsonl\"\nverifier = \"regex\"\npattern = \"(\"",
            "invalid pattern",
        ),
    ] {
        std::fs::write(
            d.path().join("rows.jsonl"),
            "{\"prompt\":\"1\",\"answer\":\"1\"}\n",
        )
        .unwrap();
        std::fs::write(d.path().join("experiment.toml"), base.replace("{X}", x)).unwrap();
        bin()
            .arg("check")
            .arg(d.path())
            .assert()
            .code(1)
            .stderr(predicate::str::contains(says))
            .stderr(predicate::str::contains("experiment.toml:"));
    }
    // A dataset key on a generator task.
    std::fs::write(
        d.path().join("experiment.toml"),
        "[task]\nname = \"arith\"\nverifier = \"numeric\"\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\n",
    )
    .unwrap();
    bin()
        .arg("check")
        .arg(d.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "applies only to name = \"dataset\"",
        ));
}

#[test]
fn score_with_a_verifier_reads_completion_and_answer_lines() {
    let line = |c: &str, a: serde_json::Value| {
        serde_json::json!({"completion": c, "answer": a}).to_string()
    };
    let input = [
        line(
            "<think>48/2=24</think><answer>72</answer>",
            "48/2 = 24\n#### 72".into(),
        ),
        line(
            "<think>x</think><answer>72 or 73</answer>",
            "#### 72".into(),
        ),
        line("<think><answer>72</answer></think>", "#### 72".into()),
        line("<think>x</think><answer>1/2</answer>", 0.5.into()),
    ]
    .join("\n");
    let out = bin()
        .args(["score", "--verifier", "numeric"])
        .write_stdin(input)
        .assert()
        .success();
    let acc: Vec<f64> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["accuracy"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(acc, vec![1.0, 0.0, 0.0, 1.0]);
    bin()
        .args(["score", "--verifier", "regex"])
        .write_stdin("")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("needs `pattern`"));
}

/// A tiny pipeline whose GRPO stage adds a reward program written by the test.
fn with_program(dir: &Path, script: &str, timeout: f64) {
    std::fs::write(dir.join("reward.py"), script).unwrap();
    let spec = format!(
        "{TINY}[[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"pre\"\nsteps = 2\nprompts = 2\ngroup_size = 2\nsample_every = 1\n\
         rewards = {{ accuracy = 1.0, style = {{ command = [\"python3\", \"reward.py\"], weight = 0.5, timeout = {timeout} }} }}\n"
    );
    std::fs::write(dir.join("experiment.toml"), spec).unwrap();
}

fn have_python() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("python3 not installed: skipping the reward-program test");
    }
    ok
}

#[test]
fn a_reward_program_scores_completions_and_check_shows_its_command() {
    if !have_python() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    with_program(
        d.path(),
        "import json, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n    short = 1.0 if len(r['completion']) < 20 else 0.0\n    print(json.dumps({'id': r['id'], 'reward': short, 'components': {'chars': len(r['completion'])}}), flush=True)\n",
        30.0,
    );
    bin()
        .arg("check")
        .arg(d.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "runs: stage rl reward `style`: python3 reward.py",
        ));
    bin()
        .arg("run")
        .arg(d.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "from the program: python3 reward.py",
        ));
    let rl = run_named(d.path(), "rl");
    let samples = std::fs::read_to_string(rl.join("samples.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    let style = first["rewards"]["style"].as_f64().unwrap();
    let chars = first["rewards"]["style/chars"].as_f64().unwrap();
    let completion = first["completion"].as_str().unwrap();
    assert_eq!(chars as usize, completion.chars().count());
    assert_eq!(style, if chars < 20.0 { 1.0 } else { 0.0 });
    let acc = first["rewards"]["accuracy"].as_f64().unwrap();
    let total = first["reward"].as_f64().unwrap();
    assert!((total - (acc + 0.5 * style)).abs() < 1e-9, "{first}");
    assert!(
        std::fs::read_to_string(rl.join("metrics.jsonl"))
            .unwrap()
            .contains("rewards/style/mean")
    );
}

#[test]
fn a_reward_program_that_crashes_hangs_or_babbles_fails_the_stage_naming_it() {
    if !have_python() {
        return;
    }
    for (script, timeout, says) in [
        ("import sys\nsys.exit(3)\n", 30.0, "closed its output"),
        ("import time\ntime.sleep(60)\n", 1.0, "no answer within 1 s"),
        (
            "import sys\nfor l in sys.stdin:\n    print('hello', flush=True)\n",
            30.0,
            "answered \"hello\"",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        with_program(d.path(), script, timeout);
        let out = bin().arg("run").arg(d.path()).assert().code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr);
        assert!(
            err.contains("reward program `style` (python3 reward.py)") && err.contains(says),
            "{says}: {err}"
        );
        assert!(
            err.contains("request: prompt"),
            "the request is named: {err}"
        );
        let rl = run_named(d.path(), "rl");
        let st = stageloop::runfs::RunStatus::load(&rl).unwrap();
        assert_eq!(st.status, stageloop::runfs::Status::Failed);
    }
}

#[test]
fn data_show_and_check_report_rows_fields_and_splits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = bin()
        .args(["data", "show"])
        .arg(root.join("data/gsm_symbolic.jsonl"))
        .args(["--prompt-field", "question", "--n", "1"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout);
    assert!(
        text.contains("300 rows") && text.contains("question"),
        "{text}"
    );
    assert!(
        text.contains("accepts 300 of their reference answers"),
        "{text}"
    );
    bin()
        .args(["data", "check"])
        .arg(root.join("experiments/legs"))
        .assert()
        .success()
        .stdout(predicate::str::contains("3657 training rows, 300 held out"));
    // A test file sharing prompts with the training file: the overlap is reported.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("train.jsonl"),
        "{\"prompt\":\"a\",\"answer\":\"1\"}\n{\"prompt\":\"b\",\"answer\":\"2\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("test.jsonl"),
        "{\"prompt\":\"b\",\"answer\":\"2\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("experiment.toml"),
        "[task]\nname = \"dataset\"\npath = \"train.jsonl\"\ntest = \"test.jsonl\"\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\n",
    )
    .unwrap();
    bin()
        .args(["data", "check"])
        .arg(d.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "1 training rows, 1 held out; 1 training rows had a held-out prompt",
        ));
}

#[test]
fn seeds_run_the_pipeline_once_per_seed_and_resume_a_sweep() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    bin()
        .arg("run")
        .arg(d.path())
        .args(["--seeds", "0,1"])
        .assert()
        .success();
    let seeds = || {
        let mut v: Vec<(u64, stageloop::runfs::Status)> = std::fs::read_dir(d.path().join("runs"))
            .unwrap()
            .flatten()
            .map(|e| stageloop::runfs::RunStatus::load(&e.path()).unwrap())
            .map(|s| (s.seed.unwrap(), s.status))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let done = stageloop::runfs::Status::Done;
    assert_eq!(seeds(), vec![(0, done), (1, done)]);
    // Seed 1's run was interrupted: the sweep resumes it and adds seed 2, seed 0 is skipped.
    let one = std::fs::read_dir(d.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| stageloop::runfs::RunStatus::load(p).unwrap().seed == Some(1))
        .unwrap();
    let mut st = stageloop::runfs::RunStatus::load(&one).unwrap();
    st.status = stageloop::runfs::Status::Stopped;
    st.save(&one).unwrap();
    bin()
        .arg("run")
        .arg(d.path())
        .args(["--seeds", "0,1,2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("seed 0: every stage is done"));
    assert_eq!(seeds(), vec![(0, done), (1, done), (2, done)]);
    assert_eq!(
        stageloop::runfs::RunStatus::load(&one)
            .unwrap()
            .resumed_at
            .len(),
        1
    );
}

#[test]
fn runs_of_another_program_get_alerts_and_a_healthy_one_none() {
    let d = tempfile::tempdir().unwrap();
    // Three runs written by another program with TRL's metric names, no experiment.toml.
    let write = |name: &str, f: &dyn Fn(f64) -> serde_json::Value| {
        let dir = d.path().join("runs").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::new();
        for i in 0..30 {
            let mut v = f(i as f64 / 29.0);
            v["step"] = serde_json::json!(i + 1);
            text.push_str(&format!("{v}\n"));
        }
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    };
    write("hack", &|t| {
        serde_json::json!({"reward": 0.3 + 0.6 * t, "rewards/accuracy_reward/mean": 0.3,
            "rewards/format_reward/mean": 0.1 + 0.8 * t, "entropy": 0.8})
    });
    write(
        "collapse",
        &|t| serde_json::json!({"reward": 0.5, "entropy": 1.0 - 0.97 * t}),
    );
    write("healthy", &|t| {
        serde_json::json!({"reward": 0.3 + 0.5 * t, "rewards/accuracy_reward/mean": 0.2 + 0.5 * t,
            "rewards/format_reward/mean": 0.6 + 0.3 * t, "entropy": 1.0 - 0.3 * t,
            "completions/mean_length": 30.0 + 5.0 * t, "kl": 0.01 * t, "frac_reward_zero_std": 0.3})
    });
    let out = bin()
        .args(["runs", "--json"])
        .arg(d.path())
        .assert()
        .success();
    let rows: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let alerts = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {rows}"))["alerts"]
            .clone()
    };
    assert_eq!(alerts("hack"), serde_json::json!(["reward_hacking"]));
    assert_eq!(alerts("collapse"), serde_json::json!(["entropy_collapse"]));
    assert_eq!(alerts("healthy"), serde_json::json!([]));
}

#[test]
fn diff_lists_the_problems_one_eval_solves_and_the_other_does_not() {
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, rows: &[(&str, f64, bool)]| {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let text: String = rows
            .iter()
            .map(|(p, acc, greedy)| {
                format!(
                    "{}\n",
                    serde_json::json!({"step": 0, "prompt": p, "completion": "c", "answer": "a",
                        "rewards": {"accuracy": acc}, "reward": acc, "greedy": greedy})
                )
            })
            .collect();
        std::fs::write(dir.join("samples.jsonl"), text + "{torn").unwrap();
        dir
    };
    let a = write(
        "a",
        &[
            ("1+1=", 1.0, false),
            ("2+2=", 0.0, false),
            ("3+3=", 1.0, false),
        ],
    );
    let b = write(
        "b",
        &[
            ("1+1=", 0.0, false),
            ("1+1=", 1.0, true),
            ("2+2=", 1.0, false),
            ("3+3=", 1.0, false),
        ],
    );
    let out = bin()
        .arg("diff")
        .arg(&a)
        .arg(&b)
        .arg("--json")
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["both"], 1);
    assert_eq!(v["only_a"], serde_json::json!([["1+1=", [1, 1], [0, 1]]]));
    assert_eq!(v["only_b"], serde_json::json!([["2+2=", [0, 1], [1, 1]]]));
    let out = bin().arg("diff").arg(&a).arg(&b).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("only A 1, only B 1"), "{text}");
    // A folder that is not an eval run: an error naming the file.
    bin()
        .arg("diff")
        .arg(d.path())
        .arg(&b)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("samples.jsonl"));
}

/// `stageloop ARGS` with standard output a pipe whose reading end is already closed.
fn with_closed_stdout(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_or_full_standard_output_ends_a_verb_without_a_panic() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    bin().arg("run").arg(d.path()).assert().success();
    let dir = d.path().as_os_str();
    for verb in [&["runs"][..], &["report"], &["check"], &["runs", "--json"]] {
        let mut args: Vec<&std::ffi::OsStr> = verb.iter().map(|v| v.as_ref()).collect();
        args.push(dir);
        let out = with_closed_stdout(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{verb:?}: {err}");
        assert!(err.is_empty(), "{verb:?} is quiet: {err}");
        let full = std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
            .args(&args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&full.stderr);
        assert_eq!(full.status.code(), Some(1), "{verb:?}: {err}");
        assert!(
            err.contains("cannot write to standard output") && !err.contains("panicked"),
            "{verb:?}: {err}"
        );
    }
}

#[test]
fn a_stage_whose_output_pipe_closes_still_checkpoints_and_records_its_status() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    let out = with_closed_stdout(&["run".as_ref(), d.path().as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
    let run = only_run(d.path());
    let status = stageloop::runfs::RunStatus::load(&run).unwrap();
    assert_eq!(status.status, stageloop::runfs::Status::Done);
    assert!(stageloop::runfs::checkpoint::latest(&run).is_some());
}

/// Wait until `exp` has one run whose stage holds its lock; that run and the pid.
fn running_stage(exp: &Path) -> (std::path::PathBuf, u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(mut entries) = std::fs::read_dir(exp.join("runs")) {
            while let Some(Ok(e)) = entries.next() {
                if let Some(pid) = stageloop::runfs::lock::stage_of(&e.path()) {
                    return (e.path(), pid);
                }
            }
        }
        assert!(std::time::Instant::now() < deadline, "no stage started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn stop_signals_the_stage_and_not_the_rest_of_a_shells_pipeline() {
    let d = tempfile::tempdir().unwrap();
    let spec = TINY.replace("steps = 2", "steps = 1000000");
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    let status = d.path().join("status");
    // `set -m`: job control, so the pipeline is a process group led by the stage, as in an
    // interactive shell.
    let mut shell = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -m; {} run {} | tee {} > /dev/null; echo \"${{PIPESTATUS[@]}}\" > {}",
            env!("CARGO_BIN_EXE_stageloop"),
            d.path().display(),
            d.path().join("tee.log").display(),
            status.display()
        ))
        .spawn()
        .unwrap();
    let (run, pid) = running_stage(d.path());
    stageloop::notebook::supervisor::stop(&run, pid).unwrap();
    shell.wait().unwrap();
    let codes = std::fs::read_to_string(&status).unwrap();
    // The stage stopped as asked (130: stopped, resumable); tee ended on end of input, not on
    // a signal (143).
    assert_eq!(codes.trim(), "130 0", "stage and tee exit codes");
    let st = stageloop::runfs::RunStatus::load(&run).unwrap();
    assert_eq!(st.status, stageloop::runfs::Status::Stopped);
}

#[test]
fn a_run_refuses_programs_other_than_the_ones_shown() {
    let d = tempfile::tempdir().unwrap();
    let spec = TINY.replace(
        "sample_every = 0\n",
        "sample_every = 0\n[[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"pre\"\nsteps = 1\nrewards = { accuracy = 1.0, style = { command = [\"touch\", \"ran\"] } }\n",
    );
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    // What the notebook passes when it showed no programs (the spec gained one since).
    let none = stageloop::spec::programs_digest(&[]);
    bin()
        .arg("run")
        .arg(d.path())
        .args(["--programs-shown", &none])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not the ones that were shown"))
        .stderr(predicate::str::contains("rl/style: touch ran"));
    assert!(!d.path().join("runs").exists(), "nothing started");
    assert!(!d.path().join("ran").exists());
}

#[test]
fn resuming_with_changed_settings_is_refused_naming_them() {
    let d = tempfile::tempdir().unwrap();
    let spec = TINY.replace("steps = 2", "steps = 1000000\ncheckpoint_every = 1");
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
        .arg("run")
        .arg(d.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (run, pid) = running_stage(d.path());
    while stageloop::runfs::checkpoint::latest(&run).is_none() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = pid;
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read_to_string(run.join("run.json")).unwrap();
    bin()
        .arg("run")
        .arg(d.path())
        .args(["--set", "stage.pre.lr=0.5"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("→ 0.5"))
        .stderr(predicate::str::contains("--fresh"));
    assert_eq!(
        std::fs::read_to_string(run.join("run.json")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_dir(d.path().join("runs")).unwrap().count(),
        1,
        "no new run either"
    );
}

#[test]
fn sizes_on_the_command_line_are_checked_like_a_specs() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.jsonl");
    for n in ["0", "9223372036854775807", "4294967296", "100000000"] {
        bin()
            .args(["data", "gen", "--task", "arith", "--n", n, "--out"])
            .arg(&out)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("--n must be between"));
    }
    for flags in [
        &["--d-model", "0"][..],
        &["--d-model", "9223372036854775807", "--heads", "1"],
        &["--layers", "0"],
        &["--new-tokens", "18446744073709551615"],
        &["--prompts", "0"],
    ] {
        let out = bin()
            .args(["bench", "train", "--steps", "0"])
            .args(flags)
            .assert()
            .code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(!err.contains("panicked"), "{flags:?}: {err}");
    }
}

/// `bench train --lora R --quantize q8_0` trains adapters over a quantised base; a width that
/// is not whole 32-element blocks is refused with the reason.
#[test]
fn bench_train_runs_qlora_and_names_a_width_it_cannot_quantise() {
    let args = [
        "bench",
        "train",
        "--steps",
        "1",
        "--batch",
        "1",
        "--prompts",
        "1",
        "--new-tokens",
        "2",
        "--ctx",
        "8",
        "--layers",
        "1",
        "--heads",
        "2",
        "--lora",
        "2",
        "--quantize",
        "q8_0",
        "--json",
        "--cache-only",
    ];
    let out = bin()
        .args(args)
        .args(["--d-model", "32", "--mlp", "64"])
        .assert()
        .success();
    let r: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(r["train_tokens_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    bin()
        .args(args)
        .args(["--d-model", "24", "--mlp", "48"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("whole 32-element blocks"));
}

/// Make a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn fifos_and_devices_in_a_run_folder_neither_hang_nor_abort() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    let runs = d.path().join("runs");
    for (id, file) in [
        ("20261130-000000-pre", "run.json"),
        ("20261130-000001-pre", "metrics.jsonl"),
        ("20261130-000002-pre", "eval.json"),
    ] {
        let run = runs.join(id);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "{\"step\":1,\"loss\":1}\n").unwrap();
        let _ = std::fs::remove_file(run.join(file));
        mkfifo(&run.join(file));
    }
    // A log that is a link to an endless device.
    let zero = runs.join("20261130-000003-pre");
    std::fs::create_dir_all(&zero).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero.join("metrics.jsonl")).unwrap();
    for verb in [&["runs"][..], &["runs", "--json"], &["report"]] {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_stageloop"))
            .args(verb)
            .arg(d.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(124), "{verb:?} hung");
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{verb:?}: {err}"
        );
    }
    // A model folder whose config.json, and an experiment whose spec, is a FIFO.
    let hf = d.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(hf.join("model.safetensors"), b"x").unwrap();
    mkfifo(&hf.join("config.json"));
    let fifo_exp = d.path().join("fifo-exp");
    std::fs::create_dir(&fifo_exp).unwrap();
    mkfifo(&fifo_exp.join("experiment.toml"));
    for args in [
        vec![
            "sample".to_string(),
            hf.display().to_string(),
            "--prompt".into(),
            "1+2=".into(),
        ],
        vec!["check".to_string(), fifo_exp.display().to_string()],
    ] {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_stageloop"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    }
    // The notebook's reader polls them all and returns.
    let mut ws = stageloop::notebook::workspace::Workspace::new(d.path());
    let started = std::time::Instant::now();
    ws.poll(std::time::Instant::now() + std::time::Duration::from_secs(5));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn json_output_and_error_lines_carry_no_raw_c1_or_bidi_characters() {
    let d = tempfile::tempdir().unwrap();
    let run = hostile_run(d.path());
    // A C1 control (CSI) and a bidi override in a metric name and in the stage.
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"a\\u009b31mb\\u202e\":1.0}\n",
    )
    .unwrap();
    let out = bin()
        .args(["runs", "--json"])
        .arg(d.path())
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(!text.contains(['\u{9b}', '\u{202e}', '\u{1b}']), "{text:?}");
    // Still JSON, carrying the same strings.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v[0]["last"].get("a\u{9b}31mb\u{202e}").is_some(), "{v}");
    assert!(v[0]["kind"].as_str().unwrap().contains('\u{202e}'));
    // An error quoting the spec's text.
    std::fs::write(
        d.path().join("experiment.toml"),
        "[task]\nname = \"x\\u001b]0;T\\u0007\\u009b\"\n[[stage]]\nname = \"pre\"\nkind = \"pretrain\"\n",
    )
    .unwrap();
    let out = bin().arg("check").arg(d.path()).assert().code(1);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("unknown task"), "{err}");
    assert!(!err.contains(['\u{1b}', '\u{7}', '\u{9b}']), "{err:?}");
}

#[test]
fn a_disk_too_full_for_a_new_run_leaves_no_empty_run_folder() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), TINY).unwrap();
    std::fs::create_dir(d.path().join("runs")).unwrap();
    // RLIMIT_FSIZE 0: not even the lock's pid can be written.
    let out = run_with_file_limit(d.path(), 0, "--fresh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lock") && !err.contains("panicked"), "{err}");
    let left: Vec<_> = std::fs::read_dir(d.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn eval_quantizes_the_weights_it_samples_with() {
    let d = tempfile::tempdir().unwrap();
    let spec = TINY
        .replace("d_model = 16", "d_model = 32")
        .replace("mlp = 32", "mlp = 64");
    std::fs::write(d.path().join("experiment.toml"), spec).unwrap();
    bin()
        .arg("run")
        .arg(d.path())
        .args(["--stage", "pre"])
        .assert()
        .success();
    let (run, _) = pre_run(d.path());
    let eval = |q: &str| {
        let out = bin()
            .arg("eval")
            .arg(&run)
            .args(["--n", "4", "--k", "2", "--quantize", q])
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    assert!(eval("q8_0").contains("(n=4, weights: q8_0)"));
    assert!(eval("q4_1").contains("weights: q4_1"));
    assert!(eval("none").contains("weights: f32"));
}
