"""T5X checkpoint import: the three on-disk formats, layer layouts, shardings and errors."""
import logging
import os
import re
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
import tensorstore as ts
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xltransfer.checkpoints import t5x
from xltransfer.checkpoints import tree_utils
from xltransfer.errors import CheckpointError
from xltransfer.model.config import MT5Config, get_config
from xltransfer.model.network import Transformer

SHARED_T5X = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "t5x"
MSGPACK_FIXTURE = SHARED_T5X / "test_t5_tiny.checkpoint_0"
TENSORSTORE_FIXTURE = SHARED_T5X / "tiny_t5" / "checkpoint_1"

# The tiny T5.1.1 of T5X's test data (fixture a).
T5X_TINY = MT5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                     num_encoder_layers=2, num_decoder_layers=2, dtype="float32")


def _require(path: Path) -> Path:
  if not path.exists():
    pytest.skip(f"shared T5X fixture {path} is absent (it lives in the repo's sibling ../shared)")
  return path


def _tokens():
  enc = jnp.array([[5, 6, 7, 1, 0], [8, 9, 1, 0, 0]], jnp.int32)
  dec_tgt = jnp.array([[3, 4, 1, 0], [5, 1, 0, 0]], jnp.int32)
  dec_in = jnp.array([[0, 3, 4, 0], [0, 5, 0, 0]], jnp.int32)
  return enc, dec_in, dec_tgt


def _abstract(config):
  enc, dec_in, dec_tgt = _tokens()
  init = lambda: Transformer(config).init(jax.random.PRNGKey(0), enc, dec_in, dec_tgt)
  return jax.eval_shape(init)["params"]


def _flat_shapes(abstract):
  flat = tree_utils.flatten_tree(abstract, is_leaf=lambda x: hasattr(x, "unbox"))
  return {name: tuple(leaf.unbox().shape if hasattr(leaf, "unbox") else leaf.shape)
          for name, leaf in flat.items()}


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in _flat_shapes(_abstract(config)).items()}


def _stack(flat, count):
  """Unscanned flat params -> scanned (layers at axis 1), computed independently of the module."""
  out = {}
  for name, value in flat.items():
    parts = name.split("/")
    if len(parts) > 1 and parts[1] == "layers_0":
      layer_names = ["/".join([parts[0], f"layers_{i}"] + parts[2:]) for i in range(count)]
      out["/".join([parts[0], "layers"] + parts[2:])] = np.stack(
          [flat[n] for n in layer_names], axis=1)
    elif not (len(parts) > 1 and parts[1].startswith("layers_")):
      out[name] = value
  return out


def _write_legacy_checkpoint(directory: Path, params, step=0, version=3, stored_dtypes=None,
                             inline=(), dtype_in_metadata=()):
  """Writes a checkpoint as legacy T5X does: zarr dirs (gzip, no .zarray) + msgpack specs.

  `dtype_in_metadata` names arrays whose spec has the zarr dtype in its metadata instead of a
  top-level `dtype` (older writers).
  """
  directory.mkdir(parents=True, exist_ok=True)
  stored_dtypes = stored_dtypes or {}
  target, param_states = {}, {}
  for name, value in params.items():
    if name in inline:
      target[name] = value
      continue
    relative = "target." + name.replace("/", ".")
    dtype = stored_dtypes.get(name, "float32")
    stored = value
    if dtype == "bfloat16":
      stored = value.astype(jnp.bfloat16)
    elif dtype == "uint16":  # T5X version 2: bfloat16 bits written as uint16.
      stored = value.astype(jnp.bfloat16).view(np.uint16)
    chunks = [max(1, n // 2) for n in value.shape]  # Several chunks: reads cross boundaries.
    metadata = {"shape": list(value.shape), "chunks": chunks,
                "compressor": {"id": "gzip", "level": 1}}
    spec = {"driver": "zarr", "dtype": dtype, "metadata": metadata}
    if name in dtype_in_metadata:
      spec = {"driver": "zarr", "metadata": dict(metadata, dtype=np.dtype(dtype).str)}
    store = ts.open(dict(spec, kvstore={"driver": "file", "path": str(directory / relative)}),
                    create=True).result()
    store.write(stored).result()
    os.remove(directory / relative / ".zarray")
    target[name] = dict(spec, kvstore={"driver": "gfile", "path": relative + "/"})
    param_states[name + "/v_row"] = np.zeros(value.shape[:1], np.float32)
  contents = {
      "version": version,
      "optimizer": {
          "target": tree_utils.unflatten_tree(target),
          "state": {"step": np.int32(step),
                    "param_states": tree_utils.unflatten_tree(param_states)},
      },
  }
  (directory / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(contents))
  return directory


@pytest.fixture(scope="module")
def tiny_config():
  return get_config("tiny")


@pytest.fixture(scope="module")
def tiny_abstract(tiny_config):
  return _abstract(tiny_config)


@pytest.fixture(scope="module")
def tiny_params(tiny_config):
  return _random_params(tiny_config)


@pytest.fixture(scope="module")
def tiny_zarr_checkpoint(tmp_path_factory, tiny_params):
  directory = tmp_path_factory.mktemp("t5x") / "checkpoint_1000"
  return _write_legacy_checkpoint(
      directory, tiny_params, step=1000,
      stored_dtypes={"token_embedder/embedding": "bfloat16"},
      inline=("decoder/decoder_norm/scale",), dtype_in_metadata=("encoder/encoder_norm/scale",))


def _assert_tree_equal(loaded, expected_flat):
  flat = tree_utils.flatten_tree(loaded)
  assert sorted(flat) == sorted(expected_flat)
  for name, value in expected_flat.items():
    assert flat[name].dtype == jnp.float32, name
    np.testing.assert_array_equal(np.asarray(flat[name]), value, err_msg=name)


# ----------------------------------------------------------------------------- fixture (a)


@pytest.mark.slow
def test_real_msgpack_checkpoint_maps_to_the_model_and_runs(caplog):
  path = _require(MSGPACK_FIXTURE)
  checkpoint = t5x.read_t5x_checkpoint(path)
  assert checkpoint.format == "legacy"
  assert checkpoint.step == 0
  abstract = _abstract(T5X_TINY)
  assert checkpoint.shapes() == _flat_shapes(abstract)

  with caplog.at_level(logging.INFO, logger="xltransfer.checkpoints.t5x"):
    params = checkpoint.load_params(abstract)
  unread = [r.getMessage() for r in caplog.records if "optimizer state" in r.getMessage()]
  # The parameters alone: the trainer restores the state (tests/test_t5x_optimizer_state.py).
  assert len(unread) == 1 and "is left for the trainer" in unread[0]
  assert "208 arrays" in unread[0]

  # Values are the file's own, read here without the importer.
  raw = msgpack.unpackb(MSGPACK_FIXTURE.read_bytes(), ext_hook=_flax_ext_hook)
  np.testing.assert_array_equal(
      np.asarray(params["decoder"]["logits_dense"]["kernel"]),
      raw["optimizer"]["target"]["decoder"]["logits_dense"]["kernel"])

  enc, dec_in, dec_tgt = _tokens()
  logits = Transformer(T5X_TINY).apply({"params": params}, enc, dec_in, dec_tgt)
  assert logits.shape == (2, 4, 32128)
  assert bool(jnp.all(jnp.isfinite(logits)))


def _flax_ext_hook(code, data):
  # flax.serialization's ndarray extension: msgpack (shape, dtype name, raw bytes).
  shape, dtype, buffer = msgpack.unpackb(data)
  return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)


def test_real_msgpack_checkpoint_loads_into_a_scanned_model():
  path = _require(MSGPACK_FIXTURE)
  enc, dec_in, dec_tgt = _tokens()
  unscanned = t5x.load_t5x_params(path, _abstract(T5X_TINY))
  scanned_config = T5X_TINY.replace(scan_layers=True)
  scanned = t5x.load_t5x_params(path, _abstract(scanned_config))
  wo = scanned["encoder"]["layers"]["mlp"]["wo"]["kernel"]
  assert wo.shape == (16, 2, 8)
  np.testing.assert_array_equal(np.asarray(wo[:, 1]),
                                np.asarray(unscanned["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]))
  expected = Transformer(T5X_TINY).apply({"params": unscanned}, enc, dec_in, dec_tgt)
  got = Transformer(scanned_config).apply({"params": scanned}, enc, dec_in, dec_tgt)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- fixture (b)


def test_real_tensorstore_checkpoint_reads_values_shapes_and_dtypes():
  directory = _require(TENSORSTORE_FIXTURE)
  checkpoint = t5x.read_t5x_checkpoint(directory / "checkpoint")  # The file path works too.
  assert checkpoint.step == 1
  expected = {"bias": ("float32", (5,)), "kernel": ("float64", (10, 5)), "step": ("int32", ())}
  prefix = "optimizer/state/param_states/"
  assert checkpoint.array_names() == sorted([prefix + n for n in expected] +
                                            ["optimizer/state/step"])
  for name, (dtype, shape) in expected.items():
    # Read independently: the zarr directory with the metadata written out by hand.
    direct = ts.open({
        "driver": "zarr", "dtype": dtype,
        "kvstore": {"driver": "file", "path": str(directory / f"state.param_states.{name}")},
        "metadata": {"shape": list(shape), "chunks": list(shape),
                     "compressor": {"id": "gzip", "level": 1}},
    }, open=True, assume_metadata=True).result().read().result()
    value = checkpoint.read_array(prefix + name)
    assert value.dtype == np.dtype(dtype) and value.shape == shape
    np.testing.assert_array_equal(value, direct)
  np.testing.assert_array_equal(checkpoint.read_array(prefix + "bias"), np.ones(5, np.float32))
  kernel = checkpoint.read_array(prefix + "kernel")
  np.testing.assert_array_equal(
      checkpoint.read_array(prefix + "kernel", (slice(2, 7), slice(1, 3))), kernel[2:7, 1:3])
  with pytest.raises(CheckpointError, match="has no parameters"):
    checkpoint.load_params()


# ----------------------------------------------------------------------------- zarr round trips


def test_zarr_checkpoint_of_tiny_mt5_loads_back_exactly(tiny_zarr_checkpoint, tiny_abstract,
                                                        tiny_params, caplog):
  checkpoint = t5x.read_t5x_checkpoint(tiny_zarr_checkpoint)
  assert checkpoint.step == 1000
  assert checkpoint.dtypes()["token_embedder/embedding"] == jnp.bfloat16
  with caplog.at_level(logging.INFO, logger="xltransfer.checkpoints.t5x"):
    loaded = checkpoint.load_params(tiny_abstract)
  assert any("Reading the parameters only of T5X checkpoint" in r.getMessage()
             for r in caplog.records)
  expected = dict(tiny_params)
  # Stored in bfloat16, cast to the model's float32.
  expected["token_embedder/embedding"] = (
      tiny_params["token_embedder/embedding"].astype(jnp.bfloat16).astype(np.float32))
  _assert_tree_equal(loaded, expected)
  # Without a target: the checkpoint's own layout, floats as float32.
  _assert_tree_equal(checkpoint.load_params(), expected)


def test_zarr_checkpoint_loads_into_a_sharded_target(tiny_zarr_checkpoint, tiny_params):
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))

  def sharded(name, shape):
    spec = PartitionSpec(*([None] * (len(shape) - 1) + ["model"])) if shape else PartitionSpec()
    return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))

  shapes = {n: v.shape for n, v in tiny_params.items()}
  target = tree_utils.unflatten_tree({n: sharded(n, s) for n, s in shapes.items()})
  loaded = t5x.load_t5x_params(tiny_zarr_checkpoint, target)
  flat = tree_utils.flatten_tree(loaded)
  wo = "encoder/layers_1/mlp/wo/kernel"
  assert flat[wo].sharding == NamedSharding(mesh, PartitionSpec(None, "model"))
  np.testing.assert_array_equal(np.asarray(flat[wo]), tiny_params[wo])

  # Shardings given separately override the target's, here for every array at once.
  replicated = NamedSharding(mesh, PartitionSpec())
  plain = tree_utils.unflatten_tree(
      {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in shapes.items()})
  loaded = t5x.load_t5x_params(tiny_zarr_checkpoint, plain, shardings=replicated)
  assert all(a.sharding == replicated for a in tree_utils.flatten_tree(loaded).values())


def test_zarr_checkpoint_loads_into_a_scanned_target(tiny_zarr_checkpoint, tiny_config,
                                                     tiny_params):
  scanned_config = tiny_config.replace(scan_layers=True)
  loaded = t5x.load_t5x_params(tiny_zarr_checkpoint, _abstract(scanned_config))
  expected = dict(tiny_params)
  expected["token_embedder/embedding"] = (
      tiny_params["token_embedder/embedding"].astype(jnp.bfloat16).astype(np.float32))
  _assert_tree_equal(loaded, _stack(expected, tiny_config.num_encoder_layers))


def test_scanned_checkpoint_loads_into_an_unscanned_target(tmp_path, tiny_config, tiny_params,
                                                           tiny_abstract):
  scanned = _stack(tiny_params, tiny_config.num_encoder_layers)
  directory = _write_legacy_checkpoint(tmp_path / "checkpoint_5", scanned, step=5)
  loaded = t5x.load_t5x_params(directory, tiny_abstract)
  _assert_tree_equal(loaded, tiny_params)


def test_lazy_relayout_reads_partial_slices(tiny_zarr_checkpoint, tiny_params):
  checkpoint = t5x.read_t5x_checkpoint(tiny_zarr_checkpoint)
  wi = "encoder/layers_{}/mlp/wi_0/kernel"
  stacked = tree_utils.StackedLayers([checkpoint._params()[wi.format(i)] for i in range(2)])
  assert stacked.shape == (64, 2, 128)
  expected = np.stack([tiny_params[wi.format(i)] for i in range(2)], axis=1)
  index = (slice(10, 50), slice(1, 2), slice(30, 100))  # Crosses zarr chunk boundaries.
  np.testing.assert_array_equal(stacked.read(index), expected[index])
  layer = tree_utils.LayerSlice(tree_utils.StackedLayers(stacked.parts), 1)
  np.testing.assert_array_equal(layer.read((slice(5, 9), slice(0, 128))),
                                tiny_params[wi.format(1)][5:9])


def test_version_2_uint16_arrays_are_bfloat16_bits(tmp_path, tiny_params, tiny_abstract):
  name = "decoder/logits_dense/kernel"
  directory = _write_legacy_checkpoint(tmp_path / "checkpoint_2", tiny_params, version=2,
                                       stored_dtypes={name: "uint16"})
  loaded = tree_utils.flatten_tree(t5x.load_t5x_params(directory, tiny_abstract))
  np.testing.assert_array_equal(
      np.asarray(loaded[name]), tiny_params[name].astype(jnp.bfloat16).astype(np.float32))


def test_gcs_and_local_paths_resolve_relative_to_the_checkpoint_directory():
  stored = {"driver": "zarr", "dtype": "bfloat16",
            "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                        "path": "target.encoder.layers_0.mlp.wo.kernel/"},
            "metadata": {"shape": [10240, 4096], "chunks": [1280, 4096]}}
  ckpt = "gs://t5-data/pretrained_models/t5x/mt5_xxl/checkpoint_1000000"
  spec = t5x.legacy_tensorstore_spec(stored, ckpt)
  assert spec["kvstore"] == {
      "driver": "gcs", "bucket": "t5-data",
      "path": "pretrained_models/t5x/mt5_xxl/checkpoint_1000000/"
              "target.encoder.layers_0.mlp.wo.kernel/"}
  assert spec["metadata"] == stored["metadata"] and spec["dtype"] == "bfloat16"
  # tensorstore < 0.1.14 kept the path beside the kvstore; `gfile` was T5X's local driver.
  old = {"driver": "zarr", "dtype": "float32", "path": "target.x/",
         "kvstore": {"driver": "gfile"}, "metadata": {"shape": [2]}}
  assert t5x.legacy_tensorstore_spec(old, "/ckpts/checkpoint_3")["kvstore"] == {
      "driver": "file", "path": "/ckpts/checkpoint_3/target.x/"}
  with pytest.raises(CheckpointError, match="s3://b/c"):
    t5x.legacy_tensorstore_spec(stored, "s3://b/c")


# ----------------------------------------------------------------------------- orbax (c)


def test_orbax_checkpoint_in_t5x_layout_loads(tmp_path, tiny_params, tiny_abstract, caplog):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  step_dir = tmp_path / "checkpoint_7"
  state = {"target": tree_utils.unflatten_tree(tiny_params),
           "state": {"step": np.int32(7),
                     "param_states": {"encoder": {"encoder_norm": {"scale": {
                         "v": np.ones(64, np.float32)}}}}}}
  # T5X's orbax CheckpointManager writes the train state as the item `state`.
  ocp.PyTreeCheckpointer().save(step_dir / "state", state)
  for path in (step_dir, step_dir / "state"):
    checkpoint = t5x.read_t5x_checkpoint(path)
    assert checkpoint.format == "orbax" and checkpoint.step == 7
    assert checkpoint.shapes() == {n: v.shape for n, v in tiny_params.items()}
  with caplog.at_level(logging.INFO, logger="xltransfer.checkpoints.t5x"):
    loaded = checkpoint.load_params(tiny_abstract)
  assert any("1 arrays under state/" in r.getMessage() for r in caplog.records)
  _assert_tree_equal(loaded, tiny_params)


# ----------------------------------------------------------------------------- errors


def test_mismatch_lists_every_name_with_both_shapes(tiny_zarr_checkpoint):
  wrong = _abstract(get_config("tiny", mlp_dim=96))
  target = dict(tree_utils.flatten_tree(wrong, is_leaf=lambda x: hasattr(x, "unbox")))
  del target["encoder/encoder_norm/scale"]  # Now unexpected in the checkpoint.
  target["encoder/extra/kernel"] = jax.ShapeDtypeStruct((3, 4), jnp.float32)  # Missing.
  with pytest.raises(CheckpointError) as error:
    t5x.load_t5x_params(tiny_zarr_checkpoint, tree_utils.unflatten_tree(target))
  message = str(error.value)
  assert str(tiny_zarr_checkpoint) in message
  mlp = [(s, l, k) for s in ("encoder", "decoder") for l in range(2) for k in ("wi_0", "wi_1")]
  for stack, layer, kernel in mlp:
    assert (f"shape mismatch: {stack}/layers_{layer}/mlp/{kernel}/kernel: "
            f"checkpoint (64, 128), model (64, 96)") in message
    assert (f"shape mismatch: {stack}/layers_{layer}/mlp/wo/kernel: "
            f"checkpoint (128, 64), model (96, 64)") in message
  assert message.count("shape mismatch") == 12
  assert "missing from checkpoint: encoder/extra/kernel (model shape (3, 4))" in message
  assert "unexpected in checkpoint: encoder/encoder_norm/scale (shape (64,))" in message


def test_scanned_checkpoint_with_more_layers_than_the_model_is_rejected(
    tmp_path, tiny_config, tiny_params):
  deeper = tiny_config.replace(num_encoder_layers=3, num_decoder_layers=3)
  scanned = _stack(_random_params(deeper), 3)
  directory = _write_legacy_checkpoint(tmp_path / "checkpoint_9", scanned)
  with pytest.raises(CheckpointError,
                     match=r"encoder/layers/mlp/wo/kernel: checkpoint \(128, 3, 64\), "
                           r"model \(128, 2, 64\)"):
    t5x.load_t5x_params(directory, _abstract(tiny_config))


def test_missing_path_is_named(tmp_path):
  missing = tmp_path / "no_such_checkpoint"
  with pytest.raises(CheckpointError, match=re.escape(f"not found: {missing}")):
    t5x.read_t5x_checkpoint(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(CheckpointError, match=re.escape(f"{empty} is not a T5X checkpoint")):
    t5x.read_t5x_checkpoint(empty)


def test_corrupt_checkpoint_file_is_named(tmp_path):
  directory = tmp_path / "checkpoint_1"
  directory.mkdir()
  (directory / "checkpoint").write_bytes(b"\xc1\x00 this is not msgpack")
  with pytest.raises(CheckpointError, match=re.escape(str(directory / "checkpoint"))):
    t5x.read_t5x_checkpoint(directory)


def test_missing_array_data_names_the_array(tmp_path, tiny_params, tiny_abstract):
  directory = _write_legacy_checkpoint(tmp_path / "checkpoint_4", tiny_params)
  data_dir = directory / "target.decoder.layers_1.mlp.wo.kernel"
  for chunk in data_dir.iterdir():
    chunk.write_bytes(b"not gzip")
  with pytest.raises(CheckpointError, match="decoder/layers_1/mlp/wo/kernel"):
    t5x.load_t5x_params(directory, tiny_abstract)


_SHARDED_READ_SCRIPT = r"""
import json, sys
import jax, numpy as np
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from xltransfer.checkpoints import t5x, tree_utils

reads = []
original_read = t5x._TensorStoreArray.read
def recording_read(self, index=None):
  value = original_read(self, index)
  reads.append((self.name, [list(s.indices(n)) for s, n in zip(index, self.shape)]))
  return value
t5x._TensorStoreArray.read = recording_read

checkpoint = t5x.read_t5x_checkpoint(sys.argv[1])
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
name = "encoder/layers_1/mlp/wi_0/kernel"
sharding = NamedSharding(mesh, PartitionSpec(None, "model"))
target = {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in checkpoint.shapes().items()}
target[name] = jax.ShapeDtypeStruct(target[name].shape, jnp.float32, sharding=sharding)
loaded = tree_utils.flatten_tree(checkpoint.load_params(tree_utils.unflatten_tree(target)))
print(json.dumps({
    "devices": len(jax.devices()),
    "reads": [index for read_name, index in reads if read_name.endswith(name)],
    "shards": sorted(str(s.index) for s in loaded[name].addressable_shards),
    "value": np.asarray(loaded[name]).tolist(),
}))
"""


def test_each_device_reads_only_its_slice_and_replicas_share_a_read(tiny_zarr_checkpoint,
                                                                    tiny_params):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  # Four CPU devices need a fresh process: the device count is fixed when jax starts.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable, "-c", _SHARDED_READ_SCRIPT, str(tiny_zarr_checkpoint)],
                        env=env, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 4 and len(result["shards"]) == 4
  # (64, 128) split over `model` (2): two half-width slices, each read once for its 2 replicas.
  assert sorted(result["reads"]) == [[[0, 64, 1], [0, 64, 1]], [[0, 64, 1], [64, 128, 1]]]
  np.testing.assert_array_equal(np.array(result["value"], np.float32),
                                tiny_params["encoder/layers_1/mlp/wi_0/kernel"])
