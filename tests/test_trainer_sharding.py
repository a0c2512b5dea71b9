"""Sharded training gives the same numbers: 1 device vs a 2x2 data x model mesh vs two hosts.

Each run is `python -m xltransfer train` in a subprocess with fake CPU devices
(`--xla_force_host_platform_device_count`); the two-host run uses jax.distributed on
localhost with gloo collectives.
"""
import json
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest


import train_cli_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position

STEPS = 5
MESH_2X2 = "--gin.xltransfer.partitioning.create_mesh.model=2"
HOST_SLICE = "--gin.train/xltransfer.train.DatasetConfig.sharding='host_slice'"


def _start(model_dir, *extra, num_devices=1):
  return subprocess.Popen(helpers.train_command(model_dir, *extra),
                          env=helpers.train_env(num_devices), cwd=helpers.REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=400):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-6000:]
  return err


def _start_pair(model_dir, steps):
  port = helpers.free_port()
  return [_start(model_dir, f"--gin.TRAIN_STEPS={steps}", MESH_2X2, HOST_SLICE,
                 f"--coordinator_address=localhost:{port}", "--num_processes=2",
                 f"--process_id={i}", num_devices=2) for i in range(2)]


def _assert_params_close(dir_a, dir_b, step):
  a = helpers.load_params(os.path.join(dir_a, f"checkpoint_{step}"))
  b = helpers.load_params(os.path.join(dir_b, f"checkpoint_{step}"))
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def _assert_losses_close(dir_a, dir_b):
  losses_a, losses_b = helpers.train_losses(dir_a), helpers.train_losses(dir_b)
  assert sorted(losses_a) == sorted(losses_b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([losses_b[s] for s in sorted(losses_a)],
                             [losses_a[s] for s in sorted(losses_a)], rtol=1e-5)


@pytest.mark.slow
def test_one_device_2x2_mesh_and_two_hosts_agree(tmp_path):
  """One test (not a shared fixture) so that pytest-xdist never runs the references twice."""
  one_dir, four_dir, pair_dir = (str(tmp_path / name) for name in ("one", "four", "pair"))
  # All four processes at once: 1 device, 4 devices as 2x2, and two hosts of 2 devices.
  procs = [_start(one_dir, f"--gin.TRAIN_STEPS={STEPS}"),
           _start(four_dir, f"--gin.TRAIN_STEPS={STEPS}", MESH_2X2, num_devices=4)]
  procs += _start_pair(pair_dir, STEPS)
  logs = [_finish(p) for p in procs]
  assert "mesh {'data': 1, 'model': 1} over 1 devices" in logs[0]
  assert "mesh {'data': 2, 'model': 2} over 4 devices in 1 process(es)" in logs[1]
  assert all("mesh {'data': 2, 'model': 2} over 4 devices in 2 process(es)" in log
             for log in logs[2:])

  # Sharding equivalence: 1 device == 2x2 data x model mesh, losses and parameters.
  _assert_losses_close(one_dir, four_dir)
  _assert_params_close(one_dir, four_dir, STEPS)
  losses = helpers.train_losses(one_dir)
  assert abs(losses[STEPS] - losses[1]) > 1e-3  # training moved, so equality is not trivial

  # Two hosts == one host with the same mesh; each host read its own half of every batch.
  _assert_losses_close(four_dir, pair_dir)
  _assert_params_close(four_dir, pair_dir, STEPS)
  digests = [helpers.read_jsonl(os.path.join(pair_dir, f"input_digests-{i}.jsonl"))
             for i in range(2)]
  assert [d["step"] for d in digests[0]] == list(range(1, STEPS + 1))
  assert all(a["digest"] != b["digest"] for a, b in zip(*digests))

  # The pair resumes from its own checkpoint.
  logs = [_finish(p) for p in _start_pair(pair_dir, STEPS + 2)]
  for log in logs:
    assert f"resuming from MODEL_DIR's latest checkpoint {pair_dir}/checkpoint_{STEPS}" in log
  assert os.path.isdir(os.path.join(pair_dir, f"checkpoint_{STEPS + 2}"))
  resumed = helpers.read_jsonl(os.path.join(pair_dir, "input_digests-0.jsonl"))
  assert [d["step"] for d in resumed] == list(range(1, STEPS + 3))

  # A lock held by another live writer: process 0 is refused and tells process 1, so both
  # stop with an error (before, process 1 waited for process 0 at its first collective).
  from xltransfer import run_lock  # pylint: disable=import-outside-toplevel
  with run_lock.DirectoryLock(pair_dir, "test holding the run"):
    procs = _start_pair(pair_dir, STEPS + 4)
    outcomes = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [2, 2], [err[-3000:] for _, err in outcomes]
  assert "is in use by" in outcomes[0][1]
  assert "process 0 could not take this run's lock" in outcomes[1][1]
  assert not os.path.isdir(os.path.join(pair_dir, f"checkpoint_{STEPS + 4}"))


def _preempted_step(log):
  found = re.findall(r"preempted: checkpoint written at step (\d+)", log)
  assert len(found) == 1, log[-4000:]
  return int(found[0])


def _pair_sigterm_to_process_1(tmp_path, ready, **env):
  """Runs a pair towards 100000 steps, sends SIGTERM to process 1 once `ready(pair_dir,
  stderr paths)`; returns ([stderr], pair_dir) once both exited 0."""
  pair_dir = str(tmp_path / "pair")
  port = helpers.free_port()
  err_paths = [str(tmp_path / f"stderr-{i}.log") for i in range(2)]
  procs = []
  try:
    for i in range(2):
      with open(err_paths[i], "w") as err:  # a file: a long run would fill a pipe
        procs.append(subprocess.Popen(helpers.train_command(
            pair_dir, "--gin.TRAIN_STEPS=100000",
            "--gin.xltransfer.train.CheckpointManager.period=100000", MESH_2X2, HOST_SLICE,
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"),
            env=helpers.train_env(2, **env), cwd=helpers.REPO_ROOT,
            stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.time() + 300
    while not ready(pair_dir, err_paths):
      if any(p.poll() is not None for p in procs):
        tails = []
        for path in err_paths:
          with open(path) as f:
            tails.append(f.read()[-3000:])
        raise AssertionError(f"a process exited before the signal: {tails}")
      assert time.time() < deadline, "timed out waiting to send the signal"
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only, as one preempted host
    codes = [p.wait(timeout=300) for p in procs]  # a lost signal: the run goes on, a timeout
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  logs = []
  for path in err_paths:
    with open(path) as f:
      logs.append(f.read())
  assert codes == [0, 0], [log[-3000:] for log in logs]
  return logs, pair_dir


def _assert_both_saved_the_same_step(logs, pair_dir, service=True):
  steps = [_preempted_step(log) for log in logs]
  assert steps[0] == steps[1], steps
  assert all(("(jax preemption service): every process stops" in log) == service
             for log in logs)
  step = steps[0]
  with open(os.path.join(pair_dir, f"checkpoint_{step}", "progress", "metadata")) as f:
    assert json.load(f)["step"] == step
  for i in range(2):  # neither process trained past the step it saved
    recorded = helpers.read_jsonl(os.path.join(pair_dir, f"input_digests-{i}.jsonl"))
    assert [d["step"] for d in recorded] == list(range(1, step + 1))
  assert not os.path.exists(os.path.join(pair_dir, "DONE"))
  return step


@pytest.mark.parametrize("service", [True, False])
@pytest.mark.slow
def test_sigterm_on_one_host_stops_both_at_the_same_step_with_a_checkpoint(tmp_path, service):
  """jax's preemption service (multihost_utils.reached_preemption_sync_point) tells the other
  process: both stop at the same step and write that step's checkpoint together. With the
  service switched off, SIGTERM stays termination.py's flag, allgathered after every step."""
  def three_steps(pair_dir, _):
    digests = os.path.join(pair_dir, "input_digests-1.jsonl")
    return os.path.exists(digests) and len(helpers.read_jsonl(digests)) >= 3

  logs, pair_dir = _pair_sigterm_to_process_1(
      tmp_path, three_steps, **({} if service else {"JAX_ENABLE_PREEMPTION_SERVICE": "false"}))
  assert _assert_both_saved_the_same_step(logs, pair_dir, service) >= 3


@pytest.mark.slow
def test_sigterm_on_one_host_during_start_up_is_not_lost(tmp_path):
  """After jax.distributed.initialize, a start-up SIGTERM reaches the preemption service before
  any sync point was asked for: both processes stop at start-up with nothing to save, or, if
  the service settles later, at the same early step with a checkpoint."""
  def locked(_, err_paths):
    with open(err_paths[0]) as f:
      return "for this training run" in f.read()

  logs, pair_dir = _pair_sigterm_to_process_1(tmp_path, locked)
  stopped = ["nothing to save" in log for log in logs]
  assert stopped[0] == stopped[1], [log[-3000:] for log in logs]
  if stopped[0]:
    assert not [d for d in os.listdir(pair_dir) if d.startswith("checkpoint_")]
  else:
    _assert_both_saved_the_same_step(logs, pair_dir)
