//! `run.json`: what a run is and where it stands (a contract: README, "Run folders"). Rewritten atomically
//! on every change; readers may see an older version but never a torn one.

use super::atomic;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A run another program writes (it holds no lock) is `running` while its files changed within
/// this long.
pub const LIVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether `newest` (a file's modification time) is within [`LIVE_WINDOW`] of now.
pub fn recent(newest: Option<std::time::SystemTime>) -> bool {
    newest
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < LIVE_WINDOW)
}

/// Lifecycle of a run. `crashed` is never written by a stage: readers derive it from a
/// `running` status whose process is gone (see [`RunStatus::effective_status`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Stopped,
    Crashed,
    /// A run another framework writes whose files have not changed for a while
    /// ([`LIVE_WINDOW`]) and do not say it finished. Never in `run.json`.
    Idle,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
            Status::Crashed => "crashed",
            Status::Idle => "idle",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Step counter of a run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
}

/// Error details of a failed run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunError {
    pub message: String,
}

/// The contents of `run.json`. Unknown keys written by other tools are ignored; optional keys
/// may be absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunStatus {
    pub id: String,
    pub experiment: String,
    pub stage: String,
    pub kind: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Unix time in seconds.
    #[serde(default)]
    pub started: Option<f64>,
    #[serde(default)]
    pub ended: Option<f64>,
    #[serde(default)]
    pub progress: Progress,
    /// The stage's resolved configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Checkpoint folder this run started from.
    #[serde(default)]
    pub init: Option<String>,
    /// Loop iteration (1-based) when the stage runs inside a `[[loop]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    #[serde(default)]
    pub error: Option<RunError>,
    /// Each time the run was resumed: the checkpoint's step it went on from. Metric lines
    /// after that step were written again (readers start a new segment there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed_at: Vec<Resumed>,
    /// Where the stage computes (`cpu`, `cuda`, `wgpu`); absent in runs of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The experiment seed the run used (`--seed`/`--seeds` or the spec's); absent in runs of
    /// older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The training products' operands as they ran: `f32`, `bf16`, or `f32` with why bf16
    /// was not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// A LoRA stage's frozen base when it is held as quantised blocks (QLoRA): `q8_0`,
    /// `q4_1`, or the GGUF file's own blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_base: Option<String>,
    /// The program writing the run when it is not stageloop (`trl`: a handed-over stage's
    /// `train.py`). Such a run holds no lock: it is alive while its files change
    /// ([`LIVE_WINDOW`]), else `idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// What the trained model is: its size, its KV cache per token and its DeepSeek blocks;
    /// absent in runs of older builds and in eval runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelFacts>,
}

/// The model a training run trains ([`RunStatus::model`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFacts {
    pub params: usize,
    /// Bytes of KV cache a token holds over all layers (f32).
    pub kv_bytes_per_token: usize,
    /// The block's variations beyond a dense transformer (`moe …`, `mla …`), empty for none.
    #[serde(default)]
    pub blocks: Vec<String>,
}

/// One resume of a run (see [`RunStatus::resumed_at`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Resumed {
    /// The checkpoint's step the run went on from.
    pub step: u64,
    /// Unix time in seconds.
    pub time: f64,
}

impl RunStatus {
    /// Write atomically to `dir/run.json`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        atomic::write_json(&dir.join(super::RUN_JSON), self)
    }

    /// Overwrite `dir/run.json` in place: the fallback when [`RunStatus::save`] fails on a full
    /// disk (a temp file needs new blocks; truncating and rewriting a small file usually does not),
    /// so a failed run is not left `running`. Not atomic: only for the final status.
    pub fn save_in_place(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(super::RUN_JSON);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut f = atomic::append_own(&path)?;
        f.set_len(0).map_err(|e| atomic::named(&path, e))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(|e| atomic::named(&path, e))
    }

    /// Read `dir/run.json`; the error names the file and what is wrong with it.
    pub fn load(dir: &Path) -> Result<RunStatus, String> {
        let path = dir.join(super::RUN_JSON);
        let text = crate::untrusted::read_small(&path, 16 << 20)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}:{}:{}: invalid run.json: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })
    }

    /// The status a reader should show for the run in `dir`: `running` is `crashed` unless a
    /// process holds the run's own lock ([`super::lock::holder`]): the pid in run.json is not
    /// believed (0, -1, or a reused pid after a power loss would look alive).
    pub fn effective_status(&self, dir: &Path) -> Status {
        self.status_given(self.alive(dir))
    }

    /// Whether the run's writer is alive: the lock is held (stageloop's stages), or (another
    /// program's writer) its folder's files changed within [`LIVE_WINDOW`].
    pub fn alive(&self, dir: &Path) -> bool {
        if self.writer.is_none() {
            return super::lock::holder(dir).is_some();
        }
        let newest = [super::RUN_JSON, super::METRICS, super::SAMPLES]
            .iter()
            .filter_map(|f| {
                std::fs::metadata(dir.join(f))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .max();
        recent(newest)
    }

    /// [`Self::effective_status`] when whether the run's lock is held is known already.
    pub fn status_given(&self, alive: bool) -> Status {
        match self.status {
            Status::Running if !alive && self.writer.is_some() => Status::Idle,
            Status::Running if !alive => Status::Crashed,
            s => s,
        }
    }
}

/// Whether a process with this pid exists (on Unix; elsewhere assumed alive).
pub fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // Signal 0 checks for existence without sending anything. A zombie (exited child not
        // yet reaped) still counts as alive until reaped; /proc tells them apart on Linux.
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; signal 0 only
        // checks that the process exists.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return false;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(rest) = stat.rsplit(')').next()
        {
            return !rest.trim_start().starts_with('Z');
        }
        true
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Seconds since the Unix epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_a_dead_pid() {
        let d = tempfile::tempdir().unwrap();
        let mut s = RunStatus {
            id: "20261130-010203-pre".into(),
            experiment: "e".into(),
            stage: "pre".into(),
            kind: "pretrain".into(),
            status: Status::Running,
            pid: Some(std::process::id()),
            started: Some(1.0),
            ended: None,
            progress: Progress { step: 3, total: 10 },
            config: serde_json::json!({"lr": 0.1}),
            init: None,
            iteration: None,
            error: None,
            resumed_at: vec![Resumed { step: 2, time: 5.0 }],
            device: Some("cpu".into()),
            seed: Some(3),
            precision: None,
            frozen_base: None,
            writer: None,
            model: None,
        };
        s.save(d.path()).unwrap();
        let back = RunStatus::load(d.path()).unwrap();
        assert_eq!(back, s);
        // Running only while a process holds the run's lock, whatever pid run.json names.
        assert_eq!(back.effective_status(d.path()), Status::Crashed);
        let lock = super::super::lock::RunLock::acquire(d.path()).unwrap();
        assert_eq!(back.effective_status(d.path()), Status::Running);
        drop(lock);
        s.pid = Some(0);
        assert_eq!(s.effective_status(d.path()), Status::Crashed);
    }

    #[test]
    fn when_the_atomic_save_fails_the_in_place_save_still_records_the_end() {
        let d = tempfile::tempdir().unwrap();
        let mut s = RunStatus {
            id: "r".into(),
            experiment: "e".into(),
            stage: "pre".into(),
            kind: "pretrain".into(),
            status: Status::Running,
            pid: None,
            started: None,
            ended: None,
            progress: Progress::default(),
            config: serde_json::Value::Null,
            init: None,
            iteration: None,
            error: None,
            resumed_at: vec![],
            device: None,
            seed: None,
            precision: None,
            frozen_base: None,
            writer: None,
            model: None,
        };
        s.save(d.path()).unwrap();
        // The temp file cannot be created (a folder holds its name), as on a full disk.
        std::fs::create_dir(
            d.path()
                .join(format!(".run.json.tmp-{}", std::process::id())),
        )
        .unwrap();
        s.status = Status::Failed;
        s.error = Some(RunError {
            message: "disk full".into(),
        });
        let e = s.save(d.path()).unwrap_err();
        assert!(e.to_string().contains("run.json"), "{e}");
        s.save_in_place(d.path()).unwrap();
        assert_eq!(RunStatus::load(d.path()).unwrap().status, Status::Failed);
    }

    #[test]
    fn half_written_run_json_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("run.json"), "{\"id\": \"x\", \"sta").unwrap();
        let e = RunStatus::load(d.path()).unwrap_err();
        assert!(e.contains("run.json:1:"), "{e}");
    }
}
