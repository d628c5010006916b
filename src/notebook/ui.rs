//! Layout and chrome: runs and pipeline on the left, the main view (charts, samples, overview,
//! logs) on the right, footer hints from the keymap, notices, the prompt box and dialogs. `draw`
//! is a pure function of the state.

use super::app::{App, Dialog, Input, Pane, View};
use super::panes::{self, Ctx};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Tabs, Wrap};

/// Below this size the notebook shows a notice instead of panes.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 12;

pub fn draw(f: &mut Frame<'_>, app: &App) {
    draw_panes(f, app);
    strip_unsafe(f.buffer_mut());
}

/// The last guard for text from run folders: whatever a pane drew, no cell reaches the terminal
/// with a control character or a bidirectional override ([`crate::untrusted::unsafe_char`]) —
/// such characters are dropped from the cell (a stand-in would change its width).
fn strip_unsafe(buf: &mut ratatui::buffer::Buffer) {
    for cell in buf.content.iter_mut() {
        if cell.symbol().chars().any(crate::untrusted::unsafe_char) {
            let kept: String = cell
                .symbol()
                .chars()
                .filter(|c| !crate::untrusted::unsafe_char(*c))
                .collect();
            cell.set_symbol(if kept.is_empty() { " " } else { &kept });
        }
    }
}

fn draw_panes(f: &mut Frame<'_>, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(
            Paragraph::new(format!(
                "terminal too small ({}×{}); stageloop needs {MIN_WIDTH}×{MIN_HEIGHT} · q quits",
                area.width, area.height
            ))
            .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [body, notice, footer] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let r = regions(area, app);
    if r.runs.area() > 0 {
        runs(f, r.runs, app);
    }
    if r.pipeline.area() > 0 {
        pipeline(f, r.pipeline, app);
    }
    if r.main.area() > 0 {
        main_view(f, r.main, app);
    }
    let note = app.notices.back().cloned().unwrap_or_default();
    f.render_widget(
        Paragraph::new(note).style(Style::default().fg(Color::Yellow)),
        notice,
    );
    let mut spans = Vec::new();
    for (k, h) in app.hints() {
        spans.push(Span::styled(
            format!(" {k} "),
            Style::default().fg(Color::Black).bg(Color::Gray),
        ));
        spans.push(Span::raw(format!(" {h} ")));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), footer);
    if app.show_help {
        panes::help::draw(f, body);
    }
    let scroll = app.dialog_scroll;
    match &app.dialog {
        Some(Dialog::Quit) => dialog(
            f,
            area,
            "stages are running",
            "They keep running after the notebook quits; the next notebook picks them up.",
            "Quit? (y / any other key cancels)",
            scroll,
        ),
        Some(Dialog::StartRunning { stage, pid, .. }) => dialog(
            f,
            area,
            "stage already running",
            &format!(
                "{stage} is running (pid {pid}); starting it again starts a second run beside it."
            ),
            "Start? (y / any other key cancels)",
            scroll,
        ),
        Some(Dialog::RunsPrograms { commands, .. }) => dialog(
            f,
            area,
            &format!("this runs {} program(s) from the spec", commands.len()),
            &format!(
                "The spec's reward programs will run on this machine, in the experiment folder:\n{}",
                commands.join("\n")
            ),
            "Run them all? (y / any other key cancels)",
            scroll,
        ),
        Some(Dialog::Message { title, text }) => {
            dialog(f, area, title, text, "(any key closes)", scroll)
        }
        None => {}
    }
}

/// Where each pane is drawn on a screen of `area` (empty when hidden by a maximised pane): the
/// layout `draw` uses, also read to route mouse clicks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regions {
    pub runs: Rect,
    pub pipeline: Rect,
    pub main: Rect,
}

impl Regions {
    /// The pane drawn under the cell at (`column`, `row`), and its area.
    pub fn pane_at(&self, column: u16, row: u16) -> Option<(Pane, Rect)> {
        let at = ratatui::layout::Position::new(column, row);
        [
            (Pane::Runs, self.runs),
            (Pane::Pipeline, self.pipeline),
            (Pane::Main, self.main),
        ]
        .into_iter()
        .find(|(_, r)| r.contains(at))
    }
}

pub fn regions(area: Rect, app: &App) -> Regions {
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        return Regions::default();
    }
    let [body, _, _] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    if app.maximized {
        let mut r = Regions::default();
        *match app.focus {
            Pane::Runs => &mut r.runs,
            Pane::Pipeline => &mut r.pipeline,
            Pane::Main => &mut r.main,
        } = body;
        return r;
    }
    let left_w = if body.width >= 110 {
        46
    } else {
        body.width * 2 / 5
    };
    let [left, main] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Min(10)]).areas(body);
    let [runs, pipeline] =
        Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(left);
    Regions {
        runs,
        pipeline,
        main,
    }
}

/// What a pane draws with: its focus, its input's text when that input is open, the clock.
fn ctx<'a>(app: &'a App, pane: Pane, inputs: &[Input]) -> Ctx<'a> {
    Ctx {
        focused: app.focus == pane,
        typing: app
            .input
            .filter(|i| inputs.contains(i))
            .map(|_| app.input_buf.as_str()),
        now: app.now,
    }
}

fn runs(f: &mut Frame<'_>, area: Rect, app: &App) {
    let c = ctx(app, Pane::Runs, &[Input::RunFilter]);
    app.runs.draw(f, area, &app.ws, c);
}

fn pipeline(f: &mut Frame<'_>, area: Rect, app: &App) {
    let c = ctx(app, Pane::Pipeline, &[Input::Fork]);
    app.pipeline.draw(f, area, app.selected_experiment(), c);
}

fn main_view(f: &mut Frame<'_>, area: Rect, app: &App) {
    let [tabs, content] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let titles = [
        "1 charts",
        "2 samples",
        "3 overview",
        "4 logs",
        "5 evals",
        "6 compare",
    ];
    let selected = match app.view {
        View::Charts => 0,
        View::Samples => 1,
        View::Overview => 2,
        View::Logs => 3,
        View::Evals => 4,
        View::Compare => 5,
    };
    f.render_widget(
        Tabs::new(titles).select(selected).highlight_style(
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        ),
        tabs,
    );
    let [content, prompt] = if app.prompt_output.is_empty() && app.input != Some(Input::Prompt) {
        [content, Rect::default()]
    } else {
        Layout::vertical([Constraint::Min(3), Constraint::Length(4)]).areas(content)
    };
    let focused = app.focus == Pane::Main;
    match app.view {
        // An eval run has one point per metric: its table and curves say more.
        View::Charts
            if app.chart_runs().len() == 1
                && app.selected_run().is_some_and(|r| {
                    r.eval.is_some() && r.status.as_ref().is_some_and(|s| s.kind == "eval")
                }) =>
        {
            let c = ctx(app, Pane::Main, &[]);
            panes::evals::draw(f, content, app.selected_experiment(), c);
        }
        View::Charts => {
            let c = ctx(app, Pane::Main, &[Input::MetricFilter]);
            app.charts.draw(f, content, &app.chart_runs(), c);
        }
        View::Samples => {
            let c = ctx(app, Pane::Main, &[Input::RewardRange]);
            app.samples.draw(f, content, app.selected_run(), c);
        }
        View::Overview => {
            let (run, ex) = (app.selected_run(), app.selected_experiment());
            panes::overview::draw(f, content, run, ex, focused);
        }
        View::Logs => panes::logs::draw(f, content, app.selected_run(), focused),
        View::Evals => {
            let c = ctx(app, Pane::Main, &[]);
            panes::evals::draw(f, content, app.selected_experiment(), c);
        }
        View::Compare => {
            let c = ctx(app, Pane::Main, &[]);
            panes::compare::draw(f, content, &app.chart_runs(), c);
        }
    }
    if prompt.height > 0 {
        prompt_box(f, prompt, app);
    }
}

fn prompt_box(f: &mut Frame<'_>, area: Rect, app: &App) {
    let mut lines = Vec::new();
    if app.input == Some(Input::Prompt) {
        lines.push(Line::from(format!("prompt> {}▏", app.input_buf)));
    }
    lines.extend(app.prompt_output.iter().map(|l| Line::from(l.clone())));
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" prompt (i, enter samples, esc closes) "),
        ),
        area,
    );
}

/// A dialog box: `text` (scrolled by `scroll` lines when it does not fit; the title says so)
/// above `prompt`, which always has its own line at the bottom so nothing is confirmed unseen.
fn dialog(f: &mut Frame<'_>, area: Rect, title: &str, text: &str, prompt: &str, scroll: u16) {
    // Each line made inert: commands and errors quote the spec and run folders.
    let text = text
        .lines()
        .map(|l| crate::untrusted::display(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let title = crate::untrusted::display(title);
    let w = area.width.min(78);
    let inner = w.saturating_sub(2).max(1) as usize;
    // Rows the text takes once wrapped (by characters: a slight overestimate with wide words).
    let rows: usize = text
        .lines()
        .map(|l| l.chars().count().div_ceil(inner).max(1))
        .sum();
    let h = (rows as u16 + 3).min(area.height);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let body_rows = h.saturating_sub(3) as usize;
    let hidden = rows.saturating_sub(body_rows);
    let scroll = scroll.min(hidden as u16);
    let title = if hidden > 0 {
        format!(
            " {title} · lines {}–{} of {rows} (↓ ↑ scroll) ",
            scroll + 1,
            scroll as usize + body_rows
        )
    } else {
        format!(" {title} ")
    };
    f.render_widget(Clear, r);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(title)
        .border_style(Style::default().fg(Color::Yellow));
    let inside = block.inner(r);
    f.render_widget(block, r);
    let [body, ask] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inside);
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        body,
    );
    f.render_widget(
        Paragraph::new(prompt.to_string()).style(Style::default().add_modifier(Modifier::BOLD)),
        ask,
    );
}
