//! The one event channel: terminal input, file-system changes, child exits, sampled prompts and
//! ticks all arrive as [`Event`]s from their own threads.

use crossterm::event::{KeyEvent, MouseEvent};

#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// Something under the watched folder changed.
    Fs,
    /// A slow rescan is due (new experiments, deleted runs).
    Rescan,
    ChildExit {
        pid: u32,
        code: Option<i32>,
    },
    SampleDone(Vec<String>),
    Tick,
}
