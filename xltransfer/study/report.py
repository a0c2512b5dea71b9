"""`xltransfer study report DIR`: tables, XTREME-R scores, deltas with paired-bootstrap CIs, plots.

Numbers come from the eval stages' metrics.json files (averaged over seeds when there are
several) and are aggregated with `xltransfer.evaluation.scores`, as the official XTREME-R
scorer does: per task every metric is averaged over languages, QA counts (F1 + EM)/2, a
category is the mean of its tasks, the overall score needs all ten tasks. "targets mean" is the
mean task score over the study's targets (the overall score when all ten are there).
The primary contrast (StudySpec.primary_*) comes first; intervals and tests come from the
per-example prediction files (bootstrap.py), contrasts, families and adjusted tests from
contrasts.py, and the report's methods paragraph says how. Writes report.md, report.csv,
report.json and PNG plots to DIR/report (or --out).

Every number says where it comes from: the source and split recorded in each eval stage's
eval_info.json (a table, and a line under each per-language table; a "source" and "split"
per CSV row). A cell without a number (a stage not done, failed, or whose data has no gold)
shows "–", never 0, and the stage's notes say why, naming the file.
"""
import csv
import dataclasses
import json
import os
from typing import Optional

from xltransfer.evaluation import scores
from xltransfer.study import bootstrap, collect, contrasts, grid, multiplicity
from xltransfer.study import spec as spec_lib

TARGETS_MEAN = "targets mean"
GROUPS = spec_lib.LANGUAGE_GROUPS
# Metrics shown per language, in order, for each target.
DISPLAY_METRICS = {"xquad": ("f1", "exact_match"), "mlqa": ("f1", "exact_match"),
                   "tydiqa": ("f1", "exact_match")}


def _mean(values):
  values = list(values)
  return sum(values) / len(values) if values else None


class StudyResults:
  """Seed-averaged metrics and every aggregate the report shows, from the metric files."""

  def __init__(self, spec, results):
    self.spec = spec
    self.conditions = list(spec.conditions)
    by_key = {}
    for r in results:
      by_key.setdefault((r.condition, r.column), []).append(r)
    # metrics[(condition, column)] = {lang: {metric: seed mean}}; seeds[(condition, column)]
    self.metrics, self.seeds = {}, {}
    for key, runs in by_key.items():
      # Languages without metrics (unlabeled test sets get predictions only) are left out.
      langs = sorted(set.intersection(*({l for l, m in r.metrics.items() if m} for r in runs)))
      self.metrics[key] = {
          lang: {m: _mean(r.metrics[lang][m] for r in runs)
                 for m in runs[0].metrics[lang] if all(m in r.metrics[lang] for r in runs)}
          for lang in langs}
      self.seeds[key] = tuple(r.seed for r in runs)
    # sources[column][lang]: the distinct {"source", "split", "location"} of its numbers.
    self.sources = {}
    for (condition, column), runs in by_key.items():
      for lang in self.metrics[(condition, column)]:
        found = self.sources.setdefault(column, {}).setdefault(lang, [])
        for r in runs:
          recorded = r.sources.get(lang, {})
          entry = {k: recorded.get(k) for k in ("source", "split", "location")}
          if entry not in found:
            found.append(entry)
    # Every column the study should have, so that a missing one shows as "–".
    expected = grid_columns(spec)
    order = {t: i for i, t in enumerate(expected)}
    self.columns = sorted(set(expected) | {c for _, c in self.metrics},
                          key=lambda c: order.get(c, len(order)))

  def has(self, condition, column) -> bool:
    return (condition, column) in self.metrics

  def language_score(self, condition, column, lang) -> float:
    return scores.language_metric(collect.target_of(column),
                                  self.metrics[(condition, column)][lang])

  def task_score(self, condition, column) -> float:
    return scores.task_summary(collect.target_of(column),
                               self.metrics[(condition, column)])["avg_metric"]

  def summary(self, condition) -> scores.Summary:
    return scores.summarize({t: self.metrics[(condition, t)] for t in self.spec.targets
                             if self.has(condition, t)})

  def targets_mean(self, condition) -> Optional[float]:
    if not all(self.has(condition, t) for t in self.spec.targets):
      return None
    return _mean(self.task_score(condition, t) for t in self.spec.targets)

  def group_languages(self, condition, column, group) -> list:
    return [lang for lang in self.metrics[(condition, column)] if lang in GROUPS[group]]

  def group_score(self, condition, column, group) -> Optional[float]:
    langs = self.group_languages(condition, column, group)
    return _mean(self.language_score(condition, column, l) for l in langs) if langs else None

  def group_mean(self, condition, group) -> Optional[float]:
    values = [self.group_score(condition, t, group) for t in self.spec.targets
              if self.has(condition, t)]
    values = [v for v in values if v is not None]
    return _mean(values) if values else None


def grid_columns(spec) -> list:
  """Every report column in target order: TARGET, then "TARGET (direct)" for retrieval."""
  columns = []
  for target in spec.targets:
    columns.append(target)
    if target in spec_lib.RETRIEVAL_TARGETS and spec.has_finetuning(target):
      columns.append(f"{target} (direct)")
  return columns


def references(spec) -> list:
  """(reference, [conditions compared with it]): the baseline, then English-only, then the
  primary reference if it is another condition."""
  refs = [(spec.baseline_condition,
           [c for c in spec.conditions if c != spec.baseline_condition])]
  if spec.english_condition and spec.english_condition != spec.baseline_condition:
    refs.append((spec.english_condition,
                 [c for c in spec.conditions
                  if c not in (spec.english_condition, spec.baseline_condition)]))
  compared = {(c, ref) for ref, conditions in refs for c in conditions}
  for condition, reference in spec.primary_pairs():
    if (condition, reference) not in compared:
      refs.append((reference, [condition]))
      compared.add((condition, reference))
  return refs


def methods_text(spec, samples: int, confidence: float) -> str:
  """The methods paragraph: what was resampled, how seeds, clusters and multiplicity were
  handled, in the report's words."""
  level = spec.significance_level
  seeds = len(spec.seeds)
  return (
      f"Each delta is `condition − reference`, computed on the cells (target, language) that "
      f"both conditions have; a contrast that lacks a cell says so and is over the rest. "
      f"Its {confidence:.0%} interval is delta ± t·SE. The standard error combines two "
      f"independent parts. Test-set sampling: a paired cluster bootstrap ({samples} "
      f"replicates) redraws each target's test set, the same draw for every condition and "
      f"seed; translations of one test item across languages are drawn together, as are the "
      f"questions on one QA paragraph; the replicate variance is scaled by n/(n−1) for n "
      f"clusters. Training seeds: the sample variance over each condition's seeds of the "
      f"contrast, divided by their number ({seeds} seed{'s' if seeds != 1 else ''} per "
      f"condition in this study), conditions trained independently"
      + (" — with one seed the training variance cannot be estimated, so the intervals "
         "describe the trained models, not the training recipe" if seeds == 1 else "")
      + ". The degrees of freedom of t come from Welch–Satterthwaite over the parts. "
      f"Tests are two-sided. The primary contrasts (and their differences of differences) "
      f"form the confirmatory family, every other contrast one exploratory family; each "
      f"family is adjusted with {multiplicity.METHODS[spec.multiple_comparisons]} at "
      f"{level:g}, and `*` marks a contrast significant after that adjustment. Intervals are "
      f"not adjusted. Tests that repeat another (same cells, same weights) are counted once.")


def build_report(study_dir: str, samples: int = 1000, seed: int = 0) -> dict:
  """Everything the report files show, as one JSON-able dict."""
  spec, stages, _ = grid.read_study_file(study_dir)
  notes = {}
  results, missing = collect.load_results(spec, stages, notes)
  study = StudyResults(spec, results)
  confidence = 1.0 - spec.significance_level
  comparer = contrasts.Comparer(study, collect.ExampleStore(results),
                                bootstrap.PairedBootstrap(samples=samples, seed=seed,
                                                          confidence=confidence))
  comparer.add_cells()
  comparisons = []
  for reference, conditions in references(spec):
    for condition in conditions:
      comparisons += comparer.compare(condition, reference)
  contrasts.assign_families(comparisons, spec)
  units = {column: {"examples": examples, "clusters": clusters}
           for column, (examples, clusters) in comparer.boot.units.items()
           if column is not None}
  per_language = {
      column: {c: {lang: {**m, "score": study.language_score(c, column, lang)}
                   for lang, m in study.metrics[(c, column)].items()}
               for c in study.conditions if study.has(c, column)}
      for column in study.columns}
  majority = {column: {lang: share for lang in sorted({l for m in by_condition.values()
                                                          for l in m})
                       if (share := collect.majority_class(results, column, lang)) is not None}
              for column, by_condition in per_language.items()}
  conditions = {}
  for c in study.conditions:
    summary = study.summary(c)
    conditions[c] = {
        "label": spec.label(c),
        "seeds": sorted({s for (cc, _), seeds in study.seeds.items() if cc == c
                         for s in seeds if s is not None}),
        "task_scores": {col: study.task_score(c, col) for col in study.columns
                        if study.has(c, col)},
        "targets_mean": study.targets_mean(c),
        "xtreme_r_overall": summary.overall,
        "categories": summary.categories,
        "groups": {g: {"mean": study.group_mean(c, g),
                       "tasks": {t: study.group_score(c, t, g) for t in spec.targets
                                 if study.has(c, t) and study.group_score(c, t, g) is not None}}
                   for g in GROUPS},
    }
  return {
      "study": spec.name, "note": spec.note, "model_size": spec.model_size,
      "initial_checkpoint": spec.initial_checkpoint, "targets": list(spec.targets),
      "columns": study.columns, "seeds": list(spec.seeds),
      "baseline_condition": spec.baseline_condition,
      "english_condition": spec.english_condition,
      "language_groups": {g: list(langs) for g, langs in GROUPS.items()},
      "bootstrap": {"samples": samples, "seed": seed, "confidence": confidence,
                    "resamples": "test-set clusters (paired across conditions); seeds "
                                 "enter through their sample variance"},
      "multiple_comparisons": {"method": spec.multiple_comparisons,
                               "description": multiplicity.METHODS[spec.multiple_comparisons],
                               "level": spec.significance_level},
      "primary": {"pairs": [list(p) for p in spec.primary_pairs()],
                  "languages": spec.primary_languages},
      "methods": methods_text(spec, samples, confidence),
      "resampling_units": units,
      "references": [[ref, conds] for ref, conds in references(spec)],
      "missing_stages": missing,
      "stage_notes": notes,
      "sources": study.sources,
      "conditions": conditions,
      "per_language": per_language,
      "majority_class": {column: langs for column, langs in majority.items() if langs},
      "truncated": collect.truncation_summary(results),
      "comparisons": [c.to_dict() for c in comparisons],
  }


# -- Writers ----------------------------------------------------------------------------------

def source_text(entry: dict) -> str:
  """"XNLI 1.0 release, test split", or what is known when the stage did not record it."""
  if entry.get("source") is None:
    split = f"{entry['split']} split, " if entry.get("split") else ""
    return f"{split}source not recorded"
  return f"{entry['source']}, {entry['split']} split"


def source_groups(by_lang: dict) -> list:
  """[(source text, [languages])] of one column's {lang: [source entries]}."""
  groups = {}
  for lang, entries in sorted(by_lang.items()):
    for entry in entries:
      groups.setdefault(source_text(entry), []).append(lang)
  return list(groups.items())


def _fmt(value) -> str:
  return "–" if value is None else f"{value:.2f}"


def _fmt_delta(d: dict) -> str:
  """"+1.23 [+0.10, +2.36]*": `*` when significant after its family's adjustment."""
  text = f"{d['delta']:+.2f}"
  if d.get("ci_low") is not None:
    text += (f" [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
             + ("*" if d.get("significant_adjusted") else ""))
  return text


def _fmt_p(value) -> str:
  if value is None:
    return "–"
  return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _fmt_seeds(d: dict) -> str:
  seeds = d.get("seeds") or {}
  return ", ".join(f"{seeds.get(k, 0)}" for k in (d["condition"], d["reference"]))


def _primary_lines(report: dict, label: dict) -> list:
  """The research question's contrasts, first in the report."""
  lines = ["## Primary contrast", ""]
  primary = report["primary"]
  if not primary["pairs"]:
    return lines + ["No primary contrast: the spec names neither `english_condition` nor "
                    "`primary_reference` (StudySpec.primary_*).", ""]
  group = primary["languages"]
  lines += [f"Each primary condition against {label[primary['pairs'][0][1]]}, on the "
            f"{group} target languages (per task the mean over its {group} languages, then "
            "the mean over the tasks that have any), and the difference of differences: that "
            "delta minus the delta on the other group's languages, over the tasks that have "
            "languages of both groups. Confirmatory family: "
            f"{report['multiple_comparisons']['description']} at "
            f"{report['multiple_comparisons']['level']:g}.", ""]
  rows, notes = [], []
  for condition, reference in primary["pairs"]:
    for scope, name in ((contrasts.PRIMARY, f"Δ on {group} languages"),
                        (contrasts.DIFFERENCE_OF_DIFFERENCES, f"Δ {group} − Δ other")):
      d = _find(report, reference=reference, condition=condition, scope=scope)
      if d is None:
        rows.append([label[condition], name, "– (no shared cells)", "–", "–", "–", "–"])
        continue
      rows.append([label[condition], name, _fmt_delta(d), _fmt_p(d["p_value"]),
                   _fmt_p(d["p_adjusted"]), _fmt_seeds(d), ", ".join(d["tasks"])])
      if d["incomplete"]:
        notes.append(f"**Incomplete**: {label[condition]}, {name}: cells missing and left "
                     f"out: {', '.join(d['incomplete'])}.")
  lines += _table(["condition", "contrast", "delta [95% CI]", "p", "adjusted p",
                   "seeds (condition, reference)", "tasks"], rows) + [""]
  return lines + (notes + [""] if notes else [])


def _majority_lines(report: dict, label: dict) -> list:
  """Whether any condition beats always predicting the most frequent label, per target."""
  lines = []
  for column, floor in report.get("majority_class", {}).items():
    above = [f"{label[c]} ({lang})" for c, langs in report["per_language"][column].items()
             for lang, metrics in langs.items()
             if lang in floor and metrics.get("accuracy", 0.0) > floor[lang] + 1e-9]
    if above:
      lines.append(f"{column}: above the majority class (the accuracy of always predicting "
                   f"the most frequent label): {', '.join(above)}.")
    else:
      lines.append(f"**{column}: no condition beats the majority class on any language** "
                   "(always predicting the most frequent label): the models have not learned "
                   "the task, and its deltas say nothing about transfer.")
  return lines + [""] if lines else []


def _units_lines(report: dict) -> list:
  units = report.get("resampling_units") or {}
  if not units:
    return []
  return ["Independent units the bootstrap redraws, per target column (examples in all its "
          "languages → clusters): " + "; ".join(
              f"{column} {u['examples']} → {u['clusters']}" for column, u in units.items())
          + ". Equal numbers mean no example was linked to another (the data carries no "
            "item or paragraph ids, or predictions predate them).", ""]


# The smallest test-set size benchmarks/bootstrap_coverage.py checks (coverage 0.94 there).
SMALLEST_CHECKED_UNITS = 15


def _small_sample_lines(report: dict, label: dict) -> list:
  small = [d for d in report["comparisons"] if d.get("units") is not None
           and d["units"] < SMALLEST_CHECKED_UNITS and d["duplicate_of"] is None]
  if not small:
    return []
  listed = "; ".join(f"{label[d['condition']]} vs {label[d['reference']]} on {_where(d)} "
                     f"({d['units']})" for d in small[:10])
  more = f" and {len(small) - 10} more" if len(small) > 10 else ""
  return [f"**Small samples**: {len(small)} contrast(s) rest on fewer than "
          f"{SMALLEST_CHECKED_UNITS} independent test units, below the sizes whose interval "
          f"coverage was checked (benchmarks/bootstrap_coverage.py): {listed}{more}.", ""]


def _seed_warning(report: dict) -> list:
  counts = sorted({len(v["seeds"]) for v in report["conditions"].values() if v["seeds"]})
  if not counts or min(counts) >= 5:
    return []
  return [f"**Seeds**: the conditions' numbers rest on {min(counts)}"
          + (f"–{max(counts)}" if max(counts) != min(counts) else "")
          + " seed(s) each. Under 5 seeds the training variance is poorly known: intervals "
            "are wide" + (" (t with few degrees of freedom)" if min(counts) > 1 else
                          ", and with one seed they leave it out") + ".", ""]


def _truncation_lines(report: dict) -> list:
  """The languages whose eval inputs or predictions were cut at the configured lengths."""
  truncated = report.get("truncated") or {}
  if not truncated:
    return []
  lines = ["## Cut at the configured lengths", "",
           "Inputs longer than the eval's input length were cut (the model never saw their "
           "ends: a QA answer there cannot be found), and predictions that reached the decode "
           "length stopped before EOS; the numbers above are the model's under those lengths "
           "(metrics.json \"truncated\" of each eval stage). mT5's own XTREME fine-tuning used "
           "1024 input tokens and decoded QA answers up to 512.", ""]
  rows = []
  for column, by_lang in truncated.items():
    for lang, e in by_lang.items():
      predictions = e["examples"] * e["stages"]
      rows.append([column, lang, f"{e['inputs_truncated']} of {e['examples']} "
                   f"({100.0 * e['inputs_truncated'] / e['examples']:.1f}%)",
                   f"{e['decode_limit_reached']} of {predictions} "
                   f"({100.0 * e['decode_limit_reached'] / predictions:.1f}%, "
                   f"{e['stages']} stages)"])
  return lines + _table(["column", "language", "inputs cut",
                         "predictions at the decode length"], rows) + [""]


def _table(header, rows) -> list:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
  return lines


def _find(report, **keys) -> Optional[dict]:
  for c in report["comparisons"]:
    if all(c.get(k) == v for k, v in keys.items()):
      return c
  return None


def write_markdown(report: dict, path: str, plots: list) -> None:
  conds = report["conditions"]
  label = {c: v["label"] for c, v in conds.items()}
  lines = [f"# Study `{report['study']}`", ""]
  if report["note"]:
    lines += [f"> **Note:** {report['note']}", ""]
  lines += [
      f"Model mT5-{report['model_size']} from `{report['initial_checkpoint']}`; "
      f"targets: {', '.join(report['targets'])}; seeds: {', '.join(map(str, report['seeds']))}. "
      "Values are seed means on a 0–100 scale; QA scores are (F1 + EM)/2.", ""]
  lines += _primary_lines(report, label)
  lines += ["## Methods", "", report["methods"], ""] + _units_lines(report) + _seed_warning(
      report) + _small_sample_lines(report, label)
  if report["missing_stages"]:
    lines += [f"**Incomplete**: {len(report['missing_stages'])} eval stages have no results "
              f"(their cells show –): {', '.join(report['missing_stages'])}.", ""]
  if report["stage_notes"]:
    lines += ["**Notes from the eval stages** (why numbers are missing):", ""]
    lines += [f"- `{stage}`: {note}" for stage, notes in report["stage_notes"].items()
              for note in notes] + [""]

  columns = report["columns"]
  lines += ["## XTREME-R score per condition", ""]
  # Categories and the overall score exist only when all their tasks are targets.
  categories = [k for k in scores.CATEGORIES["xtreme-r"]
                if any(k in v["categories"] for v in conds.values())]
  overall = any(v["xtreme_r_overall"] is not None for v in conds.values())
  header = ["condition", "seeds", TARGETS_MEAN] + (["XTREME-R overall"] if overall else []) + [
      scores.CATEGORY_TITLES[c] for c in categories] + columns
  rows = []
  for c, v in conds.items():
    rows.append([label[c], len(v["seeds"]) or "–", _fmt(v["targets_mean"])]
                + ([_fmt(v["xtreme_r_overall"])] if overall else [])
                + [_fmt(v["categories"].get(k)) for k in categories]
                + [_fmt(v["task_scores"].get(col)) for col in columns])
  lines += _table(header, rows) + [""] + _majority_lines(report, label)

  for reference, compared in _reference_groups(report):
    lines += [f"## Deltas against {label[reference]}", ""]
    header = ["condition", TARGETS_MEAN, *columns]
    rows = []
    for c in compared:
      mean = _find(report, reference=reference, condition=c, scope="targets_mean")
      rows.append([label[c], _fmt_delta(mean) if mean else "–"] + [
          _fmt_delta(d) if (d := _find(report, reference=reference, condition=c, scope="task",
                                       column=col)) else "–" for col in columns])
    lines += _table(header, rows) + [""]

  evaluated = {lang for by_condition in report["per_language"].values()
               for langs in by_condition.values() for lang in langs}
  listed = {g: [l for l in langs if l in evaluated]
            for g, langs in report["language_groups"].items()}
  lines += ["## Low- vs high-resource target languages", "",
            "; ".join(f"{g} languages evaluated: " + (" ".join(langs) or "none")
                      for g, langs in listed.items())
            + " (groups from xltransfer.data.languages). Each cell is the mean over the "
              "group's languages that the target has; the group mean averages the targets.",
            ""]
  header = ["condition"] + [f"{g} mean" for g in GROUPS] + [
      f"Δ {g} vs {label[ref]}" for ref, _ in _reference_groups(report) for g in GROUPS]
  rows = []
  for c, v in conds.items():
    row = [label[c]] + [_fmt(v["groups"][g]["mean"]) for g in GROUPS]
    for ref, compared in _reference_groups(report):
      for g in GROUPS:
        d = (_find(report, reference=ref, condition=c, scope="group", group=g)
             or _find(report, reference=ref, condition=c, scope=contrasts.PRIMARY, group=g))
        row.append(_fmt_delta(d) if d and c in compared else "–")
    rows.append(row)
  lines += _table(header, rows) + [""]

  lines += ["## Where the numbers come from", "",
            "The data source and split of every number, as each eval stage recorded it "
            "(eval_info.json; the files read are in report.json under \"sources\").", ""]
  rows = [[column, text, " ".join(langs)] for column in columns
          for text, langs in source_groups(report["sources"].get(column, {}))]
  lines += _table(["column", "source, split", "languages"], rows) + [""]
  mixed = [(column, lang, entries) for column in columns
           for lang, entries in sorted(report["sources"].get(column, {}).items())
           if len(entries) > 1]
  for column, lang, entries in mixed:
    lines.append(f"**Warning**: {column}/{lang} numbers come from different data across runs "
                 f"({'; '.join(source_text(e) for e in entries)}): they are not comparable.")
  if mixed:
    lines.append("")

  lines += _truncation_lines(report)

  lines += ["## Per target and language", ""]
  for column in columns:
    target = collect.target_of(column)
    by_condition = report["per_language"][column]
    langs = sorted({l for m in by_condition.values() for l in m})
    groups = source_groups(report["sources"].get(column, {}))
    for metric in DISPLAY_METRICS.get(target, ("score",)):
      name = metric if metric != "score" else _metric_name(target)
      lines += [f"### {column}: {name}", ""]
      if not langs:
        lines += ["No results (see the notes above).", ""]
        continue
      rows = [[label[c]] + [_fmt(by_condition.get(c, {}).get(l, {}).get(metric))
                            for l in langs] for c in conds]
      floor = report.get("majority_class", {}).get(column)
      if floor and metric in ("score", "accuracy"):
        rows.append(["majority class"] + [_fmt(floor.get(l)) for l in langs])
      lines += _table(["condition", *langs], rows) + [""]
      lines += ["Source: " + "; ".join(f"{text} ({' '.join(ls)})" for text, ls in groups),
                ""]

  lines += ["## Exploratory contrasts significant after adjustment", "",
            f"Every contrast other than the primary ones, as one family "
            f"({report['multiple_comparisons']['description']}); exploratory: they suggest, "
            "the primary contrast answers.", ""]
  significant = [d for d in report["comparisons"] if d["family"] == contrasts.EXPLORATORY
                 and d["significant_adjusted"] and d["duplicate_of"] is None]
  tested = sum(1 for d in report["comparisons"] if d["family"] == contrasts.EXPLORATORY
               and d["duplicate_of"] is None)
  lines += [f"- {label[d['condition']]} vs {label[d['reference']]} on {_where(d)}: "
            f"{_fmt_delta(d)}, adjusted p {_fmt_p(d['p_adjusted'])}" for d in significant]
  lines += [f"{len(significant)} of {tested} exploratory tests.", ""]
  incomplete = [d for d in report["comparisons"] if d["incomplete"]
                and d["scope"] not in ("language",)]
  if incomplete:
    lines += ["## Incomplete contrasts", "",
              "These compare only the cells both conditions have; the cells left out:", ""]
    lines += [f"- {label[d['condition']]} vs {label[d['reference']]} on {_where(d)}: "
              f"{', '.join(d['incomplete'])}" for d in incomplete] + [""]
  if plots or report.get("plots_omitted"):
    lines += ["## Plots", ""] + [f"- `{p}`" for p in plots]
    lines += [f"- {name}: not drawn, {why}" for name, why in report["plots_omitted"].items()]
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))


def _where(d: dict) -> str:
  return {"language": f"{d['column']}/{d['language']}", "task": d["column"],
          "category": f"category {d['column']}", "targets_mean": TARGETS_MEAN,
          "group": f"{d['group']} languages", "group_task": f"{d['column']} ({d['group']})",
          contrasts.PRIMARY: f"{d['group']} languages (primary)",
          contrasts.DIFFERENCE_OF_DIFFERENCES: f"Δ {d['group']} − Δ other"}[d["scope"]]


def _metric_name(target: str) -> str:
  return {"udpos": "f1", "panx": "f1", "mewslix": "map@20", "lareqa": "map@20"}.get(
      target, "accuracy")


def _reference_groups(report):
  return [(ref, conds) for ref, conds in report["references"]]


CSV_FIELDS = ("kind", "condition", "reference", "column", "language", "group", "metric",
              "value", "ci_low", "ci_high", "p_value", "family", "p_adjusted",
              "significant_adjusted", "duplicate_of", "incomplete", "seeds", "source", "split")


def write_csv(report: dict, path: str) -> None:
  """Long format: "value" rows (per language and aggregates) and "delta" rows."""
  rows = []
  for column, by_condition in report["per_language"].items():
    for c, langs in by_condition.items():
      for lang, metrics in langs.items():
        entries = report["sources"].get(column, {}).get(lang, [])
        source = " | ".join(str(e["source"]) for e in entries) or None
        split = " | ".join(str(e["split"]) for e in entries) or None
        for metric, value in metrics.items():
          rows.append({"kind": "value", "condition": c, "column": column, "language": lang,
                       "metric": metric, "value": value, "source": source, "split": split})
  for c, v in report["conditions"].items():
    seeds = len(v["seeds"])
    for column, value in v["task_scores"].items():
      rows.append({"kind": "value", "condition": c, "column": column, "metric": "avg_metric",
                   "value": value, "seeds": seeds})
    for key in ("targets_mean", "xtreme_r_overall"):
      if v[key] is not None:
        rows.append({"kind": "value", "condition": c, "metric": key, "value": v[key],
                     "seeds": seeds})
    for category, value in v["categories"].items():
      rows.append({"kind": "value", "condition": c, "column": category, "metric": "category",
                   "value": value, "seeds": seeds})
    for group, g in v["groups"].items():
      if g["mean"] is not None:
        rows.append({"kind": "value", "condition": c, "group": group, "metric": "group_mean",
                     "value": g["mean"], "seeds": seeds})
      for column, value in g["tasks"].items():
        rows.append({"kind": "value", "condition": c, "column": column, "group": group,
                     "metric": "group_score", "value": value, "seeds": seeds})
  for d in report["comparisons"]:
    rows.append({"kind": "delta", "condition": d["condition"], "reference": d["reference"],
                 "column": d["column"], "language": d["language"], "group": d["group"],
                 "metric": d["scope"], "value": d["delta"], "ci_low": d["ci_low"],
                 "ci_high": d["ci_high"], "p_value": d["p_value"], "family": d["family"],
                 "p_adjusted": d["p_adjusted"],
                 "significant_adjusted": d["significant_adjusted"],
                 "duplicate_of": d["duplicate_of"],
                 "incomplete": " | ".join(d["incomplete"]) or None,
                 "seeds": _fmt_seeds(d) if d["seeds"] else None})
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})


def write_report(study_dir: str, out_dir: Optional[str] = None, samples: int = 1000,
                 seed: int = 0, plot: bool = True) -> dict:
  """Writes report.md/.csv/.json (and PNGs) and returns {"markdown": path, ...}."""
  out_dir = out_dir or os.path.join(study_dir, "report")
  os.makedirs(out_dir, exist_ok=True)
  report = build_report(study_dir, samples=samples, seed=seed)
  plots, omitted = [], {}
  if plot:
    from xltransfer.study import plots as plots_lib  # matplotlib only when plotting.
    plots, omitted = plots_lib.write_plots(report, out_dir)
  report["plots"], report["plots_omitted"] = plots, omitted
  paths = {"markdown": os.path.join(out_dir, "report.md"),
           "csv": os.path.join(out_dir, "report.csv"),
           "json": os.path.join(out_dir, "report.json"), "plots": plots}
  write_markdown(report, paths["markdown"], plots)
  write_csv(report, paths["csv"])
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=1)
  return paths
