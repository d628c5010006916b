#!/usr/bin/env python3
"""`stageloop export --format hf` of a model with DeepSeek blocks against transformers' own
DeepseekV3ForCausalLM: a tiny model with MLA and routed experts (and one with MLA alone) is
trained briefly, exported, loaded with `AutoModelForCausalLM.from_pretrained`, and its greedy
continuations and their log-probabilities compared with `stageloop sample`'s on held-out
prompts; the folder's tokenizer must also encode each prompt to the same ids. Any run folders
given on the command line (e.g. experiments/arch-mla/runs/<id>) are checked the same way.

    cargo build --release && python3 benches/deepseek_export_check.py [RUN ...]

Needs torch and transformers (5.x, which has DeepseekV3).
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "stageloop")

SPEC = """name = "ds"
seed = 1
[model]
d_model = 64
layers = 2
heads = 4
mlp = 192
ctx = 48
{blocks}
[task]
name = "arith"
difficulty = 1
heldout = 20
[[stage]]
name = "pre"
kind = "pretrain"
steps = 80
batch = 32
lr = 3e-3
"""

MOE_MLA = "[model.moe]\nexperts = 6\ntop_k = 2\nshared = 1\nbias_rate = 0.01\n[model.mla]\nkv_rank = 24\nrope_dim = 8\n"
MLA = "[model.mla]\nkv_rank = 24\nrope_dim = 8\n"
PROMPTS = ["12+7=", "3+45=", "60+8=", "9+9=", "27+31="]


def sl(*args):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True).stdout


def check(run, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tempfile.mkdtemp(prefix="ds-hf-")
    sl("export", run, "--format", "hf", "--out", out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    worst, same, n = 0.0, 0, 0
    for p in PROMPTS:
        s = json.loads(sl("sample", run, "--prompt", p, "--temperature", "0",
                          "--max-new-tokens", "8", "--json").strip().splitlines()[-1])
        ids = s["prompt_ids"]
        assert tok(p)["input_ids"] == ids, (p, tok(p)["input_ids"], ids)
        seq = list(ids)
        lps = []
        with torch.no_grad():
            for _ in range(len(s["token_ids"])):
                logits = model(torch.tensor([seq])).logits[0, -1]
                lp = torch.log_softmax(logits.double(), -1)
                nxt = int(lp.argmax())
                lps.append(float(lp[nxt]))
                seq.append(nxt)
        got = seq[len(ids):]
        n += 1
        same += got == s["token_ids"]
        if got == s["token_ids"]:
            worst = max(worst, max(abs(a - b) for a, b in zip(lps, s["logprobs"])))
    print(f"{name}: {cfg['architectures'][0]}, experts {cfg['n_routed_experts'] if cfg['first_k_dense_replace'] == 0 else 0}, "
          f"latent {cfg['kv_lora_rank']} + rope {cfg['qk_rope_head_dim']}: greedy tokens equal on "
          f"{same}/{n} prompts, worst log-probability difference {worst:.2e}")
    return same == n and worst < 1e-3


def main():
    ok = True
    for name, blocks in [("moe+mla", MOE_MLA), ("mla", MLA)]:
        d = tempfile.mkdtemp(prefix=f"ds-{name}-")
        open(os.path.join(d, "experiment.toml"), "w").write(SPEC.format(blocks=blocks))
        sl("run", d)
        run = sorted(os.path.join(d, "runs", r) for r in os.listdir(os.path.join(d, "runs")))[-1]
        ok &= check(run, name)
    for run in sys.argv[1:]:
        ok &= check(run, run)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
