"""Trustworthy runs (issue 13): one writer per MODEL_DIR, resume identity, metrics across a
resume, SIGTERM during start-up, a full disk. The tiny model, a few steps each."""
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")

import train_cli_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position
import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer import cli  # noqa: E402
from xltransfer import run_lock  # noqa: E402
from xltransfer.train import checkpointing  # noqa: E402
from xltransfer.train import summaries as summaries_lib  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_gin")


def _train(capsys, model_dir, *extra):
  """Runs `xltransfer train` on the tiny fixture in this process: (exit code, stderr)."""
  argv = ["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
          f"--gin_file={os.path.join(FIXTURES, 'tiny_test.gin')}",
          f"--gin.MODEL_DIR='{model_dir}'", *extra]
  code = cli.main(argv)
  return code, capsys.readouterr().err


def _checkpoints(model_dir):
  """Complete checkpoints (orbax writes into `checkpoint_N.orbax-checkpoint-tmp-*` first)."""
  return sorted(d for d in os.listdir(model_dir) if re.fullmatch(r"checkpoint_\d+", d))


def _exited_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# ---- the lock on its own ----

def _write_lock(directory, **holder):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, run_lock.LOCK_NAME), "w") as f:
    json.dump(holder, f)


def test_lock_refuses_a_live_holder_and_names_it(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, host=socket.gethostname(), pid=sleeper.pid,
                start_time="2026-01-01T00:00:00Z", purpose="training run")
    with pytest.raises(run_lock.DirectoryLockedError) as caught:
      run_lock.DirectoryLock(str(tmp_path), "evaluation").acquire()
    message = str(caught.value)
    assert f"in use by training run pid {sleeper.pid} on host {socket.gethostname()}" in message
    assert "started 2026-01-01T00:00:00Z" in message
    assert os.path.join(str(tmp_path), run_lock.LOCK_NAME) in message
  finally:
    sleeper.kill()
    sleeper.wait()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
  _write_lock(tmp_path, host="some-other-host", pid=_exited_pid(), start_time="t",
              purpose="study")
  with pytest.raises(run_lock.DirectoryLockedError, match="study pid .* on host some-other-host"):
    run_lock.DirectoryLock(str(tmp_path), "study").acquire()


@pytest.mark.parametrize("why", ["dead", "reused"])
def test_stale_lock_is_taken_over_with_a_log_line(tmp_path, caplog, why):
  if why == "dead":
    holder = dict(host=socket.gethostname(), pid=_exited_pid())
  else:  # our own pid, but recorded for a process that started at another time
    holder = dict(host=socket.gethostname(), pid=os.getpid(), process_start_ticks=1)
  _write_lock(tmp_path, start_time="t", purpose="training run", **holder)
  lock = run_lock.DirectoryLock(str(tmp_path), "training run")
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  assert "taking over the stale lock of training run pid" in caplog.text
  with open(lock.path) as f:
    assert json.load(f)["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(lock.path)


def test_lock_is_exclusive_within_one_host_and_released(tmp_path):
  with run_lock.DirectoryLock(str(tmp_path / "d"), "training run") as lock:
    assert os.path.exists(lock.path)
    with pytest.raises(run_lock.DirectoryLockedError, match=f"pid {os.getpid()}"):
      run_lock.DirectoryLock(str(tmp_path / "d"), "training run").acquire()
  assert not os.path.exists(lock.path)


def test_unreadable_lock_is_refused_with_the_file(tmp_path):
  (tmp_path / run_lock.LOCK_NAME).write_text("")
  with pytest.raises(run_lock.DirectoryLockedError, match="exists but is unreadable"):
    run_lock.DirectoryLock(str(tmp_path), "training run").acquire()


def test_remote_paths_take_no_lock_and_say_so(caplog):
  with caplog.at_level(logging.INFO):
    with run_lock.DirectoryLock("gs://bucket/run", "training run"):
      pass
  assert "no lock is taken there" in caplog.text


# ---- two trainers on one MODEL_DIR ----

@pytest.mark.slow
def test_second_trainer_is_refused_then_a_dead_ones_lock_is_taken_over(capsys, tmp_path):
  model_dir = str(tmp_path / "run")
  # The first trainer's input stalls before its first batch: it holds MODEL_DIR meanwhile.
  first = subprocess.Popen(
      helpers.train_command(model_dir, "--gin.TRAIN_STEPS=5",
                            "--gin.MIXTURE_OR_TASK_NAME='xlt_test_copy_stalling'",
                            "--gin.train/xltransfer.train.DatasetConfig.pack=False"),
      env=helpers.train_env(1, XLT_TEST_STALL_AFTER=1), cwd=helpers.REPO_ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lock_path = os.path.join(model_dir, run_lock.LOCK_NAME)
  try:
    deadline = time.time() + 300
    while not os.path.exists(lock_path):
      assert first.poll() is None, first.stderr.read()[-3000:]
      assert time.time() < deadline, "the first trainer never took the lock"
      time.sleep(0.2)
    code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=5")
    assert code == 2
    assert (f"{model_dir} is in use by training run pid {first.pid} on host "
            f"{socket.gethostname()}") in err
    assert "Traceback" not in err
    assert first.poll() is None  # the first one is untouched
  finally:
    first.kill()
    first.wait()
  assert os.path.exists(lock_path)  # kill -9 leaves it behind
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=5")
  assert code == 0, err[-3000:]
  assert f"taking over the stale lock of training run pid {first.pid}" in err
  assert not os.path.exists(lock_path)
  steps = [r["step"] for r in helpers.read_jsonl(os.path.join(model_dir, "train_metrics.jsonl"))]
  assert steps == [1, 2, 3, 4, 5]


# ---- resume identity ----

CHANGES = {
    "LEARNING_RATE": ("--gin.LEARNING_RATE=0.01",
                      ["learning_rate.base_learning_rate: 0.001 -> 0.01"]),
    "TASK_FEATURE_LENGTHS": ("--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 32}",
                             ["dataset.task_feature_lengths: {'inputs': 32, 'targets': 32} -> "
                              "{'inputs': 16, 'targets': 32}"]),
    "RANDOM_SEED": ("--gin.RANDOM_SEED=1", ["random_seed: 0 -> 1", "dataset.seed: 0 -> 1"]),
}


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_unless_allowed(capsys, tmp_path):
  model_dir = tmp_path / "run"
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=5")
  assert code == 0, err[-3000:]
  first_operative = (model_dir / "operative_config-0.gin").read_text()
  for name, (binding, listed) in CHANGES.items():
    code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=8", binding)
    assert code == 2, name
    assert (f"MODEL_DIR {model_dir} holds a checkpoint (step 5) of a run with other settings "
            "than this one (checkpoint -> this run)") in err
    for line in listed:
      assert line in err, (name, err[-3000:])
    assert "--gin.xltransfer.train.train.allow_changed_settings=True" in err
    assert "Traceback" not in err
    assert _checkpoints(model_dir) == ["checkpoint_5"]
    assert not (model_dir / "operative_config-5.gin").exists()

  # A deliberate change: allowed, logged, and both segments' operative configs kept.
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=8", CHANGES["LEARNING_RATE"][0],
                     "--gin.xltransfer.train.train.allow_changed_settings=True")
  assert code == 0, err[-3000:]
  assert "with changed settings, as allow_changed_settings = True asks" in err
  assert "learning_rate.base_learning_rate: 0.001 -> 0.01" in err
  assert (model_dir / "operative_config-0.gin").read_text() == first_operative
  second_operative = (model_dir / "operative_config-5.gin").read_text()
  assert "LEARNING_RATE = 0.001" in first_operative
  assert "LEARNING_RATE = 0.01" in second_operative
  assert _checkpoints(model_dir) == ["checkpoint_5", "checkpoint_8"]

  # The new settings are the run's now; TRAIN_STEPS and EVAL_PERIOD need no switch.
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=10", CHANGES["LEARNING_RATE"][0],
                     "--gin.EVAL_PERIOD=10")
  assert code == 0, err[-3000:]
  assert "changed settings" not in err
  assert _checkpoints(model_dir) == ["checkpoint_10", "checkpoint_5", "checkpoint_8"]
  assert (model_dir / "operative_config-8.gin").exists()


def test_identity_of_an_older_checkpoint_compares_the_keys_it_has(tmp_path, caplog):
  from xltransfer.model.config import get_config  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from xltransfer.train.state import TrainState  # pylint: disable=import-outside-toplevel
  old = checkpointing.run_identity(get_config("tiny"), "xlt_test_copy", None)
  manager = checkpointing.CheckpointManager(str(tmp_path), period=1, async_save=False)
  manager.save(TrainState(step=jnp.int32(3), params={"w": jnp.ones((2,))},
                          opt_state={"v": jnp.zeros((2,))}), 3, old, force=True)
  manager.wait_until_finished()
  new = checkpointing.run_identity(
      get_config("tiny"), "xlt_test_copy", None,
      settings={"random_seed": 7, "optimizer": {"decay_rate": 0.8}})
  with caplog.at_level(logging.INFO):
    assert manager.check_identity(3, new) == []
  assert "records fewer settings" in caplog.text and "optimizer, random_seed" in caplog.text
  manager.close()


# ---- metrics across a resume ----

@pytest.mark.slow
def test_metrics_after_a_resume_have_no_duplicates_and_honest_means(capsys, tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  code, err = _train(capsys, straight, "--gin.TRAIN_STEPS=10")
  assert code == 0, err[-3000:]
  per_step = helpers.train_losses(straight)
  assert sorted(per_step) == list(range(1, 11))

  # A run killed after step 7 with its last checkpoint at step 5: the same MODEL_DIR as a
  # finished 7-step run whose checkpoint_7 never completed.
  code, err = _train(capsys, resumed, "--gin.TRAIN_STEPS=7")
  assert code == 0, err[-3000:]
  shutil.rmtree(resumed / "checkpoint_7")
  os.remove(resumed / "DONE")
  assert [r["step"] for r in helpers.read_jsonl(resumed / "train_metrics.jsonl")] == list(
      range(1, 8))

  code, err = _train(capsys, resumed, "--gin.TRAIN_STEPS=10",
                     "--gin.xltransfer.train.train.log_period=3")
  assert code == 0, err[-3000:]
  assert "dropped 2 records after step 5" in err
  records = helpers.read_jsonl(resumed / "train_metrics.jsonl")
  steps = [r["step"] for r in records]
  assert steps == [1, 2, 3, 4, 5, 6, 9, 10]  # no step twice
  spans = {r["step"]: (r["first_step"], r["loss"]) for r in records}
  # After the resume the intervals restart at step 6: 6, 7-9, 10; each value is the mean of
  # the uninterrupted run's losses over exactly the steps it names.
  assert [spans[s][0] for s in (6, 9, 10)] == [6, 7, 10]
  for step, (first, loss) in spans.items():
    expected = np.mean([per_step[s] for s in range(first, step + 1)])
    assert loss == pytest.approx(expected, rel=1e-6), step
  # TensorBoard: both segments' event files together hold each step's loss once.
  assert _tensorboard_loss_steps(resumed / "train") == [1, 2, 3, 4, 5, 6, 9, 10]


def _tensorboard_loss_steps(log_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  steps = []
  files = sorted(str(p) for p in log_dir.glob("events.out.tfevents.*"))
  assert len(files) == 2  # one per segment
  for path in files:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(raw)
      steps += [event.step for value in event.summary.value if value.tag == "loss"]
  return sorted(steps)


def test_drop_records_after_rewrites_atomically(tmp_path):
  path = tmp_path / "train_metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n{"step": 3, "lo')
  summaries_lib.drop_records_after(str(path), 1)
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n'
  assert sorted(os.listdir(tmp_path)) == ["train_metrics.jsonl"]


# ---- SIGTERM during start-up ----

@pytest.mark.slow
def test_sigterm_before_the_first_step_exits_0_with_nothing_to_save(capsys, tmp_path,
                                                                   monkeypatch):
  model_dir = tmp_path / "run"
  latest_step = checkpointing.CheckpointManager.latest_step

  def signalled_during_start_up(self):
    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid start-up
    return latest_step(self)

  monkeypatch.setattr(checkpointing.CheckpointManager, "latest_step", signalled_during_start_up)
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=5")
  assert code == 0, err[-3000:]
  assert "stopping on SIGTERM at step 0, before the first step of this run: nothing to save" in err
  assert _checkpoints(model_dir) == []
  assert not os.path.exists(model_dir / "train_metrics.jsonl")
  assert not os.path.exists(model_dir / run_lock.LOCK_NAME)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored for what runs next


@pytest.mark.slow
def test_sigterm_during_start_up_of_a_real_process_exits_0(tmp_path):
  model_dir = str(tmp_path / "run")
  proc = subprocess.Popen(helpers.train_command(model_dir, "--gin.TRAIN_STEPS=5"),
                          env=helpers.train_env(1), cwd=helpers.REPO_ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  # The lock is taken after the handler is installed and before jax compiles anything.
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if "for this training run" in line:
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.stderr.read()
  proc.wait(timeout=120)
  err = "".join(lines) + rest
  assert proc.returncode == 0, err[-3000:]
  assert "nothing to save" in err
  assert not [d for d in os.listdir(model_dir) if d.startswith("checkpoint_")]


# ---- a full disk ----

ENOSPC_LINE = "xltransfer train: error: no space left on device writing"


def _error_lines(err):
  return [line for line in err.splitlines() if line.startswith("xltransfer train: error:")]


@pytest.mark.slow
def test_full_disk_while_checkpointing_is_one_line_and_keeps_earlier_checkpoints(
    capsys, tmp_path, monkeypatch):
  model_dir = tmp_path / "run"
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=5")
  assert code == 0, err[-3000:]
  before = helpers.load_params(str(model_dir / "checkpoint_5"))

  def full_disk(self, step, *args, **kwargs):
    del self, args, kwargs
    raise OSError(errno.ENOSPC, "No space left on device",
                  str(model_dir / f"checkpoint_{step}" / "params"))

  # The fault is injected beneath xltransfer: in orbax's own save.
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full_disk)
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=10")
  assert code == 2
  lines = _error_lines(err)
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  assert lines[0].startswith(f"{ENOSPC_LINE} the checkpoint {model_dir}/checkpoint_10 (about ")
  assert "needed); free space there" in lines[0]
  assert _checkpoints(model_dir) == ["checkpoint_5"]
  after = helpers.load_params(str(model_dir / "checkpoint_5"))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert np.array_equal(a, b)
  assert not os.path.exists(model_dir / run_lock.LOCK_NAME)


@pytest.mark.slow
def test_full_disk_while_logging_metrics_names_the_file(capsys, tmp_path, monkeypatch):
  model_dir = tmp_path / "run"
  metrics = str(model_dir / "train_metrics.jsonl")

  def open_on_a_full_disk(path, mode="r", *args, **kwargs):
    if str(path) == metrics and "a" in mode:
      raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return open(path, mode, *args, **kwargs)

  monkeypatch.setattr(summaries_lib, "open", open_on_a_full_disk, raising=False)
  code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=3")
  assert code == 2
  assert _error_lines(err) == [f"{ENOSPC_LINE} {metrics}; free space there (or point the run "
                               "at another disk) and rerun"], err[-3000:]


def _readlink(path):
  try:
    return os.readlink(path)
  except OSError:
    return ""


def _mount_tmpfs(path, size):
  os.makedirs(path)
  try:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {e}; the "
                "fault-injecting tests above cover the same paths")


@pytest.mark.slow
def test_full_tmpfs_model_dir_is_one_line_exit_2(capsys, tmp_path):
  model_dir = tmp_path / "small_disk"
  # Room for the configs and metrics, not for the tiny model's 1.6 MB checkpoint.
  _mount_tmpfs(model_dir, "400k")
  try:
    code, err = _train(capsys, model_dir, "--gin.TRAIN_STEPS=5")
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    # orbax writes asynchronously: the failure surfaces when the run waits for the write.
    assert lines[0].startswith(f"{ENOSPC_LINE} the checkpoint {model_dir}/checkpoint_5 (about ")
    assert _checkpoints(model_dir) == []
    # Nothing of the run keeps a file open on the full disk (the TensorBoard writers closed).
    assert not [fd for fd in os.listdir("/proc/self/fd")
                if str(model_dir) in _readlink(f"/proc/self/fd/{fd}")]
  finally:
    if subprocess.run(["umount", str(model_dir)], check=False).returncode:
      subprocess.run(["umount", "-l", str(model_dir)], check=False)  # never leave it mounted


# ---- the eval output dir ----

def test_eval_into_a_dir_another_eval_holds_is_refused(tmp_path):
  from xltransfer.evaluation import evaluator  # pylint: disable=import-outside-toplevel
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, host=socket.gethostname(), pid=sleeper.pid, start_time="t",
                purpose="evaluation")
    # Refused before the model, the tasks or any file of the dir is touched.
    ev = evaluator.Evaluator(None, [], str(tmp_path), show_progress=False)
    with pytest.raises(run_lock.DirectoryLockedError,
                       match=f"in use by evaluation pid {sleeper.pid} on host"):
      ev.run(None, step=1, checkpoint="ckpt")
    assert sorted(os.listdir(tmp_path)) == [run_lock.LOCK_NAME]
  finally:
    sleeper.kill()
    sleeper.wait()


# ---- what the identity records ----

def test_schedule_and_mixture_settings_are_recorded_as_data():
  import optax  # pylint: disable=import-outside-toplevel
  import seqio  # pylint: disable=import-outside-toplevel
  from xltransfer.train import run  # pylint: disable=import-outside-toplevel
  from xltransfer.train.schedules import learning_rate_schedule  # pylint: disable=import-outside-toplevel
  settings = run._schedule_settings(  # pylint: disable=protected-access
      learning_rate_schedule("cosine", 0.1, warmup_steps=5, decay_steps=10))
  assert settings == {"function": "learning_rate_schedule.<locals>.schedule", "name": "cosine",
                      "base_learning_rate": 0.1, "warmup_steps": 5, "decay_steps": 10,
                      "min_learning_rate": 0.0, "step_offset": 0}
  assert run._schedule_settings(optax.constant_schedule(0.5))["value"] == 0.5  # pylint: disable=protected-access
  name = "run_safety_test_mixture"  # removed again: other tests list the registry
  seqio.MixtureRegistry.add(name, [("xlt_test_copy", 1.0), ("xlt_test_copy_stalling", 3.0)])
  try:
    assert run._mixture_rates(name) == {"xlt_test_copy": 1.0, "xlt_test_copy_stalling": 3.0}  # pylint: disable=protected-access
  finally:
    seqio.MixtureRegistry.remove(name)
  assert run._mixture_rates("xlt_test_copy") is None  # pylint: disable=protected-access


def test_changed_mixture_rates_are_refused_and_allowed_with_the_switch(tmp_path):
  from xltransfer.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  from xltransfer.model.config import get_config  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from xltransfer.train.state import TrainState  # pylint: disable=import-outside-toplevel

  def identity(rates):
    return checkpointing.run_identity(get_config("tiny"), "mix", None,
                                      settings={"mixture_rates": rates})

  manager = checkpointing.CheckpointManager(str(tmp_path), period=1, async_save=False)
  manager.save(TrainState(step=jnp.int32(2), params={"w": jnp.ones((2,))},
                          opt_state={"v": jnp.zeros((2,))}), 2, identity({"a": 1.0, "b": 1.0}),
               force=True)
  manager.wait_until_finished()
  with pytest.raises(CheckpointError,
                     match=r"mixture_rates: \{'a': 1.0, 'b': 1.0\} -> \{'a': 1.0, 'b': 2.0\}"):
    manager.check_identity(2, identity({"a": 1.0, "b": 2.0}))
  assert manager.check_identity(2, identity({"a": 1.0, "b": 2.0}), allow_changes=True) == [
      "mixture_rates: {'a': 1.0, 'b': 1.0} -> {'a': 1.0, 'b': 2.0}"]
  manager.close()


def test_disk_full_translation_keeps_other_errors_and_user_errors():
  from xltransfer import disk_full  # pylint: disable=import-outside-toplevel
  from xltransfer.errors import UserError  # pylint: disable=import-outside-toplevel
  with pytest.raises(disk_full.DiskFullError, match=r"writing x/y \(about 2.0 KiB needed\)"):
    with disk_full.reporting_disk_full("x/y", 2048):
      try:
        raise OSError(errno.ENOSPC, "No space left on device")
      except OSError as e:  # wrapped, as orbax and TensorStore do
        raise ValueError("RESOURCE_EXHAUSTED: Failed writing") from e
  # Another module's own full-disk error keeps its path (not re-labelled as x/y).
  with pytest.raises(UserError, match="^no space left on device writing eval/z.jsonl$"):
    with disk_full.reporting_disk_full("x/y"):
      raise UserError("no space left on device writing eval/z.jsonl")
  with pytest.raises(OSError, match="Permission denied"):
    with disk_full.reporting_disk_full("x/y"):
      raise OSError(errno.EACCES, "Permission denied")
