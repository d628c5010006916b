#!/usr/bin/env python3
"""A LoRA GRPO step at SmolLM2-135M against TRL's GRPOTrainer + PEFT on the same machine, in the
same script run: 8 prompts x 8 completions, at most 32 new tokens, temperature 1, LoRA rank 16
(alpha 32) on q/k/v/o/gate/up/down, beta 0 (no reference model), one iteration, the DAPO loss,
prompts `a+b=` in the model's chat template with the R1 system prompt of
experiments/smollm2-arith. Rounds interleave the two; each round runs --steps steps of each and
the figure is the median step time over steps 2.. of every round (step 1 warms up).

    pip install torch transformers trl peft accelerate datasets
    cargo build && python3 benches/grpo_compare.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf

stageloop runs `stageloop run` on a generated experiment (the GGUF as `from`) and reads
`step_time` from its metrics.jsonl; its peak RSS is that process's. TRL runs on the HF folder
`stageloop export` writes from the same GGUF (dequantised, identical weights), `use_cpu=True`,
`bf16=False` unless --trl-bf16, gradient checkpointing off, torch threads = --threads.
`--precision bf16` and `--micro-batch N` set stageloop's `[model] precision` and `micro_batch`;
`--quantize auto|q8_0|q4_1` its `[model] quantize` (QLoRA: the frozen base as quantised blocks;
`auto` keeps the GGUF's own). `--no-trl` runs only stageloop's rounds (no ratio).
"""
import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM = "Think inside <think> </think>, then give only the final answer inside <answer> </answer>."


def stageloop_round(binary, gguf, steps, precision, micro_batch, quantize, threads):
    d = tempfile.mkdtemp(prefix="grpo-compare-")
    extra = f"micro_batch = {micro_batch}\n" if micro_batch else ""
    spec = f"""name = "grpo-compare"
seed = 0
[model]
from = "{os.path.abspath(gguf)}"
ctx = 96
precision = "{precision}"
quantize = "{quantize}"
system = "{SYSTEM}"
[task]
name = "arith"
difficulty = 1
seed = 1234
heldout = 20
trace = false
[[stage]]
name = "grpo"
kind = "grpo"
steps = {steps}
prompts = 8
group_size = 8
lr = 3e-5
max_new_tokens = 32
checkpoint_every = 1000
{extra}rewards = {{ accuracy = 1.0, format = 0.2 }}
lora = {{ rank = 16, alpha = 32 }}
"""
    with open(os.path.join(d, "experiment.toml"), "w") as f:
        f.write(spec)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(["/usr/bin/time", "-f", "%M", binary, "run", d], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"stageloop run failed:\n{out.stderr[-2000:]}")
    rss_kb = int(out.stderr.strip().splitlines()[-1])
    runs = os.path.join(d, "runs")
    run = os.path.join(runs, sorted(os.listdir(runs))[0])
    times = []
    for line in open(os.path.join(run, "metrics.jsonl")):
        r = json.loads(line)
        if "step_time" in r:
            times.append((r["step"], r["step_time"], r.get("time/rollout"), r.get("time/update")))
    return times, rss_kb * 1024


def trl_round(hf, steps, bf16, threads):
    """TRL's step times (seconds, in order) and this process's peak RSS so far."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    rng = random.Random(1234)
    rows = []
    for _ in range(8 * (steps + 1)):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": [{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": f"{a}+{b}="}],
                     "answer": str(a + b)})

    def accuracy(completions, answer, **_):
        return [1.0 if f"<answer>{x}</answer>" in c[0]["content"] else 0.0
                for c, x in zip(completions, answer)]

    def format_(completions, **_):
        return [0.2 if "<answer>" in c[0]["content"] else 0.0 for c in completions]

    stamps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.append(["begin", time.perf_counter()])

        def on_step_end(self, *a, **k):
            stamps.append(["end", time.perf_counter()])

    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    out_dir = tempfile.mkdtemp(prefix="trl-grpo-")
    cfg = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=bf16, per_device_train_batch_size=64,
        num_generations=8, max_completion_length=32, temperature=1.0, learning_rate=3e-5,
        beta=0.0, num_iterations=1, loss_type="dapo", gradient_checkpointing=False,
        max_steps=steps, logging_steps=1, save_strategy="no", report_to=[], seed=0,
        shuffle_dataset=False,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[accuracy, format_], args=cfg,
        train_dataset=Dataset.from_list(rows), processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"]),
        callbacks=[Clock()],
    )
    trainer.train()
    # TRL generates at the first step of a generation batch, inside the step: begin → end.
    times = []
    begin = None
    for kind, t in stamps:
        if kind == "begin":
            begin = t
        elif begin is not None:
            times.append(t - begin)
            begin = None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return times, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--hf", help="HF folder of the same weights (default: exported from the GGUF)")
    ap.add_argument("--stageloop", default=os.path.join(HERE, "..", "target", "debug", "stageloop"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--quantize", default="none", choices=["none", "auto", "q8_0", "q4_1"])
    ap.add_argument("--no-trl", action="store_true", help="stageloop's rounds only")
    ap.add_argument("--trl-bf16", action="store_true")
    ap.add_argument("--trl-only", action="store_true", help="(internal) one TRL round, as JSON")
    a = ap.parse_args()
    hf = a.hf or "/tmp/smollm2-hf"
    if a.trl_only:
        times, rss = trl_round(hf, a.steps, a.trl_bf16, a.threads)
        print(json.dumps({"times": times, "rss": rss}))
        return
    if not os.path.isdir(hf):
        subprocess.run([a.stageloop, "export", a.gguf, "--format", "hf", "--out", hf], check=True)
    ours, theirs, our_rss, their_rss = [], [], [], []
    for r in range(a.rounds):
        times, rss = stageloop_round(a.stageloop, a.gguf, a.steps, a.precision, a.micro_batch,
                                     a.quantize, a.threads)
        ours += [t for step, t, _, _ in times if step >= 2]
        our_rss.append(rss)
        print(f"round {r + 1} stageloop: {[(s, round(t, 2), ro and round(ro, 2), up and round(up, 2)) for s, t, ro, up in times]}"
              f", peak RSS {rss / 1e9:.2f} GB", file=sys.stderr)
        if a.no_trl:
            continue
        # TRL in a process of its own, so its peak RSS is its own.
        cmd = [sys.executable, __file__, "--gguf", a.gguf, "--hf", hf, "--steps", str(a.steps),
               "--threads", str(a.threads), "--trl-only"] + (["--trl-bf16"] if a.trl_bf16 else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"TRL failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        theirs += res["times"][1:]
        their_rss.append(res["rss"])
        print(f"round {r + 1} TRL: {[round(t, 2) for t in res['times']]}, peak RSS "
              f"{res['rss'] / 1e9:.2f} GB", file=sys.stderr)
    if a.no_trl:
        print(f"stageloop: {statistics.median(ours):.1f} s a step, peak RSS "
              f"{max(our_rss) / 1e9:.2f} GB (precision {a.precision}, quantize {a.quantize}, "
              f"micro_batch {a.micro_batch or 'auto'})")
        return
    s, t = statistics.median(ours), statistics.median(theirs)
    print(f"LoRA GRPO step at SmolLM2-135M, {a.threads} threads, medians of steps 2..{a.steps} over "
          f"{a.rounds} rounds (stageloop precision {a.precision}, quantize {a.quantize}, micro_batch {a.micro_batch or 'auto'}; "
          f"TRL bf16={a.trl_bf16})\n")
    print("| | stageloop | TRL GRPOTrainer + PEFT | ratio |")
    print("|---|---|---|---|")
    print(f"| seconds a step | {s:.1f} | {t:.1f} | {s / t:.2f}× |")
    print(f"| peak RSS GB | {max(our_rss) / 1e9:.2f} | {max(their_rss) / 1e9:.2f} | "
          f"{max(our_rss) / max(their_rss):.2f}× |")


if __name__ == "__main__":
    main()
