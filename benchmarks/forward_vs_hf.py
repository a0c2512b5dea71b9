"""Forward+backward throughput of xltransfer's mT5 against HF PyTorch MT5, side by side.

Both run on this machine's CPU with the same weights (HF's random init converted) and the same
inputs, each in float32 and in bfloat16 (ours: bf16 activations and matmul operands with float32
accumulation; HF: `torch.autocast("cpu", dtype=torch.bfloat16)`). Prints tokens/s of all four
(input + target tokens per second), the best against the best, and the model FLOP/s over a
bf16 GEMM peak measured here ("CPU MFU").

  python benchmarks/forward_vs_hf.py                      # mT5-small, batch 8, 512/128
  python benchmarks/forward_vs_hf.py --size tiny --steps 3 --inputs 64 --targets 16
"""
import argparse
import os

import numpy as np

from hf_reference import (bf16_gemm_peak, bf16_gemm_peak_in_child, hf_autocast, model_flops,
                          modes_from_flag, report, same_host_malloc_for_both, timed, untied_hf_mt5)


def _args():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per framework")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--dtype", default="both", help="float32, bfloat16 or both")
  return parser.parse_args()


def _batch(args, vocab):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, vocab, size=(args.batch, args.inputs)).astype(np.int32)
  tgt = rng.randint(2, vocab, size=(args.batch, args.targets)).astype(np.int32)
  dec = np.concatenate([np.zeros((args.batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


def main():
  args = _args()
  malloc = same_host_malloc_for_both()
  import jax
  import jax.numpy as jnp
  import torch

  from xltransfer.checkpoints import hf
  from xltransfer.model.config import get_config
  from xltransfer.model.models import EncoderDecoderModel

  torch.set_num_threads(args.threads)
  config = get_config(args.size, dtype="float32")
  # Dropout is off on both sides: the benchmark compares the network, not the rng.
  reference = untied_hf_mt5(config).train()
  state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  params = jax.device_put(hf.state_dict_to_params(state, config))
  enc, dec, tgt = _batch(args, config.vocab_size)
  tokens = args.batch * (args.inputs + args.targets)

  batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec),
           "decoder_target_tokens": jnp.asarray(tgt),
           "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32)}

  def ours(mode):
    model = EncoderDecoderModel(config.replace(dtype=mode),
                                loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))
    return lambda: jax.block_until_ready(grad_fn(params, batch))

  t_enc, t_dec, t_tgt = (torch.from_numpy(x.astype(np.int64)) for x in (enc, dec, tgt))

  def theirs(mode):
    def run():
      reference.zero_grad(set_to_none=True)
      with hf_autocast(mode):
        out = reference(input_ids=t_enc, decoder_input_ids=t_dec, labels=t_tgt)
      out.loss.backward()
    return run

  modes = modes_from_flag(args.dtype)
  print(f"mT5-{args.size} forward+backward, batch {args.batch}, inputs {args.inputs}, "
        f"targets {args.targets}, vocab {config.vocab_size}, "
        f"{args.threads} CPU threads, {args.steps} timed steps after {args.warmup} warm-up; "
        f"jax {jax.__version__}, torch {torch.__version__}")
  print(f"  host malloc (both sides): {malloc}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  peak, peaks = bf16_gemm_peak_in_child()  # not in this process: it would slow our steps
  rows = [(f"xltransfer (JAX) {mode}", timed(ours(mode), args.warmup, args.steps)[0])
          for mode in modes]
  rows += [(f"HF PyTorch {'bf16 autocast' if mode == 'bfloat16' else mode}",
            timed(theirs(mode), args.warmup, args.steps)[0]) for mode in modes]
  peak, peaks = bf16_gemm_peak(previous=(peak, peaks))  # again: the better probe counts
  report(rows, tokens, "tokens", model_flops(config, args.batch, args.inputs, args.targets),
         peak, peaks)


if __name__ == "__main__":
  main()
