//! Samples browser: the completions of one step (←/→ scrubs steps), filtered by correct / wrong /
//! format failure; the selected one in full with `<think>` and `<answer>` highlighted, its reward
//! components and advantage; `g` lists all G completions of its group, `p` its prompt across
//! steps.

use super::block;
use crate::notebook::app::{App, Pane, SampleMode};
use crate::notebook::workspace::Sample;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Wrap};

/// Split a completion into styled spans: think text dim cyan, answer bold, tags dark.
pub fn highlight(completion: &str, correct: bool) -> Vec<Span<'static>> {
    let tag = Style::default().fg(Color::DarkGray);
    let think = Style::default().fg(Color::Cyan);
    let answer = Style::default()
        .fg(if correct { Color::Green } else { Color::Red })
        .add_modifier(Modifier::BOLD);
    let mut spans = Vec::new();
    let mut style = Style::default();
    let mut rest = completion;
    while !rest.is_empty() {
        let next = ["<think>", "</think>", "<answer>", "</answer>"]
            .iter()
            .filter_map(|t| rest.find(t).map(|i| (i, *t)))
            .min();
        match next {
            Some((i, t)) => {
                if i > 0 {
                    spans.push(Span::styled(rest[..i].to_string(), style));
                }
                spans.push(Span::styled(t.to_string(), tag));
                style = match t {
                    "<think>" => think,
                    "<answer>" => answer,
                    _ => Style::default(),
                };
                rest = &rest[i + t.len()..];
            }
            None => {
                spans.push(Span::styled(rest.to_string(), style));
                break;
            }
        }
    }
    spans
}

fn item(s: &Sample) -> ListItem<'static> {
    let mark = if s.correct() {
        Span::styled("✓ ", Style::default().fg(Color::Green))
    } else {
        Span::styled("✗ ", Style::default().fg(Color::Red))
    };
    let adv = s.advantage.map(|a| format!("{a:+.2} ")).unwrap_or_default();
    let mut spans = vec![
        mark,
        Span::styled(
            format!("{:.2} {adv}", s.reward),
            Style::default().fg(Color::DarkGray),
        ),
        Span::raw(s.prompt.clone()),
    ];
    spans.extend(highlight(&s.completion, s.correct()));
    ListItem::new(Line::from(spans))
}

pub fn draw(f: &mut Frame<'_>, area: Rect, app: &App) {
    let focused = app.focus == Pane::Main;
    let steps = app.sample_steps();
    let samples = app.visible_samples();
    let step = app.sample_step();
    let mode = match &app.sample_mode {
        SampleMode::Step => "".to_string(),
        SampleMode::Group(g) => format!(" · group {g}"),
        SampleMode::Prompt(p) => format!(" · prompt {p} across steps"),
    };
    let mode = match (app.input, app.reward_range) {
        (Some(crate::notebook::app::Input::RewardRange), _) => {
            format!("{mode} · reward {}▏", app.input_buf)
        }
        (_, Some((lo, hi))) => format!("{mode} · reward {lo}..{hi}"),
        _ => mode,
    };
    let pos = steps.len().saturating_sub(app.sample_step_back);
    let title = match step {
        Some(s) => format!(
            "samples · step {s} ({pos}/{}) · {} · {} shown{mode}",
            steps.len(),
            app.sample_filter.label(),
            samples.len()
        ),
        None => "samples".to_string(),
    };
    if samples.is_empty() {
        let msg = if steps.is_empty() {
            "no samples in this run"
        } else {
            "no sample matches the filter (f cycles it)"
        };
        f.render_widget(Paragraph::new(msg).block(block(&title, focused)), area);
        return;
    }
    let [list_area, detail] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let sel = app.sample_index.min(samples.len() - 1);
    let mut state = ListState::default();
    state.select(Some(sel));
    f.render_stateful_widget(
        List::new(samples.iter().map(|s| item(s)).collect::<Vec<_>>())
            .block(block(&title, focused))
            .highlight_style(Style::default().bg(Color::DarkGray)),
        list_area,
        &mut state,
    );
    let s = samples[sel];
    let mut comp = vec![Span::styled(
        s.prompt.clone(),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    comp.extend(highlight(&s.completion, s.correct()));
    let rewards: Vec<String> = s
        .rewards
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    let lines = vec![
        Line::from(comp),
        Line::from(""),
        Line::from(format!("expected answer: {}", s.answer)),
        Line::from(format!(
            "reward {:.3}   {}{}",
            s.reward,
            rewards.join("  "),
            s.advantage
                .map(|a| format!("   advantage {a:+.3}"))
                .unwrap_or_default()
        )),
        Line::from(format!(
            "step {}{}",
            s.step,
            s.group.map(|g| format!("   group {g}")).unwrap_or_default()
        )),
    ];
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block("sample", false)),
        detail,
    );
}
