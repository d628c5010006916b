#!/usr/bin/env python3
"""Quantised decoding against llama.cpp on the same GGUF files: single-stream tokens/s
(`stageloop bench decode` beside llama-cpp-python, rounds interleaved, same thread count),
peak RSS against the file size, and greedy agreement (the first 4 greedy token ids of each
prompt, as `benches/hf_check.py` checks against transformers).

    pip install gguf numpy llama-cpp-python
    cargo build && python3 benches/decode_compare.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf

Besides the given file, makes Q8_0 and Q4_K_M files with llama.cpp's own quantizer
(`llama_model_quantize`) from an F32 GGUF that gguf-py writes from the given file's dequantised
tensors (its metadata copied), so all three hold the same model.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from smollm2_compare import llama_cpp_decode  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at",
    "1, 2, 3, 4,",
    "Once upon a time",
    "The largest planet in the solar system is",
    "import numpy as",
    "Q: What is 12 + 30?\nA:",
]


def f32_gguf(src, dst):
    """A copy of `src` with every tensor dequantised to F32 (gguf-py)."""
    import gguf
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
        elif kind == GGUFValueType.STRING:
            w.add_string(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), kind)
    w.add_file_type(0)  # all F32
    for t in r.tensors:
        v = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape)]
        w.add_tensor(t.name, v.reshape(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, ftype, threads):
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"llama_model_quantize {dst} failed: {rc}")


def ours(binary, gguf, threads, extra=()):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "bench", "decode", gguf, "--json", *extra], check=True,
                         capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def greedy_agreement(binary, gguf, threads):
    """Prompts whose first 4 greedy ids agree, stageloop vs llama.cpp (the same prompt ids)."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_ctx=256, verbose=False)
    agree = 0
    for p in PROMPTS:
        out = subprocess.run([binary, "sample", gguf, "--prompt", p, "--temperature", "0",
                              "--max-new-tokens", "4", "--json"], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        theirs = []
        for tok in llm.generate(r["prompt_ids"], top_k=1, temp=0.0, reset=True):
            theirs.append(int(tok))
            if len(theirs) == 4:
                break
        mine = r["token_ids"][:4]
        agree += mine == theirs[: len(mine)] and len(mine) == 4
        if mine != theirs:
            print(f"  differs on {p!r}: stageloop {mine} llama.cpp {theirs}", file=sys.stderr)
    return agree


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--stageloop", default=os.path.join(HERE, "..", "target", "debug", "stageloop"))
    ap.add_argument("--out-dir", default="/tmp/stageloop-quants")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    f32 = os.path.join(a.out_dir, "model.f32.gguf")
    if not os.path.exists(f32):
        f32_gguf(a.gguf, f32)
    files = {"given": a.gguf}
    for label, ftype in (("Q8_0", 7), ("Q4_K_M", 15)):
        path = os.path.join(a.out_dir, f"model.{label}.gguf")
        if not os.path.exists(path):
            quantize(f32, path, ftype, a.threads)
        files[label] = path
    print(f"{a.threads} threads, prompt 16 + 64 new tokens, medians of {a.rounds} interleaved "
          "rounds\n")
    print("| file | MB | stageloop tokens/s | llama.cpp tokens/s | ratio | peak RSS MB "
          "(× file) | greedy 4 ids agree |")
    print("|---|---|---|---|---|---|---|")
    for label, path in files.items():
        mine, theirs, rss = [], [], []
        for _ in range(a.rounds):
            r = ours(a.stageloop, path, a.threads)
            mine.append(r["tokens_per_sec"])
            rss.append(r["peak_rss_bytes"])
            theirs.append(llama_cpp_decode(path, 16, 64, a.threads))
        s, t = statistics.median(mine), statistics.median(theirs)
        size = os.path.getsize(path)
        agree = greedy_agreement(a.stageloop, path, a.threads)
        name = os.path.basename(path) if label == "given" else label
        print(f"| {name} | {size / 1e6:.0f} | {s:.1f} | {t:.1f} | {s / t:.2f}× | "
              f"{max(rss) / 1e6:.0f} ({max(rss) / size:.2f}×) | {agree}/{len(PROMPTS)} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
