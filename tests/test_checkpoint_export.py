"""Exporting trained models: `xltransfer convert xl-to-hf` / `xl-to-t5x` from trainer runs.

The T5X side is checked against T5X's own definitions: the fixture
`../shared/fixtures/t5x/test_t5_tiny.checkpoint_0` was written by T5X (tree structure and
version), and the Adafactor state shapes follow `t5x/adafactor.py` `init_param_state`.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer import cli
from xltransfer.checkpoints import native, run_dir, t5x, t5x_export, tree_utils
from xltransfer.errors import CheckpointError, UserError
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.train import checkpointing
from xltransfer.train.state import TrainState

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")
SHARED_T5X = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "fixtures", "t5x")


def _flat(tree):
  return {k: np.asarray(v) for k, v in tree_utils.flatten_tree(tree).items()}


def _native(tmp_path, name="xl", **overrides):
  config = get_config("tiny", **overrides)
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(0))
  path = str(tmp_path / name)
  native.save_params(params, config, path)
  return path, params, config


# ---------------------------------------------------------------- T5X export


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("scanned_output", [False, True])
def test_t5x_export_reads_back_identically(tmp_path, scan_layers, scanned_output):
  src, params, config = _native(tmp_path, scan_layers=scan_layers)
  out = tmp_path / "t5x"
  args = ["convert", "xl-to-t5x", src, str(out)] + (["--scanned"] if scanned_output else [])
  assert cli.main(args) == 0
  checkpoint = t5x.read_t5x_checkpoint(str(out))
  assert (checkpoint.format, checkpoint.version, checkpoint.step) == ("legacy", 3, 0)
  names = checkpoint.param_names()
  assert any("/layers/" in n for n in names) == scanned_output
  assert any("/layers_0/" in n for n in names) == (not scanned_output)
  # Four Adafactor slots per parameter, as T5X keeps them.
  assert len(checkpoint.optimizer_state_names()) == 4 * len(names)
  # Large arrays are zarr directories named as T5X names them, small ones inline.
  assert (out / "target.token_embedder.embedding" / ".zarray").exists()
  assert not (out / "target.encoder.encoder_norm.scale").exists()
  # Read back through our T5X importer into the run's own layout: identical arrays.
  model = EncoderDecoderModel(config)
  loaded = t5x.load_t5x_params(str(out), model.abstract_params())
  want, got = _flat(params), _flat(loaded)
  assert set(want) == set(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_t5x_export_all_inline_or_all_tensorstore(tmp_path):
  src, params, config = _native(tmp_path)
  for name, limit in (("inline", 1 << 40), ("zarr", 0)):
    out = tmp_path / name
    t5x_export.save_t5x_checkpoint(params, config, str(out), step=7, inline_max_bytes=limit)
    zarr_dirs = [d for d in os.listdir(out) if d != "checkpoint"]
    assert (len(zarr_dirs) == 0) == (name == "inline")
    checkpoint = t5x.read_t5x_checkpoint(str(out))
    assert checkpoint.step == 7
    for key, value in _flat(params).items():
      np.testing.assert_array_equal(checkpoint.read_array("optimizer/target/" + key), value)


def test_adafactor_state_shapes_follow_t5x():
  # Rank <= 2 without a layers axis: T5X's size heuristic, factored when the second-largest
  # dim is >= 128 (t5x adafactor.py `_factored_dims`); v_row keeps the smaller dim.
  small = t5x_export.adafactor_state_shapes((8, 12), ("embed", "joined_kv"))
  assert small == {"m": (1,), "v": (8, 12), "v_col": (1,), "v_row": (1,)}
  embedding = t5x_export.adafactor_state_shapes((250112, 512), ("vocab", "embed"))
  assert embedding == {"m": (1,), "v": (1,), "v_row": (512,), "v_col": (250112,)}
  assert t5x_export.adafactor_state_shapes((512,), ("embed",))["v"] == (512,)
  # Scanned arrays use the logical factor rules: `layers` is a batch dim, always factored.
  kernel = t5x_export.adafactor_state_shapes((64, 2, 128), ("embed", "layers", "mlp"))
  assert kernel == {"m": (1,), "v": (1,), "v_row": (64, 2), "v_col": (2, 128)}
  norm = t5x_export.adafactor_state_shapes((64, 2), ("embed", "layers"))
  assert norm["v"] == (64, 2) and norm["v_row"] == (1,)
  with pytest.raises(UserError, match="logical axis 'bogus' of parameter enc/x"):
    t5x_export.adafactor_state_shapes((4, 2, 4), ("embed", "layers", "bogus"), "enc/x")


def _structure(contents):
  """Flat name -> shape of a T5X msgpack tree, arrays inline or as tensorstore specs."""
  flat = tree_utils.flatten_tree(
      contents, is_leaf=lambda v: isinstance(v, dict) and "driver" in v)
  return {name: (tuple(v["metadata"]["shape"]) if isinstance(v, dict) else np.shape(v))
          for name, v in flat.items()}


def test_t5x_export_mirrors_the_real_t5x_fixture(tmp_path):
  fixture = os.path.join(SHARED_T5X, "test_t5_tiny.checkpoint_0")
  if not os.path.exists(fixture):
    pytest.skip(f"{fixture} is absent (../shared is only beside the development checkout)")
  from flax import serialization  # pylint: disable=import-outside-toplevel
  with open(fixture, "rb") as f:
    reference = serialization.msgpack_restore(f.read())
  # The fixture's network: T5X's test_t5_tiny (d_model 8, 4 heads x 3, mlp 16, vocab 32128).
  config = get_config("tiny", vocab_size=32128, emb_dim=8, head_dim=3, mlp_dim=16)
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(0))
  t5x_export.save_t5x_checkpoint(params, config, str(tmp_path / "t5x"), step=0)
  with open(tmp_path / "t5x" / "checkpoint", "rb") as f:
    ours = serialization.msgpack_restore(f.read())
  assert ours["version"] == reference["version"] == 3
  assert _structure(ours) == _structure(reference)
  assert np.asarray(ours["optimizer"]["state"]["step"]).dtype == np.int32


# ---------------------------------------------------------------- errors


def test_destination_rules(tmp_path, capsys, monkeypatch):
  src, _, _ = _native(tmp_path)
  out = tmp_path / "out"
  out.mkdir()  # An empty destination is fine.
  assert cli.main(["convert", "xl-to-t5x", src, str(out)]) == 0
  for direction in ("xl-to-t5x", "xl-to-hf"):
    assert cli.main(["convert", direction, src, str(out)]) == 2
    assert f"{out}: already exists and is not empty" in capsys.readouterr().err
  before = sorted(os.listdir(out))
  # A failure part-way leaves the old destination as it was and no staging directory.
  calls = []

  def fail_after_a_few(self, name, array):
    calls.append(name)
    if len(calls) > 5:
      raise CheckpointError(f"simulated write failure at {name}")
    return original(self, name, array)

  original = t5x_export._Writer.__call__  # pylint: disable=protected-access
  monkeypatch.setattr(t5x_export._Writer, "__call__", fail_after_a_few)  # pylint: disable=protected-access
  assert cli.main(["convert", "xl-to-t5x", src, str(out), "--overwrite"]) == 2
  assert "simulated write failure" in capsys.readouterr().err
  assert sorted(os.listdir(out)) == before
  assert not os.path.exists(str(out) + ".partial")
  assert cli.main(["convert", "xl-to-t5x", src, str(tmp_path / "fresh")]) == 2
  assert not (tmp_path / "fresh").exists() and not (tmp_path / "fresh.partial").exists()
  monkeypatch.undo()
  assert cli.main(["convert", "xl-to-t5x", src, str(out), "--overwrite", "--scanned"]) == 0
  assert "target.encoder.layers.mlp.wo.kernel" in os.listdir(out)
  (tmp_path / "afile").write_text("x")
  assert cli.main(["convert", "xl-to-t5x", src, str(tmp_path / "afile"), "--overwrite"]) == 2
  assert "exists and is a file" in capsys.readouterr().err


def _write_trainer_checkpoint(model_dir, identity, params, step=3):
  manager = checkpointing.CheckpointManager(str(model_dir), period=1, async_save=False)
  state = TrainState(step=jnp.int32(step), params=params, opt_state={"v": jnp.zeros((2,))})
  manager.save(state, input_position=step, identity=identity, force=True)
  manager.wait_until_finished()
  manager.close()


def test_run_without_checkpoint_or_of_a_dual_encoder_is_refused(tmp_path, capsys):
  empty_run = tmp_path / "run"
  empty_run.mkdir()
  (empty_run / "operative_config.gin").write_text("")
  for direction in ("xl-to-hf", "xl-to-t5x"):
    assert cli.main(["convert", direction, str(empty_run), str(tmp_path / "o")]) == 2
    assert f"{empty_run}: no checkpoint to read" in capsys.readouterr().err
  assert cli.main(["convert", "xl-to-t5x", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
  assert f"{tmp_path / 'nope'}: no such checkpoint directory" in capsys.readouterr().err
  config = get_config("tiny")
  dual = tmp_path / "dual"
  identity = checkpointing.run_identity(config, "xlt_test_copy", None, "dual_encoder")
  _write_trainer_checkpoint(dual, identity, {"w": jnp.ones((2, 2))})
  for path in (dual, dual / "checkpoint_3"):
    assert cli.main(["convert", "xl-to-hf", str(path), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{dual / 'checkpoint_3'}: a dual_encoder run's checkpoint" in err
    assert "only seq2seq" in err
  assert not (tmp_path / "o").exists()


def test_trainer_checkpoint_gives_its_recorded_config_and_step(tmp_path):
  config = get_config("tiny", num_decoder_layers=1, scan_layers=True)
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(1))
  run = tmp_path / "run"
  _write_trainer_checkpoint(run, checkpointing.run_identity(config, "task", None), params, 9)
  trained = run_dir.load_trained_params(str(run))
  assert trained.step == 9 and trained.step_dir == str(run / "checkpoint_9")
  assert trained.config.num_decoder_layers == 1 and trained.config.scan_layers
  for name, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(trained.params)[name], value)
  assert cli.main(["convert", "xl-to-t5x", str(run), str(tmp_path / "t5x")]) == 0
  checkpoint = t5x.read_t5x_checkpoint(str(tmp_path / "t5x"))
  assert checkpoint.step == 9 and "decoder/layers_0/mlp/wo/kernel" in checkpoint.param_names()
  assert "decoder/layers_1/mlp/wo/kernel" not in checkpoint.param_names()


# ---------------------------------------------------------------- HF -> train -> HF


@pytest.mark.usefixtures("clean_gin")
def test_hf_train_hf_round_trip_keeps_names_and_shapes(tmp_path, capsys, monkeypatch):
  torch = pytest.importorskip("torch", reason="the hf extra (torch) is needed")
  transformers = pytest.importorskip("transformers", reason="the hf extra is needed")
  monkeypatch.syspath_prepend(FIXTURES)
  import train_fixture_tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  # A random HF mT5 with the tiny config (the builtin vocabulary's 1024 ids), untied head.
  torch.manual_seed(0)
  hf_config = transformers.MT5Config(vocab_size=1024, d_model=64, d_kv=16, d_ff=128,
                                     num_layers=2, num_decoder_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", decoder_start_token_id=0)
  model = transformers.MT5ForConditionalGeneration(hf_config)
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
  model.save_pretrained(tmp_path / "hf")
  original = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

  assert cli.main(["convert", "hf-to-xl", str(tmp_path / "hf"), str(tmp_path / "xl")]) == 0
  run = tmp_path / "run"
  code = cli.main(["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
                   f"--gin_file={os.path.join(FIXTURES, 'tiny_test.gin')}",
                   f"--gin.MODEL_DIR='{run}'", "--gin.TRAIN_STEPS=2",
                   f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'xl'}'",
                   "--gin.xltransfer.train.CheckpointManager.period=1",
                   "--gin.xltransfer.train.CheckpointManager.async_save=False"])
  assert code == 0, capsys.readouterr().err
  assert (run / "checkpoint_2").is_dir()

  exports = {}
  for name, src in (("from_run", run), ("from_step", run / "checkpoint_2")):
    out = tmp_path / name
    assert cli.main(["convert", "xl-to-hf", str(src), str(out)]) == 0
    reloaded, info = transformers.MT5ForConditionalGeneration.from_pretrained(
        out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    exports[name] = {k: v.detach().numpy() for k, v in reloaded.state_dict().items()}
  for state in exports.values():
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in original.items()}
    changed = [k for k in original if not np.array_equal(state[k], original[k])]
    assert "shared.weight" in changed and "lm_head.weight" in changed
    assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in changed
  for name in original:
    np.testing.assert_array_equal(exports["from_run"][name], exports["from_step"][name])
  # The run's step 1 is a different model from its latest step.
  assert cli.main(["convert", "xl-to-hf", str(run / "checkpoint_1"), str(tmp_path / "s1")]) == 0
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  step1 = load_file(str(tmp_path / "s1" / "model.safetensors"))
  assert not np.array_equal(step1["shared.weight"], exports["from_run"]["shared.weight"])
