//! The help overlay, generated from the keymap: every scope's bindings under its heading, keys
//! bound to the same action on one line, in two columns where the screen is wide enough.

use crate::notebook::keymap::{KEYMAP, Scope, key_label};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};

/// One scope's part of the overlay: its heading, then a line per action.
fn section(scope: Scope) -> Vec<Line<'static>> {
    let mut entries: Vec<(String, &'static str, _)> = Vec::new();
    for b in KEYMAP.iter().filter(|b| b.scope == scope) {
        match entries.iter_mut().find(|e| e.2 == b.action) {
            Some(e) => e.0 = format!("{}/{}", e.0, key_label(b.key)),
            None => entries.push((key_label(b.key), b.help, b.action)),
        }
    }
    if entries.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![Line::styled(
        scope.label(),
        Style::default().fg(Color::DarkGray),
    )];
    for (keys, help, _) in entries {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{keys:>9}  "),
                Style::default()
                    .fg(Color::Cyan)
                    .add_modifier(Modifier::BOLD),
            ),
            Span::raw(help),
        ]));
    }
    lines
}

/// The overlay's sections, one per scope that has bindings.
pub fn sections() -> Vec<Vec<Line<'static>>> {
    Scope::ALL
        .into_iter()
        .map(section)
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn draw(f: &mut Frame<'_>, area: Rect) {
    let sections = sections();
    let total: usize = sections.iter().map(Vec::len).sum();
    // Two columns when wide enough: whole sections, the first column taking them until it
    // holds about half the lines.
    let two = area.width >= 100;
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for s in sections {
        if two && left.len() >= total / 2 {
            right.extend(s);
        } else {
            left.extend(s);
        }
    }
    let rows = left.len().max(right.len()) as u16;
    let w = area.width.min(if two { 120 } else { 78 });
    let h = area.height.min(rows + 2);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, r);
    let frame = Block::default()
        .borders(Borders::ALL)
        .title(" keys (? or esc closes) ");
    let inner = frame.inner(r);
    f.render_widget(frame, r);
    let [a, b] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    if two {
        f.render_widget(Paragraph::new(left), a);
        f.render_widget(Paragraph::new(right), b);
    } else {
        f.render_widget(Paragraph::new(left), inner);
    }
}
