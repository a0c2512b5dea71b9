"""Tune glibc malloc for XLA's large per-step buffers, by restarting the process once.

XLA:CPU allocates every step's temporaries afresh (gigabytes for mT5's 250k-vocabulary
logits and their gradients) and glibc hands such blocks back to the kernel when freed, so
each step faults the same memory in again. Two levels of tuning, chosen at start-up:

- Everywhere: `glibc.malloc.hugetlb=1` makes malloc ask for transparent huge pages
  (`madvise`), so memory faults back in 2 MiB at a time, not 4 KiB: for mT5-small training on
  CPU that cut ~2 million page faults per step ~20x.
- On a machine with no accelerator (where XLA's step buffers are host memory): malloc also
  keeps what is freed and reuses it (`arena_max=1`, `mmap_max=0`, a trim threshold no process
  reaches), so after the first step there are no page faults at all: mT5-small's bf16 train
  step spent ~0.6 s of kernel time per step on them. The cost is a higher resident size (the
  freed blocks stay mapped, +1.9 GB for that step) and one malloc arena, which halves
  tf.data's throughput here; both are why accelerator hosts, whose step buffers live on the
  device and whose input pipelines feed a TPU or GPU, get only the first level. A single
  arena is what stops glibc falling back to `mmap` for large blocks in threads' own arenas.

Tunables are read only when a process starts, hence the re-exec: it happens before jax or
tensorflow are imported, keeps the PID (launchers and signal handling are unaffected), and
happens at most once (the new process sees the tunables and goes on). A tunable the user set
in GLIBC_TUNABLES keeps the user's value.

Set XLTRANSFER_HUGEPAGE_MALLOC=0 to keep the system's malloc settings.
"""
import glob
import os
import platform
import sys

OPT_OUT = "XLTRANSFER_HUGEPAGE_MALLOC"
HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}
# Keep freed memory for reuse: one arena (a thread's own arena mmaps any block bigger than its
# 64 MiB heap, whatever mmap_max says), no mmap, and never trim the heap's top.
KEEP_FREED_MEMORY = {
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(1 << 46),
}
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Device files of the accelerators jax drives: TPU v2-v4 (accel), TPU v5e and later (vfio
# groups), NVIDIA GPUs, AMD GPUs.
_ACCELERATOR_DEVICES = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def tunables_with(current: str, wanted_values: dict[str, str]) -> str | None:
  """GLIBC_TUNABLES with `wanted_values` added, or None when that changes nothing.

  A tunable already in `current` keeps its value (the user chose it).
  """
  if not wanted_values:
    return None
  entries = [entry for entry in current.split(":") if entry]
  present = {entry.split("=", 1)[0] for entry in entries}
  added = [f"{name}={value}" for name, value in wanted_values.items() if name not in present]
  return ":".join(entries + added) if added else None


def runs_on_host_only(environ=os.environ, device_patterns=_ACCELERATOR_DEVICES) -> bool:
  """Whether jax here will compute on the CPU: JAX_PLATFORMS says so, or no accelerator exists."""
  platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms[0] == "cpu"
  return not any(glob.glob(pattern) for pattern in device_patterns)


def _kernel_offers_huge_pages() -> bool:
  try:
    with open(_THP_MODE) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def wanted_tunables(environ=os.environ, host_only: bool | None = None,
                    huge_pages: bool | None = None) -> dict[str, str]:
  if host_only is None:
    host_only = runs_on_host_only(environ)
  if huge_pages is None:
    huge_pages = _kernel_offers_huge_pages()
  return {**(HUGE_PAGES if huge_pages else {}), **(KEEP_FREED_MEMORY if host_only else {})}


def new_tunables(environ=os.environ, host_only: bool | None = None,
                 huge_pages: bool | None = None) -> str | None:
  """The GLIBC_TUNABLES to restart with, or None when restarting would change nothing here."""
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  if not sys.executable:  # embedded interpreter: nothing to restart
    return None
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return None
  return tunables_with(environ.get("GLIBC_TUNABLES", ""),
                       wanted_tunables(environ, host_only, huge_pages))


def describe(environ=os.environ) -> str:
  """One line saying which malloc settings this process runs with (for `xltransfer -v`)."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    why = f"{OPT_OUT}={environ[OPT_OUT]} keeps the system's malloc"
  elif runs_on_host_only(environ):
    why = "jax computes on this CPU"
  else:
    why = "an accelerator host"
  return f"host malloc GLIBC_TUNABLES={tunables or '(unset)'} ({why}; xltransfer/host_memory.py)"


def restart_with_tuned_malloc() -> None:
  """Re-exec this program with the tuned malloc; returns only when that changes nothing.

  Call it first thing in a program's entry point, before heavy imports. The command line is
  rebuilt from `sys.orig_argv`, so `python -m xltransfer train ...` restarts as a module.
  """
  tunables = new_tunables()
  if tunables is None:
    return
  os.environ["GLIBC_TUNABLES"] = tunables
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])
