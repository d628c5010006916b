//! `[task] name = "dataset"`: problems from a file of rows (JSONL or Parquet) with answers a
//! verifier checks ([`super::verify`]), so GRPO needs no labels beyond an answer.
//!
//! Each row gives a prompt (the `template` with `{field}` replaced by the row's values), the
//! expected answer, and optionally a worked solution: the `<think>` text of SFT and pretraining
//! examples. Rows are read once, whole (datasets here are small); a bad row is an error naming
//! `file:line`. The held-out rows are a separate `test` file, or the `heldout` rows whose
//! prompts hash lowest under the task seed — a split that does not depend on row order. The
//! tokenizer's alphabet is every character the prompts, answers and solutions use.

use super::verify::Verifier;
use super::{Problem, Task, TaskRng, item_seed};
use crate::spec::TaskSpec;
use anyhow::{Context, Result, bail};
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// One usable row.
#[derive(Debug, Clone)]
struct Row {
    problem: Problem,
    /// What the verifier compares against (a GSM8K answer keeps its `####`).
    expected: String,
}

/// A dataset task.
pub struct Dataset {
    verifier: Verifier,
    train: Vec<Row>,
    heldout: Vec<Problem>,
    expected: HashMap<String, String>,
    alphabet: String,
    /// Training rows dropped because the test file has their prompt.
    pub overlap: usize,
    /// Rows whose reference answer (what SFT writes) the verifier accepts.
    pub self_check: usize,
}

const SALT_SPLIT: u64 = 4;

/// A field's value as text: strings as they are, numbers and booleans printed, arrays of them
/// joined with `,` (TinyZero's `nums`).
fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Array(a) => a
            .iter()
            .map(text)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// The rows of a JSONL file as objects; errors name `file:line`.
fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, serde_json::Value>)>> {
    let bytes = crate::untrusted::read_bytes(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let no = i + 1;
        let line = std::str::from_utf8(line)
            .map_err(|e| anyhow::anyhow!("{}:{no}: not UTF-8 text ({e})", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{no}: not a JSON object: {e}", path.display()))?;
        match v {
            serde_json::Value::Object(m) => rows.push((no, m)),
            _ => bail!("{}:{no}: not a JSON object", path.display()),
        }
    }
    Ok(rows)
}

/// The rows of a Parquet file (through polars), numbered from 1.
fn read_parquet(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, serde_json::Value>)>> {
    use polars::prelude::*;
    let f = crate::untrusted::open_regular(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let df = ParquetReader::new(f)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a Parquet file: {e}", path.display()))?;
    let mut rows = vec![serde_json::Map::new(); df.height()];
    for col in df.columns() {
        let name = col.name().to_string();
        let s = col.cast(&DataType::String).map_err(|e| {
            anyhow::anyhow!(
                "{}: column `{name}` cannot be read as text: {e}",
                path.display()
            )
        })?;
        let ca = s.str()?;
        for (i, row) in rows.iter_mut().enumerate() {
            if let Some(v) = ca.get(i) {
                row.insert(name.clone(), serde_json::Value::String(v.to_string()));
            }
        }
    }
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i + 1, r))
        .collect())
}

/// The rows of a Parquet file (by its extension) or a JSONL file.
fn read_rows(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, serde_json::Value>)>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path),
        _ => read_jsonl(path),
    }
}

/// `template` with every `{field}` replaced by the row's value; an unknown field is an error.
fn fill(
    template: &str,
    row: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let key = &rest[open + 1..open + close];
        let v = row
            .get(key)
            .and_then(text)
            .ok_or_else(|| format!("missing field `{key}` (used by the template)"))?;
        out.push_str(&v);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Dataset {
    /// Read the spec's file(s) and split them.
    pub fn load(spec: &TaskSpec) -> Result<Dataset> {
        let path = spec
            .path
            .as_deref()
            .context("a dataset task needs `path`")?;
        let verifier_name = spec.verifier.as_deref().unwrap_or("numeric");
        let verifier = Verifier::new(verifier_name, spec.pattern.as_deref(), spec.case_sensitive)
            .map_err(|e| anyhow::anyhow!("[task] verifier: {e}"))?;
        let train = Self::rows(Path::new(path), spec, &verifier)?;
        let mut overlap = 0;
        let (train, heldout) = match &spec.test {
            Some(test) => {
                let mut test = Self::rows(Path::new(test), spec, &verifier)?;
                test.truncate(spec.heldout);
                let test_prompts: BTreeSet<&str> =
                    test.iter().map(|r| r.problem.prompt.as_str()).collect();
                let before = train.len();
                let train: Vec<Row> = train
                    .iter()
                    .filter(|r| !test_prompts.contains(r.problem.prompt.as_str()))
                    .cloned()
                    .collect();
                overlap = before - train.len();
                (train, test)
            }
            None => {
                if spec.heldout >= train.len() {
                    bail!(
                        "{path}: heldout = {} leaves no training rows ({} rows); lower it or give a `test` file",
                        spec.heldout,
                        train.len()
                    );
                }
                let mut keyed: Vec<(u64, Row)> = train
                    .into_iter()
                    .map(|r| {
                        let h = r
                            .problem
                            .prompt
                            .bytes()
                            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                            });
                        (item_seed(spec.seed, SALT_SPLIT, h), r)
                    })
                    .collect();
                keyed.sort_by_key(|(k, _)| *k);
                let train = keyed.split_off(spec.heldout);
                (
                    train.into_iter().map(|(_, r)| r).collect(),
                    keyed.into_iter().map(|(_, r)| r).collect(),
                )
            }
        };
        if train.is_empty() {
            bail!("{path}: no training rows left after the held-out split");
        }
        let mut expected = HashMap::new();
        let mut chars = BTreeSet::new();
        for r in train.iter().chain(&heldout) {
            expected.insert(r.problem.prompt.clone(), r.expected.clone());
            for s in [&r.problem.prompt, &r.problem.answer, &r.problem.trace] {
                chars.extend(s.chars());
            }
        }
        let self_check = train
            .iter()
            .chain(&heldout)
            .filter(|r| verifier.score(&r.problem.answer, &r.expected) == 1.0)
            .count();
        Ok(Dataset {
            verifier,
            heldout: heldout.into_iter().map(|r| r.problem).collect(),
            train,
            expected,
            alphabet: chars.into_iter().collect(),
            overlap,
            self_check,
        })
    }

    /// The usable rows of one file: prompts distinct (the first row of a prompt wins).
    fn rows(path: &Path, spec: &TaskSpec, verifier: &Verifier) -> Result<Vec<Row>> {
        let raw = read_rows(path)?;
        if raw.is_empty() {
            bail!("{}: no rows", path.display());
        }
        let countdown = matches!(verifier, Verifier::Countdown);
        let prompt_field = spec.prompt_field.as_deref().unwrap_or("prompt");
        let answer_field = spec.answer_field.as_deref().unwrap_or("answer");
        let solution_field = spec.solution_field.as_deref().unwrap_or("solution");
        let template = spec.template.clone().unwrap_or_else(|| {
            if countdown && !raw[0].1.contains_key(prompt_field) {
                "{nums}>{target}:".to_string()
            } else {
                format!("{{{prompt_field}}}")
            }
        });
        let mut seen = BTreeSet::new();
        let mut rows = Vec::new();
        for (no, row) in raw {
            let at = |m: String| anyhow::anyhow!("{}:{no}: {m}", path.display());
            let prompt = fill(&template, &row).map_err(at)?;
            let field = |k: &str| row.get(k).and_then(text);
            let solution = spec
                .solution_field
                .as_ref()
                .map(|k| field(k).ok_or_else(|| at(format!("missing field `{k}`"))))
                .transpose()?
                .or_else(|| field(solution_field));
            let expected = if countdown && !row.contains_key(answer_field) {
                let nums = field("nums").ok_or_else(|| at("missing field `nums`".into()))?;
                let target = field("target").ok_or_else(|| at("missing field `target`".into()))?;
                format!("{nums}>{target}")
            } else {
                field(answer_field).ok_or_else(|| at(format!("missing field `{answer_field}`")))?
            };
            // What a completion writes in <answer>, and the think text before it.
            let (answer, trace) = match verifier {
                Verifier::Countdown => (
                    solution.clone().unwrap_or_default().replace(' ', ""),
                    String::new(),
                ),
                Verifier::Numeric => {
                    let (cot, tail) = expected.rsplit_once("####").unwrap_or(("", &expected));
                    let number = tail.trim().replace([',', '$'], "");
                    let trace = solution.clone().unwrap_or_else(|| cot.trim().to_string());
                    (number, trace)
                }
                _ => (
                    expected.trim().to_string(),
                    solution.clone().unwrap_or_default(),
                ),
            };
            if !seen.insert(prompt.clone()) {
                continue;
            }
            rows.push(Row {
                problem: Problem {
                    prompt,
                    answer,
                    trace,
                },
                expected,
            });
        }
        Ok(rows)
    }

    /// Training rows.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    /// Held-out rows.
    pub fn heldout_len(&self) -> usize {
        self.heldout.len()
    }

    /// The verifier in use.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The first `n` training rows as (prompt, expected answer, reference answer).
    pub fn examples(&self, n: usize) -> Vec<(String, String, String)> {
        self.train
            .iter()
            .take(n)
            .map(|r| {
                (
                    r.problem.prompt.clone(),
                    r.expected.clone(),
                    r.problem.answer.clone(),
                )
            })
            .collect()
    }
}

/// What `stageloop data show` reports about a file: its rows, how many rows have each field,
/// and the dataset it makes under `spec`.
pub struct Shown {
    pub rows: usize,
    pub fields: std::collections::BTreeMap<String, usize>,
    pub dataset: Result<Dataset>,
}

/// Read `path` raw (fields) and as a dataset under `spec` (its `path` replaced by this file).
pub fn show(path: &Path, spec: &TaskSpec) -> Result<Shown> {
    let raw = read_rows(path)?;
    let mut fields = std::collections::BTreeMap::new();
    for (_, r) in &raw {
        for k in r.keys() {
            *fields.entry(k.clone()).or_insert(0) += 1;
        }
    }
    let mut spec = spec.clone();
    spec.path = Some(path.display().to_string());
    spec.test = None;
    Ok(Shown {
        rows: raw.len(),
        fields,
        dataset: Dataset::load(&spec),
    })
}

impl Task for Dataset {
    fn name(&self) -> &'static str {
        "dataset"
    }
    fn alphabet(&self) -> &str {
        &self.alphabet
    }
    /// A training row, uniformly (difficulty does not apply).
    fn generate(&self, rng: &mut TaskRng, _difficulty: u32) -> Problem {
        self.train[rng.random_range(0..self.train.len())]
            .problem
            .clone()
    }
    fn accuracy(&self, prompt: &str, answer: &str) -> f64 {
        self.expected
            .get(prompt)
            .map_or(0.0, |e| self.verifier.score(answer, e))
    }
    /// Another row's answer (a plausible wrong one), or the answer with a digit changed.
    fn wrong_answer(&self, p: &Problem, rng: &mut TaskRng) -> String {
        for _ in 0..8 {
            let other = &self.train[rng.random_range(0..self.train.len())].problem;
            if other.answer != p.answer && self.accuracy(&p.prompt, &other.answer) == 0.0 {
                return other.answer.clone();
            }
        }
        format!("{}1", p.answer)
    }
    /// The solution as it is, with a wrong answer after it.
    fn slipped(&self, p: &Problem, rng: &mut TaskRng) -> (String, String) {
        (p.trace.clone(), self.wrong_answer(p, rng))
    }
    fn fixed_heldout(&self) -> Option<Vec<Problem>> {
        Some(self.heldout.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str, path: &Path) -> TaskSpec {
        toml::from_str(&format!(
            "name = \"dataset\"\npath = \"{}\"\n{extra}",
            path.display()
        ))
        .unwrap()
    }

    #[test]
    fn rows_split_score_and_bad_rows_name_their_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gsm.jsonl");
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!(
                "{{\"question\": \"{i}+{i}?\", \"answer\": \"{i} and {i} make {}\\n#### {}\"}}\n",
                2 * i,
                2 * i
            ));
        }
        std::fs::write(&p, &text).unwrap();
        let ds = Dataset::load(&spec("prompt_field = \"question\"\nheldout = 2", &p)).unwrap();
        assert_eq!(ds.train_len(), 8);
        let held = ds.fixed_heldout().unwrap();
        assert_eq!(held.len(), 2);
        let h = &held[0];
        assert_eq!(ds.accuracy(&h.prompt, &h.answer), 1.0, "{h:?}");
        assert!(
            h.trace.contains("make"),
            "the GSM8K reasoning is the trace: {h:?}"
        );
        assert_eq!(ds.accuracy(&h.prompt, "12345"), 0.0);
        assert_eq!(ds.accuracy("not a row", &h.answer), 0.0);
        // The split is by prompt hash: the same whatever the row order.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.reverse();
        std::fs::write(&p, lines.join("\n")).unwrap();
        let again = Dataset::load(&spec("prompt_field = \"question\"\nheldout = 2", &p)).unwrap();
        let prompts = |v: Vec<Problem>| v.into_iter().map(|p| p.prompt).collect::<BTreeSet<_>>();
        assert_eq!(prompts(again.fixed_heldout().unwrap()), prompts(held));
        // Bad rows: file and line.
        for (bad, says) in [
            (
                "{\"prompt\": \"1\"}\n",
                "gsm.jsonl:1: missing field `answer`",
            ),
            (
                "{\"prompt\": \"1\", \"answer\": \"1\"}\nnot json\n",
                "gsm.jsonl:2: not a JSON object",
            ),
            ("", "no rows"),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = Dataset::load(&spec("heldout = 1", &p))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
        std::fs::write(&p, b"{\"prompt\": \"\xff\", \"answer\": \"1\"}\n").unwrap();
        let e = Dataset::load(&spec("heldout = 1", &p))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("gsm.jsonl:1: not UTF-8"), "{e}");
    }

    #[test]
    fn parquet_rows_read_like_jsonl() {
        use polars::prelude::*;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rows.parquet");
        let prompts: Vec<String> = (0..5).map(|i| format!("{i}+1=")).collect();
        let answers: Vec<i64> = (0..5).map(|i| i + 1).collect();
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("prompt".into(), prompts),
            Column::new("answer".into(), answers),
        ])
        .unwrap();
        ParquetWriter::new(std::fs::File::create(&p).unwrap())
            .finish(&mut df)
            .unwrap();
        let ds = Dataset::load(&spec("heldout = 1", &p)).unwrap();
        assert_eq!(ds.train_len() + ds.heldout_len(), 5);
        assert_eq!(ds.accuracy("3+1=", "4"), 1.0);
        assert_eq!(ds.accuracy("3+1=", "5"), 0.0);
        assert_eq!(ds.self_check, 5);
    }

    #[test]
    fn tinyzero_countdown_rows_use_the_builtin_prompt_and_checker() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cd.jsonl");
        std::fs::write(
            &p,
            "{\"nums\": [25, 7, 3], \"target\": 96, \"solution\": \"(25 + 7)*3\"}\n{\"nums\": [2, 3, 4], \"target\": 24, \"solution\": \"2*3*4\"}\n{\"nums\": [1, 2, 3], \"target\": 6, \"solution\": \"1+2+3\"}\n",
        )
        .unwrap();
        let ds = Dataset::load(&spec("verifier = \"countdown\"\nheldout = 1", &p)).unwrap();
        assert_eq!(ds.accuracy("25,7,3>96:", "(25+7)*3"), 1.0);
        assert_eq!(ds.accuracy("25,7,3>96:", "25*3+21"), 0.0);
        let all: Vec<Problem> = ds
            .train
            .iter()
            .map(|r| r.problem.clone())
            .chain(ds.fixed_heldout().unwrap())
            .collect();
        for p in all {
            assert_eq!(ds.accuracy(&p.prompt, &p.answer), 1.0, "{p:?}");
        }
    }
}
