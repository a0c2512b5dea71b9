"""Interrupted runs: kill -9 then resume reproduces an uninterrupted run; SIGTERM checkpoints."""
import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import train_cli_helpers as helpers  # the fixture directory is importable (conftest.py)

BATCH_SIZE = 8
# Unpacked batches take exactly BATCH_SIZE examples each, so the stalling source can stop the
# run right after a known step.
STALLING_TASK = ("--gin.MIXTURE_OR_TASK_NAME='xlt_test_copy_stalling'",
                 "--gin.train/xltransfer.train.DatasetConfig.pack=False")


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run exited early ({proc.returncode}):\n{proc.stderr.read()[-4000:]}")
    time.sleep(0.2)
  proc.kill()
  raise AssertionError("timed out waiting for the run")


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path):
  straight_dir, interrupted_dir = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  straight = subprocess.Popen(
      helpers.train_command(straight_dir, "--gin.TRAIN_STEPS=10", *STALLING_TASK),
      env=helpers.train_env(1), cwd=helpers.REPO_ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  # Same run, but the input stalls after the examples of 5 steps: kill it once step 5's
  # checkpoint is complete (orbax renames the step directory into place when it is).
  interrupted = subprocess.Popen(
      helpers.train_command(interrupted_dir, "--gin.TRAIN_STEPS=10", *STALLING_TASK),
      env=helpers.train_env(1, XLT_TEST_STALL_AFTER=5 * BATCH_SIZE), cwd=helpers.REPO_ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: os.path.isdir(os.path.join(interrupted_dir, "checkpoint_5")), interrupted)
  assert interrupted.poll() is None
  interrupted.send_signal(signal.SIGKILL)
  interrupted.wait(timeout=60)
  assert interrupted.returncode == -signal.SIGKILL
  assert sorted(d for d in os.listdir(interrupted_dir) if d.startswith("checkpoint_")) == [
      "checkpoint_5"]
  assert straight.wait(timeout=400) == 0, straight.stderr.read()[-4000:]

  resumed = helpers.run_train(interrupted_dir, "--gin.TRAIN_STEPS=10", *STALLING_TASK)
  assert f"resuming from MODEL_DIR's latest checkpoint {interrupted_dir}/checkpoint_5" in (
      resumed.stderr)
  assert "skipping 5 batches" in resumed.stderr

  final_straight = helpers.load_params(os.path.join(straight_dir, "checkpoint_10"))
  final_resumed = helpers.load_params(os.path.join(interrupted_dir, "checkpoint_10"))
  for a, b in zip(jax.tree.leaves(final_straight), jax.tree.leaves(final_resumed)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  # The same batches, in the same order: 1-5 before the kill, 6-10 after the resume.
  seen = lambda d: [(r["step"], r["digest"]) for r in helpers.read_jsonl(
      os.path.join(d, "input_digests-0.jsonl"))]
  assert seen(interrupted_dir) == seen(straight_dir)
  assert [s for s, _ in seen(straight_dir)] == list(range(1, 11))
  assert len({d for _, d in seen(straight_dir)}) == 10


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_at_the_current_step(tmp_path):
  model_dir = str(tmp_path / "run")
  proc = subprocess.Popen(
      helpers.train_command(model_dir, "--gin.TRAIN_STEPS=100000",
                            "--gin.xltransfer.train.CheckpointManager.period=100000"),
      env=helpers.train_env(1), cwd=helpers.REPO_ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(model_dir, "train_metrics.jsonl")
  _wait_for(lambda: os.path.exists(metrics) and len(helpers.read_jsonl(metrics)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-4000:]
  logged = [line for line in err.splitlines() if "preempted: checkpoint written at step" in line]
  assert logged, err[-4000:]
  step = int(logged[0].split("at step ")[1].split()[0])
  assert 3 <= step < 100000
  step_dir = os.path.join(model_dir, f"checkpoint_{step}")
  with open(os.path.join(step_dir, "progress", "metadata")) as f:
    assert json.load(f)["step"] == step
  params = helpers.load_params(step_dir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  steps_logged = [r["step"] for r in helpers.read_jsonl(metrics) if "loss" in r]
  assert max(steps_logged) == step
