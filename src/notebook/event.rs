//! The one event channel: terminal input, file-system changes, child exits, sampled prompts and
//! ticks all arrive as [`Event`]s from their own threads.

use crossterm::event::{KeyEvent, MouseEvent};

#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// These paths under the watched folder changed.
    Fs(Vec<std::path::PathBuf>),
    /// A slow rescan is due (new experiments, deleted runs).
    Rescan,
    ChildExit {
        pid: u32,
        code: Option<i32>,
    },
    SampleDone(Vec<String>),
    /// A background job (an export) finished: one line for the notice bar.
    Notice(String),
    Tick,
}
