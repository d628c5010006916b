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
            let dir = run.join("export");
            match crate::analysis::export::export_run(
                &crate::runfs::RunDir::new(run),
                &dir,
                &["svg", "csv"],
            ) {
                Ok(files) => app.notice(format!(
                    "exported {} files to {}",
                    files.len(),
                    dir.display()
                )),
                Err(e) => app.notice(format!("export failed: {e:#}")),
            }
        }
        Effect::Rescan => {
            app.ws.rescan();
        }
    }
    true
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
    let (_guard, how) = watch::start(&root, tx.clone());
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
    app.notice(how);
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
            let ev = match rx.recv_timeout(FRAME) {
                Ok(ev) => ev,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    dirty |= app.poll(Instant::now() + POLL_BUDGET);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            match ev {
                Event::Key(k) => {
                    dirty = true;
                    for eff in app.on_key(k) {
                        if !apply(&mut app, eff, &tx) {
                            return Ok(());
                        }
                    }
                }
                Event::Resize(..) => dirty = true,
                Event::Mouse(_) => {}
                Event::Fs | Event::Tick => dirty |= app.poll(Instant::now() + POLL_BUDGET),
                Event::Rescan => dirty |= app.ws.rescan() | app.poll(Instant::now() + POLL_BUDGET),
                Event::ChildExit { pid, code } => {
                    dirty = true;
                    app.ws.rescan();
                    app.notice(match code {
                        Some(0) => format!("pid {pid} finished"),
                        Some(130) => format!("pid {pid} stopped (resume with r)"),
                        Some(c) => format!("pid {pid} exited with {c} (see the run's logs)"),
                        None => format!("pid {pid} was killed"),
                    });
                }
                Event::SampleDone(lines) => {
                    dirty = true;
                    app.prompt_output = lines;
                }
            }
        }
    })();
    ratatui::restore();
    result
}
