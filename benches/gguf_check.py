"""Check stageloop's GGUF reader against llama.cpp's own Python reader (gguf-py).

    pip install gguf numpy
    python3 benches/gguf_check.py path/to/model.gguf [path/to/stageloop]
    python3 benches/gguf_check.py --synthetic /tmp/all-types.gguf [path/to/stageloop]

`--synthetic` first writes a file with a tensor of every supported type (F32, F16, BF16, Q4_0,
Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) filled with random blocks (finite scales), then checks it: both readers
dequantise the same bytes.

For every tensor, dequantises it with gguf-py (`gguf.quants.dequantize`) and compares the count,
sum, sum of squares and first values with `stageloop inspect FILE --stats`. Prints one line per
tensor type and exits non-zero on any mismatch beyond float rounding.
"""
import json
import subprocess
import sys
from collections import defaultdict

import gguf
import numpy as np

args = sys.argv[1:]
synthetic = args[0] == "--synthetic"
if synthetic:
    args = args[1:]
path = args[0]
binary = args[1] if len(args) > 1 else "target/debug/stageloop"

if synthetic:
    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("f32", rng.standard_normal((4, 64)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((4, 64)).astype(np.float16))
    bf16 = (rng.standard_normal((4, 64)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf16.view(np.uint8).reshape(4, 128), raw_dtype=Q.BF16)
    # (type, elements per block, bytes per block, byte offsets of f16 scale fields)
    for q, per, size, scales in [
        (Q.Q8_0, 32, 34, [0]),
        (Q.Q4_0, 32, 18, [0]),
        (Q.Q4_1, 32, 20, [0, 2]),
        (Q.Q5_0, 32, 22, [0]),
        (Q.Q5_1, 32, 24, [0, 2]),
        (Q.Q2_K, 256, 84, [80, 82]),
        (Q.Q3_K, 256, 110, [108]),
        (Q.Q4_K, 256, 144, [0, 2]),
        (Q.Q5_K, 256, 176, [0, 2]),
        (Q.Q6_K, 256, 210, [208]),
    ]:
        rows, cols = 4, 2 * per
        blocks = rng.integers(0, 256, size=(rows * cols // per, size), dtype=np.uint8)
        for off in scales:
            blocks[:, off:off + 2] = (rng.standard_normal(len(blocks)) * 0.1).astype(np.float16).view(np.uint8).reshape(-1, 2)
        w.add_tensor(q.name.lower(), blocks.reshape(rows, -1), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
ours = {}
out = subprocess.run([binary, "inspect", path, "--stats"], check=True, capture_output=True, text=True)
for line in out.stdout.splitlines():
    r = json.loads(line)
    ours[r["name"]] = r

reader = gguf.GGUFReader(path)
per_type = defaultdict(lambda: [0, 0, 0.0])  # tensors, mismatches, worst relative error
bad = 0
for t in reader.tensors:
    ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    o = ours[t.name]
    kind = t.tensor_type.name
    rel = max(
        abs(o["sum"] - ref.sum()) / max(1.0, float(np.abs(ref).sum())),
        abs(o["sumsq"] - float((ref * ref).sum())) / max(1.0, float((ref * ref).sum())),
        float(np.max(np.abs(np.array(o["first"]) - ref[: len(o["first"])]))),
    )
    ok = o["n"] == ref.size and rel < 1e-6
    per_type[kind][0] += 1
    per_type[kind][1] += 0 if ok else 1
    per_type[kind][2] = max(per_type[kind][2], rel)
    if not ok:
        bad += 1
        print(f"MISMATCH {t.name} {kind}: n {o['n']} vs {ref.size}, rel {rel:.3g}")
for kind, (n, m, worst) in sorted(per_type.items()):
    print(f"{kind}: {n} tensors, {m} mismatches, worst relative difference {worst:.3g}")
sys.exit(1 if bad else 0)
