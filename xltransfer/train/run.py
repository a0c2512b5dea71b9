"""`train()`: one training run from its gin configuration to its last checkpoint.

Start-up decides where the state comes from (MODEL_DIR's latest checkpoint, else
INITIAL_CHECKPOINT_PATH, else random) and says why. From a T5X INITIAL_CHECKPOINT_PATH the
run restores the parameters, the Adafactor state and the step, as T5X's fine-tuning does, so
TRAIN_STEPS counts the checkpoint's steps too (1,000,000 + N for N fine-tuning steps from the
released mT5); `restore_optimizer_state=False` loads only the parameters and starts a fresh
optimizer at step 0. The loop trains, logs, evaluates every `eval_period` steps, checkpoints
every `CheckpointManager.period` steps, writes a checkpoint and stops cleanly on SIGTERM, and
stops on a non-finite loss without overwriting the last good checkpoint.
"""
import hashlib
import json
import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, Optional

import gin
import jax
import numpy as np

from xltransfer.data import vocab_check
from xltransfer.errors import CheckpointError, ConfigError, UserError
from xltransfer.partitioning import create_partitioner
from xltransfer.train import checkpointing
from xltransfer.train import input as input_lib
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.summaries import TrainSummaries
from xltransfer.train.trainer import Trainer, fetch


class NonFiniteLossError(UserError):
  """Training produced a NaN/inf loss or gradient; the run stopped before saving it."""


class _TerminationRequest:
  """Turns SIGTERM (preemption) into a flag that the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint after the current step and exit", signum)
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _any_process(flag: bool) -> bool:
  """True on every process if it is true on any (all processes stop at the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _batch_digest(host_batch: Dict[str, np.ndarray]) -> str:
  digest = hashlib.sha1()
  for name in sorted(host_batch):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(host_batch[name]).tobytes())
  return digest.hexdigest()


def _write_config_files(model_dir: str, name: str, text: str):
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, name), "w") as f:
      f.write(text)


def _mark_done(model_dir: str, step: int):
  """Writes MODEL_DIR/DONE once TRAIN_STEPS is reached and its checkpoint is complete: the
  study runner and pod scripts treat a stage as finished only when this file exists."""
  _write_config_files(model_dir, "DONE", f"step {step}\n")


def build_trainer(model, partitioner=None, learning_rate: Optional[Callable] = None,
                  optimizer: Optional[Adafactor] = None, num_microbatches: int = 1,
                  random_seed: int = 0) -> Trainer:
  """The Trainer of a run from `train`'s arguments (None: the default partitioner, schedule
  and optimizer), before any data or checkpoint is touched. `xltransfer plan` compiles this
  same trainer's step, so what it measures is what `train` runs."""
  partitioner = partitioner if partitioner is not None else create_partitioner()
  logging.info("mesh %s over %d devices in %d process(es)", dict(partitioner.mesh.shape),
               partitioner.mesh.devices.size, jax.process_count())
  schedule = learning_rate if learning_rate is not None else learning_rate_schedule()
  optimizer_def = optimizer if optimizer is not None else Adafactor()
  opt = optimizer_def.create(schedule, model.abstract_params(), model.param_logical_axes())
  return Trainer(model, opt, partitioner, num_microbatches, dropout_seed=random_seed)


@gin.configurable(module="xltransfer.train")
def train(model_dir: str = gin.REQUIRED, model=gin.REQUIRED,
          train_dataset: input_lib.DatasetConfig = gin.REQUIRED,
          total_steps: int = gin.REQUIRED,
          eval_dataset: Optional[input_lib.DatasetConfig] = None,
          eval_period: Optional[int] = None, eval_steps: Optional[int] = None,
          initial_checkpoint_path: Optional[str] = None,
          learning_rate: Optional[Callable] = None, optimizer: Optional[Adafactor] = None,
          partitioner=None, checkpoint_manager: Optional[Callable] = None,
          num_microbatches: int = 1, log_period: int = 100, random_seed: int = 0,
          inference_evaluator: Optional[Callable] = None,
          record_input_digests: bool = False,
          restore_optimizer_state: bool = True) -> Dict[str, Any]:
  """Trains `model` on `train_dataset` for `total_steps` steps (T5X's `train.train`).

  `inference_evaluator(step=, params=, model=) -> {name: value}` is called after each
  teacher-forced evaluation (decoding-based metrics plug in here). With
  `record_input_digests` every process appends a hash of each of its batches to
  MODEL_DIR/input_digests-<process>.jsonl (to audit which data a run saw).
  `restore_optimizer_state` (T5X INITIAL_CHECKPOINT_PATH only, and only when MODEL_DIR has no
  checkpoint): True restores the checkpoint's Adafactor state and step with its parameters
  and the run trains from that step up to `total_steps` (which must exceed it); False loads
  its parameters only, a fresh optimizer at step 0, `total_steps` counting fine-tuning steps.
  Returns {"status": "completed" | "preempted", "step": last step, "metrics": last logged}.
  """
  if not isinstance(total_steps, int) or total_steps <= 0:
    raise ConfigError(f"TRAIN_STEPS must be a positive integer, got {total_steps!r}")
  if eval_period is not None and eval_period <= 0:
    raise ConfigError(f"EVAL_PERIOD must be positive, got {eval_period!r}")
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  os.makedirs(model_dir, exist_ok=True)
  _write_config_files(model_dir, "config.gin", gin.config_str())

  # Cheap checks first, so a typo fails before anything compiles.
  input_lib._require_registered(train_dataset.mixture_or_task_name)  # pylint: disable=protected-access
  if eval_dataset is not None:
    input_lib._require_registered(eval_dataset.mixture_or_task_name)  # pylint: disable=protected-access
  vocab_check.check_model_vocabulary(model, train_dataset, eval_dataset, inference_evaluator)
  if initial_checkpoint_path and not initial_checkpoint_path.startswith("gs://") and (
      not os.path.exists(initial_checkpoint_path)):
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}: no such file or "
                          "directory")

  trainer = build_trainer(model, partitioner, learning_rate, optimizer, num_microbatches,
                          random_seed)
  partitioner = trainer.partitioner
  manager = (checkpoint_manager or checkpointing.CheckpointManager)(model_dir)
  identity = checkpointing.run_identity(model.config, train_dataset.mixture_or_task_name,
                                        initial_checkpoint_path, model.kind)

  latest = manager.latest_step()
  if latest is not None:
    manager.check_identity(latest, identity)
    state, position = manager.restore(latest, trainer.abstract_state, trainer.state_shardings,
                                      train_dataset.batch_size, optimizer=trainer.optimizer)
    why = (f"; INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} is not loaded because the run "
           "already has its own checkpoint" if initial_checkpoint_path else "")
    logging.info("resuming from MODEL_DIR's latest checkpoint %s (step %d, input position %d)%s",
                 manager.step_dir(latest), latest, position, why)
  elif initial_checkpoint_path:
    initial = checkpointing.load_initial_state(initial_checkpoint_path, model, trainer,
                                               restore_optimizer_state, total_steps)
    state, position = initial.state, 0
    logging.info("MODEL_DIR %s has no checkpoint: starting from INITIAL_CHECKPOINT_PATH (%s): "
                 "%s; training runs from step %d to TRAIN_STEPS %d", model_dir,
                 initial.description, initial.restored, int(fetch(state.step)), total_steps)
  else:
    state, position = trainer.init_state(random_seed), 0
    logging.info("MODEL_DIR %s has no checkpoint and no INITIAL_CHECKPOINT_PATH is set: "
                 "random initialisation (seed %d)", model_dir, random_seed)
  _write_config_files(model_dir, "operative_config.gin", gin.operative_config_str())

  step = int(fetch(state.step))
  if step >= total_steps:
    logging.info("nothing to do: the run is at step %d and TRAIN_STEPS is %d", step, total_steps)
    manager.close()
    _mark_done(model_dir, step)
    return {"status": "completed", "step": step, "metrics": None}

  train_input = input_lib.TrainInput(train_dataset, partitioner, position)
  summaries = TrainSummaries(model_dir, total_steps, step, log_period)
  eval_batches = None
  digests_path = os.path.join(model_dir, f"input_digests-{jax.process_index()}.jsonl")
  status, last_logged = "completed", None
  unchecked = None  # (step, metrics) whose finiteness is checked one step later

  def check_finite(step_and_metrics):
    checked_step, metrics = step_and_metrics
    if not bool(fetch(metrics["finite"])):
      manager.wait_until_finished()
      last_good = manager.latest_step()
      kept = (f"the last good checkpoint is {manager.step_dir(last_good)}" if last_good is not None
              else "no checkpoint was written before it")
      raise NonFiniteLossError(
          f"loss or gradient became non-finite (NaN/inf) at step {checked_step}; training "
          f"stopped without saving that state; {kept}. Lower LEARNING_RATE, check the data, "
          "or use float32 activations.")

  try:
    with _TerminationRequest() as termination:
      while step < total_steps:
        batch = next(train_input)
        state, metrics = trainer.train_step(state, batch)
        step += 1
        if record_input_digests:
          with open(digests_path, "a") as f:
            f.write(json.dumps({"step": step, "position": train_input.position,
                                "digest": _batch_digest(train_input.last_host_batch)}) + "\n")
        # Checking the previous step keeps the device busy while the host waits.
        if unchecked is not None:
          check_finite(unchecked)
        unchecked = (step, metrics)
        logged = summaries.add(step, metrics)
        last_logged = logged or last_logged
        if eval_dataset is not None and eval_period and (step % eval_period == 0 or
                                                         step == total_steps):
          if eval_batches is None:
            eval_batches = input_lib.eval_host_batches(eval_dataset, partitioner, eval_steps)
          summaries.write_eval(step, trainer.evaluate(state.params, eval_batches,
                                                      eval_dataset.batch_size))
          if inference_evaluator is not None:
            summaries.write_eval(step, dict(inference_evaluator(step=step, params=state.params,
                                                                model=model)))
        preempted = _any_process(termination.requested)
        if step % manager.period == 0 or step == total_steps or preempted:
          check_finite(unchecked)
          manager.save(state, train_input.position, identity,
                       force=preempted or step == total_steps,
                       batch_size=train_dataset.batch_size)
        if preempted:
          status = "preempted"
          break
    if unchecked is not None:
      check_finite(unchecked)
    summaries.flush(step)
  finally:
    manager.wait_until_finished()
    summaries.close()
  if status == "preempted":
    logging.warning("preempted: checkpoint written at step %d in %s; rerun the same command to "
                    "resume", step, manager.step_dir(step))
  else:
    logging.info("training finished at step %d; checkpoint %s", step, manager.step_dir(step))
  manager.close()
  if status == "completed":
    _mark_done(model_dir, step)
  return {"status": status, "step": step, "metrics": last_logged}
