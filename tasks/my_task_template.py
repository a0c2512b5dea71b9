"""A template for registering your own task: copy it, edit the parts marked EDIT, and pass the
copy to any command with --module (a file path or a module name on the import path):

  cp tasks/my_task_template.py my_tasks.py
  xltransfer tasks list --module=my_tasks.py --kind=target
  xltransfer tasks show my_toy_nli_validation --module=my_tasks.py --split=validation \
      --vocab=builtin -n 2
  xltransfer eval --module=my_tasks.py --gin_file=models/mt5_small.gin \
      --checkpoint=/path/to/checkpoint --tasks=my_toy_nli_validation --split=validation \
      --output_dir=/tmp/my_eval
  xltransfer train --module=my_tasks.py --gin_file=models/mt5_small.gin \
      --gin_file=runs/finetune.gin --gin.MIXTURE_OR_TASK_NAME="'my_toy_nli_mix'" ...

Instead of --module, a gin file may say `import my_tasks` (found beside the gin file or in the
working directory), or T5X's `MIXTURE_OR_TASK_MODULE = 'my_tasks'`. In a study, list the
module in the spec (`StudySpec.task_modules = ['my_tasks.py']`) and name the mixture as a
condition (`StudySpec.conditions = ['none', 'my_toy_nli_mix', ...]`): every stage then imports
it. tasks/README.md explains each part.
"""
import os

import seqio
import tensorflow as tf

import xltransfer.tasks  # registers the study's own tasks (the mixture below uses one)
from xltransfer.tasks import catalog
from xltransfer.tasks import metrics

# EDIT: where your data lives. The default is the small sample shipped with xltransfer (a
# header line, then premise<TAB>hypothesis<TAB>label per line).
DATA_DIR = os.environ.get("MY_TOY_NLI_DIR", os.path.join(
    os.path.dirname(xltransfer.tasks.__file__), "template_data"))
LABELS = ("entailment", "neutral", "contradiction")


def _files(split):
  return os.path.join(DATA_DIR, f"toy_nli.{split}.tsv")


# A preprocessor maps the source's examples to the text-to-text fields mT5 trains on:
# `inputs` and `targets` strings (tokenized later by `catalog.standard_tail()`).
@seqio.map_over_dataset
def toy_nli_to_text(line):
  premise, hypothesis, label = tf.unstack(tf.strings.split(line, "\t", maxsplit=2), num=3)
  return {"inputs": tf.strings.join(["toy_nli premise: ", premise, " hypothesis: ",
                                     hypothesis]),
          "targets": label}


def register():
  for split in ("train", "validation"):
    catalog.register_task(
        f"my_toy_nli_{split}",
        # kind: "target" for tasks you evaluate, "intermediate" for intermediate training.
        kind="target" if split == "validation" else "intermediate",
        # family and language name the output files: predictions/my_toy_nli/en.jsonl.
        family="my_toy_nli", language="en",
        data=_files(split),
        source=seqio.TextLineDataSource({split: _files(split)}, skip_header_lines=1),
        preprocessors=[toy_nli_to_text, *catalog.standard_tail()],
        # The metric `xltransfer eval` reports: f(targets, predictions) -> {name: value}.
        # xltransfer.tasks.metrics has the XTREME-R ones (accuracy, squad, seqeval, ...).
        metric_fns=[metrics.accuracy],
        # How the task is evaluated: "generation" (decode, then metric_fns),
        # "rank_classification" (score each of `choices`) or "retrieval".
        evaluation="generation")
  # A mixture to train on: your task beside one of the study's own (rates are relative).
  catalog.register_mixture(
      "my_toy_nli_mix", [("my_toy_nli_train", 1.0), ("xlt_span_sample_en", 0.5)],
      family="my_toy_nli")


register()
