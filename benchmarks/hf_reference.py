"""What the side-by-side benchmarks share: the HF reference model, the timing loop, the model's
FLOPs and this CPU's measured bf16 GEMM peak (for a "CPU MFU"), and the four-way report.

Scripts in this folder run as `python benchmarks/NAME.py`, so this module is importable as
`hf_reference` from them.
"""
import json
import os
import subprocess
import sys
import time


def same_host_malloc_for_both():
  """Restart under the host malloc settings `xltransfer` itself runs with; describe them.

  The `xltransfer` command restarts itself with tuned malloc (`xltransfer/host_memory.py`);
  a benchmark of it must run under the same settings, and HF runs in the same process, so
  both sides see them. XLTRANSFER_HUGEPAGE_MALLOC=0 compares with the system's defaults.
  """
  from xltransfer import host_memory
  host_memory.restart_with_tuned_malloc()
  return f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"


def untied_hf_mt5(config, seed: int = 0, head_scale: float = 0.05, zero_head_rows=(),
                  dropout_rate: float = 0.0):
  """A randomly initialised HF `MT5ForConditionalGeneration` with `config`'s shapes.

  transformers 5 ties the output layer whatever the config says; mT5's is separate, so a
  fresh `lm_head` is assigned. `zero_head_rows` zeroes output rows (e.g. EOS, so decoding
  never stops early and both sides decode the same number of tokens). `dropout_rate` is HF's
  own dropout (per element, where T5X and xltransfer share a mask along the length).
  """
  import torch
  import transformers

  from xltransfer.checkpoints import hf
  hf_config = transformers.MT5Config(**{k: v for k, v in hf.hf_config_dict(config).items()
                                        if k not in ("architectures", "model_type")})
  hf_config.dropout_rate = dropout_rate
  torch.manual_seed(seed)
  model = transformers.MT5ForConditionalGeneration(hf_config)
  head = torch.randn_like(model.lm_head.weight) * head_scale
  for row in zero_head_rows:
    head[row] = 0.0
  model.lm_head.weight = torch.nn.Parameter(head)
  return model


def timed(run, warmup: int, steps: int):
  """Mean seconds per call of `run` after `warmup` untimed calls, and the last result."""
  for _ in range(warmup):
    run()
  start = time.perf_counter()
  result = None
  for _ in range(steps):
    result = run()
  return (time.perf_counter() - start) / steps, result


MODES = ("float32", "bfloat16")


def modes_from_flag(value: str):
  """--dtype: float32, bfloat16 or both (the default: every mode, side by side)."""
  if value == "both":
    return MODES
  if value not in MODES:
    raise SystemExit(f"--dtype must be float32, bfloat16 or both, got {value!r}")
  return (value,)


def hf_autocast(mode: str):
  """The context HF runs a mode in: bf16 autocast (its fastest CPU mode) or plain float32."""
  import contextlib
  import torch
  if mode == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  return contextlib.nullcontext()


def bf16_gemm_peak(shapes=((2048, 2048, 2048), (4096, 512, 4096)), repeats: int = 5,
                   previous=None):
  """This CPU's bf16 matmul rate (FLOP/s, float32 accumulation), the best of JAX and torch.

  JAX: bf16 operands with `preferred_element_type=float32`, the form XLA hands to its GEMM
  library. torch: a bf16 `matmul` (oneDNN accumulates in float32 and rounds the result).
  Each [m, k] x [k, n] product runs `repeats` times after a warm-up and its fastest call
  counts: a peak, which another process on this shared machine can only lower. `previous`
  (an earlier result of this function) is merged in, so a script measuring before and after
  its timed runs keeps the better probe. Returns the best rate and each framework's best.
  """
  import jax
  import jax.numpy as jnp
  import torch

  def fastest(run):
    run()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    return min(times)

  product = jax.jit(lambda x, y: jax.lax.dot(x, y, preferred_element_type=jnp.float32))
  rates = dict(previous[1]) if previous else {"jax": 0.0, "torch": 0.0}
  for m, k, n in shapes:
    flops = 2.0 * m * k * n
    a, b = jnp.ones((m, k), jnp.bfloat16), jnp.ones((k, n), jnp.bfloat16)
    rates["jax"] = max(rates["jax"], flops / fastest(lambda: product(a, b).block_until_ready()))
    ta, tb = torch.ones((m, k), dtype=torch.bfloat16), torch.ones((k, n), dtype=torch.bfloat16)
    rates["torch"] = max(rates["torch"], flops / fastest(lambda: torch.matmul(ta, tb)))
  return max(rates.values()), rates


def bf16_gemm_peak_in_child():
  """`bf16_gemm_peak()` measured in a fresh interpreter (same environment), for the probe
  before a benchmark's timed runs: run in the benchmark's own process, its torch matmuls left
  the following xltransfer steps slower (mT5-small train step, alternating processes on a
  2-core EPYC: 2.75 s against 2.62 s without a torch probe first, and in some runs page faults
  costing 1.7 s of system time per step), so the probe would have measured itself into
  the result. The probe after the timed runs stays in-process."""
  code = ("import json, hf_reference; peak, peaks = hf_reference.bf16_gemm_peak(); "
          "print('PEAK_JSON', json.dumps([peak, peaks]))")
  done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(__file__)),
                        capture_output=True, text=True, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK_JSON ")]
  if done.returncode or not lines:
    raise RuntimeError(f"the bf16 GEMM probe's child process failed (exit {done.returncode}):\n"
                       f"{done.stderr[-2000:]}")
  peak, peaks = json.loads(lines[-1].split(" ", 1)[1])
  return float(peak), {k: float(v) for k, v in peaks.items()}


def _matmul_flops_per_token(config, *, attended: int, cross_attended: int = 0,
                            decoder: bool):
  """Forward matmul FLOPs of one layer for one query token (2 per multiply-add)."""
  joined = config.num_heads * config.head_dim
  flops = 2 * config.emb_dim * joined * 4 + 4 * attended * joined  # q, k, v, out; qk and av
  flops += 2 * config.emb_dim * config.mlp_dim * 3  # gated-gelu mlp
  if decoder:  # cross-attention: q and out here; its k and v are counted per encoder token
    flops += 2 * config.emb_dim * joined * 2 + 4 * cross_attended * joined
  return flops


def model_flops(config, batch: int, inputs: int, targets: int, train: bool = True) -> float:
  """Model FLOPs of a teacher-forced step: every matmul of the network (dense layers,
  attention products, output layer), forward, times 3 with the backward pass. The relative
  position bias, elementwise work, the loss and the optimizer are not counted."""
  joined = config.num_heads * config.head_dim
  encoder = inputs * config.num_encoder_layers * _matmul_flops_per_token(
      config, attended=inputs, decoder=False)
  cross_kv = inputs * config.num_decoder_layers * 2 * config.emb_dim * joined * 2
  decoder = targets * config.num_decoder_layers * _matmul_flops_per_token(
      config, attended=targets, cross_attended=inputs, decoder=True)
  logits = targets * 2 * config.emb_dim * config.vocab_size
  forward = batch * (encoder + cross_kv + decoder + logits)
  return 3.0 * forward if train else float(forward)


def decode_flops(config, batch: int, inputs: int, new_tokens: int, beams: int = 1) -> float:
  """Model FLOPs of decoding with a KV cache: the encoder once per example, then one token per
  step for each of `beams` hypotheses (self-attention over the positions decoded so far,
  cross-attention over the inputs, whose keys and values each hypothesis projects)."""
  joined = config.num_heads * config.head_dim
  encoder = inputs * config.num_encoder_layers * _matmul_flops_per_token(
      config, attended=inputs, decoder=False)
  cross_kv = inputs * config.num_decoder_layers * 2 * config.emb_dim * joined * 2
  steps = sum(config.num_decoder_layers * _matmul_flops_per_token(
      config, attended=t + 1, cross_attended=inputs, decoder=True)
              + 2 * config.emb_dim * config.vocab_size for t in range(new_tokens))
  return float(batch * (encoder + beams * (cross_kv + steps)))


def report(rows, work: float, unit: str, flops: float, peak: float, peaks, per: str = "step"):
  """Prints each (name, seconds) row with work/s and achieved model FLOP/s, then the best of
  ours against the best of HF and the CPU MFU of our best mode against the bf16 GEMM peak."""
  print(f"  {'':34s} {'s/' + per:>9s} {unit + '/s':>12s} {'GFLOP/s':>9s} {'CPU MFU':>8s}")
  for name, seconds in rows:
    rate = flops / seconds
    print(f"  {name:34s} {seconds:9.3f} {work / seconds:12.1f} {rate / 1e9:9.1f} "
          f"{100 * rate / peak:7.1f}%")
  ours = min((s, n) for n, s in rows if n.startswith("xltransfer"))
  theirs = min((s, n) for n, s in rows if n.startswith("HF"))
  print(f"  bf16 GEMM peak (max of jax {peaks['jax'] / 1e9:.0f}, torch {peaks['torch'] / 1e9:.0f}):"
        f" {peak / 1e9:.0f} GFLOP/s; model FLOPs per {per} {flops / 1e9:.1f} GFLOP")
  print(f"  best against best: {ours[1]} over {theirs[1]}: {theirs[0] / ours[0]:.2f}x")
  print(f"  CPU MFU of {ours[1]}: {100 * flops / ours[0] / peak:.1f}% of the bf16 GEMM peak")
