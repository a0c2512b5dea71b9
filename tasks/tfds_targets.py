"""TFDS sources for the XTREME-R tasks, used instead of the download layout when gin binds
`target_source.value = "tfds"` (or $XLTRANSFER_TARGET_SOURCE=tfds).

Eval tasks: xnli (validation, test), wikiann/{lang} (PAN-X), xtreme_pos/xtreme_pos_{lang}
(UD-POS, 33 of the 38 languages; its validation split is `dev`), xquad/{lang} (test; 11 of the
12 languages, no Romanian), mlqa/{lang} (validation, test), tydi_qa/goldp (its
validation-{lang} splits) and tatoeba/tatoeba_{lang} (36 of the 41 languages; read by
`xltransfer.data.retrieval`).
English training tasks: multi_nli (XNLI; validation from xnli's English), super_glue/copa
(XCOPA), xtreme_pos_en, wikiann/en, squad/v1.1 (XQuAD, MLQA) and tydi_qa/goldp (its
multilingual train split filtered to English). LAReQA's sentence pairs and Mewsli-X stay files.
Each function maps TFDS features onto the fields the file readers produce, so the same
preprocessors apply; `provenance(family, lang, split)` says which TFDS dataset and split an eval
task reads (all of them carry gold). xnli examples also carry their cross-language `item`.
"""
import tensorflow as tf
import tensorflow_datasets as tfds

from xltransfer.data import gold, paths

# The switch lives with the data paths, so that xltransfer.data.retrieval reads it too.
ENV_VAR = paths.TARGET_SOURCE_ENV_VAR
target_source = paths.target_source
XTREME_POS_LANGUAGES = frozenset(
    "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr ur "
    "vi yo zh".split())
XQUAD_LANGUAGES = frozenset("ar de el en es hi ru th tr vi zh".split())
TYDIQA_LANGUAGES = frozenset("en ar bn fi id ko ru sw te".split())
XTREME_POS_SPLITS = {"validation": "dev"}


def english_tydiqa(ex):
  """tydi_qa/goldp's train split mixes languages; its ids start with the language name."""
  return tf.strings.regex_full_match(ex["id"], "english-.*")


def _load(name, split, shuffle_files):
  return tfds.load(name, split=split, shuffle_files=shuffle_files)


def _class_names(name, feature):
  info = tfds.builder(name).info.features[feature]
  return tf.constant(info.feature.names)


def _label_names(names, labels):
  """ClassLabel ids to label words ("" for the -1 of unlabeled examples)."""
  return tf.where(labels >= 0, tf.gather(names, tf.maximum(labels, 0)), "")


def _xnli(lang):
  def fn(split, shuffle_files=False, seed=None):
    del seed
    names = tf.constant(["entailment", "neutral", "contradiction"])

    def pick(ex):
      hyp = ex["hypothesis"]

      def hypothesis(language):
        return hyp["translation"][tf.argmax(tf.cast(tf.equal(hyp["language"], language),
                                                    tf.int32))]
      # One TFDS example holds one pair in every language (no pairID feature): its English
      # pair names the item, whatever order the split is read in.
      item = tf.strings.as_string(tf.strings.to_hash_bucket_fast(
          tf.strings.join([ex["premise"]["en"], hypothesis("en")], "\t"), 2**63 - 1))
      return {"premise": ex["premise"][lang], "hypothesis": hypothesis(lang),
              "label": _label_names(names, ex["label"]), "item": item}
    return _load("xnli", split, shuffle_files).map(pick)
  return fn


def _mnli_train(split, shuffle_files=False, seed=None):
  """XNLI's English training data is MultiNLI; its validation, XNLI's English dev set."""
  if split != "train":
    return _xnli("en")(split, shuffle_files, seed)
  names = tf.constant(["entailment", "neutral", "contradiction"])
  return _load("multi_nli", "train", shuffle_files).map(
      lambda ex: {"premise": ex["premise"], "hypothesis": ex["hypothesis"],
                  "label": _label_names(names, ex["label"])})


def _copa(split, shuffle_files=False, seed=None):
  del seed
  return _load("super_glue/copa", split, shuffle_files).map(
      lambda ex: {"premise": ex["premise"], "question": ex["question"],
                  "choices": tf.stack([ex["choice1"], ex["choice2"]]), "label": ex["label"]})


def _tagged(name, feature, split_names=None):
  def fn(split, shuffle_files=False, seed=None):
    del seed
    names = _class_names(name, feature)
    return _load(name, (split_names or {}).get(split, split), shuffle_files).map(
        lambda ex: {"tokens": ex["tokens"], "tags": tf.gather(names, ex[feature])})
  return fn


def _qa(name, split_name=None, keep=None):
  def fn(split, shuffle_files=False, seed=None):
    del seed
    ds = _load(name, split_name or split, shuffle_files)
    if keep is not None:
      ds = ds.filter(keep)
    return ds.map(lambda ex: {"id": ex["id"], "question": ex["question"],
                              "context": ex["context"], "answers": ex["answers"]["text"]})
  return fn


def dataset_fn(family: str, lang: str):
  """A TFDS dataset_fn(split, shuffle_files, seed) for an eval task, or None without one."""
  if family == "xnli":
    return _xnli(lang)
  if family == "panx":
    return _tagged(f"wikiann/{lang}", "tags")
  if family == "udpos" and lang in XTREME_POS_LANGUAGES:
    return _tagged(f"xtreme_pos/xtreme_pos_{lang}", "upos", XTREME_POS_SPLITS)
  if family == "xquad" and lang in XQUAD_LANGUAGES:
    return _qa(f"xquad/{lang}")
  if family == "mlqa":
    return _qa(f"mlqa/{lang}")
  if family == "tydiqa" and lang in TYDIQA_LANGUAGES:
    return _qa("tydi_qa/goldp", split_name=f"validation-{lang}")
  return None


def _tfds_name_and_split(family, lang, split):
  """The TFDS dataset and split that dataset_fn(family, lang) reads for our split."""
  if family == "xnli":
    return "xnli", split
  if family == "panx":
    return f"wikiann/{lang}", split
  if family == "udpos":
    return f"xtreme_pos/xtreme_pos_{lang}", XTREME_POS_SPLITS.get(split, split)
  if family == "tydiqa":
    return "tydi_qa/goldp", f"validation-{lang}"
  return f"{family}/{lang}", split


def provenance(family: str, lang: str, split: str) -> gold.Provenance:
  """What an eval task reads from TFDS: its TFDS splits all carry gold (xnli test labels,
  xquad/mlqa/tydi_qa answers, wikiann and xtreme_pos test tags)."""
  name, tfds_split = _tfds_name_and_split(family, lang, split)
  return gold.Provenance(f"tfds {name.split('/')[0]}", name, tfds_split)


def _tydiqa_train(split, shuffle_files=False, seed=None):
  if split == "train":
    return _qa("tydi_qa/goldp", keep=english_tydiqa)(split, shuffle_files, seed)
  return _qa("tydi_qa/goldp", split_name="validation-en")(split, shuffle_files, seed)


def train_dataset_fn(family: str):
  """A TFDS dataset_fn for a target's English training task (train, validation), or None."""
  return {
      "xnli": _mnli_train,
      "xcopa": _copa,
      "udpos": _tagged("xtreme_pos/xtreme_pos_en", "upos", XTREME_POS_SPLITS),
      "panx": _tagged("wikiann/en", "tags"),
      "xquad": _qa("squad/v1.1"),
      "mlqa": _qa("squad/v1.1"),
      "tydiqa": _tydiqa_train,
  }.get(family)
