"""Cloud TPU accelerator types: validation, hosts per slice, default runtime versions.

An accelerator type is `GENERATION-COUNT` as gcloud spells it. COUNT is TensorCores for
v2/v3/v4/v5p (two per chip on v4/v5p, four chips per host) and chips for v5e (spelled
`v5litepod`) and v6e (single-host slices up to 8 chips, then four chips per host).
"""
import dataclasses
import re

from xltransfer.errors import UserError

# Runtime images with the JAX-ready TPU software for each generation.
DEFAULT_RUNTIME_VERSION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}

_CHIP_SLICES = (1, 4, 8, 16, 32, 64, 128, 256)
_ALIASES = {"v5e": "v5litepod", "v5lite": "v5litepod"}
_PATTERN = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")


@dataclasses.dataclass(frozen=True)
class AcceleratorType:
  generation: str
  count: int

  @property
  def name(self) -> str:
    return f"{self.generation}-{self.count}"

  @property
  def num_hosts(self) -> int:
    if self.generation in ("v5litepod", "v6e"):
      return 1 if self.count <= 8 else self.count // 4
    return self.count // 8

  @property
  def default_runtime_version(self) -> str:
    return DEFAULT_RUNTIME_VERSION[self.generation]


def parse_accelerator_type(text: str) -> AcceleratorType:
  """Parses and checks an accelerator type such as `v4-128`, `v5litepod-256`, `v5p-128`."""
  match = _PATTERN.match(text)
  if match is None:
    generation = text.split("-", 1)[0]
    if generation in _ALIASES and "-" in text:
      suggestion = f"{_ALIASES[generation]}-{text.split('-', 1)[1]}"
      raise UserError(f"accelerator type {text!r}: gcloud spells it {suggestion!r}")
    raise UserError(
        f"unknown accelerator type {text!r}: expected GENERATION-COUNT with GENERATION one of "
        f"{', '.join(DEFAULT_RUNTIME_VERSION)} (e.g. v4-128, v5litepod-256, v5p-128, v6e-64)")
  generation, count = match.group(1), int(match.group(2))
  if generation in ("v5litepod", "v6e"):
    if count not in _CHIP_SLICES:
      raise UserError(f"accelerator type {text!r}: {generation} slices have "
                      f"{', '.join(map(str, _CHIP_SLICES))} chips")
  elif count % 8 != 0:
    raise UserError(f"accelerator type {text!r}: {generation} counts TensorCores in multiples "
                    f"of 8 (one host), e.g. {generation}-8, {generation}-32, {generation}-128")
  return AcceleratorType(generation, count)
