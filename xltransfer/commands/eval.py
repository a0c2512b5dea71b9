r"""`xltransfer eval`: zero-shot evaluation of a checkpoint on XTREME-R eval tasks.

  xltransfer eval --gin_file=models/mt5_small.gin --gin_file=eval/zeroshot.gin \
      --gin.CHECKPOINT_PATH="'/runs/xnli'" --gin.EVAL_OUTPUT_DIR="'/runs/xnli/zeroshot'" \
      --gin.MIXTURE_OR_TASK_NAME="'xlt_xnli_zeroshot'"

The plain flags --checkpoint, --output_dir, --tasks (comma-separated tasks or mixtures) and
--split set the same macros. CHECKPOINT_PATH takes what INITIAL_CHECKPOINT_PATH takes: a
trainer run directory (its latest step) or `checkpoint_N`, an `xltransfer convert` output, a
HF MT5 directory or a T5X checkpoint. The output directory gets predictions/{task}/{lang}.jsonl,
metrics.json, eval_info.json, TensorBoard summaries and DONE (docs/interfaces.md); a rerun
skips the tasks whose predictions exist. --submission_dir also writes the test-split
predictions in the official XTREME-R submission layout (task/test-{lang}.{tsv|json|jsonl});
TyDiQA-GoldP, which XTREME-R scores on its dev set, contributes its validation predictions.

A task is scored only when its data carries gold (XTREME-R's official test files do not):
a task without gold gets predictions only, and a line saying which file has no gold and why;
with --require_gold it fails instead. A task that fails (missing or malformed data, no gold
under --require_gold) does not stop the others: they are evaluated and written, the failures
are listed on stderr and in metrics.json, no DONE is written, no submission is written, and
the exit status is 1. An output directory that holds another checkpoint's or step's outputs
is recomputed for this one (a log line names the replaced predictions); with --no_overwrite it
is refused instead.

An unknown task or mixture name, a missing checkpoint, an output directory refused under
--no_overwrite, a full disk (the message names the file; finished tasks keep their files) or
a bad gin config prints an error and exits with status 2.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

from xltransfer import gin_utils
from xltransfer import registered_names
from xltransfer.errors import ConfigError

DEFAULT_GIN_FILE = "eval/zeroshot.gin"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="xltransfer eval", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable): a model file such as models/mt5_small.gin; "
                           f"{DEFAULT_GIN_FILE} is added when no eval file is given")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding such as 'xltransfer.evaluation.EvalSettings.beam_size "
                           "= 4' (repeatable)")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="extra directories (comma-separated) to find gin files and includes")
  gin_utils.add_module_flag(parser)
  parser.add_argument("--checkpoint", help="sets CHECKPOINT_PATH")
  parser.add_argument("--output_dir", help="sets EVAL_OUTPUT_DIR")
  parser.add_argument("--tasks", help="sets MIXTURE_OR_TASK_NAME (comma-separated names)")
  parser.add_argument("--split", help="sets SPLIT (test, validation); tasks without it fall "
                                      "back to validation")
  parser.add_argument("--submission_dir", default=None,
                      help="also write the predictions in the XTREME-R submission layout (test "
                           "splits; TyDiQA-GoldP's dev split as tydiqa/test-{lang}.json)")
  parser.add_argument("--require_gold", action="store_true", default=None,
                      help="fail a task whose data has no gold (instead of predictions only); "
                           "sets xltransfer.evaluation.EvalSettings.require_gold")
  parser.add_argument("--no_overwrite", action="store_true", default=None,
                      help="refuse an output directory holding another checkpoint's, step's or "
                           "settings' outputs instead of recomputing them; sets "
                           "xltransfer.evaluation.EvalSettings.no_overwrite")
  parser.add_argument("--check_devices", action="store_true",
                      help="only check that the config's mesh (and batch size) can be laid out "
                           "on the devices present, as the evaluation's start would; print it, "
                           "exit")
  parser.add_argument("--log_level", default="INFO")
  return parser


def _macro_bindings(args) -> List[str]:
  flags = {"CHECKPOINT_PATH": args.checkpoint, "EVAL_OUTPUT_DIR": args.output_dir,
           "MIXTURE_OR_TASK_NAME": args.tasks, "SPLIT": args.split,
           "xltransfer.evaluation.EvalSettings.require_gold": args.require_gold,
           "xltransfer.evaluation.EvalSettings.no_overwrite": args.no_overwrite}
  return [f"{name} = {value!r}" for name, value in flags.items() if value is not None]


def _task_names(gin) -> List[str]:
  """The comma-separated names of MIXTURE_OR_TASK_NAME (--tasks), if the config uses it."""
  try:
    value = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  except ValueError:
    return []
  return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else []


def _run(argv: Sequence[str]) -> int:
  rest, cli_bindings = gin_utils.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                      format="%(asctime)s %(levelname)s %(message)s", force=True)
  gin_files = list(args.gin_file)
  if not gin_files:
    raise ConfigError("no --gin_file given: name the model, e.g. --gin_file=models/mt5_small.gin "
                      f"(and optionally --gin_file={DEFAULT_GIN_FILE})")
  if not any(os.path.basename(os.path.dirname(f)) == "eval" for f in gin_files):
    gin_files.append(DEFAULT_GIN_FILE)
  import gin  # pylint: disable=import-outside-toplevel
  from xltransfer import partitioning  # pylint: disable=import-outside-toplevel
  partitioning.initialize_distributed(preemption_sync=False)  # SIGTERM stops an eval at once
  gin_utils.import_modules(["xltransfer.evaluation.evaluator", "xltransfer.model.factory"])
  gin_utils.defer_modules(["xltransfer.tasks"])  # seqio and TensorFlow: after a good config
  gin.clear_config()
  gin_utils.parse_config(gin_files, list(args.gin_bindings) + _macro_bindings(args)
                         + cli_bindings, args.gin_search_paths, args.module)
  registered_names.check(_task_names(gin), "task or mixture")  # before TensorFlow loads
  if args.check_devices:
    from xltransfer.evaluation.settings import EvalSettings  # pylint: disable=import-outside-toplevel
    batch_size = EvalSettings().batch_size  # as gin configures the evaluation's
    print(f"xltransfer eval --check_devices: {partitioning.check_devices(batch_size)}")
    return 0
  gin_utils.import_modules(["xltransfer.tasks"])
  from xltransfer.evaluation import evaluator, outputs  # pylint: disable=import-outside-toplevel
  outcome = evaluator.evaluate_checkpoint()
  output_dir = outcome["output_dir"]
  for target, by_lang in outcome["metrics"].items():
    for lang, scores in by_lang.items():
      print(f"{target:8s} {lang:4s} " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
  for target, by_lang in outcome["no_gold"].items():
    for lang, reason in by_lang.items():
      print(f"{target:8s} {lang:4s} no gold, no metric; predictions only in "
            f"{outputs.predictions_path(output_dir, target, lang)}: {reason}")
  for target, by_lang in outcome["truncated"].items():
    for lang, counts in by_lang.items():
      print(f"{target:8s} {lang:4s} cut at the lengths: {counts['inputs_truncated']} of "
            f"{counts['examples']} inputs, {counts['decode_limit_reached']} predictions at the "
            "decode length (\"truncated\" in metrics.json)")
  print(f"predictions and metrics.json in {output_dir}")
  failed = [(t, l, e) for t, by_lang in outcome["failed"].items() for l, e in by_lang.items()]
  if failed:
    print(f"xltransfer eval: {len(failed)} of {outcome['tasks']} tasks failed (listed under "
          f"\"failed\" in {os.path.join(output_dir, outputs.METRICS_FILE)}; no "
          f"{outputs.DONE_FILE} written; a rerun redoes only these):", file=sys.stderr)
    for target, lang, error in failed:
      print(f"  {target}/{lang}: {error}", file=sys.stderr)
    if args.submission_dir:
      print(f"xltransfer eval: no submission written to {args.submission_dir}: it would lack "
            "the failed tasks", file=sys.stderr)
    return 1
  if args.submission_dir:
    from xltransfer.evaluation import submission  # pylint: disable=import-outside-toplevel
    paths = submission.write_submission_dir(outcome["output_dir"], args.submission_dir)
    print(f"wrote {len(paths)} submission files under {args.submission_dir}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return _run(list(sys.argv[1:] if argv is None else argv))
