"""Regenerate the datasets in data/ (see data/README.md): `python3 data/make_data.py`.

Needs `pip install reasoning-gym==0.1.25` (Apache-2.0); fixed seeds, so the output is the same
every time. Writes JSON lines with sorted keys and prints each file's rows and sha256.
"""
import hashlib
import json
import os

import reasoning_gym as rg
from reasoning_gym.arithmetic.leg_counting import ANIMALS

HERE = os.path.dirname(os.path.abspath(__file__))
LEGS = dict(ANIMALS)


def write(name, rows):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    print(f"{name}: {len(rows)} rows, sha256 {digest}")


def legs():
    """Leg counting with 2-3 kinds of animal, 1-5 of each: a compact prompt, the number, and a
    worked solution (each kind's legs, then the sum)."""
    rows, seen = [], set()
    ds = rg.create_dataset("leg_counting", size=4000, seed=7, min_animals=2, max_animals=3,
                           min_instances=1, max_instances=5)
    for x in ds:
        animals = x["metadata"]["animals"]
        prompt = "legs: " + ", ".join(f"{n} {a}" for a, n in animals.items()) + "="
        if prompt in seen:
            continue
        seen.add(prompt)
        parts = [f"{n}*{LEGS[a]}={n * LEGS[a]}" for a, n in animals.items()]
        total = sum(n * LEGS[a] for a, n in animals.items())
        assert str(total) == x["answer"], (prompt, total, x["answer"])
        solution = ",".join(parts) + "," + "+".join(str(n * LEGS[a]) for a, n in animals.items()) + f"={total}"
        rows.append({"prompt": prompt, "answer": x["answer"], "solution": solution,
                     "question": x["question"]})
    return rows


def countdown():
    """Countdown in TinyZero's layout (`nums`, `target`) with a reference `solution`."""
    ds = rg.create_dataset("countdown", size=500, seed=11, min_numbers=3, max_numbers=3,
                           min_value=1, max_value=20, min_target=10, max_target=100)
    return [{"nums": x["metadata"]["numbers"], "target": x["metadata"]["target"],
             "solution": x["metadata"]["expression"]} for x in ds]


def gsm():
    """GSM-symbolic word problems, answers in GSM8K's layout (worked solution, `#### N`)."""
    ds = rg.create_dataset("gsm_symbolic", size=300, seed=13)
    return [{"question": x["question"], "answer": f"{x['metadata']['answer_cot']}\n#### {x['answer']}"}
            for x in ds]


if __name__ == "__main__":
    write("legs.jsonl", legs())
    write("countdown_tinyzero.jsonl", countdown())
    write("gsm_symbolic.jsonl", gsm())
