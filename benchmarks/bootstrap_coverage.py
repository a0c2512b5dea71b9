"""Coverage of the study report's 95% intervals on simulated studies (issue 19's acceptance).

Each replication writes a small study in the report's own on-disk format (study.json from
`grid.write_study_file`; per eval stage predictions/xnli/LANG.jsonl, metrics.json that agrees
with the records, eval_info.json, DONE; docs/interfaces.md "Evaluation outputs"), runs the real
`xltransfer.study.report.build_report` on it, and checks each interval in report.json
"comparisons" against the true delta. It prints, per scenario, the coverage (fraction of
replications whose [ci_low, ci_high] contains the truth) with its binomial standard error
sqrt(c (1 - c) / n), the mean interval width and the bias (mean of delta - truth).

    python benchmarks/bootstrap_coverage.py                      # everything, 400 reps
    python benchmarks/bootstrap_coverage.py --replications 50 --scenarios small15,null
    python benchmarks/bootstrap_coverage.py --out coverage.json  # the figures as JSON

A study here: one target (XNLI, accuracy), languages de en sw zh (sw low-resource, de and zh
high-resource in xltransfer.data.languages), three conditions: the baseline "none", an
English-only condition (the spec's english_condition) and a low-resource condition. The
report compares each condition with the baseline and the low-resource one with the English
one; the figures read the low-resource condition against the English-only one (the primary
pair) and against the baseline. Each replication draws new data and a new bootstrap seed.
Everything, 400 replications, takes about 4 minutes on 2 CPU cores (0.01-0.3 s per
replication; seeds3 is the slowest).

Generative model, chosen so that every population mean is known in closed form. Example i of
language l is right for trained model (condition c, seed s) when v < p, with
    p = level_l + base_i + skill_cl + interaction_ci + seed_cs,
base ~ U(-spread, spread), interaction ~ U(-h, h) drawn per condition and item, seed_cs ~
U(-a, a) per trained model, all with mean 0, and p inside [0, 1] for every draw (checked).
v ~ Uniform(0, 1): with probability `coupling` (per example and model) the example's own
u_li, shared by every model (what makes the comparison paired: models agree on most
examples), otherwise a fresh draw; either way v is uniform, so E[correct] = E[p]. The
expected accuracy difference between conditions a and b on language l, over the population
of test examples and of training seeds, is therefore exactly 100 (skill_al - skill_bl): the
estimand. Aggregates are the same means over languages (one target, so the targets mean is
the task delta).

Scenarios (--scenarios takes their names, comma-separated):
  small40, small25, small15  1 seed, 40/25/15 examples per language, no seed variance:
                    the per-language deltas (sw, de), the task delta, the targets mean.
  seeds3            3 seeds, 200 examples, a seed effect (sd 8.7 points per trained model)
                    far larger than the example-level noise: the task delta, the targets mean.
  translated        the same 100 items in every language (records carry "item", shared by
                    the translations) with an item base and a condition-by-item interaction
                    shared across languages, so resampling languages independently
                    under-covers: the XNLI task delta.
  missing_language  the baseline lacks sw (the hardest language) that the others have: the
                    task delta against the true delta on the shared languages (de en zh).
  diff_of_diffs     the difference of differences, (delta on the low-resource languages) -
                    (delta on the high-resource languages), comparison scope
                    "difference_of_differences"; and the primary contrast (scope "primary",
                    the spec's default: the delta on the low-resource target languages).
  null              global null: every condition has the same distribution (small
                    condition-by-item noise, so models are near-identical and the bootstrap
                    has atoms at 0). The family-wise false-flag rate: the fraction of
                    replications with any "significant_adjusted" comparison, for the
                    "secondary" family (Holm) and the "primary" family; and, for comparison
                    with reports without adjustment, the rate of any unadjusted "significant".

Targets (issue 19): coverage >= 0.93 in every scenario; false-flag rate under the global null
<= 0.05 family-wise (Holm). A figure below its target is marked "BELOW". With 400 replications
the standard error of a coverage near 0.95 is about 0.011.

A figure whose comparisons the report does not produce (the scope does not exist, or the
report's comparisons lack "family"/"significant_adjusted") is printed "not available".
Comparisons without an interval (ci_low null) are counted apart ("no CI"), not as misses.
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from typing import Callable, Optional

import numpy as np

TARGET = "xnli"
LANGUAGES = ("de", "en", "sw", "zh")
BASELINE = "none"
ENGLISH = "xlt_inter_en"
LOWRES = "xlt_span_lowres"
CONDITIONS = (BASELINE, ENGLISH, LOWRES)
# (reference, condition) pairs the figures read; the report makes both.
PRIMARY = (ENGLISH, LOWRES)
VS_BASELINE = (BASELINE, LOWRES)
COVERAGE_TARGET = 0.93
FALSE_FLAG_TARGET = 0.05
# Mean accuracy level of each language (sw the hardest) and the skills each condition adds:
# the low-resource condition helps sw most, the English one helps a little everywhere.
LEVEL = {"de": 0.55, "en": 0.60, "sw": 0.35, "zh": 0.50}
SKILL = {BASELINE: {l: 0.0 for l in LANGUAGES},
         ENGLISH: {l: 0.06 for l in LANGUAGES},
         LOWRES: {"de": 0.03, "en": 0.02, "sw": 0.15, "zh": 0.03}}
NULL_SKILL = {c: {l: 0.0 for l in LANGUAGES} for c in CONDITIONS}


@dataclasses.dataclass(frozen=True)
class Figure:
  """One number of a scenario. kind "coverage": the comparison of `pair` at `scope` (and
  `language`); kind "false_flags": replications with any flagged comparison of `family`
  (family None: any unadjusted "significant" at all)."""
  name: str
  kind: str
  scope: Optional[str] = None
  pair: tuple = PRIMARY
  language: Optional[str] = None
  family: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Scenario:
  name: str
  description: str
  examples: int
  figures: tuple
  seeds: int = 1
  skill: dict = dataclasses.field(default_factory=lambda: SKILL)
  spread: float = 0.1  # item base ~ U(-spread, spread)
  interaction: float = 0.05  # condition-by-item effect ~ U(-h, h)
  seed_effect: float = 0.0  # per (condition, seed) effect ~ U(-a, a)
  coupling: float = 0.8  # chance that a model's draw for an example is the shared one
  shared_items: bool = False  # translations: one item set, base and interaction shared
  missing: tuple = ()  # (condition, language) cells with no results

  def __post_init__(self):
    if not 0 <= self.coupling <= 1 or self.examples < 1 or self.seeds < 1:
      raise ValueError(f"scenario {self.name}: coupling must be in [0, 1], examples and seeds "
                       "at least 1")
    for condition in CONDITIONS:
      for lang in LANGUAGES:
        center = LEVEL[lang] + self.skill[condition][lang]
        reach = self.spread + self.interaction + self.seed_effect
        if center - reach < 0 or center + reach > 1:
          raise ValueError(f"scenario {self.name}: p of {condition}/{lang} can reach "
                           f"[{center - reach:.3f}, {center + reach:.3f}], outside [0, 1]: "
                           "the population mean would not be the closed-form one")

  def languages(self, condition) -> tuple:
    return tuple(l for l in LANGUAGES if (condition, l) not in self.missing)


def true_delta(scenario: Scenario, figure: Figure) -> float:
  """The population delta (0-100) the figure's comparison estimates, in closed form."""
  reference, condition = figure.pair
  shared = [l for l in scenario.languages(condition) if l in scenario.languages(reference)]

  def mean_delta(langs):
    return 100.0 * float(np.mean([scenario.skill[condition][l] - scenario.skill[reference][l]
                                  for l in langs]))

  if figure.scope == "language":
    return mean_delta([figure.language])
  if figure.scope in ("task", "targets_mean"):
    return mean_delta(shared)
  from xltransfer.data import languages  # pylint: disable=import-outside-toplevel
  low = [l for l in shared if l in languages.LOW_RESOURCE_LANGUAGES]
  high = [l for l in shared if l in languages.HIGH_RESOURCE_LANGUAGES]
  if figure.scope == "primary":  # the spec's default: on the low-resource target languages
    return mean_delta(low)
  if figure.scope == "difference_of_differences":
    return mean_delta(low) - mean_delta(high)
  raise ValueError(f"no closed-form truth for scope {figure.scope!r}")


def _coverage_figures(scopes_languages, pairs=(PRIMARY, VS_BASELINE)) -> tuple:
  figures = []
  for scope, language in scopes_languages:
    for pair in pairs:
      if scope == "language" and pair != PRIMARY:
        continue
      where = f"{scope} {language}" if language else scope
      figures.append(Figure(f"{where} ({pair[1]} - {pair[0]})", "coverage", scope, pair,
                            language))
  return tuple(figures)


def _small(n):
  return Scenario(f"small{n}", f"1 seed, {n} examples per language, no seed variance", n,
                  _coverage_figures([("language", "sw"), ("language", "de"), ("task", None),
                                     ("targets_mean", None)]))


SCENARIOS = {s.name: s for s in [
    _small(40), _small(25), _small(15),
    Scenario("seeds3", "3 seeds, 200 examples, seed variance dominant (seed effect sd 8.7 "
                       "points per trained model)", 200,
             _coverage_figures([("task", None), ("targets_mean", None)]), seeds=3,
             seed_effect=0.15),
    Scenario("translated", "the same 100 items in every language (\"item\"), item base and "
                           "condition-by-item interaction shared across languages", 100,
             _coverage_figures([("task", None)]), interaction=0.25, spread=0.08,
             shared_items=True),
    Scenario("missing_language", "the baseline lacks sw; truth on the shared languages", 100,
             _coverage_figures([("task", None)], pairs=(VS_BASELINE, (BASELINE, ENGLISH))),
             missing=((BASELINE, "sw"),)),
    Scenario("diff_of_diffs", "difference of differences, low- minus high-resource delta, "
                              "1 seed, 100 examples", 100,
             _coverage_figures([("difference_of_differences", None)])
             + _coverage_figures([("primary", None)], pairs=(PRIMARY,))),
    Scenario("null", "global null: identical conditions, 1 seed, 60 examples, small "
                     "condition-by-item noise", 60,
             (Figure("any significant_adjusted, secondary family (Holm)", "false_flags",
                     family="secondary"),
              Figure("any significant_adjusted, primary family", "false_flags",
                     family="primary"),
              Figure("any significant (unadjusted), all comparisons", "false_flags")),
             skill=NULL_SKILL, interaction=0.03, coupling=0.95),
]}


# -- Simulated studies ------------------------------------------------------------------------

def simulate_outcomes(scenario: Scenario, rng: np.random.Generator) -> dict:
  """{(condition, seed, lang): [examples] bool, right or not} of one simulated study."""
  n = scenario.examples
  seed_effect = {(c, s): rng.uniform(-scenario.seed_effect, scenario.seed_effect)
                 for c in CONDITIONS for s in range(scenario.seeds)}
  if scenario.shared_items:
    # Translations: the item's base and its interaction with each condition are the same in
    # every language; only the draw u of the language's version differs.
    base = rng.uniform(-scenario.spread, scenario.spread, n)
    interaction = {c: rng.uniform(-scenario.interaction, scenario.interaction, n)
                   for c in CONDITIONS}
  outcomes = {}
  for lang in LANGUAGES:
    if not scenario.shared_items:
      base = rng.uniform(-scenario.spread, scenario.spread, n)
      interaction = {c: rng.uniform(-scenario.interaction, scenario.interaction, n)
                     for c in CONDITIONS}
    u = rng.random(n)
    for condition in CONDITIONS:
      for seed in range(scenario.seeds):
        # Drawn for missing cells too, so that dropping one leaves the others' data as it was.
        v = np.where(rng.random(n) < scenario.coupling, u, rng.random(n))
        if lang not in scenario.languages(condition):
          continue
        p = (LEVEL[lang] + base + scenario.skill[condition][lang] + interaction[condition]
             + seed_effect[(condition, seed)])
        outcomes[(condition, seed, lang)] = v < p
  return outcomes


def to_records(scenario: Scenario, outcomes: dict) -> dict:
  """{(condition, seed, lang): [record]}: the outcomes as an XNLI eval's prediction records
  (docs/interfaces.md; "item" names the translation set where the items are shared)."""
  records = {}
  for key, right in outcomes.items():
    lang = key[2]
    cell = []
    for i, ok in enumerate(right):
      record = {"id": f"{lang}-{i}", "input": f"premise {i} / hypothesis {i}",
                "target": "entailment", "prediction": "entailment" if ok else "contradiction",
                "example_score": 100.0 if ok else 0.0}
      if scenario.shared_items:
        record["item"] = f"item{i}"
      cell.append(record)
    records[key] = cell
  return records


def write_study(scenario: Scenario, records: dict, output_dir: str) -> str:
  """Writes the study (study.json and every eval stage's files); returns its directory."""
  from xltransfer.study import grid  # pylint: disable=import-outside-toplevel
  from xltransfer.study import spec as spec_lib  # pylint: disable=import-outside-toplevel
  spec = spec_lib.StudySpec.from_dict(spec_lib.StudySpec(
      name=f"coverage_{scenario.name}", model_size="tiny", initial_checkpoint="/ckpt",
      conditions=list(CONDITIONS), english_condition=ENGLISH, targets=[TARGET],
      languages=list(LANGUAGES), seeds=list(range(scenario.seeds)),
      output_dir=output_dir).to_dict())
  study_dir = spec.study_dir()
  stages = grid.build_stages(spec, study_dir)
  grid.write_study_file(os.path.join(study_dir, grid.STUDY_FILE), spec, stages, study_dir)
  for stage in stages:
    if stage.command != "eval":
      continue
    tasks = {}
    for lang in spec.languages_for(stage.target):
      cell = records.get((stage.condition, stage.seed or 0, lang))
      if cell is None:
        continue
      path = os.path.join(stage.stage_dir, "predictions", stage.target, f"{lang}.jsonl")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in cell)
      # The metric the evaluator writes: the mean of the example scores, exactly.
      tasks[lang] = {"accuracy": float(np.mean([r["example_score"] for r in cell]))}
    with open(os.path.join(stage.stage_dir, "metrics.json"), "w") as f:
      json.dump({"checkpoint": "/ckpt", "step": 1, "tasks": {stage.target: tasks}}, f)
    with open(os.path.join(stage.stage_dir, "eval_info.json"), "w") as f:
      json.dump({"splits": {stage.target: {l: "test" for l in tasks}},
                 "provenance": {stage.target: {
                     l: {"source": "simulated", "location": f"/sim/{stage.target}/{l}",
                         "split": "test", "labelled": True, "no_gold": None}
                     for l in tasks}}}, f)
    open(os.path.join(stage.stage_dir, "DONE"), "w").close()
  return study_dir


# -- Scoring the report -----------------------------------------------------------------------

def find_comparison(comparisons: list, figure: Figure) -> Optional[dict]:
  """The report's comparison the figure reads, None when the report has none."""
  reference, condition = figure.pair
  found = [c for c in comparisons
           if c.get("scope") == figure.scope and c.get("reference") == reference
           and c.get("condition") == condition
           and (figure.scope not in ("language", "task") or c.get("column") == TARGET)
           and (figure.scope != "language" or c.get("language") == figure.language)]
  if len(found) > 1 and figure.scope not in ("language", "task"):
    # An aggregate may come with a breakdown (per task, per language): take the aggregate.
    found = [c for c in found if c.get("language") is None
             and c.get("column") in (None, TARGET)]
  if len(found) > 1:
    raise ValueError(f"{figure.name}: {len(found)} comparisons match, expected one: {found}")
  return found[0] if found else None


def score(scenario: Scenario, figure: Figure, comparisons: list) -> dict:
  """This replication's outcome for one figure: {"available": bool, ...}."""
  if figure.kind == "false_flags":
    if figure.family is None:
      return {"available": True, "hit": any(c.get("significant") is True for c in comparisons)}
    family = [c for c in comparisons if c.get("family") == figure.family]
    if not family or any("significant_adjusted" not in c for c in family):
      return {"available": False}
    return {"available": True, "hit": any(c["significant_adjusted"] is True for c in family)}
  comparison = find_comparison(comparisons, figure)
  if comparison is None:
    return {"available": False}
  if comparison.get("ci_low") is None or comparison.get("delta") is None:
    return {"available": True, "interval": False}
  truth = true_delta(scenario, figure)
  return {"available": True, "interval": True,
          "hit": comparison["ci_low"] <= truth <= comparison["ci_high"],
          "width": comparison["ci_high"] - comparison["ci_low"],
          "error": comparison["delta"] - truth}


def summarize(scenario: Scenario, figure: Figure, outcomes: list) -> dict:
  """Coverage (or false-flag rate) with its binomial standard error over the replications."""
  summary = {"figure": figure.name, "kind": figure.kind, "scope": figure.scope,
             "reference": figure.pair[0], "condition": figure.pair[1],
             "language": figure.language, "family": figure.family,
             "replications": len(outcomes)}
  available = [o for o in outcomes if o["available"]]
  if not available:
    return {**summary, "available": False}
  if figure.kind == "false_flags":
    counted, target = available, FALSE_FLAG_TARGET
  else:
    counted, target = [o for o in available if o["interval"]], COVERAGE_TARGET
    summary.update(truth=true_delta(scenario, figure),
                   without_interval=len(available) - len(counted))
  n = len(counted)
  summary.update(available=True, n=n, missing=len(outcomes) - len(available), target=target)
  if n:
    rate = sum(o["hit"] for o in counted) / n
    summary.update(rate=rate, std_error=math.sqrt(rate * (1 - rate) / n))
    if figure.kind == "coverage":
      summary.update(mean_width=float(np.mean([o["width"] for o in counted])),
                     mean_error=float(np.mean([o["error"] for o in counted])))
      summary["meets_target"] = rate >= target
    elif figure.family is not None:
      summary["meets_target"] = rate <= target
    else:  # unadjusted flags: shown for comparison with an unadjusted report, no target
      summary["meets_target"] = True
  return summary


def run_scenario(scenario: Scenario, replications: int, samples: int, seed: int = 0,
                 build: Optional[Callable] = None, progress=None) -> dict:
  """Runs the replications; returns {"figures": [summary], "seconds_per_replication"}.

  build(study_dir, samples, seed) -> report dict; default the report's own build_report.
  """
  if build is None:
    from xltransfer.study import report  # pylint: disable=import-outside-toplevel
    build = report.build_report
  outcomes = {f.name: [] for f in scenario.figures}
  root = tempfile.mkdtemp(prefix=f"coverage_{scenario.name}_")
  start = time.perf_counter()
  try:
    for rep in range(replications):
      rng = np.random.default_rng([seed, rep, zlib.crc32(scenario.name.encode())])
      out = os.path.join(root, f"rep{rep}")
      study_dir = write_study(scenario, to_records(scenario, simulate_outcomes(scenario, rng)),
                              out)
      data = build(study_dir, samples=samples, seed=rep)
      shutil.rmtree(out)
      for figure in scenario.figures:
        outcomes[figure.name].append(score(scenario, figure, data["comparisons"]))
      if progress:
        progress(rep + 1)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  elapsed = time.perf_counter() - start
  return {"name": scenario.name, "description": scenario.description,
          "replications": replications, "bootstrap_samples": samples,
          "seconds_per_replication": elapsed / max(replications, 1),
          "figures": [summarize(scenario, f, outcomes[f.name]) for f in scenario.figures]}


def format_row(summary: dict) -> str:
  name = f"  {summary['figure']:<58}"
  if not summary["available"]:
    return name + " not available"
  if "rate" not in summary:
    return name + f" no intervals ({summary['without_interval']} without one)"
  what = "coverage" if summary["kind"] == "coverage" else "rate"
  text = (f"{name} {what} {summary['rate']:.3f} ± {summary['std_error']:.3f} "
          f"(n={summary['n']})")
  if summary["kind"] == "coverage":
    text += (f"  truth {summary['truth']:+6.2f}  width {summary['mean_width']:5.2f}"
             f"  bias {summary['mean_error']:+5.2f}")
    if summary["without_interval"]:
      text += f"  no CI {summary['without_interval']}"
  if summary["missing"]:
    text += f"  absent in {summary['missing']}"
  if summary["kind"] == "false_flags" and summary.get("family") is None:
    text += "  (unadjusted, for comparison: no target)"
  elif not summary["meets_target"]:
    text += f"  BELOW target ({'>=' if summary['kind'] == 'coverage' else '<='} "
    text += f"{summary['target']})"
  return text


def _args(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--replications", type=int, default=400)
  # The default of `xltransfer study report`: the figures describe what a user gets.
  parser.add_argument("--bootstrap_samples", type=int, default=1000)
  parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                      help=f"comma-separated, of: {' '.join(SCENARIOS)}")
  parser.add_argument("--seed", type=int, default=0, help="seed of the simulated data")
  parser.add_argument("--out", default=None, help="write the figures as JSON here")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
  unknown = [n for n in names if n not in SCENARIOS]
  if unknown or not names:
    parser.error(f"--scenarios: unknown {' '.join(unknown) or '(none given)'}; "
                 f"valid: {' '.join(SCENARIOS)}")
  if args.replications < 1:
    parser.error("--replications must be at least 1")
  args.scenarios = names
  return args


def main(argv=None) -> int:
  args = _args(argv)
  print(f"Coverage of the report's 95% intervals: {args.replications} replications, "
        f"{args.bootstrap_samples} bootstrap samples, data seed {args.seed}")
  results = []
  for name in args.scenarios:
    scenario = SCENARIOS[name]
    every = max(1, args.replications // 10)

    def progress(done, name=name):
      if done % every == 0:
        print(f"    {name}: {done}/{args.replications}", file=sys.stderr, flush=True)

    result = run_scenario(scenario, args.replications, args.bootstrap_samples, args.seed,
                          progress=progress)
    results.append(result)
    print(f"\n{name}: {scenario.description} "
          f"({result['seconds_per_replication']:.2f} s per replication)")
    for summary in result["figures"]:
      print(format_row(summary))
    sys.stdout.flush()
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"replications": args.replications,
                 "bootstrap_samples": args.bootstrap_samples, "seed": args.seed,
                 "coverage_target": COVERAGE_TARGET, "false_flag_target": FALSE_FLAG_TARGET,
                 "scenarios": results}, f, indent=1)
    print(f"\nwrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
