"""Devices to compile for, and the process environment that produces them.

TPU targets use libtpu's compile-only devices (`jax.experimental.topologies`): the real TPU
compiler and its memory limits, on any machine. GPU and CPU targets use N fake host devices,
which XLA creates only when told before jax starts; both therefore run in a fresh worker
process whose environment `worker_environment` builds.
"""
import importlib.util
import os
from typing import Dict, List

from xltransfer.errors import ConfigError, UserError
from xltransfer.planning.machines import Machine, check_device_kind


def libtpu_path():
  """libtpu.so from TPU_LIBRARY_PATH or the installed `libtpu` package (the `tpu` extra)."""
  path = os.environ.get("TPU_LIBRARY_PATH")
  if path:
    if not os.path.isfile(path):
      raise UserError(f"TPU_LIBRARY_PATH={path}: no such file")
    return path
  spec = importlib.util.find_spec("libtpu")
  if spec is None or not spec.submodule_search_locations:
    return None
  candidate = os.path.join(list(spec.submodule_search_locations)[0], "libtpu.so")
  return candidate if os.path.isfile(candidate) else None


def worker_environment(target: Machine, base: Dict[str, str]) -> Dict[str, str]:
  """The environment of the process that compiles for `target`."""
  env = dict(base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if target.kind == "tpu":
    path = libtpu_path()
    if path is None:
      raise UserError(
          f"--topology {target.name} needs libtpu to compile for TPUs (it works on a CPU-only "
          "machine): pip install -e '.[tpu]', or point TPU_LIBRARY_PATH at a libtpu.so")
    env["TPU_LIBRARY_PATH"] = path
    # The host stays on the CPU backend: only the compile-only TPU topology is opened, so no
    # TPU is probed and /tmp/libtpu_lockfile is never taken (other jax processes are safe).
    env["JAX_PLATFORMS"] = "cpu"
    # libtpu reads these at load; without them it logs errors looking for a TPU VM's metadata.
    env.setdefault("TPU_ACCELERATOR_TYPE", _accelerator_type(target))
    env.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    env.setdefault("TPU_SKIP_MDS_QUERY", "1")
    env.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  elif target.compiles_on_host:
    env["JAX_PLATFORMS"] = "cpu"
    flags.append(f"--xla_force_host_platform_device_count={target.num_devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def _accelerator_type(target: Machine) -> str:
  generation = target.topology_name.split(":")[0]
  if generation in ("v4", "v5p"):
    return f"{generation}-{2 * target.num_devices}"
  return f"{'v5litepod' if generation == 'v5e' else generation}-{target.num_devices}"


def machine_devices(target: Machine) -> List:
  """The devices to build the mesh from (call in the worker process)."""
  import jax  # pylint: disable=import-outside-toplevel
  if target.kind == "tpu":
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    try:
      devices = topologies.get_topology_desc(
          platform="tpu", topology_name=target.topology_name,
          **dict(target.topology_options)).devices
    except Exception as e:  # libtpu rejects unknown shapes with a runtime error.
      raise UserError(f"--topology {target.name}: libtpu cannot build this topology: {e}") from e
    check_device_kind(target, devices[0].device_kind)
  elif target.kind == "local":
    devices = jax.devices()
  else:
    devices = jax.devices("cpu")
  if target.num_devices and len(devices) != target.num_devices:
    raise ConfigError(f"--topology {target.name} should give {target.num_devices} devices, got "
                      f"{len(devices)} (was jax started before XLA_FLAGS was set?)")
  return list(devices)
