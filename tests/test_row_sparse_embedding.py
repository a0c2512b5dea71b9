"""The trainer's row-sparse token-embedding gradient (`xltransfer/train/row_sparse.py`): the
same train steps as the dense gradient's, where it is used, and errors where it cannot be."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.errors import ConfigError
from xltransfer.model import layers
from xltransfer.model.config import get_config
from xltransfer.model.dual_encoder import CANDIDATE_FEATURE, QUERY_FEATURE, DualEncoderModel
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.partitioning import create_partitioner
from xltransfer.train import row_sparse
from xltransfer.train import trainer as trainer_lib
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.trainer import Trainer, to_host

# The tiny model's table is [1024, 64]: factored once dims of 32 are (mT5's always are).
FACTOR_ALL = dict(min_dim_size_to_factor=32)


def _optimizer(model, **kwargs):
  return Adafactor(**dict(FACTOR_ALL, **kwargs)).create(
      learning_rate_schedule("constant", 0.01), model.abstract_params(),
      model.param_logical_axes())


def _seq2seq_batches(seed, count=3):
  """Batches that use a few hundred of the 1024 ids (token 0 is padding)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    targets = rng.integers(2, 300, (8, 12)).astype(np.int32)
    inputs = rng.integers(2, 500, (8, 24)).astype(np.int32)
    inputs[:, 20:] = 0
    out.append({"encoder_input_tokens": inputs,
                "decoder_input_tokens": np.concatenate(
                    [np.zeros((8, 1), np.int32), targets[:, :-1]], axis=1),
                "decoder_target_tokens": targets,
                "decoder_loss_weights": np.ones((8, 12), np.float32)})
  return out


def _dual_encoder_batches(seed, count=3):
  rng = np.random.default_rng(seed)
  return [{QUERY_FEATURE: rng.integers(2, 400, (8, 16)).astype(np.int32),
           CANDIDATE_FEATURE: rng.integers(2, 400, (8, 16)).astype(np.int32)}
          for _ in range(count)]


def _train(model, optimizer, batches, row_sparse_embedding, **trainer_kwargs):
  trainer = Trainer(model, optimizer, create_partitioner(),
                    row_sparse_embedding=row_sparse_embedding, **trainer_kwargs)
  state = trainer.state_from_params(jax.jit(model.init)(jax.random.PRNGKey(0)))
  for batch in batches:
    state, metrics = trainer.train_step(state, batch)
  return to_host(state), to_host(metrics)


CASES = {
    "seq2seq": (lambda: EncoderDecoderModel(get_config("tiny")), {}, {}, _seq2seq_batches),
    "microbatches": (lambda: EncoderDecoderModel(get_config("tiny")), {},
                     {"num_microbatches": 2}, _seq2seq_batches),
    # The global norm clips (it is ~300 here): the clip reads the row-sparse gradient.
    "global_norm_clip": (lambda: EncoderDecoderModel(get_config("tiny")),
                         {"global_norm_clip_threshold": 1.0}, {}, _seq2seq_batches),
    "dropout_bf16": (lambda: EncoderDecoderModel(
        get_config("tiny", dropout_rate=0.1, dtype="bfloat16")), {}, {}, _seq2seq_batches),
    "dual_encoder": (lambda: DualEncoderModel(get_config("tiny")), {}, {},
                     _dual_encoder_batches),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_row_sparse_steps_equal_dense_steps(case):
  make_model, optimizer_kwargs, trainer_kwargs, make_batches = CASES[case]
  model = make_model()
  optimizer = _optimizer(model, **optimizer_kwargs)
  batches = make_batches(seed=1)
  dense_state, dense_metrics = _train(model, optimizer, batches, False, **trainer_kwargs)
  sparse_state, sparse_metrics = _train(model, optimizer, batches, True, **trainer_kwargs)
  for key, value in dense_metrics.items():
    np.testing.assert_allclose(sparse_metrics[key], value, rtol=1e-5, err_msg=key)
  flat_dense = jax.tree_util.tree_flatten_with_path(dense_state)[0]
  for (path, dense), sparse in zip(flat_dense, jax.tree.leaves(sparse_state)):
    np.testing.assert_allclose(sparse, dense, rtol=2e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  # Rows that no batch looks up keep their initial values exactly; the others moved.
  initial = np.asarray(jax.jit(model.init)(jax.random.PRNGKey(0))["token_embedder"]["embedding"])
  table = sparse_state.params["token_embedder"]["embedding"]
  used = np.unique(np.concatenate([b[name].reshape(-1) for b in batches
                                   for name in model.token_id_features]))
  unused = np.setdiff1d(np.arange(table.shape[0]), used)
  np.testing.assert_array_equal(table[unused], initial[unused])
  assert np.abs(table[used] - initial[used]).max(axis=1).min() > 0


def test_cpu_targets_use_it_by_default_and_accelerators_do_not(monkeypatch):
  """The default (None) decides at trace time from the compile target."""
  model = EncoderDecoderModel(get_config("tiny"))
  trainer = Trainer(model, _optimizer(model), create_partitioner())
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in _seq2seq_batches(0, 1)[0].items()}
  for platform, expected in (("cpu", True), ("tpu", False), ("gpu", False)):
    monkeypatch.setattr(trainer_lib, "target_platform", lambda p=platform: p)
    assert (trainer._looked_up_rows(params, batch) is not None) is expected, platform
  forced_off = Trainer(model, _optimizer(model), create_partitioner(), row_sparse_embedding=False)
  monkeypatch.setattr(trainer_lib, "target_platform", lambda: "cpu")
  assert forced_off._looked_up_rows(params, batch) is None


def test_collected_ids_are_sorted_distinct_and_padded_out_of_range():
  params = {"token_embedder": {"embedding": jnp.arange(10 * 2, dtype=jnp.float32).reshape(10, 2)}}
  batch = {"a": jnp.array([[3, 7, 3]]), "b": jnp.array([[0, 7]])}
  looked_up = row_sparse.LookedUpRows.collect(("token_embedder", "embedding"), params, batch,
                                              ("a", "b"))
  np.testing.assert_array_equal(looked_up.ids, [0, 3, 7, 10, 10])
  rows = looked_up.trainable(params)["token_embedder"]["embedding"]
  np.testing.assert_array_equal(rows[:3], [[0, 1], [6, 7], [14, 15]])
  assert np.isnan(rows[3:]).all()  # pad ids are out of the table, as a lookup of them is


def test_a_token_that_was_not_collected_reads_nan_not_another_row():
  ids = jnp.array([2, 5, 9, 12])  # 12: a pad id (vocabulary of 12)
  rows = jnp.arange(4 * 3, dtype=jnp.float32).reshape(4, 3)
  looked_up = layers.take_looked_up_rows(ids, rows, jnp.array([[5, 2], [9, 9]]))
  np.testing.assert_array_equal(looked_up, [[rows[1], rows[0]], [rows[2], rows[2]]])
  for missing in (0, 4, 11, 13):
    assert np.isnan(layers.take_looked_up_rows(ids, rows, jnp.array([missing]))).all(), missing


def test_tied_logits_cannot_use_looked_up_rows():
  embed = layers.Embed(16, 4)
  params = embed.init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))["params"]
  with_rows = {**params, layers.LOOKED_UP_IDS: jnp.array([1, 3]),
               layers.LOOKED_UP_ROWS: jnp.ones((2, 4))}
  np.testing.assert_array_equal(
      embed.apply({"params": with_rows}, jnp.array([3, 1])), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="whole table's gradient"):
    embed.apply({"params": with_rows}, jnp.ones((2, 4)), method=layers.Embed.attend)


@pytest.mark.parametrize("model_overrides, optimizer_kwargs, reason", [
    ({"logits_via_embedding": True}, {}, "every row of its token embedding"),
    ({}, {"momentum": 0.9}, "momentum moves embedding rows"),
    ({}, {"factored": False}, "factored second moment for token_embedder/embedding"),
])
def test_forcing_it_where_it_cannot_apply_is_a_config_error(model_overrides, optimizer_kwargs,
                                                           reason):
  model = EncoderDecoderModel(get_config("tiny", **model_overrides))
  optimizer = _optimizer(model, **optimizer_kwargs)
  with pytest.raises(ConfigError, match=reason):
    Trainer(model, optimizer, create_partitioner(), row_sparse_embedding=True)
  # The default quietly keeps the dense gradient.
  trainer = Trainer(model, optimizer, create_partitioner())
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in _seq2seq_batches(0, 1)[0].items()}
  assert trainer._looked_up_rows(params, batch) is None


_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
import test_row_sparse_embedding as t
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.partitioning import create_mesh, create_partitioner
from xltransfer.train.trainer import Trainer, to_host
model = EncoderDecoderModel(get_config("tiny"))
optimizer = t._optimizer(model)
partitioner = create_partitioner(create_mesh(data=2, model=2))
batches = t._seq2seq_batches(seed=2, count=2)
states = {}
for sparse in (False, True):
  trainer = Trainer(model, optimizer, partitioner, row_sparse_embedding=sparse)
  state = trainer.init_state(0)
  print("TABLE_SHARDING", state.params["token_embedder"]["embedding"].sharding.spec)
  for batch in batches:
    state, _ = trainer.train_step(state, batch)
  states[sparse] = to_host(state)
worst = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(jax.tree.leaves(states[False]), jax.tree.leaves(states[True])))
moved = float(np.max(np.abs(states[True].params["token_embedder"]["embedding"]
                            - to_host(Trainer(model, optimizer, partitioner).init_state(0)).params[
                                "token_embedder"]["embedding"])))
print("WORST", worst, "MOVED", moved)
"""


@pytest.mark.slow
def test_row_sparse_steps_equal_dense_steps_on_a_sharded_mesh(tmp_path):
  """On a 2 x 2 (data x model) mesh of host devices the table is sharded over the vocabulary;
  the gather of the looked-up rows and the scatter of their update go through GSPMD."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                         os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  shardings = [line for line in out.stdout.splitlines() if line.startswith("TABLE_SHARDING")]
  assert shardings and all("model" in line for line in shardings), out.stdout
  fields = out.stdout.split("WORST")[1].split()
  worst, moved = float(fields[0]), float(fields[2])
  assert moved > 1e-3 and worst < 1e-5, (worst, moved)
