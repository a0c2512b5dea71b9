"""The train loop on the tiny model in this process: loss falls, gradient accumulation, eval."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")

import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer.model.config import get_config  # noqa: E402
from xltransfer.model.losses import NUM_REAL_TARGET_TOKENS  # noqa: E402
from xltransfer.model.models import EncoderDecoderModel  # noqa: E402
from xltransfer.partitioning import create_partitioner  # noqa: E402
from xltransfer.train import input as input_lib  # noqa: E402
from xltransfer.train import run  # noqa: E402
from xltransfer.train.checkpointing import CheckpointManager  # noqa: E402
from xltransfer.train.optimizer import Adafactor  # noqa: E402
from xltransfer.train.schedules import learning_rate_schedule  # noqa: E402
from xltransfer.train.trainer import Trainer, to_host  # noqa: E402

LENGTHS = {"inputs": 32, "targets": 32}


pytestmark = pytest.mark.usefixtures("clean_gin")


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_loss_falls_and_eval_runs(tmp_path):
  model = EncoderDecoderModel(get_config("tiny"),
                              loss_normalizing_factor=NUM_REAL_TARGET_TOKENS)
  train_ds = input_lib.DatasetConfig("xlt_test_copy", LENGTHS, batch_size=8, shuffle=True, seed=3)
  eval_ds = train_ds.replace(split="validation", shuffle=False, pack=False)
  result = run.train(
      model_dir=str(tmp_path), model=model, train_dataset=train_ds, total_steps=40,
      eval_dataset=eval_ds, eval_period=20, eval_steps=2,
      learning_rate=learning_rate_schedule("constant", 0.01), log_period=1,
      checkpoint_manager=functools.partial(CheckpointManager, period=20))
  assert result["status"] == "completed" and result["step"] == 40
  records = _read_jsonl(tmp_path / "train_metrics.jsonl")
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 40
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < 0.6 * first, (first, last)
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [20, 40]
  assert evals[1]["eval/loss"] < evals[0]["eval/loss"]
  assert 0.0 <= evals[1]["eval/accuracy"] <= 1.0
  for key in ("tokens_per_second", "examples_per_second", "steps_per_second", "grad_norm",
              "learning_rate", "z_loss", "accuracy"):
    assert key in records[-1] or key in records[-2]
  assert (tmp_path / "checkpoint_20").is_dir() and (tmp_path / "checkpoint_40").is_dir()
  assert os.listdir(tmp_path / "train")  # TensorBoard event file


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch():
  # Per-token normalisation is the case where microbatches need weighting to match.
  model = EncoderDecoderModel(get_config("tiny"), loss_normalizing_factor=NUM_REAL_TARGET_TOKENS)
  partitioner = create_partitioner()
  optimizer = Adafactor(min_dim_size_to_factor=32).create(
      learning_rate_schedule("constant", 0.01), model.abstract_params(),
      model.param_logical_axes())
  dataset = input_lib.DatasetConfig("xlt_test_copy", LENGTHS, batch_size=8, shuffle=False)
  batch = next(input_lib.TrainInput(dataset, partitioner))
  initial = jax.jit(model.init)(jax.random.PRNGKey(0))
  initial_host = to_host(initial)
  results = []
  for microbatches in (1, 4):
    trainer = Trainer(model, optimizer, partitioner, num_microbatches=microbatches)
    # The step donates its state, so each trainer gets its own copy of the parameters.
    state = trainer.state_from_params(jax.tree.map(jnp.copy, initial))
    state, metrics = trainer.train_step(state, batch)
    results.append((to_host(state.params), to_host(metrics)))
  (params_full, metrics_full), (params_micro, metrics_micro) = results
  for key in ("loss", "z_loss", "accuracy", "num_tokens", "num_examples", "grad_norm"):
    np.testing.assert_allclose(metrics_micro[key], metrics_full[key], rtol=1e-5, err_msg=key)
  for full, micro in zip(jax.tree.leaves(params_full), jax.tree.leaves(params_micro)):
    np.testing.assert_allclose(micro, full, rtol=1e-5, atol=1e-5)
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params_full),
                                                   jax.tree.leaves(initial_host)))
  assert moved > 1e-4  # the step changed the parameters, so the comparison means something
