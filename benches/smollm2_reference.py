#!/usr/bin/env python3
"""transformers (PyTorch eager) reference for `stageloop bench train --model DIR`: the same
Hugging Face model and weights, the same training step (random tokens, batch x ctx, forward,
cross-entropy, backward, grad-norm clip 1.0, AdamW), full or with LoRA adapters of the same rank
on every block matrix (q/k/v/o/gate/up/down; alpha 2 x rank; written out here, as PEFT's
`LoraLayer` computes it: x W + s (x A) B with W frozen), and the same sampling workload (P prompts
of ctx/8 random tokens, --new-tokens new tokens each, temperature 1, EOS never stops a row, KV
cache). Prints one JSON line with the keys of `stageloop bench train --json`.

    python benches/smollm2_reference.py --model /tmp/smollm2-hf --prompts 16 --json

Runs on CPU with 2 threads (`--threads`), as the machine it is compared on.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        dtype = base.weight.dtype
        self.a = nn.Parameter(torch.randn(base.in_features, rank, dtype=dtype) / rank)
        self.b = nn.Parameter(torch.zeros(rank, base.out_features, dtype=dtype))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.a) @ self.b * self.scale


def add_lora(model, rank):
    for p in model.parameters():
        p.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in TARGETS and isinstance(child, nn.Linear):
                setattr(module, name, LoraLinear(child, rank, 2.0 * rank))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="Hugging Face folder")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tuning)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        a.model, torch_dtype=getattr(torch, a.dtype), attn_implementation="eager"
    )
    vocab = model.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    if a.lora:
        add_lora(model, a.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    tokens = torch.randint(7, vocab, (a.batch, a.ctx + 1))

    def step():
        logits = model(input_ids=tokens[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()

    model.train()
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    train_tps = a.steps * a.batch * a.ctx / (time.perf_counter() - t0)

    model.eval()
    plen = max(a.ctx // 8, 2)
    prompts = torch.randint(7, vocab, (a.prompts, plen))

    def sample(ids):
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=a.new_tokens,
            min_new_tokens=a.new_tokens,
            pad_token_id=0,
            use_cache=True,
        )

    with torch.no_grad():
        sample(prompts[:1])  # warm-up
        rates, start = [], time.perf_counter()
        while not rates or (len(rates) < 10 and time.perf_counter() - start < 1.0):
            t0 = time.perf_counter()
            out = sample(prompts)
            n = (out.shape[1] - plen) * out.shape[0]
            rates.append(n / (time.perf_counter() - t0))
    report = {
        "train_tokens_per_sec": train_tps,
        "sample_tokens_per_sec_cache": statistics.median(rates),
        "sample_tokens_per_sec_nocache": None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params": params,
        "trainable_params": sum(p.numel() for p in trainable),
    }
    if a.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:32} {v}")


if __name__ == "__main__":
    main()
