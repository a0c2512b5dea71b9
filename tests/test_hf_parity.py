"""Numerical parity with Hugging Face's MT5ForConditionalGeneration, and the HF round trip."""
import json

import jax
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


# bf16 decoding against float32 decoding. Random weights leave near-ties (two tokens whose
# float32 logits differ by less than bf16 rounding moves them), where either token is a correct
# bf16 answer and the rows then go their own ways; so a row may leave float32's tokens only at
# a near-tie, and the rounding itself is bounded along float32's tokens.
DECODE_STEPS = 20
# bf16 keeps 8 significant bits (one rounding moves a value by at most 2^-9, 0.2%); through the
# layers the logits moved by at most 0.9% of their largest magnitude on both configs (2026-12-01).
BF16_LOGIT_ERROR = 0.015


def _logits_along(config, params, enc, tokens, dtype):
  """Each decoding step's logits [b, steps, vocab] (float32) with `tokens` fed back instead of
  the decoder's own choices: the decode path (its weights, KV caches) in `dtype`, jitted as
  greedy decoding runs it."""
  from xltransfer.model.network import Transformer  # pylint: disable=import-outside-toplevel
  model = EncoderDecoderModel(config.replace(dtype=dtype))

  def run(variables, enc, tokens):
    encoded = model.module.apply(variables, enc, method=Transformer.encode)
    previous, cache, steps = jnp.zeros((enc.shape[0], 1), jnp.int32), None, []
    for t in range(tokens.shape[1]):
      step_variables = variables if cache is None else {**variables, "cache": cache}
      logits, mutated = model.module.apply(
          step_variables, encoded, enc, previous, decode=True, max_decode_length=tokens.shape[1],
          mutable=["cache"], method=Transformer.decode)
      cache, previous = mutated["cache"], tokens[:, t:t + 1]
      steps.append(logits[:, -1].astype(jnp.float32))
    return jnp.stack(steps, axis=1)
  return np.asarray(jax.jit(run)(model.decoding_weights(params).variables, enc, tokens),
                    np.float64)


@pytest.mark.slow
def test_bf16_greedy_decoding_leaves_the_float32_tokens_only_at_a_near_tie(converted):
  """Greedy decoding in bfloat16 (bf16 weights, activations and KV caches; float32
  accumulation, softmax and logits) on the parity configs, whose float32 tokens are HF's
  (above). Along float32's tokens its logits stay within BF16_LOGIT_ERROR of float32's (of
  their largest magnitude); free-running, a row's tokens first differ from float32's only at a
  near-tie: float32's best logit ahead of bf16's pick by less than twice what bf16 moved that
  step's logits. (Each config has one such row, at steps 3 and 13; the others agree.)"""
  _, _, config, params = converted
  enc = jnp.asarray(_padded_batch(config.vocab_size, seed=1)[0])
  f32_tokens = np.asarray(EncoderDecoderModel(config).greedy_decode(params, enc, DECODE_STEPS))
  bf16_model = EncoderDecoderModel(config.replace(dtype="bfloat16"))
  bf16_tokens = np.asarray(bf16_model.greedy_decode(bf16_model.decoding_weights(params), enc,
                                                    DECODE_STEPS))
  exact = _logits_along(config, params, enc, jnp.asarray(f32_tokens), "float32")
  rounded = _logits_along(config, params, enc, jnp.asarray(f32_tokens), "bfloat16")
  decoded = np.cumsum(f32_tokens == 1, axis=1) - (f32_tokens == 1) == 0  # through the first EOS
  # The teacher-forced path is greedy decoding's own.
  np.testing.assert_array_equal(exact.argmax(-1)[decoded], f32_tokens[decoded])
  moved = np.abs(rounded - exact).max(-1)  # [b, steps]
  assert moved[decoded].max() <= BF16_LOGIT_ERROR * np.abs(exact).max(), moved.max()
  agreeing_rows = 0
  for row, (want, got) in enumerate(zip(f32_tokens, bf16_tokens)):
    differ = np.flatnonzero(want != got)
    if not len(differ):
      agreeing_rows += 1
      continue
    step = differ[0]
    assert 1 not in want[:step], f"row {row}: tokens after EOS differ"  # both pad with 0
    margin = exact[row, step, want[step]] - exact[row, step, got[step]]
    assert margin < 2 * moved[row, step], (row, step, margin, moved[row, step])
  assert agreeing_rows >= len(f32_tokens) // 2, agreeing_rows


@pytest.mark.slow
def test_bf16_beam_search_finds_beams_as_good_under_float32(converted):
  """Beam search in bfloat16 on the parity configs: its best beams, scored by the float32
  model, are within the bf16 rounding's reach of float32 beam search's best beams, and its own
  scores of them are within that reach of their float32 scores. A beam's log-probability
  moves by at most twice the logits' error per token (the logit and the log-sum-exp), so by
  2 * error * length / length_penalty(length)."""
  from xltransfer.model.beam_search import length_penalty  # pylint: disable=import-outside-toplevel
  _, _, config, params = converted
  enc = jnp.asarray(_padded_batch(config.vocab_size, seed=1)[0])
  beams, alpha = 4, 0.6
  f32_model = EncoderDecoderModel(config)
  bf16_model = EncoderDecoderModel(config.replace(dtype="bfloat16"))
  f32_seqs, f32_scores = f32_model.beam_search(params, enc, DECODE_STEPS, beams, alpha)
  bf16_seqs, bf16_scores = bf16_model.beam_search(bf16_model.decoding_weights(params), enc,
                                                  DECODE_STEPS, beams, alpha)

  def float32_scores(seqs):
    """Length-normalised float32 log-probabilities of [b, beams, steps] sequences, and the
    reach of bf16 rounding on each (from the largest float32 logit along it)."""
    flat = np.asarray(seqs).reshape(-1, DECODE_STEPS)
    decoder_inputs = np.concatenate([np.zeros((len(flat), 1), flat.dtype), flat[:, :-1]], 1)
    logits = np.asarray(f32_model.logits(params, {
        "encoder_input_tokens": jnp.repeat(enc, beams, axis=0),
        "decoder_input_tokens": jnp.asarray(decoder_inputs),
        "decoder_target_tokens": jnp.asarray(flat)}), np.float64)
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    taken = np.take_along_axis(logprobs, flat[..., None], axis=-1)[..., 0]
    lengths = (flat > 0).sum(-1)  # tokens through EOS (0 after it)
    penalty = np.asarray(length_penalty(lengths.astype(np.float64), alpha))
    real = flat > 0
    scale = np.where(real[..., None], np.abs(logits), 0.0).max(axis=(1, 2))
    reach = 2 * BF16_LOGIT_ERROR * scale * lengths / penalty
    return ((taken * real).sum(-1) / penalty).reshape(-1, beams), reach.reshape(-1, beams)

  rescored, reach = float32_scores(bf16_seqs)
  np.testing.assert_array_less(np.abs(np.asarray(bf16_scores, np.float64) - rescored), reach)
  # float32's own scores of its beams are what this rescoring gives them (the check is sound).
  np.testing.assert_allclose(float32_scores(f32_seqs)[0], f32_scores, rtol=1e-5, atol=1e-5)
  # Its best beam is as good, under float32, as float32's best, within the rounding's reach.
  assert (rescored[:, 0] >= np.asarray(f32_scores)[:, 0] - reach[:, 0]).all()


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
