//! The typed records of a run folder's JSON files other than metrics and status: one line of
//! `samples.jsonl` ([`Sample`]) and `eval.json` ([`EvalReport`]). Every stage writes them
//! through these types and every reader (the notebook, `diff`, `report`, the pipeline's loop
//! rule) parses them through these types: one serializer, one parser.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One line of `samples.jsonl`: a completion with its prompt, the task's answer and its
/// scores. Reading is lenient where other tools (or NaN, which JSON writes as `null`) leave a
/// field out or empty: missing text is empty, a reward that is not a number is dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The training step (0 for an eval's completions).
    pub step: u64,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub prompt: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub completion: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub answer: String,
    /// Each reward function's score (`accuracy`, `format`, ..., reward programs by name).
    #[serde(default, deserialize_with = "numbers_only")]
    pub rewards: BTreeMap<String, f64>,
    /// The total reward (GRPO: the weighted sum; elsewhere the accuracy).
    #[serde(default, deserialize_with = "number_or_zero")]
    pub reward: f64,
    /// GRPO: the completion's advantage within its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advantage: Option<f64>,
    /// The group (GRPO: prompt of the step; eval: prompt of the held-out set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
    /// An eval's greedy completion (not one of its k samples).
    #[serde(default)]
    pub greedy: bool,
    /// The completion ran out of tokens before an end-of-sequence token.
    #[serde(default)]
    pub truncated: bool,
}

impl Sample {
    /// One line of `samples.jsonl`, or `None` when it is not a sample (torn, garbage, no step).
    pub fn parse(line: &str) -> Option<Sample> {
        serde_json::from_str(line).ok()
    }

    /// What identifies a sample in `bookmarks.jsonl`: its step, prompt and completion.
    pub fn key(&self) -> (u64, String, String) {
        (self.step, self.prompt.clone(), self.completion.clone())
    }

    /// Whether the answer is right: the `accuracy` reward, else the total.
    pub fn correct(&self) -> bool {
        self.rewards.get("accuracy").copied().unwrap_or(self.reward) >= 1.0
    }

    /// Whether the completion has the R1 format (true where the format was not scored).
    pub fn format_ok(&self) -> bool {
        self.rewards.get("format").copied().unwrap_or(1.0) >= 1.0
    }
}

fn text_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

fn number_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_f64().unwrap_or(0.0))
}

fn numbers_only<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// The contents of `eval.json`: an eval stage's results over its held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub task: String,
    pub n: usize,
    #[serde(rename = "pass@1")]
    pub pass_at_1: f64,
    pub greedy: f64,
    #[serde(rename = "pass@k")]
    pub pass_at_k: f64,
    pub k: usize,
    #[serde(rename = "maj@k")]
    pub maj_at_k: f64,
    pub format_rate: f64,
    pub mean_length: f64,
    /// pass@j for every power of two j ≤ k (unbiased estimator over the k samples), keyed by
    /// j as text: the capability curve of Yue et al. 2025. Absent in reports of older builds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pass_at: BTreeMap<String, f64>,
    /// FLOPs the eval's sampling took (`ModelConfig::forward_flops` per prompt + completion);
    /// 0 in reports of older builds.
    #[serde(default)]
    pub flops: f64,
}

impl EvalReport {
    /// Read `eval.json`; the error names the file (and the line and column of bad JSON).
    pub fn load(path: &Path) -> Result<EvalReport, String> {
        let text = crate::untrusted::read_small(path, 1 << 20)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
    }

    /// A scalar metric by its name in the file (`pass@1`, `greedy`, `pass@k`, `maj@k`,
    /// `format_rate`, `mean_length`, `k`, `n`, `flops`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        Some(match name {
            "pass@1" => self.pass_at_1,
            "greedy" => self.greedy,
            "pass@k" => self.pass_at_k,
            "maj@k" => self.maj_at_k,
            "format_rate" => self.format_rate,
            "mean_length" => self.mean_length,
            "k" => self.k as f64,
            "n" => self.n as f64,
            "flops" => self.flops,
            _ => return None,
        })
    }

    /// The pass@k points, ascending in k: from `pass_at`, else (older reports) pass@1 and
    /// pass@k at the eval's k.
    pub fn curve(&self) -> Vec<(usize, f64)> {
        let mut pts: Vec<(usize, f64)> = self
            .pass_at
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
            .collect();
        if pts.is_empty() {
            pts.push((1, self.pass_at_1));
            if self.k > 1 {
                pts.push((self.k, self.pass_at_k));
            }
        }
        pts.sort_by_key(|p| p.0);
        pts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_back_as_written() {
        let s = Sample {
            step: 7,
            prompt: "1+2=".into(),
            completion: "<answer>3</answer>".into(),
            answer: "3".into(),
            rewards: [("accuracy".to_string(), 1.0), ("format".to_string(), 1.0)].into(),
            reward: 1.2,
            advantage: Some(0.5),
            group: Some(3),
            greedy: false,
            truncated: true,
        };
        let line = serde_json::to_string(&s).unwrap();
        assert_eq!(Sample::parse(&line), Some(s));
    }

    #[test]
    fn a_sample_line_is_read_leniently_but_needs_a_step() {
        let s = Sample::parse(r#"{"step": 2, "prompt": 5, "rewards": {"accuracy": null, "format": 1}, "reward": null}"#)
            .unwrap();
        assert_eq!((s.prompt.as_str(), s.reward), ("", 0.0));
        assert_eq!(s.rewards, [("format".to_string(), 1.0)].into());
        assert!(!s.correct() && s.format_ok() && !s.truncated);
        assert_eq!(Sample::parse(r#"{"prompt": "p"}"#), None);
        assert_eq!(Sample::parse(r#"{"step": 1, "prompt": "#), None);
    }

    #[test]
    fn an_eval_report_names_its_metrics_and_its_curve() {
        let text = r#"{"task": "arith", "n": 10, "pass@1": 0.5, "greedy": 0.6, "pass@k": 0.9,
            "k": 4, "maj@k": 0.7, "format_rate": 1.0, "mean_length": 12.0}"#;
        let r: EvalReport = serde_json::from_str(text).unwrap();
        assert_eq!(r.metric("maj@k"), Some(0.7));
        assert_eq!(r.metric("nope"), None);
        assert_eq!(r.curve(), vec![(1, 0.5), (4, 0.9)]);
        let mut with = r.clone();
        with.pass_at = [("1", 0.5), ("2", 0.7), ("4", 0.9)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        assert_eq!(with.curve(), vec![(1, 0.5), (2, 0.7), (4, 0.9)]);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("eval.json");
        std::fs::write(&p, "{\"task\": ").unwrap();
        let err = EvalReport::load(&p).unwrap_err();
        assert!(err.contains("eval.json:1:"), "{err}");
    }
}
