"""The XTREME-R submission layout: one folder per task, `test-{lang}.{tsv|json|jsonl}` in it.

File formats, as the official `evaluate.py` reads them (predictions and labels alike):

  xnli, tatoeba (pawsx)  .tsv    one label per line (compared after stripping whitespace;
                                 Tatoeba: the index of the retrieved English sentence)
  udpos, panx            .tsv    one tag per line, a blank line after each sentence
  xcopa                  .jsonl  one JSON object per line; its "label" is compared
  xquad, mlqa, tydiqa    .json   labels: SQuAD v1.1 dataset; predictions: {question id: text}
  mewslix                .json   labels: {example id: [gold entity id]};
                                 predictions: {example id: [entity ids, best first]}
  lareqa                 .json   like mewslix, with every gold candidate id in the label list
  bucc2018 (XTREME v1)   .tsv    one "source-id<TAB>target-id" pair per line

The official reader splits tsv files on "\n", "\r" and "\r\n", so `write_submission_file`
writes every line break inside a prediction as a space (see there).

`score_folders` scores two such folders like the official scorer: a task is scored when its
folder exists in both; then every one of its languages must have both files.
"""
import dataclasses
import json
import logging
import os
from typing import List

from xltransfer.errors import DataFormatError
from xltransfer.errors import UserError
from xltransfer import metrics
from xltransfer.metrics import qa as qa_metrics


@dataclasses.dataclass(frozen=True)
class TaskFormat:
  """How one task's files look and are scored."""
  name: str
  languages: tuple
  suffix: str          # file extension without the dot
  reader: str          # "lines", "tags", "xcopa" or "json"
  metric: str          # "accuracy", "seqeval", "squad", "mlqa", "mewslix", "lareqa", "bucc"

  @property
  def checks_line_count(self) -> bool:
    # The official scorer asserts equal lengths except for QA, Mewsli-X and BUCC.
    return self.metric in ("accuracy", "seqeval")


def _langs(text):
  return tuple(text.split(","))


# Task order and language lists are those of XTREME-R's official scorer, evaluate.py in
# github.com/google-research/xtreme (XTREME_R_TASK2LANGS), so a submission holds exactly the
# files it opens. LAReQA is the exception: evaluate.py lists it with no languages (it has no
# LAReQA reader); here it has its XTREME-R test languages, those of XQuAD-R.
XTREME_R_TASKS = (
    TaskFormat("xnli", _langs("ar,bg,de,el,en,es,fr,hi,ru,sw,th,tr,ur,vi,zh"), "tsv", "lines",
               "accuracy"),
    TaskFormat("panx", _langs(
        "ar,he,vi,id,jv,ms,tl,eu,ml,ta,te,af,nl,en,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,"
        "ka,ko,th,sw,yo,my,zh,kk,tr,et,fi,hu,qu,pl,uk,az,lt,pa,gu,ro"), "tsv", "tags", "seqeval"),
    TaskFormat("udpos", _langs(
        "af,ar,bg,de,el,en,es,et,eu,fa,fi,fr,he,hi,hu,id,it,ja,kk,ko,mr,nl,pt,ru,ta,te,th,tl,"
        "tr,ur,vi,yo,zh,lt,pl,uk,wo,ro"), "tsv", "tags", "seqeval"),
    TaskFormat("tatoeba", _langs(
        "ar,he,vi,id,jv,tl,eu,ml,ta,te,af,nl,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,ka,ko,"
        "th,sw,zh,kk,tr,et,fi,hu,az,lt,pl,uk,ro"), "tsv", "lines", "accuracy"),
    TaskFormat("xcopa", _langs("et,ht,id,it,qu,sw,ta,th,tr,vi,zh"), "jsonl", "xcopa",
               "accuracy"),
    TaskFormat("lareqa", _langs("ar,de,el,en,es,hi,ru,th,tr,vi,zh"), "json", "json", "lareqa"),
    TaskFormat("mewslix", _langs("ar,de,en,es,fa,ja,pl,ro,ta,tr,uk"), "json", "json",
               "mewslix"),
    TaskFormat("xquad", _langs("en,es,de,el,ru,tr,ar,vi,th,zh,hi,ro"), "json", "json", "squad"),
    TaskFormat("mlqa", _langs("en,es,de,ar,hi,vi,zh"), "json", "json", "mlqa"),
    TaskFormat("tydiqa", _langs("en,ar,bn,fi,id,ko,ru,sw,te"), "json", "json", "squad"),
)

# XTREME (v1) as the same script scores it with --xtreme_version=xtreme.
XTREME_TASKS = (
    TaskFormat("pawsx", _langs("de,en,es,fr,ja,ko,zh"), "tsv", "lines", "accuracy"),
    XTREME_R_TASKS[0],
    TaskFormat("panx", _langs(
        "ar,he,vi,id,jv,ms,tl,eu,ml,ta,te,af,nl,en,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,"
        "ka,ko,th,sw,yo,my,zh,kk,tr,et,fi,hu"), "tsv", "tags", "seqeval"),
    TaskFormat("udpos", _langs(
        "af,ar,bg,de,el,en,es,et,eu,fa,fi,fr,he,hi,hu,id,it,ja,kk,ko,mr,nl,pt,ru,ta,te,th,tl,"
        "tr,ur,vi,yo,zh"), "tsv", "tags", "seqeval"),
    TaskFormat("bucc2018", _langs("de,fr,ru,zh"), "tsv", "lines", "bucc"),
    TaskFormat("tatoeba", _langs(
        "ar,he,vi,id,jv,tl,eu,ml,ta,te,af,nl,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,ka,ko,"
        "th,sw,zh,kk,tr,et,fi,hu"), "tsv", "lines", "accuracy"),
    TaskFormat("xquad", _langs("en,es,de,el,ru,tr,ar,vi,th,zh,hi"), "json", "json", "squad"),
    XTREME_R_TASKS[8],
    XTREME_R_TASKS[9],
)

BENCHMARK_TASKS = {"xtreme-r": XTREME_R_TASKS, "xtreme": XTREME_TASKS}

# The split a task's submission files hold. XTREME-R scores TyDiQA-GoldP on its dev set (the
# only gold-passage evaluation data; the repository's scripts/predict_qa.sh predicts
# tydiqa-goldp-v1.1-dev and renames the output to the test-{lang}.json pattern); every other
# task submits its test split.
SUBMISSION_SPLITS = {"tydiqa": "validation"}


def submission_split(task: str) -> str:
  return SUBMISSION_SPLITS.get(task, "test")


def task_format(task: str, benchmark: str = "xtreme-r") -> TaskFormat:
  for spec in BENCHMARK_TASKS[benchmark]:
    if spec.name == task:
      return spec
  known = ", ".join(spec.name for spec in BENCHMARK_TASKS[benchmark])
  raise UserError(f"unknown {benchmark} task {task!r}; tasks: {known}")


def submission_path(root: str, task: str, lang: str, benchmark: str = "xtreme-r") -> str:
  spec = task_format(task, benchmark)
  return os.path.join(root, task, f"test-{lang}.{spec.suffix}")


# Readers. Each returns what the official reader returns for the same file.


def read_lines(path: str) -> list:
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f]


def read_tags(path: str) -> list:
  """Sentences of tags; every blank line ends a sentence (two in a row give an empty one)."""
  sentences, sentence = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line:
        sentence.append(line)
      else:
        sentences.append(sentence)
        sentence = []
  if sentence:
    sentences.append(sentence)
  return sentences


def read_xcopa(path: str) -> list:
  labels = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(path, number, f"not a JSON object ({e.msg})") from e
      if not isinstance(record, dict) or "label" not in record:
        raise DataFormatError(path, number, 'expected a JSON object with a "label"')
      labels.append(record["label"])
  return labels


def read_json(path: str):
  """A JSON file; a top-level object with "data" yields that (a SQuAD dataset's articles)."""
  with open(path, encoding="utf-8") as f:
    try:
      value = json.load(f)
    except json.JSONDecodeError as e:
      raise DataFormatError(path, e.lineno, f"not valid JSON ({e.msg})") from e
  if isinstance(value, dict) and "data" in value:
    return value["data"]
  return value


_READERS = {"lines": read_lines, "tags": read_tags, "xcopa": read_xcopa, "json": read_json}


def read_submission_file(path: str, spec: TaskFormat):
  try:
    return _READERS[spec.reader](path)
  except UnicodeDecodeError as e:
    raise DataFormatError(path, None, f"not UTF-8 text ({e.reason})") from e


# Writers, for the evaluator that produces a submission.


def one_line(value) -> str:
  """A prediction as one tsv line: "\r\n", "\r" and "\n" become a space each.

  The official reader opens tsv files in text mode, which ends a line at any of them, so a
  raw line break would split one prediction into several lines and the file would fail the
  official line-count check.
  """
  return str(value).replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def write_submission_file(root: str, task: str, lang: str, predictions,
                          benchmark: str = "xtreme-r") -> str:
  """Writes one language's predictions in the task's format; returns the path.

  predictions: labels (xnli, tatoeba, pawsx, xcopa), tag sentences (udpos, panx),
  {question id: answer text} (QA), {id: ranked ids} (mewslix, lareqa), or pairs (bucc2018).
  tsv files get one prediction per line with line breaks inside it written as spaces
  (`one_line`); a tag that is then blank is an error, since a blank line ends a sentence.
  """
  spec = task_format(task, benchmark)
  path = submission_path(root, task, lang, benchmark)
  lines = None
  if spec.reader == "tags":
    lines = []
    for number, sentence in enumerate(predictions):
      for tag in sentence:
        line = one_line(tag)
        if not line.strip():
          raise UserError(f"{task}/{lang}: sentence {number} has a blank tag {tag!r}; it would "
                          "end the sentence in the tsv file")
        lines.append(line)
      lines.append("")
  elif spec.metric == "bucc":
    lines = ["\t".join(one_line(part) for part in pair) for pair in predictions]
  elif spec.suffix == "tsv":
    lines = [one_line(label) for label in predictions]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    if lines is not None:
      f.writelines(line + "\n" for line in lines)
    elif spec.reader == "xcopa":
      f.writelines(json.dumps({"label": label}) + "\n" for label in predictions)
    else:
      json.dump(predictions, f, ensure_ascii=False)
  return path


# Scoring.


@dataclasses.dataclass
class FolderScores:
  """Per-language metrics of every scored task, plus remarks the official script prints."""
  per_language: dict  # task -> lang -> metric -> value, in the official task/language order
  notes: list


def _expect(condition, path, message):
  if not condition:
    raise DataFormatError(path, None, message)


def _qa_targets(spec, labels, predictions, label_file, prediction_file, lang, notes):
  _expect(isinstance(labels, list), label_file,
          'expected a SQuAD v1.1 dataset ({"data": [articles]})')
  if not isinstance(predictions, dict):
    # The official reader keeps only the value of a top-level "data" key (a SQuAD dataset's
    # articles), so such a file, or one that is not an object, answers no question there.
    notes.append(f'{spec.name}/{lang}: {prediction_file} read as the official reader reads it '
                 '(a top-level "data" key replaces the whole file) is not an object {question '
                 'id: answer text}: no question is answered')
  try:
    return qa_metrics.squad_dataset_targets(labels, predictions)
  except ValueError as e:
    raise UserError(f"cannot score {prediction_file} against {label_file}: {e} (the official "
                    "scorer crashes here)") from e


def score_language(spec: TaskFormat, prediction_file: str, label_file: str, lang: str):
  """One language of one task, as the official `evaluate_one_task`; returns (metrics, notes)."""
  predictions = read_submission_file(prediction_file, spec)
  labels = read_submission_file(label_file, spec)
  notes = []
  if spec.checks_line_count and len(predictions) != len(labels):
    unit = "sentences" if spec.reader == "tags" else "lines"
    raise UserError(
        f"{prediction_file} has {len(predictions)} {unit} but {label_file} has {len(labels)}; "
        "the official scorer stops here (number of examples not matched)")
  try:
    if spec.metric == "accuracy":
      return metrics.accuracy(labels, predictions), notes
    if spec.metric == "seqeval":
      return metrics.seqeval_f1(labels, predictions), notes
    if spec.metric == "bucc":
      return metrics.bucc_f1(labels, predictions), notes
    if spec.metric in ("squad", "mlqa"):
      targets, flat, unanswered = _qa_targets(spec, labels, predictions, label_file,
                                              prediction_file, lang, notes)
      if unanswered:
        notes.append(f"{spec.name}/{lang}: {len(unanswered)} unanswered question(s) scored 0, "
                     f"e.g. {unanswered[0]}")
      if spec.metric == "mlqa":
        return metrics.mlqa_f1_em(targets, flat, lang), notes
      return metrics.squad_f1_em(targets, flat), notes
    # mewslix, lareqa: id -> list dicts (the official reader, like for QA, reads only the value
    # of a top-level "data" key when there is one).
    _expect(isinstance(labels, dict), label_file,
            'expected a JSON object {id: [gold ids]} (with a "data" key, its value)')
    _expect(isinstance(predictions, dict), prediction_file,
            'expected a JSON object {id: [ranked ids]} (with a "data" key, its value)')
    missing = [example_id for example_id in labels if example_id not in predictions]
    if missing:
      notes.append(f"{spec.name}/{lang}: {len(missing)} id(s) without predictions scored 0, "
                   f"e.g. {missing[0]}")
    if spec.metric == "mewslix":
      return metrics.mewslix_map_at_k(labels, predictions, k=20), notes
    return metrics.lareqa_map_at_k(labels, predictions, k=20), notes
  except ValueError as e:
    # LAReQA has no official file scorer; on every other task these inputs crash evaluate.py.
    crash = "" if spec.metric == "lareqa" else " (the official scorer crashes here)"
    raise UserError(f"cannot score {prediction_file} against {label_file}: {e}{crash}") from e
  except (AttributeError, TypeError) as e:
    # e.g. a number where the format has a string: the official scorer crashes on these.
    raise UserError(
        f"cannot score {prediction_file} against {label_file}: unexpected content ({e})") from e


def _subfolders(path: str) -> set:
  if not os.path.isdir(path):
    raise UserError(f"{path} is not a directory")
  with os.scandir(path) as entries:
    return {entry.name for entry in entries if entry.is_dir()}


def score_folders(prediction_dir: str, label_dir: str,
                  benchmark: str = "xtreme-r") -> FolderScores:
  """Scores every task whose folder is in both directories, each over all its languages.

  A missing language file on either side raises UserError (the official scorer stops with
  FileNotFoundError); so do different line/sentence counts for the line-based tasks. Missing
  question or example ids in QA, Mewsli-X and LAReQA predictions score 0.
  """
  prediction_tasks = _subfolders(prediction_dir)
  label_tasks = _subfolders(label_dir)
  per_language, notes = {}, []
  for spec in BENCHMARK_TASKS[benchmark]:
    if spec.name not in prediction_tasks or spec.name not in label_tasks:
      continue
    task_scores = {}
    for lang in spec.languages:
      prediction_file = submission_path(prediction_dir, spec.name, lang, benchmark)
      label_file = submission_path(label_dir, spec.name, lang, benchmark)
      for path in (prediction_file, label_file):
        if not os.path.isfile(path):
          raise UserError(
              f"{path} is not available: every {spec.name} language needs a file "
              f"({', '.join(spec.languages)})")
      task_scores[lang], language_notes = score_language(spec, prediction_file, label_file,
                                                         lang)
      notes.extend(language_notes)
    per_language[spec.name] = task_scores
  return FolderScores(per_language, notes)


def _submission_predictions(target: str, records: List[dict]):
  """One language's records as `write_submission_file` takes them."""
  if target in ("xquad", "mlqa", "tydiqa", "mewslix", "lareqa"):
    return {r["id"]: r["prediction"] for r in records}
  if target == "xcopa":
    return [r["prediction_index"] for r in records]
  return [r["prediction"] for r in records]


def write_submission_dir(output_dir: str, submission_dir: str) -> List[str]:
  """Writes an eval output directory's predictions in the XTREME-R submission layout.

  Each task contributes the split XTREME-R scores it on (`submission_split`: test,
  but TyDiQA-GoldP's dev set, written as tydiqa/test-{lang}.json). Tasks read from another
  split and tasks outside XTREME-R are left out; official files still missing for a task that
  has some are logged as a warning.
  """
  # Lazily: outputs imports tensorflow, which `xltransfer score` does not need.
  from xltransfer.evaluation import outputs  # pylint: disable=import-outside-toplevel
  with open(os.path.join(output_dir, outputs.INFO_FILE)) as f:
    splits = json.load(f)["splits"]
  known = {spec.name: spec for spec in XTREME_R_TASKS}
  written = []
  for target, by_lang in splits.items():
    for lang, split in by_lang.items():
      if target not in known or split != submission_split(target):
        logging.info("submission: %s/%s left out (%s split)", target, lang, split)
        continue
      records = outputs.read_records(outputs.predictions_path(output_dir, target, lang))
      written.append(write_submission_file(
          submission_dir, target, lang, _submission_predictions(target, records)))
  for target in sorted({os.path.basename(os.path.dirname(path)) for path in written}):
    missing = [lang for lang in known[target].languages
               if not os.path.isfile(submission_path(submission_dir, target, lang))]
    if missing:
      logging.warning("submission: %s lacks %s; the official scorer needs every language",
                      target, " ".join(missing))
  return written
