"""One writer per output directory: a lock file naming its holder (host, pid, start time).

    with DirectoryLock(model_dir, "training run"):
      ...  # nothing else writes into model_dir meanwhile

The lock is `<dir>/.xltransfer.lock`, created with O_CREAT | O_EXCL (atomic on local disks and
NFSv3+), so of two processes that start together exactly one gets it; the other is refused
with a `DirectoryLockedError` that names the holder. A lock whose holder is dead - same host,
and that pid no longer runs or now belongs to a process started later (pid reuse) or the
machine has rebooted since - is stale: it is taken over with a log line. A lock held from
another host cannot be checked from here; the message says how to remove it by hand. The lock
is released when the `with` block ends, including on exceptions and on the SIGTERM path
(callers turn SIGTERM into a clean return); after kill -9 it is left behind and the next run
takes it over as stale.

gs:// and other remote object stores have no exclusive create, so on them no lock is taken
and a log line says so (one writer per directory is then the user's responsibility).
"""
import json
import logging
import os
import socket
import time
from typing import Any, Dict, Optional

from xltransfer.errors import UserError

LOCK_NAME = ".xltransfer.lock"


class DirectoryLockedError(UserError):
  """Another live process holds the directory's lock."""


def _boot_id() -> Optional[str]:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _process_start_ticks(pid: int) -> Optional[int]:
  """Start time of `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22; the command name (field 2) may contain spaces, so count after its ')'.
  fields = stat.rsplit(")", 1)[-1].split()
  try:
    return int(fields[19])
  except (IndexError, ValueError):
    return None


def pid_alive(pid: int) -> bool:
  """Whether process `pid` on this host is running (a zombie nobody reaped counts as gone)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it exists, owned by someone else
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def _is_remote(path: str) -> bool:
  return "://" in path


class DirectoryLock:
  """An exclusive, holder-describing lock on a directory; see the module docstring."""

  def __init__(self, directory: str, purpose: str):
    self.directory = directory if _is_remote(directory) else os.path.abspath(directory)
    self.purpose = purpose  # "training run", "evaluation", "study": for the messages
    self.path = os.path.join(self.directory, LOCK_NAME)
    self._held: Optional[Dict[str, Any]] = None

  def _describe_self(self) -> Dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "process_start_ticks": _process_start_ticks(os.getpid()), "boot_id": _boot_id(),
            "purpose": self.purpose}

  def _read(self) -> Optional[Dict[str, Any]]:
    """The holder recorded in the lock file; None when the file is gone; {} when unreadable."""
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return None
    try:
      holder = json.loads(text)
    except ValueError:
      return {}
    return holder if isinstance(holder, dict) else {}

  @staticmethod
  def _why_stale(holder: Dict[str, Any]) -> Optional[str]:
    """Why the holder is certainly dead, or None when it may be alive (or we cannot tell)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
      return None
    pid = holder["pid"]
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
      return "the machine has restarted since"
    if not pid_alive(pid):
      return f"process {pid} is no longer running"
    recorded, now = holder.get("process_start_ticks"), _process_start_ticks(pid)
    if recorded is not None and now is not None and recorded != now:
      return f"pid {pid} now belongs to another process"
    return None

  @staticmethod
  def describe(holder: Dict[str, Any]) -> str:
    return (f"{holder.get('purpose', 'a process')} pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, started {holder.get('start_time', '?')}")

  def _take_over(self, holder: Dict[str, Any]) -> bool:
    """Moves a stale lock out of the way; False if another process changed it meanwhile."""
    aside = f"{self.path}.stale.{os.getpid()}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False  # another process took it over first; retry the exclusive create
    if self._read_file(aside) != holder:
      # Between our read and the rename another process replaced the stale lock with its own:
      # put that one back unless yet another lock exists (link never overwrites).
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      os.unlink(aside)
      return False
    os.unlink(aside)
    return True

  @staticmethod
  def _read_file(path: str) -> Optional[Dict[str, Any]]:
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def acquire(self) -> "DirectoryLock":
    if _is_remote(self.directory):
      logging.info("%s is not on a local or network file system: no lock is taken there; make "
                   "sure only one %s writes into it", self.directory, self.purpose)
      return self
    os.makedirs(self.directory, exist_ok=True)
    me = self._describe_self()
    for _ in range(10):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:
          continue  # released between our create and read
        if not holder:
          raise DirectoryLockedError(
              f"{self.directory} is locked ({self.path} exists but is unreadable). If no other "
              f"process writes into this directory, delete {self.path} and rerun.") from None
        why = self._why_stale(holder)
        if why is None:
          raise DirectoryLockedError(
              f"{self.directory} is in use by {self.describe(holder)} (lock file {self.path}); "
              f"two writers would corrupt its outputs. Wait for it to finish or stop it, or use "
              f"another directory. If that process is gone (e.g. its host was lost), delete "
              f"{self.path} and rerun.") from None
        if self._take_over(holder):
          logging.warning("taking over the stale lock of %s on %s: %s", self.describe(holder),
                          self.directory, why)
        continue
      try:
        os.write(fd, (json.dumps(me) + "\n").encode())
      finally:
        os.close(fd)
      self._held = me
      logging.info("locked %s for this %s (%s)", self.directory, self.purpose, self.path)
      return self
    raise DirectoryLockedError(f"{self.path}: could not take the lock (other processes keep "
                               "creating and removing it)")

  def release(self):
    if self._held is None:
      return
    if self._read_file(self.path) == self._held:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
    else:
      logging.warning("%s no longer holds this process's lock; leaving it in place", self.path)
    self._held = None

  def __enter__(self) -> "DirectoryLock":
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def acquire_for_all_processes(lock: Optional[DirectoryLock], directory: str) -> None:
  """Process 0 takes `lock` (None on the other processes) and every process learns whether it
  did: a refused run stops on all hosts, instead of leaving the others waiting for process 0
  at their first collective. Process 0 re-raises its own error; the others raise one saying
  that process 0 was refused."""
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except (UserError, OSError) as e:
      error = e
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if refused and error is None:
      raise DirectoryLockedError(
          f"{directory}: process 0 could not take this run's lock, so no process starts (its "
          "log says why: another run holds it, or the disk is full)")
  if error is not None:
    raise error

