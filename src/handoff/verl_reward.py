"""stageloop's verifiers as verl's batch reward function (`reward.reward_manager.name=batch`):
each batch of completions is piped to `stageloop score` once; the reward is the stage's
weighted sum of its components, which are returned beside it for verl's logs.
"""

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "stage.json")) as f:
    SPEC = json.load(f)


def stageloop():
    exe = os.environ.get("STAGELOOP") or SPEC["stageloop"]
    return exe if os.path.exists(exe) else "stageloop"


def compute_score(data_sources, solution_strs, ground_truths, extra_infos=None, **kwargs):
    extra_infos = extra_infos or [{}] * len(solution_strs)
    if SPEC["scorer_reads_answer"]:
        lines = [json.dumps({"completion": c, "answer": str(a)}) for c, a in zip(solution_strs, ground_truths)]
    else:
        lines = [json.dumps({"prompt": (e or {}).get("problem", ""), "completion": c})
                 for c, e in zip(solution_strs, extra_infos)]
    out = subprocess.run([stageloop()] + SPEC["scorer"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, check=True)
    weights = {r["name"]: r["weight"] for r in SPEC["rewards"]}
    scores = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        s = json.loads(line)
        parts = {k: float(s.get(k, 0.0)) for k in ("accuracy", "format", "partial") if k in s}
        scores.append({"score": sum(weights.get(k, 0.0) * v for k, v in parts.items()), **parts})
    return scores
