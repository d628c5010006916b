"""Train a stageloop stage with TRL (GRPOTrainer or SFTTrainer), reading the mapping of its
settings from stage.json beside this file. Rewards come from stageloop's own verifiers: each
batch of completions is piped to `stageloop score`. While it trains, the script writes a
stageloop run folder (run.json, metrics.jsonl with TRL's metric names, samples.jsonl) under
runs/, so `stageloop tui` and `stageloop runs` show the run beside the local ones.

    python3 train.py                                  # one machine
    accelerate launch --num_processes 8 train.py      # several GPUs (see README.md)
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rank0():
    return int(os.environ.get("RANK", "0")) == 0


class RunFolder:
    """A stageloop run folder: run.json rewritten atomically, metrics and samples appended one
    write per line."""

    def __init__(self, runs_dir, spec):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        base = f"{stamp}-{spec['stage']}"
        os.makedirs(runs_dir, exist_ok=True)
        for n in range(1, 1000):
            self.id = base if n == 1 else f"{base}-{n}"
            self.dir = os.path.join(runs_dir, self.id)
            try:
                os.mkdir(self.dir)
                break
            except FileExistsError:
                continue
        import torch

        self.status = {
            "id": self.id,
            "experiment": spec["experiment"],
            "stage": spec["stage"],
            "kind": spec["kind"],
            "status": "running",
            "started": time.time(),
            "ended": None,
            "progress": {"step": 0, "total": spec["config"]["max_steps"]},
            "config": spec["stage_config"],
            "seed": spec["seed"],
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "writer": "trl",
        }
        self.save()

    def save(self):
        tmp = os.path.join(self.dir, ".run.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.status, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, "run.json"))

    def append(self, name, record):
        line = json.dumps(record, allow_nan=False) + "\n"
        fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


class Scorer:
    """stageloop's verifiers over a batch: one `stageloop score` call per batch, shared by the
    reward functions (TRL calls each with the same completions)."""

    def __init__(self, spec, stageloop, run):
        self.cmd = [stageloop] + spec["scorer"]
        self.reads_answer = spec["scorer_reads_answer"]
        self.weights = {r["name"]: r["weight"] for r in spec["rewards"]}
        self.sample_every = max(1, int(spec.get("sample_every") or 1))
        self.group = spec["config"].get("num_generations", 1)
        self.run = run
        self.step = 0
        self.key = None
        self.scores = []

    def score(self, problems, completions, answers):
        key = (tuple(problems), tuple(completions))
        if key == self.key:
            return self.scores
        if self.reads_answer:
            lines = [json.dumps({"completion": c, "answer": a}) for c, a in zip(completions, answers)]
        else:
            lines = [json.dumps({"prompt": p, "completion": c}) for p, c in zip(problems, completions)]
        out = subprocess.run(
            self.cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            sys.exit(f"{' '.join(self.cmd)} failed: {out.stderr.strip()}")
        self.scores = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
        self.key = key
        if self.run is not None and (self.step % self.sample_every == 0 or self.step <= 1):
            for i, (p, c, a, s) in enumerate(zip(problems, completions, answers, self.scores)):
                rewards = {k: float(s.get(k, 0.0)) for k in ("accuracy", "format", "partial") if k in s}
                total = sum(self.weights.get(k, 0.0) * v for k, v in rewards.items())
                self.run.append(
                    "samples.jsonl",
                    {"step": self.step, "prompt": p, "completion": c, "answer": a,
                     "rewards": rewards, "reward": total, "group": i // max(1, self.group)},
                )
        return self.scores

    def reward(self, name):
        def fn(completions, problem, answer, **_):
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            return [float(s.get(name, 0.0)) for s in self.score(problem, texts, answer)]

        fn.__name__ = f"{name}_reward"
        return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=os.path.join(HERE, "runs"), help="where the run folder goes")
    ap.add_argument("--stageloop", default=None, help="the stageloop binary (default: stage.json's, else $STAGELOOP, else on PATH)")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke test)")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU in f32 (no bf16)")
    ap.add_argument("--vllm", action="store_true", help="generate with vLLM (TRL's use_vllm; GRPO only)")
    ap.add_argument("--output-dir", default=os.path.join(HERE, "checkpoints"), help="TRL's checkpoints")
    args = ap.parse_args()

    spec = json.load(open(os.path.join(HERE, "stage.json")))
    stageloop = args.stageloop or os.environ.get("STAGELOOP")
    if not stageloop:
        stageloop = spec["stageloop"] if os.path.exists(spec["stageloop"]) else "stageloop"

    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback

    config = dict(spec["config"])
    if args.max_steps is not None:
        config["max_steps"] = args.max_steps
        spec["config"]["max_steps"] = args.max_steps
    cuda = torch.cuda.is_available() and not args.cpu
    config["bf16"] = bool(spec["bf16"] and cuda)
    config["output_dir"] = args.output_dir
    if args.cpu:
        config["use_cpu"] = True

    # Completions (GRPO) or examples (SFT) per optimizer step, split over processes and
    # micro-batches as the stage splits them (micro_batch: per-device batch; the rest is
    # gradient accumulation).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = spec["batch"]["per_step"]
    micro = spec["batch"]["micro_batch"] or per_step
    per_device = min(micro, max(1, per_step // world))
    accumulate = per_step // (per_device * world)
    if per_device * world * accumulate != per_step:
        sys.exit(f"{per_step} completions per step do not split over {world} processes in batches of {per_device}: change micro_batch or the process count")
    config["per_device_train_batch_size"] = per_device
    config["gradient_accumulation_steps"] = accumulate

    run = RunFolder(args.runs_dir, spec) if rank0() else None

    class StageloopRun(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if scorer is not None:
                scorer.step = state.global_step + 1

        def on_log(self, a, state, control, logs=None, **kw):
            if run is None or not logs:
                return
            row = {"step": state.global_step, "time": time.time()}
            for k, v in logs.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[k] = finite(float(v))
            run.append("metrics.jsonl", row)
            run.status["progress"] = {"step": state.global_step, "total": state.max_steps}
            run.save()

    dataset = load_dataset("json", data_files=os.path.join(HERE, "data", "train.jsonl"), split="train")
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **spec["lora"])
    dtype = torch.bfloat16 if config["bf16"] else torch.float32

    scorer = None
    if spec["trainer"] == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        scorer = Scorer(spec, stageloop, run)
        funcs = [scorer.reward(r["name"]) for r in spec["rewards"]]
        weights = [r["weight"] for r in spec["rewards"]]
        if spec["overlong"]:
            from trl.rewards import get_soft_overlong_punishment

            o = spec["overlong"]
            funcs.append(get_soft_overlong_punishment(max_completion_len=o["max"], soft_punish_cache=o["buffer"]))
            weights.append(o["penalty"])
        config["reward_weights"] = weights
        if args.vllm:
            config["use_vllm"] = True
            config["vllm_mode"] = "colocate"
            config.update(spec["vllm"])
        config["model_init_kwargs"] = {"dtype": dtype}
        trainer = GRPOTrainer(
            model=spec["model"],
            reward_funcs=funcs,
            args=GRPOConfig(**config),
            train_dataset=dataset,
            peft_config=peft_config,
            callbacks=[StageloopRun()],
        )
    else:
        from trl import SFTConfig, SFTTrainer

        dataset = dataset.remove_columns([c for c in dataset.column_names if c not in ("prompt", "completion")])
        config["model_init_kwargs"] = {"dtype": dtype}
        trainer = SFTTrainer(
            model=spec["model"],
            args=SFTConfig(**config),
            train_dataset=dataset,
            peft_config=peft_config,
            callbacks=[StageloopRun()],
        )

    try:
        trainer.train()
    except BaseException as e:
        if run is not None:
            run.status["status"] = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
            run.status["error"] = {"message": f"{type(e).__name__}: {e}"}
            run.status["ended"] = time.time()
            run.save()
        raise
    if run is not None:
        run.status["status"] = "done"
        run.status["ended"] = time.time()
        run.save()
        print(f"run folder: {run.dir}")


if __name__ == "__main__":
    main()
