"""The report's contrasts between conditions, their intervals, families and adjusted tests.

Every contrast compares two conditions on the same cells (target column, language): a cell
that one condition lacks is left out of both sides and the contrast says so ("incomplete"),
never averaged over different language sets. Scopes, from the research question down:
  primary                     each primary condition vs the primary reference, on the primary
                              language group (StudySpec.primary_*): per task the mean over the
                              group's languages, then the mean over the tasks that have any
  difference_of_differences   Δ on the primary group minus Δ on the other group, over only the
                              tasks that have languages of both groups (so the task mix is the
                              same on both sides)
  targets_mean, category (of two or more tasks), task, group, group_task, language
Two tests of the same weighted cells (a targets mean of one target is its task) are one test:
the later is marked `duplicate_of` and shares the first's result.

Families: the primary contrasts and their differences of differences are the confirmatory
family; everything else is one exploratory family. Each family is adjusted with the spec's
method (Holm or Benjamini-Hochberg) at its significance level.
"""
import dataclasses
from typing import Optional

from xltransfer.evaluation import scores
from xltransfer.study import bootstrap, collect, multiplicity
from xltransfer.study import spec as spec_lib

PRIMARY = "primary"
DIFFERENCE_OF_DIFFERENCES = "difference_of_differences"
# When two scopes test the same cells with the same weights, the first one listed is kept.
SCOPES = (PRIMARY, DIFFERENCE_OF_DIFFERENCES, "targets_mean", "category", "task", "group",
          "group_task", "language")
CONFIRMATORY, EXPLORATORY = "primary", "secondary"


@dataclasses.dataclass
class Comparison:
  reference: str
  condition: str
  scope: str
  column: Optional[str]
  language: Optional[str]
  group: Optional[str]
  delta: float
  interval: Optional[bootstrap.Interval]
  weights: dict  # {(column, lang): w}: what the contrast sums
  tasks: tuple = ()  # the columns whose cells enter
  incomplete: tuple = ()  # "column/lang (no CONDITION)" for cells left out
  family: Optional[str] = None
  p_adjusted: Optional[float] = None
  significant_adjusted: Optional[bool] = None
  duplicate_of: Optional[str] = None

  def describe(self) -> str:
    where = {"language": f"{self.column}/{self.language}", "task": self.column,
             "category": f"category {self.column}", "targets_mean": "targets mean",
             "group": f"{self.group} languages", "group_task": f"{self.column}, {self.group}",
             PRIMARY: f"{self.group} languages (primary)",
             DIFFERENCE_OF_DIFFERENCES: f"{self.group} minus other languages"}[self.scope]
    return f"{self.condition} vs {self.reference} on {where}"

  def to_dict(self) -> dict:
    d = {"reference": self.reference, "condition": self.condition, "scope": self.scope,
         "column": self.column, "language": self.language, "group": self.group,
         "delta": self.delta, "tasks": list(self.tasks), "incomplete": list(self.incomplete),
         "family": self.family, "p_adjusted": self.p_adjusted,
         "significant_adjusted": self.significant_adjusted, "duplicate_of": self.duplicate_of}
    if self.interval is not None:
      interval = self.interval.to_dict()
      interval.pop("delta")
      d.update(interval)
    else:
      d.update(ci_low=None, ci_high=None, std_error=None, df=None, p_value=None,
               significant=None, seeds=None, seed_variance=None, units=None)
    return d


def _mean(values):
  values = list(values)
  return sum(values) / len(values) if values else None


class Comparer:
  """Contrasts between two conditions: deltas from the metric files, intervals from the
  prediction files (when every cell has them)."""

  def __init__(self, results, store: collect.ExampleStore, boot: bootstrap.PairedBootstrap):
    self.r, self.store, self.boot = results, store, boot
    self.spec = results.spec

  def add_cells(self) -> None:
    """Bootstrap replicates of every column for all conditions, one column at a time, so only
    one column's predictions are in memory at once."""
    for column in self.r.columns:
      langs = sorted({l for c in self.r.conditions if self.r.has(c, column)
                      for l in self.r.metrics[(c, column)]})
      self.boot.add_column(column, {lang: self.store.cells(self.r.conditions, column, lang)
                                    for lang in langs})
      for lang in langs:
        self.store.forget(column, lang)

  # -- cells ---------------------------------------------------------------------------------

  def _langs(self, condition, column) -> set:
    return set(self.r.metrics[(condition, column)]) if self.r.has(condition, column) else set()

  def _shared(self, a, b, column, within=None) -> tuple:
    """(sorted languages both conditions have, ["column/lang (no CONDITION)"] for the others),
    restricted to `within` when given."""
    langs_a, langs_b = self._langs(a, column), self._langs(b, column)
    if within is not None:
      langs_a, langs_b = langs_a & set(within), langs_b & set(within)
    missing = [f"{column}/{l} (no {b})" for l in sorted(langs_a - langs_b)]
    missing += [f"{column}/{l} (no {a})" for l in sorted(langs_b - langs_a)]
    return sorted(langs_a & langs_b), missing

  def _contrast(self, scope, a, b, weights, missing=(), column=None, language=None,
                group=None) -> Optional[Comparison]:
    if not weights:
      return None
    delta = sum(w * (self.r.language_score(a, col, lang) - self.r.language_score(b, col, lang))
                for (col, lang), w in weights.items())
    interval = None
    if all(self.boot.has(key, c) for key in weights for c in (a, b)):
      interval = self.boot.interval([(w, key, a, b) for key, w in weights.items()])
      delta = interval.delta
    tasks = tuple(dict.fromkeys(col for col, _ in weights))
    return Comparison(b, a, scope, column, language, group, delta, interval, dict(weights),
                      tasks, tuple(missing))

  def _task_weights(self, a, b, columns, within=None) -> tuple:
    """(weights, missing) of the mean over `columns` of each column's mean over the shared
    languages (within a group when given); columns without such languages are left out."""
    per_column, missing = {}, []
    for column in columns:
      langs, lacking = self._shared(a, b, column, within)
      missing += lacking
      if langs:
        per_column[column] = langs
    weights = {(column, lang): 1.0 / (len(per_column) * len(langs))
               for column, langs in per_column.items() for lang in langs}
    return weights, missing

  # -- the contrasts ---------------------------------------------------------------------------

  def compare(self, a: str, b: str) -> list:
    r, spec, out = self.r, self.spec, []
    primary_group = spec.primary_languages if (a, b) in spec.primary_pairs() else None
    for column in r.columns:
      if not (r.has(a, column) and r.has(b, column)):
        continue
      langs, missing = self._shared(a, b, column)
      for lang in langs:
        out.append(self._contrast("language", a, b, {(column, lang): 1.0}, column=column,
                                  language=lang))
      weights, _ = self._task_weights(a, b, [column])
      out.append(self._contrast("task", a, b, weights, missing, column=column))
    both = [t for t in spec.targets if r.has(a, t) and r.has(b, t)]
    for category, tasks in scores.CATEGORIES["xtreme-r"].items():
      # A one-task category is its task; a category needs all its tasks (as the scorer).
      if len(tasks) > 1 and all(t in both for t in tasks):
        weights, missing = self._task_weights(a, b, tasks)
        out.append(self._contrast("category", a, b, weights, missing, column=category))
    weights, missing = self._task_weights(a, b, both)
    missing += [f"{t} (no {c})" for t in spec.targets for c in (a, b)
                if t not in both and not r.has(c, t)]
    out.append(self._contrast("targets_mean", a, b, weights, missing))
    for group, group_langs in spec_lib.LANGUAGE_GROUPS.items():
      for column in both:
        weights, missing = self._task_weights(a, b, [column], group_langs)
        out.append(self._contrast("group_task", a, b, weights, missing, column=column,
                                  group=group))
      weights, missing = self._task_weights(a, b, both, group_langs)
      scope = PRIMARY if group == primary_group else "group"
      out.append(self._contrast(scope, a, b, weights, missing, group=group))
    out.append(self._difference_of_differences(a, b, both, primary_group or "low-resource"))
    return [c for c in out if c is not None]

  def _difference_of_differences(self, a, b, columns, group) -> Optional[Comparison]:
    """Δ on `group` minus Δ on the other group, over the tasks that have shared languages of
    both groups."""
    other = next(g for g in spec_lib.LANGUAGE_GROUPS if g != group)
    weights, missing = {}, []
    eligible = []
    for column in columns:
      sides = [self._shared(a, b, column, spec_lib.LANGUAGE_GROUPS[g]) for g in (group, other)]
      if all(langs for langs, _ in sides):
        eligible.append((column, sides))
    for column, sides in eligible:
      for sign, (langs, lacking) in zip((1.0, -1.0), sides):
        missing += lacking
        weights.update({(column, lang): sign / (len(eligible) * len(langs)) for lang in langs})
    return self._contrast(DIFFERENCE_OF_DIFFERENCES, a, b, weights, missing, group=group)


def assign_families(comparisons: list, spec) -> None:
  """Marks duplicates, puts every tested contrast in its family and adjusts each family."""
  primary_pairs = set(spec.primary_pairs())
  first, original_of = {}, {}
  ordered = sorted(comparisons, key=lambda c: SCOPES.index(c.scope))
  for c in ordered:
    if c.interval is None:
      continue
    key = (c.condition, c.reference,
           frozenset((cell, round(w, 12)) for cell, w in c.weights.items()))
    if key in first:
      original_of[id(c)] = first[key]
      c.duplicate_of = first[key].describe()
      continue
    first[key] = c
    confirmatory = ((c.condition, c.reference) in primary_pairs
                    and c.scope in (PRIMARY, DIFFERENCE_OF_DIFFERENCES))
    c.family = CONFIRMATORY if confirmatory else EXPLORATORY
  for family in (CONFIRMATORY, EXPLORATORY):
    members = [c for c in comparisons if c.family == family]
    adjusted = multiplicity.adjust([c.interval.p_value for c in members],
                                   spec.multiple_comparisons)
    for c, p in zip(members, adjusted):
      c.p_adjusted = float(p)
      c.significant_adjusted = bool(p < spec.significance_level)
  for c in ordered:
    if id(c) in original_of:
      original = original_of[id(c)]
      c.family, c.p_adjusted = original.family, original.p_adjusted
      c.significant_adjusted = original.significant_adjusted
