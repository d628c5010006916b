//! `stageloop bench notebook`: the notebook's speed and memory on a large workspace (default
//! 50 runs × 200,000 metric lines): time to open it (first frame with the selected run fully
//! read), median frame draw time (charts view, selected run; and with every run overlaid), the
//! delay from a line appended to a watched `metrics.jsonl` to the frame that shows it, and peak
//! RSS once everything is loaded. Frames render into ratatui's `TestBackend` (no terminal I/O).

use super::{median, peak_rss_bytes};
use crate::notebook::app::App;
use crate::notebook::ui;
use crate::notebook::workspace::Workspace;
use anyhow::Result;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct NotebookBench {
    pub runs: usize,
    pub points_per_run: usize,
    pub open_secs: f64,
    pub full_load_secs: f64,
    pub frame_ms_median: f64,
    pub frame_ms_median_overlay_all: f64,
    pub append_to_screen_ms: f64,
    pub peak_rss_bytes: u64,
}

/// Write the synthetic workspace: `runs` run folders with `points` metric lines each.
pub fn generate(root: &Path, runs: usize, points: usize) -> Result<()> {
    let exp = root.join("big/runs");
    for r in 0..runs {
        let id = format!("20261130-{:06}-stage{r}", 10_000 + r);
        let dir = exp.join(&id);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("run.json"),
            format!(
                r#"{{"id":"{id}","experiment":"big","stage":"stage{r}","kind":"pretrain","status":"done","progress":{{"step":{points},"total":{points}}}}}"#
            ),
        )?;
        let mut w = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(dir.join("metrics.jsonl"))?,
        );
        let mut x = 1.0f64 + r as f64 * 0.01;
        for i in 0..points {
            x = x * 0.99995 + 0.001 * ((i * 7919 % 1000) as f64 / 1000.0 - 0.5);
            writeln!(
                w,
                "{{\"step\":{i},\"time\":{:.3},\"loss\":{x:.5}}}",
                1.8e9 + i as f64 * 0.05
            )?;
        }
    }
    Ok(())
}

fn draw(t: &mut Terminal<TestBackend>, app: &App) -> Result<f64> {
    let t0 = Instant::now();
    t.draw(|f| ui::draw(f, app))?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

pub fn run(runs: usize, points: usize) -> Result<NotebookBench> {
    let dir = tempfile::TempDir::new()?;
    eprintln!(
        "writing {runs} runs × {points} lines to {} …",
        dir.path().display()
    );
    generate(dir.path(), runs, points)?;
    let mut term = Terminal::new(TestBackend::new(160, 48))?;

    // Open: scan, read the selected run completely (8 ms budgets, as the event loop does), draw.
    let t0 = Instant::now();
    let mut app = App::new(Workspace::new(dir.path()));
    app.on_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Down,
    ));
    let sel = app.selected_index().expect("a run");
    loop {
        app.poll(Instant::now() + Duration::from_millis(8));
        if !app.ws.experiments[sel.0].runs[sel.1].loading {
            break;
        }
    }
    draw(&mut term, &app)?;
    let open_secs = t0.elapsed().as_secs_f64();
    while app
        .ws
        .experiments
        .iter()
        .flat_map(|e| &e.runs)
        .any(|r| r.loading)
    {
        app.poll(Instant::now() + Duration::from_millis(8));
    }
    let full_load_secs = t0.elapsed().as_secs_f64();

    app.charts.smoothing = 0.6;
    let mut frames: Vec<f64> = (0..30)
        .map(|_| draw(&mut term, &app))
        .collect::<Result<_>>()?;
    let frame_ms_median = median(&mut frames);
    for (ei, e) in app.ws.experiments.iter().enumerate() {
        for r in &e.runs {
            app.runs.marked.insert((ei, r.id.clone()));
        }
    }
    let mut frames: Vec<f64> = (0..10)
        .map(|_| draw(&mut term, &app))
        .collect::<Result<_>>()?;
    let frame_ms_median_overlay_all = median(&mut frames);
    app.runs.marked.clear();

    // Append one line to the selected run and wait for the frame that shows it.
    let run = &app.ws.experiments[sel.0].runs[sel.1];
    let before = run.series.len();
    let path = run.dir.join("metrics.jsonl");
    let t0 = Instant::now();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    writeln!(f, "{{\"step\":{points},\"time\":1.9e9,\"loss\":0.5}}")?;
    loop {
        if app.poll(Instant::now() + Duration::from_millis(8))
            && app.ws.experiments[sel.0].runs[sel.1].series.len() > before
        {
            draw(&mut term, &app)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(16)); // the loop's idle tick
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "appended line never showed"
        );
    }
    let append_to_screen_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(NotebookBench {
        runs,
        points_per_run: points,
        open_secs,
        full_load_secs,
        frame_ms_median,
        frame_ms_median_overlay_all,
        append_to_screen_ms,
        peak_rss_bytes: peak_rss_bytes(),
    })
}
