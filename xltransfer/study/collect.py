"""Reads the eval stages' outputs (docs/interfaces.md, "Evaluation outputs") for the report.

Each done eval stage has `metrics.json` ({"tasks": {TARGET: {LANG: {METRIC: value}}}}),
`eval_info.json` (the split and provenance each language was read from) and
`predictions/TARGET/LANG.jsonl` (one record per example with `example_score`). A number whose
provenance says its data has no gold is never reported (it is dropped with a note); a stage's
failures and no-gold languages (metrics.json "failed"/"no_gold", the runner's STUDY_FAILED)
become notes that the report lists next to the missing cells. A result is
keyed by (condition, seed, column), where the column is the target for evaluations of the
fine-tuned model and "TARGET (direct)" for retrieval evaluated from the intermediate
checkpoint; tatoeba, which has no fine-tuning, is evaluated only directly and keeps its name.
The target's own column (fine-tuned, or direct for tatoeba) is the one the XTREME-R score uses.
"""
import dataclasses
import json
import os
from typing import Optional

import numpy as np

from xltransfer.errors import DataFormatError
from xltransfer.study import bootstrap

METRICS_FILE = "metrics.json"
INFO_FILE = "eval_info.json"
FAILED_MARKER = "STUDY_FAILED"  # written by runner.py; not imported from it (no cycle)
PREDICTIONS_DIR = "predictions"
TAGGING_TARGETS = ("udpos", "panx")
QA_TARGETS = ("xquad", "mlqa", "tydiqa")


def column_of(spec, role: str, target: str) -> str:
  if role == "direct" and spec.has_finetuning(target):
    return f"{target} (direct)"
  return target


def target_of(column: str) -> str:
  return column.split(" ", 1)[0]


@dataclasses.dataclass
class EvalResult:
  stage_id: str
  condition: str
  seed: Optional[int]
  column: str
  target: str
  metrics: dict  # {lang: {metric: value}}
  stage_dir: str
  # {lang: {"source", "split", "location"}} for every language with metrics; source and
  # location are None when the stage did not record them (no eval_info.json provenance).
  sources: dict = dataclasses.field(default_factory=dict)
  # {lang: {"examples", "inputs_truncated", "decode_limit_reached"}} for the languages whose
  # inputs or predictions were cut at the eval's lengths (metrics.json "truncated").
  truncated: dict = dataclasses.field(default_factory=dict)


def _read_metrics(path: str, target: str, stage_id: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
  except ValueError as e:
    raise DataFormatError(path, None, f"not JSON ({e})") from None
  tasks = data.get("tasks") if isinstance(data, dict) else None
  if not isinstance(tasks, dict) or target not in tasks:
    raise DataFormatError(path, None, f"stage {stage_id} should have written "
                                      f'{{"tasks": {{"{target}": {{LANG: {{METRIC: value}}}}}}}}')
  return tasks[target]


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise DataFormatError(path, None, f"not JSON ({e})") from None


def _sources(stage_dir: str, target: str, langs) -> dict:
  """{lang: {"source", "split", "location", "labelled"}} from the stage's eval_info.json."""
  path = os.path.join(stage_dir, INFO_FILE)
  info = _read_json(path) if os.path.exists(path) else {}
  if not isinstance(info, dict):
    raise DataFormatError(path, None, "not a JSON object")
  splits = (info.get("splits") or {}).get(target, {})
  provenance = (info.get("provenance") or {}).get(target, {})
  sources = {}
  for lang in langs:
    p = provenance.get(lang) or {}
    sources[lang] = {"source": p.get("source"), "split": p.get("split", splits.get(lang)),
                     "location": p.get("location"),
                     "labelled": p.get("labelled") if p else None,
                     "no_gold": p.get("no_gold")}
  return sources


def stage_notes(stage) -> list:
  """What an eval stage's own files say went wrong: failed and no-gold languages (from
  metrics.json, which a failed `xltransfer eval` still writes), else the runner's reason."""
  notes = []
  path = os.path.join(stage.stage_dir, METRICS_FILE)
  data = _read_json(path) if os.path.exists(path) else {}
  data = data if isinstance(data, dict) else {}
  for target, by_lang in sorted((data.get("failed") or {}).items()):
    notes += [f"{target}/{lang} failed: {error}" for lang, error in sorted(by_lang.items())]
  for target, by_lang in sorted((data.get("no_gold") or {}).items()):
    notes += [f"{target}/{lang} has no gold, so no number: {why}"
              for lang, why in sorted(by_lang.items())]
  failed = os.path.join(stage.stage_dir, FAILED_MARKER)
  if not notes and os.path.exists(failed):
    info = _read_json(failed)
    info = info if isinstance(info, dict) else {}
    notes.append(f"stage failed ({info.get('reason', 'see its log')}); log {info.get('log')}")
  return notes


def load_results(spec, stages, notes: Optional[dict] = None) -> tuple:
  """(results, missing): EvalResults of the done eval stages, ids of the others.

  `notes`, when given, receives {stage id: [what went wrong]} for every eval stage with
  something to say (see `stage_notes`), and a note for each number refused because its
  provenance says the data has no gold.
  """
  results, missing = [], []
  notes = {} if notes is None else notes
  for stage in stages:
    if stage.command != "eval":
      continue
    said = stage_notes(stage)
    path = os.path.join(stage.stage_dir, METRICS_FILE)
    if not (os.path.exists(os.path.join(stage.stage_dir, "DONE")) and os.path.exists(path)):
      missing.append(stage.id)
      if said:
        notes[stage.id] = said
      continue
    metrics = _read_metrics(path, stage.target, stage.id)
    sources = _sources(stage.stage_dir, stage.target, metrics)
    for lang, source in sources.items():
      if source["labelled"] is False:  # Never a number from data without gold.
        said.append(f"{stage.target}/{lang}: metrics.json has numbers, but its data has no gold "
                    f"({source['no_gold']}); not reported")
        del metrics[lang]
    if said:
      notes[stage.id] = said
    truncated = _read_truncated(path, stage.target)
    results.append(EvalResult(stage.id, stage.condition, stage.seed,
                              column_of(spec, stage.role, stage.target), stage.target,
                              metrics, stage.stage_dir,
                              {l: s for l, s in sources.items() if l in metrics},
                              {l: c for l, c in truncated.items() if l in metrics}))
  return results, missing


TRUNCATION_COUNTS = ("examples", "inputs_truncated", "decode_limit_reached")


def _read_truncated(path: str, target: str) -> dict:
  """{lang: counts} of metrics.json's "truncated" for `target` (absent: none were cut); a
  DataFormatError naming the file for an entry without its three integer counts."""
  truncated = (_read_json(path).get("truncated") or {}).get(target) or {}
  for lang, counts in truncated.items():
    if not (isinstance(counts, dict)
            and all(isinstance(counts.get(k), int) for k in TRUNCATION_COUNTS)):
      raise DataFormatError(path, None, f'"truncated" {target}/{lang} should be '
                                        f"{{{', '.join(repr(k) + ': int' for k in TRUNCATION_COUNTS)}}}, "
                                        f"got {counts!r}")
  return truncated


def truncation_summary(results) -> dict:
  """{column: {lang: {"examples", "inputs_truncated", "decode_limit_reached", "stages"}}} for
  the languages cut anywhere: inputs cut (the most any stage counted: every stage reads the
  same data at the same lengths), predictions at the decode length summed over all `stages`
  that scored the language, of `examples` each."""
  summary = {}
  for result in results:
    for lang in result.metrics:
      entry = summary.setdefault(result.column, {}).setdefault(
          lang, {"examples": 0, "inputs_truncated": 0, "decode_limit_reached": 0, "stages": 0})
      entry["stages"] += 1
      counts = result.truncated.get(lang)
      if counts:
        entry["examples"] = max(entry["examples"], int(counts["examples"]))
        entry["inputs_truncated"] = max(entry["inputs_truncated"], int(counts["inputs_truncated"]))
        entry["decode_limit_reached"] += int(counts["decode_limit_reached"])
  return {column: {lang: e for lang, e in sorted(by_lang.items()) if e["examples"]}
          for column, by_lang in sorted(summary.items())
          if any(e["examples"] for e in by_lang.values())}


def _records(path: str) -> list:
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise DataFormatError(path, number, f"not a JSON object ({e})") from None
      if not isinstance(record, dict):
        raise DataFormatError(path, number, "not a JSON object")
      records.append(record)
  return records


def _qa_example_score(target: str, lang: str, record: dict) -> float:
  """(F1 + EM)/2 of one QA example, as the task metric averages them. Records may carry
  `exact_match`; otherwise EM comes from the official metric on the example's answers."""
  if "exact_match" in record:
    return (float(record["example_score"]) + float(record["exact_match"])) / 2
  from xltransfer import metrics  # pylint: disable=import-outside-toplevel
  golds = record["target"] if isinstance(record["target"], list) else [record["target"]]
  if target == "mlqa":
    scores = metrics.mlqa_f1_em([golds], [record["prediction"]], lang)
  else:
    scores = metrics.squad_f1_em([golds], [record["prediction"]])
  return (scores["f1"] + scores["exact_match"]) / 2


def _example_values(target: str, lang: str, records: list, path: str):
  """Per-example statistics: chunk counts for seqeval F1, (F1 + EM)/2 for QA, else the
  example's score. None when the examples are unlabeled (example_score null)."""
  try:
    if any(r["example_score"] is None for r in records):
      return None
    if target in TAGGING_TARGETS:
      return np.array([bootstrap.chunk_counts(r["target"], r["prediction"]) for r in records],
                      dtype=np.float64).reshape(len(records), 3)
    if target in QA_TARGETS:
      return np.array([_qa_example_score(target, lang, r) for r in records], dtype=np.float64)
    return np.array([float(r["example_score"]) for r in records], dtype=np.float64)
  except KeyError as e:
    raise DataFormatError(path, None, f"a record lacks the field {e}") from None


# Per-example values must give the metric file's number to this precision (0-100 scale);
# anything further apart comes from another evaluation, and the report would mix two.
AGREEMENT_TOLERANCE = 1e-4


def _check_agrees(result: EvalResult, lang: str, values: np.ndarray, path: str) -> None:
  from xltransfer.evaluation import scores  # pylint: disable=import-outside-toplevel
  reported = result.metrics.get(lang)
  if not reported:
    return
  kind = bootstrap.F1 if result.target in TAGGING_TARGETS else bootstrap.MEAN
  recomputed = bootstrap.CellData(kind, values[None], (result.seed,)).point()
  expected = scores.language_metric(result.target, reported)
  if abs(recomputed - expected) > AGREEMENT_TOLERANCE:
    raise DataFormatError(
        path, None, f"its examples give {result.target}/{lang} = {recomputed:.6f}, but "
        f"{os.path.join(result.stage_dir, METRICS_FILE)} says {expected:.6f}: the two files "
        "are not from the same evaluation (rerun the eval stage)")


def _optional_id(record: dict, field: str) -> Optional[str]:
  value = record.get(field)
  return None if value is None else str(value)


def _in_order(values: list, ids: list, order: dict) -> list:
  """values (in the order of ids) rearranged into the shared example order."""
  arranged = [None] * len(order)
  for value, example_id in zip(values, ids):
    arranged[order[example_id]] = value
  return arranged


class ExampleStore:
  """Per-example data for bootstrap cells, loaded lazily and aligned by example id."""

  def __init__(self, results):
    self._by_key = {}
    for r in results:
      self._by_key.setdefault((r.condition, r.column), []).append(r)
    self._cache = {}

  def runs(self, condition: str, column: str) -> list:
    return sorted(self._by_key.get((condition, column), []),
                  key=lambda r: -1 if r.seed is None else r.seed)

  def _load(self, result: EvalResult, lang: str):
    """(ids, values, items, paragraphs) of one stage's predictions for a language, None when
    it has none or they are unlabeled. Their metric must be the metric file's number."""
    key = (result.stage_id, lang)
    if key not in self._cache:
      path = os.path.join(result.stage_dir, PREDICTIONS_DIR, result.target, f"{lang}.jsonl")
      if not os.path.exists(path):
        self._cache[key] = None
      else:
        records = _records(path)
        ids = [str(r.get("id", i)) for i, r in enumerate(records)]
        if len(set(ids)) != len(ids):
          raise DataFormatError(path, None, "example ids are not unique")
        values = _example_values(result.target, lang, records, path)
        if values is not None:
          _check_agrees(result, lang, values, path)
        self._cache[key] = None if values is None else (
            ids, values, [_optional_id(r, "item") for r in records],
            [_optional_id(r, "paragraph") for r in records])
    return self._cache[key]

  def cells(self, conditions, column: str, lang: str) -> dict:
    """{condition: CellData} with examples in one shared order, for the conditions that have
    predictions for this column and language with the same example ids as the first one."""
    cells, order, first = {}, None, None
    for condition in conditions:
      runs = self.runs(condition, column)
      data = [self._load(r, lang) for r in runs]
      if not runs or any(d is None for d in data):
        continue
      if order is None:
        order = {i: n for n, i in enumerate(data[0][0])}
      rows = []
      for ids, values, _, _ in data:
        if len(ids) != len(order) or any(i not in order for i in ids):
          break
        aligned = np.empty_like(values)
        aligned[np.array([order[i] for i in ids])] = values
        rows.append(aligned)
      else:
        kind = bootstrap.F1 if target_of(column) in TAGGING_TARGETS else bootstrap.MEAN
        if first is None:
          first = data[0]
        cells[condition] = bootstrap.CellData(kind, np.stack(rows),
                                              tuple(r.seed for r in runs),
                                              _in_order(first[2], first[0], order),
                                              _in_order(first[3], first[0], order))
    return cells

  def forget(self, column: str, lang: str) -> None:
    """Drops the loaded predictions of one column and language."""
    for key in [k for k in self._cache if k[1] == lang and k[0] in self._stage_ids(column)]:
      del self._cache[key]

  def _stage_ids(self, column: str) -> set:
    return {r.stage_id for (_, c), runs in self._by_key.items() if c == column for r in runs}


# Targets scored by accuracy over a fixed label set, where predicting the most frequent label
# everywhere is the floor a model has to beat.
LABEL_TARGETS = ("xnli", "pawsx", "xcopa")


def majority_class(results, column: str, lang: str) -> Optional[float]:
  """Accuracy (0-100) of always predicting the most frequent gold label of a column's
  language, from the first prediction file that has it; None when none has gold labels."""
  for result in results:
    if result.column != column or result.target not in LABEL_TARGETS:
      continue
    path = os.path.join(result.stage_dir, PREDICTIONS_DIR, result.target, f"{lang}.jsonl")
    if not os.path.exists(path):
      continue
    labels = [json.dumps(r.get("target")) for r in _records(path) if r.get("target") is not None]
    if labels:
      return 100.0 * max(labels.count(label) for label in set(labels)) / len(labels)
  return None

