"""Vocabularies: the bundled builtin SentencePiece model, bytes, mt5, paths (with or without their
own sentinels), decoding ids beyond the vocabulary, deferred choice."""
import os
import unicodedata

import gin
import numpy as np
import pytest
import seqio
import sentencepiece
import tensorflow as tf

import sentinel_models
from xltransfer.data import build_builtin_vocab, span_corruption, vocab
from xltransfer.errors import ConfigError
from xltransfer.model.config import MT5_VOCAB_SIZE

SAMPLES = ["The river runs past the old mill.", "Река течёт мимо мельницы.", "河水流过老磨坊。",
           "नदी पुरानी चक्की के पास से बहती है।", "แม่น้ำไหลผ่านโรงสีเก่า", "강은 오래된 방앗간",
           "ქართული ენა"]  # Georgian is not in the sample text: byte fallback covers it.


def test_builtin_has_1024_ids_with_t5_special_ids():
  v = vocab.get_vocabulary("builtin")
  assert v.vocab_size == 1024
  pieces = sentencepiece.SentencePieceProcessor(model_file=vocab.BUILTIN_MODEL_PATH)
  assert pieces.get_piece_size() == 924
  assert (v.pad_id, v.eos_id, v.unk_id, v.extra_ids) == (0, 1, 2, 100)


@pytest.mark.parametrize("spec", ["builtin", "byte", vocab.BUILTIN_MODEL_PATH])
def test_round_trips_every_script_without_unknown_pieces(spec):
  v = vocab.get_vocabulary(spec)
  for text in SAMPLES:
    ids = v.encode(text)
    assert v.unk_id not in ids, text
    # SentencePiece models normalize with NFKC, as the mT5 vocabulary does.
    expected = text if spec == "byte" else unicodedata.normalize("NFKC", text)
    assert v.decode(ids) == expected


def test_byte_and_mt5_specs():
  assert vocab.get_vocabulary("byte").vocab_size == 256 + 3 + 100
  mt5 = vocab.get_vocabulary("mt5")  # lazily loaded: naming it needs no network
  assert isinstance(mt5, seqio.SentencePieceVocabulary)
  assert mt5.sentencepiece_model_file == vocab.MT5_MODEL_PATH
  # The released model holds its own 100 sentinels: no ids are added (as multilingual-t5 and
  # T5X's mT5 gin files construct it), so it has 250100 ids for the model's 250112 rows.
  assert mt5.extra_ids == 0
  assert mt5 == seqio.SentencePieceVocabulary(vocab.MT5_MODEL_PATH)
  assert vocab.vocabulary_size(mt5) == vocab.MT5_NUM_IDS == 250100
  assert vocab.vocabulary_size(mt5) <= MT5_VOCAB_SIZE
  assert mt5._model is None  # pylint: disable=protected-access  (sized without loading it)


def test_user_model_with_the_released_sentinel_layout_is_used_as_it_is(tmp_path):
  # A stand-in with the released model's structure (see tests/sentinel_models.py).
  path = sentinel_models.write_model(tmp_path, "own_sentinels", "released")
  pieces = sentencepiece.SentencePieceProcessor(model_file=path)
  v = vocab.get_vocabulary(path)
  assert v.extra_ids == 0
  assert v.vocab_size == vocab.vocabulary_size(v) == pieces.get_piece_size() == 60 + 100
  # The same construction as "mt5": the size logic is the one the released model gets.
  assert v == seqio.SentencePieceVocabulary(path, extra_ids=0)
  for n in (0, 1, 57, 99):
    assert pieces.id_to_piece(vocab.sentinel_id(v, n)) == f"\u2581<extra_id_{n}>"
  assert v.decode([vocab.sentinel_id(v, 0)]) == "<extra_id_0>"
  assert v.encode("<extra_id_3>") == [vocab.sentinel_id(v, 3)]


def test_span_corruption_sentinels_are_the_models_own_pieces(tmp_path):
  path = sentinel_models.write_model(tmp_path, "own_sentinels", "released")
  pieces = sentencepiece.SentencePieceProcessor(model_file=path)
  v = vocab.get_vocabulary(path)
  rng = np.random.default_rng(0)
  examples = [{"targets": rng.integers(3, 60, size=n).astype(np.int32)} for n in (40, 90, 300)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  out = list(span_corruption.span_corruption(ds, {"targets": seqio.Feature(v)})
             .as_numpy_iterator())
  for original, corrupted in zip(examples, out):
    sentinels = [int(t) for t in corrupted["inputs"] if t >= 60]
    assert sentinels == [int(t) for t in corrupted["targets"] if t >= 60]
    assert sentinels and all(t < pieces.get_piece_size() for t in sentinels)
    assert [pieces.id_to_piece(t) for t in sentinels] == [
        f"\u2581<extra_id_{n}>" for n in range(len(sentinels))]
    assert span_corruption.reconstruct(corrupted["inputs"], corrupted["targets"],
                                       v.vocab_size) == original["targets"].tolist()


def test_user_model_without_sentinels_gets_100_extra_ids(tmp_path):
  path = sentinel_models.write_model(tmp_path, "plain", "none")
  v = vocab.get_vocabulary(path)
  assert (v.extra_ids, v.vocab_size) == (100, 60 + 100)
  assert v.decode([vocab.sentinel_id(v, 0)]) == "<extra_id_0>"


@pytest.mark.parametrize("layout, message", [
    ("partial", r"defines 10 of the 100 sentinel pieces .*missing <extra_id_10>"),
    ("ascending", r"<extra_id_0> is piece 60, but span corruption uses id 159"),
])
def test_user_model_with_a_partial_or_misplaced_sentinel_set_is_an_error(tmp_path, layout,
                                                                          message):
  path = sentinel_models.write_model(tmp_path, f"bad_{layout}", layout)
  with pytest.raises(ConfigError, match=message) as error:
    vocab.get_vocabulary(path)
  assert path in str(error.value)


def test_a_file_that_is_not_a_sentencepiece_model_is_named(tmp_path):
  path = tmp_path / "garbage.model"
  path.write_bytes(b"\xff\xfe not a model")
  with pytest.raises(ConfigError, match="garbage.model"):
    vocab.get_vocabulary(str(path))


@pytest.mark.parametrize("spec", ["builtin", "byte"])
def test_ids_beyond_the_vocabulary_decode_without_failing(spec):
  # A model's padding rows (1024+ for a bigger tiny model; 250100..250111 for mt5) can be
  # decoded: SentencePiece renders them as the unknown piece, bytes drop them.
  vocab.use_task_vocabulary(spec)
  try:
    v = vocab.task_vocabulary()  # what the evaluator decodes with
    ids = v.encode("river mill")
    beyond = [v.vocab_size, v.vocab_size + 11, 250111]
    decoded = v.decode(ids[:1] + beyond + ids[1:] + [v.eos_id, v.vocab_size + 3])
    if spec == "byte":
      assert decoded == "river mill"
    else:
      assert decoded == v.decode(ids[:1] + [v.unk_id] * 3 + ids[1:])
      assert decoded.count("\u2047") == 3  # " ⁇ ", SentencePiece's rendering of unk
  finally:
    vocab.use_task_vocabulary("builtin")


def test_ids_beyond_a_user_models_own_sentinels_decode_as_unknown(tmp_path):
  path = sentinel_models.write_model(tmp_path, "own_sentinels", "released")
  v = vocab.get_vocabulary(path)
  ids = v.encode("the mill")
  assert v.decode(ids + [v.vocab_size + 5]) == v.decode(ids + [v.unk_id])


def test_unknown_spec_names_the_valid_ones(tmp_path):
  with pytest.raises(ConfigError, match="mt5, builtin, byte"):
    vocab.get_vocabulary("mt6")
  with pytest.raises(ConfigError, match="missing.model"):
    vocab.get_vocabulary(str(tmp_path / "missing.model"))


def test_task_vocabulary_follows_override_then_gin_then_env(monkeypatch):
  monkeypatch.setenv(vocab.ENV_VAR, "byte")
  try:
    vocab.use_task_vocabulary(None)
    assert vocab.task_vocabulary().vocab_size == 359
    gin.bind_parameter("task_vocabulary_spec.spec", "builtin")
    vocab.task_vocabulary().reset()
    assert vocab.task_vocabulary().vocab_size == 1024
    gin.clear_config()
    vocab.use_task_vocabulary("byte")
    assert vocab.task_vocabulary() == vocab.get_vocabulary("byte")
  finally:
    gin.clear_config()
    vocab.use_task_vocabulary("builtin")


def test_sentinels_count_down_from_the_top():
  v = vocab.get_vocabulary("builtin")
  assert vocab.sentinel_id(v, 0) == 1023
  assert v.decode([vocab.sentinel_id(v, 0)]) == "<extra_id_0>"


def test_build_script_regenerates_the_bundled_model(tmp_path):
  out = tmp_path / "builtin.model"
  assert build_builtin_vocab.main(["--output", str(out)]) == 0
  with open(vocab.BUILTIN_MODEL_PATH, "rb") as f:
    assert out.read_bytes() == f.read()
  # The sample text stays small and covers ten scripts.
  sizes = [os.path.getsize(os.path.join(vocab.SAMPLE_TEXT_DIR, n))
           for n in os.listdir(vocab.SAMPLE_TEXT_DIR)]
  assert sum(sizes) < 300_000 and len(sizes) >= 10


def test_an_unreadable_released_vocabulary_is_one_line_saying_how_to_run_offline(tmp_path):
  # What offline looks like: the file cannot be opened (gs:// without a network, here a
  # local path that does not exist, so the test needs no network).
  missing = str(tmp_path / "mc4.250000.100extra" / "sentencepiece.model")
  vocabulary = vocab.ReleasedMt5Vocabulary(missing, extra_ids=0)
  with pytest.raises(ConfigError) as raised:
    vocabulary.encode("hello")
  message = str(raised.value)
  assert "\n" not in message and missing in message
  assert "XLTRANSFER_VOCAB=builtin" in message and "--vocab builtin" in message
  # Sizing the released vocabulary still needs no file (plan, start-of-run checks).
  assert vocab.vocabulary_size(vocab.get_vocabulary("mt5")) == 250100
