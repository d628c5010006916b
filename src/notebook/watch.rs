//! Watching the experiments folder: notify-debouncer-full (recursive, 100 ms) when the native
//! watcher works, a poll watcher when it does not, and a slow rescan every 3 s regardless, all
//! feeding the event channel with the paths that changed.

use super::event::Event;
use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Whether an event is a change to react to: not a read (open, close without writing) and not a
/// metadata update (a read can update the access time, which inotify reports as an attribute
/// change).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{EventKind, ModifyKind};
    !matches!(
        kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
    )
}

/// Keeps the watcher alive; drop to stop watching.
pub enum Guard {
    Native(
        notify_debouncer_full::Debouncer<
            notify::RecommendedWatcher,
            notify_debouncer_full::RecommendedCache,
        >,
    ),
    Poll(notify::PollWatcher),
    None,
}

/// Start watching `root`; returns the guard and a line saying which watcher is in use.
pub fn start(root: &Path, tx: Sender<Event>) -> (Guard, String) {
    let rescan_tx = tx.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(3));
            if rescan_tx.send(Event::Rescan).is_err() {
                break;
            }
        }
    });
    let native_tx = tx.clone();
    let native = new_debouncer(
        Duration::from_millis(100),
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = res {
                // Reads (the notebook's own opens among them) are not changes: reacting to them
                // would make every poll cause the next.
                let mut paths: Vec<_> = events
                    .into_iter()
                    .filter(|e| is_change(&e.event.kind))
                    .flat_map(|e| e.event.paths)
                    .collect();
                if paths.is_empty() {
                    return;
                }
                paths.sort();
                paths.dedup();
                let _ = native_tx.send(Event::Fs(paths));
            }
        },
    )
    .and_then(|mut d| d.watch(root, RecursiveMode::Recursive).map(|_| d));
    match native {
        Ok(d) => (Guard::Native(d), "watching with inotify".into()),
        Err(e) => {
            use notify::Watcher;
            let poll_tx = tx.clone();
            let cfg = notify::Config::default().with_poll_interval(Duration::from_millis(500));
            match notify::PollWatcher::new(
                move |res: notify::Result<notify::Event>| {
                    if let Ok(e) = res
                        && is_change(&e.kind)
                    {
                        let _ = poll_tx.send(Event::Fs(e.paths));
                    }
                },
                cfg,
            )
            .and_then(|mut w| w.watch(root, RecursiveMode::Recursive).map(|_| w))
            {
                Ok(w) => (
                    Guard::Poll(w),
                    format!("native watcher failed ({e}); polling every 500 ms"),
                ),
                Err(e2) => (
                    Guard::None,
                    format!("no watcher ({e2}); rescanning every 3 s"),
                ),
            }
        }
    }
}
