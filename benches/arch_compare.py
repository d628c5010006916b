#!/usr/bin/env python3
"""DeepSeek's efficiency blocks against the plain transformer at laptop scale: the four bundled
experiments experiments/arch-{dense,moe,mla,mtp} (the same task, shape and R1 loop; only
[model] differs) over --seeds, then one table.

    cargo build --release && python3 benches/arch_compare.py --seeds 0,1,2

What it reports, mean ± standard error over the seeds:
  - pretraining loss at the same FLOP budget (the smallest final budget of the four, each run's
    loss curve interpolated there) and at the same wall-clock budget (likewise, over the
    cumulative step time), and the final loss;
  - pretraining wall time and FLOPs (compute/flops);
  - pass@1 and pass@8 of the eval after pretrain -> SFT -> GRPO;
  - KV cache bytes per token (run.json's model facts);
  - sampling: one sequence at a time through burn's ops (`stageloop bench draft`, the path all
    four share), plain, and for arch-mtp with its depth's drafts (kept share, tokens per main
    pass); and the eval stage's wall time, where the dense and MTP models sample on the CPU
    decoder and the MoE and MLA models through burn's ops.
Runs already done are reused (`run --seeds` skips finished seeds).
"""
import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ["arch-dense", "arch-moe", "arch-mla", "arch-mtp"]


def runs_of(exp, stage):
    """The newest finished run of `stage` per seed."""
    best = {}
    for d in glob.glob(os.path.join(ROOT, "experiments", exp, "runs", "*")):
        try:
            st = json.load(open(os.path.join(d, "run.json")))
        except (OSError, ValueError):
            continue
        if st.get("stage") != stage or st.get("status") != "done":
            continue
        seed = st.get("seed", 0)
        if seed not in best or st["started"] > best[seed][0]["started"]:
            best[seed] = (st, d)
    return best


def curve(run_dir):
    """(flops, wall seconds, loss) at each logged step of a pretraining run."""
    out, wall = [], 0.0
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("loss") is None:
            continue
        out.append((r["compute/flops"], r["step"], r["loss"]))
    # Wall time: the run's start to end (run.json), spread evenly over the steps.
    st = json.load(open(os.path.join(run_dir, "run.json")))
    total = st["ended"] - st["started"]
    last = out[-1][1]
    return [(f, total * s / last, l) for f, s, l in out]


def smooth(points, k=5):
    """Each loss replaced by the mean of the k logged values up to it (the loss is noisy)."""
    out = []
    for i, (f, w, _) in enumerate(points):
        window = [p[2] for p in points[max(0, i - k + 1): i + 1]]
        out.append((f, w, sum(window) / len(window)))
    return out


def at(points, x, axis):
    """Loss at `x` on `axis` (0 = FLOPs, 1 = wall seconds), linearly interpolated."""
    for a, b in zip(points, points[1:]):
        if a[axis] <= x <= b[axis]:
            t = (x - a[axis]) / (b[axis] - a[axis]) if b[axis] > a[axis] else 0.0
            return a[2] + t * (b[2] - a[2])
    return points[-1][2] if x >= points[-1][axis] else points[0][2]


def mean_se(xs):
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return m, se


def fmt(xs, digits=3):
    m, se = mean_se(xs)
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--stageloop", default=os.path.join(ROOT, "target", "release", "stageloop"))
    p.add_argument("--no-run", action="store_true", help="only read the runs already there")
    p.add_argument("--prompts", type=int, default=16, help="bench draft prompts")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if not a.no_run:
        for exp in VARIANTS:
            print(f"running {exp} --seeds {a.seeds}", file=sys.stderr)
            subprocess.run([a.stageloop, "run", os.path.join(ROOT, "experiments", exp),
                            "--seeds", a.seeds], check=True, stdout=subprocess.DEVNULL)
    data = {}
    for exp in VARIANTS:
        pre, ev, rl = runs_of(exp, "pretrain"), runs_of(exp, "eval"), runs_of(exp, "grpo")
        missing = [s for s in seeds if s not in pre or s not in ev]
        if missing:
            sys.exit(f"{exp}: no finished runs for seeds {missing}")
        curves = {s: smooth(curve(pre[s][1])) for s in seeds}
        evals = {s: json.load(open(os.path.join(ev[s][1], "eval.json"))) for s in seeds}
        bench = json.loads(subprocess.run(
            [a.stageloop, "bench", "draft", rl[seeds[0]][1], "--prompts", str(a.prompts),
             "--new-tokens", "24", "--json"],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        data[exp] = dict(
            curves=curves,
            evals=evals,
            model=pre[seeds[0]][0].get("model", {}),
            wall=[pre[s][0]["ended"] - pre[s][0]["started"] for s in seeds],
            eval_wall=[ev[s][0]["ended"] - ev[s][0]["started"] for s in seeds],
            bench=bench,
        )
    flop_budget = min(statistics.fmean(c[-1][0] for c in d["curves"].values())
                      for d in data.values())
    wall_budget = min(statistics.fmean(c[-1][1] for c in d["curves"].values())
                      for d in data.values())
    print(f"seeds {a.seeds}; FLOP budget {flop_budget:.3g}, wall budget {wall_budget:.1f} s "
          "(the smallest of the four means)\n")
    print("| | dense | MoE | MLA | MTP |")
    print("|---|---|---|---|---|")

    def row(label, f):
        print(f"| {label} | " + " | ".join(f(data[e]) for e in VARIANTS) + " |")

    row("params", lambda d: f"{d['model'].get('params', 0) / 1e6:.2f} M")
    row("pretrain loss at equal FLOPs",
        lambda d: fmt([at(c, flop_budget, 0) for c in d["curves"].values()]))
    row("pretrain loss at equal wall time",
        lambda d: fmt([at(c, wall_budget, 1) for c in d["curves"].values()]))
    row("final pretrain loss", lambda d: fmt([c[-1][2] for c in d["curves"].values()]))
    row("pretrain FLOPs", lambda d: f"{statistics.fmean(c[-1][0] for c in d['curves'].values()):.3g}")
    row("pretrain wall time (s)", lambda d: fmt(d["wall"], 1))
    row("pass@1 after the loop", lambda d: fmt([e["pass@1"] for e in d["evals"].values()]))
    row("pass@8 after the loop", lambda d: fmt([e["pass@k"] for e in d["evals"].values()]))
    row("KV cache bytes a token", lambda d: str(d["model"].get("kv_bytes_per_token", "?")))
    row("sampling tokens/s, one sequence, burn's ops",
        lambda d: f"{d['bench']['plain_tokens_per_sec']:.0f}")
    row("with MTP drafts: tokens/s (kept, tokens a pass)",
        lambda d: "—" if d["bench"]["draft_tokens_per_sec"] is None else
        f"{d['bench']['draft_tokens_per_sec']:.0f} ({100 * d['bench']['acceptance']:.0f}%, "
        f"{d['bench']['tokens_per_pass']:.2f})")
    row("eval stage wall time (s)", lambda d: fmt(d["eval_wall"], 1))
    json.dump({e: {k: v for k, v in d.items() if k != "curves"} for e, d in data.items()},
              open(os.path.join(ROOT, "target", "arch_compare.json"), "w"), indent=1,
              default=str)


if __name__ == "__main__":
    main()
