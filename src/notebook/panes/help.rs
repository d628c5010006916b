//! The help overlay, generated from the keymap.

use crate::notebook::keymap::{KEYMAP, Scope, key_name};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};

pub fn draw(f: &mut Frame<'_>, area: Rect) {
    let w = area.width.min(78);
    let h = area.height.min(KEYMAP.len() as u16 + 4);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let mut lines = Vec::new();
    for scope in [Scope::Global, Scope::Runs, Scope::Charts, Scope::Samples] {
        for b in KEYMAP.iter().filter(|b| b.scope == scope) {
            let where_ = match scope {
                Scope::Global => "",
                Scope::Runs => "[runs] ",
                Scope::Charts => "[charts] ",
                Scope::Samples => "[samples] ",
                Scope::Pipeline => "[pipeline] ",
            };
            lines.push(Line::from(vec![
                Span::styled(
                    format!("{:>7}  ", key_name(b.code)),
                    Style::default()
                        .fg(Color::Cyan)
                        .add_modifier(Modifier::BOLD),
                ),
                Span::styled(where_, Style::default().fg(Color::DarkGray)),
                Span::raw(b.help),
            ]));
        }
    }
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" keys (? or esc closes) "),
        ),
        r,
    );
}
