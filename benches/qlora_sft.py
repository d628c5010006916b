#!/usr/bin/env python3
"""QLoRA against LoRA over the f32 base: the cold-start SFT of experiments/smollm2-arith (LoRA
rank 16 on every block matrix, 40 steps) and its eval, once per `[model] quantize` value, in one
script run. Reports each run's final training loss (the mean of the last --tail steps, and the
last step's), its relative difference from the f32 base's, and the eval's pass@1 with its
standard error over prompts (each prompt's accuracy is the mean over its k samples).

    cargo build --release
    python3 benches/qlora_sft.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf

The experiment is copied to a temporary folder with `from` made absolute; the stages run as
`stageloop run DIR --stage sft --stage eval-sft --set model.quantize=Q`.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
EXP = os.path.join(HERE, "..", "experiments", "smollm2-arith", "experiment.toml")


def run_of(runs, stage):
    """The run folder whose run.json names `stage`."""
    found = []
    for n in sorted(os.listdir(runs)):
        p = os.path.join(runs, n, "run.json")
        if os.path.isfile(p) and json.load(open(p)).get("stage") == stage:
            found.append(os.path.join(runs, n))
    if not found:
        sys.exit(f"no run of {stage} in {runs}")
    return found[-1]


def one(binary, gguf, quantize, tail):
    d = tempfile.mkdtemp(prefix=f"qlora-sft-{quantize}-")
    spec = open(EXP).read().replace('from = "models/SmolLM2-135M-Instruct.Q4_1.gguf"',
                                    f'from = "{os.path.abspath(gguf)}"')
    with open(os.path.join(d, "experiment.toml"), "w") as f:
        f.write(spec)
    cmd = [binary, "run", d, "--stage", "sft", "--stage", "eval-sft",
           "--set", f"model.quantize={quantize}"]
    out = subprocess.run(["/usr/bin/time", "-f", "%M %e"] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    rss_kb, wall = out.stderr.strip().splitlines()[-1].split()
    runs = os.path.join(d, "runs")
    sft = run_of(runs, "sft")
    losses = {}
    for line in open(os.path.join(sft, "metrics.jsonl")):
        r = json.loads(line)
        if "loss" in r:
            losses[r["step"]] = r["loss"]
    steps = sorted(losses)
    last = [losses[s] for s in steps[-tail:]]
    ev = run_of(runs, "eval-sft")
    per_prompt = defaultdict(list)
    for line in open(os.path.join(ev, "samples.jsonl")):
        r = json.loads(line)
        if not r.get("greedy"):
            per_prompt[r["prompt"]].append(1.0 if r.get("reward", 0) >= 1.0 else 0.0)
    accs = [statistics.mean(v) for v in per_prompt.values()]
    p1 = statistics.mean(accs)
    se = statistics.stdev(accs) / math.sqrt(len(accs))
    status = json.load(open(os.path.join(sft, "run.json")))
    return {
        "quantize": quantize,
        "frozen_base": status.get("frozen_base", "f32"),
        "tail_loss": statistics.mean(last),
        "last_loss": losses[steps[-1]],
        "pass1": p1,
        "se": se,
        "prompts": len(accs),
        "rss_gb": int(rss_kb) * 1024 / 1e9,
        "wall_s": float(wall),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--stageloop", default=os.path.join(HERE, "..", "target", "release", "stageloop"))
    ap.add_argument("--quantize", default="none,auto,q8_0")
    ap.add_argument("--tail", type=int, default=10)
    a = ap.parse_args()
    rows = []
    for q in a.quantize.split(","):
        rows.append(one(a.stageloop, a.gguf, q, a.tail))
        print(json.dumps(rows[-1]), file=sys.stderr)
    base = rows[0]
    print(f"smollm2-arith cold-start SFT (LoRA r16, 40 steps) and its eval, by [model] quantize; "
          f"loss = mean of the last {a.tail} steps\n")
    print("| quantize | frozen base | loss | vs f32 | last step | pass@1 ± SE | peak RSS GB | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = (r["tail_loss"] - base["tail_loss"]) / base["tail_loss"] * 100
        print(f"| {r['quantize']} | {r['frozen_base']} | {r['tail_loss']:.4f} | {rel:+.2f}% | "
              f"{r['last_loss']:.4f} | {r['pass1']:.3f} ± {r['se']:.3f} | {r['rss_gb']:.2f} | "
              f"{r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
