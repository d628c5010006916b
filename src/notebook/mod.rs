//! The notebook: a terminal dashboard over the experiments folder. It reads run folders and
//! starts stages as child processes; it never trains in-process.
//!
//! Structure (after bottom and gitui): [`event`] is the single channel every thread feeds;
//! [`app::App::on_key`] turns keys into state changes and [`app::Effect`]s through the
//! [`keymap`]; [`ui::draw`] is a pure function of the state; the loop below carries out effects,
//! polls the [`workspace`] on a time budget and redraws only when something changed, at most
//! every 16 ms.

pub mod app;
pub mod event;
pub mod keymap;
pub mod panes;
pub mod series;
pub mod supervisor;
pub mod terminal;
pub mod ui;
pub mod watch;
pub mod workspace;

use app::{App, Effect};
use event::Event;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Time a frame may spend reading new log lines.
const POLL_BUDGET: Duration = Duration::from_millis(8);
const FRAME: Duration = Duration::from_millis(16);
/// How long the idle loop sleeps between checks for running runs.
const IDLE_WAIT: Duration = workspace::LIVE_EVERY;

/// Carry out one effect; returns false to quit.
pub fn apply(app: &mut App, effect: Effect, tx: &mpsc::Sender<Event>) -> bool {
    match effect {
        Effect::Quit => return false,
        Effect::Spawn { exp, stage } => {
            match supervisor::spawn_stage(&exp, stage.as_deref(), tx.clone()) {
                Ok(pid) => app.notice(format!(
                    "started pid {pid}: stageloop run {}{}",
                    exp.display(),
                    stage.map(|s| format!(" --stage {s}")).unwrap_or_default()
                )),
                Err(e) => app.notice(format!("could not start the stage: {e}")),
            }
        }
        Effect::Stop { run, pid } => {
            if let Err(e) = supervisor::stop(&run, pid) {
                app.notice(format!("did not stop pid {pid}: {e}"));
            }
        }
        Effect::Sample { run, prompt } => supervisor::sample(&run, &prompt, tx.clone()),
        Effect::Export { run } => {
            // Off the UI thread: a large log takes seconds to export, and keys must not wait.
            app.notice(format!(
                "exporting {} …",
                crate::untrusted::display(&run.display().to_string())
            ));
            let tx = tx.clone();
            std::thread::spawn(move || {
                let dir = run.join("export");
                let rd = crate::runfs::RunDir::new(run);
                let line = match crate::analysis::export::export_run(&rd, &dir, &["svg", "csv"]) {
                    Ok(done) => format!(
                        "exported {} files to {}{}",
                        done.files.len(),
                        dir.display(),
                        done.bad
                            .summary()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    ),
                    Err(e) => format!("export failed: {e:#}"),
                };
                let _ = tx.send(Event::Notice(line));
            });
        }
        Effect::Rescan => {
            app.ws.rescan_all();
        }
    }
    true
}

/// How long the loop may wait for the next event: a frame while something is to be drawn or
/// loading; otherwise until the live tick (an idle notebook wakes four times a second).
pub fn wait(app: &App, dirty: bool) -> Duration {
    if dirty || app.ws.any_loading() {
        FRAME
    } else {
        IDLE_WAIT
    }
}

/// Handle one event (`None`: the wait timed out); returns whether the screen needs a redraw, or
/// `None` to quit. The loop's whole behaviour apart from drawing (the bench drives it too).
pub fn handle(app: &mut App, ev: Option<Event>, tx: &mpsc::Sender<Event>) -> Option<bool> {
    let budget = || Instant::now() + POLL_BUDGET;
    let Some(ev) = ev else {
        return Some(app.poll_changed(budget()));
    };
    let mut dirty = false;
    match ev {
        Event::Key(k) => {
            dirty = true;
            for eff in app.on_key(k) {
                if !apply(app, eff, tx) {
                    return None;
                }
            }
        }
        Event::Resize(..) => dirty = true,
        Event::Mouse(_) => {}
        Event::Fs(paths) => {
            if app.ws.mark_changed(&paths) {
                dirty |= app.ws.rescan_all();
            }
            dirty |= app.poll_changed(budget());
        }
        Event::Tick => dirty |= app.poll_changed(budget()),
        Event::Rescan => {
            // Without a watcher nothing marks changed runs: re-list and re-read them all.
            dirty |= if app.ws.watched {
                app.ws.rescan() | app.poll_changed(budget())
            } else {
                app.ws.rescan_all() | app.poll(budget())
            };
        }
        Event::ChildExit { pid, code } => {
            dirty = true;
            app.ws.rescan_all();
            app.notice(match code {
                Some(0) => format!("pid {pid} finished"),
                Some(130) => format!("pid {pid} stopped (resume with r)"),
                Some(c) => format!("pid {pid} exited with {c} (see the run's logs)"),
                None => format!("pid {pid} was killed"),
            });
        }
        Event::Notice(line) => {
            dirty = true;
            app.notice(line);
        }
        Event::SampleDone(lines) => {
            dirty = true;
            app.prompt_output = lines;
        }
    }
    Some(dirty)
}

/// Run the notebook on `root` until the user quits (or SIGTERM/SIGHUP arrive).
pub fn run(root: &Path) -> anyhow::Result<()> {
    let root = if root.exists() {
        root.to_path_buf()
    } else {
        anyhow::bail!(
            "{}: no such folder (give the folder that holds your experiments)",
            root.display()
        );
    };
    let term_signal = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, term_signal.clone())?;
    }
    let (tx, rx) = mpsc::channel();
    let (guard, how) = watch::start(&root, tx.clone());
    let input_tx = tx.clone();
    std::thread::spawn(move || {
        loop {
            match crossterm::event::poll(Duration::from_millis(250)) {
                Ok(true) => {
                    let ev = match crossterm::event::read() {
                        Ok(crossterm::event::Event::Key(k)) => Event::Key(k),
                        Ok(crossterm::event::Event::Mouse(m)) => Event::Mouse(m),
                        Ok(crossterm::event::Event::Resize(w, h)) => Event::Resize(w, h),
                        Ok(_) => continue,
                        Err(_) => break,
                    };
                    if input_tx.send(ev).is_err() {
                        break;
                    }
                }
                Ok(false) => {
                    if input_tx.send(Event::Tick).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });

    let mut app = App::new(workspace::Workspace::new(&root));
    app.ws.watched = !matches!(guard, watch::Guard::None);
    // Statuses first (run.json is read before any log), then open on the run that matters now.
    app.poll(Instant::now() + POLL_BUDGET);
    app.select_most_recent();
    app.notice(how);
    terminal::install_abort_guard();
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> anyhow::Result<()> {
        let mut dirty = true;
        let mut last_draw = Instant::now() - FRAME;
        loop {
            if term_signal.load(Ordering::Relaxed) {
                return Ok(());
            }
            if dirty && last_draw.elapsed() >= FRAME {
                app.now = crate::runfs::status::now();
                terminal.draw(|f| ui::draw(f, &app))?;
                last_draw = Instant::now();
                dirty = false;
            }
            let ev = match rx.recv_timeout(wait(&app, dirty)) {
                Ok(ev) => Some(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            match handle(&mut app, ev, &tx) {
                Some(changed) => dirty |= changed,
                None => return Ok(()),
            }
        }
    })();
    ratatui::restore();
    result
}
