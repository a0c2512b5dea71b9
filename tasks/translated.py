"""Intermediate tasks in other languages.

From files in the English schema: `xlt_inter_{name}_{lang}` reads
`$XLTRANSFER_DATA_DIR/translated/{name}/{split}-{lang}.{ext}` (split = train, dev) with the
same fields and format as the English files (see docs/tasks.md), and is formatted like the
English task. `register_translated_task(name, lang)` adds any task in any language; the
default low- and high-resource languages are registered on import.

From TFDS translate-train sets: `xlt_translate_train_xnli_{lang}` (xtreme_xnli),
`xlt_translate_train_xquad_{lang}` (xquad translate-train) and
`xlt_translate_train_tydiqa_{lang}` (tydi_qa/goldp translate-train-{lang}).
"""
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from xltransfer.data import languages, paths, preprocessors, readers, sources
from xltransfer.data.sources import INT, STRING
from xltransfer.tasks import catalog, intermediate, metrics, rates, targets, tfds_targets

NLI = {"premise": STRING, "hypothesis": STRING, "label": STRING}
SCHEMAS = {  # name -> (file extension, reader, signature)
    "anli_plus": ("tsv", readers.read_nli_tsv, NLI),
    "mnli": ("tsv", readers.read_nli_tsv, NLI),
    "qqp": ("tsv", readers.read_pair_tsv, {"text1": STRING, "text2": STRING, "label": INT}),
    "sst2": ("tsv", readers.read_sentence_tsv, {"sentence": STRING, "label": INT}),
    "squad_v2": ("json", readers.read_squad_json, targets.QA),
    "squad_v1": ("json", readers.read_squad_json, targets.QA),
    "ccg": ("tsv", readers.read_tagged_tsv, targets.TAGS),
    "commonsenseqa": ("jsonl", readers.read_commonsenseqa, intermediate.MC_QUESTION),
    "cosmosqa": ("jsonl", readers.read_cosmosqa, intermediate.MC_CONTEXT_QUESTION),
    "hellaswag": ("jsonl", readers.read_hellaswag, intermediate.MC_CONTEXT),
}
FILE_SPLITS = {"train": "train", "validation": "dev"}
DEFAULT_LANGUAGES = languages.LOW_RESOURCE_LANGUAGES + languages.HIGH_RESOURCE_LANGUAGES


def register_translated_task(name: str, lang: str) -> str:
  """Registers `xlt_inter_{name}_{lang}` over translated files; returns the task name."""
  if name not in SCHEMAS:
    raise ValueError(f"unknown intermediate task {name!r}; valid: {', '.join(SCHEMAS)}")
  languages.check_language(lang, languages.XTREME_R_LANGUAGES, f"translated {name}")
  extension, reader, signature = SCHEMAS[name]
  task = intermediate.task_name(name, lang)

  def loader(split):
    filename = f"{FILE_SPLITS[split]}-{lang}.{extension}"
    # Both splits feed training (the train loss and its validation): gold is required.
    return lambda: reader(paths.require_file(
        paths.user_path(task, "translated", name, filename), task), training=True)

  fns, postprocess = intermediate.metric_fns(name)
  catalog.register_task(
      task, kind="translated", family=name, language=lang,
      data=f"$XLTRANSFER_DATA_DIR/translated/{name}/{{train,dev}}-{lang}.{extension}",
      source=sources.FileDataSource({s: loader(s) for s in FILE_SPLITS}, signature),
      preprocessors=[*intermediate.FORMATS[name], *catalog.standard_tail()],
      metric_fns=fns, postprocess_fn=postprocess, evaluation=intermediate.evaluation(name))
  return task


# -- TFDS translate-train -----------------------------------------------------------------------

def _xtreme_xnli(lang):
  def fn(split, shuffle_files=False, seed=None):
    del seed
    ds = tfds.load("xtreme_xnli", split=split, shuffle_files=shuffle_files)

    def pick(ex):
      hyp = ex["hypothesis"]
      index = tf.argmax(tf.cast(tf.equal(hyp["language"], lang), tf.int32))
      return {"premise": ex["premise"][lang], "hypothesis": hyp["translation"][index],
              "label": tf.cast(ex["label"], tf.int64)}
    return ds.map(pick)
  return seqio.FunctionDataSource(fn, splits=("train",))


def _tfds_qa(name, split_name):
  def fn(split, shuffle_files=False, seed=None):
    del split, seed
    ds = tfds.load(name, split=split_name, shuffle_files=shuffle_files)
    return ds.map(lambda ex: {"id": ex["id"], "question": ex["question"],
                              "context": ex["context"], "answers": ex["answers"]["text"]})
  return seqio.FunctionDataSource(fn, splits=("train",))


def _register_tfds(name, family, lang, data, source, formatting, metric_fns, postprocess_fn,
                   counted):
  """A translate-train task; `counted` is the TFDS (name, split) that mixing rates count."""
  catalog.register_task(name, kind="translated", family=family, language=lang, data=data,
                        source=source, preprocessors=formatting, metric_fns=metric_fns,
                        postprocess_fn=postprocess_fn)
  rates.register_counter(name, rates.tfds_counter(counted))


def register_translate_train():
  qa = [preprocessors.extractive_qa, *catalog.standard_tail()]
  for lang in languages.TARGET_LANGUAGES["xnli"]:
    if lang != "en":
      _register_tfds(
          f"{catalog.PREFIX}translate_train_xnli_{lang}", "xnli", lang, "tfds: xtreme_xnli",
          _xtreme_xnli(lang), [preprocessors.nli("xnli"), *catalog.standard_tail()],
          [metrics.accuracy], metrics.text, ("xtreme_xnli", "train"))
  # TFDS xquad has translate-train for its ten non-English languages (no Romanian).
  for lang in sorted(tfds_targets.XQUAD_LANGUAGES - {"en"}):
    _register_tfds(
        f"{catalog.PREFIX}translate_train_xquad_{lang}", "xquad", lang,
        f"tfds: xquad/{lang} translate-train", _tfds_qa(f"xquad/{lang}", "translate-train"), qa,
        [metrics.squad], metrics.qa_answers, (f"xquad/{lang}", "translate-train"))
  for lang in languages.TARGET_LANGUAGES["tydiqa"]:
    if lang != "en":
      split = f"translate-train-{lang}"
      _register_tfds(
          f"{catalog.PREFIX}translate_train_tydiqa_{lang}", "tydiqa", lang,
          f"tfds: tydi_qa/goldp {split}", _tfds_qa("tydi_qa/goldp", split), qa,
          [metrics.squad], metrics.qa_answers, ("tydi_qa/goldp", split))


def register():
  for name in SCHEMAS:
    for lang in DEFAULT_LANGUAGES:
      register_translated_task(name, lang)
  register_translate_train()
