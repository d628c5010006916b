//! External reward programs: a reward of the user's own, declared in a GRPO stage's `rewards` as
//! `{ command = [...], weight, timeout }`. Each runs as one long-lived child per stage (started in
//! the experiment folder, no shell), speaking JSON lines:
//!
//! ```text
//! → {"id": 7, "prompt": "…", "completion": "…", "answer": "…", "task": "arith"}
//! ← {"id": 7, "reward": 0.5, "components": {"length": 0.2}}   (components optional)
//! ```
//!
//! A batch (one group's completions) is written, then its replies are read within `timeout`
//! seconds. A program that exits, answers late, or answers something else fails the stage with a
//! message naming the program and the request; the run keeps its checkpoints and resumes.

use crate::spec::RewardProgram;
use crate::untrusted::display;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One request: a completion to score.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Request<'a> {
    pub prompt: &'a str,
    pub completion: &'a str,
    pub answer: &'a str,
    pub task: &'a str,
}

/// A program's reply to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub reward: f64,
    pub components: BTreeMap<String, f64>,
}

/// One running program.
struct Proc {
    name: String,
    shown: String,
    weight: f64,
    timeout: Duration,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<std::io::Result<String>>,
    next_id: u64,
}

/// The stage's reward programs.
pub struct RewardPrograms {
    procs: Vec<Proc>,
}

/// At most `n` characters of a request for a message.
fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    display(&out).into_owned()
}

impl RewardPrograms {
    /// Start every program (in `dir`).
    pub fn start<'a>(
        programs: impl Iterator<Item = (&'a str, &'a RewardProgram)>,
        dir: &Path,
    ) -> Result<RewardPrograms> {
        let mut procs = Vec::new();
        for (name, p) in programs {
            let shown = p.shown();
            let mut child = Command::new(&p.command[0])
                .args(&p.command[1..])
                .current_dir(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!("reward program `{name}` ({shown}): cannot start: {e}")
                })?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let end = line.is_err();
                    if tx.send(line).is_err() || end {
                        break;
                    }
                }
            });
            procs.push(Proc {
                name: name.to_string(),
                shown,
                weight: p.weight,
                timeout: Duration::from_secs_f64(p.timeout),
                child,
                stdin,
                lines: rx,
                next_id: 0,
            });
        }
        Ok(RewardPrograms { procs })
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Score a batch with every program: per request, each program's name → its reply, and
    /// the weighted sum of the rewards.
    pub fn score(&mut self, batch: &[Request<'_>]) -> Result<Vec<(BTreeMap<String, Reply>, f64)>> {
        let mut out: Vec<(BTreeMap<String, Reply>, f64)> =
            vec![(BTreeMap::new(), 0.0); batch.len()];
        for p in &mut self.procs {
            let replies = p.score(batch)?;
            for (o, r) in out.iter_mut().zip(replies) {
                o.1 += p.weight * r.reward;
                o.0.insert(p.name.clone(), r);
            }
        }
        Ok(out)
    }
}

impl Proc {
    fn fail(&mut self, what: &str, req: Option<&Request<'_>>) -> anyhow::Error {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!(" (it exited: {s})"),
            _ => String::new(),
        };
        let req = req
            .map(|r| {
                format!(
                    "\n  request: prompt {:?}, completion {:?}",
                    clip(r.prompt, 80),
                    clip(r.completion, 120)
                )
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "reward program `{}` ({}): {what}{status}{req}",
            self.name,
            self.shown
        )
    }

    fn score(&mut self, batch: &[Request<'_>]) -> Result<Vec<Reply>> {
        let first = self.next_id;
        let mut text = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            let mut v = serde_json::to_value(r)?;
            v["id"] = serde_json::json!(first + i as u64);
            serde_json::to_writer(&mut text, &v)?;
            text.push(b'\n');
        }
        self.next_id += batch.len() as u64;
        if let Err(e) = self.stdin.write_all(&text).and_then(|_| self.stdin.flush()) {
            return Err(self.fail(&format!("cannot write to it: {e}"), batch.first()));
        }
        let deadline = Instant::now() + self.timeout;
        let mut replies: Vec<Option<Reply>> = vec![None; batch.len()];
        for _ in 0..batch.len() {
            let line = match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    return Err(self.fail(&format!("cannot read its output: {e}"), batch.first()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let pending = replies
                        .iter()
                        .position(Option::is_none)
                        .and_then(|i| batch.get(i));
                    let secs = self.timeout.as_secs_f64();
                    return Err(self.fail(&format!("no answer within {secs} s"), pending));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let pending = replies
                        .iter()
                        .position(Option::is_none)
                        .and_then(|i| batch.get(i));
                    return Err(self.fail("closed its output", pending));
                }
            };
            let parsed: Option<(u64, Reply)> = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| {
                    let id = v.get("id")?.as_u64()?;
                    let reward = v.get("reward")?.as_f64().filter(|r| r.is_finite())?;
                    let components = match v.get("components") {
                        None | Some(serde_json::Value::Null) => BTreeMap::new(),
                        Some(c) => c
                            .as_object()?
                            .iter()
                            .map(|(k, x)| Some((k.clone(), x.as_f64().filter(|f| f.is_finite())?)))
                            .collect::<Option<_>>()?,
                    };
                    Some((id, Reply { reward, components }))
                });
            let Some((id, reply)) = parsed else {
                let msg = format!(
                    "answered {:?}, not {{\"id\": N, \"reward\": <finite number>}}",
                    clip(&line, 120)
                );
                return Err(self.fail(&msg, batch.first()));
            };
            let Some(slot) = id
                .checked_sub(first)
                .and_then(|i| replies.get_mut(i as usize))
            else {
                return Err(self.fail(
                    &format!("answered an id ({id}) it was not asked"),
                    batch.first(),
                ));
            };
            *slot = Some(reply);
        }
        let replies: Option<Vec<Reply>> = replies.into_iter().collect();
        match replies {
            Some(r) => Ok(r),
            None => bail!(
                "reward program `{}` ({}): answered the same id twice",
                self.name,
                self.shown
            ),
        }
    }
}

impl Drop for RewardPrograms {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
