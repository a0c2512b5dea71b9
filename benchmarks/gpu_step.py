"""mT5 train step and greedy decoding on the devices present: xltransfer (JAX) against HF PyTorch,
with MFU, step time, peak device memory and the plan's predicted peak (issue 17).

For each size (--sizes base,large,xl):
  xltransfer  the trainer's own jitted train step (`Trainer.lower_train_step`, compiled once and
              run), with the remat, scan and microbatch settings of the GPU node's config
              (gin/scale/mt5_xxl_finetune_8xh100.gin, read from the file), bf16 activations,
              float32 parameters, Adafactor as the trainer builds it, no dropout, on synthetic
              packed batches (every row full, several segments per row).
  HF PyTorch  `MT5ForConditionalGeneration` with the same shapes (its config built from
              xltransfer's size table, random init, nothing downloaded), bf16 autocast,
              transformers' Adafactor (T5X's settings), the same microbatches, and gradient
              checkpointing where xltransfer rematerialises.
Both also decode greedily (KV cache, the EOS output row zeroed so every row decodes all tokens).

Figures: tokens/s, step time (median of the timed steps), peak device memory
(`memory_stats()['peak_bytes_in_use']`; torch: `max_memory_allocated`), MFU = model FLOPs per
step (xltransfer/planning/flops.py, the count `xltransfer plan` prints) / (step time × the
devices' dense bf16 peak FLOP/s); XLA's count beside it: the compiled step's `cost_analysis()`
(a scanned layer or microbatch body counts once there) and the cross-check, the cost analysis of
the same forward and backward unrolled (no scan, no remat, one microbatch; lowered, not
compiled); the plan's predicted peak, computed from this compiled step's memory analysis as
`xltransfer plan` computes it (planning/compile.py), and the XLA:CPU estimate of the same
program (what `plan` reports for GPU targets it compiles on the host).

  python benchmarks/gpu_step.py --sizes base,large,xl --out /tmp/gpu_step   # on a GPU
  python benchmarks/gpu_step.py --tiny --out /tmp/gpu_step_tiny           # on a CPU, seconds

Imports no TensorFlow, seqio or TFDS; xltransfer's core needs gin-config (device_check.sh
carries it as a wheel). Each size's JSON (DIR/gpu_step_SIZES.json) is rewritten after every
part, so a run stopped by a time limit keeps what it measured.
"""
import argparse
import ast
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback

import numpy as np

from xltransfer.errors import ConfigError, UserError

# Before jax starts: XLA would otherwise take 75% of the GPU's memory up front, leaving HF
# PyTorch, which runs next in this process, the rest; growing on demand leaves it what JAX did
# not use (JAX's peak is read from its allocator's statistics either way).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE_GIN = os.path.join(REPO, "gin", "scale", "mt5_xxl_finetune_8xh100.gin")
SCALE_BASE_GIN = os.path.join(REPO, "gin", "scale", "mt5_xxl_finetune.gin")
OVERRIDES_KEY = "xltransfer.model.mt5_config.overrides"
MICROBATCHES_KEY = "xltransfer.train.train.num_microbatches"
LENGTHS_KEY = "TASK_FEATURE_LENGTHS"
EOS_ID = 1
# Rows per device of the GPU node's config (batch 128 over 8 GPUs), the default batch here.
DEFAULT_BATCH = 16
TINY = {"sizes": "tiny", "batch": 4, "inputs": 32, "targets": 16, "num_microbatches": 2,
        "steps": 2, "warmup": 1, "decode_batch": 2, "new_tokens": 4, "decode_steps": 1}


def read_gin_literal(path: str, key: str):
  """The Python literal bound to `key` in a gin file (`KEY = LITERAL` on one line)."""
  with open(path) as f:
    text = f.read()
  match = re.search(rf"^{re.escape(key)}\s*=\s*(.+?)\s*$", text, re.M)
  if match is None:
    raise ConfigError(f"{path}: no `{key} = ...` line; gpu_step.py reads the GPU node's "
                        "settings from it (pass --scan/--remat/--num_microbatches instead)")
  try:
    return ast.literal_eval(match.group(1))
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f"{path}: {key} = {match.group(1)} is not a Python literal") from e


def scale_settings(path: str = SCALE_GIN, base_path: str = SCALE_BASE_GIN):
  """scan, remat and microbatches of the GPU node's config, and its task feature lengths."""
  overrides = read_gin_literal(path, OVERRIDES_KEY)
  if not isinstance(overrides, dict) or "remat_policy" not in overrides:
    raise ConfigError(f"{path}: {OVERRIDES_KEY} should be a dict with 'remat_policy', got "
                        f"{overrides!r}")
  lengths = read_gin_literal(base_path, LENGTHS_KEY)
  if not isinstance(lengths, dict) or set(lengths) != {"inputs", "targets"}:
    raise ConfigError(f"{base_path}: {LENGTHS_KEY} should have 'inputs' and 'targets', got "
                        f"{lengths!r}")
  return {"scan_layers": bool(overrides.get("scan_layers", False)),
          "remat_policy": str(overrides["remat_policy"]),
          "num_microbatches": int(read_gin_literal(path, MICROBATCHES_KEY)),
          "inputs": int(lengths["inputs"]), "targets": int(lengths["targets"]),
          "source": [os.path.relpath(path, REPO), os.path.relpath(base_path, REPO)]}


def peak_bf16_flops(device_kind: str):
  """Dense bf16 peak FLOP/s of one device of this kind, as `xltransfer plan --topology local`
  takes it (planning/machines.local_chip), and where the figure comes from; (None, why) for a
  kind the planner does not know (an H100 PCIe, say: a lower peak than the SXM part)."""
  from xltransfer.planning import machines  # pylint: disable=import-outside-toplevel
  chip = machines.local_chip(device_kind, None)
  if any(chip is known for known in machines.CHIPS.values()):
    return chip.peak_flops, f"planning/machines.py chip {chip.name!r}"
  if "cpu" in device_kind.lower():
    return machines.CHIPS["cpu"].peak_flops, "nominal 1 TFLOP/s of planning/machines.py's CPU"
  return None, f"no peak FLOP/s known for {device_kind!r}: pass --peak_flops"


def packed_model_features(inputs: int, targets: int):
  """The packed enc_dec batch features (name -> length) the trainer's converter makes, from
  the planner's seqio-free list (tests/test_plan_without_seqio.py compares it with seqio's)."""
  from xltransfer.train import feature_converters  # pylint: disable=import-outside-toplevel
  return feature_converters.model_feature_lengths(
      feature_converters.ENC_DEC, True, {"inputs": inputs, "targets": targets})


def _packed_stream(rng, rows, length, segments, vocab_size):
  """Rows of `segments` contiguous examples each, every position used; each ends with EOS."""
  tokens = rng.integers(2, vocab_size, (rows, length)).astype(np.int32)
  starts = np.asarray([round(i * length / segments) for i in range(segments)])
  segment_ids = np.searchsorted(starts, np.arange(length), side="right")  # 1..segments
  positions = np.arange(length) - starts[segment_ids - 1]
  ends = np.append(starts[1:], length) - 1
  tokens[:, ends] = EOS_ID
  return tokens, segment_ids.astype(np.int32), positions.astype(np.int32)


def synthetic_packed_batch(seed, batch, inputs, targets, vocab_size, segments=4):
  """A packed enc_dec batch: each row holds `segments` examples, no padding."""
  rng = np.random.default_rng(seed)
  enc, enc_seg, enc_pos = _packed_stream(rng, batch, inputs, segments, vocab_size)
  dec, dec_seg, dec_pos = _packed_stream(rng, batch, targets, segments, vocab_size)
  # Decoder inputs: the targets shifted right inside each segment (0 at a segment's start).
  shifted = np.pad(dec[:, :-1], ((0, 0), (1, 0)))
  decoder_inputs = np.where(dec_pos == 0, 0, shifted).astype("int32")
  tile = lambda row: np.broadcast_to(row, (batch, row.shape[-1])).copy()
  return {"encoder_input_tokens": enc, "encoder_segment_ids": tile(enc_seg),
          "encoder_positions": tile(enc_pos), "decoder_target_tokens": dec,
          "decoder_input_tokens": decoder_inputs,
          "decoder_loss_weights": np.ones_like(dec), "decoder_segment_ids": tile(dec_seg),
          "decoder_positions": tile(dec_pos)}


def predicted_peak_bytes(memory) -> dict:
  """Per-device bytes from a compiled program's memory analysis, the peak as
  planning/compile.py (`xltransfer plan`) computes it: arguments + outputs - aliased (donated)
  + temporaries + code, or XLA's own peak where it reports a larger one."""
  if memory is None:
    return {"peak_bytes": None}
  out = {name: int(getattr(memory, attr)) for name, attr in (
      ("argument_bytes", "argument_size_in_bytes"), ("output_bytes", "output_size_in_bytes"),
      ("alias_bytes", "alias_size_in_bytes"), ("temp_bytes", "temp_size_in_bytes"),
      ("code_bytes", "generated_code_size_in_bytes"))}
  live = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
          + out["code_bytes"])
  out["peak_bytes"] = max(int(getattr(memory, "peak_memory_in_bytes", 0) or 0), live)
  return out


def _cost_flops(costs):
  costs = costs[0] if isinstance(costs, (list, tuple)) and costs else costs
  if costs and "flops" in costs:
    return float(costs["flops"])
  return None


def _median_seconds(run, warmup: int, steps: int):
  for _ in range(warmup):
    run()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


# ---- xltransfer (JAX) ----

def jax_config(size, settings):
  from xltransfer.model.config import get_config
  return get_config(size, dtype="bfloat16", dropout_rate=0.0,
                    scan_layers=settings["scan_layers"], remat_policy=settings["remat_policy"])


def jax_train(size, args, settings, record):
  import jax

  from xltransfer.model.models import EncoderDecoderModel
  from xltransfer.partitioning import create_mesh, create_partitioner
  from xltransfer.planning import flops as flops_lib
  from xltransfer.train.input import to_global_batch
  from xltransfer.train.optimizer import Adafactor
  from xltransfer.train.schedules import learning_rate_schedule
  from xltransfer.train.trainer import Trainer

  config = jax_config(size, settings)
  model = EncoderDecoderModel(config)
  devices = jax.devices()
  partitioner = create_partitioner(create_mesh(devices=devices))
  abstract_params, param_axes = model.abstract_params(), model.param_logical_axes()
  optimizer = Adafactor().create(learning_rate_schedule("constant", 1e-3), abstract_params,
                                 param_axes)
  microbatches = settings["num_microbatches"]
  trainer = Trainer(model, optimizer, partitioner, num_microbatches=microbatches)
  features = packed_model_features(args.inputs, args.targets)
  abstract_batch = trainer.abstract_batch(args.batch, features)

  start = time.perf_counter()
  lowered = trainer.lower_train_step(None, abstract_batch)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start

  model_flops = float(flops_lib.train_flops_per_step(config, args.batch, args.inputs,
                                                     args.targets))
  tokens = args.batch * (args.inputs + args.targets)
  out = record["xltransfer"] = {
      "config": {"scan_layers": config.scan_layers, "remat_policy": config.remat_policy,
                 "num_microbatches": microbatches, "dtype": config.dtype,
                 "dropout_rate": config.dropout_rate,
                 "mesh": {k: int(v) for k, v in partitioner.mesh.shape.items()}},
      "num_parameters": int(sum(np.prod(p.shape) for p in jax.tree.leaves(abstract_params))),
      "lower_seconds": lower_seconds, "compile_seconds": compile_seconds,
      "model_flops_per_step": model_flops, "tokens_per_step": tokens,
      "compiled_cost_flops_per_step": _maybe_total(_cost_flops(compiled.cost_analysis()),
                                                   len(devices)),
      "plan_predicted": predicted_peak_bytes(compiled.memory_analysis()),
  }
  record["_write"]()

  state = trainer.init_state(0)
  batches = [to_global_batch(synthetic_packed_batch(seed, args.batch, args.inputs, args.targets,
                                                    config.vocab_size), partitioner, args.batch)
             for seed in range(2)]
  holder = {"state": state, "i": 0, "losses": []}
  out["resident_bytes_before_steps"] = _bytes_in_use(devices)

  def step():
    holder["state"], metrics = compiled(holder["state"], batches[holder["i"] % len(batches)])
    holder["i"] += 1
    holder["losses"].append(float(metrics["loss"]))  # waits for the step

  seconds, times = _median_seconds(step, args.warmup, args.steps)
  peak = args.peak_flops or record["_peak_flops"]
  out.update({
      "step_seconds": seconds, "step_seconds_all": times,
      "tokens_per_second": tokens / seconds,
      "tokens_per_second_per_device": tokens / seconds / len(devices),
      "mfu": (model_flops / (seconds * peak * len(devices))) if peak else None,
      "losses": holder["losses"],
      "finite": all(math.isfinite(x) for x in holder["losses"]),
      "measured_peak_bytes": _peak_bytes(devices),
  })
  predicted, measured = out["plan_predicted"]["peak_bytes"], out["measured_peak_bytes"]
  out["predicted_over_measured_peak"] = (predicted / measured if predicted and measured
                                         else None)
  record["_write"]()
  if args.profile:
    _profile(compiled, step, os.path.join(args.profile, size), out)
    record["_write"]()
  return model, holder["state"].params, partitioner


def _profile(compiled, step, folder, out):
  """Two traced steps and the compiled step's text into `folder`, summarised here when
  TensorFlow's trace reader is importable (not on the GPU image: run xla_profile.py on the
  folder afterwards)."""
  import xla_profile  # pylint: disable=import-outside-toplevel
  xla_profile.record(step, 2, folder, compiled.as_text())
  out["profile"] = {"folder": folder}
  try:
    summary = xla_profile.summarise(folder)
  except ImportError as e:
    out["profile"]["summary"] = f"not summarised here ({e}); python benchmarks/xla_profile.py DIR"
    return
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  out["profile"]["categories"] = summary["categories"]
  xla_profile.print_summary(summary)


def _maybe_total(per_device, num_devices):
  return None if per_device is None else per_device * num_devices


def _bytes_in_use(devices):
  stats = [_stats(d) for d in devices]
  if not all(stats):
    return None
  return max(int(s.get("bytes_in_use", 0)) for s in stats)


def _peak_bytes(devices):
  stats = [_stats(d) for d in devices]
  if not all(s and "peak_bytes_in_use" in s for s in stats):
    return None  # CPU devices keep no statistics
  return max(int(s["peak_bytes_in_use"]) for s in stats)


def _stats(device):
  try:
    return device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None


def unrolled_cost_check(size, args, settings, record):
  """XLA's FLOP count of the same forward and backward with nothing scanned, rematerialised or
  microbatched (the lowered program's cost analysis; nothing is compiled), against the model
  FLOPs of flops.py. Elementwise work counts there and not in the model FLOPs."""
  import jax
  import jax.numpy as jnp

  from xltransfer.model.models import EncoderDecoderModel
  from xltransfer.partitioning import create_mesh, create_partitioner

  config = jax_config(size, settings).replace(scan_layers=False, remat_policy="none")
  model = EncoderDecoderModel(config)
  partitioner = create_partitioner(create_mesh(devices=jax.devices()[:1]))
  batch = {name: jax.ShapeDtypeStruct((args.batch, length), jnp.int32)
           for name, length in packed_model_features(args.inputs, args.targets).items()}
  grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))
  start = time.perf_counter()
  with partitioner.activation_context():
    lowered = grads.lower(model.abstract_params(), batch)
  flops = _cost_flops(lowered.cost_analysis())
  model_flops = record["xltransfer"]["model_flops_per_step"]
  record["cost_check"] = {
      "unrolled_cost_flops": flops, "model_flops": model_flops,
      "cost_over_model": flops / model_flops if flops else None,
      "seconds": time.perf_counter() - start,
      "what": "lowered (unoptimised) HLO cost analysis of value_and_grad(loss), unrolled, no "
              "remat, one microbatch, against planning/flops.py"}
  record["_write"]()


def xla_cpu_estimate(size, args, settings, record):
  """The same train step compiled by XLA:CPU for host devices (as `plan` does for GPU targets):
  its memory analysis is the estimate docs/scale.md's GPU rows come from."""
  import jax

  from xltransfer.model.models import EncoderDecoderModel
  from xltransfer.partitioning import create_mesh, create_partitioner
  from xltransfer.train.optimizer import Adafactor
  from xltransfer.train.schedules import learning_rate_schedule
  from xltransfer.train.trainer import Trainer

  count = len(jax.devices())
  cpus = jax.devices("cpu")
  if len(cpus) < count:
    record["xla_cpu_estimate"] = {"skipped": f"{len(cpus)} host devices for {count} devices"}
    return
  model = EncoderDecoderModel(jax_config(size, settings))
  optimizer = Adafactor().create(learning_rate_schedule("constant", 1e-3),
                                 model.abstract_params(), model.param_logical_axes())
  partitioner = create_partitioner(create_mesh(devices=cpus[:count]))
  trainer = Trainer(model, optimizer, partitioner, num_microbatches=settings["num_microbatches"])
  start = time.perf_counter()
  compiled = trainer.lower_train_step(None, trainer.abstract_batch(
      args.batch, packed_model_features(args.inputs, args.targets))).compile()
  estimate = predicted_peak_bytes(compiled.memory_analysis())
  estimate["seconds"] = time.perf_counter() - start
  measured = record.get("xltransfer", {}).get("measured_peak_bytes")
  estimate["estimate_over_measured_peak"] = (estimate["peak_bytes"] / measured
                                             if estimate["peak_bytes"] and measured else None)
  record["xla_cpu_estimate"] = estimate
  record["_write"]()


def jax_decode(model, params, args, record):
  import jax
  import jax.numpy as jnp

  kernel = params["decoder"]["logits_dense"]["kernel"]
  # A zero EOS column: its logit (0) never wins, so every row decodes all the tokens.
  params = dict(params, decoder=dict(params["decoder"], logits_dense=dict(
      params["decoder"]["logits_dense"], kernel=kernel.at[..., EOS_ID].set(0.0))))
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(2, model.config.vocab_size, (args.decode_batch, args.inputs)),
                       jnp.int32)
  holder = {}

  def run():
    holder["out"] = np.asarray(jax.block_until_ready(
        model.greedy_decode(params, tokens, args.new_tokens)))

  start = time.perf_counter()
  run()  # compiles
  first = time.perf_counter() - start
  seconds, times = _median_seconds(run, 0, args.decode_steps)
  record["xltransfer_decode"] = _decode_figures(args, seconds, times, holder["out"])
  record["xltransfer_decode"]["first_call_seconds"] = first
  record["_write"]()


def _decode_figures(args, seconds, times, out):
  return {"batch": args.decode_batch, "inputs": args.inputs, "new_tokens": args.new_tokens,
          "seconds": seconds, "seconds_all": times,
          "tokens_per_second": args.decode_batch * args.new_tokens / seconds,
          "every_row_full": bool(out.shape == (args.decode_batch, args.new_tokens)
                                 and not np.any(out == 0))}


# ---- HF PyTorch ----

def hf_train_and_decode(size, args, settings, record):
  import torch
  from transformers.optimization import Adafactor as HFAdafactor

  from hf_reference import untied_hf_mt5  # benchmarks/hf_reference.py

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  config = jax_config(size, settings)
  # Built on the device: a CPU init of mT5-XL's 3.7B parameters takes minutes.
  with torch.device(device):
    model = untied_hf_mt5(config, zero_head_rows=(EOS_ID,))
  model.to(device)  # in case a transformers version built any of it elsewhere
  model.config.use_cache = False
  checkpointing = args.hf_checkpointing
  if checkpointing == "auto":
    checkpointing = "on" if settings["remat_policy"] != "none" else "off"
  if checkpointing == "on":
    # transformers 5.24 renamed it (the GPU machine's 5.17 may have only the old name).
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
  model.train()
  # T5X's Adafactor settings, as benchmarks/train_vs_hf.py gives them.
  optimizer = HFAdafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=True,
                          warmup_init=False, clip_threshold=1.0, decay_rate=-0.8)
  microbatches = settings["num_microbatches"]
  rows = args.batch // microbatches
  batches = []

  def to_torch(array):
    return torch.from_numpy(array.astype(np.int64)).to(device)

  for seed in range(2):
    host = synthetic_packed_batch(seed, args.batch, args.inputs, args.targets, config.vocab_size)
    batches.append([{k: to_torch(host[k][i * rows:(i + 1) * rows])
                     for k in ("encoder_input_tokens", "decoder_input_tokens",
                               "decoder_target_tokens")} for i in range(microbatches)])
  autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  holder = {"i": 0, "losses": []}

  def step():
    total = 0.0
    for micro in batches[holder["i"] % len(batches)]:
      with autocast:
        loss = model(input_ids=micro["encoder_input_tokens"],
                     decoder_input_ids=micro["decoder_input_tokens"],
                     labels=micro["decoder_target_tokens"], use_cache=False).loss / microbatches
      loss.backward()
      total += loss.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    holder["i"] += 1
    holder["losses"].append(float(total))  # waits for the step
    sync()

  seconds, times = _median_seconds(step, args.warmup, args.steps)
  tokens = args.batch * (args.inputs + args.targets)
  model_flops = record["xltransfer"]["model_flops_per_step"]
  peak = args.peak_flops or record["_peak_flops"]
  record["hf"] = {
      "device": str(device), "gradient_checkpointing": checkpointing == "on",
      "num_microbatches": microbatches, "autocast": "bfloat16",
      "step_seconds": seconds, "step_seconds_all": times, "tokens_per_second": tokens / seconds,
      "mfu": model_flops / (seconds * peak) if peak else None,
      "losses": holder["losses"], "finite": all(math.isfinite(x) for x in holder["losses"]),
      "measured_peak_bytes": (int(torch.cuda.max_memory_allocated())
                              if device.type == "cuda" else None),
  }
  record["_write"]()
  model.eval()
  inputs = torch.from_numpy(np.random.default_rng(1).integers(
      2, config.vocab_size, (args.decode_batch, args.inputs)).astype(np.int64)).to(device)
  holder = {}

  def run():
    with torch.no_grad(), autocast:
      out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                           do_sample=False, num_beams=1, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, use_cache=True)
    sync()
    holder["out"] = out[:, 1:].cpu().numpy()  # drops the decoder start token

  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  seconds, times = _median_seconds(run, 0, args.decode_steps)
  record["hf_decode"] = _decode_figures(args, seconds, times, holder["out"])
  record["hf_decode"]["first_call_seconds"] = first
  record["_write"]()


# ---- driver ----

PARTS = ("xltransfer", "cost_check", "xltransfer_decode", "hf", "xla_cpu_estimate")


def _args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default=None, help="comma-separated: base,large,xl (tiny, ...)")
  parser.add_argument("--tiny", action="store_true",
                      help=f"tiny shapes for a CPU, in seconds: {TINY}")
  parser.add_argument("--batch", type=int, default=None,
                      help=f"rows per step (default {DEFAULT_BATCH}, the GPU node's rows per GPU)")
  parser.add_argument("--inputs", type=int, default=None,
                      help="input length (default: the scale config's)")
  parser.add_argument("--targets", type=int, default=None,
                      help="target length (default: the scale config's)")
  parser.add_argument("--num_microbatches", type=int, default=None,
                      help="default: the GPU node's config")
  parser.add_argument("--remat", choices=("none", "minimal", "full"), default=None,
                      help="default: the GPU node's config")
  parser.add_argument("--scan", choices=("on", "off"), default=None,
                      help="scan over layers (default: the GPU node's config)")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed train steps per side (default 5)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed train steps first (default 2)")
  parser.add_argument("--decode_batch", type=int, default=None, help="default: --batch")
  parser.add_argument("--new_tokens", type=int, default=None,
                      help="greedy decoding length (default: the target length)")
  parser.add_argument("--decode_steps", type=int, default=None,
                      help="timed decodes per side (default 2)")
  parser.add_argument("--peak_flops", type=float, default=None,
                      help="dense bf16 FLOP/s per device (default: by device kind)")
  parser.add_argument("--hf_checkpointing", choices=("auto", "on", "off"), default="auto",
                      help="HF gradient checkpointing; auto: where xltransfer rematerialises")
  parser.add_argument("--skip", default="",
                      help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
  parser.add_argument("--out", default=None, help="folder for gpu_step_SIZES.json")
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="after timing, trace two xltransfer train steps into DIR/SIZE "
                           "(benchmarks/xla_profile.py summarises it)")
  parser.add_argument("--plan_flags", action="store_true",
                      help="print the `xltransfer plan` flags of the same config for the first "
                           "size (one per line) and exit")
  parser.add_argument("--report", default=None, metavar="DIR",
                      help="print the table of DIR's gpu_step_*.json and plan_*.json and exit")
  args = parser.parse_args(argv)
  defaults = dict(TINY) if args.tiny else {"sizes": "base,large,xl", "batch": DEFAULT_BATCH,
                                           "steps": 5, "warmup": 2, "decode_steps": 2}
  for name, value in defaults.items():
    if getattr(args, name, None) is None:
      setattr(args, name, value)
  unknown = set(filter(None, args.skip.split(","))) - set(PARTS)
  if unknown:
    parser.error(f"--skip {args.skip}: unknown parts {sorted(unknown)}; known: {PARTS}")
  return args


def settings_for(args):
  settings = scale_settings()
  for name, value in (("inputs", args.inputs), ("targets", args.targets),
                      ("num_microbatches", args.num_microbatches),
                      ("remat_policy", args.remat)):
    if value is not None:
      settings[name] = value
  if args.scan is not None:
    settings["scan_layers"] = args.scan == "on"
  args.inputs, args.targets = settings["inputs"], settings["targets"]
  args.decode_batch = args.decode_batch or args.batch
  args.new_tokens = args.new_tokens or args.targets
  if args.batch % settings["num_microbatches"]:
    raise ConfigError(f"--batch {args.batch} is not a multiple of the "
                     f"{settings['num_microbatches']} microbatches")
  return settings


def _versions():
  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
    try:
      versions[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      versions[name] = None
  return versions


def plan_flags(size, args, settings):
  """`xltransfer plan` flags that compile the program this script runs for `size`: the model
  file, the fine-tuning run file and these shapes and settings, dropout off."""
  overrides = {"scan_layers": settings["scan_layers"], "remat_policy": settings["remat_policy"],
               "dtype": "bfloat16"}
  lengths = {"inputs": args.inputs, "targets": args.targets}
  return [f"--gin_file=models/mt5_{size}.gin", "--gin_file=runs/finetune.gin",
          f"--gin.TASK_FEATURE_LENGTHS={lengths}", f"--gin.BATCH_SIZE={args.batch}",
          "--gin.DROPOUT_RATE=0.0", f"--gin.xltransfer.model.mt5_config.overrides={overrides}",
          f"--gin.xltransfer.train.train.num_microbatches={settings['num_microbatches']}"]


def report(folder):
  """The figures of a device check's output folder, one table (plan_SIZE.json beside them)."""
  import glob
  results = {}
  for path in sorted(glob.glob(os.path.join(folder, "gpu_step_*.json"))):
    with open(path) as f:
      results.update(json.load(f)["sizes"])
  if not results:
    print(f"gpu_step: no gpu_step_*.json in {folder}")
    return 1
  plans = {}
  for size in results:
    path = os.path.join(folder, f"plan_{size}.json")
    if os.path.exists(path):
      with open(path) as f:
        plans[size] = json.load(f)["steps"]["train_step"]["peak_bytes"]
  _print_table({"sizes": results}, plans)
  return 0


def main(argv=None):
  args = _args(argv)
  if args.report:
    return report(args.report)
  settings = settings_for(args)
  if args.plan_flags:
    print("\n".join(plan_flags(args.sizes.split(",")[0].strip(), args, settings)))
    return 0
  import jax

  sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
  skip = set(filter(None, args.skip.split(",")))
  devices = jax.devices()
  kind = devices[0].device_kind
  peak, peak_source = peak_bf16_flops(kind)
  if args.peak_flops:
    peak, peak_source = args.peak_flops, "--peak_flops"
  result = {
      "meta": {"argv": sys.argv[1:] if argv is None else list(argv), "versions": _versions(),
               "platform": devices[0].platform, "device_kind": kind,
               "num_devices": len(devices), "peak_bf16_flops_per_device": peak,
               "peak_source": peak_source, "settings": settings,
               "shapes": {"batch": args.batch, "inputs": args.inputs, "targets": args.targets,
                          "decode_batch": args.decode_batch, "new_tokens": args.new_tokens},
               "steps": args.steps, "warmup": args.warmup, "decode_steps": args.decode_steps,
               "tiny": args.tiny, "blocked_or_missing": _absent_packages(),
               "notes": [
                   "MFU: model FLOPs (planning/flops.py, no remat) / (median step time x peak "
                   "x devices); HF's MFU uses the same model FLOPs on one device",
                   "measured_peak_bytes: the JAX allocator's peak since the process started "
                   "(state init and compile-time scratch included); HF: "
                   "torch.cuda.max_memory_allocated over its train steps",
                   "plan_predicted: this compiled step's memory analysis, peak as "
                   "planning/compile.py computes it",
                   "dropout off on both sides; packed rows without padding; HF attends across "
                   "the packed segments (same FLOPs: both sides compute full attention)"]},
      "sizes": {},
  }
  path = None
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu_step_{'_'.join(sizes)}.json")

  def write():
    if path:
      with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2, default=str)
      os.replace(path + ".tmp", path)

  print(f"gpu_step: {len(devices)} x {kind} ({devices[0].platform}), peak "
        f"{(peak or 0) / 1e12:g} TFLOP/s bf16 per device ({peak_source}); batch {args.batch}, "
        f"inputs {args.inputs}, targets {args.targets}; {settings}", flush=True)
  for size in sizes:
    record = {"_write": write, "_peak_flops": peak, "errors": {}}
    result["sizes"][size] = record
    model = params = None

    def part(name, fn):
      if name in skip:
        return None
      start = time.perf_counter()
      try:
        value = fn()
      except Exception as e:  # pylint: disable=broad-except
        record["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        print(f"[{size}] {name} FAILED: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc()
        write()
        return None
      print(f"[{size}] {name}: {time.perf_counter() - start:.1f} s", flush=True)
      return value

    # Most wanted first: a part stopped by a time limit loses only what comes after it.
    trained = part("xltransfer", lambda: jax_train(size, args, settings, record))
    if trained:
      model, params, _ = trained
      part("cost_check", lambda: unrolled_cost_check(size, args, settings, record))
      part("xltransfer_decode", lambda: jax_decode(model, params, args, record))
    # Free the JAX state before HF allocates.
    model = params = trained = None
    jax.clear_caches()
    if "xltransfer" in record:
      part("hf", lambda: hf_train_and_decode(size, args, settings, record))
    part("xla_cpu_estimate", lambda: xla_cpu_estimate(size, args, settings, record))
    _summarise(size, record)
    write()
  for record in result["sizes"].values():
    record.pop("_write", None)
    record.pop("_peak_flops", None)
  write()
  _print_table(result)
  if path:
    print(f"gpu_step: figures in {path}")
  failed = any(r["errors"] for r in result["sizes"].values())
  return 1 if failed else 0


def _absent_packages():
  import importlib.util
  return [name for name in ("tensorflow", "seqio", "tensorflow_datasets", "gin")
          if importlib.util.find_spec(name) is None]


def _summarise(size, record):
  ours, theirs = record.get("xltransfer", {}), record.get("hf", {})
  summary = {}
  if ours.get("tokens_per_second") and theirs.get("tokens_per_second"):
    summary["train_tokens_per_second_ratio"] = (ours["tokens_per_second_per_device"]
                                                / theirs["tokens_per_second"])
  ours_d, theirs_d = record.get("xltransfer_decode", {}), record.get("hf_decode", {})
  if ours_d.get("tokens_per_second") and theirs_d.get("tokens_per_second"):
    summary["decode_tokens_per_second_ratio"] = (ours_d["tokens_per_second"]
                                                 / theirs_d["tokens_per_second"])
  record["summary"] = summary


def _fmt(value, scale=1.0, digits=1, suffix=""):
  if value is None:
    return "-"
  return f"{value / scale:.{digits}f}{suffix}"


def _print_table(result, plans=None):
  """Per size: both sides' step time, tokens/s, MFU, measured peak, the predicted peak of this
  compile (as plan computes it), of `xltransfer plan` itself where it ran, the XLA:CPU estimate,
  and decoding tokens/s."""
  gib = 1024 ** 3
  plans = plans or {}
  print(f"\n{'size':6s} {'side':11s} {'step s':>8s} {'tokens/s':>11s} {'MFU':>7s} "
        f"{'peak GiB':>9s} {'pred GiB':>9s} {'plan GiB':>9s} {'CPU est':>8s} "
        f"{'decode tok/s':>13s}")
  for size, record in result["sizes"].items():
    ours, theirs = record.get("xltransfer", {}), record.get("hf", {})
    plan = ours.get("plan_predicted", {}).get("peak_bytes")
    cpu = record.get("xla_cpu_estimate", {}).get("peak_bytes")
    print(f"{size:6s} {'xltransfer':11s} {_fmt(ours.get('step_seconds'), digits=3):>8s} "
          f"{_fmt(ours.get('tokens_per_second'), digits=0):>11s} "
          f"{_fmt(ours.get('mfu'), 0.01, 1, '%'):>7s} "
          f"{_fmt(ours.get('measured_peak_bytes'), gib, 2):>9s} {_fmt(plan, gib, 2):>9s} "
          f"{_fmt(plans.get(size), gib, 2):>9s} {_fmt(cpu, gib, 2):>8s} "
          f"{_fmt(record.get('xltransfer_decode', {}).get('tokens_per_second'), digits=0):>13s}")
    print(f"{size:6s} {'HF PyTorch':11s} {_fmt(theirs.get('step_seconds'), digits=3):>8s} "
          f"{_fmt(theirs.get('tokens_per_second'), digits=0):>11s} "
          f"{_fmt(theirs.get('mfu'), 0.01, 1, '%'):>7s} "
          f"{_fmt(theirs.get('measured_peak_bytes'), gib, 2):>9s} {'':>9s} {'':>9s} {'':>8s} "
          f"{_fmt(record.get('hf_decode', {}).get('tokens_per_second'), digits=0):>13s}")
    check = record.get("cost_check", {})
    summary = record.get("summary", {})
    print(f"{'':6s} model FLOPs/step {_fmt(ours.get('model_flops_per_step'), 1e9, 4)} G; "
          f"compiled cost analysis {_fmt(ours.get('compiled_cost_flops_per_step'), 1e9, 4)} G "
          f"(scanned bodies count once); unrolled cost / model "
          f"{_fmt(check.get('cost_over_model'), digits=3)}; train ratio "
          f"{_fmt(summary.get('train_tokens_per_second_ratio'), digits=2, suffix='x')}, decode "
          f"ratio {_fmt(summary.get('decode_tokens_per_second_ratio'), digits=2, suffix='x')}")
    for name, error in record.get("errors", {}).items():
      print(f"{'':6s} {name} failed: {error[:200]}")


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as error:
    print(f"gpu_step: error: {error}", file=sys.stderr)
    sys.exit(2)
