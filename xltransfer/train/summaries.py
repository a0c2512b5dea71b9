"""Training metrics: TensorBoard summaries, a JSON-lines file and a readable log line.

Per-step metrics stay on the device until a log period ends, so logging never stalls the
step pipeline; then the period's steps are fetched together and reduced: losses averaged,
token/example counts summed, throughput measured on the host clock.

Each record says the steps it reduces (`first_step` .. `step`). A run that starts at step S
(a resume) first drops the records of steps after S from train_metrics.jsonl (an earlier
segment logged them before it was killed; rewritten atomically), and its first interval
starts at S+1, so no value mixes steps of two segments. The TensorBoard event files of the
earlier segments lose their events after S the same way (each file rewritten without them),
so TensorBoard shows every step once, from the segment that the checkpoints continue.

Scalars are `simple_value` events (scalar_summaries.py), which TensorBoard's dashboard and
`EventAccumulator(...).Scalars(tag)` both read. Unless `log_period` is set, a run logs
every min(100, max(1, N // 10)) steps for the N steps it trains (about ten records for a
short run). The log line's ETA uses only the time since the run's first step returned (that
step includes compiling it), so before a second step there is none ("ETA after compilation").
"""
import json
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np

from xltransfer.disk_full import reporting_disk_full
from xltransfer.errors import ConfigError
from xltransfer.train.trainer import to_host

AVERAGED = ("loss", "z_loss", "cross_ent_loss", "grad_norm")
MAX_DEFAULT_LOG_PERIOD = 100
DEFAULT_LOG_POINTS = 10


def default_log_period(steps: int) -> int:
  """The log period when none is set: about DEFAULT_LOG_POINTS records for a short run of
  `steps` steps (every step below 2 * DEFAULT_LOG_POINTS), every MAX_DEFAULT_LOG_PERIOD steps
  for a long one."""
  return min(MAX_DEFAULT_LOG_PERIOD, max(1, steps // DEFAULT_LOG_POINTS))


def check_log_period(log_period):
  if log_period is not None and (isinstance(log_period, bool) or
                                 not isinstance(log_period, int) or log_period <= 0):
    raise ConfigError("xltransfer.train.train.log_period must be a positive integer or None "
                      f"(the default: every min({MAX_DEFAULT_LOG_PERIOD}, max(1, N // "
                      f"{DEFAULT_LOG_POINTS})) of the N steps a run trains), got {log_period!r}")


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


def drop_records_after(path: str, step: int):
  """Removes the records of steps after `step` from a metrics JSON-lines file (a temporary
  copy renamed over it, so a crash leaves either the old or the new file)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record_step = json.loads(line).get("step")
    except ValueError:
      continue  # a line cut short by a kill in mid-write
    if isinstance(record_step, int) and record_step <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) == len(lines):
    return
  with reporting_disk_full(path):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)
  logging.info("%s: dropped %d records after step %d, the step this run resumes from", path,
               len(lines) - len(kept), step)


def drop_events_after(log_dir: str, step: int):
  """Rewrites the TensorBoard event files in `log_dir` without their summaries of steps after
  `step` (each file via a temporary copy renamed over it); a record cut short by a kill ends
  the file's readable part."""
  # Here, not at the top: `xltransfer train` imports this module to parse its config, and a
  # config error should not wait seconds for TensorFlow.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for path in sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
    kept, dropped = [], 0
    try:
      for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        event = tf.compat.v1.Event.FromString(raw)
        if event.HasField("summary") and event.step > step:
          dropped += 1
        else:
          kept.append(raw)
    except tf.errors.DataLossError:
      dropped += 1  # the truncated tail
    if not dropped:
      continue
    with reporting_disk_full(path):
      with tf.io.TFRecordWriter(path + ".tmp") as writer:
        for raw in kept:
          writer.write(raw)
      os.replace(path + ".tmp", path)
    logging.info("%s: dropped %d TensorBoard events after step %d, the step this run resumes "
                 "from", path, dropped, step)


class TrainSummaries:
  """Collects per-step metrics and writes them every `log_period` steps (None: the default
  for the steps from `start_step` to `total_steps`, `default_log_period`)."""

  def __init__(self, model_dir: str, total_steps: int, start_step: int,
               log_period: Optional[int] = None):
    check_log_period(log_period)
    self.total_steps = total_steps
    self.log_period = (default_log_period(total_steps - start_step) if log_period is None
                       else log_period)
    logging.info("logging training metrics every %d steps%s", self.log_period,
                 "" if log_period is not None else
                 f" (log_period unset: min({MAX_DEFAULT_LOG_PERIOD}, max(1, N // "
                 f"{DEFAULT_LOG_POINTS})) for the N = {total_steps - start_step} steps of this "
                 "run)")
    self._is_chief = jax.process_index() == 0
    # clu's writers import TensorFlow: not at the top, which a config's parse imports.
    from xltransfer import scalar_summaries  # pylint: disable=import-outside-toplevel
    self._writer = scalar_summaries.create_writer(
        os.path.join(model_dir, "train"), just_logging=not self._is_chief, asynchronous=True)
    self._eval_writer = scalar_summaries.create_writer(
        os.path.join(model_dir, "validation"), just_logging=not self._is_chief, asynchronous=True)
    self._jsonl = os.path.join(model_dir, "train_metrics.jsonl")
    if self._is_chief:
      drop_records_after(self._jsonl, start_step)
      for name in ("train", "validation"):
        drop_events_after(os.path.join(model_dir, name), start_step)
    self._pending: List[Dict[str, jax.Array]] = []
    self._first_pending_step = start_step + 1
    self._period_start = time.time()
    # (step, time) when the run's first step returned: its compilation is over by then.
    self._compiled: Optional[Tuple[int, float]] = None

  def add(self, step: int, metrics: Dict[str, jax.Array]) -> Optional[Dict[str, float]]:
    """Records the metrics of `step` (1-based); returns the reduced ones when it logged."""
    if self._compiled is None:
      self._compiled = (step, time.time())
    self._pending.append(metrics)
    if step % self.log_period and step != self.total_steps:
      return None
    return self.flush(step)

  def flush(self, step: int) -> Optional[Dict[str, float]]:
    if not self._pending:
      return None
    fetched = to_host(self._pending)
    now = time.time()
    elapsed = max(now - self._period_start, 1e-9)
    n = len(fetched)
    tokens = float(sum(m["num_tokens"] for m in fetched))
    examples = float(sum(m["num_examples"] for m in fetched))
    correct = float(sum(m["accuracy_correct"] for m in fetched))
    reduced = {k: float(np.mean([m[k] for m in fetched])) for k in AVERAGED if k in fetched[0]}
    reduced.update({
        "accuracy": correct / max(tokens, 1.0),
        "loss_per_token": float(sum(m["loss_sum"] for m in fetched)) / max(tokens, 1.0),
        "learning_rate": float(fetched[-1]["learning_rate"]),
        "steps_per_second": n / elapsed,
        "tokens_per_second": tokens / elapsed,
        "examples_per_second": examples / elapsed,
    })
    first_step = self._first_pending_step
    self._pending = []
    self._first_pending_step = step + 1
    self._period_start = now
    if self._is_chief:
      with reporting_disk_full(os.path.join(os.path.dirname(self._jsonl), "train")):
        self._writer.write_scalars(step, reduced)
      self._append(dict(step=step, first_step=first_step, **reduced))
    logging.info("%s", self._log_line(step, reduced, now))
    return reduced

  def eta_text(self, step: int, now: float) -> str:
    """The time left after `step`, from the steps after the first one (its time is mostly
    compilation, so it would inflate the estimate many times over for a short run)."""
    if self._compiled is None or step <= self._compiled[0]:
      return "after compilation"
    compiled_step, compiled_time = self._compiled
    seconds_per_step = max(now - compiled_time, 0.0) / (step - compiled_step)
    return _format_duration((self.total_steps - step) * seconds_per_step)

  def _log_line(self, step: int, m: Dict[str, float], now: float) -> str:
    eta_text = self.eta_text(step, now)
    return (f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%) | "
            f"loss {m['loss']:.4g} ({m['loss_per_token']:.4f}/token) | acc {m['accuracy']:.3f} | "
            f"lr {m['learning_rate']:.2e} | "
            f"|g| {m.get('grad_norm', float('nan')):.3f} | {m['steps_per_second']:.2f} steps/s "
            f"{m['tokens_per_second']:.0f} tok/s {m['examples_per_second']:.1f} ex/s | "
            f"ETA {eta_text}")

  def write_eval(self, step: int, metrics: Dict[str, float]):
    if self._is_chief:
      with reporting_disk_full(os.path.join(os.path.dirname(self._jsonl), "validation")):
        self._eval_writer.write_scalars(step, metrics)
      self._append(dict(step=step, **{f"eval/{k}": v for k, v in metrics.items()}))
    logging.info("eval at step %d: %s", step,
                 " | ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))

  def _append(self, record: Dict[str, float]):
    with reporting_disk_full(self._jsonl):
      with open(self._jsonl, "a") as f:
        f.write(json.dumps(record) + "\n")

  def close(self):
    with reporting_disk_full(os.path.dirname(self._jsonl), what="TensorBoard summaries into"):
      self._writer.flush()
      self._eval_writer.flush()
      self._writer.close()
      self._eval_writer.close()
