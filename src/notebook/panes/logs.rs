//! Logs: the tail of the selected run's `stdout.log`.

use super::block;
use crate::notebook::workspace::RunView;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::widgets::Paragraph;

/// The tail of `run`'s output.
pub fn draw(f: &mut Frame<'_>, area: Rect, run: Option<&RunView>, focused: bool) {
    let Some(run) = run else {
        f.render_widget(
            Paragraph::new("no run selected").block(block("logs", focused)),
            area,
        );
        return;
    };
    let h = area.height.saturating_sub(2) as usize;
    let lines: Vec<String> = run.log.iter().rev().take(h).rev().cloned().collect();
    let text = if lines.is_empty() {
        "(no output yet)".to_string()
    } else {
        lines.join("\n")
    };
    f.render_widget(
        Paragraph::new(text).block(block(&format!("logs: {}", run.id), focused)),
        area,
    );
}
