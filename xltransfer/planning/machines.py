"""Target machines for a plan: what to compile for, its memory per device and peak FLOP/s.

A target is named on the command line as

  TPU    `v4:4x4x8`, `v5e:16x16`, `v5p:4x4x4`, `v6e:8x8` (jax topology names, chips), or the
         gcloud accelerator type `v4-256`, `v5litepod-256`, `v5p-128` (TensorCores for v4/v5p)
  GPU    `h100:8` (one node of 8), `h100:4x8` (4 nodes of 8), `h200:8`, `a100:8`, `a100-40gb:8`
  CPU    `cpu:8` (8 fake host devices)
  local  the devices this process sees (on a TPU VM or a GPU node), known by their jax
         device_kind (`local_chip`), their memory from the allocator's bytes_limit

TPU targets compile with the real TPU compiler from libtpu (compile-only devices; no TPU is
needed). GPU and CPU targets compile on fake host devices with XLA:CPU, so their memory
numbers are those of the CPU compiler's buffer assignment: an estimate for a GPU.
"""
import dataclasses
import re
from typing import Dict, Optional, Tuple

from xltransfer.errors import ConfigError, UserError
from xltransfer.planning.accelerators import parse_accelerator_type

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device as jax sees it: HBM bytes and dense bf16 peak FLOP/s."""
  name: str
  hbm_bytes: int
  peak_flops: float
  # jax `device_kind`: checks that libtpu made what we asked, and names a `local` device.
  device_kind: Optional[str] = None


# Per jax device. v4 and v5p run in megacore mode (two TensorCores as one device), as on
# Cloud TPU VMs; peak FLOP/s are the published dense bf16 numbers per chip.
CHIPS: Dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, "TPU v4"),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, "TPU v5 lite"),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, "TPU v5"),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, "TPU v6 lite"),
    # A GPU's device_kind is CUDA's device name, as nvidia-smi and torch print it.
    "h100": Chip("NVIDIA H100 80GB (SXM)", 80 * GIB, 989e12, "NVIDIA H100 80GB HBM3"),
    # The H100's compute with 141 GB (nvidia-smi: 143771 MiB).
    "h200": Chip("NVIDIA H200 (SXM)", 140 * GIB, 989e12, "NVIDIA H200"),
    "a100": Chip("NVIDIA A100 80GB", 80 * GIB, 312e12, "NVIDIA A100-SXM4-80GB"),
    "a100-40gb": Chip("NVIDIA A100 40GB", 40 * GIB, 312e12, "NVIDIA A100-SXM4-40GB"),
    # A fake host device: no HBM limit of its own; memory is checked against --hbm_gib.
    "cpu": Chip("CPU (fake host device)", 16 * GIB, 1e12),
}
TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")
GPU_KINDS = ("h100", "h200", "a100", "a100-40gb")
# Other CUDA names of the same peak FLOP/s (PCIe A100s run at the SXM parts' 312 TFLOP/s). Not
# matched, so their peak is unknown: H100 PCIe (756 TFLOP/s) and H100 NVL (835). An H200 NVL
# (835) reported as "NVIDIA H200" cannot be told apart by name: its plan overstates the peak.
_OTHER_GPU_NAMES = {"NVIDIA A100-PCIE-40GB": "a100-40gb", "NVIDIA A100 80GB PCIe": "a100"}
_GCLOUD_GENERATIONS = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v6e": "v6e"}

# Chips -> torus shape, as Cloud TPU builds slices of each size.
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Machine:
  """What `plan` compiles for."""
  kind: str            # "tpu" | "gpu" | "cpu" | "local"
  name: str            # canonical, e.g. "v4:4x4x8", "h100:2x8", "cpu:8"
  chip: Chip
  num_devices: int
  # TPU only: jax topology name and the options libtpu needs for it.
  topology_name: Optional[str] = None
  topology_options: Tuple[Tuple[str, str], ...] = ()

  @property
  def compiles_on_host(self) -> bool:
    """GPU and CPU targets compile on fake host devices (XLA:CPU)."""
    return self.kind in ("gpu", "cpu")

  def with_hbm(self, hbm_bytes: int) -> "Machine":
    return dataclasses.replace(self, chip=dataclasses.replace(self.chip, hbm_bytes=hbm_bytes))


def _tpu_target(generation: str, dims: Tuple[int, ...]) -> Machine:
  expected = 3 if generation in ("v4", "v5p") else 2
  if len(dims) != expected:
    raise UserError(f"TPU {generation} topologies have {expected} dimensions, e.g. "
                    f"{generation}:{'x'.join(['2'] * expected)}; got {'x'.join(map(str, dims))}")
  name = f"{generation}:{'x'.join(map(str, dims))}"
  options = (("chip_config_name", "megacore"),) if expected == 3 else ()
  count = 1
  for d in dims:
    count *= d
  return Machine("tpu", name, CHIPS[generation], count, name, options)


def _gcloud_target(text: str) -> Machine:
  accelerator = parse_accelerator_type(text)
  generation = _GCLOUD_GENERATIONS.get(accelerator.generation)
  if generation is None:
    raise UserError(f"--topology {text}: plans cover {', '.join(TPU_GENERATIONS)}")
  chips = accelerator.count // 2 if generation in ("v4", "v5p") else accelerator.count
  shapes = _SHAPES_3D if generation in ("v4", "v5p") else _SHAPES_2D
  if chips not in shapes:
    raise UserError(f"--topology {text}: no standard {generation} slice of {chips} chips; "
                    f"name the shape instead, e.g. {generation}:2x2x2")
  return _tpu_target(generation, shapes[chips])


def parse_machine(text: str) -> Machine:
  """Parses `--topology`; every mistake names the accepted forms."""
  text = text.strip().lower()
  if text == "local":
    return Machine("local", "local", CHIPS["cpu"], 0)
  if re.match(r"^(v4|v5p|v5litepod|v6e)-\d+$", text):
    return _gcloud_target(text)
  match = re.match(r"^([a-z0-9-]+):(\d+(?:x\d+)*)$", text)
  if match is None:
    raise UserError(f"--topology {text!r}: expected e.g. v4:4x4x8, v5e:16x16, v5p-128, "
                    "h100:8, h100:2x8, cpu:8 or local")
  kind, dims = match.group(1), tuple(int(d) for d in match.group(2).split("x"))
  if any(d < 1 for d in dims):
    raise UserError(f"--topology {text!r}: dimensions must be positive")
  if kind in TPU_GENERATIONS:
    return _tpu_target(kind, dims)
  if kind in GPU_KINDS or kind == "cpu":
    if len(dims) > 2 or (kind == "cpu" and len(dims) != 1):
      raise UserError(f"--topology {text!r}: use {kind}:DEVICES" +
                      ("" if kind == "cpu" else f" or {kind}:NODESxGPUS_PER_NODE"))
    count = dims[0] * (dims[1] if len(dims) == 2 else 1)
    return Machine("gpu" if kind in GPU_KINDS else "cpu", text, CHIPS[kind], count)
  raise UserError(f"--topology {text!r}: unknown device {kind!r}; known: "
                  f"{', '.join(TPU_GENERATIONS + GPU_KINDS)}, cpu, local")


def check_device_kind(target: Machine, device_kind: str):
  if target.chip.device_kind and device_kind != target.chip.device_kind:
    raise ConfigError(f"libtpu made {device_kind!r} devices for {target.name}, expected "
                      f"{target.chip.device_kind!r}; memory and FLOP/s numbers would be wrong")


def local_chip(device_kind: str, memory_bytes: Optional[int]) -> Chip:
  """The chip of a device this process sees (`--topology local`), by its jax `device_kind`;
  `memory_bytes` (the allocator's `bytes_limit`, what jax may use) replaces the chip's HBM when
  given. An unknown kind (the host CPU) gets the nominal CPU device's peak FLOP/s."""
  chip = next((c for c in CHIPS.values() if c.device_kind == device_kind), None)
  if chip is None and device_kind in _OTHER_GPU_NAMES:
    chip = CHIPS[_OTHER_GPU_NAMES[device_kind]]
  if chip is None:
    chip = Chip(device_kind, CHIPS["cpu"].hbm_bytes, CHIPS["cpu"].peak_flops)
  return chip if memory_bytes is None else dataclasses.replace(chip, hbm_bytes=int(memory_bytes))
