"""`xltransfer score`: score a prediction folder against a label folder like the official scorer."""
import argparse
import json
import sys

from xltransfer.errors import UserError
from xltransfer.evaluation import scores
from xltransfer.evaluation import submission

_DESCRIPTION = """\
Scores two folders in the XTREME-R submission layout (one folder per task, files
test-{lang}.{tsv|json|jsonl}) the way the official XTREME-R evaluate.py
(github.com/google-research/xtreme) does, and prints per-task, per-language, category and
overall scores (0-100).

Which tasks: a task is scored when its folder exists in BOTH directories; other folders are
ignored. Per task, every metric is averaged over the task's official languages; avg_metric is
(avg_exact_match + avg_f1)/2 for QA, else avg_f1, avg_accuracy or avg_map@20.

How the printed numbers relate to evaluate.py --xtreme_version=xtreme-r:
  per task, avg_metric    the same numbers, for every task evaluate.py scores.
  categories              evaluate.py's own: classification (xnli, xcopa), structured
                          prediction (udpos, panx), question answering (xquad, mlqa,
                          tydiqa), retrieval (tatoeba, mewslix), multiple choice (xcopa);
                          printed when all their tasks were scored, as evaluate.py does.
  lareqa                  NOT scored by evaluate.py (it has no LAReQA reader). Here
                          lareqa/test-{lang}.json, {question id: [ranked candidate ids]}
                          against {question id: [gold candidate ids]}, is scored with mAP@20
                          as XTREME-R's LAReQA code defines it (AP@20 divides by
                          min(#gold, 20)), and printed on a line of its own, in no category.
  overall                 the mean avg_metric of all ten XTREME-R tasks, LAReQA included
                          (evaluate.py's all_task formula), printed only when all ten were
                          scored. evaluate.py itself never prints an XTREME-R overall: its
                          task list holds LAReQA with no languages, so without a lareqa folder
                          it reports none and with one it stops with KeyError 'avg_metric'.
  --benchmark xtreme      XTREME v1: tasks, categories and overall all as evaluate.py
                          --xtreme_version=xtreme prints them.

Bad input, as the official scorer treats it:
  missing language file   ERROR (exit 2): every language of a scored task needs a prediction
                          and a label file.
  different line count    ERROR (exit 2) for xnli, xcopa, tatoeba, udpos, panx (number of
                          lines, or of sentences for tagging); a tagging sentence with a
                          different number of tags is an error too (seqeval refuses it).
  missing id              SCORE 0 for that question/example in xquad, mlqa, tydiqa, mewslix,
                          lareqa (it still counts in the average); ids without labels are
                          ignored whatever their value (null too). The count of missing ids
                          is reported on stderr. A question with "answers": [] that has no
                          prediction scores 0 the same way.
  "data" key              the official reader replaces a JSON file that has a top-level
                          "data" key by that key's value; so does this one. A QA prediction
                          file with a question id "data" therefore answers no question: that
                          language scores 0 (a note says why), unless that value is itself
                          an object {question id: answer text}, which is then scored.
  official crash          ERROR (exit 2), naming the file and the id, where evaluate.py
                          crashes instead of scoring: a QA prediction that is not a string
                          (null, a number), a predicted question with "answers": [], a
                          Mewsli-X ranking that is not a list (null, a number, an object).
                          Like evaluate.py, a Mewsli-X candidate that is not a string (e.g.
                          a list) is scored as a miss, and a string ranking is read as its
                          characters.
  unreadable file         ERROR (exit 2): invalid JSON/UTF-8, or records without the fields
                          the format needs.
"""


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="xltransfer score", description=_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--predictions", required=True, metavar="DIR",
                      help="folder with one sub-folder of test-{lang}.* files per task")
  parser.add_argument("--labels", required=True, metavar="DIR",
                      help="folder with the gold files in the same layout")
  parser.add_argument("--json", action="store_true",
                      help="print a JSON object keyed by task name: avg_metric, avg_<metric> "
                           "and {metric: {lang: value}} per task")
  parser.add_argument("--benchmark", choices=sorted(submission.BENCHMARK_TASKS),
                      default="xtreme-r",
                      help="task and language lists to use (default: xtreme-r)")
  return parser


def main(argv) -> int:
  args = _parser().parse_args(argv)
  try:
    result = submission.score_folders(args.predictions, args.labels, args.benchmark)
  except OSError as e:
    raise UserError(f"cannot read {e.filename}: {e.strerror}") from e
  for note in result.notes:
    print(f"xltransfer score: note: {note}", file=sys.stderr)
  summary = scores.summarize(result.per_language, args.benchmark)
  if args.json:
    print(json.dumps(summary.tasks, indent=2, ensure_ascii=False))
    return 0
  if not summary.tasks:
    print("no task folder is present in both --predictions and --labels; nothing scored",
          file=sys.stderr)
    return 0
  print(scores.format_report(result.per_language, summary))
  return 0
