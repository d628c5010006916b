//! Random inputs, kept in the suite (seconds, fixed seeds): the spec parser and `--set`, the
//! metric and sample line parsers (through every reader: tail, whole file, from the end,
//! export), run.json, and checkpoint loading. Each must answer with a value or an error that
//! names the file — never a panic, an abort or a hang.

use burn::tensor::Device;
use stageloop::model::checkpoint;
use stageloop::model::tokenizer::Tokenizer;
use stageloop::model::{Gpt, ModelConfig};
use stageloop::notebook::workspace::Workspace;
use stageloop::runfs::metrics::{MAX_STEP, parse_metric_line, read_columns, read_rows};
use stageloop::runfs::records::Sample;
use stageloop::runfs::{RunDir, RunStatus};
use std::path::Path;
use std::time::{Duration, Instant};

/// SplitMix64: a small, fixed generator so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Values that have broken parsers before: huge and negative integers, non-finite numbers,
/// deep nesting, control and bidi characters, invalid UTF-8.
const NASTY: &[&str] = &[
    "0",
    "-1",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-inf",
    "18446744073709551615",
    "9223372036854775808",
    "4294967296",
    "1e15",
    "0.0",
    "true",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[",
    "\"\\u001b]0;t\\u0007\"",
    "\"\\u202e\"",
    "null",
    "1.5",
    "2147483648",
    "\"\\ud800\"",
];

fn mutate(text: &str, rng: &mut Rng) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let at = at.min(b.len() - 1);
                b[at] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(20)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let v = rng.pick(NASTY);
                b.splice(at..at, v.bytes());
            }
            3 => b.truncate(at),
            4 => {
                // Replace a number after `=` or `:` with a nasty value.
                if let Some(p) = b[at.min(b.len())..]
                    .iter()
                    .position(|&c| c == b'=' || c == b':')
                {
                    let s = at + p + 1;
                    let e = b[s..]
                        .iter()
                        .position(|&c| c == b'\n' || c == b',' || c == b'}')
                        .map_or(b.len(), |q| s + q);
                    let v = format!(" {}", rng.pick(NASTY));
                    b.splice(s..e, v.bytes());
                }
            }
            _ => {
                b.splice(at..at, [0xff, 0xfe, 0x1b]);
            }
        }
    }
    b
}

#[test]
fn specs_and_overrides_never_panic_and_errors_name_the_file() {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/r1-arith/experiment.toml"),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng(1);
    let keys = [
        "seed",
        "model.d_model",
        "model.ctx",
        "task.heldout",
        "stage.pre.steps",
        "stage.grpo.group_size",
        "stage.grpo.beta",
        "stage.eval.k",
        "model.layers",
    ];
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        let text = mutate(&base, &mut rng);
        std::fs::write(d.path().join("experiment.toml"), &text).unwrap();
        let sets: Vec<String> = (0..rng.below(3))
            .map(|_| format!("{}={}", rng.pick(&keys), rng.pick(NASTY)))
            .collect();
        match stageloop::spec::load_with(d.path(), &sets) {
            Ok(_) => ok += 1,
            Err(e) => {
                refused += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains("experiment.toml") || msg.contains("--set"),
                    "error names no place: {msg}"
                );
            }
        }
    }
    assert!(refused > 200 && ok > 0, "ok {ok}, refused {refused}");
}

fn random_line(rng: &mut Rng) -> Vec<u8> {
    let mut s = b"{\"step\":".to_vec();
    s.extend(rng.pick(NASTY).bytes());
    for _ in 0..rng.below(5) {
        s.extend(
            format!(
                ",\"{}\":{}",
                rng.pick(&["loss", "reward", "k", "\\u001b"]),
                rng.pick(NASTY)
            )
            .bytes(),
        );
    }
    s.push(b'}');
    if rng.below(3) == 0 {
        s = mutate(&String::from_utf8_lossy(&s), rng);
    }
    s
}

#[test]
fn metric_and_sample_lines_never_panic_through_any_reader() {
    let mut rng = Rng(2);
    let d = tempfile::tempdir().unwrap();
    let exp = d.path().join("e");
    let run = exp.join("runs/20261130-000000-pre");
    std::fs::create_dir_all(&run).unwrap();
    let mut file = Vec::new();
    for _ in 0..3000 {
        let line = random_line(&mut rng);
        if let Ok(r) = parse_metric_line(&String::from_utf8_lossy(&line)) {
            assert!(r.step <= MAX_STEP);
        }
        let _ = Sample::parse(&String::from_utf8_lossy(&line));
        file.extend(&line);
        file.push(b'\n');
    }
    file.extend(format!("{{\"step\":1,{}}}\n", "[".repeat(100_000)).bytes());
    std::fs::write(run.join("metrics.jsonl"), &file).unwrap();
    std::fs::write(run.join("samples.jsonl"), &file).unwrap();
    let mut rows = 0;
    let bad = read_rows(&run.join("metrics.jsonl"), |_| rows += 1).unwrap();
    assert!(rows > 0 && bad.count > 0, "{rows} rows, {} bad", bad.count);
    // From an offset inside the file, as `runs` reads a log's end.
    let _ = read_columns(&run.join("metrics.jsonl"), file.len() as u64 / 2).unwrap();
    let _ = stageloop::analysis::run_row(&RunDir::new(&run));
    // Export (polars columns and CSV writing) and the notebook's readers.
    let out = stageloop::analysis::export::export_run(
        &RunDir::new(&run),
        &d.path().join("out"),
        &["csv", "parquet", "svg"],
    )
    .unwrap();
    assert!(out.bad.count > 0);
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_secs(30));
    let view = &ws.experiments[0].runs[0];
    assert_eq!(view.series.lines() as usize, rows);
}

#[test]
fn run_json_mutations_never_panic() {
    let base = r#"{"id":"20261130-000000-pre","experiment":"e","stage":"pre","kind":"pretrain","status":"running","pid":1,"started":1.0,"progress":{"step":3,"total":10},"config":{"lr":0.1},"resumed_at":[{"step":2,"time":5.0}]}"#;
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("e/runs/20261130-000000-pre");
    std::fs::create_dir_all(&run).unwrap();
    let mut rng = Rng(3);
    let mut ws = Workspace::new(d.path());
    for _ in 0..500 {
        std::fs::write(run.join("run.json"), mutate(base, &mut rng)).unwrap();
        if let Err(e) = RunStatus::load(&run) {
            assert!(e.contains("run.json"), "{e}");
        }
        let _ = stageloop::analysis::run_row(&RunDir::new(&run));
        ws.poll(Instant::now() + Duration::from_secs(1));
    }
}

#[test]
fn checkpoint_mutations_are_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ck");
    std::fs::create_dir_all(&dir).unwrap();
    let tok = Tokenizer::new("0123456789+=,");
    let cfg = ModelConfig {
        vocab: tok.vocab_size(),
        d_model: 16,
        layers: 1,
        heads: 2,
        mlp: 32,
        ctx: 16,
        rope_theta: 10_000.0,
        arch: Default::default(),
    };
    let device = Device::flex();
    checkpoint::save_model(
        &dir,
        &Gpt::new(&cfg, &device),
        &cfg,
        &stageloop::model::text::Text::Chars(tok.clone()),
        None,
    )
    .unwrap();
    checkpoint::load_model(&dir, &device).expect("the clean checkpoint loads");
    let files: Vec<(String, Vec<u8>)> = ["model.safetensors", "config.json", "tokenizer.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    let mut rng = Rng(4);
    let mut refused = 0;
    for i in 0..150 {
        let (name, clean) = &files[i % files.len()];
        let bytes = if name.ends_with(".safetensors") {
            // The header (its first bytes) is where a flip means most.
            let mut b = clean.clone();
            match rng.below(3) {
                0 => b.truncate(rng.below(b.len())),
                1 => {
                    let at = rng.below(b.len().min(400));
                    b[at] = rng.next() as u8;
                }
                _ => b[..8].copy_from_slice(&rng.next().to_le_bytes()),
            }
            b
        } else {
            mutate(&String::from_utf8_lossy(clean), &mut rng)
        };
        std::fs::write(dir.join(name), &bytes).unwrap();
        if let Err(e) = checkpoint::load_model(&dir, &device) {
            refused += 1;
            let msg = format!("{e:#}");
            assert!(msg.contains(&dir.display().to_string()), "{msg}");
        }
        std::fs::write(dir.join(name), clean).unwrap();
    }
    assert!(refused > 50, "{refused} of 150 refused");
}

#[test]
fn gguf_header_and_table_mutations_are_errors_not_panics() {
    use stageloop::model::gguf::{Gguf, Value};
    use stageloop::model::gguf_write::{Store, write};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.gguf");
    let values: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    write(
        &p,
        &[
            ("general.architecture", Value::Str("llama".into())),
            ("general.alignment", Value::Uint(32)),
        ],
        &[
            ("a".into(), vec![32, 2], Store::Q8_0, values.clone()),
            ("b".into(), vec![32, 2], Store::Q4_1, values.clone()),
            ("c".into(), vec![64], Store::F32, values),
        ],
    )
    .unwrap();
    let clean = std::fs::read(&p).unwrap();
    Gguf::open(&p).expect("the clean file opens");
    let mut rng = Rng(9);
    let mut refused = 0;
    for _ in 0..400 {
        let mut b = clean.clone();
        // The header and tables (the first ~250 bytes) are where a flip means most.
        for _ in 0..1 + rng.below(3) {
            if b.len() < 16 {
                break;
            }
            match rng.below(4) {
                0 => b.truncate(rng.below(b.len())),
                1 => {
                    let at = rng.below(b.len().min(260));
                    b[at] = rng.next() as u8;
                }
                2 => {
                    let at = rng.below(b.len().min(260).saturating_sub(8));
                    b[at..at + 8].copy_from_slice(&rng.next().to_le_bytes());
                }
                _ => {
                    let at = rng.below(b.len().min(260).saturating_sub(8));
                    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
                }
            }
        }
        std::fs::write(&p, &b).unwrap();
        match Gguf::open(&p) {
            Ok(g) => {
                // Whatever opened reads every tensor without panicking.
                for t in &g.tensors {
                    let _ = g.read_f32(t);
                }
            }
            Err(e) => {
                refused += 1;
                assert!(format!("{e:#}").contains("m.gguf"), "{e:#}");
            }
        }
    }
    assert!(refused > 100, "{refused} of 400 refused");
}

#[test]
fn random_chat_templates_render_or_fail_quickly() {
    use stageloop::model::pretrained::tokenizer::{HfTokenizer, Message};
    let tok = Tokenizer::new("0123456789+=,abc");
    let json = stageloop::model::pretrained::export::char_tokenizer_json(&tok).to_string();
    let pieces = [
        "{% for m in messages %}",
        "{% endfor %}",
        "{% for i in range(1000000) %}",
        "{% for j in range(1000000) %}",
        "{{ m.content }}",
        "{{ m.role | upper }}",
        "{% if add_generation_prompt %}",
        "{% endif %}",
        "{{ raise_exception('\u{1b}]0;x\u{7}') }}",
        "{{ bos_token }}",
        "{% set x = x ~ x %}",
        "{{ messages[0]['content'][::-1] }}",
        "{%",
        "}}",
        "text",
        "{{ (messages | length) * 1000000000 }}",
    ];
    let mut rng = Rng(21);
    let user = [Message {
        role: "user".into(),
        content: "1+2=".into(),
    }];
    for _ in 0..200 {
        let template: String = (0..1 + rng.below(8)).map(|_| *rng.pick(&pieces)).collect();
        let t = HfTokenizer::from_json(
            &json,
            Some(1),
            vec![2],
            Some(template.clone()),
            Path::new("t.json"),
        )
        .unwrap();
        let started = Instant::now();
        match t.chat(&user, true) {
            Ok(_) => {}
            Err(e) => assert!(!format!("{e:#}").contains('\u{1b}'), "{template}: {e:#}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{template} took {:?}",
            started.elapsed()
        );
    }
}
