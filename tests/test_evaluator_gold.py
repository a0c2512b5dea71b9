"""The evaluator never scores data without gold, keeps going past a failing task, and never
reuses another checkpoint's predictions (issue 18; issue 13's stale predictions).

The tasks here are registered by the tests on small JSON-lines files; their data sources report
a `Provenance` as the XTREME-R sources do (xltransfer/data/gold.py: `provenance(split)`), or
nothing, as a user's own task does. The model is a tiny random mT5.
"""
import errno
import json
import os
import re

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from xltransfer import disk_full
from xltransfer.checkpoints import native
from xltransfer.data import gold, vocab
from xltransfer.errors import UserError
from xltransfer import cli
from xltransfer.evaluation import evaluator
from xltransfer.evaluation import eval_tasks
from xltransfer.evaluation.settings import EvalSettings
from xltransfer.evaluation import outputs
from xltransfer import metrics as metrics_lib
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.tasks import catalog

INPUTS = ["hello world", "guten tag", "bonjour", "ciao bella"]
LENGTHS = {"inputs": 16, "targets": 6}
FEATURE_LENGTHS = "{'inputs': 16, 'targets': 6}"

# `xltransfer eval` leaves its gin config parsed; EvalSettings made by later tests must not
# take its bindings (--no_overwrite, --require_gold).
pytestmark = pytest.mark.usefixtures("clean_gin")


class _Source(seqio.FunctionDataSource):
  """JSON lines {"inputs", "targets"}; reports `provenance` when it is given one."""

  def __init__(self, path, provenance=None, error=None):
    self._path = path
    self._error = error
    if provenance is not None:
      self.provenance = lambda split: provenance
    super().__init__(dataset_fn=self._dataset, splits=("validation",))

  def _dataset(self, split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    if self._error is not None:
      raise self._error
    if not os.path.exists(self._path):
      raise UserError(f"task needs the file {self._path}, which does not exist")
    with open(self._path, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f]
    return tf.data.Dataset.from_tensor_slices({"inputs": [r["inputs"] for r in rows],
                                               "targets": [r["targets"] for r in rows]})


def _register(name, path, provenance=None, error=None):
  features = {"inputs": seqio.Feature(vocab.get_vocabulary("builtin")),
              "targets": seqio.Feature(vocab.get_vocabulary("builtin"))}
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=_Source(path, provenance, error),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[metrics_lib.accuracy])
  # Filed as predictions/{family}/en.jsonl (xlt_goldlab_eval_en: goldlab/en).
  catalog.declare_evaluation(name, family=name.split("_")[1], language="en")


def _write(path, targets, inputs=INPUTS):
  with open(path, "w", encoding="utf-8") as f:
    for i, t in zip(inputs, targets):
      f.write(json.dumps({"inputs": i, "targets": t}, ensure_ascii=False) + "\n")
  return str(path)


def _labelled(path):
  return gold.Provenance("fake release", str(path), "test")


def _unlabelled(path):
  return gold.Provenance("fake download", str(path), "test",
                         no_gold=f"{path}: every label is 0 (the official test file)")


@pytest.fixture(scope="module")
def model_and_params():
  model = EncoderDecoderModel(get_config("tiny"))
  return model, model.init(jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def greedy(model_and_params):
  """What the model predicts for INPUTS, decoded here without the evaluator."""
  model, params = model_and_params
  vocabulary = vocab.get_vocabulary("builtin")
  rows = []
  for text in INPUTS:
    tokens = vocabulary.encode(text)[:LENGTHS["inputs"] - 1] + [1]
    rows.append(tokens + [0] * (LENGTHS["inputs"] - len(tokens)))
  decoded = np.asarray(model.greedy_decode(params, np.asarray(rows, np.int32),
                                           LENGTHS["targets"]))
  return [vocabulary.decode([int(t) for t in row]) for row in decoded]


def _settings(**overrides):
  return EvalSettings(split="validation", batch_size=2,
                                task_feature_lengths=dict(LENGTHS), **overrides)


def _run(model_and_params, tasks, out, step=0, checkpoint="ckpt", **settings):
  model, params = model_and_params
  ev = evaluator.Evaluator(model, eval_tasks.resolve_tasks(tasks), str(out), _settings(**settings),
                           show_progress=False)
  return ev.run(params, step=step, checkpoint=checkpoint)


def _records(out, target, lang="en"):
  with open(outputs.predictions_path(str(out), target, lang)) as f:
    return [json.loads(line) for line in f]


def _json(out, name):
  with open(os.path.join(str(out), name)) as f:
    return json.load(f)


def test_unlabelled_source_gets_predictions_and_no_metric(tmp_path, model_and_params):
  # The targets are not empty (XCOPA's official test: every label 0): only the provenance
  # tells that they are no gold.
  data = _write(tmp_path / "test.jsonl", ["a", "b", "a", "b"])
  _register("xlt_goldnone_eval_en", data, _unlabelled(data))
  out = tmp_path / "out"
  outcome = _run(model_and_params, "xlt_goldnone_eval_en", out)
  reason = f"{data}: every label is 0 (the official test file)"
  assert outcome.metrics == {} and outcome.failed == {}
  assert outcome.no_gold == {"goldnone": {"en": reason}}
  records = _records(out, "goldnone")
  assert len(records) == 4
  assert all(r["target"] is None and r["example_score"] is None for r in records)
  assert all(isinstance(r["prediction"], str) for r in records)
  metrics = _json(out, "metrics.json")
  assert metrics["tasks"] == {} and metrics["no_gold"] == {"goldnone": {"en": reason}}
  info = _json(out, "eval_info.json")
  assert info["splits"] == {"goldnone": {"en": "validation"}}
  assert info["provenance"] == {"goldnone": {"en": _unlabelled(data).to_json()}}
  assert info["no_gold"] == metrics["no_gold"]
  meta = _json(out, "predictions/goldnone/en.meta.json")
  assert meta["provenance"] == _unlabelled(data).to_json() and meta["no_gold"] == reason
  assert os.path.isfile(out / "DONE")
  assert not (out / "tensorboard").exists()  # no metric, no scalar


@pytest.mark.slow
def test_labelled_source_metric_is_the_count_of_right_predictions(tmp_path, model_and_params,
                                                                  greedy):
  # Half the targets are what the model predicts, half are not: accuracy 50.
  assert all(greedy), "the tiny model predicted an empty string; pick another PRNG key"
  targets = [greedy[0], "not " + greedy[1], greedy[2], "not " + greedy[3]]
  data = _write(tmp_path / "dev.jsonl", targets)
  _register("xlt_goldlab_eval_en", data, _labelled(data))
  out = tmp_path / "out"
  outcome = _run(model_and_params, "xlt_goldlab_eval_en", out)
  records = _records(out, "goldlab")
  right = sum(r["prediction"] == r["target"] for r in records)
  assert [r["target"] for r in records] == targets and right == 2
  assert outcome.metrics == {"goldlab": {"en": {"accuracy": 50.0}}}
  assert _json(out, "metrics.json")["tasks"] == {"goldlab": {"en": {"accuracy": 50.0}}}
  assert [r["example_score"] for r in records] == [100.0, 0.0, 100.0, 0.0]
  assert _json(out, "eval_info.json")["provenance"] == {
      "goldlab": {"en": _labelled(data).to_json()}}
  assert outcome.no_gold == {} and os.path.isfile(out / "DONE")


def test_without_provenance_empty_targets_are_no_gold_and_partial_labels_fail(
    tmp_path, model_and_params):
  empty = _write(tmp_path / "empty.jsonl", ["", "", "", ""])
  partial = _write(tmp_path / "partial.jsonl", ["a", "", "b", "c"])
  _register("xlt_goldempty_eval_en", empty)
  _register("xlt_goldpart_eval_en", partial)
  out = tmp_path / "out"
  outcome = _run(model_and_params, "xlt_goldempty_eval_en,xlt_goldpart_eval_en", out)
  assert outcome.no_gold == {"goldempty": {"en": "every example of task xlt_goldempty_eval_en "
                                                 "(validation split) has an empty target"}}
  assert outcome.metrics == {}
  error = outcome.failed["goldpart"]["en"]
  assert "1 of 4 examples of task xlt_goldpart_eval_en (validation split) have no gold" in error
  assert not os.path.exists(outputs.predictions_path(str(out), "goldpart", "en"))
  assert _json(out, "eval_info.json")["provenance"] == {"goldempty": {"en": None}}
  assert not os.path.exists(out / "DONE")


def test_a_source_said_labelled_with_empty_targets_fails(tmp_path, model_and_params):
  data = _write(tmp_path / "test.jsonl", ["a", "", "", ""])
  _register("xlt_goldliar_eval_en", data, _labelled(data))
  outcome = _run(model_and_params, "xlt_goldliar_eval_en", tmp_path / "out")
  error = outcome.failed["goldliar"]["en"]
  assert error.startswith(f"{data}: fake release, test split ({data}) is said to be labelled, "
                          "but 3 of 4 examples")
  assert outcome.metrics == {} and outcome.no_gold == {}


def test_require_gold_fails_the_task_before_inference(tmp_path, model_and_params):
  data = _write(tmp_path / "test.jsonl", ["a", "b", "a", "b"])
  _register("xlt_goldnone_eval_en", data, _unlabelled(data))
  out = tmp_path / "out"
  outcome = _run(model_and_params, "xlt_goldnone_eval_en", out, require_gold=True)
  assert outcome.failed == {"goldnone": {"en": (
      f"xlt_goldnone_eval_en: no gold to score, so no metric (require_gold): {data}: every "
      "label is 0 (the official test file)")}}
  assert outcome.metrics == {} and outcome.no_gold == {}
  assert not os.path.exists(outputs.predictions_path(str(out), "goldnone", "en"))
  assert _json(out, "metrics.json")["failed"] == outcome.failed
  assert not os.path.exists(out / "DONE")


def test_require_gold_on_resume_reads_the_recorded_provenance(tmp_path, model_and_params):
  data = _write(tmp_path / "test.jsonl", ["a", "b", "a", "b"])
  _register("xlt_goldnone_eval_en", data, _unlabelled(data))
  out = tmp_path / "out"
  assert _run(model_and_params, "xlt_goldnone_eval_en", out).no_gold
  # The source now says nothing; the predictions on disk keep what they were made from.
  _register("xlt_goldnone_eval_en", data)
  outcome = _run(model_and_params, "xlt_goldnone_eval_en", out, require_gold=True)
  assert "every label is 0" in outcome.failed["goldnone"]["en"]
  outcome = _run(model_and_params, "xlt_goldnone_eval_en", out)
  assert outcome.no_gold and outcome.metrics == {}
  assert _json(out, "eval_info.json")["provenance"]["goldnone"]["en"]["labelled"] is False


def test_a_programming_error_propagates(tmp_path, model_and_params):
  _register("xlt_goldbug_eval_en", str(tmp_path / "x.jsonl"), error=RuntimeError("a bug"))
  with pytest.raises(RuntimeError, match="a bug"):
    _run(model_and_params, "xlt_goldbug_eval_en", tmp_path / "out")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model_and_params):
  """Two native checkpoints, named as a trainer's steps 3 and 40."""
  model, params = model_and_params
  root = tmp_path_factory.mktemp("run")
  paths = {}
  for step in (3, 40):
    paths[step] = str(root / f"checkpoint_{step}")
    native.save_params(params, model.config, paths[step])
  return paths


def _argv(checkpoint, out, tasks, *extra):
  return ["--gin_file=models/mt5_tiny.gin", f"--checkpoint={checkpoint}", f"--output_dir={out}",
          f"--tasks={tasks}", "--split=validation", f"--gin.TASK_FEATURE_LENGTHS={FEATURE_LENGTHS}",
          "--gin.BATCH_SIZE=2", *extra]


@pytest.mark.slow
def test_a_failing_task_does_not_stop_the_others(tmp_path, checkpoints, greedy, capsys):
  labelled = _write(tmp_path / "dev.jsonl", [greedy[0], "x", "y", "z"])
  unlabelled = _write(tmp_path / "test.jsonl", ["a", "b", "a", "b"])
  missing = str(tmp_path / "missing.jsonl")
  _register("xlt_goldlab_eval_en", labelled, _labelled(labelled))
  _register("xlt_goldmiss_eval_en", missing, _labelled(missing))
  _register("xlt_goldnone_eval_en", unlabelled, _unlabelled(unlabelled))
  out = tmp_path / "out"
  tasks = "xlt_goldlab_eval_en,xlt_goldmiss_eval_en,xlt_goldnone_eval_en"
  assert cli.main(["eval", *_argv(checkpoints[3], out, tasks, f"--submission_dir={tmp_path}/s")]) == 1
  printed = capsys.readouterr()
  assert "goldlab  en   accuracy=25.00" in printed.out
  assert (f"goldnone en   no gold, no metric; predictions only in {out}/predictions/goldnone/"
          f"en.jsonl: {unlabelled}: every label is 0") in printed.out
  assert "1 of 3 tasks failed" in printed.err
  assert f"goldmiss/en: task needs the file {missing}, which does not exist" in printed.err
  assert "no submission written" in printed.err and not (tmp_path / "s").exists()
  metrics = _json(out, "metrics.json")
  assert metrics["tasks"] == {"goldlab": {"en": {"accuracy": 25.0}}}
  assert list(metrics["failed"]) == ["goldmiss"] and list(metrics["no_gold"]) == ["goldnone"]
  assert _json(out, "eval_info.json")["failed"] == metrics["failed"]
  assert not os.path.exists(out / "DONE")
  # The file appears; the rerun computes only the failed task and completes.
  done_before = os.path.getmtime(outputs.predictions_path(str(out), "goldlab", "en"))
  _write(missing, [greedy[0], greedy[1], "u", "v"])
  assert cli.main(["eval", *_argv(checkpoints[3], out, tasks)]) == 0
  assert os.path.getmtime(outputs.predictions_path(str(out), "goldlab", "en")) == done_before
  metrics = _json(out, "metrics.json")
  assert metrics["failed"] == {}
  assert metrics["tasks"]["goldmiss"] == {"en": {"accuracy": 50.0}}
  assert os.path.isfile(out / "DONE")


@pytest.mark.slow
def test_another_checkpoint_into_the_same_dir_recomputes(tmp_path, checkpoints, greedy, capsys):
  data = _write(tmp_path / "dev.jsonl", [greedy[0], "x", "y", "z"])
  _register("xlt_goldlab_eval_en", data, _labelled(data))
  out = tmp_path / "out"
  predictions = outputs.predictions_path(str(out), "goldlab", "en")
  assert cli.main(["eval", *_argv(checkpoints[3], out, "xlt_goldlab_eval_en")]) == 0
  assert _json(out, "predictions/goldlab/en.meta.json")["step"] == 3
  capsys.readouterr()
  # Issue 13: step 40 into the same directory reported step 3's predictions as step 40's.
  assert cli.main(["eval", *_argv(checkpoints[40], out, "xlt_goldlab_eval_en")]) == 0
  err = capsys.readouterr().err
  assert (f"holds the evaluation of checkpoint {checkpoints[3]} (step 3), not of checkpoint "
          f"{checkpoints[40]} (step 40); recomputing it") in err
  assert "replacing 1 predictions files (predictions/goldlab/en.jsonl)" in err
  for name in ("metrics.json", "eval_info.json", "predictions/goldlab/en.meta.json",
               outputs.IDENTITY_FILE):
    recorded = _json(out, name)
    assert (recorded["checkpoint"], recorded["step"]) == (checkpoints[40], 40), name
  assert _json(out, "metrics.json")["tasks"] == {"goldlab": {"en": {"accuracy": 25.0}}}
  assert os.path.isfile(out / "DONE") and len(_records(out, "goldlab")) == 4
  # --no_overwrite refuses instead, before loading anything, and leaves the directory alone.
  before = {name: _json(out, name) for name in ("metrics.json", outputs.IDENTITY_FILE)}
  mtime = os.path.getmtime(predictions)
  assert cli.main(["eval", *_argv(checkpoints[3], out, "xlt_goldlab_eval_en", "--no_overwrite")]) == 2
  err = capsys.readouterr().err
  assert (f"error: {out} holds the evaluation of checkpoint {checkpoints[40]} (step 40), not of "
          f"checkpoint {checkpoints[3]} (step 3); refused (--no_overwrite)") in err
  assert "leave out --no_overwrite to recompute" in err
  assert {name: _json(out, name) for name in before} == before
  assert os.path.getmtime(predictions) == mtime and os.path.isfile(out / "DONE")
  # The same checkpoint resumes: nothing recomputed, with or without --no_overwrite.
  assert cli.main(["eval", *_argv(checkpoints[40], out, "xlt_goldlab_eval_en", "--no_overwrite")]) == 0
  assert os.path.getmtime(predictions) == mtime


@pytest.mark.slow
def test_a_crash_while_replacing_never_mixes_checkpoints(tmp_path, model_and_params, greedy,
                                                        monkeypatch):
  """Killed after eval_identity.json names the new checkpoint but before the old predictions
  are gone: their .meta.json still names the old one, so nothing reuses them."""
  data = _write(tmp_path / "dev.jsonl", [greedy[0], "x", "y", "z"])
  _register("xlt_goldlab_eval_en", data, _labelled(data))
  _register("xlt_goldnone_eval_en", data, _unlabelled(data))
  out = tmp_path / "out"
  tasks = "xlt_goldlab_eval_en,xlt_goldnone_eval_en"
  _run(model_and_params, tasks, out, step=3, checkpoint="/runs/a")

  def crash(path):
    raise KeyboardInterrupt(f"killed while removing {path}")
  with monkeypatch.context() as patch:
    patch.setattr(outputs, "remove_predictions", crash)
    with pytest.raises(KeyboardInterrupt):
      _run(model_and_params, tasks, out, step=40, checkpoint="/runs/a")
  assert _json(out, outputs.IDENTITY_FILE)["step"] == 40
  assert not os.path.exists(out / "metrics.json") and not os.path.exists(out / "DONE")
  assert _json(out, "predictions/goldlab/en.meta.json")["step"] == 3
  # Under --no_overwrite each such file fails its task, naming what differs ...
  outcome = _run(model_and_params, tasks, out, step=40, checkpoint="/runs/a", no_overwrite=True)
  error = outcome.failed["goldlab"]["en"]
  assert error.startswith(outputs.predictions_path(str(out), "goldlab", "en"))
  assert "step 3 (this run: 40)" in error and "refused (--no_overwrite)" in error
  assert outcome.metrics == {} and not os.path.exists(out / "DONE")
  # ... and by default it is recomputed.
  outcome = _run(model_and_params, tasks, out, step=40, checkpoint="/runs/a")
  assert outcome.metrics == {"goldlab": {"en": {"accuracy": 25.0}}} and not outcome.failed
  for target in ("goldlab", "goldnone"):
    assert _json(out, f"predictions/{target}/en.meta.json")["step"] == 40
  assert _json(out, "metrics.json")["step"] == 40 and os.path.isfile(out / "DONE")


@pytest.mark.slow
def test_same_checkpoint_other_step_or_settings(tmp_path, model_and_params, greedy, caplog):
  data = _write(tmp_path / "dev.jsonl", [greedy[0], "x", "y", "z"])
  _register("xlt_goldlab_eval_en", data, _labelled(data))
  out = tmp_path / "out"
  _run(model_and_params, "xlt_goldlab_eval_en", out, step=3, checkpoint="/runs/a")
  with pytest.raises(outputs.StaleOutputError, match=r"checkpoint /runs/a \(step 3\), not of "
                                                       r"checkpoint /runs/a \(step 40\)"):
    _run(model_and_params, "xlt_goldlab_eval_en", out, step=40, checkpoint="/runs/a",
         no_overwrite=True)
  # Other prediction settings under --no_overwrite: that task fails, naming file and setting.
  outcome = _run(model_and_params, "xlt_goldlab_eval_en", out, step=3, checkpoint="/runs/a",
                 max_examples=2, no_overwrite=True)
  error = outcome.failed["goldlab"]["en"]
  assert error.startswith(outputs.predictions_path(str(out), "goldlab", "en"))
  assert "'max_examples': None" in error and "'max_examples': 2" in error
  # By default the task is recomputed with the new settings, and the log says why.
  caplog.set_level("WARNING")
  outcome = _run(model_and_params, "xlt_goldlab_eval_en", out, step=3, checkpoint="/runs/a",
                 max_examples=2)
  assert not outcome.failed and len(_records(out, "goldlab")) == 2
  assert "recomputing" in caplog.text and "'max_examples': None" in caplog.text
  assert _json(out, "predictions/goldlab/en.meta.json")["settings"]["max_examples"] == 2
  # Predictions that nobody recorded the checkpoint of: refused under --no_overwrite ...
  os.remove(out / outputs.IDENTITY_FILE)
  with pytest.raises(outputs.StaleOutputError, match="no eval_identity.json"):
    _run(model_and_params, "xlt_goldlab_eval_en", out, step=3, checkpoint="/runs/a",
         max_examples=2, no_overwrite=True)
  # ... recomputed otherwise (their .meta.json names the checkpoint, but the directory did not).
  os.remove(meta := outputs.meta_path(outputs.predictions_path(str(out), "goldlab", "en")))
  outcome = _run(model_and_params, "xlt_goldlab_eval_en", out, step=3, checkpoint="/runs/a")
  assert outcome.metrics == {"goldlab": {"en": {"accuracy": 25.0}}}
  assert os.path.isfile(meta) and _json(out, outputs.IDENTITY_FILE)["step"] == 3


@pytest.mark.slow
def test_another_data_source_is_not_served_from_old_predictions(tmp_path, model_and_params,
                                                                greedy, caplog, monkeypatch):
  # First the download (no gold), then the labelled release, same checkpoint and dir: the
  # second run must read the new source, not report the first run's "no gold".
  data = _write(tmp_path / "test.jsonl", [greedy[0], "x", "y", "z"])
  _register("xlt_goldsrc_eval_en", data, _unlabelled(data))
  out = tmp_path / "out"
  first = _run(model_and_params, "xlt_goldsrc_eval_en", out, checkpoint="/runs/a")
  assert first.no_gold and not first.metrics
  _register("xlt_goldsrc_eval_en", data, _labelled(data))
  monkeypatch.setenv("XLTRANSFER_TARGET_SOURCE", "original")
  caplog.set_level("WARNING")
  second = _run(model_and_params, "xlt_goldsrc_eval_en", out, checkpoint="/runs/a")
  assert "recomputing" in caplog.text and "'source': 'files'" in caplog.text
  assert second.metrics == {"goldsrc": {"en": {"accuracy": 25.0}}} and not second.no_gold
  meta = _json(out, "predictions/goldsrc/en.meta.json")
  assert meta["data"]["source"] == "original"


def test_empty_checkpoint_dir_names_the_flag(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  data = _write(tmp_path / "dev.jsonl", ["a", "b", "c", "d"])
  _register("xlt_goldlab_eval_en", data, _labelled(data))
  assert cli.main(["eval", *_argv(empty, tmp_path / "out", "xlt_goldlab_eval_en")]) == 2
  err = capsys.readouterr().err
  assert f"error: CHECKPOINT_PATH (--checkpoint) {empty}: not a recognised checkpoint" in err
  assert "INITIAL_CHECKPOINT_PATH" not in err and "In call to configurable" not in err
  # gin's probe of `include 'meshes/cpu.gin'` as a package path is not logged as an error.
  assert "Path not found" not in err and " ERROR " not in err


@pytest.mark.slow
def test_a_full_disk_names_the_file_and_keeps_finished_tasks(tmp_path, checkpoints, greedy,
                                                              capsys, monkeypatch):
  first = _write(tmp_path / "a.jsonl", [greedy[0], "x", "y", "z"])
  second = _write(tmp_path / "b.jsonl", [greedy[0], greedy[1], "y", "z"])
  _register("xlt_golda_eval_en", first, _labelled(first))
  _register("xlt_goldb_eval_en", second, _labelled(second))
  out = tmp_path / "out"
  full = outputs.predictions_path(str(out), "goldb", "en") + ".partial"
  real_gfile = tf.io.gfile.GFile

  class FullDisk:
    """A file on a device with no space left (the write fails as Python's does: ENOSPC)."""

    def __init__(self, path, mode="r"):
      self._file = real_gfile(path, mode)

    def __enter__(self):
      return self

    def __exit__(self, *exc_info):
      self._file.close()

    def write(self, text):
      self._file.write(text[:10])
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(tf.io.gfile, "GFile",
                      lambda path, mode="r": (FullDisk if path == full else real_gfile)(path, mode))
  tasks = "xlt_golda_eval_en,xlt_goldb_eval_en"
  assert cli.main(["eval", *_argv(checkpoints[3], out, tasks)]) == 2
  err = capsys.readouterr().err
  error_lines = [line for line in err.splitlines() if line.startswith("xltransfer eval:")]
  target = full[:-len(".partial")]
  assert len(error_lines) == 1, err
  match = re.fullmatch(
      rf"xltransfer eval: error: no space left on device writing {re.escape(target)} "
      r"\(about (\d+) bytes needed\); free space there .* and rerun", error_lines[0])
  assert match, error_lines
  assert "Traceback" not in err
  # The finished task is intact; the failed one left no half-written file behind.
  assert len(_records(out, "golda")) == 4
  assert not os.path.exists(full) and not os.path.exists(full[:-len(".partial")])
  assert not os.path.exists(out / "DONE")
  # Space is back: the rerun keeps the finished task and completes the other.
  monkeypatch.setattr(tf.io.gfile, "GFile", real_gfile)
  done_before = os.path.getmtime(outputs.predictions_path(str(out), "golda", "en"))
  assert cli.main(["eval", *_argv(checkpoints[3], out, tasks)]) == 0
  assert os.path.getmtime(outputs.predictions_path(str(out), "golda", "en")) == done_before
  assert _json(out, "metrics.json")["tasks"]["goldb"] == {"en": {"accuracy": 50.0}}
  assert os.path.getsize(target) == int(match.group(1))  # the size the message gave


def test_tensorflow_and_python_disk_full_errors_are_recognised(tmp_path):
  # tf.io.gfile reports ENOSPC as RESOURCE_EXHAUSTED (as writing to /dev/full shows).
  is_disk_full = disk_full.is_disk_full
  assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
  assert is_disk_full(tf.errors.ResourceExhaustedError(None, None, ""))
  assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
  if os.path.exists("/dev/full"):
    with pytest.raises(tf.errors.OpError) as raised:
      with tf.io.gfile.GFile("/dev/full", "w") as f:
        f.write("x" * 100)
    assert is_disk_full(raised.value)


def test_a_full_disk_under_the_summaries_is_named(tmp_path, model_and_params, greedy,
                                                  monkeypatch):
  from xltransfer import scalar_summaries  # pylint: disable=g-import-not-at-top
  data = _write(tmp_path / "dev.jsonl", [greedy[0], "x", "y", "z"])
  _register("xlt_goldlab_eval_en", data, _labelled(data))

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(scalar_summaries, "create_writer", full)
  out = tmp_path / "out"
  with pytest.raises(outputs.DiskFullError,
                     match=f"writing TensorBoard summaries into {out}/tensorboard; free space"):
    _run(model_and_params, "xlt_goldlab_eval_en", out)
  assert _json(out, "metrics.json")["tasks"] == {"goldlab": {"en": {"accuracy": 25.0}}}
  assert not os.path.exists(out / "DONE")


@pytest.mark.slow
def test_predictions_written_before_the_cluster_fields_are_recomputed(tmp_path, model_and_params,
                                                                      greedy, caplog):
  data = _write(tmp_path / "dev.jsonl", [greedy[0], "b", "c", "d"])
  _register("xlt_goldfmt_eval_en", data, _labelled(data))
  out = tmp_path / "out"
  _run(model_and_params, "xlt_goldfmt_eval_en", out, checkpoint="/runs/a")
  meta_file = outputs.meta_path(outputs.predictions_path(str(out), "goldfmt", "en"))
  meta = _json(out, "predictions/goldfmt/en.meta.json")
  assert meta["record_format"] == evaluator.RECORD_FORMAT
  del meta["record_format"]  # as an evaluator before "item"/"paragraph" wrote it
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  caplog.set_level("WARNING")
  again = _run(model_and_params, "xlt_goldfmt_eval_en", out, checkpoint="/runs/a")
  assert "recomputing" in caplog.text and "record_format None" in caplog.text
  assert again.metrics == {"goldfmt": {"en": {"accuracy": 25.0}}}
  assert _json(out, "predictions/goldfmt/en.meta.json")["record_format"] == evaluator.RECORD_FORMAT
