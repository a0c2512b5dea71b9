"""Vocabularies: the released mT5 SentencePiece model, a small bundled one, bytes, or a file.

`get_vocabulary(spec)` turns a spec into a `seqio.Vocabulary`:
  "mt5"      the released mT5 model, used as it is (extra_ids=0, as multilingual-t5's tasks
             and T5X's mT5 gin files use it): 250000 pieces plus its own 100 sentinel pieces
             `<extra_id_99>`..`<extra_id_0>` at ids 250000..250099, 250100 ids in all; the
             model pads its embedding to 250112 rows. Loaded lazily from gs://, so naming it
             needs no network.
  "builtin"  a 924-piece SentencePiece model trained on the bundled sample text in 15
             languages and 10 scripts (+100 extra ids = 1024, the tiny config's vocab_size).
             For tests, the demo and CPU experiments; `build_builtin_vocab.py` regenerates it.
  "byte"     seqio.ByteVocabulary (ByT5-style, 256 bytes + 3 specials + 100 extra ids).
  a path     any SentencePiece .model file (local or gs://, read once here). A model that
             defines <extra_id_0>..<extra_id_99> itself as its top 100 ids, counting down as
             the released one does, is used as it is; a model without them gets 100 extra ids;
             anything in between is a ConfigError naming the file.

Sentinel <extra_id_N> is id `vocab_size - 1 - N` in every case, the convention of seqio and
of span corruption (`sentinel_id`).

Decoding ids the vocabulary does not have (a model's padding rows, 250100..250111 for mt5, or
any id >= vocab_size) never fails: seqio's `Vocabulary.decode` maps them to the unknown piece,
which SentencePiece renders as " ⁇ " (as T5X's predictions do); the byte vocabulary drops them.

Registered tasks use `task_vocabulary()`, a vocabulary that resolves its spec when first used,
so the choice can be made after `import xltransfer.tasks`: by
`xltransfer.data.vocab.use_task_vocabulary("builtin")`, the gin binding
`task_vocabulary_spec.spec = "builtin"` or the environment variable `XLTRANSFER_VOCAB`;
"mt5" otherwise.

This module registers the gin configurable `task_vocabulary_spec`, so a gin file's
`import xltransfer.data.vocab` (models/mt5_tiny.gin) imports it while the config is parsed:
seqio and TensorFlow (seconds to import) are imported when a vocabulary is first made, and its
seqio subclasses (`ReleasedMt5Vocabulary`, `DeferredVocabulary`) are defined then.
"""
from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING

import gin

from xltransfer.errors import ConfigError

if TYPE_CHECKING:
  import seqio

# pylint: disable=import-outside-toplevel
# (seqio, tensorflow and sentencepiece's protos: see the docstring)

MT5_MODEL_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
BUILTIN_MODEL_PATH = os.path.join(ASSETS_DIR, "builtin_spm.model")
SAMPLE_TEXT_DIR = os.path.join(ASSETS_DIR, "sample_text")
EXTRA_IDS = 100
# The released model's size, published with it (its last 100 pieces are its sentinels): used
# by `vocabulary_size` so that checking a config against it needs no download.
MT5_NUM_IDS = 250100
_SENTINEL_PIECE = re.compile(r"^\u2581?<extra_id_(\d+)>$")
NAMED_SPECS = ("mt5", "builtin", "byte")
ENV_VAR = "XLTRANSFER_VOCAB"


@functools.lru_cache(maxsize=None)
def _vocabulary_classes():
  """(ReleasedMt5Vocabulary, DeferredVocabulary), defined on first use (see the docstring)."""
  import seqio
  import tensorflow as tf

  class ReleasedMt5Vocabulary(seqio.SentencePieceVocabulary):
    """The released mT5 vocabulary, read from Google's bucket when first used. Offline (or
    without access) that read fails deep inside TensorFlow's file system; this says so in one
    line, with the ways to run without it."""

    def _model_context(self):
      try:
        return super()._model_context()
      except (tf.errors.OpError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"cannot read the mT5 vocabulary {self.sentencepiece_model_file} ({reason}); offline, "
            f"use the bundled one (XLTRANSFER_VOCAB=builtin, or --vocab builtin for `xltransfer "
            f"tasks`, or the gin binding task_vocabulary_spec.spec = 'builtin') or a local copy "
            f"of the released file (XLTRANSFER_VOCAB=/path/to/sentencepiece.model)") from None

  class DeferredVocabulary(seqio.Vocabulary):
    """A vocabulary that becomes `get_vocabulary(task_vocabulary_spec())` when first used.

    seqio fixes a task's vocabulary at registration, which happens on import, before gin
    files are parsed; deferring the choice lets one set of registrations serve every vocabulary.
    Once resolved it stays fixed until `use_task_vocabulary` (or `reset`) changes it.
    """

    def __init__(self):
      super().__init__(extra_ids=0)
      self._resolved = None
      self.spec = None  # The spec it resolved to.

    def reset(self):
      """Forgets the resolved vocabulary; the next use resolves the spec again."""
      self._resolved = None
      self.spec = None

    @property
    def resolved(self) -> seqio.Vocabulary:
      if self._resolved is None:
        spec = task_vocabulary_spec()
        self._resolved = get_vocabulary(spec)
        self.spec = spec
      return self._resolved

    # The public methods delegate whole, so the resolved vocabulary handles its own extra ids.
    @property
    def bos_id(self):
      return self.resolved.bos_id

    @property
    def eos_id(self):
      return self.resolved.eos_id

    @property
    def unk_id(self):
      return self.resolved.unk_id

    @property
    def pad_id(self):
      return self.resolved.pad_id

    @property
    def extra_ids(self):
      return self.resolved.extra_ids

    @property
    def vocab_size(self):
      return self.resolved.vocab_size

    @property
    def _base_vocab_size(self):
      return self.resolved.vocab_size - self.resolved.extra_ids

    def encode(self, s):
      return self.resolved.encode(s)

    def decode(self, ids):
      return self.resolved.decode(ids)

    def encode_tf(self, s):
      return self.resolved.encode_tf(s)

    def decode_tf(self, ids):
      return self.resolved.decode_tf(ids)

    def _encode(self, s):
      return self.resolved.encode(s)

    def _decode(self, ids):
      return self.resolved.decode(ids)

    def _encode_tf(self, s):
      return self.resolved.encode_tf(s)

    def _decode_tf(self, ids):
      return self.resolved.decode_tf(ids)

    def __eq__(self, other):
      if isinstance(other, DeferredVocabulary):
        other = other.resolved
      return self.resolved == other

    def __hash__(self):
      return id(self)

    def __str__(self):
      return f"DeferredVocabulary({self.resolved})"

  for cls in (ReleasedMt5Vocabulary, DeferredVocabulary):
    cls.__module__, cls.__qualname__ = __name__, cls.__name__  # importable, picklable
  return ReleasedMt5Vocabulary, DeferredVocabulary


def __getattr__(name):
  # `vocab.ReleasedMt5Vocabulary`, `vocab.DeferredVocabulary`: defined on first use.
  if name in ("ReleasedMt5Vocabulary", "DeferredVocabulary"):
    released, deferred = _vocabulary_classes()
    return released if name == "ReleasedMt5Vocabulary" else deferred
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str = "mt5") -> seqio.Vocabulary:
  """Returns the vocabulary for "mt5", "builtin", "byte" or a SentencePiece model path."""
  import seqio
  if spec == "mt5":
    return _vocabulary_classes()[0](MT5_MODEL_PATH, extra_ids=0)
  if spec == "builtin":
    return seqio.SentencePieceVocabulary(BUILTIN_MODEL_PATH, extra_ids=EXTRA_IDS)
  if spec == "byte":
    return seqio.ByteVocabulary(extra_ids=EXTRA_IDS)
  if spec.endswith(".model") and (spec.startswith("gs://") or os.path.isfile(spec)):
    extra_ids = 0 if defines_own_sentinels(spec) else EXTRA_IDS
    return seqio.SentencePieceVocabulary(spec, extra_ids=extra_ids)
  raise ConfigError(
      f"unknown vocabulary {spec!r}: use one of {', '.join(NAMED_SPECS)} or the path of an "
      "existing SentencePiece .model file")


def defines_own_sentinels(model_file: str) -> bool:
  """Whether a SentencePiece model holds the 100 sentinel pieces itself.

  True when its pieces include <extra_id_0>..<extra_id_99> (with or without the leading "▁")
  at the ids span corruption uses, <extra_id_N> at `size - 1 - N`, as in the released mT5
  model; False when it has none. A partial or misplaced set raises ConfigError.
  """
  from google.protobuf import message as protobuf_message
  from sentencepiece import sentencepiece_model_pb2
  import tensorflow as tf
  try:
    with tf.io.gfile.GFile(model_file, "rb") as f:
      model = sentencepiece_model_pb2.ModelProto.FromString(f.read())
  except (tf.errors.OpError, protobuf_message.DecodeError) as e:
    raise ConfigError(f"{model_file}: cannot read it as a SentencePiece model ({e})") from e
  if not model.pieces:
    raise ConfigError(f"{model_file}: not a SentencePiece model (it has no pieces)")
  found = {}
  for piece_id, piece in enumerate(model.pieces):
    match = _SENTINEL_PIECE.match(piece.piece)
    if match:
      found[int(match.group(1))] = piece_id
  if not found:
    return False
  size = len(model.pieces)
  missing = sorted(set(range(EXTRA_IDS)) - set(found))
  unexpected = sorted(set(found) - set(range(EXTRA_IDS)))
  if missing or unexpected:
    details = "; ".join(
        part for part in (
            f"missing {_sentinel_names(missing)}" if missing else "",
            f"unexpected {_sentinel_names(unexpected)}" if unexpected else "") if part)
    raise ConfigError(
        f"{model_file}: defines {len(found)} of the {EXTRA_IDS} sentinel pieces "
        f"<extra_id_0>..<extra_id_{EXTRA_IDS - 1}> ({details}); define all of them as the "
        f"model's top {EXTRA_IDS} ids, or none (then {EXTRA_IDS} extra ids are added)")
  misplaced = [n for n in range(EXTRA_IDS) if found[n] != size - 1 - n]
  if misplaced:
    n = misplaced[0]
    raise ConfigError(
        f"{model_file}: <extra_id_{n}> is piece {found[n]}, but span corruption uses id "
        f"{size - 1 - n} (size - 1 - {n}) for it; the sentinels must be the model's top "
        f"{EXTRA_IDS} pieces counting down, <extra_id_0> last, as in the released mT5 model")
  return True


def _sentinel_names(indices) -> str:
  shown = ", ".join(f"<extra_id_{n}>" for n in indices[:5])
  return shown + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")


def vocabulary_size(vocabulary: seqio.Vocabulary) -> int:
  """`vocabulary.vocab_size`, without downloading the released mT5 model (its size is known).

  Lets `xltransfer plan` and the start-of-run checks size the default vocabulary offline.
  """
  import seqio
  if isinstance(vocabulary, _vocabulary_classes()[1]):
    vocabulary = vocabulary.resolved
  if (isinstance(vocabulary, seqio.SentencePieceVocabulary)
      and vocabulary.sentencepiece_model_file == MT5_MODEL_PATH):
    return MT5_NUM_IDS + vocabulary.extra_ids
  return vocabulary.vocab_size


_OVERRIDE = {"spec": None}


@gin.configurable
def task_vocabulary_spec(spec=None) -> str:
  """The vocabulary spec of registered tasks: `use_task_vocabulary`, else the gin binding,
  else $XLTRANSFER_VOCAB, else mt5."""
  return _OVERRIDE["spec"] or spec or os.environ.get(ENV_VAR) or "mt5"


def use_task_vocabulary(spec) -> seqio.Vocabulary:
  """Makes every registered task use `spec` from now on (e.g. "builtin" for CPU runs);
  None goes back to gin / $XLTRANSFER_VOCAB / mt5."""
  if spec is not None:
    get_vocabulary(spec)  # Fail here, not at first use, on a bad spec.
  _OVERRIDE["spec"] = spec
  vocabulary = task_vocabulary()
  vocabulary.reset()
  return vocabulary


@functools.lru_cache(maxsize=None)
def task_vocabulary() -> DeferredVocabulary:
  """The single deferred vocabulary shared by every registered xltransfer task."""
  return _vocabulary_classes()[1]()


def sentinel_id(vocabulary: seqio.Vocabulary, index: int) -> int:
  """Id of the index-th sentinel (<extra_id_index>): sentinels count down from the top id,
  whether they are seqio's extra ids or the model's own pieces (mt5)."""
  return vocabulary.vocab_size - 1 - index
