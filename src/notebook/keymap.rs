//! One table of key bindings drives dispatch, the footer hints and the help overlay, so what the
//! screen says and what the keys do cannot drift apart. Text input and the quit dialog are
//! scopes of the table too: while one is open only its own bindings apply.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Runs,
    Pipeline,
    Charts,
    Samples,
    /// A text input is open (filters, reward range, prompt).
    Input,
    /// A dialog is open (quit, start a running stage again).
    Dialog,
}

impl Scope {
    /// Every scope, in the order the help overlay lists them.
    pub const ALL: [Scope; 7] = [
        Scope::Global,
        Scope::Runs,
        Scope::Pipeline,
        Scope::Charts,
        Scope::Samples,
        Scope::Input,
        Scope::Dialog,
    ];

    /// The help overlay's heading.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Global => "everywhere",
            Scope::Runs => "runs pane",
            Scope::Pipeline => "pipeline pane",
            Scope::Charts => "charts",
            Scope::Samples => "samples",
            Scope::Input => "while typing",
            Scope::Dialog => "dialogs",
        }
    }

    /// Whether the global bindings apply here too (not while typing or in a dialog, where
    /// every key belongs to the input or the dialog).
    fn inherits_global(self) -> bool {
        !matches!(self, Scope::Input | Scope::Dialog)
    }
}

/// The keys a binding matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Code(KeyCode),
    /// Any printable character (typed into an input).
    AnyChar,
    /// Any key the scope binds to nothing else.
    Other,
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
    ViewEvals,
    ViewCompare,
    /// Open the selected run's notes (an experiment row: the experiment's) in `$EDITOR`.
    EditNotes,
    /// Open the experiment's notes in `$EDITOR`.
    EditExperimentNotes,
    /// Fork the highlighted stage into a new run with typed `--set` overrides.
    Fork,
    /// Charts: the selected run's seeds as one mean line with a min–max band.
    GroupSeeds,
    /// Bookmark the selected sample (again: remove the bookmark).
    Bookmark,
    /// List the run's bookmarked samples (enter jumps to one's step).
    Bookmarks,
    /// Samples of an eval run: the problems it solves and the marked eval run does not (again:
    /// the reverse; again: off).
    EvalDiff,
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
    /// Esc: close what is open (help, zoom, group or prompt view, prompt output).
    Back,
    /// Accept the input or the dialog.
    Confirm,
    /// Abandon the input or the dialog.
    Cancel,
    /// Delete the input's last character.
    DeleteChar,
    /// Type the key's character into the input.
    TypeChar,
}

/// One binding.
pub struct Binding {
    pub key: Key,
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
    k(Key::Code(code), scope, action, hint, help)
}

const fn k(
    key: Key,
    scope: Scope,
    action: Action,
    hint: &'static str,
    help: &'static str,
) -> Binding {
    Binding {
        key,
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
        Char('5'),
        Global,
        A::ViewEvals,
        "evals",
        "main view: evals (pass@k, compute, seeds)",
    ),
    b(
        Char('6'),
        Global,
        A::ViewCompare,
        "compare",
        "main view: compare the selected + marked runs",
    ),
    b(
        Char('n'),
        Global,
        A::EditNotes,
        "notes",
        "edit the run's notes.md ($EDITOR)",
    ),
    b(
        Char('N'),
        Global,
        A::EditExperimentNotes,
        "",
        "edit the experiment's notes.md ($EDITOR)",
    ),
    b(
        Char('F'),
        Pipeline,
        A::Fork,
        "fork",
        "fork the stage with overrides (key=value …)",
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
        "mark",
        "mark a run to overlay (1) and compare (6)",
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
        "run or resume the selected stage as a child",
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
        "stop the running stage (it checkpoints first)",
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
        Char('G'),
        Charts,
        A::GroupSeeds,
        "seeds",
        "the run's seeds as one mean with a min–max band",
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
        "cycle all → correct → wrong → format failure",
    ),
    b(
        Char('v'),
        Samples,
        A::RewardRange,
        "reward range",
        "keep rewards in a range lo..hi (empty clears)",
    ),
    b(
        Char('g'),
        Samples,
        A::GroupView,
        "group",
        "all completions of the sample's group",
    ),
    b(
        Char('b'),
        Samples,
        A::Bookmark,
        "bookmark",
        "bookmark the sample (again removes it)",
    ),
    b(
        Char('B'),
        Samples,
        A::Bookmarks,
        "bookmarks",
        "list bookmarked samples; enter jumps to the step",
    ),
    b(
        Char('d'),
        Samples,
        A::EvalDiff,
        "diff",
        "vs the marked eval: solved here only, there only",
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
        "export the run's charts (SVG), metrics (CSV)",
    ),
    b(F(5), Global, A::Rescan, "", "rescan the experiments folder"),
    b(
        Esc,
        Global,
        A::Back,
        "",
        "close help, zoom, group or prompt views",
    ),
    b(Enter, Input, A::Confirm, "done", "accept the text"),
    b(
        Esc,
        Input,
        A::Cancel,
        "cancel",
        "cancel (a filter is cleared)",
    ),
    b(
        Backspace,
        Input,
        A::DeleteChar,
        "",
        "delete the last character",
    ),
    k(Key::AnyChar, Input, A::TypeChar, "", "type the character"),
    b(
        Char('y'),
        Dialog,
        A::Confirm,
        "yes",
        "yes: quit, or start the stage again",
    ),
    b(Down, Dialog, A::Down, "↓", "scroll the dialog's text"),
    b(Up, Dialog, A::Up, "", "scroll the dialog's text back"),
    b(
        Char('q'),
        Dialog,
        A::Quit,
        "",
        "quit (in the quit dialog; cancels the others)",
    ),
    k(
        Key::Other,
        Dialog,
        A::Cancel,
        "cancel",
        "no: close the dialog",
    ),
];

/// The action for a key in a scope: the scope's own bindings, then its wildcards, then (where
/// the scope inherits them) the global bindings.
pub fn lookup(key: &KeyEvent, scope: Scope) -> Option<Action> {
    let mods = key.modifiers - KeyModifiers::SHIFT;
    let exact = |b: &&Binding| b.key == Key::Code(key.code) && b.mods == mods;
    let wildcard = |b: &&Binding| match b.key {
        Key::AnyChar => matches!(key.code, Char(_)) && mods.is_empty(),
        Key::Other => true,
        Key::Code(_) => false,
    };
    let own = || KEYMAP.iter().filter(|b| b.scope == scope);
    own()
        .find(exact)
        .or_else(|| own().find(wildcard))
        .or_else(|| {
            scope
                .inherits_global()
                .then(|| {
                    KEYMAP
                        .iter()
                        .filter(|b| b.scope == Scope::Global)
                        .find(exact)
                })
                .flatten()
        })
        .map(|b| b.action)
}

/// Printable name of a binding's keys.
pub fn key_label(key: Key) -> String {
    match key {
        Key::Code(code) => key_name(code),
        Key::AnyChar => "char".into(),
        Key::Other => "other".into(),
    }
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
        Backspace => "bksp".into(),
        other => format!("{other:?}"),
    }
}

/// Footer hints for a scope: its own bindings, then the global ones it inherits.
pub fn hints(scope: Scope) -> Vec<(String, &'static str)> {
    KEYMAP
        .iter()
        .filter(|b| {
            !b.hint.is_empty()
                && (b.scope == scope || (b.scope == Scope::Global && scope.inherits_global()))
        })
        .map(|b| (key_label(b.key), b.hint))
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
                    !(a.key == b.key && a.scope == b.scope),
                    "{:?} bound twice in {:?}",
                    a.key,
                    a.scope
                );
            }
        }
    }

    #[test]
    fn inputs_and_dialogs_take_every_key() {
        let k = |c| KeyEvent::new(c, KeyModifiers::NONE);
        // While typing, `q` is a character, not quit; Esc cancels instead of going back.
        assert_eq!(lookup(&k(Char('q')), Scope::Input), Some(A::TypeChar));
        assert_eq!(lookup(&k(Esc), Scope::Input), Some(A::Cancel));
        assert_eq!(lookup(&k(Enter), Scope::Input), Some(A::Confirm));
        assert_eq!(lookup(&k(Backspace), Scope::Input), Some(A::DeleteChar));
        assert_eq!(lookup(&k(Tab), Scope::Input), None);
        assert_eq!(lookup(&k(Char('y')), Scope::Dialog), Some(A::Confirm));
        assert_eq!(lookup(&k(Char('q')), Scope::Dialog), Some(A::Quit));
        assert_eq!(lookup(&k(Char('n')), Scope::Dialog), Some(A::Cancel));
        assert_eq!(lookup(&k(Tab), Scope::Dialog), Some(A::Cancel));
        assert_eq!(lookup(&k(Esc), Scope::Charts), Some(A::Back));
    }
}
