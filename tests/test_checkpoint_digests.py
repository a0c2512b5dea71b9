"""Trainer checkpoints carry a digest of every array and are verified on restore (issue 13 #4)."""
import functools
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts


import train_cli_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position
import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer.checkpoints import digests  # noqa: E402
from xltransfer.model.config import get_config  # noqa: E402
from xltransfer.model.models import EncoderDecoderModel  # noqa: E402
from xltransfer.partitioning import create_partitioner  # noqa: E402
from xltransfer.train import checkpointing, run  # noqa: E402
from xltransfer.train import input as input_lib  # noqa: E402
from xltransfer.train.optimizer import Adafactor  # noqa: E402
from xltransfer.train.schedules import learning_rate_schedule  # noqa: E402
from xltransfer.train.trainer import Trainer, to_host  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_gin")

EMBEDDING = "token_embedder/embedding"  # the array the corruption tests damage


# ---- the digest itself ----

def test_digest_changes_with_any_single_element_and_with_positions():
  x = np.random.RandomState(0).randn(64, 33).astype(np.float32)
  base = digests.compute({"p": {"x": x}})["items"]["p"]["x"]
  assert base == {"digest": base["digest"], "shape": [64, 33], "dtype": "float32"}
  assert len(base["digest"]) == 16
  assert digests.compute({"p": {"x": x.copy()}})["items"]["p"]["x"] == base  # deterministic
  for index in [(0, 0), (5, 7), (63, 32)]:
    changed = x.copy()
    changed[index] = np.nextafter(changed[index], np.float32(np.inf))  # lowest bit only
    assert digests.compute({"p": {"x": changed}})["items"]["p"]["x"]["digest"] != base["digest"]
  swapped = x.copy()
  swapped[[3, 4]] = swapped[[4, 3]]
  assert digests.compute({"p": {"x": swapped}})["items"]["p"]["x"]["digest"] != base["digest"]
  # Every dtype a train state holds: bfloat16 weights, int32 counters, scalars.
  record = digests.compute({"s": {"b": jnp.asarray(x, jnp.bfloat16), "n": jnp.int32(3),
                                  "e": jnp.zeros((0, 4))}})
  assert {k: v["dtype"] for k, v in record["items"]["s"].items()} == {
      "b": "bfloat16", "n": "int32", "e": "float32"}


def _fmix32(h):
  """MurmurHash3's 32-bit finaliser (smhasher MurmurHash3.cpp, fmix32), in uint64 masked to
  32 bits."""
  mask = np.uint64(0xFFFFFFFF)
  h = h ^ (h >> np.uint64(16))
  h = (h * np.uint64(0x85EBCA6B)) & mask
  h = h ^ (h >> np.uint64(13))
  h = (h * np.uint64(0xC2B2AE35)) & mask
  return h ^ (h >> np.uint64(16))


def _reference_digest(x):
  """The digest as digests.py's docstring defines it, in numpy: element i (row-major) with
  bits b contributes h = fmix32(b ^ i * 0x9E3779B9) to the first lane and
  fmix32(h ^ 0x85EBCA6B) to the second, each summed modulo 2**32."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    bits = x.astype(np.uint64)
  else:
    bits = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint64)
  bits = bits.reshape(-1)
  mask = np.uint64(0xFFFFFFFF)
  position = np.arange(bits.size, dtype=np.uint64)
  first = _fmix32(bits ^ ((position * np.uint64(0x9E3779B9)) & mask))
  second = _fmix32(first ^ np.uint64(0x85EBCA6B))
  return f"{int(first.sum()) % 2**32:08x}{int(second.sum()) % 2**32:08x}"


def test_digest_is_the_documented_algorithm_for_small_and_large_arrays():
  # Large arrays on the CPU are summed in rows of 32 (a different program, the same sum);
  # both must give the documented digest, which checkpoints written since format 1 hold.
  rs = np.random.RandomState(2)
  arrays = {"large": rs.randn(300, 77).astype(np.float32),  # 23100 elements: rows and a rest
            "large_rows": rs.randn(128, 256).astype(np.float32),
            "large_bf16": np.asarray(jnp.asarray(rs.randn(200, 100), jnp.bfloat16)),
            "large_int8": rs.randint(-128, 128, (70000,)).astype(np.int8),
            "large_bool": rs.rand(3, 9000) > 0.5,
            "small": rs.randn(7, 5).astype(np.float32), "scalar": np.int32(-7)}
  assert digests._in_rows(arrays["large"]) and not digests._in_rows(arrays["small"])
  record = digests.compute({"p": arrays})["items"]["p"]
  for name, x in arrays.items():
    assert record[name]["digest"] == _reference_digest(x), name


def test_digests_dispatched_later_are_awaited_by_another_thread():
  # CheckpointManager.save starts the digests after orbax's copy to the host; orbax's
  # commit thread asks for the record before that and must wait for it.
  x = jnp.asarray(np.random.RandomState(3).randn(300, 77).astype(np.float32))
  expected = digests.compute({"p": {"x": np.asarray(x)}})
  pending = digests.start({"p": {"x": x}}, dispatch=False)
  records = []
  waiter = threading.Thread(target=lambda: records.append(pending.result()))
  waiter.start()
  waiter.join(0.5)
  assert waiter.is_alive() and not records
  pending.dispatch()
  pending.dispatch()  # a second call does nothing
  x.delete()  # the caller's next step may donate the array once dispatched
  waiter.join(60)
  assert records == [expected]
  # A computation that cannot start is an error for the waiting thread too, not a hang.
  y = jnp.zeros(3)
  failing = digests.start({"p": {"y": y}}, dispatch=False)
  y.delete()
  with pytest.raises(RuntimeError, match="deleted"):
    failing.dispatch()
  with pytest.raises(RuntimeError, match="the array digests could not be computed"):
    failing.result()
  cancelled = digests.start({"p": {"x": jnp.zeros(3)}}, dispatch=False)
  cancelled.cancel("the checkpoint save failed before they started")
  cancelled.dispatch()  # does nothing after cancel
  with pytest.raises(RuntimeError, match="could not be computed: the checkpoint save failed"):
    cancelled.result()


def test_compare_names_each_array_that_differs():
  tree = {"a": np.ones((2, 3), np.float32), "b": {"c": np.zeros(4, np.float32)}}
  stored = digests.compute({"params": tree})
  assert digests.compare(stored, digests.compute({"params": tree})) == []
  damaged = {"a": tree["a"], "b": {"c": np.array([0, 0, 1e33, 0], np.float32)}}
  problems = digests.compare(stored, digests.compute({"params": damaged}))
  assert [(item, name) for item, name, _ in problems] == [("params", "b/c")]
  assert "when saved (shape [4], float32)" in problems[0][2]
  other = dict(stored, algorithm="sha256")
  assert "cannot check" in digests.compare(other, stored)[0][2]


def test_digest_does_not_depend_on_the_sharding():
  # A checkpoint written on a mesh must verify when restored on another: 4 CPU devices, the
  # same array whole, split by rows, by columns and on both axes.
  script = textwrap.dedent("""
      import json
      import numpy as np, jax
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from xltransfer.checkpoints import digests
      mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
      for shape in [(8, 12), (256, 96)]:  # (256, 96): in rows of 32 when replicated
        x = np.random.RandomState(1).randn(*shape).astype(np.float32)
        found, in_rows = set(), set()
        for spec in [P(), P("a"), P(None, "b"), P("a", "b"), P(("a", "b"))]:
          placed = jax.device_put(x, NamedSharding(mesh, spec))
          in_rows.add(digests._in_rows(placed))
          found.add(digests.compute({"p": {"x": placed}})["items"]["p"]["x"]["digest"])
        found.add(digests.compute({"p": {"x": x}})["items"]["p"]["x"]["digest"])
        print(json.dumps([len(jax.devices()), sorted(in_rows), sorted(found)]))
      """)
  proc = subprocess.run([sys.executable, "-c", script], env=helpers.train_env(4),
                        cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  small, large = [json.loads(line) for line in proc.stdout.strip().splitlines()]
  # One digest per array, whatever the sharding; the large one took both programs.
  assert small[:2] == [4, [False]] and len(small[2]) == 1, small
  assert large[:2] == [4, [False, True]] and len(large[2]) == 1, large


# ---- trainer checkpoints ----

def _train(model_dir, total_steps, learning_rate=1e-3, fallback=False, period=1):
  model = EncoderDecoderModel(get_config("tiny"))
  dataset = input_lib.DatasetConfig("xlt_test_copy", {"inputs": 32, "targets": 32},
                                    batch_size=8, shuffle=False)
  return run.train(
      model_dir=str(model_dir), model=model, train_dataset=dataset, total_steps=total_steps,
      log_period=1, learning_rate=learning_rate_schedule(base_learning_rate=learning_rate),
      checkpoint_manager=functools.partial(checkpointing.CheckpointManager, period=period,
                                           fallback_to_verified_checkpoint=fallback))


def _read_array(params_dir, name):
  """One array of an orbax params item, read straight through tensorstore (fresh cache)."""
  spec = {"driver": "zarr", "path": name.replace("/", "."),
          "kvstore": {"driver": "ocdbt", "base": f"file://{params_dir}/"}}
  return ts.open(spec, context=ts.Context()).result().read().result()


def _flip_bytes_in_array_data(step_dir, name):
  """Flips 4 bytes inside the stored (zstd-compressed) chunk of array `name`, in the OCDBT
  data file orbax wrote it to, keeping the file's size, at a place where orbax still decodes
  the chunk without complaint into other values: the silent corruption of issue 13 #4.
  Returns (data file, values before, values orbax reads now)."""
  params_dir = os.path.join(step_dir, "params")
  kvstore = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{params_dir}/"}).result()
  chunk = kvstore.read(name.replace("/", ".").encode() + b"/0.0").result().value
  assert len(chunk) > 1000, "expected the array's data in one chunk"
  data_files = [f for f in glob.glob(os.path.join(params_dir, "**", "d", "*"), recursive=True)
                if chunk in open(f, "rb").read()]
  assert len(data_files) == 1, data_files
  data_file = data_files[0]
  original = open(data_file, "rb").read()
  start = original.find(chunk)
  before = _read_array(params_dir, name)
  for fraction in (0.3, 0.7, 0.1, 0.9, 0.6):  # a few places: some break zstd's decoding
    damaged = bytearray(original)
    position = start + int(len(chunk) * fraction)
    for i in range(4):
      damaged[position + i] ^= 0xFF
    with open(data_file, "wb") as f:
      f.write(damaged)
    assert os.path.getsize(data_file) == len(original)
    try:
      after = _read_array(params_dir, name)
    except ValueError:
      continue
    if not np.array_equal(before, after):
      return data_file, before, after
  raise AssertionError("no byte flip in the chunk decoded silently")


def _checkpoints(model_dir):
  return sorted(d for d in os.listdir(model_dir) if "checkpoint_" in d)


@pytest.mark.slow
def test_damaged_latest_checkpoint_is_refused_then_fallen_back_from(tmp_path, caplog):
  model_dir = tmp_path / "run"
  _train(model_dir, total_steps=2)
  step_dir = str(model_dir / "checkpoint_2")
  data_file, before, after = _flip_bytes_in_array_data(step_dir, EMBEDDING)
  # Without the digests orbax restores the damaged checkpoint silently, with other values.
  restored = helpers.load_params(step_dir)
  np.testing.assert_array_equal(restored["token_embedder"]["embedding"], after)
  assert not np.array_equal(restored["token_embedder"]["embedding"], before)

  with pytest.raises(checkpointing.DamagedCheckpointError) as refused:
    _train(model_dir, total_steps=3)
  message = str(refused.value)
  assert f"{step_dir} is damaged: 1 array(s) do not match the digests" in message
  assert f"params array '{EMBEDDING}' (in {step_dir}/params)" in message
  assert data_file.startswith(f"{step_dir}/params/")
  assert ("rerun the same command with --gin.xltransfer.train.CheckpointManager."
          "fallback_to_verified_checkpoint=True") in message
  assert f"trying {model_dir}/checkpoint_1 first" in message
  assert _checkpoints(model_dir) == ["checkpoint_1", "checkpoint_2"]  # nothing moved or written

  caplog.clear()
  with caplog.at_level(logging.INFO):
    result = _train(model_dir, total_steps=3, fallback=True)
  assert result["status"] == "completed" and result["step"] == 3
  assert (f"checkpoint {step_dir} is damaged" in caplog.text and
          f"resuming from {model_dir}/checkpoint_1, which verifies" in caplog.text)
  assert f"resuming from MODEL_DIR's latest checkpoint {model_dir}/checkpoint_1 (step 1" in (
      caplog.text)
  assert _checkpoints(model_dir) == ["checkpoint_1", "checkpoint_2", "checkpoint_3",
                                     "damaged_checkpoint_2"]
  # The step was trained again from checkpoint_1: the new checkpoint_2 verifies.
  assert np.array_equal(helpers.load_params(step_dir)["token_embedder"]["embedding"], before)


@pytest.mark.slow
def test_undecodable_array_data_is_reported_as_damage(tmp_path):
  model_dir = tmp_path / "run"
  _train(model_dir, total_steps=1)
  step_dir = model_dir / "checkpoint_1"
  data_file = max(glob.glob(str(step_dir / "params" / "**" / "d" / "*"), recursive=True),
                  key=os.path.getsize)
  with open(data_file, "r+b") as f:  # zero the whole file, keeping its size
    f.write(bytes(os.path.getsize(data_file)))
  with pytest.raises(checkpointing.DamagedCheckpointError) as refused:
    _train(model_dir, total_steps=2)
  message = str(refused.value)
  assert re.search(f"{step_dir} is damaged: params array '[a-z0-9_/]+' \\(chunk [0-9.]+\\) in "
                   f"{step_dir}/params/ cannot be decoded: ZSTD", message), message
  assert "MODEL_DIR holds no earlier checkpoint to fall back to" in message
  assert "'driver'" not in message  # the cause, not tensorstore's spec dump


def _without_digests(step_dir):
  """A checkpoint as xltransfer wrote it before digests existed: the same items but digests."""
  shutil.rmtree(os.path.join(step_dir, checkpointing.DIGESTS_ITEM))


@pytest.fixture(scope="module")
def tiny_trainer():
  model = EncoderDecoderModel(get_config("tiny"))
  optimizer = Adafactor().create(learning_rate_schedule(), model.abstract_params(),
                                 model.param_logical_axes())
  return Trainer(model, optimizer, create_partitioner())


@pytest.mark.slow
def test_checkpoint_without_digests_restores_with_a_log_line(tiny_trainer, tmp_path, caplog):
  trainer = tiny_trainer
  state = trainer.init_state(3)
  manager = checkpointing.CheckpointManager(str(tmp_path), period=1, async_save=False)
  manager.save(state, 5, {"run": "x"}, force=True)
  manager.wait_until_finished()
  assert manager.describe_latest_checkpoint() == (
      f"the last verified checkpoint is {tmp_path}/checkpoint_0")
  _without_digests(manager.step_dir(0))
  reader = checkpointing.CheckpointManager(str(tmp_path), period=1)
  with caplog.at_level(logging.INFO):
    restored, position = reader.restore(0, trainer.abstract_state, trainer.state_shardings)
  assert position == 5
  for a, b in zip(jax.tree.leaves(to_host(restored)), jax.tree.leaves(to_host(state))):
    np.testing.assert_array_equal(a, b)
  assert (f"checkpoint {tmp_path}/checkpoint_0 has no array digests (it was written before "
          "xltransfer recorded them): restored WITHOUT verification, it could not be verified"
          ) in caplog.text
  assert reader.describe_latest_checkpoint() == (
      f"the latest checkpoint is {tmp_path}/checkpoint_0 (restored without verification: it "
      "has no digests)")
  # A manager that has neither written nor restored it does not vouch for it either.
  assert "(not verified: this run neither wrote nor restored it)" in (
      checkpointing.CheckpointManager(str(tmp_path)).describe_latest_checkpoint())


@pytest.mark.parametrize("with_digests", [True, False])
@pytest.mark.slow
def test_nan_guard_calls_only_a_verified_checkpoint_verified(tmp_path, with_digests):
  # A learning rate of 1e30: step 1's loss is finite and its checkpoint is written; its
  # update blows the parameters up, so the resumed run's first loss (step 2) overflows.
  model_dir = tmp_path / "run"
  _train(model_dir, total_steps=1, learning_rate=1e30)
  if not with_digests:
    _without_digests(str(model_dir / "checkpoint_1"))
  with pytest.raises(run.NonFiniteLossError) as stopped:
    _train(model_dir, total_steps=4, learning_rate=1e30, period=100)
  message = str(stopped.value)
  assert "non-finite (NaN/inf) at step 2" in message
  assert "good checkpoint" not in message
  if with_digests:
    assert f"the last verified checkpoint is {model_dir}/checkpoint_1" in message
  else:
    assert (f"the latest checkpoint is {model_dir}/checkpoint_1 (restored without "
            "verification: it has no digests)") in message


@pytest.mark.slow
def test_cli_exits_2_naming_the_array_and_its_fallback_command_works(tmp_path):
  model_dir = str(tmp_path / "run")
  period = "--gin.xltransfer.train.CheckpointManager.period=1"
  helpers.run_train(model_dir, "--gin.TRAIN_STEPS=2", period)
  _flip_bytes_in_array_data(os.path.join(model_dir, "checkpoint_2"), EMBEDDING)
  refused = helpers.run_train(model_dir, "--gin.TRAIN_STEPS=3", period, check=False)
  assert refused.returncode == 2, refused.stderr[-4000:]
  assert f"params array '{EMBEDDING}'" in refused.stderr
  assert "Traceback" not in refused.stderr
  fallback = re.findall(r"rerun the same command with (--gin\.\S+);", refused.stderr)
  assert fallback == ["--gin.xltransfer.train.CheckpointManager."
                      "fallback_to_verified_checkpoint=True"]
  resumed = helpers.run_train(model_dir, "--gin.TRAIN_STEPS=3", period, fallback[0])
  assert f"resuming from {model_dir}/checkpoint_1, which verifies" in resumed.stderr
  assert os.path.isdir(os.path.join(model_dir, "damaged_checkpoint_2"))
  assert os.path.isdir(os.path.join(model_dir, "checkpoint_3"))
