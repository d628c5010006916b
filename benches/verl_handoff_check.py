#!/usr/bin/env python3
"""`stageloop export EXP --stage grpo --to verl`, checked as far as a machine without a GPU can:

1. the export of experiments/smollm2-arith's GRPO stage (its SFT must have run:
   `stageloop run experiments/smollm2-arith --stage sft`);
2. verl's own Hydra config composes with every override (`main_ppo --cfg job`), and the
   composed values are the stage's;
3. prepare_data.py writes the parquet verl reads, with verl's columns;
4. reward.py's batch `compute_score` gives stageloop's weighted rewards.

Training itself needs verl's rollout engine (vLLM or SGLang) on a GPU, which this check does
not have. Needs verl (pip install --no-deps verl, plus ray, tensordict, omegaconf, hydra-core,
codetiming), pandas and pyarrow.

    python3 benches/verl_handoff_check.py [--stageloop target/release/stageloop]
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stageloop", default=os.path.join(ROOT, "target", "release", "stageloop"))
    ap.add_argument("--exp", default=os.path.join(ROOT, "experiments", "smollm2-arith"))
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="verl-handoff-")
    r = subprocess.run([args.stageloop, "export", args.exp, "--stage", "grpo", "--to", "verl", "--out", out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr)
    print("export --to verl:", len(r.stdout.splitlines()), "files;", r.stderr.count("not carried over"), "settings not carried over")
    fails = []

    overrides = open(os.path.join(out, "overrides.txt")).read().split()
    c = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", "--cfg", "job"] + overrides,
                       capture_output=True, text=True, cwd=out)
    if c.returncode != 0:
        sys.exit("verl's config does not compose:\n" + c.stderr[-2000:])
    cfg = yaml.safe_load(c.stdout)
    stage = json.load(open(os.path.join(out, "stage.json")))["stage_config"]
    actor, rollout = cfg["actor_rollout_ref"]["actor"], cfg["actor_rollout_ref"]["rollout"]
    want = [
        ("rollout.n", rollout["n"], stage["group_size"]),
        ("data.train_batch_size", cfg["data"]["train_batch_size"], stage["prompts"]),
        ("actor.optim.lr", actor["optim"]["lr"], stage["lr"]),
        ("actor.clip_ratio_low", actor["clip_ratio_low"], stage["epsilon"]),
        ("actor.clip_ratio_high", actor["clip_ratio_high"], stage["epsilon_high"]),
        ("data.max_response_length", cfg["data"]["max_response_length"], stage["max_new_tokens"]),
        ("trainer.total_training_steps", cfg["trainer"]["total_training_steps"], stage["steps"]),
        ("actor.ppo_epochs", actor["ppo_epochs"], stage["num_iterations"]),
        ("algorithm.adv_estimator", cfg["algorithm"]["adv_estimator"], "grpo"),
        ("model.lora_rank", cfg["actor_rollout_ref"]["model"]["lora_rank"], (stage.get("lora") or {}).get("rank", 0)),
    ]
    for name, got, expected in want:
        ok = got == expected
        print(f"  {name:32} verl {got!r:12} stage {expected!r:12} {'ok' if ok else 'DIFFERENT'}")
        if not ok:
            fails.append(name)

    p = subprocess.run([sys.executable, "prepare_data.py"], capture_output=True, text=True, cwd=out)
    if p.returncode != 0:
        sys.exit(p.stderr)
    import pandas as pd
    df = pd.read_parquet(os.path.join(out, "data", "train.parquet"))
    print(f"data/train.parquet: {len(df)} rows, columns {sorted(df.columns)}")
    for col in ["data_source", "prompt", "ability", "reward_model", "extra_info"]:
        if col not in df.columns:
            fails.append(f"column {col}")

    spec = importlib.util.spec_from_file_location("reward", os.path.join(out, "reward.py"))
    reward = importlib.util.module_from_spec(spec)
    os.environ["STAGELOOP"] = args.stageloop
    spec.loader.exec_module(reward)
    row = df.iloc[0]
    answer = row["reward_model"]["ground_truth"]
    completions = [f"<think></think><answer>{answer}</answer>", "<think></think><answer>-1</answer>", f"{answer}"]
    scores = reward.compute_score([row["data_source"]] * 3, completions, [answer] * 3,
                                  [dict(row["extra_info"])] * 3)
    weights = {r["name"]: r["weight"] for r in json.load(open(os.path.join(out, "stage.json")))["rewards"]}
    expected = [weights.get("accuracy", 0) + weights.get("format", 0), weights.get("format", 0), 0.0]
    print("reward.py scores:", [round(s["score"], 4) for s in scores], "expected", expected)
    if [round(s["score"], 6) for s in scores] != [round(e, 6) for e in expected]:
        fails.append("reward.py scores")
    if fails:
        sys.exit(f"FAIL: {fails}")
    print("ok (training itself needs a GPU with vLLM or SGLang; not run here)")


if __name__ == "__main__":
    main()
