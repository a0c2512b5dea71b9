"""Forward+backward throughput of xltransfer's mT5 against HF PyTorch MT5, side by side.

Both run on this machine's CPU, in float32, with the same weights (HF's random init converted)
and the same inputs. Prints tokens/s of each (input + target tokens per second) and the ratio.

  python benchmarks/forward_vs_hf.py                      # mT5-small, batch 8, 512/128
  python benchmarks/forward_vs_hf.py --size tiny --steps 3 --inputs 64 --targets 16
"""
import argparse
import os

import numpy as np

from hf_reference import same_host_malloc_for_both, timed, untied_hf_mt5


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

  model = EncoderDecoderModel(config, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec),
           "decoder_target_tokens": jnp.asarray(tgt),
           "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32)}
  grad_fn = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))

  def ours():
    loss, grads = grad_fn(params, batch)
    jax.block_until_ready(grads)

  t_enc, t_dec, t_tgt = (torch.from_numpy(x.astype(np.int64)) for x in (enc, dec, tgt))

  def theirs():
    reference.zero_grad(set_to_none=True)
    out = reference(input_ids=t_enc, decoder_input_ids=t_dec, labels=t_tgt)
    out.loss.backward()

  print(f"mT5-{args.size} forward+backward, batch {args.batch}, inputs {args.inputs}, "
        f"targets {args.targets}, vocab {config.vocab_size}, float32, "
        f"{args.threads} CPU threads, {args.steps} timed steps after {args.warmup} warm-up")
  print(f"  host malloc (both sides): {malloc}")
  seconds_ours, _ = timed(ours, args.warmup, args.steps)
  seconds_theirs, _ = timed(theirs, args.warmup, args.steps)
  print(f"  xltransfer (jax {jax.__version__}): {seconds_ours:8.3f} s/step "
        f"{tokens / seconds_ours:10.1f} tokens/s")
  print(f"  HF PyTorch (torch {torch.__version__}): {seconds_theirs:8.3f} s/step "
        f"{tokens / seconds_theirs:10.1f} tokens/s")
  print(f"  ratio xltransfer/HF: {seconds_theirs / seconds_ours:.2f}x")


if __name__ == "__main__":
  main()
