"""Span-corruption tasks over monolingual text, one per language and source:

  xlt_span_mc4_{lang}      TFDS c4/multilingual (split = the mC4 language code)
  xlt_span_wiki_{lang}     TFDS wikipedia/{WIKIPEDIA_DUMP}.{lang}
  xlt_span_text_{lang}     plain-text files, one document per line:
                           $XLTRANSFER_DATA_DIR/text/{lang}/*.txt
  xlt_span_sample_{lang}   the bundled sample text (xltransfer/assets/sample_text), for tests
                           and CPU demos

registered for the default low- and high-resource languages; `register_text_corpus(lang,
pattern)` adds a language (or another file set) by pointing at files.
"""
import functools
import glob
import os

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from xltransfer.data import languages, paths, span_corruption, vocab
from xltransfer.errors import UserError
from xltransfer.tasks import catalog, rates

WIKIPEDIA_DUMP = "20230601"
DEFAULT_LANGUAGES = languages.LOW_RESOURCE_LANGUAGES + languages.HIGH_RESOURCE_LANGUAGES


def split_to_raw_length(dataset, sequence_length=None, output_features=None):
  """Cuts token sequences so that span-corrupted inputs (+EOS) fit `sequence_length["inputs"]`."""
  inputs_length = (sequence_length or {}).get("inputs") or 512
  raw_length, _ = span_corruption.raw_length_for(inputs_length)
  return span_corruption.split_tokens(dataset, output_features, max_tokens=raw_length)


PREPROCESSORS = [
    functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
    seqio.preprocessors.tokenize,
    split_to_raw_length,
    span_corruption.span_corruption,
    seqio.preprocessors.append_eos_after_trim,
]


def _text_only(ds):
  return ds.map(lambda ex: {"text": ex["text"]})


def _mc4(lang):
  code = languages.MC4_LANGUAGE_CODES.get(lang, lang)

  def fn(split, shuffle_files=False, seed=None):
    del seed
    name = code if split == "train" else f"{code}-validation"
    return _text_only(tfds.load("c4/multilingual", split=name, shuffle_files=shuffle_files))
  return seqio.FunctionDataSource(fn, splits=("train", "validation"))


def _wikipedia(lang):
  def fn(split, shuffle_files=False, seed=None):
    del split, seed
    return _text_only(tfds.load(f"wikipedia/{WIKIPEDIA_DUMP}.{lang}", split="train",
                                shuffle_files=shuffle_files))
  return seqio.FunctionDataSource(fn, splits=("train",))


def _text_files(task, pattern_fn):
  def fn(split, shuffle_files=False, seed=None):
    del split
    pattern = pattern_fn()
    files = sorted(glob.glob(pattern))
    if not files:
      raise UserError(f"task {task} found no text files matching {pattern}")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
      ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TextLineDataset, cycle_length=min(4, len(files)))
    return ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0).map(
        lambda line: {"text": line})
  return seqio.FunctionDataSource(fn, splits=("train",))


def _register(name, lang, source, data, counter):
  catalog.register_task(name, kind="corpus", family="span_corruption", language=lang, data=data,
                        source=source, preprocessors=PREPROCESSORS, metric_fns=[])
  rates.register_counter(name, counter)  # Mixing rates count the corpus' documents.
  return name


def register_text_corpus(lang: str, pattern=None, name=None) -> str:
  """Registers span corruption over plain-text files (one document per line) for lang.

  pattern defaults to $XLTRANSFER_DATA_DIR/text/{lang}/*.txt, resolved when data is read.
  """
  name = name or f"{catalog.PREFIX}span_text_{lang}"

  def default_pattern():
    return paths.user_path(name, "text", lang, "*.txt")

  pattern_fn = (lambda: pattern) if pattern else default_pattern
  return _register(name, lang, _text_files(name, pattern_fn),
                   pattern or f"$XLTRANSFER_DATA_DIR/text/{lang}/*.txt",
                   rates.text_counter(pattern_fn))


def sample_text_languages():
  return sorted(f[:-4] for f in os.listdir(vocab.SAMPLE_TEXT_DIR) if f.endswith(".txt"))


def register():
  for lang in DEFAULT_LANGUAGES:
    code = languages.MC4_LANGUAGE_CODES.get(lang, lang)
    _register(f"{catalog.PREFIX}span_mc4_{lang}", lang, _mc4(lang),
              f"tfds: c4/multilingual split {code}", rates.tfds_counter(("c4/multilingual", code)))
    wiki = f"wikipedia/{WIKIPEDIA_DUMP}.{lang}"
    _register(f"{catalog.PREFIX}span_wiki_{lang}", lang, _wikipedia(lang), f"tfds: {wiki}",
              rates.tfds_counter((wiki, "train")))
    register_text_corpus(lang)
  for lang in sample_text_languages():
    pattern = os.path.join(vocab.SAMPLE_TEXT_DIR, f"{lang}.txt")
    register_text_corpus(lang, pattern, name=f"{catalog.PREFIX}span_sample_{lang}")
