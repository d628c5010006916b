//! The panes. Each is a pure function of the [`App`](super::app::App) state onto a frame area.

pub mod charts;
pub mod help;
pub mod logs;
pub mod overview;
pub mod pipeline;
pub mod runs;
pub mod samples;

use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, BorderType, Borders};

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

/// A stable colour for a run, by its id.
pub fn run_color(id: &str) -> Color {
    const PALETTE: [Color; 8] = [
        Color::Cyan,
        Color::Magenta,
        Color::Yellow,
        Color::Green,
        Color::LightBlue,
        Color::LightRed,
        Color::LightGreen,
        Color::LightMagenta,
    ];
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
