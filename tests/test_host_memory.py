"""The restart into huge-page malloc: when it happens, what it keeps, and that it takes effect."""
import os
import subprocess
import sys
import textwrap

import pytest

from xltransfer import host_memory


def test_tunable_is_added_to_what_the_user_set():
  assert host_memory.tunables_with_hugepages("") == "glibc.malloc.hugetlb=1"
  assert (host_memory.tunables_with_hugepages("glibc.malloc.arena_max=2")
          == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_a_users_own_hugetlb_value_is_kept():
  assert host_memory.tunables_with_hugepages("glibc.malloc.hugetlb=0") is None
  assert host_memory.tunables_with_hugepages("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2") is None


@pytest.mark.parametrize("value", ["0", "false", "off", "No"])
def test_opt_out(value):
  assert not host_memory.wanted({host_memory.OPT_OUT: value})


def test_no_restart_once_the_tunable_is_set():
  assert not host_memory.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})


# A child that restarts, then mallocs 64 MiB straight from libc (numpy would madvise on its own)
# and reports its GLIBC_TUNABLES, its command line and how much of its memory is in huge pages.
_CHILD = textwrap.dedent("""
  import ctypes, os, sys
  from xltransfer import host_memory
  host_memory.restart_with_hugepage_malloc()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  size = 64 << 20
  ctypes.memset(libc.malloc(size), 1, size)
  huge_kb = [int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
             if line.startswith("AnonHugePages")][0]
  print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], huge_kb)
""")


def _run_child(**env_changes):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  env.update(env_changes)
  out = subprocess.run([sys.executable, "-c", _CHILD, "--flag=1", "positional"], env=env,
                       capture_output=True, text=True, check=True).stdout.split()
  return out[0], " ".join(out[1:-1]), int(out[-1])


@pytest.mark.skipif(not host_memory.wanted({}),
                    reason="needs Linux with glibc and transparent huge pages not 'never'")
def test_restart_takes_effect_and_keeps_the_command_line():
  tunables, args, huge_kb = _run_child()
  assert tunables == "glibc.malloc.hugetlb=1"
  assert args == "['--flag=1', 'positional']"
  assert huge_kb >= 32 << 10  # most of the 64 MiB block
  tunables, args, huge_kb = _run_child(**{host_memory.OPT_OUT: "0"})
  assert tunables == "None" and args == "['--flag=1', 'positional']"
