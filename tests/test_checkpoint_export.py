"""Exporting trained models: `xltransfer convert xl-to-hf` / `xl-to-t5x` from trainer runs.

The T5X side is checked against T5X's own definitions: the fixture
`../shared/fixtures/t5x/test_t5_tiny.checkpoint_0` was written by T5X (tree structure and
version), and the Adafactor state shapes follow `t5x/adafactor.py` `init_param_state`.
"""
import functools
import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xltransfer import cli
from xltransfer.checkpoints import native, t5x, tree_utils
from xltransfer.train import t5x_export, trained_run
from xltransfer.errors import CheckpointError, UserError
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.partitioning import create_partitioner
from xltransfer.train import checkpointing
from xltransfer.train import initial_state
from xltransfer.train import input as input_lib
from xltransfer.train import optimizer as opt_lib
from xltransfer.train import run as run_lib
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.state import TrainState
from xltransfer.train.trainer import Trainer, to_host

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
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_trainer_checkpoint_gives_its_recorded_config_and_step(tmp_path):
  config = get_config("tiny", num_decoder_layers=1, scan_layers=True)
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(1))
  run = tmp_path / "run"
  _write_trainer_checkpoint(run, checkpointing.run_identity(config, "task", None), params, 9)
  trained = trained_run.load_trained_params(str(run))
  assert trained.step == 9 and trained.step_dir == str(run / "checkpoint_9")
  assert trained.config.num_decoder_layers == 1 and trained.config.scan_layers
  for name, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(trained.params)[name], value)
  # Its optimizer state is a stand-in, not Adafactor's: exported with the zero state.
  assert cli.main(["convert", "xl-to-t5x", str(run), str(tmp_path / "t5x"),
                   "--zero_optimizer_state"]) == 0
  checkpoint = t5x.read_t5x_checkpoint(str(tmp_path / "t5x"))
  assert checkpoint.step == 9 and "decoder/layers_0/mlp/wo/kernel" in checkpoint.param_names()
  assert "decoder/layers_1/mlp/wo/kernel" not in checkpoint.param_names()


# ---------------------------------------------------------------- HF -> train -> HF


@pytest.mark.usefixtures("clean_gin")
@pytest.mark.slow
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


# ---------------------------------------------------------------- trained Adafactor state -> T5X
#
# The inverse of the trainer's T5X import (tests/test_t5x_optimizer_state.py): a run trained
# here is exported with xl-to-t5x and its Adafactor state read back, and resumed from.

# Small enough that the tiny model's unscanned kernels (64 x 64, 64 x 128) are factored too.
MIN_DIM = 16
RUN_STEPS = 2
_SLOTS = ("v_row", "v_col", "v")


def _adafactor(momentum):
  return opt_lib.Adafactor(min_dim_size_to_factor=MIN_DIM, momentum=momentum)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
  """Two tiny runs trained RUN_STEPS steps by the real trainer (a checkpoint every step):
  unscanned without momentum (mT5's setting), and scanned with momentum."""
  import train_fixture_tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  runs = {}
  for name, scan_layers, momentum in (("unscanned", False, None), ("scanned", True, 0.9)):
    gin.clear_config()
    model_dir = tmp_path_factory.mktemp("runs") / name
    result = run_lib.train(
        model_dir=str(model_dir), model=EncoderDecoderModel(get_config("tiny",
                                                                       scan_layers=scan_layers)),
        train_dataset=input_lib.DatasetConfig("xlt_test_copy", {"inputs": 32, "targets": 32},
                                              batch_size=8, shuffle=False),
        total_steps=RUN_STEPS, log_period=1,
        learning_rate=learning_rate_schedule("constant", 0.01),
        optimizer=_adafactor(momentum),
        checkpoint_manager=functools.partial(checkpointing.CheckpointManager, period=1,
                                             async_save=False))
    assert result["step"] == RUN_STEPS
    runs[name] = (model_dir, scan_layers, momentum)
  gin.clear_config()
  return runs


def _trainer(scan_layers, momentum):
  model = EncoderDecoderModel(get_config("tiny", scan_layers=scan_layers))
  optimizer = _adafactor(momentum).create(learning_rate_schedule("constant", 0.01),
                                          model.abstract_params(), model.param_logical_axes())
  return model, Trainer(model, optimizer, create_partitioner())


def _run_state(model_dir, trainer, step=RUN_STEPS):
  """The run's own checkpoint at `step`, restored as the trainer resumes it."""
  manager = checkpointing.CheckpointManager(str(model_dir), async_save=False)
  try:
    state, _ = manager.restore(step, trainer.abstract_state, trainer.state_shardings,
                               optimizer=trainer.optimizer)
  finally:
    manager.close()
  return state


def _state_slots(opt_state):
  """{slot: {param name: array}} of our optimizer state: v_row/v_col/v, and `ema` if any."""
  (moments,) = [s for s in opt_state if isinstance(s, opt_lib.FactoredRmsState)]
  slots = {slot: _flat(to_host(getattr(moments, slot))) for slot in _SLOTS}
  emas = [s for s in opt_state if isinstance(s, optax.EmaState)]
  if emas:
    slots["ema"] = _flat(to_host(emas[0].ema))
  return slots


def _exported_slots(path):
  checkpoint = t5x.read_t5x_checkpoint(str(path))
  return checkpoint, {name: {slot: source.read() for slot, source in slots.items()}
                      for name, slots in checkpoint.param_slots().items()}


@pytest.mark.slow
def test_trained_state_of_an_unscanned_run_is_exported_one_to_one(trained_runs, tmp_path,
                                                                    capsys):
  model_dir, _, _ = trained_runs["unscanned"]
  out = tmp_path / "t5x"
  assert cli.main(["convert", "xl-to-t5x", str(model_dir), str(out),
                   f"--min_dim_size_to_factor={MIN_DIM}"]) == 0
  assert (f"optimizer state: the run's trained Adafactor state (v_row/v_col/v, without "
          f"momentum m) of step {RUN_STEPS}") in capsys.readouterr().out
  checkpoint, exported = _exported_slots(out)
  assert checkpoint.step == RUN_STEPS
  _, trainer = _trainer(False, None)
  ours = _state_slots(_run_state(model_dir, trainer).opt_state)
  assert set(exported) == set(ours["v"])
  kinds = set()
  for name, slots in exported.items():
    # T5X's layout is the trainer's for unscanned parameters: every slot maps 1:1.
    for slot in _SLOTS:
      np.testing.assert_array_equal(slots[slot], ours[slot][name], err_msg=f"{name} {slot}")
    assert slots["v"].shape == (1,) or np.all(slots["v"] > 0), name  # trained, not zeros
    # No momentum: T5X stores zeros((1,)) for `m` (t5x/adafactor.py `init_param_state`).
    np.testing.assert_array_equal(slots["m"], np.zeros((1,), np.float32))
    kinds.add(slots["v"].shape == (1,))
  assert kinds == {True, False}  # factored and unfactored parameters both checked
  assert np.all(exported["encoder/layers_0/mlp/wi_0/kernel"]["v_row"] > 0)


@pytest.mark.slow
def test_trained_state_of_a_scanned_run_is_sliced_per_layer(trained_runs, tmp_path):
  model_dir, _, momentum = trained_runs["scanned"]
  _, trainer = _trainer(True, momentum)
  ours = _state_slots(_run_state(model_dir, trainer).opt_state)
  # Written scanned: the trainer's layout, 1:1, and T5X's `m` is minus optax's EMA.
  assert cli.main(["convert", "xl-to-t5x", str(model_dir), str(tmp_path / "scanned"),
                   "--scanned", f"--min_dim_size_to_factor={MIN_DIM}"]) == 0
  _, exported = _exported_slots(tmp_path / "scanned")
  assert set(exported) == set(ours["v"])
  for name, slots in exported.items():
    for slot in _SLOTS:
      np.testing.assert_array_equal(slots[slot], ours[slot][name], err_msg=f"{name} {slot}")
    np.testing.assert_array_equal(slots["m"], -ours["ema"][name], err_msg=name)
    assert np.any(slots["m"] != 0), name
  # Written unscanned (T5X mT5's layers_i): each layer's statistics, in T5X's factoring.
  assert cli.main(["convert", "xl-to-t5x", str(model_dir), str(tmp_path / "unscanned"),
                   f"--min_dim_size_to_factor={MIN_DIM}"]) == 0
  _, exported = _exported_slots(tmp_path / "unscanned")
  for i in range(2):
    # q [embed, layers, joined_kv]: rows `embed`, as T5X's heuristic picks for the square
    # unscanned kernel (dim 0): layer i of v_row (axis 1) and of v_col (axis 0).
    q = exported[f"encoder/layers_{i}/attention/query/kernel"]
    scanned_q = "encoder/layers/attention/query/kernel"
    np.testing.assert_array_equal(q["v_row"], ours["v_row"][scanned_q][:, i])
    np.testing.assert_array_equal(q["v_col"], ours["v_col"][scanned_q][i])
    # o [joined_kv, layers, embed]: our rows are `embed`, T5X's unscanned row is dim 0
    # (joined_kv), so T5X's v_row (mean over embed) is our v_col, and the other way round.
    o = exported[f"decoder/layers_{i}/self_attention/out/kernel"]
    scanned_o = "decoder/layers/self_attention/out/kernel"
    np.testing.assert_array_equal(o["v_row"], ours["v_col"][scanned_o][:, i])
    np.testing.assert_array_equal(o["v_col"], ours["v_row"][scanned_o][i])
    # wo [mlp, layers, embed] (128 x 64): T5X's row is the smaller dim, `embed`, as ours.
    wo = exported[f"encoder/layers_{i}/mlp/wo/kernel"]
    scanned_wo = "encoder/layers/mlp/wo/kernel"
    np.testing.assert_array_equal(wo["v_row"], ours["v_row"][scanned_wo][i])
    np.testing.assert_array_equal(wo["v_col"], ours["v_col"][scanned_wo][:, i])
    # Layer norms [embed, layers] keep a full v: its column i.
    norm = exported[f"encoder/layers_{i}/pre_mlp_layer_norm/scale"]
    scanned_norm = "encoder/layers/pre_mlp_layer_norm/scale"
    np.testing.assert_array_equal(norm["v"], ours["v"][scanned_norm][:, i])
    for name, slot in ((q, "v"), (o, "v"), (wo, "v"), (norm, "v_row"), (norm, "v_col")):
      assert name[slot].shape == (1,)
  # Momentum per layer, T5X's sign, for every scanned parameter.
  for name, ema in ours["ema"].items():
    if "/layers/" in name:
      for i in range(2):
        np.testing.assert_array_equal(exported[name.replace("/layers/", f"/layers_{i}/")]["m"],
                                      -ema[:, i], err_msg=name)
    else:
      np.testing.assert_array_equal(exported[name]["m"], -ema, err_msg=name)


def _one_step(trainer, state):
  rng = np.random.default_rng(0)
  tokens = lambda: jnp.asarray(rng.integers(2, 1000, size=(8, 32)), jnp.int32)
  batch = {"encoder_input_tokens": tokens(), "decoder_input_tokens": tokens(),
           "decoder_target_tokens": tokens(), "decoder_loss_weights": jnp.ones((8, 32), jnp.int32)}
  new_state, _ = trainer.train_step(state, batch)
  return _flat(to_host(new_state.params)), _state_slots(new_state.opt_state)


@pytest.mark.parametrize("run_name,scanned_output", [("unscanned", False), ("scanned", False),
                                                     ("scanned", True)])
@pytest.mark.slow
def test_t5x_export_resumes_with_the_runs_state(trained_runs, tmp_path, run_name,
                                                scanned_output):
  """Restoring the export as a T5X INITIAL_CHECKPOINT_PATH (restore_optimizer_state, the
  default) gives the run's own state at that step, and one more step the same parameters."""
  model_dir, scan_layers, momentum = trained_runs[run_name]
  src = model_dir / f"checkpoint_{RUN_STEPS}"
  out = tmp_path / "t5x" / f"checkpoint_{RUN_STEPS}"
  assert cli.main(["convert", "xl-to-t5x", str(src), str(out),
                   f"--min_dim_size_to_factor={MIN_DIM}"]
                  + (["--scanned"] if scanned_output else [])) == 0
  model, trainer = _trainer(scan_layers, momentum)
  original = _run_state(model_dir, trainer)
  restored = initial_state.load_initial_state(str(out), model, trainer).state
  assert int(to_host(restored.step)) == int(to_host(original.step)) == RUN_STEPS
  flat_original = jax.tree_util.tree_flatten_with_path(to_host(original.opt_state))[0]
  flat_restored = jax.tree_util.tree_flatten_with_path(to_host(restored.opt_state))[0]
  assert [path for path, _ in flat_restored] == [path for path, _ in flat_original]
  for (path, want), (_, got) in zip(flat_original, flat_restored):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                  err_msg=jax.tree_util.keystr(path))
  before = _flat(to_host(original.params))
  for name, value in before.items():
    np.testing.assert_array_equal(_flat(to_host(restored.params))[name], value, err_msg=name)
  params_original, slots_original = _one_step(trainer, original)
  params_restored, slots_restored = _one_step(trainer, restored)
  assert not np.array_equal(params_original["token_embedder/embedding"],
                            before["token_embedder/embedding"])  # the step moved them
  for name, value in params_original.items():
    np.testing.assert_array_equal(params_restored[name], value, err_msg=name)
  for slot, values in slots_original.items():
    for name, value in values.items():
      np.testing.assert_array_equal(slots_restored[slot][name], value, err_msg=f"{name} {slot}")


@pytest.mark.slow
def test_convert_output_or_opt_out_writes_the_zero_state(trained_runs, tmp_path, capsys):
  src, _, _ = _native(tmp_path)
  assert cli.main(["convert", "xl-to-t5x", src, str(tmp_path / "from_native")]) == 0
  assert (f"optimizer state: zero-initialised Adafactor state (the second moments restart) "
          f"({src} holds no optimizer state)") in capsys.readouterr().out
  model_dir, _, _ = trained_runs["unscanned"]
  assert cli.main(["convert", "xl-to-t5x", str(model_dir), str(tmp_path / "zero"),
                   "--zero_optimizer_state"]) == 0
  assert "optimizer state: zero-initialised" in capsys.readouterr().out
  for out in ("from_native", "zero"):
    checkpoint, exported = _exported_slots(tmp_path / out)
    assert len(exported) == len(checkpoint.param_names())
    for name, slots in exported.items():
      for slot, value in slots.items():
        assert not np.any(value), f"{out} {name} {slot}"
  assert cli.main(["convert", "xl-to-t5x", str(model_dir), str(tmp_path / "none"),
                   "--no_optimizer_state"]) == 0
  assert "optimizer state: omitted" in capsys.readouterr().out
  assert not t5x.read_t5x_checkpoint(str(tmp_path / "none")).optimizer_state_names()


@pytest.mark.slow
def test_trained_state_that_t5x_cannot_hold_is_refused(trained_runs, tmp_path, capsys):
  model_dir, _, _ = trained_runs["unscanned"]
  # T5X's default min_dim_size_to_factor (128) keeps a full v for the 64 x 128 kernels that
  # this run (16) factored: the full v is lost, so the export is refused, naming them.
  assert cli.main(["convert", "xl-to-t5x", str(model_dir), str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert (f"{model_dir / f'checkpoint_{RUN_STEPS}'}: the run's Adafactor state cannot be "
          "written as T5X's Adafactor (standard logical factor rules, min_dim_size_to_factor "
          "128)") in err
  assert "decoder/layers_0/mlp/wi_0/kernel: the stored second moment of shape (64, 128) is " \
      "factored" in err
  assert "--min_dim_size_to_factor" in err and "--zero_optimizer_state" in err
  assert not (tmp_path / "o").exists()
  # A checkpoint whose optimizer state is not the trainer's Adafactor.
  config = get_config("tiny")
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(1))
  run = tmp_path / "other"
  _write_trainer_checkpoint(run, checkpointing.run_identity(config, "task", None), params, 4)
  assert cli.main(["convert", "xl-to-t5x", str(run), str(tmp_path / "o")]) == 2
  assert (f"{run / 'checkpoint_4' / 'opt_state'}: not the Adafactor state of xltransfer's "
          "trainer") in capsys.readouterr().err
  # One written before xltransfer stored Adafactor's state in T5X's layout.
  progress = model_dir / f"checkpoint_{RUN_STEPS}" / "progress" / "metadata"
  legacy = tmp_path / "legacy"
  shutil.copytree(model_dir, legacy)
  stored = json.loads(progress.read_text())
  del stored[checkpointing.LAYOUT_KEY]
  (legacy / f"checkpoint_{RUN_STEPS}" / "progress" / "metadata").write_text(json.dumps(stored))
  assert cli.main(["convert", "xl-to-t5x", str(legacy), str(tmp_path / "o"),
                   f"--min_dim_size_to_factor={MIN_DIM}"]) == 2
  assert (f"{legacy / f'checkpoint_{RUN_STEPS}'}: its Adafactor state is stored in layout None, "
          "not T5X's") in capsys.readouterr().err
  assert cli.main(["convert", "xl-to-t5x", str(legacy), str(tmp_path / "o"),
                   "--zero_optimizer_state"]) == 0


def test_full_second_moments_become_t5x_row_and_column_means(tmp_path):
  """A run that kept every second moment whole (Adafactor(factored=False)) is written with
  T5X's factoring: its v_row/v_col are the means of the full v over T5X's column/row dims."""
  _, params, config = _native(tmp_path)
  rng = np.random.default_rng(1)
  flat = _flat(params)
  full = {n: rng.uniform(0.5, 2.0, v.shape).astype(np.float32) for n, v in flat.items()}
  placeholder = {n: np.zeros((1,), np.float32) for n in flat}
  trained = trained_run.TrainedOptimizerState(step_dir="run/checkpoint_5", step=5, v_row=placeholder,
                                          v_col=placeholder, v=full, momentum=None)
  out = tmp_path / "t5x"
  t5x_export.save_t5x_checkpoint(params, config, str(out), 5, trained_state=trained,
                                 min_dim_size_to_factor=MIN_DIM)
  _, exported = _exported_slots(out)
  # wi_0 (64 x 128): T5X's row is dim 0 (the smaller), so v_row averages over dim 1.
  wi = "encoder/layers_0/mlp/wi_0/kernel"
  np.testing.assert_allclose(exported[wi]["v_row"], full[wi].mean(axis=1), rtol=1e-6)
  np.testing.assert_allclose(exported[wi]["v_col"], full[wi].mean(axis=0), rtol=1e-6)
  # The embedding (1024 x 64): the row is dim 1.
  emb = "token_embedder/embedding"
  np.testing.assert_allclose(exported[emb]["v_row"], full[emb].mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(exported[emb]["v_col"], full[emb].mean(axis=1), rtol=1e-6)
  for name in (wi, emb):
    assert exported[name]["v"].shape == (1,)
  # What T5X keeps whole (layer norms, the 4 x 32 relative position bias) stays as it was.
  for name in ("encoder/layers_0/pre_mlp_layer_norm/scale", "encoder/relpos_bias/rel_embedding"):
    np.testing.assert_array_equal(exported[name]["v"], full[name])
  # A state that does not belong to these parameters is refused before anything is written.
  with pytest.raises(CheckpointError, match="run/checkpoint_5: the optimizer state is at step 5 "
                                            "but the parameters at step 6"):
    t5x_export.save_t5x_checkpoint(params, config, str(tmp_path / "o"), 6, trained_state=trained,
                                   min_dim_size_to_factor=MIN_DIM)
  del full[emb]
  with pytest.raises(CheckpointError, match="run/checkpoint_5: the optimizer state's parameters "
                                            r"differ from the model's \(e.g. \['token_embedder/embedding \(v\)'\]"):
    t5x_export.save_t5x_checkpoint(params, config, str(tmp_path / "o"), 5, trained_state=trained,
                                   min_dim_size_to_factor=MIN_DIM)
  assert not (tmp_path / "o").exists()
