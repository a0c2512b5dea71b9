"""The dual encoder's parameters and checkpoints: it holds only the token embedding and the
encoder (params and optimizer state), loads every kind of seq2seq checkpoint with the decoder
left unread, and a MODEL_DIR of the other model kind is refused with both kinds named."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")

import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer import cli  # noqa: E402
from xltransfer.checkpoints import native, tree_utils  # noqa: E402
from xltransfer.errors import CheckpointError, ConfigError  # noqa: E402
from xltransfer.model.config import get_config  # noqa: E402
from xltransfer.model.dual_encoder import DualEncoderModel  # noqa: E402
from xltransfer.model.models import EncoderDecoderModel  # noqa: E402
from xltransfer.partitioning import create_partitioner  # noqa: E402
from xltransfer.train import checkpointing  # noqa: E402
from xltransfer.checkpoints import loading
from xltransfer.train.run import build_trainer  # noqa: E402
from xltransfer.train.state import TrainState  # noqa: E402
from xltransfer.train.trainer import to_host  # noqa: E402


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def seq2seq_params():
  """A tiny mT5's parameters (numpy), the seq2seq checkpoint a dual encoder starts from."""
  return to_host(EncoderDecoderModel(get_config("tiny")).init(jax.random.PRNGKey(3)))


def _without_decoder(params):
  return {k: v for k, v in params.items() if k != "decoder"}


def _assert_same(tree_a, tree_b):
  flat_a, flat_b = tree_utils.flatten_tree(tree_a), tree_utils.flatten_tree(tree_b)
  assert sorted(flat_a) == sorted(flat_b)
  for name, value in flat_b.items():
    np.testing.assert_array_equal(np.asarray(flat_a[name]), np.asarray(value), err_msg=name)


def _paths(tree):
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_params_and_optimizer_state_hold_no_decoder():
  model = DualEncoderModel(get_config("tiny"))
  assert set(model.abstract_params()) == {"token_embedder", "encoder"}
  assert jax.tree.structure(model.param_logical_axes(),
                            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) == (
      jax.tree.structure(model.abstract_params()))
  trainer = build_trainer(model)
  state_paths = _paths(trainer.abstract_state)
  assert any("opt_state" in p and "encoder" in p for p in state_paths)
  assert not [p for p in state_paths if "decoder" in p]
  # The seq2seq model's state has the decoder, so the dual encoder's is strictly smaller.
  full = EncoderDecoderModel(get_config("tiny")).abstract_params()
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert count(model.abstract_params()) == count(full) - count(full["decoder"])
  # Encoder-only layouts also scan.
  scanned = DualEncoderModel(get_config("tiny", scan_layers=True)).abstract_params()
  assert set(scanned["encoder"]) == {"layers", "relpos_bias", "encoder_norm"}


def test_what_needs_a_decoder_is_a_config_error():
  model = DualEncoderModel(get_config("tiny"))
  params = model.init(jax.random.PRNGKey(0))
  tokens = jnp.ones((2, 8), jnp.int32)
  for call in (lambda: model.greedy_decode(params, tokens, 4),
               lambda: model.decoding_weights(params),
               lambda: model.beam_search(params, tokens, 4, 2),
               lambda: model.score_targets(params, {"encoder_input_tokens": tokens,
                                                    "decoder_input_tokens": tokens,
                                                    "decoder_target_tokens": tokens})):
    with pytest.raises(ConfigError, match="the dual encoder has no decoder"):
      call()
  # What retrieval evaluation uses works on the encoder-only tree.
  assert model.encode(params, tokens).shape == (2, model.config.emb_dim)


def _write_trainer_run(directory, params):
  manager = checkpointing.CheckpointManager(str(directory), period=1, async_save=False)
  state = TrainState(step=jnp.int32(3), params=params, opt_state={"v": jnp.zeros((2,))})
  manager.save(state, 0, checkpointing.run_identity(get_config("tiny"), "t", None), force=True)
  manager.close()
  return str(directory)


def _write_t5x_orbax(directory, params):
  # T5X's orbax CheckpointManager writes the train state as the item `state`.
  ocp.PyTreeCheckpointer().save(str(directory / "state"), {
      "target": params, "state": {"step": np.int32(5)}})
  return str(directory)


def _write_hf(directory, params):
  pytest.importorskip("safetensors")
  from xltransfer.checkpoints import hf  # pylint: disable=import-outside-toplevel
  hf.save_hf_checkpoint(params, get_config("tiny"), str(directory))
  return str(directory)


def _write_native(directory, params):
  native.save_params(params, get_config("tiny"), str(directory))
  return str(directory)


@pytest.mark.parametrize("fmt,kind", [
    ("trainer", "xltransfer trainer checkpoint"), ("native", "xltransfer params checkpoint"),
    ("t5x", "T5X checkpoint"), ("hf", "HF checkpoint"), ("hf_scanned", "HF checkpoint")])
def test_seq2seq_checkpoints_load_without_their_decoder(tmp_path, seq2seq_params, fmt, kind):
  writers = {"trainer": _write_trainer_run, "native": _write_native, "t5x": _write_t5x_orbax,
             "hf": _write_hf, "hf_scanned": _write_hf}
  path = writers[fmt](tmp_path / fmt, seq2seq_params)
  model = DualEncoderModel(get_config("tiny", scan_layers=fmt == "hf_scanned"))
  shardings = create_partitioner().shardings(model.param_logical_axes())
  params, description = loading.load_initial_params(path, model, shardings)
  assert description.startswith(kind)
  assert set(params) == {"token_embedder", "encoder"}
  expected = _without_decoder(seq2seq_params)
  if fmt == "hf_scanned":
    from xltransfer.checkpoints import layout  # pylint: disable=import-outside-toplevel
    expected = layout.stack_layers(expected, model.config)
  _assert_same(to_host(params), expected)


def test_dual_encoder_checkpoint_in_a_seq2seq_model_names_the_gin_file(tmp_path, seq2seq_params):
  path = _write_native(tmp_path / "dual", _without_decoder(seq2seq_params))
  model = EncoderDecoderModel(get_config("tiny"))
  shardings = create_partitioner().shardings(model.param_logical_axes())
  with pytest.raises(CheckpointError, match=r"no decoder: it is a dual encoder's .* load it with "
                                            r"models/dual_encoder.gin"):
    loading.load_initial_params(path, model, shardings)
  # Only the decoder may be left out: other surplus arrays are still an error.
  extra = dict(seq2seq_params, head={"kernel": np.zeros((2, 2), np.float32)})
  path = _write_native(tmp_path / "extra", extra)
  dual = DualEncoderModel(get_config("tiny"))
  with pytest.raises(CheckpointError, match=r"unexpected \['head/kernel'\]"):
    loading.load_initial_params(
        path, dual, create_partitioner().shardings(dual.param_logical_axes()))


# ---- MODEL_DIR identity: the model kind ----

def _write_checkpoint(model_dir, identity):
  """A trainer checkpoint with the given identity (its arrays never get restored: the
  identity check comes first)."""
  manager = checkpointing.CheckpointManager(str(model_dir), period=1, async_save=False)
  state = TrainState(step=jnp.int32(4), params={"w": jnp.ones((2, 2))},
                     opt_state={"v": jnp.zeros((2,))})
  manager.save(state, input_position=4, identity=identity, force=True)
  manager.close()


def _train(capsys, model_dir, dual: bool):
  argv = ["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
          *(["--gin_file=models/dual_encoder.gin"] if dual else []),
          f"--gin_file={os.path.join(FIXTURES, 'tiny_test.gin')}",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=8"]
  code = cli.main(argv)
  return code, capsys.readouterr().err


@pytest.mark.parametrize("stored,resumed_as_dual", [("seq2seq", True), ("dual_encoder", False),
                                                    (None, True)])
def test_model_dir_of_the_other_model_kind_is_refused(capsys, tmp_path, stored, resumed_as_dual):
  model_dir = tmp_path / "run"
  identity = checkpointing.run_identity(get_config("tiny"), "xlt_test_copy", None,
                                        stored or "seq2seq")
  if stored is None:  # Written before the kind was recorded: a seq2seq run.
    del identity[checkpointing.MODEL_KIND_KEY]
  _write_checkpoint(model_dir, identity)
  code, err = _train(capsys, model_dir, dual=resumed_as_dual)
  assert code == 2
  old, new = (stored or "seq2seq"), ("dual_encoder" if resumed_as_dual else "seq2seq")
  assert (f"MODEL_DIR {model_dir} holds a {old} model's checkpoint (step 4), but this run "
          f"trains a {new} model") in err
  assert f"model_kind: checkpoint has '{old}', this run has '{new}'" in err
  assert f"set INITIAL_CHECKPOINT_PATH to {model_dir}" in err


def test_model_dir_without_a_recorded_kind_resumes_as_seq2seq(tmp_path):
  identity = checkpointing.run_identity(get_config("tiny"), "xlt_test_copy", None)
  legacy = {k: v for k, v in identity.items() if k != checkpointing.MODEL_KIND_KEY}
  _write_checkpoint(tmp_path, legacy)
  manager = checkpointing.CheckpointManager(str(tmp_path))
  manager.check_identity(4, identity)  # No error: missing means seq2seq.
  with pytest.raises(CheckpointError, match="holds a seq2seq model's checkpoint"):
    manager.check_identity(4, dict(identity, model_kind="dual_encoder"))
  manager.close()
