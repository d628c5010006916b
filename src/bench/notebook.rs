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
    let before = run.series.lines();
    let path = run.dir.join("metrics.jsonl");
    let t0 = Instant::now();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    writeln!(f, "{{\"step\":{points},\"time\":1.9e9,\"loss\":0.5}}")?;
    loop {
        // What the watcher's event does in the loop: mark the file's run, poll what changed.
        app.ws.mark_changed(std::slice::from_ref(&path));
        if app.poll_changed(Instant::now() + Duration::from_millis(8))
            && app.ws.experiments[sel.0].runs[sel.1].series.lines() > before
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

/// The 1 GB case: one run whose `metrics.jsonl` is `mb` megabytes.
#[derive(Debug, Serialize)]
pub struct BigLogBench {
    pub log_bytes: u64,
    pub lines: u64,
    /// `stageloop runs`' summary of that run (last values read from the end).
    pub runs_secs: f64,
    pub runs_peak_rss_bytes: u64,
    /// From opening the notebook to the first frame with the run's chart drawn.
    pub first_chart_secs: f64,
    /// Until the whole log is read (in the background) and on screen.
    pub full_load_secs: f64,
    /// Key press to the frame that shows it, while the log loads (each key behind one poll).
    pub key_ms_median: f64,
    pub key_ms_max: f64,
    pub keys: usize,
    /// Points the run's series keeps for its charts.
    pub points_kept: usize,
    pub peak_rss_bytes: u64,
}

/// Write one run with a metrics log of about `mb` megabytes; returns (bytes, lines).
fn generate_big(root: &Path, mb: u64) -> Result<(u64, u64)> {
    let dir = root.join("big/runs/20261130-000000-grpo");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("run.json"),
        r#"{"id":"20261130-000000-grpo","experiment":"big","stage":"grpo","kind":"grpo","status":"done","progress":{"step":1,"total":1}}"#,
    )?;
    let path = dir.join("metrics.jsonl");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let target = mb << 20;
    let (mut bytes, mut i) = (0u64, 0u64);
    let mut x = 1.0f64;
    let mut line = String::new();
    while bytes < target {
        x = x * 0.99999 + 0.001 * ((i * 7919 % 1000) as f64 / 1000.0 - 0.5);
        line.clear();
        use std::fmt::Write as _;
        writeln!(
            line,
            "{{\"step\":{i},\"time\":{:.3},\"loss\":{x:.5},\"reward\":{:.4},\"kl\":{:.5},\"entropy\":{:.4},\"completion_length\":{}}}",
            1.8e9 + i as f64 * 0.05,
            1.0 - x / 2.0,
            x * 0.01,
            2.0 - x,
            20 + i % 17
        )?;
        w.write_all(line.as_bytes())?;
        bytes += line.len() as u64;
        i += 1;
    }
    w.flush()?;
    Ok((bytes, i))
}

pub fn big(mb: u64) -> Result<BigLogBench> {
    use crate::notebook::{event::Event, handle};
    let dir = tempfile::TempDir::new()?;
    eprintln!(
        "writing a {mb} MB metrics log to {} …",
        dir.path().display()
    );
    let (log_bytes, lines) = generate_big(dir.path(), mb)?;
    let run = crate::runfs::RunDir::new(dir.path().join("big/runs/20261130-000000-grpo"));

    let t0 = Instant::now();
    let row = crate::analysis::run_row(&run);
    let runs_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(row.last.contains_key("loss"), "runs found the last loss");
    let runs_peak_rss_bytes = peak_rss_bytes();

    let (tx, _rx) = std::sync::mpsc::channel();
    let mut term = Terminal::new(TestBackend::new(160, 48))?;
    let t0 = Instant::now();
    let mut app = App::new(Workspace::new(dir.path()));
    app.on_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Down,
    ));
    let sel = app.selected_index().expect("a run");
    let loading = |app: &App| app.ws.experiments[sel.0].runs[sel.1].loading;
    let points = |app: &App| app.ws.experiments[sel.0].runs[sel.1].series.len();
    loop {
        handle(&mut app, None, &tx);
        draw(&mut term, &app)?;
        if points(&app) > 0 {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "no chart");
    }
    let first_chart_secs = t0.elapsed().as_secs_f64();
    let mut keys = Vec::new();
    let tab = crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Tab);
    while loading(&app) {
        let k0 = Instant::now();
        handle(&mut app, None, &tx); // the poll a key may arrive behind
        handle(&mut app, Some(Event::Key(tab)), &tx);
        draw(&mut term, &app)?;
        keys.push(k0.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(16));
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(900), "never loaded");
    }
    draw(&mut term, &app)?;
    let full_load_secs = t0.elapsed().as_secs_f64();
    let key_ms_max = keys.iter().copied().fold(0.0, f64::max);
    let n = keys.len();
    Ok(BigLogBench {
        log_bytes,
        lines,
        runs_secs,
        runs_peak_rss_bytes,
        first_chart_secs,
        full_load_secs,
        key_ms_median: if n > 0 { median(&mut keys) } else { 0.0 },
        key_ms_max,
        keys: n,
        points_kept: points(&app),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// An idle notebook on a large workspace, with the real file watcher and the event loop's
/// handling (frames into `TestBackend`).
#[derive(Debug, Serialize)]
pub struct IdleBench {
    pub runs: usize,
    pub secs: f64,
    /// CPU time of the whole process (all threads) over the idle window, per wall second.
    pub cpu_percent: f64,
    pub watcher: String,
    /// Lines appended to the running run during the window (0: idle).
    pub appended: usize,
}

/// CPU time of this process so far (user + system, all threads).
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF covers every thread of the process.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

pub fn idle(runs: usize, points: usize, secs: f64, append: usize) -> Result<IdleBench> {
    use crate::notebook::{event::Event, handle, wait, watch};
    let dir = tempfile::TempDir::new()?;
    generate(dir.path(), runs, points)?;
    // The live run: running, its lock held here, so the notebook polls it as a live stage's.
    let live = dir.path().join("big/runs/20261130-010000-stage0");
    let _lock = if append > 0 {
        let text = std::fs::read_to_string(live.join("run.json"))?
            .replace("\"status\":\"done\"", "\"status\":\"running\"");
        std::fs::write(live.join("run.json"), text)?;
        Some(crate::runfs::lock::RunLock::acquire(&live)?)
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (guard, how) = watch::start(dir.path(), tx.clone());
    let mut app = App::new(Workspace::new(dir.path()));
    app.ws.watched = !matches!(guard, watch::Guard::None);
    let tick = tx.clone();
    std::thread::spawn(move || {
        // The input thread's tick when no key comes.
        while tick.send(Event::Tick).is_ok() {
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let mut term = Terminal::new(TestBackend::new(160, 48))?;
    app.poll(Instant::now() + Duration::from_secs(60));
    let run_loop =
        |app: &mut App, term: &mut Terminal<TestBackend>, until: Instant| -> Result<()> {
            let mut dirty = true;
            while Instant::now() < until {
                if dirty {
                    draw(term, app)?;
                }
                let ev = rx.recv_timeout(wait(app, dirty)).ok();
                dirty = handle(app, ev, &tx).unwrap_or(false);
            }
            Ok(())
        };
    // Settle (the watcher's first events, the first rescan), then measure.
    run_loop(&mut app, &mut term, Instant::now() + Duration::from_secs(4))?;
    let (c0, t0) = (cpu_secs(), Instant::now());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = (append > 0).then(|| {
        let stop = stop.clone();
        let log = live.join("metrics.jsonl");
        std::thread::spawn(move || -> Result<usize> {
            let mut w = crate::runfs::jsonl::JsonlWriter::append(&log)?;
            let mut n = 0usize;
            let t = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Lines due by now, each its own write, as a stage logs them.
                let due = (t.elapsed().as_secs_f64() * append as f64) as usize;
                while n < due {
                    let step = points + n;
                    w.write(&serde_json::json!({"step": step, "loss": 1.0 / (1.0 + n as f64)}))?;
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(n)
        })
    });
    run_loop(&mut app, &mut term, t0 + Duration::from_secs_f64(secs))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = match writer {
        Some(h) => h.join().expect("the writer thread")?,
        None => 0,
    };
    let wall = t0.elapsed().as_secs_f64();
    drop(guard);
    Ok(IdleBench {
        runs,
        secs: wall,
        cpu_percent: (cpu_secs() - c0) / wall * 100.0,
        watcher: how,
        appended,
    })
}
