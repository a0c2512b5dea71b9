"""`xltransfer train`: gin plumbing and one test per kind of bad input (clear message, exit 2)."""
import dataclasses
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")

import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer import cli  # noqa: E402
from xltransfer.model.config import get_config  # noqa: E402
from xltransfer.train import checkpointing  # noqa: E402
from xltransfer.train.state import TrainState  # noqa: E402


pytestmark = pytest.mark.usefixtures("clean_gin")


def _train(capsys, model_dir, *extra, base=True):
  """Runs `xltransfer train` in this process: (exit code, stderr)."""
  argv = ["train"]
  if base:
    argv += ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
             f"--gin_file={os.path.join(FIXTURES, 'tiny_test.gin')}"]
  if model_dir is not None:
    argv.append(f"--gin.MODEL_DIR='{model_dir}'")
  code = cli.main(argv + list(extra))
  return code, capsys.readouterr().err


def test_missing_required_macro(capsys, tmp_path):
  code, err = _train(capsys, None, "--gin.TRAIN_STEPS=3")
  assert code == 2
  assert "required macro MODEL_DIR is not set" in err
  assert os.path.join("gin", "runs", "finetune.gin") in err


def test_mistyped_macro_is_named_with_a_suggestion(capsys, tmp_path):
  code, err = _train(capsys, tmp_path, "--gin.TRAIN_STEP=3")
  assert code == 2
  assert "required macro TRAIN_STEPS is not set" in err
  assert "TRAIN_STEP is set but used by nothing" in err
  code, err = _train(capsys, tmp_path, "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIODS=3")
  assert code == 2
  assert "macro defined but used by nothing" in err and "EVAL_PERIODS" in err
  assert "did you mean EVAL_PERIOD" in err


def test_mistyped_configurable_names_the_file(capsys, tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("xltransfer.train.train.log_period = 3\nxltransfer.train.trian.log_period = 3\n")
  code, err = _train(capsys, tmp_path, "--gin.TRAIN_STEPS=3", f"--gin_file={bad}")
  assert code == 2
  assert "No configurable matching 'xltransfer.train.trian'" in err
  assert f'In file "{bad}", line 2' in err


def test_unknown_task_name(capsys, tmp_path):
  code, err = _train(capsys, tmp_path, "--gin.TRAIN_STEPS=3",
                     "--gin.MIXTURE_OR_TASK_NAME='xlt_test_cpoy'")
  assert code == 2
  assert "MIXTURE_OR_TASK_NAME 'xlt_test_cpoy' is not a registered seqio task" in err
  assert "did you mean xlt_test_copy" in err


def test_nonexistent_initial_checkpoint(capsys, tmp_path):
  missing = tmp_path / "no_such_checkpoint"
  code, err = _train(capsys, tmp_path / "run", "--gin.TRAIN_STEPS=3",
                     f"--gin.INITIAL_CHECKPOINT_PATH='{missing}'")
  assert code == 2
  assert f"INITIAL_CHECKPOINT_PATH {missing}: no such file or directory" in err


def _write_checkpoint(model_dir, identity):
  """A genuine trainer checkpoint (small arrays) carrying the given run identity."""
  manager = checkpointing.CheckpointManager(str(model_dir), period=1, async_save=False)
  state = TrainState(step=jnp.int32(4), params={"w": jnp.ones((2, 2))},
                     opt_state={"v": jnp.zeros((2,))})
  manager.save(state, input_position=4, identity=identity, force=True)
  manager.wait_until_finished()
  manager.close()


@pytest.mark.parametrize("changed", ["model_config", "initial_checkpoint_path"])
def test_model_dir_from_another_run_is_refused(capsys, tmp_path, changed):
  model_dir = tmp_path / "run"
  config = get_config("tiny")
  other_initial = None
  if changed == "model_config":
    config = dataclasses.replace(config, num_encoder_layers=3)
  else:
    other_initial = str(tmp_path / "some_other_checkpoint")
  _write_checkpoint(model_dir, checkpointing.run_identity(config, "xlt_test_copy",
                                                          other_initial))
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=8")
  assert code == 2
  if changed == "model_config":
    assert f"MODEL_DIR {model_dir} holds a checkpoint (step 4) from a different run" in err
    assert "model_config.num_encoder_layers: checkpoint has 3, this run has 2" in err
  else:
    assert f"MODEL_DIR {model_dir} holds a checkpoint (step 4) of a run with other settings" in err
    assert f"initial_checkpoint_path: '{other_initial}' -> None" in err
  # This identity was written without the trajectory settings (as before they were recorded):
  # only the keys both record were compared, and the log says so.
  assert "records fewer settings than this version checks" in err


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
  # A learning rate of 1e30 makes the first update blow the parameters up; step 2's loss is
  # computed from them and overflows.
  code, err = _train(capsys, tmp_path, "--gin.TRAIN_STEPS=6", "--gin.LEARNING_RATE=1e30",
                     "--gin.xltransfer.train.CheckpointManager.period=1")
  assert code == 2
  assert "non-finite (NaN/inf) at step 2" in err
  assert f"the last verified checkpoint is {tmp_path}/checkpoint_1" in err
  checkpoints = sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint_"))
  assert checkpoints == ["checkpoint_1"]
  # The run wrote its configs before training: the operative one has every value used.
  operative = (tmp_path / "operative_config.gin").read_text()
  assert (tmp_path / "operative_config-0.gin").read_text() == operative  # this segment's
  assert not (tmp_path / ".xltransfer.lock").exists()  # released on the error path too
  assert "TRAIN_STEPS = 6" in operative and "train.total_steps = %TRAIN_STEPS" in operative
  assert "mt5_config.size = 'tiny'" in operative
  assert "LEARNING_RATE = 1e+30" in operative
  assert "Adafactor.decay_rate = 0.8" in operative
  assert "MIXTURE_OR_TASK_NAME = 'xlt_test_copy'" in (tmp_path / "config.gin").read_text()


@pytest.mark.slow
def test_bad_value_fails_without_traceback(capsys, tmp_path):
  code, err = _train(capsys, tmp_path, "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=0")
  assert code == 2
  assert "xltransfer train: error: BATCH_SIZE must be a positive integer, got 0" in err
  assert "Traceback" not in err
  assert "Path not found" not in err  # gin's include probing is not shown as an error


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xl", "xxl"])
@pytest.mark.parametrize("run_file", ["finetune", "pretrain"])
def test_shipped_gin_files_parse(size, run_file):
  from xltransfer import gin_utils  # pylint: disable=import-outside-toplevel
  from xltransfer.commands import train as train_command  # pylint: disable=import-outside-toplevel
  gin_utils.import_modules(*train_command._registration_modules())  # pylint: disable=protected-access
  bindings = ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'xlt_test_copy'",
              "TRAIN_STEPS = 10"]
  if run_file == "finetune":
    bindings.append("INITIAL_CHECKPOINT_PATH = '/ckpt'")
  gin_utils.parse_config([f"models/mt5_{size}.gin", f"runs/{run_file}.gin"], bindings, [])
  assert gin.query_parameter("xltransfer.model.mt5_config.size") == size
  schedule = gin.query_parameter("xltransfer.train.learning_rate_schedule.name")
  assert schedule == ("constant" if run_file == "finetune" else "rsqrt_decay")
  assert gin.query_parameter("%DROPOUT_RATE") == (0.1 if run_file == "finetune" else 0.0)


def test_eval_run_mode_scores_a_checkpoint(capsys, tmp_path):
  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  config = get_config("tiny")
  checkpoint = str(tmp_path / "ckpt")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, checkpoint)
  code = cli.main(["train", "--run_mode=eval", "--gin_file=models/mt5_tiny.gin",
                   "--gin_file=runs/eval.gin", "--gin.BATCH_SIZE=8",
                   f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                   "--gin.MIXTURE_OR_TASK_NAME='xlt_test_copy'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"])
  assert code == 0, capsys.readouterr().err
  with open(tmp_path / "eval" / "eval_metrics.json") as f:
    metrics = json.load(f)
  assert metrics["split"] == "validation" and metrics["num_examples"] == 24
  assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0


def test_check_devices_lays_out_the_mesh_and_batch_then_stops(capsys, tmp_path):
  """`--check_devices` (what `study run` asks of each stage configuration first): the
  config's mesh and BATCH_SIZE on the devices present, the run's own errors, nothing else."""
  devices = len(jax.devices())
  code = cli.main(["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
                   f"--gin_file={os.path.join(FIXTURES, 'tiny_test.gin')}",
                   f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=3",
                   "--check_devices"])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  assert (f"xltransfer train --check_devices: mesh {{'data': {devices}, 'model': 1}} over "
          f"{devices} cpu devices in 1 process(es); batch 8, this host's rows 0:8"
          in captured.out)
  assert not os.path.exists(tmp_path / "run")  # nothing written, no step run
  gin.clear_config()
  code, err = _train(capsys, tmp_path / "run", "--gin.TRAIN_STEPS=3", "--check_devices",
                     f"--gin.xltransfer.partitioning.create_mesh.model={devices + 1}")
  assert code == 2
  assert f"{devices} devices cannot be split into mesh axes" in err
  assert not os.path.exists(tmp_path / "run")


def test_eval_check_devices_lays_out_the_mesh_then_stops(capsys, tmp_path):
  argv = ["eval", "--gin_file=models/mt5_tiny.gin", "--gin_file=eval/zeroshot.gin",
          f"--checkpoint={tmp_path / 'no_checkpoint_needed'}", f"--output_dir={tmp_path / 'out'}",
          "--tasks=xlt_xnli_zeroshot", "--check_devices"]
  assert cli.main(argv + ["--gin.BATCH_SIZE=16"]) == 0
  out = capsys.readouterr().out
  assert "xltransfer eval --check_devices: mesh {'data': " in out
  assert "batch 16, this host's rows 0:16" in out
  assert not os.path.exists(tmp_path / "out")
  gin.clear_config()
  assert cli.main(argv + ["--gin.xltransfer.partitioning.create_mesh.model=0"]) == 2
  err = capsys.readouterr().err
  assert "mesh axis sizes must be positive integers or -1" in err
  assert "xltransfer.partitioning.create_mesh got {'model': 0}" in err
  assert "Traceback" not in err
