"""Meshes, logical-axis rules and the shardings derived from them."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xltransfer import partitioning
from xltransfer.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh_spec(rules, logical):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.logical_to_mesh_axes(logical, rules)


def test_standard_rules_match_t5x_presets():
  one_d = partitioning.standard_logical_axis_rules(1, 1)
  assert _mesh_spec(one_d, P("batch", "length", "embed")) == P("data", None, None)
  assert _mesh_spec(one_d, P("embed", "mlp")) == P(None, "model")
  assert _mesh_spec(one_d, P("vocab", "embed")) == P("model", None)
  assert _mesh_spec(one_d, P("embed", "joined_kv")) == P(None, "model")
  assert _mesh_spec(one_d, P("heads", "relpos_buckets")) == P("model", None)
  assert _mesh_spec(one_d, P("embed", "layers", "mlp")) == P(None, None, "model")
  two_d = partitioning.standard_logical_axis_rules(1, 2)
  # 2D parameter partitioning also splits weights' embed over the data axis...
  assert _mesh_spec(two_d, P("embed", "mlp")) == P("data", "model")
  # ...while activations keep data for the batch.
  assert _mesh_spec(two_d, P("batch", "length", "embed")) == P("data", None, None)
  with pytest.raises(ConfigError):
    partitioning.standard_logical_axis_rules(3, 1)


def test_overrides_win_over_the_preset():
  rules = partitioning.logical_axis_rules("1d", overrides=[("embed", "model"), ("mlp", None)])
  assert _mesh_spec(rules, P("embed", "mlp")) == P("model", None)
  fsdp = partitioning.logical_axis_rules("fsdp")
  assert _mesh_spec(fsdp, P("batch", "length")) == P(("data", "fsdp"), None)
  with pytest.raises(ConfigError, match="unknown logical_axis_rules.preset '3d'"):
    partitioning.logical_axis_rules("3d")


def test_mesh_sizes_are_checked():
  devices = jax.devices()
  mesh = partitioning.create_mesh(devices=devices)
  assert dict(mesh.shape) == {"data": len(devices), "model": 1}
  with pytest.raises(ConfigError, match="need 2 devices, but 1 are present"):
    partitioning.create_mesh(data=1, model=2, devices=devices[:1])
  with pytest.raises(ConfigError, match="at most one mesh axis may be -1"):
    partitioning.create_mesh(data=-1, model=-1, devices=devices[:1])
  # A zero axis was a ZeroDivisionError traceback; these are typos in a gin file.
  for bad in ({"model": 0}, {"model": -2}, {"data": 1.5}, {"model": True}):
    with pytest.raises(ConfigError, match="mesh axis sizes must be positive integers or -1"):
      partitioning.create_mesh(**bad, devices=devices[:1])


def test_batch_must_divide_data_parallelism_and_single_host_reads_everything():
  partitioner = partitioning.create_partitioner(
      partitioning.create_mesh(devices=jax.devices()[:1]), partitioning.logical_axis_rules())
  assert partitioner.data_shard(8) == (0, 1, 8)


def test_four_device_mesh_shardings():
  """On a 2x2 mesh: parameters, optimizer state and batches shard by their logical axes."""
  script = textwrap.dedent("""
      import jax
      from jax.sharding import PartitionSpec as P
      from xltransfer import partitioning
      from xltransfer.errors import ConfigError
      from xltransfer.model.config import get_config
      from xltransfer.model.models import EncoderDecoderModel
      from xltransfer.train import optimizer as opt_lib, schedules, state as state_lib
      p = partitioning.create_partitioner(partitioning.create_mesh(model=2),
                                          partitioning.logical_axis_rules("1d"))
      assert dict(p.mesh.shape) == {"data": 2, "model": 2}, p.mesh.shape
      assert p.data_shard(8) == (0, 1, 8)  # one host reads the whole global batch
      try:
        p.data_shard(7)
        raise SystemExit("odd batch accepted")
      except ConfigError as e:
        assert "not divisible by the 2 data-parallel shards" in str(e)
      model = EncoderDecoderModel(get_config("tiny"))
      opt = opt_lib.Adafactor(min_dim_size_to_factor=16).create(
          schedules.learning_rate_schedule(), model.abstract_params(), model.param_logical_axes())
      abstract = state_lib.abstract_train_state(model, opt)
      shardings = state_lib.train_state_shardings(p, model, opt, abstract)
      wi = shardings.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
      assert wi.spec == P(None, "model"), wi.spec
      v_col = shardings.opt_state[0].v_col["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
      assert v_col.spec == P("model"), v_col.spec
      assert shardings.params["token_embedder"]["embedding"].spec == P("model", None)
      assert p.batch_sharding(2).spec == P("data", None)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=300, cwd=REPO_ROOT)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]


class _FakeTpu:
  """Just what create_mesh reads of a TPU device: its platform, host, id and torus coords."""
  platform = "tpu"
  process_index = 0
  device_kind = "TPU v5 lite"

  def __init__(self, i, coords):
    self.id, self.coords = i, coords


def test_a_mesh_that_does_not_fit_the_torus_names_the_gin_key(monkeypatch):
  devices = [_FakeTpu(i, (i % 4, i // 4, 0)) for i in range(16)]  # a 4x4 torus

  def no_layout(shape, devices):
    del devices
    raise NotImplementedError(f"Failed to find assignment for logical_axis_index 1 of size "
                              f"{shape[1]} with remaining assignable mesh [4, 4, 0].")

  monkeypatch.setattr(partitioning.mesh_utils, "create_device_mesh", no_layout)
  with pytest.raises(ConfigError) as error:
    partitioning.create_mesh(model=8, devices=devices)
  message = str(error.value)
  assert "mesh (data 2, model 8) cannot be laid out on the 4x4 TPU torus of these 16" in message
  assert "(1, 4, 16 here)" in message
  assert "change xltransfer.partitioning.create_mesh.model (now 8)" in message
  assert "logical_axis_index 1" in message  # mesh_utils' own words are kept


class _FakeHostDevice:
  """A CPU/GPU device of a multi-process run: its platform, kind, id and process."""
  device_kind = "cpu"

  def __init__(self, i, process_index, platform="cpu"):
    self.id, self.process_index, self.platform = i, process_index, platform

  def __repr__(self):
    return f"device {self.id} of process {self.process_index}"


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
@pytest.mark.parametrize("hosts,per_host,data,fsdp,model", [
    (2, 2, -1, None, 2),  # the two-process CPU test's mesh: data 2 across hosts, model 2 inside
    (2, 8, -1, None, 4),  # data 4 = 2 hosts x 2 inside each
    (4, 8, -1, None, 8),
    (2, 8, -1, 4, 2),  # fsdp inside hosts
    (4, 2, 1, -1, 2),  # fsdp across hosts
    (4, 4, 2, -1, 1),  # fsdp split: 2 inside each host, 4 across
    (3, 2, -1, None, 1),
])
def test_a_multi_process_mesh_is_hybrid_with_the_model_axis_inside_a_process(
    platform, hosts, per_host, data, fsdp, model):
  devices = [_FakeHostDevice(i, i // per_host, platform) for i in range(hosts * per_host)]
  # Listed out of order, as jax.devices() may list them: the mesh orders by (process, id).
  mesh = partitioning.create_mesh(data=data, fsdp=fsdp, model=model,
                                  devices=devices[1::2] + devices[::2])
  array = mesh.devices
  assert array.shape == tuple(mesh.shape.values())
  processes = np.vectorize(lambda d: d.process_index)(array)
  # Every model-axis group is one process's devices, and each process holds one block.
  assert (processes == processes[..., :1]).all()
  for p in range(hosts):
    where = np.argwhere(processes == p)
    box = where.max(axis=0) - where.min(axis=0) + 1
    assert int(np.prod(box)) == per_host, (p, box)
  # The layout is the row-major one over devices sorted by (process, id) that this mesh had
  # before it came from mesh_utils.create_hybrid_device_mesh.
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  assert [d.id for d in array.ravel()] == [d.id for d in ordered]


def test_multi_process_meshes_that_cannot_keep_hosts_whole_are_config_errors():
  devices = [_FakeHostDevice(i, i // 4) for i in range(8)]
  with pytest.raises(ConfigError, match=r"the model axis \(8\) must divide the 4 devices of each"):
    partitioning.create_mesh(model=8, devices=devices)
  three_hosts = [_FakeHostDevice(i, i // 4) for i in range(12)]
  with pytest.raises(ConfigError, match=r"mesh \(data 2, fsdp 6, model 1\) cannot give each of "
                                        r"the 3 hosts a whole block of 4 devices"):
    partitioning.create_mesh(data=2, fsdp=6, devices=three_hosts)
  uneven = [_FakeHostDevice(i, 0 if i < 5 else 1) for i in range(8)]  # 5 + 3 devices
  with pytest.raises(ConfigError, match=r"over 2 hosts: .*must equal the product"):
    partitioning.create_mesh(model=1, devices=uneven)


@pytest.mark.parametrize("preemption_sync, expected", [(True, True), (False, False)])
def test_evaluation_runs_leave_sigterm_to_python(monkeypatch, preemption_sync, expected):
  """jax's preemption service takes SIGTERM over at jax.distributed.initialize; only the
  training loop asks its sync point, so `xltransfer eval` (preemption_sync=False) switches it
  off and a SIGTERM stops the evaluation as usual."""
  joined = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: joined.append(kwargs))
  before = jax.config.jax_enable_preemption_service
  collectives = jax.config.jax_cpu_collectives_implementation
  try:
    jax.config.update("jax_enable_preemption_service", True)
    partitioning.initialize_distributed("localhost:1234", 2, 0, preemption_sync=preemption_sync)
    assert joined and joined[0]["coordinator_address"] == "localhost:1234"
    assert jax.config.jax_enable_preemption_service is expected
  finally:
    jax.config.update("jax_enable_preemption_service", before)
    jax.config.update("jax_cpu_collectives_implementation", collectives)
