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
predictions in the official XTREME-R submission layout (task/test-{lang}.{tsv|json|jsonl}).

An unknown task or mixture name, a missing checkpoint or a bad gin config prints an error and
exits with status 2.
"""
import argparse
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

from xltransfer.errors import ConfigError, UserError

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
  parser.add_argument("--checkpoint", help="sets CHECKPOINT_PATH")
  parser.add_argument("--output_dir", help="sets EVAL_OUTPUT_DIR")
  parser.add_argument("--tasks", help="sets MIXTURE_OR_TASK_NAME (comma-separated names)")
  parser.add_argument("--split", help="sets SPLIT (test, validation); tasks without it fall "
                                      "back to validation")
  parser.add_argument("--submission_dir", default=None,
                      help="also write test-split predictions in the XTREME-R submission layout")
  parser.add_argument("--log_level", default="INFO")
  return parser


def _macro_bindings(args) -> List[str]:
  flags = {"CHECKPOINT_PATH": args.checkpoint, "EVAL_OUTPUT_DIR": args.output_dir,
           "MIXTURE_OR_TASK_NAME": args.tasks, "SPLIT": args.split}
  return [f"{name} = {value!r}" for name, value in flags.items() if value is not None]


def _submission_predictions(target: str, records: List[dict]):
  """One language's records as `submission.write_submission_file` takes them."""
  if target in ("xquad", "mlqa", "tydiqa", "mewslix", "lareqa"):
    return {r["id"]: r["prediction"] for r in records}
  if target == "xcopa":
    return [r["prediction_index"] for r in records]
  return [r["prediction"] for r in records]


def write_submission(output_dir: str, submission_dir: str) -> List[str]:
  """Writes the test-split predictions of an eval output directory in the submission layout.

  Tasks read from another split and tasks outside XTREME-R are left out (and logged).
  """
  from xltransfer.evaluation import evaluator, submission  # pylint: disable=import-outside-toplevel
  with open(os.path.join(output_dir, evaluator.INFO_FILE)) as f:
    splits = json.load(f)["splits"]
  known = {spec.name for spec in submission.XTREME_R_TASKS}
  written = []
  for target, by_lang in splits.items():
    for lang, split in by_lang.items():
      if target not in known or split != "test":
        logging.info("submission: %s/%s left out (%s split)", target, lang, split)
        continue
      records = evaluator.read_records(evaluator.predictions_path(output_dir, target, lang))
      written.append(submission.write_submission_file(
          submission_dir, target, lang, _submission_predictions(target, records)))
  return written


def _run(argv: Sequence[str]) -> int:
  from xltransfer.train import main as train_main  # pylint: disable=import-outside-toplevel
  rest, cli_bindings = train_main.split_gin_flags(argv)
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
  partitioning.initialize_distributed()
  # pylint: disable=import-outside-toplevel,unused-import
  import xltransfer.evaluation.evaluator
  import xltransfer.tasks
  import xltransfer.train.model_factory
  # pylint: enable=import-outside-toplevel,unused-import
  gin.clear_config()
  train_main.parse_gin(gin_files, list(args.gin_bindings) + _macro_bindings(args) + cli_bindings,
                       args.gin_search_paths)
  from xltransfer.evaluation import evaluator  # pylint: disable=import-outside-toplevel
  outcome = evaluator.evaluate_checkpoint()
  for target, by_lang in outcome["metrics"].items():
    for lang, scores in by_lang.items():
      print(f"{target:8s} {lang:4s} " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
  print(f"predictions and metrics.json in {outcome['output_dir']}")
  if args.submission_dir:
    paths = write_submission(outcome["output_dir"], args.submission_dir)
    print(f"wrote {len(paths)} submission files under {args.submission_dir}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    return _run(argv)
  except UserError as error:
    print(f"xltransfer eval: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
