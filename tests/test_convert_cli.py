"""`xltransfer convert` between HF and xltransfer checkpoints, through the real CLI entry.

Exports from trainer runs (and to T5X) are tested in test_checkpoint_export.py."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the hf extra (torch) is needed for HF conversion")
transformers = pytest.importorskip("transformers", reason="the hf extra is needed")

from xltransfer import cli
from xltransfer.checkpoints import native


@pytest.fixture()
def hf_dir(tmp_path):
  torch.manual_seed(0)
  config = transformers.MT5Config(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                  num_decoder_layers=1, num_heads=4,
                                  feed_forward_proj="gated-gelu", decoder_start_token_id=0)
  model = transformers.MT5ForConditionalGeneration(config)
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
  model.save_pretrained(tmp_path / "hf")
  return tmp_path / "hf", {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_hf_to_xl_and_back_is_exact(hf_dir, tmp_path, capsys):
  src, state = hf_dir
  assert cli.main(["convert", "hf-to-xl", str(src), str(tmp_path / "xl")]) == 0
  assert native.is_native_checkpoint(str(tmp_path / "xl"))
  _, config = native.load_params(str(tmp_path / "xl"))
  assert (config.num_encoder_layers, config.num_decoder_layers, config.vocab_size) == (2, 1, 200)
  assert cli.main(["convert", "xl-to-hf", str(tmp_path / "xl"), str(tmp_path / "back")]) == 0
  reloaded = transformers.MT5ForConditionalGeneration.from_pretrained(tmp_path / "back")
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), state[name], err_msg=name)
  assert "wrote" in capsys.readouterr().out


def test_bad_paths_exit_nonzero_with_the_path_named(hf_dir, tmp_path, capsys):
  src, _ = hf_dir
  assert cli.main(["convert", "hf-to-xl", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
  assert f"{tmp_path / 'missing'}: no such HF checkpoint directory" in capsys.readouterr().err
  assert cli.main(["convert", "hf-to-xl", str(src), str(tmp_path / "xl")]) == 0
  # An existing destination is never clobbered without --overwrite.
  assert cli.main(["convert", "hf-to-xl", str(src), str(tmp_path / "xl")]) == 2
  assert "already exists" in capsys.readouterr().err
  # An HF directory is not an xltransfer checkpoint: the message says what is accepted.
  assert cli.main(["convert", "xl-to-hf", str(src), str(tmp_path / "o2")]) == 2
  err = capsys.readouterr().err
  assert f"{src}: no checkpoint to read" in err
  assert "config.json + params/" in err and "trainer MODEL_DIR" in err
  assert not (tmp_path / "o2").exists()


def test_xl_to_hf_refuses_a_non_empty_destination(hf_dir, tmp_path, capsys):
  src, state = hf_dir
  assert cli.main(["convert", "hf-to-xl", str(src), str(tmp_path / "xl")]) == 0
  out = tmp_path / "back"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  assert cli.main(["convert", "xl-to-hf", str(tmp_path / "xl"), str(out)]) == 2
  assert f"{out}: already exists and is not empty" in capsys.readouterr().err
  assert os.listdir(out) == ["notes.txt"]
  assert cli.main(["convert", "xl-to-hf", str(tmp_path / "xl"), str(out), "--overwrite"]) == 0
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  reloaded = transformers.MT5ForConditionalGeneration.from_pretrained(out)
  np.testing.assert_array_equal(reloaded.lm_head.weight.detach().numpy(), state["lm_head.weight"])


def test_help_lists_the_directions(capsys):
  with pytest.raises(SystemExit):
    cli.main(["convert", "--help"])
  out = capsys.readouterr().out
  for direction in ("hf-to-xl", "xl-to-hf", "xl-to-t5x", "t5x-to-xl"):
    assert direction in out


SHARED_T5X = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "t5x"


def test_t5x_to_xl_on_the_real_t5x_fixture(tmp_path, capsys):
  checkpoint = SHARED_T5X / "test_t5_tiny.checkpoint_0"
  if not checkpoint.exists():
    pytest.skip(f"{checkpoint} is absent (../shared is only beside the development checkout)")
  args = ["convert", "t5x-to-xl", str(checkpoint), str(tmp_path / "xl"), "--size", "tiny",
          "--set", "vocab_size=32128", "--set", "emb_dim=8", "--set", "head_dim=3",
          "--set", "mlp_dim=16"]
  assert cli.main(args) == 0
  params, config = native.load_params(str(tmp_path / "xl"))
  assert config.emb_dim == 8 and config.vocab_size == 32128
  assert params["decoder"]["logits_dense"]["kernel"].shape == (8, 32128)
  # A wrong size is refused with every mismatched name listed.
  assert cli.main(args[:3] + [str(tmp_path / "wrong"), "--size", "tiny"]) == 2
  err = capsys.readouterr().err
  assert "token_embedder/embedding" in err and "decoder/logits_dense/kernel" in err
  assert not (tmp_path / "wrong").exists()  # nothing half-written is left behind
  assert cli.main(args[:3] + [str(tmp_path / "other"), "--size", "tiny", "--set", "bogus_field=1"]) == 2
  assert "unknown MT5Config fields ['bogus_field']" in capsys.readouterr().err
