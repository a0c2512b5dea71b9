"""The CPU benchmarks against HF PyTorch (`benchmarks/*_vs_hf.py`, the figures the README and
docs/cpu_performance.md quote) run end to end at tiny sizes and print what those figures are
read from: every mode of both sides, the best against the best, and the CPU MFU. The decoding
benchmark also compares tokens, and float32 against float32 must agree everywhere."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the hf extra (torch) is needed to run HF's side")
pytest.importorskip("transformers", reason="the hf extra is needed to run HF's side")

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks")


def _run(script, *args):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args],
                        capture_output=True, text=True, env=env, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout


def _rate(out, mode):
  """The work/s column of a mode's row (every row: name, seconds, work/s, GFLOP/s, MFU %);
  the seconds are rounded to milliseconds, too coarse for tiny models."""
  match = re.search(rf"^  {re.escape(mode)}\s+[0-9.]+\s+([0-9.]+)\s+[0-9.]+\s+[0-9.]+%$", out,
                    re.MULTILINE)
  assert match, f"no row for {mode!r} in:\n{out}"
  return float(match.group(1))


def _check_summary(out, modes):
  for mode in modes:
    assert _rate(out, mode) > 0
  best = re.search(r"best against best: (xltransfer \(JAX\) \w+) over (HF [\w +]+): "
                   r"([0-9.]+)x", out)
  assert best, out
  ours, theirs = _rate(out, best.group(1)), _rate(out, best.group(2))
  # Each side's best is its fastest mode.
  assert ours == max(_rate(out, m) for m in modes if m.startswith("xltransfer"))
  assert theirs == max(_rate(out, m) for m in modes if m.startswith("HF"))
  # The ratio is HF's best time over ours: the rows' rates, ours over HF's.
  assert float(best.group(3)) == pytest.approx(ours / theirs, rel=0.02, abs=0.01)
  assert re.search(r"CPU MFU of xltransfer \(JAX\) \w+: [0-9.]+% of the bf16 GEMM peak", out)
  assert re.search(r"bf16 GEMM peak \(max of jax [0-9]+, torch [0-9]+\): [0-9]+ GFLOP/s", out)


@pytest.mark.slow
def test_train_vs_hf_prints_four_modes_the_ratio_and_the_mfu():
  out = _run("train_vs_hf.py", "--size", "tiny", "--input_length", "32", "--target_length",
             "16", "--steps", "1", "--warmup_steps", "1")
  _check_summary(out, ["xltransfer (JAX) float32", "xltransfer (JAX) bfloat16",
                       "HF PyTorch float32", "HF PyTorch bf16 autocast"])


@pytest.mark.slow
def test_forward_vs_hf_prints_four_modes_the_ratio_and_the_mfu():
  out = _run("forward_vs_hf.py", "--size", "tiny", "--batch", "2", "--inputs", "32",
             "--targets", "16", "--steps", "1", "--warmup", "1")
  _check_summary(out, ["xltransfer (JAX) float32", "xltransfer (JAX) bfloat16",
                       "HF PyTorch float32", "HF PyTorch bf16 autocast"])


@pytest.mark.slow
@pytest.mark.parametrize("beams", ["1", "2"])
def test_decode_vs_hf_prints_every_mode_and_float32_gives_hfs_tokens(beams):
  out = _run("decode_vs_hf.py", "--size", "tiny", "--batch", "2", "--inputs", "16",
             "--new_tokens", "4", "--steps", "1", "--num_beams", beams)
  _check_summary(out, ["xltransfer (JAX) float32", "xltransfer (JAX) bfloat16", "HF float32",
                       "HF bf16 autocast", "HF bf16 weights + autocast"])
  agreement = re.search(r"same tokens, xltransfer \(JAX\) float32 vs HF generate float32: "
                        r"([0-9.]+)%", out)
  assert agreement and float(agreement.group(1)) == 100.0, out
