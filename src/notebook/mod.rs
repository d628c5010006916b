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
        Effect::EditNotes { path } => app.editor = Some(path),
        Effect::Bookmark { run, line } => {
            // One write per line, appended: the file is a log like the run's others.
            use std::io::Write;
            let path = run.join(workspace::BOOKMARKS);
            let wrote = crate::runfs::atomic::append_own(&path)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            match wrote {
                Ok(()) => {
                    app.poll(Instant::now() + POLL_BUDGET);
                }
                Err(e) => app.notice(e.to_string()),
            }
        }
        Effect::Fork {
            exp,
            stage,
            sets,
            programs,
        } => {
            let mut extra = vec!["--fresh".to_string()];
            for s in &sets {
                extra.extend(["--set".to_string(), s.clone()]);
            }
            app.follow_next_run(&exp);
            match supervisor::spawn_stage(&exp, Some(&stage), &extra, &programs, tx.clone()) {
                Ok(pid) => app.notice(format!(
                    "started pid {pid}: stageloop run {} --stage {stage} {}",
                    exp.display(),
                    extra.join(" ")
                )),
                Err(e) => app.notice(format!("could not start the fork: {e}")),
            }
        }
        Effect::Spawn {
            exp,
            stage,
            programs,
        } => {
            app.follow_next_run(&exp);
            match supervisor::spawn_stage(&exp, stage.as_deref(), &[], &programs, tx.clone()) {
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
                        done.note().map(|s| format!(" ({s})")).unwrap_or_default()
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
        Event::Mouse(m) => {
            dirty = true;
            let hit = ui::regions(app.area, app).pane_at(m.column, m.row);
            for eff in app.on_mouse(m, hit) {
                if !apply(app, eff, tx) {
                    return None;
                }
            }
        }
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
    if app.follow.is_some() {
        dirty |= app.select_followed_run();
    }
    Some(dirty)
}

/// The editor the user chose: `$VISUAL`, else `$EDITOR`, else `vi` (words split on spaces, so
/// `code -w` works).
pub fn editor_command() -> Vec<String> {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|w| !w.is_empty())
        .unwrap_or_else(|| vec!["vi".into()])
}

/// Open `path` (created with a heading when absent) in the user's editor and wait for it.
fn edit_file(path: &Path) -> anyhow::Result<()> {
    if path.is_symlink() {
        anyhow::bail!(
            "{}: a symbolic link; notes are the run's or the experiment's own file",
            path.display()
        );
    }
    if !path.exists() {
        let what = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut f = crate::runfs::atomic::append_own(path)?;
        std::io::Write::write_all(&mut f, format!("# Notes: {what}\n\n").as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let cmd = editor_command();
    let status = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg(path)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start `{}`: {e} (set $EDITOR)", cmd[0]))?;
    anyhow::ensure!(status.success(), "`{}` exited with {status}", cmd.join(" "));
    Ok(())
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
    // Set while an editor has the terminal: the input thread stops reading keys.
    let input_paused = Arc::new(AtomicBool::new(false));
    let paused = input_paused.clone();
    std::thread::spawn(move || {
        loop {
            if paused.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            match crossterm::event::poll(Duration::from_millis(100)) {
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
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
    let result = (|| -> anyhow::Result<()> {
        let mut dirty = true;
        let mut last_draw = Instant::now() - FRAME;
        loop {
            if term_signal.load(Ordering::Relaxed) {
                return Ok(());
            }
            if dirty && last_draw.elapsed() >= FRAME {
                app.now = crate::runfs::status::now();
                let size = terminal.size()?;
                app.area = ratatui::layout::Rect::new(0, 0, size.width, size.height);
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
            if let Some(path) = app.editor.take() {
                input_paused.store(true, Ordering::Relaxed);
                // The input thread's poll returns within 100 ms and then sleeps.
                std::thread::sleep(Duration::from_millis(150));
                let _ =
                    crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
                ratatui::restore();
                let outcome = edit_file(&path);
                terminal = ratatui::try_init()?;
                let _ =
                    crossterm::execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
                terminal.clear()?;
                input_paused.store(false, Ordering::Relaxed);
                app.notice(match outcome {
                    Ok(()) => format!("notes saved in {}", path.display()),
                    Err(e) => format!("editor: {e}"),
                });
                app.ws.rescan_all();
                app.poll(Instant::now() + POLL_BUDGET);
                dirty = true;
            }
        }
    })();
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
    ratatui::restore();
    result
}
