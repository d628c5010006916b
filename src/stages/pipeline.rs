//! The pipeline: which stages run, in which order (loops included), where each starts from,
//! and the bookkeeping of its run folder (`run.json` status, resume of an unfinished run).

use super::context::{Outcome, Reporter, StageCtx};
use crate::runfs::{self, RunDir, RunError, RunStatus, Status, checkpoint, status::now};
use crate::spec::{Experiment, Precision, StageConfig, StageKind};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What `stageloop run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to run; empty = the whole pipeline with its loops.
    pub stages: Vec<String>,
    /// Override of the experiment seed.
    pub seed: Option<u64>,
    /// Never resume; always start new runs.
    pub fresh: bool,
}

/// One planned stage execution.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    stage: usize,
    iteration: Option<u32>,
}

/// Run the selected stages in order. Stops early (returning `Stopped`) when a stage was stopped
/// by a signal; fails on the first stage that fails.
pub fn run_pipeline(
    exp: &Experiment,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    reporter: &mut dyn Reporter,
) -> Result<Outcome> {
    let selected: Vec<usize> = if opts.stages.is_empty() {
        (0..exp.spec.stage.len()).collect()
    } else {
        let mut idx = Vec::new();
        for name in &opts.stages {
            match exp.stage_index(name) {
                Some(i) => idx.push(i),
                None => {
                    let known: Vec<&str> = exp.spec.stage.iter().map(|s| s.name.as_str()).collect();
                    bail!(
                        "no stage named `{name}` in {} (stages: {})",
                        exp.file.display(),
                        known.join(", ")
                    );
                }
            }
        }
        idx.sort_unstable();
        idx.dedup();
        idx
    };
    let whole = opts.stages.is_empty();
    // The whole pipeline, interrupted in some stage: the stages before it are done; go on there.
    let mut resume_at = if whole && !opts.fresh {
        interrupted_stage(exp, opts.seed.unwrap_or(exp.spec.seed))
    } else {
        None
    };
    if let Some((name, it)) = &resume_at {
        reporter.message(&format!(
            "the pipeline was interrupted in stage `{name}`{}: going on from there (--fresh reruns every stage)",
            it.map(|i| format!(" (loop iteration {i})")).unwrap_or_default()
        ));
    }
    let mut pos = 0;
    let mut iterations = vec![1u32; exp.spec.loops.len()];
    while pos < selected.len() {
        let i = selected[pos];
        let in_loop = exp
            .spec
            .loops
            .iter()
            .position(|l| whole && span(exp, l).is_some_and(|(a, b)| a <= i && i <= b));
        let step = Step {
            stage: i,
            iteration: in_loop.map(|l| iterations[l]),
        };
        let skip = match &resume_at {
            Some((name, it)) if exp.spec.stage[i].name == *name && step.iteration == *it => {
                resume_at = None;
                false
            }
            Some(_) => true,
            None => false,
        };
        if !skip {
            match run_one(exp, opts, &step, stop.clone(), reporter)? {
                Outcome::Stopped => return Ok(Outcome::Stopped),
                Outcome::Done => {}
            }
        }
        // At the end of a loop span: go round again unless done.
        if let Some(l) = in_loop {
            let spec = &exp.spec.loops[l];
            let (a, b) = span(exp, spec).expect("validated");
            if i == b && iterations[l] < spec.times && !until_met(exp, spec, a, b) {
                iterations[l] += 1;
                pos = a;
                continue;
            }
        }
        pos += 1;
    }
    if let Some((name, it)) = resume_at {
        bail!(
            "the pipeline stopped in stage `{name}`{} but this plan never reaches it; \
             run it alone (--stage {name}) or start over (--fresh)",
            it.map(|i| format!(" (loop iteration {i})"))
                .unwrap_or_default()
        );
    }
    Ok(Outcome::Done)
}

/// Whether a run belongs to `seed` (runs of builds that did not record seeds belong to all).
fn same_seed(s: &RunStatus, seed: u64) -> bool {
    s.seed.is_none_or(|x| x == seed)
}

/// Whether every stage of the pipeline has a finished run of `seed` and none was interrupted
/// since: `run --seeds` skips such a seed.
pub fn pipeline_done(exp: &Experiment, seed: u64) -> bool {
    let runs = runfs::runs_with_status(&exp.runs_dir());
    exp.spec.stage.iter().all(|st| {
        runs.iter()
            .rev()
            .filter_map(|(_, s)| s.as_ref())
            .find(|s| s.stage == st.name && same_seed(s, seed))
            .is_some_and(|s| s.status == Status::Done)
    })
}

/// The stage (and loop iteration) where an earlier `run` of the whole pipeline stopped: the most
/// recently started run of any stage, when it was stopped, failed or crashed. The pipeline goes
/// on from there (resuming its checkpoint, or starting the stage anew when it was killed before
/// its first), not from the first stage.
fn interrupted_stage(exp: &Experiment, seed: u64) -> Option<(String, Option<u32>)> {
    let (run, s) = runfs::runs_with_status(&exp.runs_dir())
        .into_iter()
        .rev()
        .find_map(|(r, s)| {
            s.filter(|s| exp.stage_index(&s.stage).is_some() && same_seed(s, seed))
                .map(|s| (r, s))
        })?;
    let interrupted = matches!(
        s.effective_status(&run.path),
        Status::Stopped | Status::Failed | Status::Crashed
    );
    interrupted.then_some((s.stage, s.iteration))
}

fn span(exp: &Experiment, l: &crate::spec::LoopSpec) -> Option<(usize, usize)> {
    Some((exp.stage_index(&l.start)?, exp.stage_index(&l.end)?))
}

/// Whether the loop's stop condition holds on the span's most recent eval.
fn until_met(exp: &Experiment, l: &crate::spec::LoopSpec, a: usize, b: usize) -> bool {
    let (Some(metric), Some(threshold)) = (&l.until_metric, l.until_at_least) else {
        return false;
    };
    exp.spec.stage[a..=b]
        .iter()
        .rev()
        .filter(|s| s.kind == StageKind::Eval)
        .find_map(|s| runfs::latest_run_of(&exp.runs_dir(), &s.name))
        .and_then(|(run, _)| runfs::records::EvalReport::load(&run.eval_json()).ok())
        .and_then(|r| r.metric(metric))
        .is_some_and(|v| v >= threshold)
}

/// The checkpoint a stage starts from: inside a loop's later iterations the span's first stage
/// starts from the span's last training stage; otherwise from its `init` stage's latest
/// finished run.
fn init_checkpoint(exp: &Experiment, cfg: &StageConfig, step: &Step) -> Result<Option<PathBuf>> {
    let mut from = cfg.init.clone();
    if let Some(it) = step.iteration.filter(|&it| it > 1) {
        for l in &exp.spec.loops {
            if let Some((a, b)) = span(exp, l)
                && a == step.stage
            {
                from = exp.spec.stage[a..=b]
                    .iter()
                    .rev()
                    .find(|s| s.kind.trains())
                    .map(|s| s.name.clone())
                    .or(from);
                let _ = it;
            }
        }
    }
    // Without an `init` stage a stage starts from `[model] from`, the pretrained model.
    let Some(name) = from else {
        return Ok(exp.spec.model.from.as_ref().map(PathBuf::from));
    };
    checkpoint_of_stage(exp, &name, &cfg.name).map(Some)
}

/// The latest checkpoint of the most recent finished run of stage `name`.
pub fn checkpoint_of_stage(exp: &Experiment, name: &str, needed_by: &str) -> Result<PathBuf> {
    let done = runfs::runs_with_status(&exp.runs_dir())
        .into_iter()
        .rev()
        .find_map(|(r, s)| {
            let s = s?;
            (s.stage == name && s.status == Status::Done).then_some(r)
        });
    let Some(run) = done else {
        bail!(
            "stage `{needed_by}` starts from `{name}`, which has no finished run in {}; run it first (stageloop run {} --stage {name})",
            exp.runs_dir().display(),
            exp.dir.display()
        );
    };
    checkpoint::latest(&run.path).with_context(|| {
        format!(
            "{}: finished run of `{name}` has no checkpoint",
            run.path.display()
        )
    })
}

/// Whether a run id names `stage`: `<yyyymmdd-HHMMSS>-<stage>`, or with a `-N` suffix.
fn id_names_stage(id: &str, stage: &str) -> bool {
    let Some(rest) = id.get(16..) else {
        return false;
    };
    rest == stage
        || rest.strip_prefix(stage).is_some_and(|t| {
            t.strip_prefix('-')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The newest run folder of `stage` (by its id), when it is newer than every readable run of the
/// stage and its `run.json` exists but cannot be read: `run` must not start over beside it
/// silently. Returns the run and what is wrong with the file.
fn unreadable_run_of(runs_dir: &Path, stage: &str) -> Option<(RunDir, String)> {
    for (run, status) in runfs::runs_with_status(runs_dir).into_iter().rev() {
        match status {
            Some(s) if s.stage == stage => return None,
            Some(_) => {}
            None if id_names_stage(&run.id(), stage) && run.run_json().exists() => {
                let problem = RunStatus::load(&run.path).err()?;
                return Some((run, problem));
            }
            None => {}
        }
    }
    None
}

/// A run folder opened for writing: its status, the checkpoint it resumes from, and the lock
/// that keeps other writers out until it is dropped.
struct Opened {
    run: RunDir,
    status: RunStatus,
    resume: Option<PathBuf>,
    _lock: runfs::lock::RunLock,
}

fn run_one(
    exp: &Experiment,
    opts: &RunOptions,
    step: &Step,
    stop: Arc<AtomicBool>,
    reporter: &mut dyn Reporter,
) -> Result<Outcome> {
    let spec_stage = &exp.spec.stage[step.stage];
    let cfg = exp.resolved(&spec_stage.name).expect("stage exists");
    let init = init_checkpoint(exp, &cfg, step)?;
    let seed = opts.seed.unwrap_or(exp.spec.seed);
    // One writer per run folder: the lock is taken before anything is written (a second resume
    // of the same run stops there) and held until this function returns or the process dies.
    let opened = match resumable_run(exp, opts, &cfg, step)? {
        Some((run, s)) => reopen(run, s, reporter)?,
        None => create(exp, &cfg, step, seed, init.as_deref())?,
    };
    let Opened {
        run,
        mut status,
        resume,
        _lock,
    } = opened;
    // The products' precision, as it will run, in run.json before the stage starts.
    let bf16 = exp.spec.model.precision == Precision::Bf16;
    let runs_bf16 = bf16 && crate::cpu::bf16::available();
    status.precision = Some(
        match (bf16, runs_bf16) {
            (true, true) => "bf16",
            (true, false) => "f32 (bf16 asked; this CPU has no AVX512_BF16)",
            _ => "f32",
        }
        .to_string(),
    );
    status.frozen_base = cfg
        .lora
        .as_ref()
        .and(exp.spec.model.quantize.describe(init.as_deref()))
        .map(str::to_string);
    if let Err(e) = status.save(&run.path) {
        // A new run folder that cannot hold its run.json (a full disk) is removed, not left
        // behind empty.
        if resume.is_none() && status.resumed_at.is_empty() {
            let _ = std::fs::remove_dir_all(&run.path);
        }
        return Err(e.into());
    }
    reporter.started(&status, &run.path);
    let mut ctx = StageCtx::new(
        exp,
        cfg,
        RunDir::new(run.path.clone()),
        status,
        seed,
        init,
        resume,
        stop,
        reporter,
    );
    let (_, result) = crate::cpu::gemm::with_bf16(bf16, || super::run_stage(&mut ctx));
    finish(&mut ctx, &run, result)
}

/// The latest run of this stage (and seed, and loop iteration) when it was interrupted and has
/// a checkpoint to resume from; `None` with `--fresh`.
fn resumable_run(
    exp: &Experiment,
    opts: &RunOptions,
    cfg: &StageConfig,
    step: &Step,
) -> Result<Option<(RunDir, RunStatus)>> {
    if opts.fresh {
        return Ok(None);
    }
    if let Some((run, problem)) = unreadable_run_of(&exp.runs_dir(), &cfg.name) {
        bail!(
            "{problem}\n  the latest run of stage `{}` ({}) cannot be resumed while its \
             run.json is unreadable; fix or delete that file to resume from the run's newest \
             checkpoint, or pass --fresh to start a new run beside it",
            cfg.name,
            run.path.display()
        );
    }
    let seed = opts.seed.unwrap_or(exp.spec.seed);
    let found = runfs::runs_with_status(&exp.runs_dir())
        .into_iter()
        .rev()
        .filter_map(|(r, s)| s.map(|s| (r, s)))
        .find(|(_, s)| s.stage == cfg.name && same_seed(s, seed))
        .filter(|(run, s)| {
            matches!(
                s.effective_status(&run.path),
                Status::Stopped | Status::Failed | Status::Crashed
            ) && s.iteration == step.iteration
                && checkpoint::latest(&run.path).is_some()
        });
    if let Some((run, s)) = &found {
        let changes = config_changes(&s.config, &cfg.to_json());
        if !changes.is_empty() {
            bail!(
                "{}: stage `{}` was started with other settings ({}); resuming would train \
                 with the new values while its run.json records the old ones. Restore the \
                 settings to resume it, or pass --fresh to start a new run",
                run.path.display(),
                cfg.name,
                changes.join(", ")
            );
        }
    }
    Ok(found)
}

/// The settings that differ between a run's recorded config and the one a command would run
/// with, as `key old → new` (keys only one side has are left out: a newer build may record
/// more).
pub fn config_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    old.iter()
        .filter_map(|(k, a)| {
            let b = new.get(k)?;
            (a != b).then(|| format!("{k} {a} → {b}"))
        })
        .collect()
}

/// Take over an interrupted run: lock it, drop half-written checkpoints, and mark it running
/// again from its newest complete checkpoint.
fn reopen(run: RunDir, mut s: RunStatus, reporter: &mut dyn Reporter) -> Result<Opened> {
    let lock = runfs::lock::RunLock::acquire(&run.path)?;
    if let Some(problem) = checkpoint::latest_problem(&run.path) {
        reporter.message(&format!(
            "{problem}: resuming from the newest complete checkpoint instead \
             (--fresh starts over)"
        ));
    }
    let removed = checkpoint::remove_abandoned(&run.path);
    if removed > 0 {
        reporter.message(&format!(
            "removed {removed} half-written checkpoint folder(s) of a killed writer"
        ));
    }
    let ck = checkpoint::latest(&run.path);
    let from = ck
        .as_ref()
        .and_then(|c| crate::model::checkpoint::read_state(c).ok())
        .map_or(0, |st| st.step);
    s.resumed_at.push(runfs::status::Resumed {
        step: from,
        time: now(),
    });
    s.status = Status::Running;
    s.device = Some(crate::model::device_name());
    s.pid = Some(std::process::id());
    s.ended = None;
    s.error = None;
    reporter.message(&format!(
        "resuming {} from {}",
        run.id(),
        ck.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    ));
    Ok(Opened {
        run,
        status: s,
        resume: ck,
        _lock: lock,
    })
}

/// A fresh run folder for the stage, locked, with its first status.
fn create(
    exp: &Experiment,
    cfg: &StageConfig,
    step: &Step,
    seed: u64,
    init: Option<&Path>,
) -> Result<Opened> {
    let run = runfs::create_run_dir(&exp.runs_dir(), &cfg.name)
        .with_context(|| format!("cannot create a run folder in {}", exp.runs_dir().display()))?;
    // A folder that cannot even hold its lock (a full disk) is removed, not left empty.
    let lock = runfs::lock::RunLock::acquire(&run.path).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&run.path);
    })?;
    let status = RunStatus {
        id: run.id(),
        experiment: exp.name.clone(),
        stage: cfg.name.clone(),
        kind: cfg.kind.to_string(),
        status: Status::Running,
        pid: Some(std::process::id()),
        started: Some(now()),
        ended: None,
        progress: runfs::Progress {
            step: 0,
            total: cfg.steps,
        },
        config: cfg.to_json(),
        init: init.map(|p| p.display().to_string()),
        iteration: step.iteration,
        error: None,
        resumed_at: Vec::new(),
        device: Some(crate::model::device_name()),
        seed: Some(seed),
        precision: None,
        frozen_base: None,
        writer: None,
        model: None,
    };
    Ok(Opened {
        run,
        status,
        resume: None,
        _lock: lock,
    })
}

/// Record how the stage ended in `run.json` and tell the reporter.
fn finish(ctx: &mut StageCtx<'_>, run: &RunDir, result: Result<Outcome>) -> Result<Outcome> {
    let mut status = ctx.status.clone();
    status.ended = Some(now());
    let outcome = match &result {
        Ok(Outcome::Done) => {
            status.status = Status::Done;
            Ok(Outcome::Done)
        }
        Ok(Outcome::Stopped) => {
            status.status = Status::Stopped;
            Ok(Outcome::Stopped)
        }
        Err(e) => {
            status.status = Status::Failed;
            status.error = Some(RunError {
                message: format!("{e:#}"),
            });
            Err(anyhow::anyhow!("stage `{}` failed: {e:#}", status.stage))
        }
    };
    // On a full disk the atomic save (a new temp file) fails; overwriting the small file in place
    // usually still works, so the run is not left `running` with its error lost.
    if let Err(e) = status.save(&run.path) {
        status.save_in_place(&run.path).map_err(|_| e)?;
    }
    ctx.reporter.finished(&status);
    outcome
}
