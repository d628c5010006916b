//! The panes. Charts, samples, runs and pipeline each own their state (a struct with its
//! `on_action` and its `draw`); overview, logs and help are functions of what they show. No
//! pane imports the [`App`](super::app::App): it hands each one what it draws.

pub mod charts;
pub mod compare;
pub mod evals;
pub mod help;
pub mod logs;
pub mod overview;
pub mod pipeline;
pub mod runs;
pub mod samples;

use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, BorderType, Borders};

/// What a pane's `draw` reads besides its own state and data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx<'a> {
    /// The pane has the keyboard focus.
    pub focused: bool,
    /// The text being typed into this pane's input, when its input is open.
    pub typing: Option<&'a str>,
    /// "Now" in Unix seconds, for ETAs (set by the event loop, fixed by tests).
    pub now: f64,
}

/// Move an index by `delta` within `0..n` (stays at 0 when `n` is 0).
pub fn step_index(i: usize, delta: i64, n: usize) -> usize {
    (i as i64 + delta).clamp(0, (n as i64 - 1).max(0)) as usize
}

/// A pane's frame, highlighted when focused.
pub fn block(title: &str, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    Block::default()
        .borders(Borders::ALL)
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(style)
        .title(format!(" {title} "))
}

/// Colour of a status word.
pub fn status_color(s: &str) -> Color {
    match s {
        "running" => Color::Cyan,
        "done" => Color::Green,
        "failed" | "crashed" => Color::Red,
        "stopped" => Color::Yellow,
        _ => Color::Gray,
    }
}

/// The colours of runs and curves, in order.
pub const PALETTE: [Color; 8] = [
    Color::Cyan,
    Color::Magenta,
    Color::Yellow,
    Color::Green,
    Color::LightBlue,
    Color::LightRed,
    Color::LightGreen,
    Color::LightMagenta,
];

/// A stable colour for a run, by its id.
pub fn run_color(id: &str) -> Color {
    let h = id
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    PALETTE[h as usize % PALETTE.len()]
}

/// `1h02m`, `3m05s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
