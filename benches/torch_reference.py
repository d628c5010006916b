#!/usr/bin/env python3
"""PyTorch eager reference for `stageloop bench`: the same model (token embedding, RoPE with
rotate-half pairs, RMSNorm, SwiGLU MLP, causal multi-head attention, untied head, no biases), the
same training step (forward, cross-entropy, backward, grad-norm clip, AdamW) and the same sampling
workload (prompts of ctx/8 random tokens, `--new-tokens` new tokens each, temperature 1, EOS
never stops a row), with and without a KV cache. Prints one JSON line with the keys of
`stageloop bench train --json`.

    python benches/torch_reference.py --json            # defaults match `stageloop bench train`

Runs on CPU with 2 threads (`--threads`), as the machine it is compared on.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=1e-5)
        self.gate_up = nn.Linear(d, 2 * mlp, bias=False)
        self.down = nn.Linear(mlp, d, bias=False)
        self.mlp = mlp

    def forward(self, x, cos, sin, cache=None):
        b, t, d = x.shape
        h, hd = self.heads, d // self.heads
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        causal = q.shape[2] == k.shape[2]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        g, u = self.gate_up(self.mlp_norm(x)).split(self.mlp, dim=-1)
        return x + self.down(F.silu(g) * u)


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Gpt(nn.Module):
    def __init__(self, vocab, d, layers, heads, mlp, ctx, theta=10000.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, mlp) for _ in range(layers))
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        freqs = 1.0 / theta ** (torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = torch.arange(ctx, dtype=torch.float64)[:, None] * freqs[None, :]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, tokens, start=0, caches=None):
        t = tokens.shape[1]
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x = self.embed(tokens)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, None if caches is None else caches[i])
        return self.head(self.norm(x))


def main():
    p = argparse.ArgumentParser()
    for name, default in [("d-model", 256), ("layers", 4), ("heads", 4), ("mlp", 1024), ("ctx", 128),
                          ("batch", 32), ("prompts", 16), ("new-tokens", 64), ("steps", 5), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vocab = 64
    model = Gpt(vocab, a.d_model, a.layers, a.heads, a.mlp, a.ctx)
    params = sum(x.numel() for x in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randint(7, vocab, (a.batch, a.ctx + 1))

    def step():
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), data[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    train_tps = a.steps * a.batch * a.ctx / (time.perf_counter() - t0)

    prompt_len = max(a.ctx // 8, 2)
    new = min(a.new_tokens, a.ctx - prompt_len)
    prompts = torch.randint(7, vocab, (a.prompts, prompt_len))

    @torch.no_grad()
    def sample(use_cache):
        seq = prompts.clone()
        if use_cache:
            caches = [dict() for _ in model.blocks]
            logits = model(seq, 0, caches)
        else:
            logits = model(seq)
        for i in range(new):
            probs = torch.softmax(logits[:, -1], dim=-1)
            nxt = torch.multinomial(probs, 1)
            seq = torch.cat([seq, nxt], dim=1)
            if i + 1 == new:
                break
            logits = model(nxt, seq.shape[1] - 1, caches) if use_cache else model(seq)
        return a.prompts * new

    model.eval()
    rates = {}
    # As in `stageloop bench train`: timed calls repeat until 1 s has passed (at most 10), median rate.
    for use_cache in (True, False):
        sample(use_cache)
        start, calls = time.perf_counter(), []
        while not calls or (len(calls) < 10 and time.perf_counter() - start < 1.0):
            t0 = time.perf_counter()
            n = sample(use_cache)
            calls.append(n / (time.perf_counter() - t0))
        rates[use_cache] = statistics.median(calls)
    out = {
        "train_tokens_per_sec": train_tps,
        "sample_tokens_per_sec_cache": rates[True],
        "sample_tokens_per_sec_nocache": rates[False],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params": params,
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32} {v:,.0f}")


if __name__ == "__main__":
    main()
