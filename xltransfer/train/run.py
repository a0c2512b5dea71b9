"""`train()`: one training run from its gin configuration to its last checkpoint.

Start-up decides where the state comes from (MODEL_DIR's latest checkpoint, else
INITIAL_CHECKPOINT_PATH, else random) and says why. From a T5X INITIAL_CHECKPOINT_PATH the
run restores the parameters, the Adafactor state and the step, as T5X's fine-tuning does, so
TRAIN_STEPS counts the checkpoint's steps too (1,000,000 + N for N fine-tuning steps from the
released mT5); `restore_optimizer_state=False` loads only the parameters and starts a fresh
optimizer at step 0. The loop trains, logs, evaluates every `eval_period` steps, checkpoints
every `CheckpointManager.period` steps, writes a checkpoint and stops cleanly on SIGTERM, and
stops on a non-finite loss without overwriting the last checkpoint.

Run safety: one writer per MODEL_DIR (a lock, `xltransfer.run_lock`); a resume under other
settings than the checkpoint's is refused unless allowed (`trajectory_settings`); every
segment keeps its operative config; SIGTERM during start-up exits cleanly with nothing to
save; a full disk is one line naming the path (`xltransfer.disk_full`).
"""
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, Optional

import gin
import jax
import numpy as np

from xltransfer import run_lock
from xltransfer.disk_full import reporting_disk_full
from xltransfer.errors import CheckpointError, ConfigError, UserError
from xltransfer.partitioning import create_partitioner
from xltransfer.train import checkpointing
from xltransfer.train import initial_state
from xltransfer.train import input as input_lib
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train import termination as termination_lib
from xltransfer.train.summaries import TrainSummaries, check_log_period
from xltransfer.train.trainer import Trainer, to_host


class NonFiniteLossError(UserError):
  """Training produced a NaN/inf loss or gradient; the run stopped before saving it."""


def _any_process(flag: bool) -> bool:
  """True on every process if it is true on any (an allgather when there are several)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _uses_preemption_service() -> bool:
  """True in a multi-process run with jax.distributed's preemption service (on by default,
  `jax_enable_preemption_service`): its notifier took SIGTERM over at
  jax.distributed.initialize, so termination.py's flag sees only earlier signals."""
  # jax.distributed first: asking for the process count starts the backends.
  return (jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)
          and jax.process_count() > 1)


class _StopRequests:
  """Whether a SIGTERM stops the run at this safe point: the same answer on every process.

  One process: termination.py's flag. Several: jax's preemption sync point
  (`multihost_utils.reached_preemption_sync_point`): a SIGTERM on any process makes every
  process stop at the same point, without a collective per step. Its points are numbered by
  call, from 1 (not by step): a notice that arrives before the first call is assigned point 1,
  which a run resumed at step N would never reach by step number. Every process calls it at the
  same places: each start-up check and after every step. Without the service (switched off, or
  processes not joined through jax.distributed) the flag is allgathered after every step.
  """

  def __init__(self):
    self._sync_service = _uses_preemption_service()
    self._points = 0

  def at_start_up(self) -> bool:
    # A SIGTERM before jax.distributed.initialize set the flag on its own process only.
    if _any_process(termination_lib.requested()):
      return True
    return self._sync_service and self._reached_sync_point()

  def after_step(self) -> bool:
    if self._sync_service:
      return self._reached_sync_point()
    return _any_process(termination_lib.requested())

  def _reached_sync_point(self) -> bool:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    self._points += 1
    reached = multihost_utils.reached_preemption_sync_point(self._points)
    if reached:
      logging.warning("a process received SIGTERM (jax preemption service): every process "
                      "stops at this point")
    return reached


def _batch_digest(host_batch: Dict[str, np.ndarray]) -> str:
  digest = hashlib.sha1()
  for name in sorted(host_batch):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(host_batch[name]).tobytes())
  return digest.hexdigest()


def _write_config_files(model_dir: str, name: str, text: str):
  """Writes MODEL_DIR/`name` on process 0, atomically (a temporary file renamed into place)."""
  if jax.process_index() == 0:
    path = os.path.join(model_dir, name)
    with reporting_disk_full(path):
      with open(path + ".tmp", "w") as f:
        f.write(text)
      os.replace(path + ".tmp", path)


def _write_operative_config(model_dir: str, step: int):
  """Keeps the operative config of every segment of the run: `operative_config-<step>.gin`
  for the segment that starts at `step` (never overwritten: a second start at the same step
  with another config gets `-<step>.<n>.gin`), and `operative_config.gin`, the latest one."""
  text = gin.operative_config_str()
  name = f"operative_config-{step}.gin"
  existing = os.path.join(model_dir, name)
  n = 1
  while os.path.exists(existing):
    with open(existing) as f:
      if f.read() == text:
        break
    n += 1
    name = f"operative_config-{step}.{n}.gin"
    existing = os.path.join(model_dir, name)
  _write_config_files(model_dir, name, text)
  _write_config_files(model_dir, "operative_config.gin", text)


def _stop_before_first_step(stop: _StopRequests, where: str) -> bool:
  """True (all processes agree) when a SIGTERM arrived during start-up: nothing to save."""
  if not stop.at_start_up():
    return False
  logging.warning("stopping on SIGTERM %s: nothing to save (no step was trained in this run); "
                  "rerun the same command to continue", where)
  return True


def _schedule_settings(schedule: Callable) -> Dict[str, Any]:
  """The learning-rate schedule as data: its function's name and the plain values it closes
  over (the arguments of `learning_rate_schedule`, or of an optax schedule)."""
  settings: Dict[str, Any] = {
      "function": getattr(schedule, "__qualname__", type(schedule).__qualname__)}
  code, cells = getattr(schedule, "__code__", None), getattr(schedule, "__closure__", None)
  for name, cell in zip(code.co_freevars if code else (), cells or ()):
    try:
      value = cell.cell_contents
    except ValueError:  # an empty cell
      continue
    if isinstance(value, (bool, int, float, str, type(None))):
      settings[name] = value
  return settings


def _mixture_rates(name: str) -> Optional[Dict[str, float]]:
  """{task: mixing rate} of a seqio mixture; None for a task."""
  import seqio  # pylint: disable=import-outside-toplevel
  if name not in seqio.MixtureRegistry.names():
    return None
  mixture = seqio.get_mixture_or_task(name)
  return {task.name: float(mixture.get_rate(task)) for task in mixture.tasks}


def trajectory_settings(model, train_dataset: input_lib.DatasetConfig, schedule: Callable,
                        optimizer: Adafactor, num_microbatches: int, random_seed: int,
                        restore_optimizer_state: bool) -> Dict[str, Any]:
  """Everything besides the network, task and initial checkpoint that decides which steps a
  run takes; recorded with each checkpoint and compared on resume (`run_identity`)."""
  config = model.config
  return {
      "mixture_rates": _mixture_rates(train_dataset.mixture_or_task_name),
      "dataset": {k: v for k, v in vars(train_dataset).items() if k != "mixture_or_task_name"},
      "learning_rate": _schedule_settings(schedule),
      "optimizer": dataclasses.asdict(optimizer),
      "dropout_rate": getattr(config, "dropout_rate", None),
      "activation_dtype": str(getattr(config, "dtype", None)),
      "loss_normalizing_factor": getattr(model, "loss_normalizing_factor", None),
      "random_seed": random_seed,
      "num_microbatches": num_microbatches,
      "restore_optimizer_state": restore_optimizer_state,
  }


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
          num_microbatches: int = 1, log_period: Optional[int] = None, random_seed: int = 0,
          inference_evaluator: Optional[Callable] = None,
          record_input_digests: bool = False,
          restore_optimizer_state: bool = True,
          allow_changed_settings: bool = False) -> Dict[str, Any]:
  """Trains `model` on `train_dataset` for `total_steps` steps (T5X's `train.train`).

  `inference_evaluator(step=, params=, model=) -> {name: value}` is called after each
  teacher-forced evaluation (decoding-based metrics plug in here). With
  `record_input_digests` every process appends a hash of each of its batches to
  MODEL_DIR/input_digests-<process>.jsonl (to audit which data a run saw).
  `log_period`: steps per metrics record (train_metrics.jsonl, TensorBoard, the log line);
  None: min(100, max(1, N // 10)) for the N steps this run trains.
  `restore_optimizer_state` (T5X INITIAL_CHECKPOINT_PATH only, and only when MODEL_DIR has no
  checkpoint): True restores the checkpoint's Adafactor state and step with its parameters
  and the run trains from that step up to `total_steps` (which must exceed it); False loads
  its parameters only, a fresh optimizer at step 0, `total_steps` counting fine-tuning steps.

  MODEL_DIR is locked for this process (`run_lock`: a second trainer is refused). Resuming
  checks the run's identity (`checkpointing.run_identity` with `trajectory_settings`): a
  change is refused with the list of changes unless `allow_changed_settings` (then logged).
  Each segment's operative config is kept as operative_config-<start step>.gin. A SIGTERM
  before the first step stops with nothing to save; after it, with a checkpoint. A full disk
  is a one-line `DiskFullError` naming the path.
  Returns {"status": "completed" | "preempted" | "terminated" (SIGTERM before the first
  step), "step": last step, "metrics": last logged}.
  """
  if not isinstance(total_steps, int) or total_steps <= 0:
    raise ConfigError(f"TRAIN_STEPS must be a positive integer, got {total_steps!r}")
  if eval_period is not None and eval_period <= 0:
    raise ConfigError(f"EVAL_PERIOD must be positive, got {eval_period!r}")
  check_log_period(log_period)
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  # From here on a SIGTERM is a request to stop at the next safe point (termination.py), unless
  # jax's preemption service already owns SIGTERM: the flag's handler would take it away.
  installed_here = not _uses_preemption_service() and termination_lib.install()
  stop = _StopRequests()
  # One writer per MODEL_DIR; on several hosts process 0 holds it for all (the others write
  # only their checkpoint shards, which orbax coordinates).
  lock = (run_lock.DirectoryLock(model_dir, "training run") if jax.process_index() == 0
          else None)
  try:
    with reporting_disk_full(os.path.join(model_dir, run_lock.LOCK_NAME),
                             what="the MODEL_DIR lock"):
      run_lock.acquire_for_all_processes(lock, model_dir)
    os.makedirs(model_dir, exist_ok=True)
    if _stop_before_first_step(stop, "before start-up"):
      return {"status": "terminated", "step": None, "metrics": None}
    _write_config_files(model_dir, "config.gin", gin.config_str())

    # Cheap checks first, so a typo fails before anything compiles.
    input_lib._require_registered(train_dataset.mixture_or_task_name)  # pylint: disable=protected-access
    if eval_dataset is not None:
      input_lib._require_registered(eval_dataset.mixture_or_task_name)  # pylint: disable=protected-access
    # Imported here: it loads seqio and TensorFlow, which a config error need not wait for.
    from xltransfer.data import vocab_check  # pylint: disable=import-outside-toplevel
    vocab_check.check_model_vocabulary(model, train_dataset, eval_dataset, inference_evaluator,
                                       read_files=True)
    if initial_checkpoint_path and not initial_checkpoint_path.startswith("gs://") and (
        not os.path.exists(initial_checkpoint_path)):
      raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}: no such file "
                            "or directory")

    optimizer = optimizer if optimizer is not None else Adafactor()
    trainer = build_trainer(model, partitioner, learning_rate, optimizer, num_microbatches,
                            random_seed)
    manager = (checkpoint_manager or checkpointing.CheckpointManager)(model_dir)
    identity = checkpointing.run_identity(
        model.config, train_dataset.mixture_or_task_name, initial_checkpoint_path, model.kind,
        settings=trajectory_settings(model, train_dataset, trainer.optimizer.learning_rate,
                                     optimizer, num_microbatches, random_seed,
                                     restore_optimizer_state))

    latest = manager.latest_step()
    if latest is not None:
      manager.check_identity(latest, identity, allow_changed_settings)
      state, position = manager.restore(latest, trainer.abstract_state, trainer.state_shardings,
                                        train_dataset.batch_size, optimizer=trainer.optimizer)
      latest = int(to_host(state.step))  # earlier than latest_step() after a damaged one's fallback
      why = (f"; INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} is not loaded because the "
             "run already has its own checkpoint" if initial_checkpoint_path else "")
      logging.info("resuming from MODEL_DIR's latest checkpoint %s (step %d, input position "
                   "%d)%s", manager.step_dir(latest), latest, position, why)
    elif initial_checkpoint_path:
      initial = initial_state.load_initial_state(initial_checkpoint_path, model, trainer,
                                                 restore_optimizer_state, total_steps)
      state, position = initial.state, 0
      logging.info("MODEL_DIR %s has no checkpoint: starting from INITIAL_CHECKPOINT_PATH (%s): "
                   "%s; training runs from step %d to TRAIN_STEPS %d", model_dir,
                   initial.description, initial.restored, int(to_host(state.step)), total_steps)
    else:
      state, position = trainer.init_state(random_seed), 0
      logging.info("MODEL_DIR %s has no checkpoint and no INITIAL_CHECKPOINT_PATH is set: "
                   "random initialisation (seed %d)", model_dir, random_seed)
    step = int(to_host(state.step))
    _write_operative_config(model_dir, step)

    if step >= total_steps:
      logging.info("nothing to do: the run is at step %d and TRAIN_STEPS is %d", step,
                   total_steps)
      manager.close()
      _mark_done(model_dir, step)
      return {"status": "completed", "step": step, "metrics": None}
    if _stop_before_first_step(stop, f"at step {step}, before the first step of this run"):
      manager.close()
      return {"status": "terminated", "step": step, "metrics": None}
    return _train_steps(model_dir, model, trainer, manager, identity, state, position, stop,
                        total_steps=total_steps,
                        train_dataset=train_dataset, eval_dataset=eval_dataset,
                        eval_period=eval_period, eval_steps=eval_steps, log_period=log_period,
                        inference_evaluator=inference_evaluator,
                        record_input_digests=record_input_digests)
  finally:
    if lock is not None:
      lock.release()
    if installed_here:
      termination_lib.REQUEST.uninstall()


def _train_steps(model_dir: str, model, trainer: Trainer, manager, identity: Dict[str, Any],
                 state, position: int, stop: _StopRequests, total_steps: int,
                 train_dataset: input_lib.DatasetConfig,
                 eval_dataset: Optional[input_lib.DatasetConfig], eval_period: Optional[int],
                 eval_steps: Optional[int], log_period: Optional[int],
                 inference_evaluator: Optional[Callable],
                 record_input_digests: bool) -> Dict[str, Any]:
  """`train`'s loop from the start-up state to TRAIN_STEPS, a SIGTERM or a non-finite loss."""
  partitioner = trainer.partitioner
  step = int(to_host(state.step))
  state_bytes = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                    for a in jax.tree.leaves(trainer.abstract_state))

  train_input = input_lib.TrainInput(train_dataset, partitioner, position)
  # Drops records of steps after `step` (an earlier segment logged them before it was
  # killed): this run logs them again.
  summaries = TrainSummaries(model_dir, total_steps, step, log_period)
  eval_batches = None
  digests_path = os.path.join(model_dir, f"input_digests-{jax.process_index()}.jsonl")
  status, last_logged = "completed", None
  unchecked = None  # (step, metrics) whose finiteness is checked one step later
  saved_step = None  # the last checkpoint started (written asynchronously)

  def check_finite(step_and_metrics):
    checked_step, metrics = step_and_metrics
    if not bool(to_host(metrics["finite"])):
      manager.wait_until_finished()
      # "verified" only for a checkpoint this process wrote or restored with matching digests.
      kept = manager.describe_latest_checkpoint()
      raise NonFiniteLossError(
          f"loss or gradient became non-finite (NaN/inf) at step {checked_step}; training "
          f"stopped without saving that state; {kept}. Lower LEARNING_RATE, check the data, "
          "or use float32 activations.")

  try:
    with reporting_disk_full(model_dir, what="into MODEL_DIR"):
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
        preempted = stop.after_step()
        if step % manager.period == 0 or step == total_steps or preempted:
          check_finite(unchecked)
          # Orbax writes into a temporary directory and renames it when complete: a failed
          # write leaves the earlier checkpoints as they were.
          with reporting_disk_full(manager.step_dir(step), state_bytes, "the checkpoint"):
            if manager.save(state, train_input.position, identity,
                            force=preempted or step == total_steps,
                            batch_size=train_dataset.batch_size):
              saved_step = step
        if preempted:
          status = "preempted"
          break
    if unchecked is not None:
      check_finite(unchecked)
    summaries.flush(step)
  finally:
    try:
      # An asynchronous write's failure surfaces here.
      saving = manager.step_dir(saved_step) if saved_step is not None else model_dir
      with reporting_disk_full(saving, state_bytes, "the checkpoint"):
        manager.wait_until_finished()
    finally:
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
