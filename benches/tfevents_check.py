#!/usr/bin/env python3
"""stageloop's TensorBoard reader against TensorBoard's own: event files written by PyTorch's
SummaryWriter (simple_value scalars, plus text and histogram events to skip) and by
tensorboard's EventFileWriter with tensor-valued scalars (float_val and double
tensor_content, as TF2 and tensorboardX write them) are read by both; every (tag, step,
value) must agree.

    python3 benches/tfevents_check.py [--stageloop target/release/stageloop]

Needs torch, numpy and tensorboard. Exits non-zero on a mismatch.
"""

import argparse
import csv
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_runs(root):
    import numpy as np
    from tensorboard.compat.proto import types_pb2
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(os.path.join(root, "torch"))
    for s in range(1, 41):
        w.add_scalar("train/loss", 2.0 / s, s)
        w.add_scalar("train/reward", math.sin(s / 5), s)
        if s % 10 == 0:
            w.add_text("samples", f"completion at {s}", s)
            w.add_histogram("advantages", np.random.default_rng(s).normal(size=64), s)
    w.close()
    ew = EventFileWriter(os.path.join(root, "tensors"))
    md = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    for s in range(1, 21):
        f = TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5 * s])
        d = TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_content=struct.pack("<d", 1 / s))
        ew.add_event(Event(wall_time=time.time(), step=s, summary=Summary(
            value=[Summary.Value(tag="actor/entropy", tensor=f, metadata=md),
                   Summary.Value(tag="critic/score/mean", tensor=d, metadata=md)])))
    ew.close()


def tensorboard_values(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        for e in acc.Scalars(tag):
            out[(tag, e.step)] = e.value
    for tag in acc.Tags().get("tensors", []):
        import tensorboard.util.tensor_util as tu

        for e in acc.Tensors(tag):
            values = tu.make_ndarray(e.tensor_proto).reshape(-1)
            if len(values) == 1 and values.dtype.kind in "fiu":
                out[(tag, e.step)] = float(values[0])
    return out


def stageloop_values(sl, run, out_dir):
    subprocess.run([sl, "export", "--format", "csv", "--out", out_dir, run], check=True,
                   capture_output=True)
    out = {}
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k in ("step", "time", "run") or v == "":
                    continue
                out[(k, int(float(row["step"])))] = float(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stageloop", default=os.path.join(ROOT, "target", "release", "stageloop"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tfevents-")
    write_runs(root)
    bad = 0
    for name in ("torch", "tensors"):
        run = os.path.join(root, name)
        want = tensorboard_values(run)
        got = stageloop_values(args.stageloop, run, os.path.join(root, f"{name}-export"))
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = [(k, want[k], got[k]) for k in want if k in got
                 and not math.isclose(want[k], got[k], rel_tol=1e-6, abs_tol=1e-7)]
        print(f"{name}: {len(want)} scalars from TensorBoard, {len(got)} from stageloop; "
              f"missing {len(missing)}, extra {len(extra)}, different {len(wrong)}")
        for x in (missing[:3], extra[:3], wrong[:3]):
            if x:
                print("   ", x)
        bad += len(missing) + len(extra) + len(wrong)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
