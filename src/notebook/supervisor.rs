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

/// Start a stage (or the whole pipeline) of the experiment in `exp`, with `extra` arguments
/// (a fork's `--fresh --set …`). The launcher's own output goes to `runs/.launcher.log`; the
/// stage writes its run folder itself.
pub fn spawn_stage(
    exp: &Path,
    stage: Option<&str>,
    extra: &[String],
    tx: Sender<Event>,
) -> std::io::Result<u32> {
    let runs = exp.join("runs");
    std::fs::create_dir_all(&runs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(runs.join(".launcher.log"))?;
    let mut cmd = Command::new(exe()?);
    cmd.arg("run").arg(exp);
    if let Some(s) = stage {
        cmd.args(["--stage", s]);
    }
    cmd.args(extra);
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
    std::thread::spawn(move || {
        let code = child.wait().ok().and_then(|s| s.code());
        let _ = tx.send(Event::ChildExit { pid, code });
    });
    Ok(pid)
}

/// Ask the stage writing `run` to stop: SIGTERM to its process group, then to the process
/// itself. Only a process that holds the run's lock (`runfs::lock::holder`) and is the `pid`
/// that run.json names is signalled, never pid 0 or 1: a stale, reused or hand-written pid in
/// a run folder gets nothing.
pub fn stop(run: &Path, pid: u32) -> std::io::Result<()> {
    let lock = run.join(crate::runfs::lock::LOCK);
    match crate::runfs::lock::holder(run) {
        Some(holder) if holder == pid && pid > 1 => {}
        Some(holder) => {
            return Err(std::io::Error::other(format!(
                "{} is held by pid {holder}, not by pid {pid} as run.json says: nothing sent",
                lock.display()
            )));
        }
        None => {
            return Err(std::io::Error::other(format!(
                "pid {pid} does not hold {}: not a running stage of this run, nothing sent",
                lock.display()
            )));
        }
    }
    #[cfg(unix)]
    {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid
        // addresses the child's process group.
        let rc = unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGTERM) };
        if rc != 0 {
            // SAFETY: as above, for the single process.
            let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
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
