"""Numerical parity with Hugging Face's MT5ForConditionalGeneration, and the HF round trip."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the hf extra (torch) is needed for HF parity")
transformers = pytest.importorskip("transformers", reason="the hf extra is needed for HF parity")

from xltransfer.checkpoints import hf
from xltransfer.errors import CheckpointError
from xltransfer.model.models import EncoderDecoderModel

CONFIGS = {
    # The acceptance config: d_model 64, 4 heads, d_kv 16, d_ff 128, 2+2 layers, 32 buckets.
    "base": dict(vocab_size=300, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                 num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128),
    # Other head count, unequal depth, other bucket settings (distances beyond max_distance).
    "uneven": dict(vocab_size=260, d_model=48, d_kv=8, d_ff=96, num_layers=3,
                   num_decoder_layers=1, num_heads=6, relative_attention_num_buckets=16,
                   relative_attention_max_distance=20),
}


def _reference_model(name, seed=0):
  torch.manual_seed(seed)
  config = transformers.MT5Config(feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                  **CONFIGS[name])
  model = transformers.MT5ForConditionalGeneration(config).eval()
  # transformers 5 ties the head whatever the config says; mT5's head is untied.
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
  return model


def _padded_batch(vocab, seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=(4, 40))
  enc[0, 30:] = 0
  enc[1, 9:] = 0
  tgt = rng.randint(2, vocab, size=(4, 14))
  tgt[0, 10:] = 0
  tgt[2, 5:] = 0
  dec = np.concatenate([np.zeros((4, 1), int), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request):
  reference = _reference_model(request.param)
  state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  config = hf.config_from_hf(reference.config.to_dict(), dtype="float32")
  return reference, state, config, hf.state_dict_to_params(state, config)


@pytest.mark.slow
def test_logits_match_hf_on_a_padded_batch(converted):
  reference, _, config, params = converted
  enc, dec, tgt = _padded_batch(config.vocab_size)
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                         decoder_input_ids=torch.tensor(dec)).logits.numpy()
  ours = np.asarray(EncoderDecoderModel(config).logits(params, {
      "encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec),
      "decoder_target_tokens": jnp.asarray(tgt)}))
  # HF lets padded decoder positions attend; T5X masks them. Real target positions must agree.
  real = tgt > 0
  assert np.abs(ours - expected)[real].max() < 1e-4


def test_greedy_decoding_matches_hf_generate_for_20_steps(converted):
  reference, _, config, params = converted
  enc, _, _ = _padded_batch(config.vocab_size, seed=1)
  with torch.no_grad():
    expected = reference.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                                  max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                  num_beams=1).numpy()[:, 1:]
  ours = np.asarray(EncoderDecoderModel(config).greedy_decode(params, jnp.asarray(enc), 20))
  # HF was forced past EOS (min_new_tokens); compare up to and including each row's first EOS.
  for row in range(len(enc)):
    eos = np.flatnonzero(expected[row] == 1)
    stop = eos[0] + 1 if len(eos) else 20
    np.testing.assert_array_equal(ours[row, :stop], expected[row, :stop])


def test_round_trip_to_hf_reproduces_every_tensor_exactly(converted, tmp_path):
  reference, state, config, params = converted
  back = hf.params_to_state_dict(params, config)
  assert back.keys() == state.keys()
  for name in state:
    np.testing.assert_array_equal(back[name], state[name], err_msg=name)
  # And through files: what we save, HF loads into the same model.
  hf.save_hf_checkpoint(params, config, str(tmp_path / "exported"))
  reloaded = transformers.MT5ForConditionalGeneration.from_pretrained(str(tmp_path / "exported"))
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), state[name], err_msg=name)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_checkpoint_directories_load_in_both_formats(fmt, tmp_path):
  reference = _reference_model("uneven", seed=2)
  if fmt == "safetensors":
    reference.save_pretrained(tmp_path)
  else:  # The older layout that the released HF mT5 repositories still ship.
    reference.config.to_json_file(tmp_path / "config.json")
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
  params, config = hf.load_hf_checkpoint(str(tmp_path))
  assert (config.num_heads, config.num_encoder_layers, config.num_decoder_layers) == (6, 3, 1)
  state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  for name, value in hf.params_to_state_dict(params, config).items():
    np.testing.assert_array_equal(value, state[name], err_msg=name)


def test_shape_mismatch_lists_every_name_with_both_shapes(converted):
  _, state, config, _ = converted
  wrong = config.replace(mlp_dim=config.mlp_dim * 2)
  with pytest.raises(CheckpointError) as error:
    hf.state_dict_to_params(state, wrong)
  message = str(error.value)
  layers = config.num_encoder_layers + config.num_decoder_layers
  assert message.count("mlp/wi_0/kernel") == layers
  assert f"encoder/layers_0/mlp/wi_0/kernel (from encoder.block.0.layer.1.DenseReluDense.wi_0.weight): " \
         f"checkpoint ({config.emb_dim}, {config.mlp_dim}) vs model ({config.emb_dim}, {2 * config.mlp_dim})" in message


def test_missing_and_unreadable_paths_are_named(tmp_path):
  with pytest.raises(CheckpointError, match="no such HF checkpoint directory"):
    hf.load_hf_checkpoint(str(tmp_path / "nowhere"))
  (tmp_path / "config.json").write_text(json.dumps(hf.hf_config_dict(
      hf.config_from_hf(dict(CONFIGS["base"])))))
  with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
    hf.load_hf_checkpoint(str(tmp_path))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not a torch file")
  with pytest.raises(CheckpointError, match="pytorch_model.bin: not a readable PyTorch state dict"):
    hf.load_hf_checkpoint(str(tmp_path))
