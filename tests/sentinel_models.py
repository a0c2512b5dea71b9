"""Small SentencePiece models trained by the tests, with and without their own sentinels.

The released mT5 model (gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model) cannot be
downloaded here. Its structure is public: T5-style special ids (pad 0, eos 1, unk 2), then its
unigram pieces, then 100 sentinel pieces "▁<extra_id_99>" .. "▁<extra_id_0>" as the top 100
ids, counting down (<extra_id_99> at 250000, <extra_id_0> at 250099; e.g. TextPruner's
tokenizer_utils/mt5_sp_tokenizer.py finds them as the id range from '▁<extra_id_99>' to
'▁<extra_id_0>'). These are the pieces seqio's `SentencePieceVocabulary` appends for
`extra_ids=100` (sentencepiece_model_pb2 USER_DEFINED pieces, added in reverse order), which is
how `released_layout` builds the stand-in: a unigram model trained on a tiny corpus, then those
100 pieces appended.
"""
import io
import os

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

SENTINELS = 100
_CORPUS = [
    "the river runs past the old mill and the miller sings",
    "a small boat drifts on the river at night",
    "die alte Mühle steht am Fluss und der Müller singt",
    "el río pasa junto al viejo molino",
    "le moulin est vieux et la rivière est calme",
    "the mill wheel turns slowly in the water",
] * 20


def _train(pieces: int) -> sentencepiece_model_pb2.ModelProto:
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_CORPUS), model_writer=out, vocab_size=pieces,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=False,
      character_coverage=1.0, num_threads=1, shuffle_input_sentence=False, minloglevel=2)
  return sentencepiece_model_pb2.ModelProto.FromString(out.getvalue())


def _add_sentinels(model, indices):
  for n in indices:
    model.pieces.add(piece=f"\u2581<extra_id_{n}>", score=0.0,
                     type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)


def write_model(directory, name: str, layout: str = "released", base_pieces: int = 60) -> str:
  """Trains a model and writes it to directory/name.model; returns the path.

  layout: "released" (the 100 sentinels as the top ids, counting down, as mT5's), "none"
  (no sentinels), "partial" (only <extra_id_0>..<extra_id_9>), or "ascending" (all 100 at the
  top but <extra_id_0> first, the opposite of span corruption's convention).
  """
  model = _train(base_pieces)
  if layout == "released":
    _add_sentinels(model, reversed(range(SENTINELS)))
  elif layout == "partial":
    _add_sentinels(model, reversed(range(10)))
  elif layout == "ascending":
    _add_sentinels(model, range(SENTINELS))
  elif layout != "none":
    raise ValueError(layout)
  path = os.path.join(str(directory), f"{name}.model")
  with open(path, "wb") as f:
    f.write(model.SerializeToString())
  return path
