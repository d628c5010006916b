#!/usr/bin/env python3
"""Greedy agreement of stageloop's pretrained-model path with transformers and llama.cpp.

Outside `cargo test` (needs torch, transformers, llama-cpp-python from PyPI). Checks:

1. tiny Llama / Llama-3 (rope scaling) / Qwen2 / Qwen3 models written by transformers'
   `save_pretrained`: `stageloop sample DIR --temperature 0 --json` token ids equal
   `generate(do_sample=False)`;
2. SmolLM2-135M-Instruct's GGUF: our greedy continuation vs llama.cpp's (Q4 kernels round
   differently: reports how many tokens agree), and vs transformers on the same weights
   dequantised (`stageloop export FILE.gguf --format hf`);
3. an exported stageloop run (`stageloop export RUN --format hf`) reloads in transformers with
   the same greedy ids as `stageloop sample RUN`.

Usage: python3 benches/hf_check.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [--run RUN]
       [--bin target/debug/stageloop] [--work /tmp/hf_check] [--tokens 32]
Exit status 1 when a check that must agree exactly does not.
"""
import argparse, json, os, shutil, subprocess, sys, time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()

PROMPTS = ["The capital of France is", "def fibonacci(n):", "12 + 35 = 47, 8 + 9 ="]
CHAT = ["What is 7 times 8?", "Name three colours.", "Write a haiku about rain."]


def ours(bin_, target, prompt, tokens, chat=False):
    cmd = [bin_, "sample", target, "--prompt", prompt, "--temperature", "0",
           "--max-new-tokens", str(tokens), "--json"] + (["--chat"] if chat else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[0])


def hf_greedy(model, ids, tokens, eos):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=tokens,
                             eos_token_id=eos, pad_token_id=eos[0] if eos else 0)
    new = out[0, len(ids):].tolist()
    for i, t in enumerate(new):
        if t in eos:
            return new[:i]
    return new


def eos_of(d):
    c = json.load(open(os.path.join(d, "config.json")))
    e = c.get("eos_token_id")
    return e if isinstance(e, list) else [e]


def compare(name, bin_, d, tokens, prompts, chat=False):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    eos = eos_of(d)
    ok = True
    for p in prompts:
        o = ours(bin_, d, p, tokens, chat)
        h = hf_greedy(model, o["prompt_ids"], tokens, eos)
        same = o["token_ids"] == h
        ok &= same
        agree = next((i for i, (a, b) in enumerate(zip(o["token_ids"], h)) if a != b),
                     min(len(h), len(o["token_ids"])))
        print(f"  {name:28s} {p[:28]!r:32s} {'same' if same else 'DIFFER'} "
              f"({agree}/{len(h)} tokens agree)")
    return ok


def tiny_models(work, tok_dir):
    """Random tiny models of each family, with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config
    common = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
    cfgs = {
        "llama (gqa, untied)": LlamaConfig(**common, tie_word_embeddings=False),
        "llama3 (rope scaling, tied)": LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "qwen2 (qkv bias)": Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0),
        "qwen3 (qk norm, head_dim 32)": Qwen3Config(**{**common, "num_attention_heads": 4},
                                                    head_dim=32, tie_word_embeddings=True),
    }
    out = {}
    for i, (name, cfg) in enumerate(cfgs.items()):
        torch.manual_seed(i)
        m = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():  # larger weights than the default init: decisive greedy picks
            for p in m.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
                else:
                    p.add_(torch.randn_like(p) * 0.1)
        d = os.path.join(work, "tiny-" + name.split()[0])
        m.save_pretrained(d, safe_serialization=True)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(os.path.join(tok_dir, f), d)
        out[name] = d
    return out


def llama_cpp_check(bin_, gguf, tokens):
    from llama_cpp import Llama
    llm = Llama(model_path=gguf, n_ctx=512, n_threads=2, verbose=False)
    total = agree_all = 0
    for p in CHAT:
        o = ours(bin_, gguf, p, tokens, chat=True)
        llm.reset()
        theirs = []
        for t in llm.generate(o["prompt_ids"], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if t == llm.token_eos() or len(theirs) >= tokens:
                break
            theirs.append(t)
        agree = next((i for i, (a, b) in enumerate(zip(o["token_ids"], theirs)) if a != b),
                     min(len(theirs), len(o["token_ids"])))
        total += max(len(theirs), len(o["token_ids"]))
        agree_all += agree
        print(f"  llama.cpp vs stageloop   {p[:28]!r:32s} first {agree} of "
              f"{max(len(theirs), len(o['token_ids']))} tokens agree")
    return agree_all, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--run", help="a stageloop run or checkpoint to export and compare")
    ap.add_argument("--bin", default="target/debug/stageloop")
    ap.add_argument("--work", default="/tmp/hf_check")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--only-run", action="store_true", help="only the exported-run check")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    ok = True
    t0 = time.time()
    hf = os.path.join(a.work, "smollm2-hf")
    subprocess.run([a.bin, "export", a.gguf, "--format", "hf", "--out", hf], check=True,
                   capture_output=True)
    if not a.only_run:
        print("1. tiny models written by transformers' save_pretrained")
        for name, d in tiny_models(a.work, hf).items():
            ok &= compare(name, a.bin, d, a.tokens, PROMPTS)
        print("2. SmolLM2-135M-Instruct GGUF")
        ok &= compare("gguf→hf vs transformers", a.bin, hf, a.tokens, CHAT, chat=True)
        try:
            agree, total = llama_cpp_check(a.bin, a.gguf, a.tokens)
            print(f"  llama.cpp agreement: {agree} of {total} tokens ({100 * agree / max(total, 1):.0f}%)")
        except ImportError:
            print("  llama-cpp-python is not installed: skipped")
    if a.run:
        print("3. exported stageloop run")
        out = os.path.join(a.work, "run-hf")
        subprocess.run([a.bin, "export", a.run, "--format", "hf", "--out", out], check=True,
                       capture_output=True)
        tok = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        prompts = []
        with open(os.path.join(a.run, "samples.jsonl")) as f:
            for line in f:
                p = json.loads(line).get("prompt")
                if p and p not in prompts:
                    prompts.append(p)
                if len(prompts) == 3:
                    break
        for p in prompts:
            o = ours(a.bin, a.run, p, a.tokens)
            # A pretrained-derived run renders its prompt (chat template, system prompt):
            # feed transformers the same ids.
            ids = o.get("prompt_ids") or tok(p)["input_ids"]
            h = hf_greedy(model, ids, a.tokens, eos_of(out))
            same = o["token_ids"] == h
            ok &= same
            print(f"  run export {p!r:40s} {'same' if same else 'DIFFER'}: {tok.decode(h)!r}")
    print(f"{'all exact checks agree' if ok else 'SOME CHECKS DIFFER'} ({time.time() - t0:.0f} s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
