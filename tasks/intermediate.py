"""The English intermediate tasks (Phang et al. 2020) and SQuAD v1.1: `xlt_inter_{name}`.

TFDS-backed: anli_plus (ANLI r1-r3 + MNLI + SNLI), mnli, qqp, sst2, squad_v2, squad_v1,
hellaswag, cosmosqa. File-backed under the user data dir (gin `user_data_dir.path` or
$XLTRANSFER_DATA_DIR): commonsenseqa (official JSONL) and ccg (token/tag files).
"""
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from xltransfer.data import paths, preprocessors, readers, sources
from xltransfer.data.sources import INT, STRING, STRINGS
from xltransfer.tasks import catalog, metrics, rates

NAMES = ("anli_plus", "mnli", "qqp", "sst2", "squad_v2", "ccg", "commonsenseqa", "cosmosqa",
         "hellaswag", "squad_v1")

# File layouts of the file-backed intermediate tasks, relative to the user data dir.
COMMONSENSEQA_FILES = {"train": "train_rand_split.jsonl", "validation": "dev_rand_split.jsonl",
                       "test": "test_rand_split_no_answers.jsonl"}
CCG_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}

def task_name(name, lang=None):
  return f"{catalog.PREFIX}inter_{name}" + (f"_{lang}" if lang else "")


# -- Formatting shared by the English tasks and their translations ------------------------------

FORMATS = {
    "anli_plus": [preprocessors.nli("anli")],
    "mnli": [preprocessors.nli("mnli")],
    "qqp": [preprocessors.sentence_pair("qqp", "question1", "question2",
                                        ("not_duplicate", "duplicate"))],
    "sst2": [preprocessors.single_sentence("sst2", ("negative", "positive"))],
    "squad_v2": [preprocessors.extractive_qa],
    "squad_v1": [preprocessors.extractive_qa],
    "ccg": [preprocessors.tagging("ccg")],
    "commonsenseqa": [preprocessors.multiple_choice("commonsenseqa", question_field="question")],
    "cosmosqa": [preprocessors.multiple_choice("cosmosqa", ("context",), "question")],
    "hellaswag": [preprocessors.multiple_choice("hellaswag", ("context",))],
}
METRICS = {
    "squad_v2": ([metrics.squad], metrics.qa_answers),
    "squad_v1": ([metrics.squad], metrics.qa_answers),
    "ccg": ([metrics.seqeval_accuracy], metrics.tag_sequence),
}


def metric_fns(name):
  return METRICS.get(name, ([metrics.accuracy], metrics.text))


# The multiple-choice formats keep `choices`: scored by rank classification.
RANK_CLASSIFIED = frozenset({"commonsenseqa", "cosmosqa", "hellaswag"})


def evaluation(name):
  return catalog.RANK_CLASSIFICATION if name in RANK_CLASSIFIED else catalog.GENERATION


# -- TFDS sources, mapped onto the file readers' field names ------------------------------------

def _tfds(name, split, shuffle_files, seed=None):
  read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
  return tfds.load(name, split=split, shuffle_files=shuffle_files, read_config=read_config)


def _anli_plus(split, shuffle_files=False, seed=None):
  """ANLI r1-r3 + MNLI + SNLI train (ANLI dev sets for validation), as premise/hypothesis/label."""
  def fields(premise_key):
    return lambda ex: {"premise": ex[premise_key], "hypothesis": ex["hypothesis"],
                       "label": tf.cast(ex["label"], tf.int64)}
  if split == "train":
    parts = [_tfds(f"anli/r{r}", "train", shuffle_files, seed).map(fields("context"))
             for r in (1, 2, 3)]
    parts.append(_tfds("glue/mnli", "train", shuffle_files, seed).map(fields("premise")))
    parts.append(_tfds("snli", "train", shuffle_files, seed).map(fields("premise")))
  else:
    parts = [_tfds(f"anli/r{r}", split, shuffle_files, seed).map(fields("context"))
             for r in (1, 2, 3)]
  dataset = parts[0]
  for part in parts[1:]:
    dataset = dataset.concatenate(part)
  return dataset.filter(lambda ex: ex["label"] >= 0)  # SNLI marks no-consensus pairs -1


def _glue(config, key_map, splits):
  def fn(split, shuffle_files=False, seed=None):
    ds = _tfds(f"glue/{config}", splits[split], shuffle_files, seed)
    return ds.map(lambda ex: {new: ex[old] for new, old in key_map.items()})
  return seqio.FunctionDataSource(fn, splits=tuple(splits))


def _squad(version):
  def fn(split, shuffle_files=False, seed=None):
    ds = _tfds(f"squad/{version}", split, shuffle_files, seed)
    return ds.map(lambda ex: {"id": ex["id"], "question": ex["question"], "context": ex["context"],
                              "answers": ex["answers"]["text"]})
  return seqio.FunctionDataSource(fn, splits=("train", "validation"))


def _hellaswag(split, shuffle_files=False, seed=None):
  ds = _tfds("hellaswag", split, shuffle_files, seed)
  return ds.map(lambda ex: {"context": ex["context"], "choices": ex["endings"],
                            "label": tf.cast(ex["label"], tf.int64)})


def _cosmosqa(split, shuffle_files=False, seed=None):
  ds = _tfds("cosmos_qa", split, shuffle_files, seed)
  return ds.map(lambda ex: {
      "context": ex["context"], "question": ex["question"],
      "choices": tf.stack([ex[f"answer{i}"] for i in range(4)]),
      "label": tf.cast(ex["label"], tf.int64)})


MC_CONTEXT = {"context": STRING, "choices": STRINGS, "label": INT}
MC_QUESTION = {"question": STRING, "choices": STRINGS, "label": INT}
MC_CONTEXT_QUESTION = {"context": STRING, "question": STRING, "choices": STRINGS, "label": INT}


def _file_source(name, files, reader, signature, subdir):
  def loader(split, filename):
    task = task_name(name)
    # The train and dev files need gold on every example; a test file may come without it
    # (CommonsenseQA's test_rand_split_no_answers.jsonl).
    training = split in ("train", "validation")
    return lambda: reader(paths.require_file(paths.user_path(task, subdir, filename), task),
                          training=training)
  return sources.FileDataSource({s: loader(s, f) for s, f in files.items()}, signature)


def english_sources():
  """name -> (seqio data source, data location) for the English intermediate tasks."""
  return {
      "anli_plus": (seqio.FunctionDataSource(_anli_plus, splits=("train", "validation")),
                    "tfds: anli/r1..r3, glue/mnli, snli"),
      "mnli": (_glue("mnli", {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
                     {"train": "train", "validation": "validation_matched"}), "tfds: glue/mnli"),
      "qqp": (_glue("qqp", {"text1": "question1", "text2": "question2", "label": "label"},
                    {"train": "train", "validation": "validation"}), "tfds: glue/qqp"),
      "sst2": (_glue("sst2", {"sentence": "sentence", "label": "label"},
                     {"train": "train", "validation": "validation"}), "tfds: glue/sst2"),
      "squad_v2": (_squad("v2.0"), "tfds: squad/v2.0"),
      "squad_v1": (_squad("v1.1"), "tfds: squad/v1.1"),
      "hellaswag": (seqio.FunctionDataSource(_hellaswag, splits=("train", "validation")),
                    "tfds: hellaswag"),
      "cosmosqa": (seqio.FunctionDataSource(_cosmosqa, splits=("train", "validation")),
                   "tfds: cosmos_qa"),
      "commonsenseqa": (_file_source("commonsenseqa", COMMONSENSEQA_FILES,
                                     readers.read_commonsenseqa, MC_QUESTION, "commonsenseqa"),
                        "$XLTRANSFER_DATA_DIR/commonsenseqa/{train,dev}_rand_split.jsonl"),
      "ccg": (_file_source("ccg", CCG_FILES, readers.read_tagged_tsv,
                           {"tokens": STRINGS, "tags": STRINGS}, "ccg"),
              "$XLTRANSFER_DATA_DIR/ccg/{train,dev,test}.tsv (token<TAB>supertag)"),
  }


# TFDS (name, split)s behind each TFDS-backed task's training split, for counting.
TFDS_TRAIN = {
    "anli_plus": [("anli/r1", "train"), ("anli/r2", "train"), ("anli/r3", "train"),
                  ("glue/mnli", "train"), ("snli", "train")],
    "mnli": [("glue/mnli", "train")], "qqp": [("glue/qqp", "train")],
    "sst2": [("glue/sst2", "train")], "squad_v2": [("squad/v2.0", "train")],
    "squad_v1": [("squad/v1.1", "train")], "hellaswag": [("hellaswag", "train")],
    "cosmosqa": [("cosmos_qa", "train")],
}


def register():
  for name, parts in TFDS_TRAIN.items():
    rates.register_counter(task_name(name), rates.tfds_counter(*parts))
  for name, (source, location) in english_sources().items():
    fns, postprocess = metric_fns(name)
    catalog.register_task(
        task_name(name), kind="intermediate", family=name, language="en", data=location,
        source=source, preprocessors=[*FORMATS[name], *catalog.standard_tail()],
        metric_fns=fns, postprocess_fn=postprocess, evaluation=evaluation(name))
