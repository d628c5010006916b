//! Parsing `metrics.jsonl` lines into rows; a tail that turns appended lines into rows; a whole-file
//! (or from-an-offset) reader that streams, and the same as columns. All of them count (never
//! fail on) lines that are not valid records: torn writes, garbage, non-UTF-8 bytes, absurd steps.

use super::tail::{Poll, TailReader};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The largest step accepted (2^53: every step is exact as an f64, and an i64 column holds it).
pub const MAX_STEP: u64 = 1 << 53;

/// One line of `metrics.jsonl`: a step, an optional wall time, and named values (`None` where
/// the writer had a non-finite number: a gap in the chart, not a zero).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub step: u64,
    pub time: Option<f64>,
    pub values: BTreeMap<String, Option<f64>>,
}

/// Parse one line. Non-numeric fields (strings, objects) are ignored; `step` is required and
/// at most [`MAX_STEP`]. Nesting is bounded by serde_json's recursion limit (128), so a line of
/// 100,000 `[` is an error, not a stack overflow.
pub fn parse_metric_line(line: &str) -> Result<MetricRow, String> {
    parse_line(line)?.ok_or_else(|| "`step` is null".to_string())
}

/// [`parse_metric_line`], where a row whose `step` is `null` is `Ok(None)`: prime-rl's file
/// monitor writes its time-keyed gauges that way, and readers skip them without calling them
/// bad.
pub fn parse_line(line: &str) -> Result<Option<MetricRow>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    if obj.get("step").is_some_and(serde_json::Value::is_null) {
        return Ok(None);
    }
    row_of(obj).map(Some)
}

/// A row from a JSON object's `step`, `time` and numeric fields (nested objects are skipped).
pub fn row_of(obj: &serde_json::Map<String, serde_json::Value>) -> Result<MetricRow, String> {
    let step = obj
        .get("step")
        .and_then(|s| {
            s.as_u64()
                .or_else(|| s.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        })
        .ok_or("missing or negative `step`")?;
    if step > MAX_STEP {
        return Err(format!("`step` {step} is out of range (at most 2^53)"));
    }
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

/// Lines skipped by a reader, and the first problem (`file:line: message`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BadLines {
    pub count: u64,
    pub first: Option<String>,
}

impl BadLines {
    fn note(&mut self, path: &Path, line_no: u64, e: &str) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("{}:{line_no}: {e}", path.display()));
        }
    }

    /// `None`, or one sentence for the user: how many lines were skipped and the first reason.
    pub fn summary(&self) -> Option<String> {
        (self.count > 0).then(|| {
            format!(
                "skipped {} line(s) that are not metric records (first: {})",
                self.count,
                self.first.as_deref().unwrap_or("?")
            )
        })
    }
}

/// Parse one raw line (any bytes: invalid UTF-8 is replaced, so it fails as JSON or keeps its
/// text fields lossy, never rejecting the file). Blank lines and rows without a step (`"step": null`) are `None`.
fn parse_raw(raw: &[u8]) -> Option<Result<MetricRow, String>> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    parse_line(&String::from_utf8_lossy(raw)).transpose()
}

/// Stream every row of a metrics log to `each`, in file order, skipping bad lines; memory is one
/// line at a time.
pub fn read_rows(path: &Path, mut each: impl FnMut(MetricRow)) -> std::io::Result<BadLines> {
    read_rows_range(path, 0, u64::MAX, |r| {
        each(r);
        true
    })
}

/// [`read_rows`] over the bytes `[start, end)`: the line cut by `start` (when `start` > 0 and
/// the byte before it is not a newline) is skipped; the lines end at `end` (a line cut by `end` is
/// read as far as `end` and fails to parse unless complete there). Line numbers in messages
/// count from `start`. `each` returns false to stop early.
pub fn read_rows_range(
    path: &Path,
    start: u64,
    end: u64,
    mut each: impl FnMut(MetricRow) -> bool,
) -> std::io::Result<BadLines> {
    let named = |e| super::atomic::named(path, e);
    let mut f = crate::untrusted::open_regular(path).map_err(named)?;
    let mut line = Vec::new();
    let mut cut = false;
    if start > 0 {
        f.seek(SeekFrom::Start(start - 1)).map_err(named)?;
        let mut b = [0u8; 1];
        cut = f.read(&mut b).map_err(named)? == 1 && b[0] != b'\n';
    }
    let mut r = std::io::BufReader::with_capacity(1 << 20, f.take(end.saturating_sub(start)));
    if cut {
        r.read_until(b'\n', &mut line).map_err(named)?;
    }
    let mut bad = BadLines::default();
    let mut no = 0u64;
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| super::atomic::named(path, e))?;
        if n == 0 {
            return Ok(bad);
        }
        no += 1;
        let row = match parse_raw(&line) {
            Some(Ok(row)) => row,
            Some(Err(e)) => {
                bad.note(path, no, &e);
                continue;
            }
            None => continue,
        };
        if !each(row) {
            return Ok(bad);
        }
    }
}

/// The offset just after the last newline of the file's first `len` bytes (0 when none): where
/// the complete lines end.
pub fn complete_lines_end(path: &Path, len: u64) -> std::io::Result<u64> {
    let mut f = crate::untrusted::open_regular(path).map_err(|e| super::atomic::named(path, e))?;
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let b = &mut block[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(b)?;
        if let Some(i) = b.iter().rposition(|&c| c == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Rows as columns: steps, wall times and one column per metric, each as long as `steps`
/// (`None` where a line lacked the metric or had a non-finite value).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Columns {
    pub steps: Vec<u64>,
    pub times: Vec<Option<f64>>,
    pub values: BTreeMap<String, Vec<Option<f64>>>,
}

impl Columns {
    /// Append one row, padding the columns it lacks and starting the ones it adds.
    pub fn push(&mut self, row: MetricRow) {
        let n = self.steps.len();
        self.steps.push(row.step);
        self.times.push(row.time);
        for (k, v) in row.values {
            self.values
                .entry(k)
                .or_insert_with(|| vec![None; n])
                .push(v);
        }
        for col in self.values.values_mut() {
            if col.len() == n {
                col.push(None);
            }
        }
    }
}

/// The rows of `path` from byte `start` (a cut first line skipped) to the end, as columns.
pub fn read_columns(path: &Path, start: u64) -> std::io::Result<(Columns, BadLines)> {
    let mut cols = Columns::default();
    let bad = read_rows_range(path, start, u64::MAX, |r| {
        cols.push(r);
        true
    })?;
    Ok((cols, bad))
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

    /// The file followed.
    pub fn path(&self) -> &Path {
        self.tail.path()
    }

    /// Skip the file up to `offset` (a line end): see [`TailReader::start_at`].
    pub fn start_at(&mut self, offset: u64) {
        self.tail.start_at(offset);
        self.bad_lines = 0;
        self.last_error = None;
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
            match parse_line(line) {
                Ok(Some(r)) => rows.push(r),
                Ok(None) => {}
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
        // Steps beyond 2^53 (a 2^63 step panicked polars) and deep nesting are line errors.
        assert!(parse_metric_line(r#"{"step": 9223372036854775808}"#).is_err());
        assert!(parse_metric_line(r#"{"step": 1e300}"#).is_err());
        let deep = format!("{{\"step\":1,\"x\":{}}}", "[".repeat(100_000));
        assert!(parse_metric_line(&deep).is_err());
    }

    #[test]
    fn read_rows_streams_past_non_utf8_and_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let mut bytes = b"{\"step\":1,\"loss\":2.0}\n".to_vec();
        bytes.extend_from_slice(b"{\"step\":2,\"note\":\"\xff\xfe\",\"loss\":1.5}\n");
        bytes.extend_from_slice(b"\xff\xff garbage\n\n");
        bytes.extend_from_slice(b"{\"step\":3,\"loss\":1.0}");
        std::fs::write(&p, bytes).unwrap();
        let mut steps = Vec::new();
        let bad = read_rows(&p, |r| steps.push(r.step)).unwrap();
        assert_eq!(steps, vec![1, 2, 3]);
        assert_eq!(bad.count, 1);
        assert!(bad.first.unwrap().contains("metrics.jsonl:3:"));
    }

    #[test]
    fn a_range_skips_the_line_cut_by_its_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let text = "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n";
        std::fs::write(&p, text).unwrap();
        let steps = |a, b| {
            let mut v = Vec::new();
            read_rows_range(&p, a, b, |r| {
                v.push(r.step);
                true
            })
            .unwrap();
            v
        };
        assert_eq!(steps(0, u64::MAX), vec![1, 2, 3]);
        assert_eq!(steps(3, u64::MAX), vec![2, 3], "cut line skipped");
        assert_eq!(steps(11, u64::MAX), vec![2, 3], "starts on a line");
        assert_eq!(steps(0, 22), vec![1, 2], "ends at a line end");
    }

    #[test]
    fn columns_pad_missing_metrics_and_start_new_ones() {
        let mut c = Columns::default();
        for line in [
            r#"{"step":1,"loss":2.0}"#,
            r#"{"step":2,"reward":0.5,"time":7.0}"#,
            r#"{"step":3,"loss":null}"#,
        ] {
            c.push(parse_metric_line(line).unwrap());
        }
        assert_eq!(c.steps, vec![1, 2, 3]);
        assert_eq!(c.times, vec![None, Some(7.0), None]);
        assert_eq!(c.values["loss"], vec![Some(2.0), None, None]);
        assert_eq!(c.values["reward"], vec![None, Some(0.5), None]);
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
