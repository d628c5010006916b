//! The notebook TUI. For now: a screen listing the experiments and their runs, that quits on
//! `q` (the full dashboard is tracked in the notebook issue). It only reads run folders.

use crate::runfs::{self, RunStatus};
use crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One line of the runs list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub experiment: String,
    pub run: Option<(String, String)>,
}

/// Experiments under `dir` (or `dir` itself when it is one) and their runs with status.
pub fn scan(dir: &Path) -> Vec<Entry> {
    let mut exps: Vec<PathBuf> = if dir.join("experiment.toml").is_file() {
        vec![dir.to_path_buf()]
    } else {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("experiment.toml").is_file() || p.join("runs").is_dir())
            .collect()
    };
    exps.sort();
    let mut out = Vec::new();
    for e in exps {
        let name = e
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Entry {
            experiment: name.clone(),
            run: None,
        });
        for r in runfs::list_runs(&e.join("runs")) {
            let status = RunStatus::load(&r.path)
                .map(|s| s.effective_status().to_string())
                .unwrap_or_else(|_| "unreadable".into());
            out.push(Entry {
                experiment: name.clone(),
                run: Some((r.id(), status)),
            });
        }
    }
    out
}

/// Draw the screen from the entries (a pure function of its inputs).
pub fn draw(frame: &mut Frame<'_>, dir: &Path, entries: &[Entry]) {
    let [main, footer] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(frame.area());
    let items: Vec<ListItem> = if entries.is_empty() {
        vec![ListItem::new(format!(
            "no experiments in {} — create one with `stageloop new NAME`",
            dir.display()
        ))]
    } else {
        entries
            .iter()
            .map(|e| match &e.run {
                None => ListItem::new(Line::styled(
                    e.experiment.clone(),
                    Style::default().add_modifier(Modifier::BOLD),
                )),
                Some((id, status)) => ListItem::new(format!("  {id}  {status}")),
            })
            .collect()
    };
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title(" stageloop ")),
        main,
    );
    frame.render_widget(Paragraph::new(" q quit   r rescan"), footer);
}

/// Run the notebook until the user quits.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> anyhow::Result<()> {
        let mut entries = scan(dir);
        let mut ticks = 0u32;
        loop {
            terminal.draw(|f| draw(f, dir, &entries))?;
            if event::poll(Duration::from_millis(250))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('r') => entries = scan(dir),
                    _ => {}
                }
            }
            ticks += 1;
            if ticks.is_multiple_of(8) {
                entries = scan(dir);
            }
        }
    })();
    ratatui::restore();
    result
}
