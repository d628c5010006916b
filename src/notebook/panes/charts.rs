//! Charts grid: one chart per metric of the selected run plus overlaid (marked) runs, in stable
//! colours; debiased EMA smoothing (raw drawn dim behind), log-y, x axis by step / relative /
//! wall time, min–max downsampling to the chart's width, gaps at NaN and a new segment where steps
//! go backwards. Enter zooms the focused chart with a cursor that reads out values. [`Charts`] is
//! the grid's state.

use super::{Ctx, block, run_color, step_index};
use crate::notebook::keymap::Action;
use crate::notebook::series::{XAxis, downsample, seed_band, segments, smooth};
use crate::notebook::workspace::RunView;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Span;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::rc::Rc;

/// One polyline to draw.
pub struct Line {
    pub color: Color,
    pub name: Option<String>,
    pub points: Vec<(f64, f64)>,
    pub dim: bool,
}

fn xs_of(run: &RunView, axis: XAxis) -> Vec<f64> {
    run.series.xs(axis)
}

type CacheKey = (std::path::PathBuf, String, u64, bool, XAxis, usize);

/// How a metric's polylines are drawn: EMA smoothing, log-y, x axis, and the columns available
/// (downsampling target).
#[derive(Debug, Clone, Copy)]
pub struct LineView {
    pub smoothing: f64,
    pub log_y: bool,
    pub axis: XAxis,
    pub columns: usize,
}

/// Memo of each run's polylines for a metric and view settings, valid while the run's series
/// keeps its version: a static chart of 200,000 points is smoothed and downsampled once, not
/// every frame. Interior mutability keeps `draw` a function of `&Charts`.
#[derive(Default)]
pub struct ChartCache(RefCell<HashMap<CacheKey, CacheEntry>>);

/// The series version the polylines were made from, and the polylines.
type CacheEntry = (u64, Rc<Vec<Line>>);

impl ChartCache {
    pub fn get(&self, run: &RunView, metric: &str, view: LineView) -> Rc<Vec<Line>> {
        let key = (
            run.dir.clone(),
            metric.to_string(),
            view.smoothing.to_bits(),
            view.log_y,
            view.axis,
            view.columns,
        );
        let mut map = self.0.borrow_mut();
        if let Some((version, lines)) = map.get(&key)
            && *version == run.series.version()
        {
            return lines.clone();
        }
        if map.len() > 4096 {
            map.clear();
        }
        let lines = Rc::new(run_lines(run, metric, view));
        map.insert(key, (run.series.version(), lines.clone()));
        lines
    }
}

/// The charts grid's state: view settings, the focused chart, zoom and cursor, the metric
/// filter, the polyline memo and the grid's columns as last drawn.
pub struct Charts {
    /// Debiased EMA weight (0 = raw).
    pub smoothing: f64,
    pub log_y: bool,
    pub x_axis: XAxis,
    /// Index of the focused chart among [`Charts::metrics`].
    pub index: usize,
    /// The focused chart fills the area, with a cursor at `cursor` (a fraction of the x range).
    pub zoom: bool,
    pub cursor: f64,
    /// Case-insensitive text a metric name must contain.
    pub metric_filter: String,
    /// The runs are one stage's seeds: draw their mean with the min and max dim (by step).
    pub group_seeds: bool,
    cache: ChartCache,
    /// Columns of the grid as last drawn (↑/↓ move by a row of them).
    columns: Cell<usize>,
}

impl Default for Charts {
    fn default() -> Charts {
        Charts {
            smoothing: 0.6,
            log_y: false,
            x_axis: XAxis::Step,
            index: 0,
            zoom: false,
            cursor: 1.0,
            metric_filter: String::new(),
            group_seeds: false,
            cache: ChartCache::default(),
            columns: Cell::new(2),
        }
    }
}

impl Charts {
    /// Metric names of `runs`, after the metric filter, in a stable order (headline metrics
    /// first).
    pub fn metrics(&self, runs: &[&RunView]) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for r in runs {
            names.extend(r.series.names().cloned());
        }
        let f = self.metric_filter.to_lowercase();
        let rank = |n: &str| match n {
            "loss" => 0,
            "reward" => 1,
            "rewards/accuracy/mean" => 2,
            "eval/pass@1" => 3,
            "completions/mean_length" => 4,
            "kl" => 5,
            _ => 10,
        };
        let mut v: Vec<String> = names
            .into_iter()
            .filter(|n| f.is_empty() || n.to_lowercase().contains(&f))
            .collect();
        v.sort_by_key(|n| (rank(n), n.clone()));
        v
    }

    /// Columns of the grid as last drawn.
    pub fn columns(&self) -> usize {
        self.columns.get()
    }

    /// Filter metrics by `text` (typed live), from the first chart.
    pub fn set_filter(&mut self, text: &str) {
        self.metric_filter = text.to_string();
        self.index = 0;
    }

    /// Carry out `action` on the charts of `runs` if it is the grid's; whether it was.
    pub fn on_action(&mut self, action: Action, runs: &[&RunView]) -> bool {
        let n = || self.metrics(runs).len();
        match action {
            Action::Up | Action::Down => {
                let rows = if action == Action::Up { -1 } else { 1 };
                let delta = rows * self.columns.get().max(1) as i64;
                self.index = step_index(self.index, delta, n());
            }
            Action::Left | Action::Right => {
                let delta = if action == Action::Left { -1 } else { 1 };
                if self.zoom {
                    self.cursor = (self.cursor + 0.02 * delta as f64).clamp(0.0, 1.0);
                } else {
                    self.index = step_index(self.index, delta, n());
                }
            }
            Action::Select => self.zoom = !self.zoom,
            Action::Back => self.zoom = false,
            Action::SmoothMore => {
                self.smoothing = ((self.smoothing * 10.0).round() / 10.0 + 0.1).min(0.9)
            }
            Action::SmoothLess => {
                self.smoothing = ((self.smoothing * 10.0).round() / 10.0 - 0.1).max(0.0)
            }
            Action::LogY => self.log_y = !self.log_y,
            Action::XAxis => self.x_axis = self.x_axis.next(),
            Action::GroupSeeds => self.group_seeds = !self.group_seeds,
            _ => return false,
        }
        true
    }

    /// The grid (or the zoomed chart) of `runs`' metrics.
    pub fn draw(&self, f: &mut Frame<'_>, area: Rect, runs: &[&RunView], ctx: Ctx<'_>) {
        draw(self, f, area, runs, ctx)
    }
}

/// Polylines of one run (smoothed, then downsampled; raw drawn dim behind when smoothing).
pub fn run_lines(run: &RunView, metric: &str, view: LineView) -> Vec<Line> {
    let LineView {
        smoothing,
        log_y,
        axis,
        columns,
    } = view;
    let mut out = Vec::new();
    {
        let Some(ys) = run.series.column(metric) else {
            return out;
        };
        let xs = xs_of(run, axis);
        let ys: Vec<f64> = if log_y {
            ys.iter()
                .map(|&v| if v > 0.0 { v.log10() } else { f64::NAN })
                .collect()
        } else {
            ys
        };
        let color = run_color(&run.id);
        let mut first = true;
        for (a, b) in segments(&xs) {
            let sm = smooth(&ys[a..b], smoothing);
            let mut emit = |vals: &[f64], dim: bool, name: Option<String>| {
                let pts = downsample(&xs[a..b], vals, columns * 2);
                // split at gaps so no line is drawn across a NaN
                let mut cur: Vec<(f64, f64)> = Vec::new();
                let mut named = name;
                for p in pts {
                    if p.0.is_finite() && p.1.is_finite() {
                        cur.push(p);
                    } else if !cur.is_empty() {
                        out.push(Line {
                            color,
                            name: named.take(),
                            points: std::mem::take(&mut cur),
                            dim,
                        });
                    }
                }
                if !cur.is_empty() {
                    out.push(Line {
                        color,
                        name: named.take(),
                        points: cur,
                        dim,
                    });
                }
            };
            if smoothing > 0.0 {
                emit(&ys[a..b], true, None);
            }
            let name = first.then(|| short_name(run));
            first = false;
            emit(&sm, false, name);
        }
    }
    out
}

/// One stage's seeds as three lines by step: the mean of each run's smoothed values, and their
/// min and max drawn dim (the band).
pub fn seed_lines(runs: &[&RunView], metric: &str, view: LineView) -> Vec<Line> {
    let cols: Vec<(Vec<f64>, Vec<f64>)> = runs
        .iter()
        .filter_map(|r| {
            let ys = r.series.column(metric)?;
            let ys: Vec<f64> = if view.log_y {
                ys.iter()
                    .map(|&v| if v > 0.0 { v.log10() } else { f64::NAN })
                    .collect()
            } else {
                ys
            };
            Some((r.series.xs(XAxis::Step), smooth(&ys, view.smoothing)))
        })
        .collect();
    let band = seed_band(&cols);
    let color = runs.first().map_or(Color::Cyan, |r| run_color(&r.id));
    let line = |ys: &[f64], dim: bool, name: Option<String>| Line {
        color,
        name,
        points: downsample(&band.steps, ys, view.columns * 2),
        dim,
    };
    vec![
        line(&band.min, true, None),
        line(&band.max, true, None),
        line(
            &band.mean,
            false,
            Some(format!("mean of {} seeds", runs.len())),
        ),
    ]
}

fn short_name(run: &RunView) -> String {
    // `20261130-064244-pretrain` → `0642 pretrain`
    let parts: Vec<&str> = run.id.splitn(3, '-').collect();
    match parts.as_slice() {
        [_, time, stage] if time.len() >= 4 => format!("{} {stage}", &time[..4]),
        _ => run.id.clone(),
    }
}

fn bounds<'a>(lines: impl Iterator<Item = &'a Line>) -> Option<([f64; 2], [f64; 2])> {
    let pts = lines.flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return None;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    // A flat series (or one that differs only by f32 rounding, e.g. a smoothed constant) gets
    // a band around its value instead of a range that blows its rounding up into wiggles.
    if y1 - y0 <= 1e-6 * y0.abs().max(y1.abs()) {
        let c = (y0 + y1) / 2.0;
        let pad = c.abs().max(1e-3) * 0.05;
        (y0, y1) = (c - pad, c + pad);
    }
    Some(([x0, x1], [y0, y1]))
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_x(v: f64, axis: XAxis) -> String {
    match axis {
        XAxis::Step => format!("{v:.0}"),
        XAxis::Relative => super::duration(v),
        XAxis::Wall => {
            let s = v.max(0.0) as u64 % 86_400;
            format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
        }
    }
}

/// One chart: what it shows and how.
struct One<'a> {
    metric: &'a str,
    focused: bool,
    zoomed: bool,
}

fn draw_one(f: &mut Frame<'_>, area: Rect, c: &Charts, runs: &[&RunView], one: One<'_>) {
    let One {
        metric,
        focused,
        zoomed,
    } = one;
    let cols = area.width.saturating_sub(10) as usize;
    let grouped = c.group_seeds && runs.len() > 1;
    // Seeds are aligned by step, whatever the x axis setting.
    let axis = if grouped { XAxis::Step } else { c.x_axis };
    let view = LineView {
        smoothing: c.smoothing,
        log_y: c.log_y,
        axis,
        columns: cols.max(1),
    };
    let per_run: Vec<Rc<Vec<Line>>> = if grouped {
        vec![Rc::new(seed_lines(runs, metric, view))]
    } else {
        runs.iter().map(|r| c.cache.get(r, metric, view)).collect()
    };
    let mut extra: Vec<Line> = Vec::new();
    let mut title = metric.to_string();
    if c.log_y {
        title.push_str(" (log)");
    }
    let Some((xb, yb)) = bounds(per_run.iter().flat_map(|v| v.iter())) else {
        f.render_widget(
            Paragraph::new("no finite values").block(block(&title, focused)),
            area,
        );
        return;
    };
    if zoomed {
        let xc = xb[0] + c.cursor * (xb[1] - xb[0]);
        let mut readout = Vec::new();
        for run in runs {
            let xs = xs_of(run, axis);
            if let Some(ys) = run.series.column(metric) {
                let sm = smooth(&ys, c.smoothing);
                if let Some(i) = (0..xs.len())
                    .rev()
                    .find(|&i| xs[i] <= xc && sm[i].is_finite())
                {
                    readout.push(format!("{}={}", short_name(run), fmt_num(sm[i])));
                }
            }
        }
        title = format!(
            "{title} @ {} {}: {}",
            axis.label(),
            fmt_x(xc, axis),
            readout.join("  ")
        );
        extra.push(Line {
            color: Color::White,
            name: None,
            points: vec![(xc, yb[0]), (xc, yb[1])],
            dim: false,
        });
    }
    let datasets: Vec<Dataset> = per_run
        .iter()
        .flat_map(|v| v.iter())
        .chain(extra.iter())
        .map(|l| {
            let mut d = Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(if l.dim {
                    Style::default().fg(Color::DarkGray)
                } else {
                    Style::default().fg(l.color)
                })
                .data(&l.points);
            if let Some(n) = &l.name {
                d = d.name(n.clone());
            }
            d
        })
        .collect();
    let ylab = |v: f64| {
        if c.log_y {
            fmt_num(10f64.powf(v))
        } else {
            fmt_num(v)
        }
    };
    let chart = Chart::new(datasets)
        .block(block(&title, focused))
        .x_axis(
            Axis::default()
                .bounds(xb)
                .style(Style::default().fg(Color::DarkGray))
                .labels([Span::raw(fmt_x(xb[0], axis)), Span::raw(fmt_x(xb[1], axis))]),
        )
        .y_axis(
            Axis::default()
                .bounds(yb)
                .style(Style::default().fg(Color::DarkGray))
                .labels([
                    Span::raw(ylab(yb[0])),
                    Span::raw(ylab((yb[0] + yb[1]) / 2.0)),
                    Span::raw(ylab(yb[1])),
                ]),
        )
        .legend_position(if runs.len() > 1 {
            Some(ratatui::widgets::LegendPosition::TopRight)
        } else {
            None
        });
    f.render_widget(chart, area);
}

fn draw(c: &Charts, f: &mut Frame<'_>, area: Rect, runs: &[&RunView], ctx: Ctx<'_>) {
    let metrics = c.metrics(runs);
    let focused = ctx.focused;
    let mut parts = vec![
        format!("smoothing {:.1}", c.smoothing),
        format!("x: {}", c.x_axis.label()),
    ];
    if c.log_y {
        parts.push("log-y".into());
    }
    if c.group_seeds && runs.len() > 1 {
        parts.push(format!("{} seeds: mean, min–max dim, by step", runs.len()));
    }
    let filter = match ctx.typing {
        Some(text) => Some(format!("metrics /{text}▏")),
        None => (!c.metric_filter.is_empty()).then(|| format!("metrics /{}", c.metric_filter)),
    };
    parts.extend(filter);
    let header = format!("charts · {}", parts.join(" · "));
    if metrics.is_empty() {
        let msg = match runs.first() {
            None => "select a run (↑/↓ in the runs pane)".to_string(),
            Some(r) if r.series.is_empty() => format!("{}: no metrics yet", r.id),
            Some(_) => "no metric matches the filter".to_string(),
        };
        f.render_widget(Paragraph::new(msg).block(block(&header, focused)), area);
        return;
    }
    let idx = c.index.min(metrics.len() - 1);
    if c.zoom {
        let one = One {
            metric: &metrics[idx],
            focused,
            zoomed: true,
        };
        draw_one(f, area, c, runs, one);
        return;
    }
    let ncols = if area.width >= 150 {
        3
    } else if area.width >= 70 {
        2
    } else {
        1
    };
    c.columns.set(ncols);
    let nrows = ((area.height / 11).max(1)) as usize;
    let per_page = ncols * nrows;
    let start = idx / per_page * per_page;
    let [head, grid] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    f.render_widget(
        Paragraph::new(format!(
            " {header} · {}–{} of {}",
            start + 1,
            (start + per_page).min(metrics.len()),
            metrics.len()
        ))
        .style(Style::default().fg(Color::DarkGray)),
        head,
    );
    let row_areas = Layout::vertical(vec![Constraint::Ratio(1, nrows as u32); nrows]).split(grid);
    for (ri, ra) in row_areas.iter().enumerate() {
        let cells = Layout::horizontal(vec![Constraint::Ratio(1, ncols as u32); ncols]).split(*ra);
        for (ci, ca) in cells.iter().enumerate() {
            let i = start + ri * ncols + ci;
            if let Some(m) = metrics.get(i) {
                let one = One {
                    metric: m,
                    focused: focused && i == idx,
                    zoomed: false,
                };
                draw_one(f, *ca, c, runs, one);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ys: &[f64]) -> Line {
        Line {
            color: Color::Reset,
            name: None,
            points: ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect(),
            dim: false,
        }
    }

    #[test]
    fn a_flat_series_gets_a_band_and_rounding_noise_does_not_become_wiggles() {
        let (_, y) = bounds([line(&[0.01, 0.01, 0.01])].iter()).unwrap();
        assert!(
            (y[0] - 0.0095).abs() < 1e-12 && (y[1] - 0.0105).abs() < 1e-12,
            "{y:?}"
        );
        // A smoothed constant: f32 rounding in the last digit.
        let noisy = [0.01, 0.01 + 1e-10, 0.01 - 2e-10];
        let (_, y) = bounds([line(&noisy)].iter()).unwrap();
        assert!(y[1] - y[0] > 0.9e-3, "{y:?}");
        // A real spread keeps its own range.
        let (_, y) = bounds([line(&[1.0, 2.0])].iter()).unwrap();
        assert_eq!(y, [1.0, 2.0]);
    }
}
