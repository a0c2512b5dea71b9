"""Where a compiled step's time goes: a jax.profiler trace of a few calls, read back per XLA
instruction and grouped by what the instruction belongs to (the output layer and loss,
attention, the other matmuls, the optimizer, everything else).

Recording needs only jax; reading the trace needs TensorFlow's XPlane protobuf, which the
GPU image lacks: there `gpu_step.py --profile DIR` records DIR/SIZE/trace.xplane.pb.gz and
DIR/SIZE/step.hlo.txt.gz, and this script summarises that folder afterwards, here:

  python benchmarks/xla_profile.py DIR/SIZE     # prints the table, writes summary.json there

Time per instruction is wall time: the union of its events over all threads (XLA:CPU runs
one instruction on several threads) or streams (GPU kernels carry their instruction in the
`hlo_op` stat), divided by the number of traced calls. Instructions that run concurrently are
each counted in full, so the categories can add up to more than the step.

On XLA:CPU the profiler slows the step itself (the mT5-small bf16 step of train_vs_hf.py: 3.2 s
untraced, 8.2 s traced on 2026-11-30, most of it in the library's matrix products), so read the
CPU table for which instructions matter, and time a change without the profiler.
"""
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

# (category, pattern on the instruction's op_name metadata); the first match wins. The loss
# is differentiated outside the model (`jvp()`, `transpose(jvp())`); what is neither inside
# the model nor under autodiff is the optimizer's update (and the sum of gradients).
CATEGORIES = (
    ("output layer + loss", r"logits_dense|token_embedder|jvp\(\)|jvp\(jit\(take_along_axis"),
    ("attention", r"/(\w+_)?attention(/|$)"),
    ("other matmuls", r"Transformer.*dot_general"),
    ("optimizer", r"^jit\([^)]*\)/(?!.*(jvp|transpose))"),
)


TRACE = "trace.xplane.pb.gz"
HLO = "step.hlo.txt.gz"


def record(run, calls: int, folder: str, hlo_text: str) -> str:
  """Traces `calls` runs of `run()` (which must wait for its result) and writes, gzipped, the
  trace and the compiled module's text to `folder` (flat: the device tool brings back files at
  most two folders below its output folder); returns the folder."""
  import jax  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  with gzip.open(os.path.join(folder, HLO), "wt") as f:
    f.write(hlo_text)
  with open(os.path.join(folder, "calls"), "w") as f:
    f.write(f"{calls}\n")
  with tempfile.TemporaryDirectory() as scratch:
    with jax.profiler.trace(scratch):
      for _ in range(calls):
        run()
    paths = glob.glob(os.path.join(scratch, "**", "*.xplane.pb"), recursive=True)
    if not paths:
      raise FileNotFoundError(f"jax.profiler wrote no *.xplane.pb under {scratch}")
    with open(max(paths, key=os.path.getmtime), "rb") as src, \
        gzip.open(os.path.join(folder, TRACE), "wb") as dst:
      shutil.copyfileobj(src, dst)
  return folder


def instruction_metadata(hlo_text: str) -> dict:
  """{instruction name: (shape, op_name)} for every instruction of the module's text. A fusion
  without op_name of its own takes that of its fused computation's root (or first named)
  instruction."""
  found, calls, computation_op = {}, {}, {}
  current = None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and not line.startswith(" "):
      current = head.group(1)
      continue
    m = re.match(r"^\s*(ROOT )?%?([\w.\-]+) = (\S+) [\w\-]+\(", line)
    if not m:
      continue
    op = re.search(r'op_name="([^"]*)"', line)
    op_name = op.group(1) if op else ""
    found[m.group(2)] = (m.group(3), op_name)
    called = re.search(r"calls=%?([\w.\-]+)", line)
    if called:
      calls[m.group(2)] = called.group(1)
    if op_name and current and (m.group(1) or current not in computation_op):
      computation_op[current] = op_name
  for name, callee in calls.items():
    if not found[name][1] and computation_op.get(callee):
      found[name] = (found[name][0], computation_op[callee])
  return found


def category(op_name: str) -> str:
  for name, pattern in CATEGORIES:
    if re.search(pattern, op_name):
      return name
  return "other"


def _union_seconds(intervals) -> float:
  total, end = 0, None
  for s, e in sorted(intervals):
    if end is None or s > end:
      total += e - s
      end = e
    elif e > end:
      total += e - end
      end = e
  return total / 1e12


def _events(xspace, known):
  """(instruction, start_ps, end_ps) of every event that names an instruction of the module.

  With accelerator planes (/device:GPU:N, ...) only those count: the host's launch events
  carry the same instruction names and would add launch time to kernel time.
  """
  planes = [p for p in xspace.planes if p.name.startswith(("/device:GPU:", "/device:TPU:"))]
  for plane in planes or [p for p in xspace.planes if p.name.startswith("/host:")]:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
    for line in plane.lines:
      base = line.timestamp_ns * 1000
      for event in line.events:
        name = names.get(event.metadata_id, "")
        if name not in known:  # GPU kernels: the instruction is the hlo_op stat
          # A string stat's value is inline (str_value) or interned (ref_value: the name of
          # a stat_metadata entry).
          name = next((stat.str_value or stat_names.get(stat.ref_value, "")
                       for stat in event.stats
                       if stat_names.get(stat.metadata_id) == "hlo_op"), "")
        if name in known:
          start = base + event.offset_ps
          yield name, start, start + event.duration_ps


def summarise(folder: str, top: int = 25) -> dict:
  """The per-category and per-instruction seconds per call of a recorded folder."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  with gzip.open(os.path.join(folder, HLO), "rt") as f:
    known = instruction_metadata(f.read())
  with open(os.path.join(folder, "calls")) as f:
    calls = int(f.read())
  xspace = xplane_pb2.XSpace()
  with gzip.open(os.path.join(folder, TRACE), "rb") as f:
    xspace.ParseFromString(f.read())
  intervals = collections.defaultdict(list)
  for name, start, end in _events(xspace, known):
    intervals[name].append((start, end))
  if not intervals:
    raise ValueError(f"the trace in {folder} names no instruction of its {HLO}")
  span = (max(e for v in intervals.values() for _, e in v)
          - min(s for v in intervals.values() for s, _ in v)) / 1e12
  per_instruction = {name: _union_seconds(v) / calls for name, v in intervals.items()}
  by_category = collections.Counter()
  for name, seconds in per_instruction.items():
    by_category[category(known[name][1])] += seconds
  ranked = sorted(per_instruction.items(), key=lambda item: -item[1])[:top]
  return {
      "calls": calls, "traced_seconds_per_call": span / calls,
      "instruction_seconds_per_call": sum(per_instruction.values()),
      "categories": dict(by_category.most_common()),
      "top": [{"instruction": name, "seconds": seconds, "shape": known[name][0],
               "op_name": known[name][1], "category": category(known[name][1])}
              for name, seconds in ranked],
  }


def print_summary(summary: dict) -> None:
  print(f"traced {summary['traced_seconds_per_call']:.3f} s per call; instructions "
        f"{summary['instruction_seconds_per_call']:.3f} s (concurrent ones each counted)")
  for name, seconds in summary["categories"].items():
    print(f"  {seconds * 1e3:9.1f} ms  {name}")
  print("top instructions:")
  for row in summary["top"]:
    print(f"  {row['seconds'] * 1e3:9.1f} ms  {row['instruction'][:28]:28s} "
          f"{row['shape'][:30]:30s} {row['op_name'][-80:]}")


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1 or argv[0].startswith("-"):
    print(__doc__)
    return 2
  summary = summarise(argv[0])
  with open(os.path.join(argv[0], "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print_summary(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
