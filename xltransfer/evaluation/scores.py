"""XTREME-R aggregation: per-task averages over languages, categories, overall, tables.

Mirrors the official `evaluate.py` (github.com/google-research/xtreme): for each task every
metric is averaged over its languages (`avg_f1`, `avg_exact_match`, ...), and the task's
`avg_metric` is (avg_exact_match + avg_f1)/2 for QA, else avg_f1, avg_accuracy or avg_map@20.
A category score is the mean avg_metric of its tasks, reported only when all of them were
scored; the categories are evaluate.py's own (XTREME_R_GROUP2TASK), so XTREME-R's retrieval
category is Tatoeba and Mewsli-X.

The overall score is evaluate.py's `all_task`: the mean avg_metric over every task of the
benchmark, reported only when all were scored. For XTREME-R that list holds LAReQA, which
evaluate.py cannot score (it lists LAReQA with no languages: without a lareqa folder it reports
no overall, with one it stops with KeyError 'avg_metric'), so the XTREME-R overall here, which
scores LAReQA with mAP@20, is a number the official script never prints. LAReQA is in no
official category (`OUTSIDE_CATEGORIES`).
Input everywhere is `{task: {lang: {metric: value}}}` with values on the 0-100 scale.
"""
import dataclasses

QA_TASKS = ("xquad", "mlqa", "tydiqa")

# Category -> tasks: evaluate.py's XTREME_R_GROUP2TASK and XTREME_GROUP2TASK, names included.
CATEGORIES = {
    "xtreme-r": {
        "classification": ("xnli", "xcopa"),
        "tagging": ("udpos", "panx"),
        "qa": QA_TASKS,
        "retrieval": ("tatoeba", "mewslix"),
        "multi_choice": ("xcopa",),
    },
    "xtreme": {
        "classification": ("pawsx", "xnli"),
        "tagging": ("udpos", "panx"),
        "qa": QA_TASKS,
        "retrieval": ("bucc2018", "tatoeba"),
    },
}
CATEGORY_TITLES = {
    "classification": "classification",
    "tagging": "structured prediction",
    "qa": "question answering",
    "retrieval": "retrieval",
    "multi_choice": "multiple choice",
}
# Benchmark tasks in no official category: evaluate.py has no reader for LAReQA.
OUTSIDE_CATEGORIES = {"xtreme-r": ("lareqa",), "xtreme": ()}
# evaluate.py's task lists (XTREME_R_TASK2LANGS, XTREME_TASK2LANGS), whose every task the
# overall score needs.
BENCHMARK_TASK_NAMES = {
    "xtreme-r": ("xnli", "panx", "udpos", "tatoeba", "xcopa", "lareqa", "mewslix", "xquad",
                 "mlqa", "tydiqa"),
    "xtreme": ("pawsx", "xnli", "panx", "udpos", "bucc2018", "tatoeba", "xquad", "mlqa",
               "tydiqa"),
}
# The metric that stands for a task when no QA rule applies, in the official order of checks.
_MAIN_METRICS = ("f1", "accuracy", "map@20")


def task_summary(task: str, per_language: dict) -> dict:
  """The official per-task record: {metric: {lang: v}}, avg_<metric>, and avg_metric."""
  summary = {}
  for lang, language_metrics in per_language.items():
    for metric, value in language_metrics.items():
      summary.setdefault(metric, {})[lang] = value
  averages = {f"avg_{metric}": sum(values.values()) / len(values)
              for metric, values in summary.items()}
  summary.update(averages)
  if task in QA_TASKS:
    summary["avg_metric"] = (summary["avg_exact_match"] + summary["avg_f1"]) / 2
  else:
    for metric in _MAIN_METRICS:
      if f"avg_{metric}" in summary:
        summary["avg_metric"] = summary[f"avg_{metric}"]
        break
  return summary


def language_metric(task: str, language_metrics: dict) -> float:
  """One number per language of a task, defined like avg_metric: (EM+F1)/2 for QA."""
  if task in QA_TASKS:
    return (language_metrics["exact_match"] + language_metrics["f1"]) / 2
  for metric in _MAIN_METRICS:
    if metric in language_metrics:
      return language_metrics[metric]
  raise KeyError(f"{task} has none of the metrics {_MAIN_METRICS}")


@dataclasses.dataclass
class Summary:
  tasks: dict            # task -> official per-task record (see task_summary)
  categories: dict       # official category -> mean avg_metric, when every task was scored
  overall: float | None  # mean avg_metric over all tasks, None unless every task was scored
  missing_tasks: tuple   # benchmark tasks that were not scored, in benchmark order
  benchmark: str = "xtreme-r"

  @property
  def overall_is_official(self) -> bool:
    """Whether evaluate.py prints this overall itself (never for XTREME-R: see the module)."""
    return not OUTSIDE_CATEGORIES[self.benchmark]


def summarize(per_language: dict, benchmark: str = "xtreme-r") -> Summary:
  tasks = {task: task_summary(task, scores) for task, scores in per_language.items()}
  categories = {}
  for category, members in CATEGORIES[benchmark].items():
    if all(task in tasks for task in members):
      categories[category] = sum(tasks[t]["avg_metric"] for t in members) / len(members)
  all_tasks = BENCHMARK_TASK_NAMES[benchmark]
  missing = tuple(task for task in all_tasks if task not in tasks)
  overall = None
  if not missing:
    overall = sum(tasks[t]["avg_metric"] for t in all_tasks) / len(all_tasks)
  return Summary(tasks, categories, overall, missing, benchmark)


def language_table(per_language: dict) -> dict:
  """{lang: {task: per-language metric}} over every scored task, languages sorted."""
  table = {}
  for task, scores in per_language.items():
    for lang, language_metrics in scores.items():
      table.setdefault(lang, {})[task] = language_metric(task, language_metrics)
  return {lang: table[lang] for lang in sorted(table)}


def format_report(per_language: dict, summary: Summary) -> str:
  """Plain-text report: a table per task, the categories and overall, a language x task table."""
  lines = []
  for task, record in summary.tasks.items():
    metric_names = [m for m in record if isinstance(record[m], dict)]
    lines.append(f"====== {task} ======")
    lines.append("lang  " + "".join(f"{m:>14}" for m in metric_names))
    for lang in per_language[task]:
      lines.append(f"{lang:<6}" + "".join(f"{record[m][lang]:>14.2f}" for m in metric_names))
    lines.append("avg   " + "".join(f"{record['avg_' + m]:>14.2f}" for m in metric_names))
    lines.append(f"avg_metric: {record['avg_metric']:.2f}")
    lines.append("")
  lines.append("====== categories (as evaluate.py) ======")
  for category, value in summary.categories.items():
    lines.append(f"{CATEGORY_TITLES[category]:<24}{value:>8.2f}")
  outside = [t for t in OUTSIDE_CATEGORIES[summary.benchmark] if t in summary.tasks]
  for task in outside:
    lines.append(f"{task + ' (in no category)':<24}{summary.tasks[task]['avg_metric']:>8.2f}"
                 "   not scored by evaluate.py")
  count = len(BENCHMARK_TASK_NAMES[summary.benchmark])
  if summary.overall is None:
    # Like the official scorer, a partial submission gets no overall score.
    lines.append(f"overall: not reported, tasks not scored: {', '.join(summary.missing_tasks)}")
  elif summary.overall_is_official:
    lines.append(f"{'overall (all tasks)':<24}{summary.overall:>8.2f}")
  else:
    lines.append(f"{f'overall ({count} tasks)':<24}{summary.overall:>8.2f}   mean avg_metric "
                 f"incl. {', '.join(OUTSIDE_CATEGORIES[summary.benchmark])}; evaluate.py "
                 "prints no XTREME-R overall")
  lines.append("")
  table = language_table(per_language)
  if table:
    task_names = list(per_language)
    lines.append("====== per language (QA: (EM+F1)/2) ======")
    lines.append("lang  " + "".join(f"{t:>10}" for t in task_names))
    for lang, row in table.items():
      cells = "".join(f"{row[t]:>10.2f}" if t in row else f"{'-':>10}" for t in task_names)
      lines.append(f"{lang:<6}{cells}")
  return "\n".join(lines)
