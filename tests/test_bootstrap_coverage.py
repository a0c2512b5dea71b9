"""benchmarks/bootstrap_coverage.py, in small versions: its truth is the simulated population's
mean, its studies are read by the real report, and its coverage counting tells a good interval
from a broken one. (Whether the report reaches 0.93 is the benchmark's job, at 400 replications.)

The on-disk format written is the one tests/test_study_report.py writes and docs/interfaces.md
documents ("Evaluation outputs"): predictions/TARGET/LANG.jsonl, metrics.json, eval_info.json.
"""
import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from xltransfer.study import report

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bootstrap_coverage.py")
_SPEC = importlib.util.spec_from_file_location("bootstrap_coverage", _PATH)
coverage = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(coverage)


def _empirical_delta(scenario, outcomes, pair, langs):
  """100 x mean over langs of (accuracy of condition - accuracy of reference), all seeds."""
  reference, condition = pair
  def accuracy(c, lang):
    return 100 * np.mean([outcomes[(c, s, lang)].mean() for s in range(scenario.seeds)])
  return float(np.mean([accuracy(condition, l) - accuracy(reference, l) for l in langs]))


@pytest.mark.parametrize("name", ["small40", "translated", "null"])
def test_truth_is_the_population_mean_of_the_simulation(name):
  # Very many examples: the sample delta is the population delta up to ~0.2 points.
  scenario = dataclasses.replace(coverage.SCENARIOS[name], examples=60000)
  outcomes = coverage.simulate_outcomes(scenario, np.random.default_rng(1))
  for lang in coverage.LANGUAGES:
    for pair in (coverage.PRIMARY, coverage.VS_BASELINE):
      figure = coverage.Figure("x", "coverage", "language", pair, lang)
      truth = coverage.true_delta(scenario, figure)
      # Per-example sd of a paired difference of 0/1 outcomes is at most 100: 4 SE = 1.6.
      assert _empirical_delta(scenario, outcomes, pair, [lang]) == pytest.approx(truth, abs=1.6)
  if name == "null":
    assert all(coverage.true_delta(scenario, coverage.Figure("x", "coverage", s, p)) == 0
               for s in ("task", "difference_of_differences") for p in
               (coverage.PRIMARY, coverage.VS_BASELINE))


def test_truth_averages_over_training_seeds():
  # Seed effects do not average out within one study; over 300 trained models they do.
  scenario = dataclasses.replace(coverage.SCENARIOS["seeds3"], seeds=300, examples=2000)
  outcomes = coverage.simulate_outcomes(scenario, np.random.default_rng(2))
  truth = coverage.true_delta(scenario, coverage.Figure("x", "coverage", "task",
                                                       coverage.VS_BASELINE))
  # Seed sd 8.7 points per model, 300 per condition: SE of the delta about 0.75.
  assert _empirical_delta(scenario, outcomes, coverage.VS_BASELINE, coverage.LANGUAGES) == (
      pytest.approx(truth, abs=3.0))
  # One study's three seeds: the seed effects move the sample delta far more than that.
  three = dataclasses.replace(scenario, seeds=3)
  spreads = [abs(_empirical_delta(three, coverage.simulate_outcomes(
      three, np.random.default_rng(k)), coverage.VS_BASELINE, coverage.LANGUAGES) - truth)
             for k in range(8)]
  assert max(spreads) > 4


def test_truth_of_aggregates_in_closed_form():
  small = coverage.SCENARIOS["small40"]
  skill = coverage.SKILL
  low = coverage.LOWRES
  eng = coverage.ENGLISH
  def truth(scope, pair, scenario=small):
    return coverage.true_delta(scenario, coverage.Figure("x", "coverage", scope, pair))
  task = 100 * np.mean([skill[low][l] - skill[eng][l] for l in coverage.LANGUAGES])
  assert truth("task", coverage.PRIMARY) == pytest.approx(task)
  assert truth("targets_mean", coverage.PRIMARY) == pytest.approx(task)  # one target
  # sw is the one low-resource language, de and zh the high-resource ones.
  dod = 100 * ((skill[low]["sw"] - skill[eng]["sw"])
               - np.mean([skill[low][l] - skill[eng][l] for l in ("de", "zh")]))
  assert truth("difference_of_differences", coverage.PRIMARY) == pytest.approx(dod)
  assert truth("primary", coverage.PRIMARY) == pytest.approx(
      100 * (skill[low]["sw"] - skill[eng]["sw"]))
  # The baseline lacks sw: the truth is over de en zh.
  missing = coverage.SCENARIOS["missing_language"]
  assert truth("task", coverage.VS_BASELINE, missing) == pytest.approx(
      100 * np.mean([skill[low][l] for l in ("de", "en", "zh")]))
  with pytest.raises(ValueError, match="group"):
    truth("group", coverage.PRIMARY)


def test_a_scenario_whose_probabilities_leave_the_unit_interval_is_refused():
  with pytest.raises(ValueError, match=r"scenario wide: p of .* outside \[0, 1\]"):
    dataclasses.replace(coverage.SCENARIOS["small40"], name="wide", interaction=0.5)
  with pytest.raises(ValueError, match="scenario loose: coupling must be in"):
    dataclasses.replace(coverage.SCENARIOS["small40"], name="loose", coupling=1.5)


def test_written_study_is_read_by_the_report(tmp_path):
  scenario = dataclasses.replace(coverage.SCENARIOS["translated"], examples=12,
                                 missing=((coverage.BASELINE, "sw"),))
  outcomes = coverage.simulate_outcomes(scenario, np.random.default_rng(3))
  records = coverage.to_records(scenario, outcomes)
  study_dir = coverage.write_study(scenario, records, str(tmp_path / "s"))
  data = report.build_report(study_dir, samples=50)
  assert data["missing_stages"] == []
  per_language = data["per_language"]["xnli"]
  assert "sw" not in per_language[coverage.BASELINE]
  for (condition, _, lang), right in outcomes.items():
    assert per_language[condition][lang]["accuracy"] == pytest.approx(100 * right.mean())
  # metrics.json is the mean of the records' example scores, exactly.
  path = os.path.join(study_dir, "eval", coverage.LOWRES, "seed0", "xnli")
  with open(os.path.join(path, "metrics.json")) as f:
    metrics = json.load(f)["tasks"]["xnli"]
  for lang in coverage.LANGUAGES:
    with open(os.path.join(path, "predictions", "xnli", f"{lang}.jsonl")) as f:
      lines = [json.loads(line) for line in f]
    assert metrics[lang]["accuracy"] == float(np.mean([r["example_score"] for r in lines]))
    # Translations carry the same item id in every language.
    assert [r["item"] for r in lines] == [f"item{i}" for i in range(12)]
  # Every coverage figure of the benchmark finds its comparison in this report.
  for name in ("small40", "missing_language"):
    for figure in coverage.SCENARIOS[name].figures:
      found = coverage.find_comparison(data["comparisons"], figure)
      assert found is not None and found["reference"] == figure.pair[0], figure.name


def _narrowed(half_width):
  """The report with every interval replaced by delta ± half_width."""
  def build(study_dir, samples, seed):
    data = report.build_report(study_dir, samples=samples, seed=seed)
    for c in data["comparisons"]:
      if c["ci_low"] is not None:
        c["ci_low"], c["ci_high"] = c["delta"] - half_width, c["delta"] + half_width
    return data
  return build


def test_coverage_tells_a_broken_interval_from_a_sound_one():
  scenario = coverage.SCENARIOS["small40"]
  runs = {width: coverage.run_scenario(scenario, 12, 50, build=_narrowed(width))
          for width in (0.01, 1e6)}
  real = coverage.run_scenario(scenario, 12, 50)
  for result in (*runs.values(), real):
    assert [f["figure"] for f in result["figures"]] == [f.name for f in scenario.figures]
    assert all(f["available"] and f["n"] == 12 for f in result["figures"])
  # An interval of width 0.02 points almost never holds the truth; one of 2e6 always does.
  assert max(f["rate"] for f in runs[0.01]["figures"]) <= 0.25
  assert all(not f["meets_target"] for f in runs[0.01]["figures"])
  assert all(f["rate"] == 1.0 for f in runs[1e6]["figures"])
  # The report's own intervals land in between, well above the broken ones.
  assert min(f["rate"] for f in real["figures"]) >= 0.5
  task = next(f for f in real["figures"] if f["scope"] == "task")
  assert task["std_error"] == pytest.approx(np.sqrt(task["rate"] * (1 - task["rate"]) / 12))


def test_missing_language_scenario_can_tell_the_shared_languages_from_all():
  # What a report that averages each condition over its own languages estimates (every
  # language for English-only, de en zh for the baseline) is 5 points off the truth on the
  # shared languages, more than an interval's half-width: the scenario detects that report.
  scenario = coverage.SCENARIOS["missing_language"]
  figure = scenario.figures[1]
  assert figure.pair == (coverage.BASELINE, coverage.ENGLISH) and figure.scope == "task"
  skill = coverage.SKILL[coverage.ENGLISH]
  own_languages = 100 * (np.mean([coverage.LEVEL[l] + skill[l] for l in coverage.LANGUAGES])
                         - np.mean([coverage.LEVEL[l] for l in ("de", "en", "zh")]))
  assert coverage.true_delta(scenario, figure) == pytest.approx(6.0)
  assert abs(own_languages - 6.0) > 4


def test_false_flags_count_replications_with_any_adjusted_flag():
  null = coverage.SCENARIOS["null"]
  secondary, primary, unadjusted = null.figures
  def comparison(family, adjusted, significant=False):
    return {"scope": "task", "family": family, "significant_adjusted": adjusted,
            "significant": significant}
  flagged = [comparison("secondary", False), comparison("secondary", True, True),
             comparison("primary", False)]
  assert coverage.score(null, secondary, flagged) == {"available": True, "hit": True}
  assert coverage.score(null, primary, flagged) == {"available": True, "hit": False}
  assert coverage.score(null, unadjusted, flagged)["hit"] is True
  # A report without the adjusted fields (before issue 19): adjusted rates not available.
  old = [{"scope": "task", "significant": True}]
  assert coverage.score(null, secondary, old) == {"available": False}
  assert coverage.score(null, unadjusted, old) == {"available": True, "hit": True}
  outcomes = [{"available": True, "hit": h} for h in [True] * 3 + [False] * 97]
  summary = coverage.summarize(null, secondary, outcomes)
  assert summary["rate"] == pytest.approx(0.03) and summary["meets_target"]
  assert summary["std_error"] == pytest.approx(np.sqrt(0.03 * 0.97 / 100))
  assert not coverage.summarize(null, secondary, [{"available": False}] * 4)["available"]


def test_missing_scope_and_missing_interval_are_reported_apart():
  scenario = coverage.SCENARIOS["diff_of_diffs"]
  dod = scenario.figures[0]
  assert coverage.score(scenario, dod, [{"scope": "task"}]) == {"available": False}
  no_ci = [{"scope": "difference_of_differences", "reference": dod.pair[0],
            "condition": dod.pair[1], "column": None, "language": None, "delta": 1.0,
            "ci_low": None, "ci_high": None}]
  assert coverage.score(scenario, dod, no_ci) == {"available": True, "interval": False}
  summary = coverage.summarize(scenario, dod, [{"available": True, "interval": False}] * 3)
  assert summary["without_interval"] == 3 and "rate" not in summary
  assert "no intervals" in coverage.format_row(summary)
  twice = no_ci + [dict(no_ci[0])]
  with pytest.raises(ValueError, match="2 comparisons match"):
    coverage.find_comparison(twice, dod)


def test_command_line_writes_the_figures(tmp_path, capsys):
  out = tmp_path / "figures.json"
  assert coverage.main(["--replications", "2", "--bootstrap_samples", "20",
                        "--scenarios", "small15,null", "--out", str(out)]) == 0
  data = json.loads(out.read_text())
  assert [s["name"] for s in data["scenarios"]] == ["small15", "null"]
  assert all(f["replications"] == 2 for s in data["scenarios"] for f in s["figures"])
  printed = capsys.readouterr().out
  assert "small15: 1 seed, 15 examples" in printed and "language sw" in printed
  with pytest.raises(SystemExit):
    coverage.main(["--scenarios", "small15,bogus"])
  assert "unknown bogus" in capsys.readouterr().err
