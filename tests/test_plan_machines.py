"""`xltransfer plan` targets and mesh files: names, device counts, worker environments."""
import glob
import itertools
import math
import os
import re

import pytest

from xltransfer.errors import UserError
from xltransfer.planning import devices, machines

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


@pytest.mark.parametrize("text,name,count,kind", [
    ("v4:4x4x8", "v4:4x4x8", 128, "tpu"),
    ("v4-128", "v4:4x4x4", 64, "tpu"),        # gcloud counts TensorCores on v4
    ("v5litepod-256", "v5e:16x16", 256, "tpu"),
    ("v5p-128", "v5p:4x4x4", 64, "tpu"),
    ("v5e:2x2", "v5e:2x2", 4, "tpu"),
    ("h100:8", "h100:8", 8, "gpu"),
    ("h100:4x8", "h100:4x8", 32, "gpu"),
    ("cpu:8", "cpu:8", 8, "cpu"),
])
def test_parse_target(text, name, count, kind):
  target = machines.parse_machine(text)
  assert (target.name, target.num_devices, target.kind) == (name, count, kind)


def test_v4_and_v5p_compile_one_device_per_chip():
  # Megacore, as on Cloud TPU VMs: 32 GiB per v4 device, not 16 per TensorCore.
  target = machines.parse_machine("v4:4x4x4")
  assert dict(target.topology_options) == {"chip_config_name": "megacore"}
  assert target.chip.hbm_bytes == 32 * machines.GIB


@pytest.mark.parametrize("text", ["v4:4x4", "v5e:2x2x2", "tpu9:8", "h100", "v4-12",
                                  "v5e-256", "cpu:2x4", "h100:0"])
def test_bad_targets_name_the_accepted_forms(text):
  with pytest.raises(UserError):
    machines.parse_machine(text)


def test_fake_device_worker_gets_the_device_count():
  env = devices.worker_environment(machines.parse_machine("h100:2x8"),
                                   {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --x=1"})
  assert env["JAX_PLATFORMS"] == "cpu"
  assert env["XLA_FLAGS"].split() == ["--x=1", "--xla_force_host_platform_device_count=16"]


def test_tpu_worker_without_libtpu_says_how_to_get_it(monkeypatch):
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setattr(devices, "libtpu_path", lambda: None)
  with pytest.raises(UserError, match=r"\[tpu\]"):
    devices.worker_environment(machines.parse_machine("v5e:2x2"), {})


def test_tpu_worker_never_opens_a_tpu(tmp_path, monkeypatch):
  fake = tmp_path / "libtpu.so"
  fake.write_bytes(b"")
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(fake))
  env = devices.worker_environment(machines.parse_machine("v4:4x4x4"), {})
  # The CPU backend only: the compile-only topology needs no TPU and takes no lockfile.
  assert env["JAX_PLATFORMS"] == "cpu"
  assert env["TPU_LIBRARY_PATH"] == str(fake)
  assert env["TPU_ACCELERATOR_TYPE"] == "v4-128"


def _bindings(path):
  values = {}
  with open(path) as f:
    for line in f:
      match = re.match(r"^xltransfer\.partitioning\.(\S+)\s*=\s*(\S+)", line)
      if match:
        values[match.group(1)] = match.group(2).strip("'")
  return values


def _plan_topology(path):
  with open(path) as f:
    match = re.search(r"--topology (\S+)", f.read())
  return match.group(1)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GIN_DIR, "meshes", "tpu_*.gin"))))
def test_tpu_mesh_axes_map_onto_the_torus(path):
  """Each mesh axis must be a product of physical axis sizes (mesh_utils' requirement)."""
  target = machines.parse_machine(_plan_topology(path))
  dims = [int(d) for d in target.topology_name.split(":")[1].split("x")]
  model = int(_bindings(path)["create_mesh.model"])
  products = {1}
  for r in range(1, len(dims) + 1):
    for subset in itertools.combinations(dims, r):
      products.add(math.prod(subset))
  assert model in products, f"{path}: model axis {model} does not map onto {target.name}"
  assert target.num_devices % model == 0


def _axis_sizes_on(target):
  dims = [int(d) for d in target.topology_name.split(":")[1].split("x")]
  return {math.prod(subset) for r in range(len(dims) + 1)
          for subset in itertools.combinations(dims, r)}


@pytest.mark.parametrize("size", ["small", "base", "large", "xl"])
@pytest.mark.parametrize("mesh", sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(GIN_DIR, "meshes", "tpu_v[45]p*.gin"))
    + glob.glob(os.path.join(GIN_DIR, "meshes", "tpu_v4_*.gin"))))
def test_partitioning_files_fit_the_v4_and_v5p_meshes(size, mesh):
  """`--mesh_file=meshes/tpu_v4_64.gin --mesh_file=meshes/partitioning_SIZE.gin` as the files
  say to use them: the size's model axis must map onto the slice's torus. (XXL defers to the
  hardware files; v5e's 2D tori take other sizes, see partitioning_xl.gin.)"""
  target = machines.parse_machine(_plan_topology(os.path.join(GIN_DIR, "meshes", mesh)))
  model = int(_bindings(os.path.join(GIN_DIR, "meshes", f"partitioning_{size}.gin"))[
      "create_mesh.model"])
  assert model in _axis_sizes_on(target), f"partitioning_{size}.gin: model {model} on {mesh}"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GIN_DIR, "meshes", "gpu_*.gin"))))
def test_gpu_meshes_keep_sharding_inside_a_node(path):
  values = _bindings(path)
  assert values["logical_axis_rules.preset"] == "fsdp"
  assert int(values["create_mesh.fsdp"]) * int(values["create_mesh.model"]) == 8


SCALE_FILES = sorted(glob.glob(os.path.join(GIN_DIR, "scale", "mt5_xxl_*_*.gin")))


@pytest.fixture
def clean_gin():
  import gin  # pylint: disable=import-outside-toplevel
  yield gin
  gin.clear_config()  # Later tests in this process start from an empty config.


@pytest.mark.parametrize("path", SCALE_FILES, ids=os.path.basename)
def test_scale_configs_parse_as_xltransfer_train_reads_them(path, clean_gin):
  from xltransfer.planning import run_config  # pylint: disable=import-outside-toplevel
  gin = clean_gin
  run_config.parse([path], [], [])
  overrides = gin.query_parameter("xltransfer.model.mt5_config.overrides")
  assert gin.query_parameter("xltransfer.model.mt5_config.size") == "xxl"
  assert overrides["scan_layers"] is True and overrides["remat_policy"] != "none"
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS")["inputs"] == 1024
  assert gin.query_parameter("%BATCH_SIZE") == 128
  # The hardware's mesh file comes after runs/finetune.gin's CPU mesh and wins.
  with open(path) as f:
    mesh_file = re.search(r"^include '(meshes/\S+)'", f.read(), re.M).group(1)
  expected = _bindings(os.path.join(GIN_DIR, mesh_file))
  assert gin.query_parameter("xltransfer.partitioning.create_mesh.model") == int(
      expected["create_mesh.model"])
  assert gin.query_parameter("xltransfer.partitioning.logical_axis_rules.preset") == (
      expected["logical_axis_rules.preset"])
