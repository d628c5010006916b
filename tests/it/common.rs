//! Helpers shared by the integration tests.

use stageloop::runfs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Run `stageloop run EXP --stage STAGE` as a child, wait until its run has written the
/// checkpoint folder `step` (e.g. `step-000020`) or a later one, then SIGKILL it. (A fast stage
/// may write the next checkpoint before a poll sees this one; one that has already finished is
/// left as it is.)
pub fn kill_at_checkpoint(exp: &Path, stage: &str, step: &str) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stageloop"))
        .arg("run")
        .arg(exp)
        .args(["--stage", stage])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let latest = runfs::latest_run_of(&exp.join("runs"), stage)
            .and_then(|(r, _)| runfs::checkpoint::latest(&r.path));
        let reached = latest.is_some_and(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().as_ref() >= step)
        });
        if reached || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint {step} appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Write `spec` as `dir/experiment.toml` and run its whole pipeline in-process, quietly.
pub fn run_experiment(dir: &Path, spec: &str) {
    std::fs::write(dir.join("experiment.toml"), spec).unwrap();
    let exp = stageloop::spec::load(dir).unwrap();
    stageloop::stages::run_pipeline(
        &exp,
        &stageloop::stages::RunOptions::default(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        &mut stageloop::stages::Quiet,
    )
    .unwrap();
}

/// Copy the files of folder `from` into a new folder `to` (not recursive).
pub fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}
