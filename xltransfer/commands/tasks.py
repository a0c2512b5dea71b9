"""`xltransfer tasks`: list and inspect the registered tasks and mixtures.

  xltransfer tasks list [--kind intermediate|target|corpus|translated|mixture|seqio] [--json]
  xltransfer tasks show NAME [--split S] [-n 3] [--vocab builtin|byte|mt5|PATH]
  xltransfer tasks lengths NAME [--split S] [--lengths inputs=512,targets=128] [-n N] [--json]

Both take --module=my_tasks (or a .py path) and --gin_file=my_run.gin to load a user's
registrations as `xltransfer train|eval` would (the gin files' `import` lines, T5X's
MIXTURE_OR_TASK_MODULE, settings such as the target source). Tasks registered with seqio
outside the catalogue are listed as kind `seqio`.

For each XTREME-R eval task, `list` says which source and split its scores come from under the
current target source (gin `target_source`, $XLTRANSFER_TARGET_SOURCE), and `show` what the
split it read actually holds (a stripped file is named, predictions only).

`lengths` tokenizes a task's (or each task of a mixture's) examples without cutting them and
prints each feature's token lengths (EOS included) and how many exceed the lengths a run would
use (TASK_FEATURE_LENGTHS; seqio cuts those silently): for choosing lengths before a run.
"""
import argparse
import difflib
import json
import sys

import numpy as np

from xltransfer import gin_utils
from xltransfer.errors import UserError

# What `--gin_file` configs may bind: the configurables of train, eval and plan configs.
REGISTRATION_MODULES = ["xltransfer.partitioning", "xltransfer.model.factory",
                        "xltransfer.train.run", "xltransfer.train.evaluate",
                        "xltransfer.evaluation.evaluator"]
# Tasks registered with seqio directly (not through the catalogue).
SEQIO_KIND = "seqio"


def _parser():
  parser = argparse.ArgumentParser(prog="xltransfer tasks", description=__doc__.splitlines()[0])
  loading = argparse.ArgumentParser(add_help=False)
  gin_utils.add_module_flag(loading)
  loading.add_argument("--gin_file", action="append", default=[],
                       help="a gin file whose `import` lines (and settings) to load (repeatable)")
  loading.add_argument("--gin_search_paths", action="append", default=[])
  sub = parser.add_subparsers(dest="command", required=True)
  listing = sub.add_parser("list", help="registered tasks and mixtures", parents=[loading])
  listing.add_argument("--kind", choices=("intermediate", "target", "corpus", "translated",
                                          "mixture", SEQIO_KIND))
  listing.add_argument("--json", action="store_true", help="one JSON object per entry, as a list")
  show = sub.add_parser("show", help="raw and tokenized examples of a task, decoded back",
                        parents=[loading])
  show.add_argument("name")
  show.add_argument("--split", default="train")
  show.add_argument("-n", type=int, default=3, help="number of examples")
  show.add_argument("--vocab", default=None,
                    help="vocabulary for tokenizing (default: gin / $XLTRANSFER_VOCAB / mt5)")
  lengths = sub.add_parser("lengths", parents=[loading],
                          help="token lengths of a task's examples against the run's lengths")
  lengths.add_argument("name")
  lengths.add_argument("--split", default="train")
  lengths.add_argument("--lengths", default="inputs=512,targets=128",
                       help="FEATURE=TOKENS,... the lengths a run would cut at "
                            "(default: runs/finetune.gin's)")
  lengths.add_argument("-n", type=int, default=None,
                       help="read at most this many examples per task (default: all)")
  lengths.add_argument("--vocab", default=None,
                       help="vocabulary for tokenizing (default: gin / $XLTRANSFER_VOCAB / mt5)")
  lengths.add_argument("--json", action="store_true", help="the figures as one JSON object")
  return parser


def _scores_from(entry):
  """{split: the source and split its scores come from} for an XTREME-R eval task under the
  current gin / environment (xltransfer.data.paths.target_source), or None for other entries.
  Reads no data: a stripped test file is named as such from what the download is known to
  hold; `show` reads the split and prints its actual provenance."""
  if entry.kind != "target" or "_eval_" not in entry.name:
    return None
  import seqio  # pylint: disable=g-import-not-at-top
  describe = getattr(seqio.get_mixture_or_task(entry.name).source, "describe", None)
  if describe is None:
    return None
  return {split: describe(split) for split in entry.splits}


def _seqio_entries():
  """Catalogue-style entries for the tasks and mixtures registered with seqio directly."""
  import seqio  # pylint: disable=g-import-not-at-top
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  found = []
  for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
    for name in sorted(registry.names()):
      if name in catalog.ENTRIES:
        continue
      provider = registry.get(name)
      declared = catalog.evaluation_of(name)
      is_task = isinstance(provider, seqio.Task)
      found.append(catalog.Entry(
          name, SEQIO_KIND, (declared and declared.family) or name,
          declared.language if declared else None,
          tuple(provider.splits) if is_task else (),
          "seqio task" if is_task else "seqio mixture",
          ((declared and declared.evaluation) or catalog.GENERATION) if is_task else None))
  return found


def _all_entries(kind=None):
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  return catalog.entries(kind) + (_seqio_entries() if kind in (None, SEQIO_KIND) else [])


def _list(args, out):
  entries = _all_entries(args.kind)
  if args.json:
    json.dump([{"name": e.name, "kind": e.kind, "family": e.family, "language": e.language,
                "splits": list(e.splits), "data": e.data, "evaluation": e.evaluation,
                "scores_from": _scores_from(e)}
               for e in entries], out, indent=1, ensure_ascii=False)
    out.write("\n")
    return 0
  width = max((len(e.name) for e in entries), default=0)
  for e in entries:
    splits = ",".join(e.splits)
    out.write(f"{e.name.ljust(width)}  {e.kind:12s} {e.language or '-':3s} {splits:16s} {e.data}\n")
    for split, where in (_scores_from(e) or {}).items():
      out.write(f"{'':{width}}    {split} scores from: {where}\n")
  out.write(f"{len(entries)} entries\n")
  return 0


def _value(value, vocabulary=None, token_feature=False):
  if token_feature and vocabulary is not None:
    ids = [int(t) for t in value]
    return f"{ids}\n      decoded: {vocabulary.decode(ids)!r}"
  if isinstance(value, bytes):
    return repr(value.decode("utf-8", errors="replace"))
  if hasattr(value, "tolist"):
    value = value.tolist()
  if isinstance(value, list):
    return repr([v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value])
  return repr(value)


def _provider(args):
  """The seqio task or mixture `args.name` (under `args.vocab`), or a UserError naming
  similar names."""
  import seqio  # pylint: disable=g-import-not-at-top
  from xltransfer.data import vocab  # pylint: disable=g-import-not-at-top
  if args.vocab:
    vocab.use_task_vocabulary(args.vocab)
  names = [e.name for e in _all_entries()]
  if args.name not in names:
    close = ([n for n in names if args.name in n][:10]
             or difflib.get_close_matches(args.name, names, n=5))
    raise UserError(f"unknown task or mixture {args.name!r}"
                    + (f"; similar: {', '.join(close)}" if close else "; see `xltransfer tasks list`")
                    + " (a task of your own: --module=MODULE or --gin_file=FILE loads it)")
  return seqio.get_mixture_or_task(args.name)


def _show(args, out):
  import seqio  # pylint: disable=g-import-not-at-top
  from xltransfer.data import vocab  # pylint: disable=g-import-not-at-top
  provider = _provider(args)
  if isinstance(provider, seqio.Mixture):
    out.write(f"mixture {args.name}: {len(provider.tasks)} tasks\n")
    total = provider.total_rate
    for task in provider.tasks:
      out.write(f"  {task.name:40s} rate {provider.get_rate(task) / total:.4f}\n")
    return 0
  if args.split not in provider.splits:
    raise UserError(f"task {args.name} has no split {args.split!r}; splits: "
                    f"{', '.join(provider.splits)}")
  out.write(f"task {args.name}, split {args.split}\n")
  describe = getattr(provider.source, "describe", None)
  if callable(describe) and describe(args.split):
    out.write(f"scores from: {describe(args.split)}\n")
  from xltransfer.data import gold  # pylint: disable=g-import-not-at-top
  provenance = gold.task_provenance(provider, args.split)
  if provenance is not None:
    out.write(f"read: {provenance.describe()}\n")
    if not provenance.labelled:
      out.write(f"no gold (predictions only): {provenance.no_gold}\n")
  out.write("\nraw examples:\n")
  raw = provider.source.get_dataset(split=args.split, shuffle=False)
  for i, ex in enumerate(raw.take(args.n).as_numpy_iterator()):
    out.write(f"[{i}]\n")
    if not isinstance(ex, dict):  # a text-line source yields bare lines
      out.write(f"  {_value(ex)}\n")
      continue
    for k, v in ex.items():
      out.write(f"  {k}: {_value(v)}\n")
  vocabulary = vocab.task_vocabulary()
  out.write(f"\npreprocessed and tokenized ({vocabulary}):\n")
  ds = provider.get_dataset(sequence_length=None, split=args.split, shuffle=False)
  for i, ex in enumerate(ds.take(args.n).as_numpy_iterator()):
    out.write(f"[{i}]\n")
    for k, v in ex.items():
      out.write(f"  {k}: {_value(v, vocabulary, k in provider.output_features)}\n")
  return 0


def parse_lengths(text: str) -> dict:
  """'inputs=512,targets=128' -> {'inputs': 512, 'targets': 128}; a UserError naming the flag
  and the part it cannot read."""
  lengths = {}
  for part in text.split(","):
    name, _, value = part.strip().partition("=")
    if not name or not value.strip().isdigit() or int(value) < 1:
      raise UserError(f"--lengths {text!r}: cannot read {part.strip()!r}; write "
                      "FEATURE=TOKENS,..., e.g. inputs=512,targets=128")
    lengths[name.strip()] = int(value)
  return lengths


def length_figures(counts, limit) -> dict:
  """Summary of one feature's token lengths, and how many exceed `limit` (None: no limit)."""
  counts = np.asarray(counts)
  figures = {"examples": int(counts.size)}
  if counts.size:
    figures.update(mean=round(float(counts.mean()), 1), p50=int(np.percentile(counts, 50)),
                   p95=int(np.percentile(counts, 95)), p99=int(np.percentile(counts, 99)),
                   max=int(counts.max()))
  if limit is not None:
    figures.update(limit=limit, over=int((counts > limit).sum()))
  return figures


def _lengths(args, out):
  import seqio  # pylint: disable=g-import-not-at-top
  limits = parse_lengths(args.lengths)
  provider = _provider(args)
  tasks = list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]
  unknown = set(limits) - {f for task in tasks for f in task.output_features}
  if unknown:
    raise UserError(f"--lengths names {', '.join(sorted(unknown))}, which {args.name} does not "
                    f"have; its features: {', '.join(sorted(tasks[0].output_features))}")
  report = {}
  for task in tasks:
    if args.split not in task.splits:
      if len(tasks) == 1:
        raise UserError(f"task {task.name} has no split {args.split!r}; splits: "
                        f"{', '.join(task.splits)}")
      out.write(f"{task.name}: no split {args.split!r}, skipped\n")
      continue
    # sequence_length=None: tokenized and EOS appended, nothing cut.
    ds = task.get_dataset(sequence_length=None, split=args.split, shuffle=False)
    if args.n:
      ds = ds.take(args.n)
    counts = {feature: [] for feature in task.output_features}
    for ex in ds.as_numpy_iterator():
      for feature in counts:
        counts[feature].append(len(ex[feature]))
    report[task.name] = {f: length_figures(c, limits.get(f)) for f, c in counts.items()}
  if args.json:
    json.dump({"split": args.split, "lengths": limits, "tasks": report}, out, indent=1)
    out.write("\n")
    return 0
  for name, features in report.items():
    examples = next(iter(features.values()))["examples"] if features else 0
    out.write(f"task {name}, split {args.split}: {examples} examples\n")
    for feature, f in features.items():
      line = f"  {feature:10s}"
      if f["examples"]:
        line += (f" mean {f['mean']:7.1f}  p50 {f['p50']:5d}  p95 {f['p95']:5d}  "
                 f"p99 {f['p99']:5d}  max {f['max']:5d}")
      if "limit" in f:
        share = 100.0 * f["over"] / max(f["examples"], 1)
        line += f"  over {f['limit']}: {f['over']} ({share:.1f}%)"
      out.write(line + "\n")
  return 0


def main(argv=None, out=None) -> int:
  args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  out = out or sys.stdout
  if args.command == "lengths":
    parse_lengths(args.lengths)  # A bad flag is reported before the task catalogue loads.
    if args.n is not None and args.n < 1:
      raise UserError(f"-n {args.n}: read at least 1 example per task (leave -n out for all)")
  import xltransfer.tasks  # pylint: disable=g-import-not-at-top,unused-import
  if args.gin_file:
    gin_utils.import_modules(REGISTRATION_MODULES)
    gin_utils.load_registrations(args.gin_file, args.gin_search_paths, args.module)
  else:
    gin_utils.import_user_modules(args.module)
  if args.command == "list":
    return _list(args, out)
  if args.command == "lengths":
    return _lengths(args, out)
  return _show(args, out)
