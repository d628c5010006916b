//! Time series for charts: a column store per run (steps, wall times, one value column per
//! metric), TensorBoard's debiased EMA smoothing, and min–max downsampling to the columns of the
//! screen (smooth first, then downsample). Non-finite values are gaps; a step that goes backwards
//! (a resumed run rewrote its tail) starts a new segment. A series holds at most
//! [`MAX_POINTS`]: past that it is halved, keeping each metric's minimum and maximum of every four
//! points, so a 1 GB log charts in bounded memory with its spikes intact.

use crate::runfs::metrics::MetricRow;
use std::collections::BTreeMap;

/// Points kept per run before the series is halved ([`RunSeries::compact`]).
pub const MAX_POINTS: usize = 1 << 15;

/// Distinct metrics a run's series keeps: a log that names more (100,000 names in a 2 MB file)
/// would otherwise cost a column each; the rest are counted and the overview says so.
pub const MAX_METRICS: usize = 1024;

/// All metrics of one run, column-wise and compact (f32: 12 bytes a point with one metric), so
/// 50 runs × 200,000 points fit in memory. `values[name][i]` belongs to `steps[i]`; wall times
/// are kept relative to the run's first one (`t0`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSeries {
    steps: Vec<f32>,
    times: Vec<f32>,
    t0: Option<f64>,
    values: BTreeMap<String, Vec<f32>>,
    /// The last finite value of each metric (exact even after compaction).
    last: BTreeMap<String, f64>,
    /// Log lines represented (stored points × what compaction folded).
    lines: u64,
    /// Bumped by every change, so caches can tell a compacted series from a grown one.
    version: u64,
    /// Metric names past [`MAX_METRICS`], not kept.
    beyond: std::collections::HashSet<String>,
}

impl RunSeries {
    /// Append one parsed line (missing metrics become NaN in their columns); halves the series
    /// when it reaches twice [`MAX_POINTS`].
    pub fn push(&mut self, row: &MetricRow) {
        self.push_row(row);
        if self.steps.len() >= 2 * MAX_POINTS {
            self.compact();
        }
    }

    fn push_row(&mut self, row: &MetricRow) {
        self.lines += 1;
        self.version += 1;
        let mut admitted = self.values.len();
        for k in row.values.keys() {
            if self.values.contains_key(k) || self.beyond.contains(k) {
                continue;
            }
            if admitted < MAX_METRICS {
                admitted += 1;
            } else {
                self.beyond.insert(k.clone());
            }
        }
        let kept = |k: &String| !self.beyond.contains(k);
        for (k, v) in row.values.iter().filter(|(k, _)| kept(k)) {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                match self.last.get_mut(k) {
                    Some(x) => *x = v,
                    None => {
                        self.last.insert(k.clone(), v);
                    }
                }
            }
        }
        let n = self.steps.len();
        self.steps.push(row.step as f32);
        let t = row.time.filter(|t| t.is_finite());
        if self.t0.is_none() {
            self.t0 = t;
        }
        self.times.push(
            t.map(|t| (t - self.t0.unwrap_or(t)) as f32)
                .unwrap_or(f32::NAN),
        );
        for (k, v) in row.values.iter().filter(|(k, _)| !self.beyond.contains(*k)) {
            let col = self
                .values
                .entry(k.clone())
                .or_insert_with(|| vec![f32::NAN; n]);
            col.push(v.map(|x| x as f32).unwrap_or(f32::NAN));
        }
        for col in self.values.values_mut() {
            if col.len() == n {
                col.push(f32::NAN);
            }
        }
    }

    /// Halve the stored points: every four become two, placed at the first and third of the
    /// four x positions, holding each metric's minimum and maximum of the four in their original
    /// order (a lone finite value is kept, the other slot is a gap). Fewer than four trailing
    /// points are kept as they are.
    pub fn compact(&mut self) {
        let n = self.steps.len();
        let full = n / 4 * 4;
        if full == 0 {
            return;
        }
        let keep = |v: &mut Vec<f32>, pick: &dyn Fn(&[f32]) -> [f32; 2]| {
            let mut out = Vec::with_capacity(full / 2 + (n - full));
            for g in v[..full].chunks_exact(4) {
                out.extend_from_slice(&pick(g));
            }
            out.extend_from_slice(&v[full..]);
            *v = out;
        };
        let positions = |g: &[f32]| [g[0], g[2]];
        keep(&mut self.steps, &positions);
        keep(&mut self.times, &positions);
        let extremes = |g: &[f32]| {
            let finite = g.iter().enumerate().filter(|(_, v)| v.is_finite());
            let lo = finite.clone().min_by(|a, b| a.1.total_cmp(b.1));
            let hi = finite.max_by(|a, b| a.1.total_cmp(b.1));
            match (lo, hi) {
                (Some((i, &a)), Some((j, &b))) if i != j => {
                    if i < j {
                        [a, b]
                    } else {
                        [b, a]
                    }
                }
                (Some((_, &a)), _) => [a, f32::NAN],
                _ => [f32::NAN, f32::NAN],
            }
        };
        for col in self.values.values_mut() {
            keep(col, &extremes);
        }
        self.version += 1;
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Log lines this series stands for (more than [`RunSeries::len`] once compacted).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Changes with every push and compaction.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// How many metric names the log has past [`MAX_METRICS`] (not charted).
    pub fn names_beyond(&self) -> usize {
        self.beyond.len()
    }

    /// Metric names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.values.keys()
    }

    /// One metric's values (NaN where absent).
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        self.values
            .get(name)
            .map(|c| c.iter().map(|&v| v as f64).collect())
    }

    /// The x values for an axis.
    pub fn xs(&self, axis: XAxis) -> Vec<f64> {
        match axis {
            XAxis::Step => self.steps.iter().map(|&v| v as f64).collect(),
            XAxis::Relative => self.times.iter().map(|&v| v as f64).collect(),
            XAxis::Wall => {
                let t0 = self.t0.unwrap_or(f64::NAN);
                self.times.iter().map(|&v| t0 + v as f64).collect()
            }
        }
    }

    /// The step of the last row (0 when empty).
    pub fn last_step(&self) -> u64 {
        self.steps.last().map_or(0, |&s| s as u64)
    }

    /// The last finite value of a metric.
    pub fn last(&self, name: &str) -> Option<f64> {
        self.last.get(name).copied()
    }
}

/// The x axis of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XAxis {
    #[default]
    Step,
    /// Seconds since the run's first line.
    Relative,
    /// Wall-clock (Unix seconds).
    Wall,
}

impl XAxis {
    pub fn next(self) -> Self {
        match self {
            XAxis::Step => XAxis::Relative,
            XAxis::Relative => XAxis::Wall,
            XAxis::Wall => XAxis::Step,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Relative => "relative (s)",
            XAxis::Wall => "wall time",
        }
    }
}

/// TensorBoard's smoothing: an exponential moving average debiased by `1 − weight^n`, restarted
/// at each gap so that NaNs stay gaps. `weight` 0 returns the input.
pub fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    if weight <= 0.0 {
        return values.to_vec();
    }
    let mut out = Vec::with_capacity(values.len());
    let (mut last, mut n) = (0.0, 0i32);
    for &v in values {
        if !v.is_finite() {
            out.push(f64::NAN);
            continue;
        }
        last = last * weight + (1.0 - weight) * v;
        n += 1;
        out.push(last / (1.0 - weight.powi(n)));
    }
    out
}

/// Several runs' values of one metric aligned by step (`(steps, values)` per run): at each
/// step any run logged, the mean, minimum and maximum over the runs with a finite value there.
/// Steps ascending.
pub fn seed_band(runs: &[(Vec<f64>, Vec<f64>)]) -> Band {
    let mut at: std::collections::BTreeMap<i64, (f64, f64, f64, usize)> = Default::default();
    for (steps, vals) in runs {
        for (&s, &v) in steps.iter().zip(vals) {
            if !(s.is_finite() && v.is_finite()) {
                continue;
            }
            let e = at
                .entry(s as i64)
                .or_insert((0.0, f64::INFINITY, f64::NEG_INFINITY, 0));
            e.0 += v;
            e.1 = e.1.min(v);
            e.2 = e.2.max(v);
            e.3 += 1;
        }
    }
    let mut out = Band::default();
    for (s, (sum, lo, hi, n)) in at {
        out.steps.push(s as f64);
        out.mean.push(sum / n as f64);
        out.min.push(lo);
        out.max.push(hi);
    }
    out
}

/// [`seed_band`]'s columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Band {
    pub steps: Vec<f64>,
    pub mean: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
}

/// Split point indices where x goes backwards (a resumed run): each segment is `[start, end)`.
pub fn segments(xs: &[f64]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..xs.len() {
        if xs[i] < xs[i - 1] {
            out.push((start, i));
            start = i;
        }
    }
    if start < xs.len() {
        out.push((start, xs.len()));
    }
    out
}

/// Reduce `(x, y)` points to at most two per column (the min and the max of each of `columns`
/// equal x-buckets), in x order; gaps (NaN y) are kept as one NaN point per bucket that had one,
/// so a line is not drawn across them.
pub fn downsample(xs: &[f64], ys: &[f64], columns: usize) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, f64)> = xs.iter().copied().zip(ys.iter().copied()).collect();
    if columns == 0 || pts.len() <= 2 * columns {
        return pts;
    }
    let (lo, hi) = xs
        .iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return pts;
    }
    let width = (hi - lo) / columns as f64;
    let mut out = Vec::with_capacity(2 * columns + 2);
    let mut i = 0;
    while i < pts.len() {
        let b = (((pts[i].0 - lo) / width) as usize).min(columns - 1);
        let mut min: Option<(f64, f64)> = None;
        let mut max: Option<(f64, f64)> = None;
        let mut gap = None;
        while i < pts.len() && (((pts[i].0 - lo) / width) as usize).min(columns - 1) == b {
            let p = pts[i];
            if p.1.is_finite() {
                if min.is_none_or(|m| p.1 < m.1) {
                    min = Some(p);
                }
                if max.is_none_or(|m| p.1 > m.1) {
                    max = Some(p);
                }
            } else if gap.is_none() {
                gap = Some(p);
            }
            i += 1;
        }
        let mut bucket: Vec<(f64, f64)> = [min, max, gap].into_iter().flatten().collect();
        bucket.sort_by(|a, b| a.0.total_cmp(&b.0));
        bucket.dedup();
        out.extend(bucket);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_with_more_metric_names_than_the_cap_keeps_the_first_and_counts_the_rest() {
        let mut s = RunSeries::default();
        let row = |step: u64, names: std::ops::Range<usize>| MetricRow {
            step,
            time: None,
            values: names.map(|i| (format!("m{i:06}"), Some(1.0))).collect(),
        };
        s.push(&row(1, 0..5_000));
        s.push(&row(2, 0..3));
        s.push(&row(3, 5_000..5_010));
        assert_eq!(s.names().count(), MAX_METRICS);
        assert_eq!(s.names_beyond(), 5_010 - MAX_METRICS);
        assert!(
            s.names().all(|n| n.as_str() < "m001024"),
            "the first names are kept"
        );
    }

    #[test]
    fn seed_bands_align_by_step_and_skip_gaps() {
        let b = seed_band(&[
            (vec![1.0, 2.0, 3.0], vec![1.0, 2.0, f64::NAN]),
            (vec![1.0, 2.0, 3.0], vec![3.0, 4.0, 5.0]),
            (vec![2.0], vec![6.0]),
        ]);
        assert_eq!(b.steps, vec![1.0, 2.0, 3.0]);
        assert_eq!(b.mean, vec![2.0, 4.0, 5.0]);
        assert_eq!(b.min, vec![1.0, 2.0, 5.0]);
        assert_eq!(b.max, vec![3.0, 6.0, 5.0]);
    }

    #[test]
    fn debiased_ema_matches_tensorboard() {
        // TensorBoard: last = last*w + (1-w)*v; debiased = last / (1 - w^n).
        let s = smooth(&[1.0, 2.0, 3.0], 0.5);
        assert!((s[0] - 1.0).abs() < 1e-12);
        // n=2: last = 0.25 + 1.0 = 1.25; / 0.75 = 1.6667
        assert!((s[1] - 5.0 / 3.0).abs() < 1e-12);
        // n=3: last = 0.625 + 1.5 = 2.125; / 0.875 = 2.428571…
        assert!((s[2] - 2.125 / 0.875).abs() < 1e-12);
        assert_eq!(smooth(&[1.0, 5.0], 0.0), vec![1.0, 5.0]);
        let g = smooth(&[1.0, f64::NAN, 3.0], 0.9);
        assert!(g[1].is_nan() && g[2].is_finite());
    }

    #[test]
    fn segments_split_where_steps_go_backwards() {
        assert_eq!(
            segments(&[1.0, 2.0, 3.0, 2.0, 3.0, 4.0]),
            vec![(0, 3), (3, 6)]
        );
        assert_eq!(segments(&[]), Vec::<(usize, usize)>::new());
    }

    #[test]
    fn downsampling_keeps_extremes_per_column() {
        let xs: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let mut ys: Vec<f64> = xs.iter().map(|x| (x / 50.0).sin()).collect();
        ys[500] = 10.0; // a spike must survive
        ys[700] = f64::NAN; // a gap must survive
        let d = downsample(&xs, &ys, 50);
        assert!(d.len() <= 3 * 50);
        assert!(d.iter().any(|p| p.1 == 10.0));
        assert!(d.iter().any(|p| p.1.is_nan()));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0));
        // Few points pass through untouched.
        assert_eq!(
            downsample(&[1.0, 2.0], &[3.0, 4.0], 50),
            vec![(1.0, 3.0), (2.0, 4.0)]
        );
    }

    #[test]
    fn push_aligns_columns() {
        let mut s = RunSeries::default();
        let row = |step, kv: &[(&str, Option<f64>)]| MetricRow {
            step,
            time: None,
            values: kv.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        s.push(&row(1, &[("loss", Some(2.0))]));
        s.push(&row(2, &[("reward", Some(0.5))]));
        s.push(&row(3, &[("loss", None)]));
        let loss = s.column("loss").unwrap();
        assert_eq!(loss.len(), 3);
        assert!(loss[1].is_nan() && loss[2].is_nan());
        assert!(s.column("reward").unwrap()[0].is_nan());
        assert_eq!(s.last("loss"), Some(2.0));
    }

    #[test]
    fn compaction_keeps_extremes_order_and_the_exact_last_value() {
        let mut s = RunSeries::default();
        let n = 2 * MAX_POINTS + 3;
        for i in 0..n {
            let mut values = BTreeMap::new();
            let v = if i == MAX_POINTS / 2 + 1 {
                100.0
            } else if i == MAX_POINTS + 2 {
                -100.0
            } else {
                (i % 7) as f64
            };
            values.insert("loss".to_string(), Some(v));
            if i % 10 == 0 {
                values.insert("eval".to_string(), Some(i as f64));
            }
            s.push(&MetricRow {
                step: i as u64,
                time: Some(i as f64),
                values,
            });
        }
        // Compacted once, at 2 × MAX_POINTS: half of those, plus the 3 pushed after.
        assert_eq!(s.len(), MAX_POINTS + 3);
        assert_eq!(s.lines(), n as u64);
        let loss = s.column("loss").unwrap();
        assert!(
            loss.contains(&100.0) && loss.contains(&-100.0),
            "spikes survive"
        );
        let xs = s.xs(XAxis::Step);
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "x stays increasing");
        let eval = s.column("eval").unwrap();
        assert!(eval.iter().filter(|v| v.is_finite()).count() >= n / 10 - 1);
        assert_eq!(s.last("loss"), Some(((n - 1) % 7) as f64));
        assert_eq!(s.last("eval"), Some(((n - 1) / 10 * 10) as f64));
        // Within a group the min and max keep their order: 0..3 of `i % 7` → min 0 first.
        assert_eq!(&loss[..2], &[0.0, 3.0]);
    }
}
