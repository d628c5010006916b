#!/usr/bin/env bash
# Kill -9 soak: start a small two-stage pipeline (pretrain, then GRPO with a reward program of
# its own), kill it with SIGKILL at random moments (some land inside checkpoint writes, some
# while the reward program scores a batch), resume each time with the same command, then let it
# finish and check that nothing was lost: every step of every stage is in metrics.jsonl, every
# run is done, no half-written checkpoint folder is left, no reward program outlives its stage,
# and the last checkpoint loads.
#
#   bash benches/kill_soak.sh [KILLS=25] [SEED=1]
#
# Prints one summary line per check and the figures for docs/PERF.md. Needs python3.
set -euo pipefail
KILLS=${1:-25}
SEED=${2:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STAGELOOP_BIN:-$ROOT/target/debug/stageloop}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --quiet)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
EXP=$WORK/soak
mkdir -p "$EXP"
cat > "$EXP/experiment.toml" <<'TOML'
name = "soak"
[model]
d_model = 64
layers = 2
heads = 2
mlp = 128
ctx = 48
[task]
name = "arith"
difficulty = 1
heldout = 20
[[stage]]
name = "pre"
kind = "pretrain"
steps = 1500
batch = 32
checkpoint_every = 50
[[stage]]
name = "rl"
kind = "grpo"
init = "pre"
steps = 600
prompts = 8
group_size = 8
checkpoint_every = 10
rewards = { accuracy = 1.0, short = { command = ["python3", "short.py"], weight = 0.1 } }
TOML
# The reward program: 1 for completions under 12 characters; it ends when its input does.
cat > "$EXP/short.py" <<'PY'
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({"id": r["id"], "reward": float(len(r["completion"]) < 12)}), flush=True)
PY

RANDOM=$SEED
in_ckpt=0
for i in $(seq 1 "$KILLS"); do
  "$BIN" run "$EXP" > "$WORK/out-$i.log" 2>&1 &
  pid=$!
  # 0.2 – 4.0 s: early kills land in setup, later ones in training or a checkpoint write.
  sleep "$(python3 -c "import random; random.seed($SEED*1000+$i); print(round(random.uniform(0.2, 4.0), 2))")"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if compgen -G "$EXP/runs/*/checkpoints/.*.tmp-*" > /dev/null; then
    in_ckpt=$((in_ckpt + 1))
  fi
done
start=$(date +%s)
"$BIN" run "$EXP" > "$WORK/final.log" 2>&1
echo "kills: $KILLS (inside a checkpoint write: $in_ckpt); final run $(( $(date +%s) - start )) s"

python3 - "$EXP" <<'PY'
import json, os, sys, glob
exp = sys.argv[1]
bad = 0
for run in sorted(glob.glob(os.path.join(exp, "runs", "*"))):
    st = json.load(open(os.path.join(run, "run.json")))
    if not os.path.exists(os.path.join(run, "checkpoints", "latest")) and st["status"] != "done":
        # Killed before its first checkpoint: nothing to resume; the next run started the stage
        # anew in a folder of its own.
        print(f"{os.path.basename(run)} {st['stage']}: killed before its first checkpoint (left as it was)")
        continue
    total = st["progress"]["total"]
    # A resume rewinds to its checkpoint: lines whose step is below the highest seen so far were
    # written again after a resume (a step may also have two lines, e.g. an eval line).
    steps, torn, lines, relogged, top = set(), 0, 0, 0, -1
    with open(os.path.join(run, "metrics.jsonl"), "rb") as f:
        for raw in f:
            lines += 1
            try:
                step = int(json.loads(raw)["step"])
            except Exception:
                torn += 1
                continue
            steps.add(step)
            relogged += step < top
            top = max(top, step)
    missing = [s for s in range(1, total + 1) if s not in steps]
    leftovers = glob.glob(os.path.join(run, "checkpoints", ".*tmp*")) + glob.glob(os.path.join(run, ".*tmp*"))
    latest = open(os.path.join(run, "checkpoints", "latest")).read().strip()
    ok = st["status"] == "done" and not missing and not leftovers
    bad += not ok
    print(f"{os.path.basename(run)} {st['stage']}: status {st['status']}, resumed {len(st.get('resumed_at', []))}×, "
          f"{total} steps, missing {len(missing)}, {lines} lines ({relogged} "
          f"re-logged after resumes, {torn} torn), leftover temp files {[os.path.basename(l) for l in leftovers]}, latest {latest}")
sys.exit(1 if bad else 0)
PY
sleep 1
left=$(pgrep -f "$EXP/short.py|python3 short.py" | wc -l || true)
echo "reward programs still running after the stages: $left"
[ "$left" -eq 0 ]
grep -q '"rewards/short/mean"' "$(ls -d "$EXP"/runs/*-rl | tail -1)/metrics.jsonl" \
  && echo "the reward program's rewards are logged"
last=$(ls -d "$EXP"/runs/*-rl | tail -1)
"$BIN" sample "$last" --prompt "1+2=" --n 1 > /dev/null && echo "the last checkpoint loads and samples"
