//! Parsing `metrics.jsonl` lines into rows, and a tail that turns appended lines into rows while
//! counting (not failing on) lines that are not valid records.

use super::tail::{Poll, TailReader};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// One line of `metrics.jsonl`: a step, an optional wall time, and named values (`None` where
/// the writer had a non-finite number: a gap in the chart, not a zero).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub step: u64,
    pub time: Option<f64>,
    pub values: BTreeMap<String, Option<f64>>,
}

/// Parse one line. Non-numeric fields (strings, objects) are ignored; `step` is required.
pub fn parse_metric_line(line: &str) -> Result<MetricRow, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let step = obj
        .get("step")
        .and_then(|s| {
            s.as_u64()
                .or_else(|| s.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        })
        .ok_or("missing or negative `step`")?;
    let time = obj.get("time").and_then(|t| t.as_f64());
    let mut values = BTreeMap::new();
    for (k, v) in obj {
        if k == "step" || k == "time" {
            continue;
        }
        match v {
            serde_json::Value::Number(n) => {
                values.insert(k.clone(), n.as_f64());
            }
            serde_json::Value::Null => {
                values.insert(k.clone(), None);
            }
            _ => {}
        }
    }
    Ok(MetricRow { step, time, values })
}

/// A tail of one `metrics.jsonl` that yields parsed rows.
#[derive(Debug)]
pub struct MetricsTail {
    tail: TailReader,
    /// Lines that did not parse since the last reset.
    pub bad_lines: u64,
    /// The most recent parse problem, `file:line: message`.
    pub last_error: Option<String>,
}

/// Rows found by one poll.
#[derive(Debug, Default)]
pub struct MetricsPoll {
    pub reset: bool,
    pub rows: Vec<MetricRow>,
    pub more: bool,
}

impl MetricsTail {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MetricsTail {
            tail: TailReader::new(path),
            bad_lines: 0,
            last_error: None,
        }
    }

    pub fn poll(&mut self, deadline: Option<Instant>) -> std::io::Result<MetricsPoll> {
        let first_line = self.tail.line_no;
        let Poll {
            reset,
            lines,
            more,
            missing: _,
        } = self.tail.poll(deadline)?;
        if reset {
            self.bad_lines = 0;
            self.last_error = None;
        }
        let base = if reset { 0 } else { first_line };
        let mut rows = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_metric_line(line) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    self.bad_lines += 1;
                    self.last_error = Some(format!(
                        "{}:{}: {e}",
                        self.tail.path().display(),
                        base + i as u64 + 1
                    ));
                }
            }
        }
        Ok(MetricsPoll { reset, rows, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_nulls_and_ignores_text() {
        let r = parse_metric_line(
            r#"{"step": 12, "time": 1764480000.5, "loss": 1.25, "kl": null, "note": "x"}"#,
        )
        .unwrap();
        assert_eq!(r.step, 12);
        assert_eq!(r.time, Some(1764480000.5));
        assert_eq!(r.values.get("loss"), Some(&Some(1.25)));
        assert_eq!(r.values.get("kl"), Some(&None));
        assert!(!r.values.contains_key("note"));
        assert!(parse_metric_line(r#"{"loss": 1}"#).is_err());
        assert!(parse_metric_line(r#"[1,2]"#).is_err());
    }

    #[test]
    fn a_bad_line_in_the_middle_is_skipped_and_counted_with_its_line_number() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"lo\n{\"step\":3,\"loss\":NaN}\n{\"step\":4,\"loss\":1.0}\n{\"step\":5",
        )
        .unwrap();
        let mut t = MetricsTail::new(&p);
        let poll = t.poll(None).unwrap();
        let steps: Vec<u64> = poll.rows.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 4]);
        assert_eq!(t.bad_lines, 2);
        assert!(
            t.last_error
                .as_deref()
                .unwrap()
                .contains("metrics.jsonl:3:")
        );
    }
}
