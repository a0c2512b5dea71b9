"""SIGTERM (preemption) as a flag that the training loop checks between steps.

`xltransfer train` installs the handler first thing (`install()`, before jax, the data or any
checkpoint is touched), so a SIGTERM during start-up is remembered instead of killing the
process: the run then stops before its first step with "nothing to save" and exits 0. The
handler only sets a flag; Python runs it when the main thread next executes Python code, so
a process blocked inside a C++ call (a stuck input pipeline) notices it only when that returns.

In a multi-process run, `jax.distributed.initialize` starts jax's preemption service, whose
notifier installs its own SIGTERM handler in place of this one: from then on a SIGTERM reaches
the service, not this flag, and the training loop asks the service instead
(`multihost_utils.reached_preemption_sync_point`, in `run.py`), which makes every process stop
at the same step. This flag still covers SIGTERMs that arrive before that.
"""
import logging
import signal
import threading


class TerminationRequest:
  """Turns SIGTERM into `requested`; a context manager restores the previous handler."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._installed = False

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: the run will stop at the next safe point (after the "
                    "current step, with a checkpoint; before the first step, with nothing to "
                    "save)", signum)
    self.requested = True

  def install(self) -> bool:
    """Installs the handler (main thread only); False if it was installed already or cannot be."""
    if self._installed or threading.current_thread() is not threading.main_thread():
      return False
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._installed = True
    return True

  def uninstall(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                    else signal.SIG_DFL)
      self._installed = False
      self._previous = None
      self.requested = False  # a later run in this process starts afresh


# The process's one request: the train command installs it early, `run.train` reuses it.
REQUEST = TerminationRequest()


def install() -> bool:
  return REQUEST.install()


def requested() -> bool:
  return REQUEST.requested
