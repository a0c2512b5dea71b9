"""Training and evaluation metrics as TensorBoard reads them, the default log period and the ETA.

Readers are TensorBoard's own (tensorboard.backend.event_processing): `EventAccumulator.Scalars`
lists only `Summary.Value.simple_value` scalars; the dashboard's Python loader
(`plugin_event_multiplexer` behind `data_provider.MultiplexerDataProvider`, what
`tensorboard --load_fast=false` serves /data/plugin/scalars from) takes those after
`data_compat` migrates them to the `scalars` plugin.
"""
import functools
import json
import os
import types

import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_multiplexer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")

import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer.errors import ConfigError  # noqa: E402
from xltransfer.evaluation import evaluator as evaluator_lib  # noqa: E402
from xltransfer.evaluation import outputs  # noqa: E402
from xltransfer.model.config import get_config  # noqa: E402
from xltransfer.model.models import EncoderDecoderModel  # noqa: E402
from xltransfer.train import input as input_lib  # noqa: E402
from xltransfer.train import run  # noqa: E402
from xltransfer.train import summaries as summaries_lib  # noqa: E402
from xltransfer.train.checkpointing import CheckpointManager  # noqa: E402
from xltransfer.scalar_summaries import create_writer  # noqa: E402
from xltransfer.train.schedules import learning_rate_schedule  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_gin")

LENGTHS = {"inputs": 32, "targets": 32}


def _scalars(log_dir, tag):
  accumulator = event_accumulator.EventAccumulator(str(log_dir))
  accumulator.Reload()
  return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def _dashboard_scalars(log_dir, tag):
  """What TensorBoard's scalars dashboard gets for run "run" from its Python data loader."""
  multiplexer = plugin_event_multiplexer.EventMultiplexer({"run": str(log_dir)})
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, str(log_dir))
  read = provider.read_scalars(context.RequestContext(), experiment_id="", plugin_name="scalars",
                               downsample=1000)
  return [(d.step, d.value) for d in read.get("run", {}).get(tag, [])]


@pytest.mark.slow
def test_short_run_logs_ten_points_that_tensorboard_reads(tmp_path, caplog):
  model = EncoderDecoderModel(get_config("tiny"))
  train_ds = input_lib.DatasetConfig("xlt_test_copy", LENGTHS, batch_size=8, shuffle=False)
  eval_ds = train_ds.replace(split="validation", pack=False)
  caplog.set_level("INFO")
  result = run.train(
      model_dir=str(tmp_path), model=model, train_dataset=train_ds, total_steps=30,
      eval_dataset=eval_ds, eval_period=30, eval_steps=1,
      learning_rate=learning_rate_schedule("constant", 0.01),  # log_period unset
      checkpoint_manager=functools.partial(CheckpointManager, period=100))
  assert result["status"] == "completed"
  with open(tmp_path / "train_metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  train_records = [r for r in records if "loss" in r]
  # 30 steps // 10 -> every 3 steps (the old default, 100, logged step 30 only).
  assert [r["step"] for r in train_records] == list(range(3, 31, 3))
  assert [r["first_step"] for r in train_records] == list(range(1, 29, 3))

  expected = [(r["step"], r["loss"]) for r in train_records]
  for read in (_scalars(tmp_path / "train", "loss"),
               _dashboard_scalars(tmp_path / "train", "loss")):
    assert [s for s, _ in read] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in read], [v for _, v in expected], rtol=1e-6)
  assert {"accuracy", "learning_rate", "steps_per_second"} <= set(
      event_accumulator.EventAccumulator(str(tmp_path / "train")).Reload().Tags()["scalars"])
  [(step, eval_loss)] = _scalars(tmp_path / "validation", "loss")
  assert step == 30 and eval_loss == pytest.approx(records[-1]["eval/loss"], rel=1e-6)

  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert len(lines) == 10 and all(" | ETA " in line for line in lines)
  assert "every 3 steps" in caplog.text and "N = 30" in caplog.text


def test_default_log_period():
  assert [summaries_lib.default_log_period(n) for n in (1, 9, 30, 999, 1000, 20000)] == [
      1, 1, 3, 99, 100, 100]


def test_log_period_set_wins_and_resume_counts_the_steps_left(tmp_path):
  assert summaries_lib.TrainSummaries(str(tmp_path / "a"), 30, 0, log_period=7).log_period == 7
  # A T5X continuation of 50 steps from step 1,000,000 logs every 5, not every 100.
  assert summaries_lib.TrainSummaries(str(tmp_path / "b"), 1_000_050, 1_000_000).log_period == 5


@pytest.mark.parametrize("bad", [0, -5, 2.5, "10", True])
def test_bad_log_period_is_a_config_error_before_anything_runs(tmp_path, bad):
  with pytest.raises(ConfigError, match=r"xltransfer\.train\.train\.log_period .*got"):
    run.train(model_dir=str(tmp_path / "run"), model=None, train_dataset=None, total_steps=10,
              log_period=bad)
  assert not os.path.exists(tmp_path / "run")


def test_eta_excludes_the_first_step(tmp_path, monkeypatch):
  clock = {"now": 0.0}
  monkeypatch.setattr(summaries_lib.time, "time", lambda: clock["now"])
  summaries = summaries_lib.TrainSummaries(str(tmp_path), total_steps=30, start_step=0,
                                           log_period=1000)
  # Step 1 returns after 250 s of compilation, then each step takes 0.5 s.
  clock["now"] = 250.0
  summaries.add(1, {})
  assert summaries.eta_text(1, clock["now"]) == "after compilation"
  for step in range(2, 11):
    clock["now"] += 0.5
    summaries.add(step, {})
  # 20 steps left at 0.5 s each (timed from the start, as before, it was 8m29s).
  assert summaries.eta_text(10, clock["now"]) == "10s"
  summaries.close()


def test_eta_on_the_log_line_before_and_after_compilation(tmp_path, monkeypatch, caplog):
  clock = {"now": 0.0}
  monkeypatch.setattr(summaries_lib.time, "time", lambda: clock["now"])
  summaries = summaries_lib.TrainSummaries(str(tmp_path), total_steps=100, start_step=0,
                                           log_period=1)
  metrics = {"loss": np.float32(2.0), "loss_sum": np.float32(20.0), "num_tokens": 10,
             "num_examples": 2, "accuracy_correct": 5, "learning_rate": np.float32(0.01)}
  caplog.set_level("INFO")
  clock["now"] = 60.0
  summaries.add(1, metrics)
  clock["now"] = 62.0
  summaries.add(2, metrics)
  summaries.close()
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert lines[0].endswith("ETA after compilation")
  assert lines[1].endswith("ETA 3m16s")  # 98 steps at 2 s
  assert _scalars(tmp_path / "train", "loss") == [(1, 2.0), (2, 2.0)]


def test_each_logged_step_and_eval_is_one_log_line(tmp_path, caplog):
  # absl at INFO too: clu's LoggingWriter logs through it (`--log_level=debug`, `eval`).
  caplog.set_level("INFO")
  caplog.set_level("INFO", logger="absl")
  summaries = summaries_lib.TrainSummaries(str(tmp_path), total_steps=2, start_step=0,
                                           log_period=1)
  metrics = {"loss": np.float32(2.71828), "loss_sum": np.float32(27.1828), "num_tokens": 10,
             "num_examples": 2, "accuracy_correct": 5, "learning_rate": np.float32(0.01)}
  summaries.add(1, metrics)
  summaries.add(2, metrics)
  summaries.write_eval(2, {"loss": 3.14159, "accuracy": 0.25})
  summaries.close()
  messages = [r.getMessage() for r in caplog.records]
  assert [m.split(" | ")[0] for m in messages if "2.718" in m] == ["step 1/2 (50.0%)",
                                                                   "step 2/2 (100.0%)"]
  assert [m.split(":")[0] for m in messages if "3.14" in m] == ["eval at step 2"]
  assert _scalars(tmp_path / "validation", "loss") == [(2, pytest.approx(3.14159))]


def test_evaluator_summaries_are_not_logged_again(tmp_path, caplog):
  # The evaluator logs each task's metrics itself ("eval TASK (...): accuracy=..").
  caplog.set_level("INFO")
  caplog.set_level("INFO", logger="absl")
  evaluator_lib.Evaluator._write_summaries(  # pylint: disable=protected-access
      types.SimpleNamespace(output_dir=str(tmp_path)), {"xnli": {"de": {"accuracy": 40.0}}},
      step=7)
  assert not [r.getMessage() for r in caplog.records if "xnli/de/accuracy" in r.getMessage()]
  assert _scalars(tmp_path / outputs.TENSORBOARD_DIR, "xnli/de/accuracy") == [(7, 40.0)]


def test_resume_drops_simple_value_events_after_the_step(tmp_path):
  writer = create_writer(str(tmp_path), asynchronous=False)
  for step in range(1, 6):
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()
  summaries_lib.drop_events_after(str(tmp_path), 3)
  assert _scalars(tmp_path, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_non_number_scalar_names_its_key(tmp_path):
  writer = create_writer(str(tmp_path), asynchronous=False)
  with pytest.raises(ValueError, match=r"'eval/name' at step 4"):
    writer.write_scalars(4, {"eval/name": "xnli"})
  writer.close()


def test_evaluator_summaries_are_scalars(tmp_path):
  results = {"xnli": {"de": {"accuracy": 40.0}, "sw": {"accuracy": 30.0}}}
  # The method uses only the output directory of its evaluator.
  evaluator_lib.Evaluator._write_summaries(  # pylint: disable=protected-access
      types.SimpleNamespace(output_dir=str(tmp_path)), results, step=1200)
  log_dir = tmp_path / outputs.TENSORBOARD_DIR
  assert _scalars(log_dir, "xnli/de/accuracy") == [(1200, 40.0)]
  assert _dashboard_scalars(log_dir, "xnli/sw/accuracy") == [(1200, 30.0)]
  tags = event_accumulator.EventAccumulator(str(log_dir)).Reload().Tags()
  assert tags["tensors"] == [] and len(tags["scalars"]) >= 2
