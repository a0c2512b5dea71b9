"""A shrunken study end to end: two conditions, one target, two languages -> run -> report.

`run_shrunken_study` takes the stage program, so the same check runs with the real
`xltransfer train/eval` (program=None: this Python's xltransfer CLI) once a tiny initial
checkpoint and sample data are at hand; here the stages are tests/test_study_fake_stage.py.
"""
import csv
import json
import os
import shlex
import sys

import pytest

from xltransfer.commands import study as study_command
from xltransfer.study import grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "test_study_fake_stage.py")

SPEC = """
StudySpec.name = "shrunken"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "{init}"
StudySpec.conditions = ["none", "{condition}"]
StudySpec.targets = ["xnli"]
StudySpec.languages = ["en", "sw"]
StudySpec.seeds = [0]
StudySpec.intermediate_steps = 2
StudySpec.finetune_steps = 2
StudySpec.intermediate_batch_size = 2
StudySpec.finetune_batch_size = 2
StudySpec.train_gin_files = ["runs/finetune.gin"]
StudySpec.note = "A shrunken study for the tests."
"""


def run_shrunken_study(tmp_path, init, program=None, bindings=(), condition="xlt_span_lowres",
                       extra_spec="", exit_code=0):
  """Runs the study and its report; returns (study_dir, metrics files by stage, report)."""
  spec_path = tmp_path / "spec.gin"
  spec_path.write_text(SPEC.format(init=init, condition=condition) + extra_spec)
  study_dir = str(tmp_path / "study")
  argv = ["run", str(spec_path), "--output_dir", study_dir, "--report", *bindings]
  if program:
    argv += ["--program", program]
  assert study_command.main(argv) == exit_code
  _, stages, _ = grid.read_study_file(study_dir)
  metrics = {}
  for stage in stages:
    if stage.command == "eval" and os.path.exists(os.path.join(stage.stage_dir, "DONE")):
      with open(os.path.join(stage.stage_dir, "metrics.json")) as f:
        metrics[(stage.condition, stage.target)] = json.load(f)["tasks"][stage.target]
  out = os.path.join(study_dir, "report")
  with open(os.path.join(out, "report.json")) as f:
    data = json.load(f)
  with open(os.path.join(out, "report.csv")) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  return study_dir, metrics, {"json": data, "csv": rows, "md": markdown, "out": out}


def check_report_matches_metrics(metrics, report, condition="xlt_span_lowres"):
  data = report["json"]
  assert set(metrics) == {("none", "xnli"), (condition, "xnli")}
  values = {(r["condition"], r["column"], r["language"], r["metric"]): float(r["value"])
            for r in report["csv"] if r["kind"] == "value" and r["language"]}
  for (condition, target), per_language in metrics.items():
    assert set(per_language) == {"en", "sw"}
    for lang, lang_metrics in per_language.items():
      value = lang_metrics["accuracy"]
      assert data["per_language"][target][condition][lang]["accuracy"] == pytest.approx(value)
      assert values[(condition, target, lang, "accuracy")] == pytest.approx(value)
      row = next(line for line in report["md"].split("### xnli: accuracy", 1)[1].splitlines()
                 if line.startswith(f"| {data['conditions'][condition]['label']} |"))
      assert f" {value:.2f} " in row
    mean = sum(m["accuracy"] for m in per_language.values()) / 2
    assert data["conditions"][condition]["task_scores"][target] == pytest.approx(mean)
  [delta] = [c for c in data["comparisons"] if c["scope"] == "task"]
  assert delta["delta"] == pytest.approx(
      data["conditions"][condition]["task_scores"]["xnli"]
      - data["conditions"]["none"]["task_scores"]["xnli"])
  assert delta["ci_low"] <= delta["delta"] <= delta["ci_high"]
  # A plot is drawn when there is a delta to show; when every delta and interval is 0 (a
  # tiny model that scores the same in both conditions) the report says why it is not.
  for name in ("heatmap_deltas.png", "lowres_xnli.png"):
    drawn = os.path.exists(os.path.join(report["out"], name))
    assert drawn != (name in data["plots_omitted"])
    if not drawn:
      assert delta["delta"] == delta["ci_low"] == delta["ci_high"] == 0.0
      assert f"- {name}: not drawn, every delta and interval is 0" in report["md"]


def test_shrunken_study_end_to_end_with_stage_processes(tmp_path, monkeypatch, capsys):
  init = tmp_path / "init"
  init.mkdir()
  (init / "DONE").write_text("pretrained\n")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  program = f"{shlex.quote(sys.executable)} {shlex.quote(FAKE)}"
  _, metrics, report = run_shrunken_study(tmp_path, str(init), program)
  check_report_matches_metrics(metrics, report)
  # Every number names its source and split, from the eval stages' eval_info.json.
  assert report["json"]["sources"]["xnli"] == {
      lang: [{"source": "fake release", "split": "test", "location": f"/data/xnli/test-{lang}.tsv"}]
      for lang in ("en", "sw")}
  assert "Source: fake release, test split (en sw)" in report["md"]
  printed = capsys.readouterr().out
  assert "## XTREME-R score per condition" in printed and "plot:" in printed
  assert "> **Note:** A shrunken study for the tests." in printed


@pytest.mark.slow
def test_shrunken_study_with_the_real_trainer_and_evaluator(tmp_path):
  """The same study through real `xltransfer train` / `xltransfer eval` subprocesses, on the
  bundled sample data and a tiny random initial checkpoint; then a rerun redoes nothing."""
  import jax

  from xltransfer.checkpoints import native
  from xltransfer.model.config import get_config
  from xltransfer.model.models import EncoderDecoderModel

  init = tmp_path / "init"
  config = get_config("tiny")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, str(init))
  data_dir = os.path.join(REPO, "xltransfer", "assets", "sample_xtreme")
  extra = f"""
StudySpec.xtreme_data_dir = "{data_dir}"
StudySpec.train_bindings = ["TASK_FEATURE_LENGTHS = {{'inputs': 64, 'targets': 16}}",
                            "xltransfer.train.train.eval_dataset = None"]
"""
  study_dir, metrics, report = run_shrunken_study(tmp_path, str(init), condition="xlt_span_sample_sw",
                                                  extra_spec=extra)
  check_report_matches_metrics(metrics, report, condition="xlt_span_sample_sw")
  # Every stage finished; a second run finds them all done and runs none.
  _, stages, _ = grid.read_study_file(study_dir)
  logs = {s.id: os.path.getmtime(os.path.join(s.stage_dir, "stage.log")) for s in stages}
  run_shrunken_study(tmp_path, str(init), condition="xlt_span_sample_sw", extra_spec=extra)
  assert logs == {s.id: os.path.getmtime(os.path.join(s.stage_dir, "stage.log")) for s in stages}


def test_a_target_without_gold_fails_its_eval_stages_and_its_cells_stay_empty(
    tmp_path, monkeypatch, capsys):
  """xnli/sw has no gold: each eval stage fails naming the file; the report shows – for
  xnli and says why, and never a 0."""
  init = tmp_path / "init"
  init.mkdir()
  (init / "DONE").write_text("pretrained\n")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("FAKE_STAGE_NO_GOLD", "xnli/sw")
  program = f"{shlex.quote(sys.executable)} {shlex.quote(FAKE)}"
  study_dir, metrics, report = run_shrunken_study(tmp_path, str(init), program, exit_code=1)
  assert metrics == {}  # no eval stage is done
  data = report["json"]
  evals = ["eval/none/seed0/xnli", "eval/xlt_span_lowres/seed0/xnli"]
  assert data["missing_stages"] == evals
  for stage_id in evals:
    [note] = data["stage_notes"][stage_id]
    assert "xnli/sw failed" in note and "/data/xnli/test-sw.tsv" in note and "no gold" in note
  assert data["per_language"]["xnli"] == {} and data["sources"] == {}
  assert all(not c["task_scores"] for c in data["conditions"].values())
  row = next(line for line in report["md"].split("## XTREME-R score per condition", 1)[1]
             .splitlines() if line.startswith("| baseline"))
  assert row.endswith("| – |") and "0.00" not in row
  assert "no gold to score" in report["md"]
  assert study_command.main(["status", study_dir]) == 0
  status = capsys.readouterr().out
  assert "failed      eval/none/seed0/xnli" in status
