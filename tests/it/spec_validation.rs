//! The experiment spec: every validation error names file:line:col, and the bundled experiments
//! are valid.

use stageloop::spec::{self, Origin, SpecErrors};
use std::path::Path;

const BASE: &str = r#"name = "t"

[model]
d_model = 32
layers = 1
heads = 2
ctx = 48

[task]
name = "arith"

[[stage]]
name = "pre"
kind = "pretrain"
steps = 5

[[stage]]
name = "ev"
kind = "eval"
init = "pre"
"#;

fn load_text(text: &str) -> Result<spec::Experiment, SpecErrors> {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), text).unwrap();
    spec::load(d.path())
}

/// The single error of `text`, with its (line, col) and message.
fn one_error(text: &str) -> ((usize, usize), String) {
    let errs = load_text(text).expect_err("should be invalid").0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert!(e.to_string().contains("experiment.toml:"), "{e}");
    (
        e.line_col().expect("points into the file"),
        e.message.clone(),
    )
}

#[test]
fn base_spec_is_valid_and_resolves_defaults() {
    let e = load_text(BASE).unwrap();
    assert_eq!(e.spec.stage.len(), 2);
    let ev = e.resolved("ev").unwrap();
    assert_eq!(ev.k, 8);
    assert_eq!(ev.temperature, 0.6);
    assert_eq!(ev.top_p, 0.95);
    assert_eq!(ev.prompts, 500);
    let pre = e.resolved("pre").unwrap();
    assert_eq!(pre.steps, 5);
    assert_eq!(pre.batch, 64);
}

#[test]
fn broken_toml_names_the_line() {
    let text = BASE.replace("steps = 5", "steps = = 5");
    let ((line, col), msg) = one_error(&text);
    assert_eq!(line, 15);
    assert!(col >= 7, "{col}");
    assert!(msg.contains("invalid TOML"), "{msg}");
}

#[test]
fn unknown_top_level_and_table_keys() {
    let ((line, col), msg) = one_error(&BASE.replace("[task]\n", "[task]\ncolour = 3\n"));
    assert_eq!((line, col), (10, 1));
    assert!(msg.contains("colour"), "{msg}");

    let ((line, _), msg) = one_error(&BASE.replace("steps = 5", "steps = 5\nlearning_rate = 1"));
    assert_eq!(line, 16);
    assert!(msg.contains("learning_rate"), "{msg}");
}

#[test]
fn unknown_stage_kind() {
    let ((line, col), msg) = one_error(&BASE.replace("kind = \"pretrain\"", "kind = \"ppo\""));
    assert_eq!((line, col), (14, 8));
    assert!(msg.contains("ppo"), "{msg}");
}

#[test]
fn key_that_does_not_apply_to_the_kind() {
    let ((line, col), msg) = one_error(&BASE.replace("init = \"pre\"", "init = \"pre\"\nlr = 0.1"));
    assert_eq!((line, col), (21, 1));
    assert!(msg.contains("`lr` does not apply to a eval stage"), "{msg}");
}

#[test]
fn duplicate_names_are_reported_at_the_second() {
    let text = format!("{BASE}\n[[stage]]\nname = \"pre\"\nkind = \"sft\"\n");
    let ((line, col), msg) = one_error(&text);
    assert_eq!((line, col), (23, 8));
    assert!(msg.contains("duplicate stage name `pre`"), "{msg}");
}

#[test]
fn init_naming_a_later_or_missing_stage() {
    let text = BASE.replace("init = \"pre\"", "init = \"post\"");
    let ((line, col), msg) = one_error(&text);
    assert_eq!((line, col), (20, 8));
    assert!(msg.contains("no stage named `post`"), "{msg}");

    let text = format!("{BASE}\n[[stage]]\nname = \"late\"\nkind = \"sft\"\n").replace(
        "name = \"pre\"\nkind = \"pretrain\"\nsteps = 5",
        "name = \"pre\"\nkind = \"pretrain\"\nsteps = 5\ninit = \"late\"",
    );
    let ((line, col), msg) = one_error(&text);
    assert_eq!((line, col), (16, 8));
    assert!(msg.contains("does not come before"), "{msg}");
}

#[test]
fn loops_over_missing_stages() {
    let text = format!("{BASE}\n[[loop]]\nstart = \"pre\"\nend = \"nowhere\"\ntimes = 2\n");
    let ((line, col), msg) = one_error(&text);
    assert_eq!((line, col), (24, 7));
    assert!(msg.contains("nowhere"), "{msg}");
}

#[test]
fn values_out_of_range() {
    let cases = [
        (
            "steps = 5",
            "steps = 5\nlr = 2.0",
            (16, 6),
            "lr must be in (0, 1)",
        ),
        (
            "steps = 5",
            "steps = 0",
            (15, 9),
            "steps must be at least 1",
        ),
        (
            "init = \"pre\"",
            "init = \"pre\"\ntop_p = 0.0",
            (21, 9),
            "top_p",
        ),
        ("heads = 2", "heads = 3", (6, 9), "heads must divide"),
        (
            "[task]\nname = \"arith\"",
            "[task]\nname = \"arith\"\ndifficulty = 9",
            (11, 14),
            "difficulty",
        ),
    ];
    for (from, to, at, needle) in cases {
        let ((line, col), msg) = one_error(&BASE.replace(from, to));
        assert_eq!((line, col), at, "{to}: {msg}");
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn unknown_task_is_reported_at_its_value() {
    let ((line, col), msg) = one_error(&BASE.replace("name = \"arith\"", "name = \"chess\""));
    assert_eq!((line, col), (10, 8));
    assert!(msg.contains("unknown task `chess`"), "{msg}");
}

#[test]
fn set_overrides_change_values_and_errors_name_the_argument() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("experiment.toml"), BASE).unwrap();
    let e = spec::load_with(
        d.path(),
        &["stage.pre.steps=7".into(), "model.d_model=64".into()],
    )
    .unwrap();
    assert_eq!(e.resolved("pre").unwrap().steps, 7);
    assert_eq!(e.spec.model.d_model, 64);
    let err = spec::load_with(d.path(), &["stage.pre.lr=5".into()]).unwrap_err();
    assert_eq!(err.0[0].origin, Origin::Override("stage.pre.lr=5".into()));
    let err = spec::load_with(d.path(), &["stage.nope.lr=5".into()]).unwrap_err();
    assert!(err.to_string().contains("no stage named `nope`"), "{err}");
    let err = spec::load_with(d.path(), &["stage.pre.wat=5".into()]).unwrap_err();
    assert!(err.to_string().contains("wat"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = spec::load(Path::new("/nonexistent/exp")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/exp"), "{err}");
}

#[test]
fn bundled_experiments_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut n = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        let toml_path = dir.join("experiment.toml");
        if !toml_path.is_file() {
            continue;
        }
        n += 1;
        let text = std::fs::read_to_string(&toml_path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let from = table
            .get("model")
            .and_then(|m| m.get("from"))
            .and_then(|f| f.as_str());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        match from {
            // Pretrained weights are not in the repository (the README says how to get them):
            // the rest of the spec is checked against a tiny stand-in model.
            Some(f) if !dir.join(f).exists() && !manifest.join(f).exists() => {
                let tmp = tempfile::tempdir().unwrap();
                let model = tmp.path().join("model");
                crate::lora::pretrained_folder(&model);
                let text = text.replace(
                    &format!("\"{f}\""),
                    &format!("{:?}", model.display().to_string()),
                );
                std::fs::write(tmp.path().join("experiment.toml"), text).unwrap();
                spec::load(tmp.path()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            _ => {
                spec::load(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
        }
    }
    assert!(n >= 1);
}

/// Values that `check` used to accept and `run` then crashed, hung or aborted on: each is now
/// one error at the value's line and column.
#[test]
fn sizes_that_would_crash_a_run_are_refused_at_their_line() {
    let max = i64::MAX.to_string();
    let big = (1u64 << 32).to_string();
    let grpo = "\n[[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"pre\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            BASE.replace("ctx = 48", &format!("ctx = 48\nmlp = {max}")),
            "mlp",
            "mlp =",
        ),
        (
            BASE.replace("d_model = 32", "d_model = 1000000"),
            "d_model",
            "d_model =",
        ),
        (
            BASE.replace("layers = 1", "layers = 100000"),
            "layers",
            "layers =",
        ),
        (
            BASE.replace(
                "name = \"arith\"",
                &format!("name = \"arith\"\nheldout = {max}"),
            ),
            "heldout",
            "heldout =",
        ),
        (
            BASE.replace("steps = 5", &format!("steps = 5\nexamples = {max}")),
            "examples",
            "examples =",
        ),
        (
            BASE.replace("steps = 5", &format!("steps = 5\nbatch = {big}")),
            "batch",
            "batch =",
        ),
        (format!("{BASE}k = {max}\n"), "k", "k ="),
        (format!("{BASE}prompts = {big}\n"), "prompts", "prompts ="),
        (
            format!("{BASE}{grpo}group_size = {big}\n"),
            "group_size",
            "group_size =",
        ),
        (
            format!("{BASE}{grpo}prompts = {big}\n"),
            "prompts",
            "prompts =",
        ),
        (format!("{BASE}{grpo}beta = inf\n"), "beta", "beta ="),
    ];
    for (text, key, line_start) in cases {
        let ((line, _), msg) = one_error(&text);
        let want = text
            .lines()
            .position(|l| l.starts_with(line_start))
            .unwrap()
            + 1;
        assert_eq!(line, want, "{key}: {msg}");
        assert!(msg.contains(key), "{key}: {msg}");
    }
}

#[test]
fn a_spec_that_needs_more_memory_than_the_machine_is_refused_up_front() {
    let text = BASE
        .replace("d_model = 32", "d_model = 16384")
        .replace("layers = 1", "layers = 512")
        .replace("heads = 2", "heads = 128");
    let errs = load_text(&text).expect_err("should be invalid").0;
    let msg = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(msg.contains("needs about") && msg.contains("GB"), "{msg}");
    assert!(msg.contains("experiment.toml:"), "{msg}");
}

#[test]
fn values_that_would_only_make_the_loss_nan_or_sampling_garbage_are_refused() {
    let pre = |extra: &str| BASE.replace("steps = 5", &format!("steps = 5\n{extra}"));
    let ev = |extra: &str| BASE.replace("init = \"pre\"", &format!("init = \"pre\"\n{extra}"));
    for (text, needle) in [
        (
            pre("weight_decay = 2147483648.0"),
            "weight_decay must be between 0 and 1",
        ),
        (pre("weight_decay = inf"), "weight_decay"),
        (pre("grad_clip = inf"), "grad_clip"),
        (
            ev("temperature = 1e-320"),
            "temperature must be 0 (greedy) or between",
        ),
        (ev("temperature = 1e-39"), "temperature"),
        (ev("temperature = 1e9"), "temperature"),
    ] {
        let (_, msg) = one_error(&text);
        assert!(msg.contains(needle), "{text}: {msg}");
    }
    let grpo = |extra: &str| {
        format!("{BASE}\n[[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"pre\"\n{extra}\n")
    };
    for (extra, needle) in [
        ("beta = 1e308", "beta must be between 0 and 100"),
        (
            "rewards = { accuracy = 1e308 }",
            "reward weights must be between",
        ),
        (
            "rewards = { accuracy = -1e308 }",
            "reward weights must be between",
        ),
    ] {
        let (_, msg) = one_error(&grpo(extra));
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    // Greedy and ordinary temperatures pass.
    for t in ["0", "0.6", "1.0"] {
        load_text(&ev(&format!("temperature = {t}"))).unwrap();
    }
}

#[test]
fn a_distill_students_shape_is_checked_like_the_models() {
    let distill = |shape: &str| {
        format!(
            "{BASE}\n[[stage]]\nname = \"small\"\nkind = \"distill\"\nteacher = \"pre\"\nmodel = {{ {shape} }}\n"
        )
    };
    for (shape, needle) in [
        ("d_model = 0", "d_model must be between"),
        ("d_model = 9223372036854775807", "d_model must be between"),
        ("heads = 0", "heads must be at least 1"),
        ("mlp = 9223372036854775807", "mlp must be between"),
        ("layers = 2147483648", "layers must be between"),
    ] {
        let errs = load_text(&distill(shape)).expect_err(shape).0;
        assert!(
            errs.iter().any(|e| e.message.contains(needle)),
            "{shape}: {errs:?}"
        );
    }
    load_text(&distill("d_model = 16, layers = 1")).unwrap();
}

/// A bf16 trainer beside the f32 sampler turns the sampler correction on by default; an
/// explicit value, or an f32 model, keeps what is written (off by default).
#[test]
fn sampler_correction_defaults_on_with_bf16_products() {
    use stageloop::spec::SamplerCorrection;
    let grpo = "[[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"pre\"\n";
    let with = |precision: &str, extra: &str| {
        let text = BASE.replace(
            "ctx = 48",
            &format!("ctx = 48\nprecision = \"{precision}\""),
        );
        let exp = load_text(&format!("{text}{grpo}{extra}")).unwrap();
        exp.resolved("rl").unwrap().sampler_correction
    };
    assert_eq!(with("bf16", ""), SamplerCorrection::TokenTruncate);
    assert_eq!(with("f32", ""), SamplerCorrection::Off);
    let off = "sampler_correction = \"off\"\n";
    assert_eq!(with("bf16", off), SamplerCorrection::Off);
    let seq = "sampler_correction = \"sequence_mask\"\n";
    assert_eq!(with("f32", seq), SamplerCorrection::SequenceMask);
    // An unknown precision is named.
    let text = BASE.replace("ctx = 48", "ctx = 48\nprecision = \"fp8\"");
    assert!(load_text(&text).is_err());
}

#[test]
fn objective_switches_are_checked_and_resolved() {
    let grpo = |keys: &str| {
        format!("{BASE}\n[[stage]]\nname = \"rl\"\nkind = \"grpo\"\ninit = \"pre\"\n{keys}\n")
    };
    let (at, msg) = one_error(&grpo("kl_in_reward = true"));
    assert!(
        msg.contains("kl_in_reward") && msg.contains("beta > 0"),
        "{msg}"
    );
    assert!(at.0 > 20, "points at the stage: {at:?}");
    let (_, msg) = one_error(&grpo("top_entropy_quantile = 1.5"));
    assert!(msg.contains("top_entropy_quantile"), "{msg}");
    let (_, msg) = one_error(&grpo("importance_sampling_level = \"episode\""));
    assert!(
        msg.contains("episode") || msg.contains("importance_sampling_level"),
        "{msg}"
    );
    // CISPO's epsilon_high is a cap on the weight: 5 unless given.
    let e = load_text(&grpo("loss_type = \"cispo\"")).unwrap();
    assert_eq!(e.resolved("rl").unwrap().epsilon_high, 5.0);
    let e = load_text(&grpo("loss_type = \"cispo\"\nepsilon_high = 2.0")).unwrap();
    assert_eq!(e.resolved("rl").unwrap().epsilon_high, 2.0);
    // A key of another kind is refused where it is written.
    let (_, msg) = one_error(&BASE.replace("steps = 5", "steps = 5\nentropy_coef = 0.1"));
    assert!(msg.contains("entropy_coef"), "{msg}");
}
