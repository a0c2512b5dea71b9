"""Training throughput of xltransfer vs HF PyTorch MT5 on this CPU, side by side.

Both train the same network (mT5-small by default: untied output layer, no dropout unless
`--dropout_rate` says so: then each side applies its own, HF per element, xltransfer as T5X) with
Adafactor as T5X configures it (factored, decay 0.8, clipping 1.0, parameter scaling,
constant 1e-3) on the same random batches (batch 8, inputs 512, targets 128), each in two
modes: float32, and bfloat16 (ours: bf16 activations and matmul operands, float32
accumulation, parameters and optimizer; HF: `torch.autocast("cpu", dtype=torch.bfloat16)`,
its fastest CPU mode). Prints all four, the best against the best, and the model FLOP/s over
a bf16 GEMM peak measured here ("CPU MFU"). Compilation / the first steps are not timed.

  python benchmarks/train_vs_hf.py                       # the full comparison (minutes)
  python benchmarks/train_vs_hf.py --size tiny --input_length 32 --target_length 16 --steps 3
  python benchmarks/train_vs_hf.py --dtype bfloat16 --profile /tmp/profile   # + where time goes
"""
import argparse
import os
import time

import numpy as np

from hf_reference import (bf16_gemm_peak, bf16_gemm_peak_in_child, hf_autocast, model_flops,
                          modes_from_flag, report, same_host_malloc_for_both, untied_hf_mt5)


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="small", help="mT5 size: tiny, small, base, ...")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--input_length", type=int, default=512)
  parser.add_argument("--target_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per framework")
  parser.add_argument("--warmup_steps", type=int, default=2, help="untimed steps first")
  parser.add_argument("--dtype", default="both",
                      help="float32, bfloat16 or both (modes run on each side)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dropout_rate", type=float, default=0.0,
                      help="dropout on both sides (fine-tuning uses 0.1)")
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="after timing, trace two of xltransfer's steps in its last mode into "
                           "DIR and print where the time goes (benchmarks/xla_profile.py)")
  return parser.parse_args()


def _batches(args, vocab_size, count):
  """Random encoder-decoder batches in the feature converter's layout (no padding)."""
  rng = np.random.default_rng(args.seed)
  for _ in range(count):
    inputs = rng.integers(2, vocab_size, (args.batch_size, args.input_length), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (args.batch_size, args.target_length), dtype=np.int32)
    decoder_inputs = np.concatenate(
        [np.zeros((args.batch_size, 1), np.int32), targets[:, :-1]], axis=1)
    yield {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
           "decoder_target_tokens": targets,
           "decoder_loss_weights": np.ones_like(targets, dtype=np.float32)}


def _time_steps(step_fn, batches, warmup):
  """Runs every batch through step_fn; returns seconds per step over the post-warm-up steps."""
  times = []
  for i, batch in enumerate(batches):
    start = time.perf_counter()
    step_fn(batch)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return float(np.mean(times))


def bench_jax(args, config, profile_dir=None):
  import jax  # pylint: disable=import-outside-toplevel
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  from xltransfer.partitioning import create_partitioner  # pylint: disable=import-outside-toplevel
  from xltransfer.train.input import to_global_batch  # pylint: disable=import-outside-toplevel
  from xltransfer.train.optimizer import Adafactor  # pylint: disable=import-outside-toplevel
  from xltransfer.train.schedules import learning_rate_schedule  # pylint: disable=import-outside-toplevel
  from xltransfer.train.trainer import Trainer  # pylint: disable=import-outside-toplevel

  model = EncoderDecoderModel(config)
  partitioner = create_partitioner()
  optimizer = Adafactor().create(learning_rate_schedule("constant", 1e-3),
                                 model.abstract_params(), model.param_logical_axes())
  trainer = Trainer(model, optimizer, partitioner)
  holder = {"state": trainer.init_state(args.seed)}

  def step(batch):
    holder["state"], metrics = trainer.train_step(
        holder["state"], to_global_batch(batch, partitioner, args.batch_size))
    jax.block_until_ready(metrics["loss"])

  seconds = _time_steps(step, _batches(args, config.vocab_size,
                                       args.warmup_steps + args.steps), args.warmup_steps)
  if profile_dir:
    import xla_profile  # pylint: disable=import-outside-toplevel
    batch = next(_batches(args, config.vocab_size, 1))
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    text = trainer.lower_train_step(None, abstract).compile().as_text()
    xla_profile.record(lambda: step(batch), 2, profile_dir, text)
    xla_profile.print_summary(xla_profile.summarise(profile_dir))
  return seconds


def bench_hf(args, config, mode):
  import torch  # pylint: disable=import-outside-toplevel
  from transformers.optimization import Adafactor as HFAdafactor  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  model = untied_hf_mt5(config, seed=args.seed, dropout_rate=args.dropout_rate)
  model.train()
  optimizer = HFAdafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=True,
                          warmup_init=False, clip_threshold=1.0, decay_rate=-0.8)

  def step(batch):
    with hf_autocast(mode):
      out = model(input_ids=torch.from_numpy(batch["encoder_input_tokens"]).long(),
                  decoder_input_ids=torch.from_numpy(batch["decoder_input_tokens"]).long(),
                  labels=torch.from_numpy(batch["decoder_target_tokens"]).long())
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  return _time_steps(step, _batches(args, config.vocab_size, args.warmup_steps + args.steps),
                     args.warmup_steps)


def main():
  args = _parse_args()
  malloc = same_host_malloc_for_both()
  from xltransfer.model.config import get_config  # pylint: disable=import-outside-toplevel
  modes = modes_from_flag(args.dtype)
  config = get_config(args.size, dropout_rate=args.dropout_rate)
  tokens = args.batch_size * (args.input_length + args.target_length)
  print(f"mT5-{args.size} training: batch {args.batch_size}, inputs {args.input_length}, targets "
        f"{args.target_length}; dropout {args.dropout_rate}; {args.steps} timed steps after "
        f"{args.warmup_steps} warm-up; {os.cpu_count()} CPU threads")
  print(f"  host malloc (both sides): {malloc}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  peak, peaks = bf16_gemm_peak_in_child()  # not in this process: it would slow our steps
  rows = []
  for mode in modes:
    profile_dir = args.profile if mode == modes[-1] else None
    rows.append((f"xltransfer (JAX) {mode}", bench_jax(args, config.replace(dtype=mode),
                                                       profile_dir)))
  for mode in modes:
    label = "bf16 autocast" if mode == "bfloat16" else mode
    rows.append((f"HF PyTorch {label}", bench_hf(args, config, mode)))
  peak, peaks = bf16_gemm_peak(previous=(peak, peaks))  # again: the better probe counts
  report(rows, tokens, "tokens",
         model_flops(config, args.batch_size, args.input_length, args.target_length), peak, peaks)


if __name__ == "__main__":
  main()
