//! The real binary in a real terminal (tmux): open the notebook, start a stage from the
//! keyboard, see its run appear and its progress and chart grow, stop it, quit.

use std::process::Command;
use std::time::{Duration, Instant};

const TINY: &str = r#"name = "tiny"
[model]
d_model = 32
layers = 1
heads = 2
mlp = 64
ctx = 40
[task]
name = "arith"
difficulty = 1
heldout = 10
[[stage]]
name = "pre"
kind = "pretrain"
steps = 500000
batch = 8
sample_every = 0
checkpoint_every = 500
"#;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(session: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let screen = tmux(&["capture-pane", "-t", session, "-p"]);
        if f(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The progress `k/500000` of the run row (a budget the test never reaches: it stops the
/// stage itself).
fn progress(screen: &str) -> Option<u64> {
    let i = screen.find("/500000")?;
    let digits: String = screen[..i]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

#[test]
fn start_watch_and_stop_a_stage_from_the_keyboard() {
    if !have_tmux() {
        return;
    }
    let (d, exp) = tiny_workspace();
    let session = format!("stageloop-test-{}", std::process::id());
    let cmd = format!(
        "{} tui {}",
        env!("CARGO_BIN_EXE_stageloop"),
        d.path().display()
    );
    start_session(&session, 150, 40, &[&cmd]);
    let guard = scopeguard(&session);

    wait_for(&session, "the notebook", |s| s.contains("pipeline: tiny"));
    tmux(&["send-keys", "-t", &session, "Tab"]);
    tmux(&["send-keys", "-t", &session, "r"]);
    let s1 = wait_for(&session, "the run and its loss chart", |s| {
        s.contains("-pre running") && s.contains("loss") && progress(s).is_some_and(|p| p > 0)
    });
    let p1 = progress(&s1).unwrap();
    let s2 = wait_for(&session, "progress to grow", |s| {
        progress(s).is_some_and(|p| p > p1 + 20)
    });
    assert!(s2.contains("loss"));
    // Stop it from the keyboard: SIGTERM, the stage checkpoints and marks itself stopped.
    tmux(&["send-keys", "-t", &session, "x"]);
    wait_for(&session, "the stage to stop", |s| {
        s.contains("-pre stopped")
    });
    tmux(&["send-keys", "-t", &session, "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || {
        Command::new("tmux")
            .args(["has-session", "-t", &session])
            .status()
            .is_ok_and(|s| s.success())
    };
    while alive() {
        assert!(Instant::now() < deadline, "the notebook did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(guard);
    let runs: Vec<_> = std::fs::read_dir(exp.join("runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(runs.len(), 1);
    let status = std::fs::read_to_string(runs[0].path().join("run.json")).unwrap();
    assert!(status.contains("\"stopped\""), "{status}");
    assert!(runs[0].path().join("checkpoints/latest").is_file());
}

struct Guard(String);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}
fn scopeguard(s: &str) -> Guard {
    Guard(s.to_string())
}

/// A folder holding the `tiny` experiment (the folder the notebook opens, and the experiment).
fn tiny_workspace() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let exp = d.path().join("tiny");
    std::fs::create_dir_all(&exp).unwrap();
    std::fs::write(exp.join("experiment.toml"), TINY).unwrap();
    (d, exp)
}

/// A detached tmux session of `w`×`h` running `cmd` (its words).
fn start_session(session: &str, w: u16, h: u16, cmd: &[&str]) {
    let (w, h) = (w.to_string(), h.to_string());
    let mut args = vec!["new-session", "-d", "-s", session, "-x", &w, "-y", &h];
    args.extend_from_slice(cmd);
    tmux(&args);
}

fn have_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is required in CI (.ci/run installs it)"
        );
        eprintln!("tmux not installed: skipping");
        return false;
    }
    true
}

/// An abort (no panic hook runs) still gives the terminal back: out of the alternate screen,
/// cursor shown, cooked mode (a typed line is echoed by the shell's terminal again).
#[test]
fn an_abort_leaves_the_terminal_usable() {
    if !have_tmux() {
        return;
    }
    let (d, _exp) = tiny_workspace();
    let session = format!("stageloop-abort-{}", std::process::id());
    // The notebook runs under `sh`, which stays: after the abort its `read` shows whether the
    // terminal echoes typed text again.
    let cmd = format!(
        "{} tui {}; echo exited-$?; read line; echo got-$line; sleep 30",
        env!("CARGO_BIN_EXE_stageloop"),
        d.path().display()
    );
    start_session(&session, 120, 30, &["sh", "-c", &cmd]);
    let _guard = scopeguard(&session);
    wait_for(&session, "the notebook", |s| s.contains("pipeline: tiny"));
    let alt = || tmux(&["display", "-p", "-t", &session, "#{alternate_on}"]);
    assert_eq!(alt().trim(), "1", "the notebook uses the alternate screen");
    let out = Command::new("pkill")
        .args([
            "-ABRT",
            "-f",
            // Anchored: the `sh -c` line that started it contains the same words.
            &format!(
                "^{} tui {}$",
                env!("CARGO_BIN_EXE_stageloop"),
                d.path().display()
            ),
        ])
        .status()
        .unwrap();
    assert!(out.success(), "pkill found the notebook");
    wait_for(&session, "the shell after the abort", |s| {
        s.contains("exited-134")
    });
    assert_eq!(alt().trim(), "0", "back from the alternate screen");
    tmux(&["send-keys", "-t", &session, "typed", "Enter"]);
    let s = wait_for(&session, "the read", |s| s.contains("got-typed"));
    // Echo is on again: the typed word appears on its own line before the reply.
    assert!(
        s.lines().any(|l| l.trim() == "typed"),
        "typed text is echoed: {s}"
    );
}
