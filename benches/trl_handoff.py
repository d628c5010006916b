#!/usr/bin/env python3
"""Hand the bundled r1-arith GRPO stage to TRL and watch it: the check behind issue 28.

1. A copy of experiments/r1-arith trains its tiny model briefly (pretrain 30 steps, then the
   cold-start SFT) so the GRPO stage has a checkpoint to start from.
2. `stageloop export EXP --stage grpo --to trl` writes the hand-off folder.
3. Its train.py runs under TRL on the CPU for 2 steps (`--cpu --max-steps 2`). While it runs,
   `stageloop runs --json` is asked about the folder every half second: the run must show as
   `running` with a step before TRL finishes.
4. After: the run is `done`, its metrics carry TRL's names, and it has no health alert.

    python3 benches/trl_handoff.py [--stageloop target/release/stageloop] [--steps 2]

Needs trl, transformers, peft, datasets and torch (CPU is enough). Exits non-zero when a check
fails; prints what it measured.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRL_NAMES = ["reward", "reward_std", "completions/mean_length", "entropy", "frac_reward_zero_std",
             "rewards/accuracy_reward/mean", "rewards/format_reward/mean", "loss"]


def runs_json(stageloop, folder):
    out = subprocess.run([stageloop, "runs", "--json", folder], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stageloop", default=os.path.join(ROOT, "target", "release", "stageloop"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--keep", help="keep the work folder here instead of a temporary one")
    args = ap.parse_args()
    sl = os.path.abspath(args.stageloop)
    work = args.keep or tempfile.mkdtemp(prefix="trl-handoff-")
    os.makedirs(work, exist_ok=True)
    exp = os.path.join(work, "r1-arith")
    os.makedirs(exp, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "experiments", "r1-arith", "experiment.toml"), exp)
    failures = []

    t0 = time.time()
    subprocess.run([sl, "run", exp, "--stage", "pretrain", "--stage", "sft",
                    "--set", "stage.pretrain.steps=30"], check=True, capture_output=True)
    print(f"local pretrain + sft: {time.time() - t0:.1f} s")

    out = os.path.join(work, "handoff")
    r = subprocess.run([sl, "export", exp, "--stage", "grpo", "--to", "trl", "--out", out],
                       capture_output=True, text=True, check=True)
    print("export --to trl:", len(r.stdout.splitlines()), "files")
    for line in r.stderr.splitlines():
        print("  " + line)

    t0 = time.time()
    proc = subprocess.Popen([sys.executable, os.path.join(out, "train.py"), "--cpu",
                             "--max-steps", str(args.steps), "--stageloop", sl],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_running = None
    while proc.poll() is None:
        rows = runs_json(sl, out)
        if seen_running is None and rows and rows[0]["status"] == "running" and rows[0]["step"] >= 1:
            seen_running = (time.time() - t0, rows[0]["step"])
        time.sleep(0.5)
    log = proc.stdout.read()
    wall = time.time() - t0
    if proc.returncode != 0:
        print(log[-3000:])
        sys.exit(f"train.py exited with {proc.returncode}")
    print(f"TRL run: {args.steps} steps in {wall:.1f} s (process wall time, model load included)")
    if seen_running:
        print(f"seen running by `stageloop runs` at {seen_running[0]:.1f} s, step {seen_running[1]}")
    else:
        failures.append("the run never showed as running with a step while TRL trained")

    rows = runs_json(sl, out)
    if len(rows) != 1:
        sys.exit(f"expected one run in {out}, found {len(rows)}")
    row = rows[0]
    print(f"after: status {row['status']}, step {row['step']}/{row['total']}, alerts {row['alerts']}")
    if row["status"] != "done":
        failures.append(f"status {row['status']}, not done")
    if row["step"] != args.steps:
        failures.append(f"step {row['step']}, not {args.steps}")
    missing = [n for n in TRL_NAMES if n not in row["last"]]
    if missing:
        failures.append(f"TRL metric names missing: {missing}")
    if row["alerts"]:
        failures.append(f"alerts: {row['alerts']}")
    print("TRL's metrics, last values:", {n: round(row["last"][n], 4) for n in TRL_NAMES if n in row["last"]})
    # TRL's own output folder (trainer_state.json in its checkpoints) reads as a `trl` run with
    # the same last values as the callback's log.
    own = runs_json(sl, os.path.join(out, "checkpoints"))
    if len(own) != 1 or own[0]["stage"] != "trl":
        failures.append(f"TRL's output folder read as {[(r['id'], r['stage']) for r in own]}")
    else:
        same = all(abs(own[0]["last"].get(n, float("nan")) - row["last"][n]) < 1e-6
                   for n in ("reward", "loss", "entropy"))
        print(f"TRL's own trainer_state.json: stage {own[0]['stage']}, status {own[0]['status']}, "
              f"step {own[0]['step']}/{own[0]['total']}, same last reward/loss/entropy: {same}")
        if not same:
            failures.append("trainer_state.json's last values differ from the callback's")
    run_dir = os.path.join(out, "runs", row["id"])
    samples = sum(1 for _ in open(os.path.join(run_dir, "samples.jsonl")))
    print(f"samples.jsonl: {samples} lines")
    if samples == 0:
        failures.append("no samples written")
    if failures:
        for f in failures:
            print("FAIL:", f)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
