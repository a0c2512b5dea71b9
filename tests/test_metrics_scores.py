"""Accuracy and the XTREME-R aggregation (task averages, QA as (F1+EM)/2, categories)."""
import pytest

from xltransfer import metrics
from xltransfer.evaluation import scores


def test_accuracy():
  assert metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == {"accuracy": 50.0}
  # Values compare with ==: XCOPA's label 1 and "1" differ, as in the official scorer.
  assert metrics.accuracy([1, 0], ["1", 0]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="no predictions"):
    metrics.accuracy([], [])


def test_task_summary_for_qa_averages_f1_and_em():
  per_language = {"en": {"exact_match": 80.0, "f1": 90.0}, "de": {"exact_match": 60.0, "f1": 70.0}}
  summary = scores.task_summary("mlqa", per_language)
  assert summary["exact_match"] == {"en": 80.0, "de": 60.0}
  assert summary["avg_exact_match"] == 70.0
  assert summary["avg_f1"] == 80.0
  assert summary["avg_metric"] == 75.0


def test_task_summary_picks_f1_accuracy_or_map():
  tagging = scores.task_summary("panx", {"en": {"f1": 80.0, "precision": 70.0, "recall": 90.0}})
  assert tagging["avg_metric"] == 80.0
  xnli = scores.task_summary("xnli", {"en": {"accuracy": 90.0}, "ar": {"accuracy": 70.0}})
  assert xnli["avg_metric"] == 80.0
  mewslix = scores.task_summary("mewslix", {"en": {"map@20": 40.0}, "ja": {"map@20": 20.0}})
  assert mewslix["avg_metric"] == 30.0


def _all_tasks(value_for):
  """Per-language metrics for every XTREME-R task with one language each."""
  metric_of = {"xnli": "accuracy", "xcopa": "accuracy", "tatoeba": "accuracy", "udpos": "f1",
               "panx": "f1", "mewslix": "map@20", "lareqa": "map@20"}
  per_language = {}
  for task in scores.BENCHMARK_TASK_NAMES["xtreme-r"]:
    value = value_for[task]
    if task in scores.QA_TASKS:
      per_language[task] = {"en": {"exact_match": value - 10, "f1": value + 10}}
    else:
      per_language[task] = {"en": {metric_of[task]: value}}
  return per_language


def test_categories_and_overall():
  values = {"xnli": 80, "xcopa": 60, "udpos": 70, "panx": 50, "xquad": 70, "mlqa": 60,
            "tydiqa": 50, "tatoeba": 90, "mewslix": 30, "lareqa": 10}
  summary = scores.summarize(_all_tasks(values))
  # evaluate.py's XTREME-R groups: retrieval is Tatoeba and Mewsli-X, LAReQA is in none.
  assert summary.categories == {
      "classification": 70.0, "tagging": 60.0, "qa": 60.0, "retrieval": 60.0,
      "multi_choice": 60.0}
  # The overall is the mean over all ten tasks, LAReQA included; evaluate.py prints none.
  assert summary.overall == pytest.approx(57.0)
  assert not summary.overall_is_official
  assert summary.missing_tasks == ()


def test_partial_submission_has_no_overall_and_only_complete_categories():
  values = {"xnli": 80, "xcopa": 60, "udpos": 70, "panx": 50, "xquad": 70, "mlqa": 60,
            "tydiqa": 50, "tatoeba": 90, "mewslix": 30, "lareqa": 30}
  per_language = _all_tasks(values)
  del per_language["panx"]
  summary = scores.summarize(per_language)
  assert summary.overall is None
  assert "tagging" not in summary.categories
  assert summary.categories["classification"] == 70.0
  assert summary.missing_tasks == ("panx",)
  assert "tasks not scored: panx" in scores.format_report(per_language, summary)


def test_language_table_uses_qa_mean_per_language():
  per_language = {"xquad": {"de": {"exact_match": 40.0, "f1": 60.0}},
                  "xnli": {"de": {"accuracy": 70.0}, "ar": {"accuracy": 65.0}}}
  assert scores.language_table(per_language) == {
      "ar": {"xnli": 65.0}, "de": {"xquad": 50.0, "xnli": 70.0}}
