"""The restart into tuned malloc: when it happens, what it keeps, and that it takes effect."""
import os
import subprocess
import sys
import textwrap

import pytest

from xltransfer import host_memory

HUGE = "glibc.malloc.hugetlb=1"
KEEP = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=70368744177664"


def test_tunables_are_added_to_what_the_user_set():
  assert host_memory.tunables_with("", host_memory.HUGE_PAGES) == HUGE
  assert (host_memory.tunables_with("glibc.malloc.tcache_count=0", host_memory.HUGE_PAGES)
          == "glibc.malloc.tcache_count=0:" + HUGE)


def test_a_users_own_values_are_kept():
  assert host_memory.tunables_with("glibc.malloc.hugetlb=0", host_memory.HUGE_PAGES) is None
  wanted = {**host_memory.HUGE_PAGES, **host_memory.KEEP_FREED_MEMORY}
  assert (host_memory.tunables_with("glibc.malloc.arena_max=4:glibc.malloc.hugetlb=2", wanted)
          == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=2:glibc.malloc.mmap_max=0:"
          "glibc.malloc.trim_threshold=70368744177664")


def test_freed_memory_is_kept_only_where_jax_computes_on_the_host(tmp_path):
  assert host_memory.wanted_tunables({}, host_only=True, huge_pages=True) == {
      **host_memory.HUGE_PAGES, **host_memory.KEEP_FREED_MEMORY}
  assert host_memory.wanted_tunables({}, host_only=False, huge_pages=True) == host_memory.HUGE_PAGES
  assert host_memory.wanted_tunables({}, host_only=True, huge_pages=False) == host_memory.KEEP_FREED_MEMORY
  assert host_memory.new_tunables({}, host_only=False, huge_pages=False) is None

  devices = (str(tmp_path / "accel[0-9]*"), str(tmp_path / "nvidia[0-9]*"))
  assert host_memory.runs_on_host_only({}, devices)
  (tmp_path / "nvidiactl").touch()  # a driver's control file is not a GPU
  assert host_memory.runs_on_host_only({}, devices)
  (tmp_path / "accel0").touch()
  assert not host_memory.runs_on_host_only({}, devices)
  assert host_memory.runs_on_host_only({"JAX_PLATFORMS": "cpu"}, devices)
  assert not host_memory.runs_on_host_only({"JAX_PLATFORMS": "tpu,cpu"}, ())
  assert host_memory.runs_on_host_only({"JAX_PLATFORMS": " CPU "}, devices)


@pytest.mark.parametrize("value", ["0", "false", "off", "No"])
def test_opt_out(value):
  assert host_memory.new_tunables({host_memory.OPT_OUT: value}, host_only=True, huge_pages=True) is None


def test_no_restart_once_the_tunables_are_set():
  assert host_memory.new_tunables({"GLIBC_TUNABLES": HUGE}, host_only=False, huge_pages=True) is None
  assert host_memory.new_tunables({"GLIBC_TUNABLES": f"{HUGE}:{KEEP}"}, host_only=True,
                                  huge_pages=True) is None
  # a restart made on a GPU host's settings adds the rest when asked to run on the CPU
  assert host_memory.new_tunables({"GLIBC_TUNABLES": HUGE}, host_only=True,
                                  huge_pages=True) == f"{HUGE}:{KEEP}"


# A child that restarts, then reports its GLIBC_TUNABLES, its command line, how much of a
# 64 MiB block malloc'd straight from libc (numpy would madvise on its own) is in huge pages, and
# how many page faults a second 256 MiB block costs after a first one was freed.
_CHILD = textwrap.dedent("""
  import ctypes, os, resource, sys
  from xltransfer import host_memory
  host_memory.restart_with_tuned_malloc()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  size = 64 << 20
  ctypes.memset(libc.malloc(size), 1, size)
  huge_kb = [int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
             if line.startswith("AnonHugePages")][0]
  big = 256 << 20
  block = libc.malloc(big)
  ctypes.memset(block, 1, big)
  libc.free(block)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  ctypes.memset(libc.malloc(big), 1, big)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], huge_kb, faults)
""")


def _run_child(**env_changes):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  env.update(env_changes)
  out = subprocess.run([sys.executable, "-c", _CHILD, "--flag=1", "positional"], env=env,
                       capture_output=True, text=True, check=True).stdout.split()
  return out[0], " ".join(out[1:-2]), int(out[-2]), int(out[-1])


@pytest.mark.skipif(host_memory.new_tunables({}, host_only=False) is None,
                    reason="huge-page malloc needs Linux with glibc and transparent huge pages "
                           "not 'never'")
def test_huge_pages_restart_takes_effect_and_keeps_the_command_line():
  # On an accelerator host: huge pages only, so a freed block goes back to the kernel and is
  # faulted in again, in 2 MiB pages.
  tunables, args, huge_kb, faults = _run_child(JAX_PLATFORMS="tpu")
  assert tunables == HUGE
  assert args == "['--flag=1', 'positional']"
  assert huge_kb >= 32 << 10  # most of the 64 MiB block
  assert faults >= 64  # 256 MiB in huge pages is 128 faults; in 4 KiB pages, 65536

  tunables, args, _, _ = _run_child(**{host_memory.OPT_OUT: "0"})
  assert tunables == "None" and args == "['--flag=1', 'positional']"


@pytest.mark.skipif(host_memory.new_tunables({}, host_only=True) is None,
                    reason="the malloc tunables need Linux with glibc")
def test_cpu_only_restart_reuses_freed_memory_without_page_faults():
  # Where jax runs on the CPU: the freed block is kept and reused, with no faults at all
  # (with or without huge pages: those depend on the kernel's setting).
  tunables, args, _, faults = _run_child(JAX_PLATFORMS="cpu")
  assert tunables == host_memory.new_tunables({}, host_only=True)
  assert tunables.endswith(KEEP)
  assert args == "['--flag=1', 'positional']"
  assert faults < 16


def test_verbose_run_says_which_malloc_it_runs_with():
  """`xltransfer -v` names the tunables in effect and why; the opt-out says so."""
  env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "JAX_PLATFORMS": "cpu"}
  line = host_memory.describe(env)
  assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in line and "jax computes on this CPU" in line
  assert "accelerator host" in host_memory.describe({"JAX_PLATFORMS": "tpu"})
  assert "(unset)" in host_memory.describe({"JAX_PLATFORMS": "tpu"})
  opted_out = host_memory.describe({host_memory.OPT_OUT: "0"})
  assert f"{host_memory.OPT_OUT}=0 keeps the system's malloc" in opted_out
  proc = subprocess.run([sys.executable, "-m", "xltransfer", "-v", "--help"],
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                        text=True, check=True, timeout=120)
  assert "xltransfer: host malloc GLIBC_TUNABLES=" in proc.stderr
  quiet = subprocess.run([sys.executable, "-m", "xltransfer", "--help"],
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                         text=True, check=True, timeout=120)
  assert "host malloc" not in quiet.stderr
