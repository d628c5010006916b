//! prime-rl's file monitor: `<output_dir>/metrics.jsonl`, rows `{"step", "time", ...,
//! "producer"}` appended line-buffered (rows with `"step": null` are time-keyed gauges, skipped
//! by the metrics parser), and its episodes in `traces/step_N/<kind>/traces.jsonl`. An episode
//! is either verifiers' flat rollout (`prompt`, `completion`, `reward`: text or chat messages)
//! or prime-rl's trace record (`traces[].nodes[].message`, `traces[].rewards`).

use super::{files_in, first_line};
use crate::runfs::records::Sample;
use std::path::{Path, PathBuf};

/// What prime-rl's file monitor writes when the run ends.
pub const FINAL_SUMMARY: &str = "final_summary.json";

/// Whether a folder with a `metrics.jsonl` and no `run.json` is prime-rl's: it has `traces/`,
/// or its first row names a `producer` or has no step.
pub fn is_primerl(dir: &Path) -> bool {
    if dir.join("traces").is_dir() {
        return true;
    }
    first_line(&dir.join(crate::runfs::METRICS))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .is_some_and(|v| v.get("producer").is_some() || v.get("step").is_some_and(|s| s.is_null()))
}

/// The trace files of the newest steps (at most 8), oldest first, with their steps.
pub fn trace_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("traces"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            Some((n.strip_prefix("step_")?.parse().ok()?, e.path()))
        })
        .collect();
    steps.sort();
    let keep = steps.len().saturating_sub(8);
    let mut out = Vec::new();
    for (step, path) in steps.into_iter().skip(keep) {
        for kind in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            for f in files_in(&kind.path(), |n| n == "traces.jsonl") {
                out.push((f, step));
            }
        }
        for f in files_in(&path, |n| n == "traces.jsonl") {
            out.push((f, step));
        }
    }
    out
}

/// Chat messages (or a plain string) as text: each message's content, role-prefixed when
/// there are several.
fn messages_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(msgs) => {
            let parts: Vec<String> = msgs
                .iter()
                .filter_map(|m| {
                    let content = content_text(m.get("content")?);
                    let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
                    Some(if msgs.len() > 1 && !role.is_empty() {
                        format!("{role}: {content}")
                    } else {
                        content
                    })
                })
                .collect();
            parts.join("\n")
        }
        _ => String::new(),
    }
}

/// A message's content: a string, or parts of which the text ones count.
fn content_text(c: &serde_json::Value) -> String {
    match c {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// One line of `traces.jsonl` as samples (an episode may hold several traces, one per seat).
pub fn episode(line: &str, step: u64) -> Option<Vec<Sample>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    if let Some(completion) = o.get("completion") {
        let reward = o.get("reward").and_then(|r| r.as_f64()).unwrap_or(0.0);
        return Some(vec![Sample {
            step,
            prompt: o.get("prompt").map(messages_text).unwrap_or_default(),
            completion: messages_text(completion),
            answer: o
                .get("answer")
                .and_then(|a| a.as_str())
                .unwrap_or_default()
                .to_string(),
            rewards: [("reward".to_string(), reward)].into(),
            reward,
            advantage: o.get("advantage").and_then(|a| a.as_f64()),
            ..Sample::default()
        }]);
    }
    let traces = o.get("traces")?.as_array()?;
    let mut out = Vec::new();
    for t in traces {
        let mut prompt = Vec::new();
        let mut completion = Vec::new();
        for node in t
            .get("nodes")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
        {
            let Some(m) = node.get("message") else {
                continue;
            };
            let text = m.get("content").map(content_text).unwrap_or_default();
            let sampled = node
                .get("sampled")
                .and_then(|s| s.as_bool())
                .unwrap_or(false)
                || m.get("role").and_then(|r| r.as_str()) == Some("assistant");
            if sampled {
                completion.push(text);
            } else {
                prompt.push(text);
            }
        }
        let mut rewards = std::collections::BTreeMap::new();
        let mut reward = 0.0;
        for (name, r) in t
            .get("rewards")
            .and_then(|r| r.as_object())
            .into_iter()
            .flatten()
        {
            let Some(score) = r.get("score").and_then(|s| s.as_f64()) else {
                continue;
            };
            reward += score * r.get("weight").and_then(|w| w.as_f64()).unwrap_or(1.0);
            rewards.insert(name.clone(), score);
        }
        out.push(Sample {
            step,
            prompt: prompt.join("\n"),
            completion: completion.join("\n"),
            rewards,
            reward,
            advantage: t
                .get("info")
                .and_then(|i| i.get("advantage"))
                .and_then(|a| a.as_f64()),
            truncated: t.get("stop_condition").and_then(|s| s.as_str()) == Some("length"),
            ..Sample::default()
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_rollouts_and_trace_records_become_samples() {
        let flat = episode(
            r#"{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}], "reward": 1.0, "answer": "4"}"#,
            3,
        )
        .unwrap();
        assert_eq!(flat[0].prompt, "2+2?");
        assert_eq!(flat[0].completion, "4");
        assert_eq!((flat[0].step, flat[0].reward), (3, 1.0));
        let traced = episode(
            r#"{"traces": [{"nodes": [{"message": {"role": "user", "content": "q"}}, {"message": {"role": "assistant", "content": [{"type": "text", "text": "a"}]}, "sampled": true}], "rewards": {"acc": {"score": 1.0, "weight": 0.5}, "fmt": {"score": 1.0}}, "info": {"advantage": 0.25}}]}"#,
            4,
        )
        .unwrap();
        assert_eq!(
            (traced[0].prompt.as_str(), traced[0].completion.as_str()),
            ("q", "a")
        );
        assert_eq!(traced[0].reward, 1.5);
        assert_eq!(traced[0].advantage, Some(0.25));
        assert!(episode("{\"x\": 1}", 0).is_none());
    }
}
