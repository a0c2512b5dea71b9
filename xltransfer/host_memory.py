"""Back large host allocations with transparent huge pages, by restarting the process once.

XLA:CPU allocates every step's temporaries afresh (gigabytes for mT5's 250k-vocabulary
logits and their gradients) and glibc returns them to the kernel when freed, so each step
faults the same memory in again, 4 KiB at a time: for mT5-small training on CPU that was
about 2 million page faults and a quarter of the step's time. glibc's `glibc.malloc.hugetlb=1`
tunable makes malloc ask for transparent huge pages (`madvise`), which cuts the faults ~20x.
Tunables are read only when a process starts, hence the re-exec: it happens before jax or
tensorflow are imported, keeps the PID (launchers and signal handling are unaffected), and
happens at most once (the new process sees the tunable and goes on).

Set XLTRANSFER_HUGEPAGE_MALLOC=0 to keep the system's malloc settings.
"""
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "XLTRANSFER_HUGEPAGE_MALLOC"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def tunables_with_hugepages(current: str) -> str | None:
  """GLIBC_TUNABLES with huge-page malloc added, or None when it already says something."""
  entries = [entry for entry in current.split(":") if entry]
  if any(entry.split("=", 1)[0] == TUNABLE for entry in entries):
    return None  # the user chose a value: keep it
  return ":".join(entries + [f"{TUNABLE}=1"])


def _kernel_offers_huge_pages() -> bool:
  try:
    with open(_THP_MODE) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def wanted(environ=os.environ) -> bool:
  """Whether restarting with huge-page malloc would change anything here."""
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return False
  if not sys.executable:  # embedded interpreter: nothing to restart
    return False
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return False
  if tunables_with_hugepages(environ.get("GLIBC_TUNABLES", "")) is None:
    return False
  return _kernel_offers_huge_pages()


def restart_with_hugepage_malloc() -> None:
  """Re-exec this program with huge-page malloc; returns only when that is not wanted.

  Call it first thing in a program's entry point, before heavy imports. The command line is
  rebuilt from `sys.orig_argv`, so `python -m xltransfer train ...` restarts as a module.
  """
  if not wanted():
    return
  os.environ["GLIBC_TUNABLES"] = tunables_with_hugepages(os.environ.get("GLIBC_TUNABLES", ""))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])
