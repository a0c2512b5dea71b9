"""Decoding throughput of xltransfer's mT5 against HF PyTorch `generate`, side by side: greedy,
or beam search with `--num_beams`.

Both run on this machine's CPU with the same weights (ours randomly initialised, then converted
to HF's layout after our timed runs) and the same
inputs, each with its key/value cache, each in float32 and in bfloat16 (ours: bf16 activations,
KV cache and matmul operands, float32 accumulation and logits, from the model's
`decoding_weights` made once before the timed runs, as evaluation makes them once for all its
batches on a CPU; HF: `generate` under
`torch.autocast("cpu", dtype=torch.bfloat16)`, and once more with the model's weights cast to
bfloat16 first, `model.to(torch.bfloat16)`: HF's fastest inference mode, which autocast alone
is not, as it reads float32 weights). Every row decodes exactly `--new_tokens`
tokens on both sides: the output rows of EOS and of the pad id are zeroed, so their logits
(0) never beat the largest of the others, no row stops early and none pads (HF pads after EOS
with 0; a bf16 HF model once chose the pad id when its row was left as initialised). Prints
new tokens per second of every mode (batch
x new tokens / wall time, encoder included), the best against the best, the model FLOP/s over a
bf16 GEMM peak measured here, and how many tokens each pair of modes agrees on.

With `--num_beams K` both sides run beam search (ours: `EncoderDecoderModel.beam_search`; HF:
`generate(num_beams=K)`) and the best beam's tokens are compared. No hypothesis can end (EOS
never wins), so all have the same length and the two length penalties (GNMT's for us, HF's
length ** penalty) rank them alike.

  python benchmarks/decode_vs_hf.py                     # mT5-small, batch 16, 256 in, 64 new
  python benchmarks/decode_vs_hf.py --size tiny --batch 2 --inputs 16 --new_tokens 4 --steps 1
  python benchmarks/decode_vs_hf.py --num_beams 4 --batch 4 --new_tokens 32 --steps 1
"""
import argparse
import copy
import os

import numpy as np

from hf_reference import (bf16_gemm_peak, bf16_gemm_peak_in_child, decode_flops, hf_autocast,
                          modes_from_flag, report, same_host_malloc_for_both, timed, untied_hf_mt5)

PAD_ID, EOS_ID = 0, 1
# HF's extra bfloat16 mode: weights cast to bf16 (a copy of the model), run under autocast.
BF16_WEIGHTS = "bf16 weights"
HF_MODE_NAMES = {"bfloat16": "bf16 autocast", BF16_WEIGHTS: "bf16 weights + autocast"}


def _args():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--inputs", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3, help="timed decodes per framework")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--dtype", default="both", help="float32, bfloat16 or both")
  parser.add_argument("--num_beams", type=int, default=1,
                      help="1: greedy decoding; K > 1: beam search with K beams on both sides")
  return parser.parse_args()


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
  # Our weights first, HF's model from them after our timed runs: built first, torch's model
  # (its allocations) slowed our following greedy decodes by 2-5% (alternating processes).
  params = jax.jit(EncoderDecoderModel(config).init)(jax.random.PRNGKey(0))
  kernel = params["decoder"]["logits_dense"]["kernel"]  # [embed, vocab]
  params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, [PAD_ID, EOS_ID]].set(0.0)
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, config.vocab_size, size=(args.batch, args.inputs)).astype(np.int32)
  tokens = args.batch * args.new_tokens

  device_inputs = jnp.asarray(inputs)

  def ours(mode):
    model = EncoderDecoderModel(config.replace(dtype=mode))
    # Made once, as evaluation makes them once for all its batches on a CPU (and as HF's
    # bf16-weights mode casts its model once): the weights cast to the activation dtype.
    weights = jax.block_until_ready(model.decoding_weights(params))
    if args.num_beams > 1:  # The best beam (they come best first).
      return lambda: np.asarray(jax.block_until_ready(model.beam_search(
          weights, device_inputs, args.new_tokens, args.num_beams)[0][:, 0]))
    return lambda: np.asarray(jax.block_until_ready(
        model.greedy_decode(weights, device_inputs, args.new_tokens)))

  torch_inputs = torch.from_numpy(inputs.astype(np.int64))
  mask = torch.ones_like(torch_inputs)

  hf_models = {}

  def theirs(mode):
    if not hf_models:  # The same weights as ours, in HF's layout.
      hf_models["float32"] = untied_hf_mt5(config).eval()
      state = hf.params_to_state_dict(jax.device_get(params), config)
      hf_models["float32"].load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    model = reference = hf_models["float32"]
    if mode == BF16_WEIGHTS:
      model = copy.deepcopy(reference).to(torch.bfloat16)
      mode = "bfloat16"

    def run():
      with torch.no_grad(), hf_autocast(mode):
        out = model.generate(input_ids=torch_inputs, attention_mask=mask, do_sample=False,
                                 num_beams=args.num_beams, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, use_cache=True)
      return out[:, 1:].numpy()  # Drops the decoder start token.
    return run

  modes = modes_from_flag(args.dtype)
  search = f"beam search ({args.num_beams} beams)" if args.num_beams > 1 else "greedy decoding"
  print(f"mT5-{args.size} {search}, batch {args.batch}, inputs {args.inputs}, "
        f"{args.new_tokens} new tokens, vocab {config.vocab_size}, "
        f"{args.threads} CPU threads, {args.steps} timed runs after {args.warmup} warm-up; "
        f"jax {jax.__version__}, torch {torch.__version__}")
  print(f"  host malloc (both sides): {malloc}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  peak, peaks = bf16_gemm_peak_in_child()  # not in this process: it would slow our steps
  rows, outputs = [], {}
  hf_modes = modes + ((BF16_WEIGHTS,) if "bfloat16" in modes else ())
  for framework, make, framework_modes in (("xltransfer (JAX)", ours, modes),
                                           ("HF generate", theirs, hf_modes)):
    for mode in framework_modes:
      name = f"{framework} {HF_MODE_NAMES.get(mode, mode) if framework.startswith('HF') else mode}"
      seconds, out = timed(make(mode), args.warmup, args.steps)
      if out.shape != (args.batch, args.new_tokens) or np.any(out == 0):
        raise SystemExit(f"{name} did not decode {args.new_tokens} tokens in every row "
                         f"(shape {out.shape}); the timings would not compare")
      rows.append((name.replace("HF generate", "HF"), seconds))
      outputs[name] = out
  peak, peaks = bf16_gemm_peak(previous=(peak, peaks))  # again: the better probe counts
  report(rows, tokens, "tokens",
         decode_flops(config, args.batch, args.inputs, args.new_tokens, args.num_beams),
         peak, peaks, per="decode")
  names = list(outputs)
  for i, first in enumerate(names):
    for second in names[i + 1:]:
      agree = float(np.mean(outputs[first] == outputs[second]))
      print(f"  same tokens, {first} vs {second}: {100 * agree:.1f}%")
  print("  (rounding can flip a near-tie between two tokens, and a flip changes the rest of "
        "its row)")


if __name__ == "__main__":
  main()
