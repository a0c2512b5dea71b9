"""Quiet library logs: a CPU command prints xltransfer's own lines, not its libraries' start-up.

TensorFlow, jaxlib and libtpu write C++ log lines straight to file descriptor 2 when they load:
TensorFlow's oneDNN and "Could not find cuda drivers" lines (once per loaded library, so
twice), the cuInit error on a machine without a GPU, and libtpu's "could not determine TPU
accelerator type" and "Source Location Trace" block on a machine without a TPU. Some of them
come before absl's logging is initialised, so no environment variable silences them
(TF_CPP_MIN_LOG_LEVEL=3 does not; checked with TensorFlow 2.21 and libtpu 0.0.42).

`quiet()`, called by the `xltransfer` entry point before anything heavy is imported:
- sets TF_CPP_MIN_LOG_LEVEL=2 (TensorFlow's and XLA's INFO and WARNING lines) and libtpu's
  TPU_MIN_LOG_LEVEL / TPU_STDERR_LOG_LEVEL=2, unless the user set them;
- lowers the absl, jax, orbax and tensorflow Python loggers to WARNING, and drops seqio's
  warning about unpacked `*_pretokenized` features (QUIET_MESSAGES);
- routes file descriptor 2 through a small forked filter process that drops the known
  start-up noise and the C++ lines below TF_CPP_MIN_LOG_LEVEL (`is_noise`; a user's
  TF_CPP_MIN_LOG_LEVEL=0 keeps the INFO lines) and passes everything else on unchanged:
  Python tracebacks, xltransfer's messages, other errors. Being a separate process, it still passes on what a
  crashing process wrote last; subprocesses inherit it.

`xltransfer -v COMMAND` or XLTRANSFER_VERBOSE=1 leaves all of this out (`verbose()`).
"""
import atexit
import logging
import os
import re
import signal
import sys
import time

VERBOSE_ENV = "XLTRANSFER_VERBOSE"
# Set only when the user has not: each keeps INFO and WARNING lines of its library quiet.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",   # TensorFlow and XLA (tsl logging)
    "TPU_MIN_LOG_LEVEL": "2",      # libtpu
    "TPU_STDERR_LOG_LEVEL": "2",   # libtpu's copy of its log on stderr
}
QUIET_LOGGERS = ("absl", "jax", "orbax", "tensorflow")
# Python warnings that say nothing about the run: seqio's, on every packed dataset, that the
# tasks' `*_pretokenized` features (kept for evaluation) are not packed.
QUIET_MESSAGES = ("Features not in `features_length` will be removed during packing",)


class _KnownMessageFilter(logging.Filter):

  def filter(self, record):
    return not str(record.msg).startswith(QUIET_MESSAGES)


# A glog/absl C++ line: severity, date, time (absl before InitializeLog: 00:00:<epoch>),
# thread, file:line].
_CPP_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
# Lines without a severity prefix, each printed by a library while it loads.
_NOISE_LINES = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(rb"^WARNING: Logging before InitGoogle\(\) is written to STDERR"),
    re.compile(rb"^Failed to find host bounds for accelerator type"),  # libtpu, no TPU
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow"),
    re.compile(rb"^=== Source Location Trace: ===\s*$"),
)
# What follows "=== Source Location Trace: ===": the C++ source locations of the error.
_SOURCE_LOCATION = re.compile(rb"^[\w./-]+\.(cc|h|cpp):\d+\s*$")
# Error lines that mean only "this machine has no GPU / no TPU".
_NOISE_ERRORS = (
    re.compile(rb"failed call to cuInit"),
    re.compile(rb"unexpected worker hostname 'WARNING: could not determine TPU worker"),
)


def verbose(environ=os.environ) -> bool:
  return environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_SEVERITIES = (b"I", b"W", b"E", b"F")


def cpp_min_log_level(environ=os.environ) -> int:
  """TF_CPP_MIN_LOG_LEVEL (0 INFO, 1 WARNING, 2 ERROR), which the filter applies to every C++
  line, those logged before absl's initialisation too (which the libraries print anyway)."""
  try:
    return int(environ.get("TF_CPP_MIN_LOG_LEVEL", QUIET_ENV["TF_CPP_MIN_LOG_LEVEL"]))
  except ValueError:
    return int(QUIET_ENV["TF_CPP_MIN_LOG_LEVEL"])


def is_noise(line: bytes, min_level: int = 2) -> bool:
  """Whether one line of stderr is library noise: start-up lines, C++ lines below `min_level`
  (by default INFO and WARNING), and the errors that only mean "no GPU" or "no TPU"."""
  match = _CPP_LINE.match(line)
  if match:
    return (_SEVERITIES.index(match.group(1)) < min(min_level, 2)
            or any(p.search(line) for p in _NOISE_ERRORS))
  return any(p.match(line) for p in _NOISE_LINES)


class NoiseFilter:
  """Drops noise lines from a byte stream; a partial line is passed on at once unless it may
  be the start of a noise line (progress bars redraw without a newline)."""

  def __init__(self, min_level: int = 2):
    self._min_level = min_level
    self._pending = b""
    self._in_trace = False

  def _keep(self, line: bytes) -> bool:
    if self._in_trace and _SOURCE_LOCATION.match(line):
      return False
    self._in_trace = line.startswith(b"=== Source Location Trace")
    return not is_noise(line, self._min_level)

  def feed(self, data: bytes) -> bytes:
    data = self._pending + data
    self._pending = b""
    out = []
    for piece in data.splitlines(keepends=True):
      if piece.endswith((b"\n", b"\r")):
        if self._keep(piece.rstrip(b"\r\n")):
          out.append(piece)
      elif self._in_trace or _may_become_noise(piece):
        self._pending = piece
      else:
        out.append(piece)
    return b"".join(out)

  def flush(self) -> bytes:
    pending, self._pending = self._pending, b""
    return pending if pending and self._keep(pending) else b""


_NOISE_STARTS = (b"WARNING: ", b"Failed to find host bounds", b"To enable the following",
                 b"=== Source Location")
_CPP_START = re.compile(rb"^[IWEF]\d*$|^[IWEF]\d{4}")


def _may_become_noise(partial: bytes) -> bool:
  """Whether a line without its end yet starts like a noise line (then it waits for the rest)."""
  if len(partial) > 65536:
    return False
  return bool(_CPP_START.match(partial)) or any(
      start.startswith(partial) or partial.startswith(start) for start in _NOISE_STARTS)


def _filter_loop(read_fd: int, write_fd: int) -> None:
  noise = NoiseFilter(cpp_min_log_level())
  while True:
    try:
      data = os.read(read_fd, 65536)
    except InterruptedError:
      continue
    out = noise.feed(data) if data else noise.flush()
    try:
      while out:
        out = out[os.write(write_fd, out):]
    except OSError:
      pass  # stderr closed: keep draining so that writers never block
    if not data:
      return


def _start_filter() -> None:
  """Replaces fd 2 with a pipe into a forked filter that writes to the original stderr."""
  sys.stdout.flush()
  sys.stderr.flush()
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:  # the filter: lives until every writer has closed the pipe
    try:
      os.close(write_fd)
      for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # the command's own exit ends the filter
      _filter_loop(read_fd, 2)
    finally:
      os._exit(0)  # pylint: disable=protected-access
  os.close(read_fd)
  original = os.dup(2)
  os.set_inheritable(original, False)
  os.dup2(write_fd, 2)
  os.close(write_fd)
  atexit.register(_stop_filter, pid, original)


def _stop_filter(pid: int, original: int, timeout_s: float = 5.0) -> None:
  """At exit: hands fd 2 back and waits for the filter to pass on the last lines (a shell's
  `2>file` is then complete when the command returns)."""
  try:
    sys.stderr.flush()
  except (OSError, ValueError):
    pass
  os.dup2(original, 2)
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:  # a subprocess still holding the pipe: do not hang
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done:
      return
    time.sleep(0.01)


def quiet(environ=os.environ) -> bool:
  """Quiets the libraries' logs unless verbose; returns whether it did. Call it before
  tensorflow, jax or libtpu are imported (env vars are read when they load)."""
  if verbose(environ):
    return False
  for name, value in QUIET_ENV.items():
    environ.setdefault(name, value)
  for name in QUIET_LOGGERS:
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET or logger.level < logging.WARNING:
      logger.setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(_KnownMessageFilter())  # seqio logs through absl
  if sys.platform != "win32" and hasattr(os, "fork"):
    _start_filter()
  return True
