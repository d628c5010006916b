//! Child processes: stages run as `stageloop run EXP --stage NAME` in their own process group,
//! so they survive the notebook; stopping sends SIGTERM (the stage checkpoints and marks itself
//! stopped). The prompt box runs `stageloop sample … --json` the same way.

use super::event::Event;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;

fn exe() -> std::io::Result<std::path::PathBuf> {
    std::env::current_exe()
}

/// Pids of the stages this notebook started, each the leader of a process group it made.
static SPAWNED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn spawned_here(pid: u32) -> bool {
    SPAWNED.lock().is_ok_and(|s| s.contains(&pid))
}

/// Start a stage (or the whole pipeline) of the experiment in `exp`, with `extra` arguments
/// (a fork's `--fresh --set …`) and the reward `programs` the user was shown, which the child
/// checks against its spec (`run --programs-shown`). The launcher's own output goes to
/// `runs/.launcher.log`; the stage writes its run folder itself.
pub fn spawn_stage(
    exp: &Path,
    stage: Option<&str>,
    extra: &[String],
    programs: &[String],
    tx: Sender<Event>,
) -> std::io::Result<u32> {
    let runs = exp.join("runs");
    std::fs::create_dir_all(&runs)?;
    let log = crate::runfs::atomic::append_own(&runs.join(".launcher.log"))?;
    let mut cmd = Command::new(exe()?);
    cmd.arg("run").arg(exp);
    if let Some(s) = stage {
        cmd.args(["--stage", s]);
    }
    cmd.args(extra);
    cmd.args(["--programs-shown", &crate::spec::programs_digest(programs)]);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    if let Ok(mut s) = SPAWNED.lock() {
        s.push(pid);
    }
    std::thread::spawn(move || {
        let code = child.wait().ok().and_then(|s| s.code());
        if let Ok(mut s) = SPAWNED.lock() {
            s.retain(|&p| p != pid);
        }
        let _ = tx.send(Event::ChildExit { pid, code });
    });
    Ok(pid)
}

/// Ask the stage writing `run` to stop with SIGTERM: to the process group when this notebook
/// started the stage in a group of its own, else to the process alone (a group a shell made,
/// `stageloop run … | tee log`, holds other programs). Only the stage of this run
/// (`runfs::lock::stage_of`: it holds the run folder's own lock file and is this program
/// running this run's experiment) that is the `pid` run.json names is signalled, never pid 0 or
/// 1: a stale, reused, hand-written or borrowed pid in a run folder gets nothing.
pub fn stop(run: &Path, pid: u32) -> std::io::Result<()> {
    use crate::runfs::lock;
    let path = run.join(lock::LOCK);
    match lock::holder(run) {
        Some(holder) if holder == pid => {
            if pid <= 1 || !lock::runs_experiment(pid, run) {
                return Err(std::io::Error::other(format!(
                    "pid {pid} holds {} but is not stageloop running this run's experiment: \
                     nothing sent",
                    path.display()
                )));
            }
        }
        Some(holder) => {
            return Err(std::io::Error::other(format!(
                "{} is held by pid {holder}, not by pid {pid} as run.json says: nothing sent",
                path.display()
            )));
        }
        None => {
            return Err(std::io::Error::other(format!(
                "pid {pid} does not hold {}: not a running stage of this run, nothing sent",
                path.display()
            )));
        }
    }
    #[cfg(unix)]
    {
        let target = if spawned_here(pid) {
            -(pid as libc::pid_t)
        } else {
            pid as libc::pid_t
        };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid
        // addresses the process group this notebook made for the stage.
        let rc = unsafe { libc::kill(target, libc::SIGTERM) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        Err(std::io::Error::other("stopping stages needs Unix signals"))
    }
}

/// Sample from a run's checkpoint in a child process; the JSON lines come back as an event.
pub fn sample(run: &Path, prompt: &str, tx: Sender<Event>) {
    let run = run.to_path_buf();
    let prompt = prompt.to_string();
    std::thread::spawn(move || {
        let out = exe().and_then(|e| {
            Command::new(e)
                .arg("sample")
                .arg(&run)
                .args(["--prompt", &prompt, "-n", "3", "--json"])
                .stdin(Stdio::null())
                .output()
        });
        let lines = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                    format!(
                        "{}{}   [accuracy {} format {}]",
                        v["prompt"].as_str().unwrap_or(""),
                        v["completion"].as_str().unwrap_or(""),
                        v["rewards"]["accuracy"],
                        v["rewards"]["format"]
                    )
                })
                .collect(),
            Ok(o) => vec![String::from_utf8_lossy(&o.stderr).trim().to_string()],
            Err(e) => vec![format!("cannot run stageloop sample: {e}")],
        };
        let _ = tx.send(Event::SampleDone(lines));
    });
}
