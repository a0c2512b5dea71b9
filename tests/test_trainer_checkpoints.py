"""Where a run's parameters come from: INITIAL_CHECKPOINT_PATH formats and the resume rule."""
import functools
import logging

import jax
import numpy as np
import pytest


import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer.checkpoints import native  # noqa: E402
from xltransfer.errors import CheckpointError  # noqa: E402
from xltransfer.model.config import get_config  # noqa: E402
from xltransfer.model.models import EncoderDecoderModel  # noqa: E402
from xltransfer.partitioning import create_partitioner  # noqa: E402
from xltransfer.train import checkpointing, run  # noqa: E402
from xltransfer.checkpoints import loading
from xltransfer.train import input as input_lib  # noqa: E402
from xltransfer.train.optimizer import Adafactor  # noqa: E402
from xltransfer.train.schedules import learning_rate_schedule  # noqa: E402
from xltransfer.train.trainer import Trainer, to_host  # noqa: E402


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def tiny():
  model = EncoderDecoderModel(get_config("tiny"))
  partitioner = create_partitioner()
  optimizer = Adafactor().create(learning_rate_schedule(), model.abstract_params(),
                                 model.param_logical_axes())
  trainer = Trainer(model, optimizer, partitioner)
  params = to_host(model.init(jax.random.PRNGKey(7)))
  return model, trainer, params


def _assert_same(tree_a, tree_b):
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loads_native_and_hf_checkpoints(tiny, tmp_path):
  model, trainer, params = tiny
  native_dir = str(tmp_path / "native")
  native.save_params(params, model.config, native_dir)
  loaded, kind = loading.load_initial_params(native_dir, model,
                                                   trainer.state_shardings.params)
  assert kind == f"xltransfer params checkpoint {native_dir}"
  _assert_same(to_host(loaded), params)

  pytest.importorskip("safetensors")
  from xltransfer.checkpoints import hf  # pylint: disable=import-outside-toplevel
  hf_dir = str(tmp_path / "hf")
  hf.save_hf_checkpoint(params, model.config, hf_dir)
  loaded, kind = loading.load_initial_params(hf_dir, model, trainer.state_shardings.params)
  assert kind == f"HF checkpoint {hf_dir}"
  _assert_same(to_host(loaded), params)

  wrong = EncoderDecoderModel(get_config("tiny", num_decoder_layers=3))
  with pytest.raises(CheckpointError, match="does not fit the model config"):
    loading.load_initial_params(hf_dir, wrong, Trainer(
        wrong, Adafactor().create(learning_rate_schedule(), wrong.abstract_params(),
                                  wrong.param_logical_axes()),
        create_partitioner()).state_shardings.params)


def test_unrecognised_directory(tiny, tmp_path):
  model, trainer, _ = tiny
  (tmp_path / "notes.txt").write_text("not a checkpoint")
  with pytest.raises(CheckpointError, match="not a recognised checkpoint"):
    loading.load_initial_params(str(tmp_path), model, trainer.state_shardings.params)


@pytest.mark.slow
def test_initial_checkpoint_then_own_checkpoint_wins(tiny, tmp_path, caplog):
  model, _, params = tiny
  initial = str(tmp_path / "pretrained")
  native.save_params(params, model.config, initial)
  model_dir = str(tmp_path / "run")
  dataset = input_lib.DatasetConfig("xlt_test_copy", {"inputs": 32, "targets": 32},
                                    batch_size=8, shuffle=False)
  train = functools.partial(
      run.train, model_dir=model_dir, model=model, train_dataset=dataset,
      initial_checkpoint_path=initial, log_period=1,
      checkpoint_manager=functools.partial(checkpointing.CheckpointManager, period=1))
  with caplog.at_level(logging.INFO):
    train(total_steps=1)
  assert f"has no checkpoint: starting from INITIAL_CHECKPOINT_PATH (xltransfer params checkpoint " \
         f"{initial})" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.INFO):
    result = train(total_steps=2)
  assert result["step"] == 2
  assert (f"resuming from MODEL_DIR's latest checkpoint {model_dir}/checkpoint_1 (step 1, input "
          f"position 1); INITIAL_CHECKPOINT_PATH {initial} is not loaded because the run already "
          "has its own checkpoint") in caplog.text
