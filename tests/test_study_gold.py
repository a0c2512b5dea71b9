"""A shrunken study on XTREME-R's official-shaped files plus the labelled original releases, with
the real `xltransfer eval` (training stages copy the tiny initial checkpoint): the report takes
every number from labelled data and names its source and split; the target that only has the
official (gold-hidden) file fails its eval stage, naming the file, and its cell stays empty."""
import csv
import json
import os
import shlex
import sys

import jax
import numpy as np
import pytest

from xltransfer.checkpoints import native
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.commands import study as study_command
from xltransfer.study import grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO, "tests", "study_eval_stage.py")
OFFICIAL = os.path.join(REPO, "tests", "fixtures", "xtreme_official")
ORIGINAL = os.path.join(REPO, "tests", "fixtures", "xtreme_original")

SPEC = """
StudySpec.name = "gold"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "{init}"
StudySpec.conditions = ["none"]
StudySpec.targets = ["xnli", "tatoeba"]
StudySpec.languages = ["de"]
StudySpec.seeds = [0]
StudySpec.finetune_steps = 2
StudySpec.finetune_batch_size = 2
StudySpec.xtreme_data_dir = "{official}"
StudySpec.eval_bindings = ["target_source.per_target = {{'xnli': 'original'}}",
                           "original_data_dir.path = '{original}'",
                           "TASK_FEATURE_LENGTHS = {{'inputs': 48, 'targets': 12}}",
                           "BATCH_SIZE = 4"]
"""


@pytest.mark.slow  # two `xltransfer eval` subprocesses: about a minute
def test_report_numbers_come_from_labelled_data_with_source_and_split(tmp_path, monkeypatch):
  init = tmp_path / "init"
  config = get_config("tiny")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, str(init))
  for name in ("XLTRANSFER_TARGET_SOURCE", "XTREME_DATA_DIR", "XTREME_ORIGINAL_DATA_DIR"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  spec = tmp_path / "spec.gin"
  spec.write_text(SPEC.format(init=init, official=OFFICIAL, original=ORIGINAL))
  study_dir = str(tmp_path / "study")
  program = f"{shlex.quote(sys.executable)} {shlex.quote(PROGRAM)}"
  # Tatoeba's official English side is sorted (no gold): its stage fails, so the run does.
  assert study_command.main(["run", str(spec), "--output_dir", study_dir, "--program", program,
                          "--report"]) == 1
  _, stages, _ = grid.read_study_file(study_dir)
  by_id = {s.id: s for s in stages}
  xnli, tatoeba = by_id["eval/none/seed0/xnli"], by_id["direct/none/tatoeba"]
  assert os.path.exists(os.path.join(xnli.stage_dir, "DONE"))
  assert not os.path.exists(os.path.join(tatoeba.stage_dir, "DONE"))
  sorted_file = os.path.join(OFFICIAL, "tatoeba", "de-en.en")
  with open(os.path.join(tatoeba.stage_dir, "stage.log")) as f:
    log = f.read()
  assert "tatoeba/de: " in log and "no gold to score" in log and sorted_file in log

  out = os.path.join(study_dir, "report")
  data = json.load(open(os.path.join(out, "report.json")))
  markdown = open(os.path.join(out, "report.md")).read()
  rows = list(csv.DictReader(open(os.path.join(out, "report.csv"))))
  # The xnli number is the labelled release's, computed here from the predictions file.
  with open(os.path.join(xnli.stage_dir, "predictions", "xnli", "de.jsonl")) as f:
    records = [json.loads(line) for line in f]
  expected = 100.0 * np.mean([r["prediction"] == r["target"] for r in records])
  assert data["per_language"]["xnli"]["none"]["de"]["accuracy"] == expected
  assert data["sources"] == {"xnli": {"de": [{
      "source": "XNLI 1.0 release", "split": "test",
      "location": os.path.join(ORIGINAL, "XNLI-1.0", "xnli.test.tsv")}]}}
  assert "| xnli | XNLI 1.0 release, test split | de |" in markdown
  assert "Source: XNLI 1.0 release, test split (de)" in markdown
  values = [r for r in rows if r["kind"] == "value" and r["language"]]
  assert values and all(r["source"] == "XNLI 1.0 release" and r["split"] == "test"
                        for r in values)
  # Tatoeba: a missing cell, not 0, and the note names the file.
  assert data["missing_stages"] == [tatoeba.id]
  assert data["per_language"]["tatoeba"] == {}
  [note] = data["stage_notes"][tatoeba.id]
  assert note.startswith("tatoeba/de failed: xlt_tatoeba_eval_de: no gold to score")
  assert sorted_file in note
  scores = markdown.split("## XTREME-R score per condition", 1)[1].splitlines()
  header = [c.strip() for c in scores[2].strip("|").split("|")]
  row = [c.strip() for c in scores[4].strip("|").split("|")]
  assert dict(zip(header, row))["tatoeba"] == "–"
  assert dict(zip(header, row))["xnli"] == f"{expected:.2f}"
