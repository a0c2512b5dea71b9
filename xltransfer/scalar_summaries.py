"""TensorBoard scalars written as `Summary.Value.simple_value`, which every reader takes.

TF2's `tf.summary.scalar` (what clu's SummaryWriter writes) stores a scalar as a tensor
summary tagged with the `scalars` plugin. TensorBoard's dashboard reads that, but
`tensorboard.backend.event_processing.event_accumulator.EventAccumulator(...).Scalars(tag)`,
which scripts use to read event files, lists only `simple_value` scalars (the tensor form
shows up under `.Tensors()`, and `Scalars` raises KeyError). TensorBoard migrates a
`simple_value` to the `scalars` plugin when it loads it (`tensorboard.data_compat`, in both
its Python loader and its Rust data server), so this form is read by the dashboard and by
EventAccumulator alike. Values are float32 either way.
"""
from typing import Mapping

import tensorflow as tf
from clu import metric_writers


class ScalarSummaryWriter(metric_writers.SummaryWriter):
  """clu's SummaryWriter, with scalars as `simple_value` events (everything else unchanged)."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    values = []
    for key, value in scalars.items():
      try:
        if isinstance(value, (str, bytes)):
          raise TypeError(key)
        number = float(value)
      except (TypeError, ValueError):
        raise ValueError(f"TensorBoard scalar {key!r} at step {step}: {value!r} is not a "
                         "single number") from None
      values.append(tf.compat.v1.Summary.Value(tag=key, simple_value=number))
    if not values:
      return
    # `_summary_writer` is the tf.summary file writer SummaryWriter.__init__ opens on `logdir`;
    # writing through it keeps one event file per writer, gs:// included.
    with self._summary_writer.as_default():  # pylint: disable=protected-access
      tf.summary.experimental.write_raw_pb(
          tf.compat.v1.Summary(value=values).SerializeToString(), step=int(step))


def create_writer(logdir: str, *, just_logging: bool = False,
                  asynchronous: bool = True) -> metric_writers.MultiWriter:
  """Event files under `logdir` with `ScalarSummaryWriter`; `just_logging` (the processes
  other than 0) writes none.

  Unlike `clu.metric_writers.create_default_writer` there is no `LoggingWriter`: every caller
  logs the same figures in its own readable line (the trainer's progress and "eval at step"
  lines, the evaluator's per-task line), so clu's `[step] key=value` line logged each of them
  a second time wherever absl logs at INFO (`--log_level=debug`, `xltransfer eval`, tests).
  """
  writers = [] if just_logging else [ScalarSummaryWriter(logdir)]
  if asynchronous:
    return metric_writers.AsyncMultiWriter(writers)
  return metric_writers.MultiWriter(writers)
