//! Small line charts as one standalone SVG document (`stageloop report --format svg`, and one
//! per metric for `stageloop export --format svg`): axes with ticks, one polyline per series
//! with an optional min–max band, dashed vertical marks and a legend; a linear or logarithmic x
//! axis. Names are XML-escaped (they come from run folders).

use std::fmt::Write;

/// One line of a chart; `band` holds `(x, low, high)` for a shaded min–max band.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

/// One chart panel.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (base 10 ticks, or base 2 when the range is under 2 decades).
    pub log_x: bool,
    pub series: Vec<Series>,
    /// Dashed vertical lines with a label (e.g. where two curves cross).
    pub marks: Vec<(f64, String)>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// `s` safe as XML text or attribute value (controls dropped).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if crate::untrusted::unsafe_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The charts side by side, each `w × h` pixels.
pub fn render(charts: &[Chart], w: f64, h: f64) -> String {
    let total = w * charts.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{h}" viewBox="0 0 {total} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, c) in charts.iter().enumerate() {
        chart(&mut s, c, i as f64 * w, w, h);
    }
    s.push_str("</svg>\n");
    s
}

/// Where a chart's plot area is on the page and which data ranges it shows.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    /// The x range in axis units (log10 of x on a log axis), and the y range.
    x: (f64, f64),
    y: (f64, f64),
    log_x: bool,
}

impl Frame {
    /// The plot area of a `w × h` panel starting at `x0`, over every point, band and mark of
    /// `c` (a degenerate range widened; rates on 0..1 when they fit).
    fn fit(c: &Chart, x0: f64, w: f64, h: f64) -> Frame {
        let xs = c
            .series
            .iter()
            .flat_map(|se| {
                se.points
                    .iter()
                    .map(|p| p.0)
                    .chain(se.band.iter().map(|b| b.0))
            })
            .chain(c.marks.iter().map(|m| m.0))
            .filter(|x| x.is_finite() && (!c.log_x || *x > 0.0));
        let ys = c.series.iter().flat_map(|se| {
            se.points
                .iter()
                .map(|p| p.1)
                .chain(se.band.iter().flat_map(|b| [b.1, b.2]))
        });
        let (mut xmin, mut xmax) = minmax(xs.map(|x| if c.log_x { x.log10() } else { x }));
        let (mut ymin, mut ymax) = minmax(ys.filter(|y| y.is_finite()));
        if !xmin.is_finite() {
            (xmin, xmax) = (0.0, 1.0);
        }
        if !ymin.is_finite() {
            (ymin, ymax) = (0.0, 1.0);
        }
        if xmax - xmin < 1e-12 {
            (xmin, xmax) = (xmin - 0.5, xmax + 0.5);
        }
        if ymin >= 0.0 && ymax <= 1.0 {
            (ymin, ymax) = (ymin.min(0.0), 1.0);
        } else if ymax - ymin < 1e-12 {
            (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
        }
        Frame {
            left: x0 + 60.0,
            right: x0 + w - 20.0,
            top: 40.0,
            bottom: h - 50.0,
            x: (xmin, xmax),
            y: (ymin, ymax),
            log_x: c.log_x,
        }
    }

    /// Whether `x` can be drawn on this axis.
    fn drawable(&self, x: f64) -> bool {
        x.is_finite() && (!self.log_x || x > 0.0)
    }

    fn px(&self, x: f64) -> f64 {
        let t = if self.log_x { x.log10() } else { x };
        self.left + (t - self.x.0) / (self.x.1 - self.x.0) * (self.right - self.left)
    }

    fn py(&self, y: f64) -> f64 {
        self.bottom - (y - self.y.0) / (self.y.1 - self.y.0) * (self.bottom - self.top)
    }
}

fn chart(s: &mut String, c: &Chart, x0: f64, w: f64, h: f64) {
    let f = Frame::fit(c, x0, w, h);
    axes(s, c, &f, x0, h);
    for (i, se) in c.series.iter().enumerate() {
        series(s, &f, i, se);
    }
    for (x, label) in c.marks.iter().filter(|m| f.drawable(m.0)) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#555" stroke-dasharray="4 3"/><text x="{3:.1}" y="{4}" text-anchor="end" fill="#555">{5}</text>"##,
            f.px(*x),
            f.top,
            f.bottom,
            f.px(*x) - 4.0,
            f.bottom - 6.0,
            escape(label)
        );
    }
}

/// The title, the plot area's border, ticks on both axes and the axis labels.
fn axes(s: &mut String, c: &Chart, f: &Frame, x0: f64, h: f64) {
    let (left, right, top, bottom) = (f.left, f.right, f.top, f.bottom);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        (left + right) / 2.0,
        escape(&c.title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        right - left,
        bottom - top
    );
    // Ticks: five on y; on x, powers of the log base or five even steps.
    for i in 0..=4 {
        let y = f.y.0 + (f.y.1 - f.y.0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{right}" y1="{0:.1}" y2="{0:.1}" stroke="#eee"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
            f.py(y),
            left - 6.0,
            f.py(y) + 4.0,
            num(y)
        );
    }
    for x in x_ticks(f.x.0, f.x.1, c.log_x) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{bottom}" y2="{1}" stroke="#888"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            f.px(x),
            bottom + 5.0,
            bottom + 18.0,
            num(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + right) / 2.0,
        h - 12.0,
        escape(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(-90 {0} {1})">{2}</text>"#,
        x0 + 16.0,
        (top + bottom) / 2.0,
        escape(&c.y_label)
    );
}

/// Series `i`: its band, its line with a dot per point (up to [`DOTS`] points), its legend
/// entry.
fn series(s: &mut String, f: &Frame, i: usize, se: &Series) {
    let color = COLORS[i % COLORS.len()];
    if !se.band.is_empty() {
        let band: Vec<_> = se.band.iter().filter(|b| f.drawable(b.0)).collect();
        let pts: Vec<String> = band
            .iter()
            .map(|b| format!("{:.1},{:.1}", f.px(b.0), f.py(b.2)))
            .chain(
                band.iter()
                    .rev()
                    .map(|b| format!("{:.1},{:.1}", f.px(b.0), f.py(b.1))),
            )
            .collect();
        let _ = writeln!(
            s,
            r#"<polygon points="{}" fill="{color}" fill-opacity="0.15" stroke="none"/>"#,
            pts.join(" ")
        );
    }
    let pts: Vec<(f64, f64)> = se
        .points
        .iter()
        .filter(|p| f.drawable(p.0) && p.1.is_finite())
        .map(|p| (f.px(p.0), f.py(p.1)))
        .collect();
    let line: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", p.0, p.1))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
        line.join(" ")
    );
    if pts.len() <= DOTS {
        for p in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                p.0, p.1
            );
        }
    }
    let ly = f.top + 16.0 + 16.0 * i as f64;
    let _ = writeln!(
        s,
        r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{2}" y="{3}">{4}</text>"#,
        f.left + 8.0,
        f.left + 28.0,
        f.left + 32.0,
        ly + 4.0,
        escape(&se.name)
    );
}

/// Series with more points than this are drawn as a line only (a metric's history).
const DOTS: usize = 64;

fn minmax(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    })
}

/// Tick positions in data units; `lo`/`hi` are in axis units (log10 of x on a log axis).
fn x_ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if !log {
        return (0..=4).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect();
    }
    let base: f64 = if hi - lo < 2.0 { 2.0 } else { 10.0 };
    let (a, b) = (
        (lo / base.log10()).floor() as i32,
        (hi / base.log10()).ceil() as i32,
    );
    (a..=b)
        .map(|e| base.powi(e))
        .filter(|x| {
            let t = x.log10();
            t >= lo - 1e-9 && t <= hi + 1e-9
        })
        .collect()
}

/// A short tick label: integers as they are, large numbers as `1e12`, others to 2 decimals.
fn num(x: f64) -> String {
    if x.abs() >= 1e5 {
        format!("{x:.0e}")
    } else if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_every_series_is_drawn() {
        let c = Chart {
            title: "pass@k <script>".into(),
            log_x: true,
            series: vec![
                Series {
                    name: "a&b\u{1b}[31m".into(),
                    points: vec![(1.0, 0.5), (2.0, 0.7), (4.0, 0.8)],
                    band: vec![(1.0, 0.4, 0.6), (4.0, 0.7, 0.9)],
                },
                Series {
                    name: "c".into(),
                    points: vec![(1.0, 0.6), (4.0, 0.7)],
                    ..Default::default()
                },
            ],
            marks: vec![(3.0, "cross".into())],
            ..Default::default()
        };
        let svg = render(&[c], 400.0, 300.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("pass@k &lt;script&gt;"));
        assert!(svg.contains("a&amp;b\u{FFFD}[31m"));
        assert!(!svg.contains('\u{1b}'));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn log_ticks_use_base_two_on_short_ranges() {
        assert_eq!(
            x_ticks(0.0, 64f64.log10(), true),
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        );
        assert_eq!(x_ticks(9.0, 12.0, true), vec![1e9, 1e10, 1e11, 1e12]);
        assert_eq!(x_ticks(0.0, 1.0, false).len(), 5);
    }
}
