#!/usr/bin/env python3
"""Run `stageloop bench` and the PyTorch reference back to back, three rounds, for 1, 16 and 64
prompts, and print the medians and their ratios as a Markdown table (the README's performance
table comes from this output).

    cargo build && python benches/compare.py                      # needs `pip install torch`
    python benches/compare.py --rounds 3 --prompts 1,16,64 --stageloop target/debug/stageloop

Each round runs, for each prompt count, `stageloop bench train --json --prompts P` and then
`torch_reference.py --json --prompts P` with this Python, so the two share the machine's state.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", default="1,16,64")
    p.add_argument("--stageloop", default=os.path.join(HERE, "..", "target", "debug", "stageloop"))
    a = p.parse_args()
    prompts = [int(x) for x in a.prompts.split(",")]
    results = {(who, n): [] for who in ("stageloop", "torch") for n in prompts}
    for r in range(a.rounds):
        for n in prompts:
            results[("stageloop", n)].append(run([a.stageloop, "bench", "train", "--json", "--prompts", str(n)]))
            results[("torch", n)].append(
                run([sys.executable, os.path.join(HERE, "torch_reference.py"), "--json", "--prompts", str(n)])
            )
            print(f"round {r + 1}/{a.rounds}, {n} prompts done", file=sys.stderr)

    def med(who, n, key):
        return statistics.median(x[key] for x in results[(who, n)])

    def row(label, key, n, fmt="{:,.0f}"):
        s, t = med("stageloop", n, key), med("torch", n, key)
        return f"| {label} | {fmt.format(s)} | {fmt.format(t)} | {s / t:.2f}× |"

    print(f"Medians of {a.rounds} back-to-back rounds.\n")
    print("| | stageloop | PyTorch eager | ratio |")
    print("|---|---|---|---|")
    # Every bench run trains the same model on the same batch: the training median is over all
    # of them (rounds × prompt counts), on each side.
    train = {who: statistics.median(x["train_tokens_per_sec"] for n in prompts for x in results[(who, n)])
             for who in ("stageloop", "torch")}
    print(f"| training tokens/s (all {a.rounds * len(prompts)} runs) | {train['stageloop']:,.0f} | "
          f"{train['torch']:,.0f} | {train['stageloop'] / train['torch']:.2f}× |")
    for n in prompts:
        print(row(f"sampling tokens/s, KV cache, {n} prompts", "sample_tokens_per_sec_cache", n))
    for n in prompts:
        print(row(f"sampling tokens/s, no cache, {n} prompts", "sample_tokens_per_sec_nocache", n))
    for n in prompts:
        s = med("stageloop", n, "sample_tokens_per_sec_cache") / med("stageloop", n, "sample_tokens_per_sec_nocache")
        t = med("torch", n, "sample_tokens_per_sec_cache") / med("torch", n, "sample_tokens_per_sec_nocache")
        print(f"| KV-cache speed-up, {n} prompts | {s:.1f}× | {t:.1f}× | |")
    s = max(x["peak_rss_bytes"] for n in prompts for x in results[("stageloop", n)]) / 1e9
    t = max(x["peak_rss_bytes"] for n in prompts for x in results[("torch", n)]) / 1e9
    print(f"| peak RSS (largest run) | {s:.2f} GB | {t:.2f} GB | {s / t:.2f}× |")


if __name__ == "__main__":
    main()
