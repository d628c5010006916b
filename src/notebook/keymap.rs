//! One table of key bindings drives dispatch, the footer hints and the help overlay, so what the
//! screen says and what the keys do cannot drift apart.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Runs,
    Charts,
    Samples,
    Pipeline,
}

/// Everything a key can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    NextPane,
    PrevPane,
    Up,
    Down,
    Left,
    Right,
    Select,
    ToggleMark,
    Filter,
    ViewCharts,
    ViewSamples,
    ViewOverview,
    ViewLogs,
    Maximize,
    SmoothMore,
    SmoothLess,
    LogY,
    XAxis,
    MetricFilter,
    SampleFilter,
    RewardRange,
    GroupView,
    SamePrompt,
    RunStage,
    RunPipeline,
    Stop,
    Prompt,
    Export,
    Rescan,
}

/// One binding.
pub struct Binding {
    pub code: KeyCode,
    pub mods: KeyModifiers,
    pub scope: Scope,
    pub action: Action,
    /// Short label for the footer (empty: not shown there).
    pub hint: &'static str,
    /// Line for the help overlay.
    pub help: &'static str,
}

const fn b(
    code: KeyCode,
    scope: Scope,
    action: Action,
    hint: &'static str,
    help: &'static str,
) -> Binding {
    Binding {
        code,
        mods: KeyModifiers::NONE,
        scope,
        action,
        hint,
        help,
    }
}

use Action as A;
use KeyCode::*;
use Scope::*;

/// The keymap.
pub const KEYMAP: &[Binding] = &[
    b(
        Char('q'),
        Global,
        A::Quit,
        "quit",
        "quit (asks first when stages are running)",
    ),
    b(Char('?'), Global, A::Help, "help", "show or hide this help"),
    b(Tab, Global, A::NextPane, "pane", "focus the next pane"),
    b(BackTab, Global, A::PrevPane, "", "focus the previous pane"),
    b(
        Char('1'),
        Global,
        A::ViewCharts,
        "charts",
        "main view: charts",
    ),
    b(
        Char('2'),
        Global,
        A::ViewSamples,
        "samples",
        "main view: samples browser",
    ),
    b(
        Char('3'),
        Global,
        A::ViewOverview,
        "overview",
        "main view: run overview",
    ),
    b(
        Char('4'),
        Global,
        A::ViewLogs,
        "logs",
        "main view: the run's output",
    ),
    b(
        Char('z'),
        Global,
        A::Maximize,
        "zoom",
        "maximise the focused pane (again to restore)",
    ),
    b(Up, Global, A::Up, "", "move up"),
    b(Char('k'), Global, A::Up, "", "move up"),
    b(Down, Global, A::Down, "", "move down"),
    b(Char('j'), Global, A::Down, "", "move down"),
    b(
        Left,
        Global,
        A::Left,
        "",
        "left: previous step, chart or cursor position",
    ),
    b(Char('h'), Global, A::Left, "", "left"),
    b(
        Right,
        Global,
        A::Right,
        "",
        "right: next step, chart or cursor position",
    ),
    b(Char('l'), Global, A::Right, "", "right"),
    b(
        Enter,
        Global,
        A::Select,
        "",
        "open: focus a chart, expand a group",
    ),
    b(
        Char(' '),
        Runs,
        A::ToggleMark,
        "overlay",
        "mark a run to overlay on the charts",
    ),
    b(
        Char('/'),
        Runs,
        A::Filter,
        "filter",
        "filter runs by text (Esc clears)",
    ),
    b(
        Char('r'),
        Global,
        A::RunStage,
        "run stage",
        "run (or resume) the selected stage as a child process",
    ),
    b(
        Char('R'),
        Global,
        A::RunPipeline,
        "run all",
        "run the selected experiment's whole pipeline",
    ),
    b(
        Char('x'),
        Global,
        A::Stop,
        "stop",
        "stop the selected running stage (SIGTERM: it checkpoints)",
    ),
    b(
        Char('s'),
        Charts,
        A::SmoothMore,
        "smooth+",
        "more smoothing (debiased EMA)",
    ),
    b(
        Char('S'),
        Charts,
        A::SmoothLess,
        "smooth-",
        "less smoothing (0 = raw)",
    ),
    b(
        Char('y'),
        Charts,
        A::LogY,
        "log-y",
        "toggle a logarithmic y axis",
    ),
    b(
        Char('t'),
        Charts,
        A::XAxis,
        "x-axis",
        "x axis: step → relative time → wall time",
    ),
    b(
        Char('m'),
        Charts,
        A::MetricFilter,
        "metrics",
        "filter metrics by text",
    ),
    b(
        Char('f'),
        Samples,
        A::SampleFilter,
        "filter",
        "samples: all → correct → wrong → format failure",
    ),
    b(
        Char('v'),
        Samples,
        A::RewardRange,
        "reward range",
        "samples: keep rewards in a range, typed lo..hi (empty clears)",
    ),
    b(
        Char('g'),
        Samples,
        A::GroupView,
        "group",
        "show all completions of the selected sample's group",
    ),
    b(
        Char('p'),
        Samples,
        A::SamePrompt,
        "same prompt",
        "show the selected prompt across steps",
    ),
    b(
        Char('i'),
        Global,
        A::Prompt,
        "prompt",
        "sample from the selected run's checkpoint",
    ),
    b(
        Char('e'),
        Global,
        A::Export,
        "export",
        "export the selected run's charts (SVG) and metrics (CSV)",
    ),
    b(F(5), Global, A::Rescan, "", "rescan the experiments folder"),
];

/// The action for a key in a scope (scope bindings first, then global ones).
pub fn lookup(key: &KeyEvent, scope: Scope) -> Option<Action> {
    let mods = key.modifiers - KeyModifiers::SHIFT;
    let hit = |b: &&Binding| b.code == key.code && b.mods == mods;
    KEYMAP
        .iter()
        .filter(|b| b.scope == scope)
        .find(hit)
        .or_else(|| KEYMAP.iter().filter(|b| b.scope == Scope::Global).find(hit))
        .map(|b| b.action)
}

/// Printable key name.
pub fn key_name(code: KeyCode) -> String {
    match code {
        Char(' ') => "space".into(),
        Char(c) => c.to_string(),
        Tab => "tab".into(),
        BackTab => "S-tab".into(),
        Enter => "enter".into(),
        Up => "↑".into(),
        Down => "↓".into(),
        Left => "←".into(),
        Right => "→".into(),
        F(n) => format!("F{n}"),
        Esc => "esc".into(),
        other => format!("{other:?}"),
    }
}

/// Footer hints for a scope: its own bindings, then the global ones with a hint.
pub fn hints(scope: Scope) -> Vec<(String, &'static str)> {
    KEYMAP
        .iter()
        .filter(|b| !b.hint.is_empty() && (b.scope == scope || b.scope == Scope::Global))
        .map(|b| (key_name(b.code), b.hint))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_bindings_win_over_global_ones_and_shift_is_ignored() {
        let k = |c| KeyEvent::new(Char(c), KeyModifiers::NONE);
        assert_eq!(lookup(&k('s'), Scope::Charts), Some(A::SmoothMore));
        assert_eq!(lookup(&k('s'), Scope::Runs), None);
        assert_eq!(lookup(&k('q'), Scope::Samples), Some(A::Quit));
        let shifted = KeyEvent::new(Char('R'), KeyModifiers::SHIFT);
        assert_eq!(lookup(&shifted, Scope::Runs), Some(A::RunPipeline));
    }

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for (i, a) in KEYMAP.iter().enumerate() {
            for b in &KEYMAP[i + 1..] {
                assert!(
                    !(a.code == b.code && a.scope == b.scope),
                    "{:?} bound twice in {:?}",
                    a.code,
                    a.scope
                );
            }
        }
    }
}
