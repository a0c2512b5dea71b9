"""`xltransfer convert`: checkpoints between Hugging Face, T5X and xltransfer formats.

  xltransfer convert hf-to-xl  HF_DIR   DST      HF MT5 (safetensors or .bin) -> xltransfer
  xltransfer convert xl-to-hf  SRC      HF_DIR   xltransfer -> HF MT5ForConditionalGeneration
  xltransfer convert xl-to-t5x SRC      T5X_DIR  xltransfer -> T5X checkpoint (legacy msgpack +
      tensorstore, version 3; unscanned layers unless --scanned), with the run's trained
      Adafactor state when SRC is a trainer run, else a zero Adafactor state
  SRC for xl-to-*: an `xltransfer convert` output, a trainer MODEL_DIR (its latest step) or one
      of its checkpoint_N directories; the model config is the one the run recorded.
  xltransfer convert t5x-to-xl T5X_CKPT DST --size small   T5X checkpoint -> xltransfer
      (T5X checkpoints carry no config: name the size, and --set FIELD=VALUE for any change)
"""
import argparse
import ast
import logging
import os

import numpy as np

from xltransfer.checkpoints import hf, native, staging
from xltransfer.train import t5x_export, trained_run
from xltransfer.errors import ConfigError
from xltransfer.model.config import MODEL_SIZES, get_config


def _parser():
  parser = argparse.ArgumentParser(
      prog="xltransfer convert", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
  p = sub.add_parser("hf-to-xl", help="HF MT5 checkpoint directory -> xltransfer checkpoint")
  p.add_argument("src"), p.add_argument("dst")
  p = sub.add_parser("xl-to-hf", help="xltransfer checkpoint -> HF MT5 directory (safetensors)")
  p.add_argument("src"), p.add_argument("dst")
  p = sub.add_parser("xl-to-t5x", help="xltransfer checkpoint -> T5X checkpoint directory")
  p.add_argument("src"), p.add_argument("dst")
  p.add_argument("--scanned", action="store_true",
                 help="write the scanned layer layout (`layers` axis 1, e.g. scalable_t5) "
                      "instead of T5X mT5's layers_0..N-1")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--no_optimizer_state", action="store_true",
                     help="write parameters and step only, without an Adafactor state")
  which.add_argument("--zero_optimizer_state", action="store_true",
                     help="write a zero Adafactor state even when SRC is a trainer run "
                          "(whose trained state is written by default)")
  p.add_argument("--min_dim_size_to_factor", type=int,
                 default=t5x_export.DEFAULT_MIN_DIM_SIZE_TO_FACTOR,
                 help="min_dim_size_to_factor of the T5X Adafactor that resumes from the "
                      "export (T5X's mT5 default %(default)s); a run trained with a smaller one "
                      "needs it to export its factored second moments")
  p = sub.add_parser("t5x-to-xl", help="T5X checkpoint (msgpack, tensorstore or orbax) -> xltransfer")
  p.add_argument("src"), p.add_argument("dst")
  p.add_argument("--size", required=True, choices=sorted(MODEL_SIZES),
                 help="the mT5 size the checkpoint holds (T5X checkpoints carry no config)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a config field, e.g. --set vocab_size=32128 for English T5 "
                      "checkpoints (repeatable; fields of xltransfer.model.config.MT5Config)")
  for p in sub.choices.values():
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
  return parser


def main(argv) -> int:
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.direction == "hf-to-xl":
    params, config = hf.load_hf_checkpoint(args.src)
    native.save_params(params, config, args.dst, overwrite=args.overwrite)
  elif args.direction == "xl-to-hf":
    staging.check_destination(os.path.abspath(args.dst), args.overwrite)  # before reading SRC
    params, config, _, _ = load_exportable(args.src)
    hf.save_hf_checkpoint(_to_numpy(params), config, args.dst, overwrite=args.overwrite)
  elif args.direction == "xl-to-t5x":
    staging.check_destination(os.path.abspath(args.dst), args.overwrite)
    params, config, step, step_dir = load_exportable(args.src)
    optimizer_state = not args.no_optimizer_state
    trained_state = None
    if step_dir is not None and optimizer_state and not args.zero_optimizer_state:
      trained_state = trained_run.load_trained_optimizer_state(step_dir)
    t5x_export.save_t5x_checkpoint(params, config, args.dst, step, scanned=args.scanned,
                                   optimizer_state=optimizer_state, trained_state=trained_state,
                                   min_dim_size_to_factor=args.min_dim_size_to_factor,
                                   overwrite=args.overwrite)
    print(f"optimizer state: "
          f"{t5x_export.describe_optimizer_state(optimizer_state, trained_state)}"
          + ("" if step_dir is not None or not optimizer_state
             else f" ({args.src} holds no optimizer state)"))
  else:
    from xltransfer.checkpoints import t5x
    from xltransfer.model.models import EncoderDecoderModel
    config = get_config(args.size, **_parse_overrides(args.set))
    target = EncoderDecoderModel(config).abstract_params()
    params = t5x.load_t5x_params(args.src, target)
    native.save_params(params, config, args.dst, overwrite=args.overwrite)
  count = sum(int(np.prod(x.shape)) for x in _leaves(params))
  print(f"wrote {args.dst} ({count / 1e6:.1f}M parameters)")
  return 0


def load_exportable(path: str):
  """(params, config, step, step_dir) of an `xltransfer convert` output (step 0, step_dir
  None: it holds no optimizer state) or a trainer run's MODEL_DIR / checkpoint_N (its step;
  the config the run recorded; the checkpoint_<step> directory read)."""
  if native.is_native_checkpoint(path):
    params, config = native.load_params(path)
    return params, config, 0, None
  trained = trained_run.load_trained_params(path)
  return trained.params, trained.config, trained.step, trained.step_dir


def _parse_overrides(items):
  """FIELD=VALUE strings -> typed config overrides (values parsed as Python literals)."""
  overrides = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
    try:
      overrides[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[field] = value  # a bare word such as float32
  return overrides


def _leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


def _to_numpy(tree):
  import jax
  return jax.tree_util.tree_map(np.asarray, tree)
