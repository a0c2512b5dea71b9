"""The trainer as `xltransfer plan` uses it: built by `run.build_trainer`, its own train step
lowered ahead of time on abstract inputs, and the split of `--gin.` flags it shares with train."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from xltransfer.errors import ConfigError
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer import gin_utils
from xltransfer.train import run
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.trainer import to_host

LENGTHS = seqio.EncDecFeatureConverter(pack=False).get_model_feature_lengths(
    {"inputs": 16, "targets": 8})


def _batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  batch = {name: rng.integers(2, 100, (batch_size, length), dtype=np.int32)
           for name, length in LENGTHS.items()}
  batch["decoder_loss_weights"] = np.ones_like(batch["decoder_target_tokens"])
  return batch


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def trainer():
  model = EncoderDecoderModel(get_config("tiny"))
  return run.build_trainer(model, learning_rate=learning_rate_schedule("constant", 0.01),
                           optimizer=Adafactor(min_dim_size_to_factor=32), random_seed=3)


def test_build_trainer_fills_in_the_defaults():
  model = EncoderDecoderModel(get_config("tiny"))
  trainer = run.build_trainer(model)
  assert dict(trainer.partitioner.mesh.shape) == {"data": len(jax.devices()), "model": 1}
  assert trainer.num_microbatches == 1 and trainer.dropout_seed == 0
  # The default schedule is the one `train` uses without a gin binding.
  assert float(trainer.optimizer.learning_rate(0)) == float(learning_rate_schedule()(0))


def test_abstract_batch_is_sharded_and_checked(trainer):
  batch = trainer.abstract_batch(8, LENGTHS)
  assert {k: v.shape for k, v in batch.items()} == {k: (8, n) for k, n in LENGTHS.items()}
  assert all(v.dtype == jnp.int32 and v.sharding == trainer.partitioner.batch_sharding(2)
             for v in batch.values())
  accumulating = run.build_trainer(trainer.model, trainer.partitioner, num_microbatches=2)
  with pytest.raises(ConfigError, match="BATCH_SIZE 7 must be a multiple of the 1 data-parallel "
                                        "shards × 2 microbatches"):
    accumulating.abstract_batch(7, LENGTHS)


@pytest.mark.slow
def test_lowered_train_step_compiles_and_runs(trainer):
  """The ahead-of-time program is a working train step: memory analysis, then one step."""
  compiled = trainer.lower_train_step(None, trainer.abstract_batch(8, LENGTHS)).compile()
  memory = compiled.memory_analysis()
  # The whole state is donated: its buffers are reused for the new state.
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state))
  assert memory.alias_size_in_bytes >= state_bytes
  batch = {k: jax.device_put(v, trainer.partitioner.batch_sharding(2))
           for k, v in _batch(8).items()}
  initial = to_host(trainer.init_state(0).params)
  with trainer.partitioner.activation_context():
    state, metrics = compiled(trainer.init_state(0), batch)
  assert int(to_host(state.step)) == 1 and bool(to_host(metrics["finite"]))
  assert float(to_host(metrics["num_tokens"])) == 8 * LENGTHS["decoder_target_tokens"]
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(to_host(state.params)), jax.tree.leaves(initial)))
  assert moved > 0


def test_lowering_takes_an_explicit_abstract_state(trainer):
  state = trainer.sharded_abstract_state()
  assert jax.tree.leaves(state)[0].sharding == jax.tree.leaves(trainer.state_shardings)[0]
  lowered = trainer.lower_train_step(state, trainer.abstract_batch(4, LENGTHS))
  (state_info, batch_info), _ = lowered.args_info
  # The state is donated (updated in place on the devices), the batch is not.
  assert all(info.donated for info in jax.tree.leaves(state_info))
  assert set(batch_info) == set(LENGTHS)
  assert not any(info.donated for info in batch_info.values())


def test_split_gin_flags_is_shared_by_the_commands():
  rest, bindings = gin_utils.split_gin_flags(
      ["--gin_file=a.gin", "--gin.TRAIN_STEPS=3", "--gin.MODEL_DIR", "'/tmp/x'", "--json"])
  assert rest == ["--gin_file=a.gin", "--json"]
  assert bindings == ["TRAIN_STEPS = 3", "MODEL_DIR = '/tmp/x'"]
  with pytest.raises(ConfigError, match="expected --gin.NAME=VALUE"):
    gin_utils.split_gin_flags(["--gin.TRAIN_STEPS"])
