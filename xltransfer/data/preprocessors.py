"""Text-to-text formatting preprocessors (mT5 formats), written over tf.data so that file
and TFDS sources share them.

Every formatter returns `inputs` and `targets` strings plus the fields that the evaluator
needs alongside predictions:
  - classification: `label` (the target word; "" for an unlabeled test file);
  - QA: `answers` (every gold answer; empty for unanswerable, whose target is "");
  - tagging: `tokens` and `tags` (the target is the tags joined by single spaces, so a
    prediction splits back into one tag per token: `xltransfer.tasks.metrics.split_tags`);
  - multiple choice: `choices` (candidate answer strings) and `label` (index of the right one,
    -1 when unlabeled); the target is the right choice, so rank classification scores each
    choice as a target for the same inputs (`xltransfer.data.multiple_choice`).
Which examples are not independent (docs/interfaces.md, "Evaluation outputs"): an example
whose source gives it an `item` (the same string for the translations of one test item in
every language) keeps it; QA examples get `paragraph`, a fingerprint of their context, and
`parallel_extractive_qa` makes the question id the `item`.
"""
import seqio
import tensorflow as tf


def _text(*parts):
  return tf.strings.join(list(parts))


def _with_item(ex, formatted):
  """`formatted`, with the source example's `item` when it has one."""
  if "item" in ex:
    formatted["item"] = ex["item"]
  return formatted


def paragraph_id(context):
  """A string naming a QA context: the decimal Fingerprint64 of its text (questions on one
  context are not independent). A hash, not the article/paragraph position, because
  XTREME-R's remove_qa_test_annotations writes every test question as its own article."""
  return tf.strings.as_string(tf.strings.to_hash_bucket_fast(context, 2**63 - 1))


def nli(prefix: str, label_names=("entailment", "neutral", "contradiction")):
  """`{prefix}: premise: P hypothesis: H` -> label word. Integer labels index label_names."""
  names = tf.constant(label_names)

  @seqio.map_over_dataset
  def fn(ex):
    label = ex["label"]
    if label.dtype != tf.string:
      label = tf.where(label >= 0, tf.gather(names, tf.maximum(label, 0)), "")
    return _with_item(ex, {"inputs": _text(prefix, ": premise: ", ex["premise"], " hypothesis: ",
                                           ex["hypothesis"]),
                           "targets": label, "label": label})
  return fn


def sentence_pair(prefix: str, first: str, second: str, label_names):
  """`{prefix} {first}: A {second}: B` -> label word (QQP)."""
  names = tf.constant(label_names)

  @seqio.map_over_dataset
  def fn(ex):
    label = tf.where(ex["label"] >= 0, tf.gather(names, tf.maximum(ex["label"], 0)), "")
    return {"inputs": _text(prefix, " ", first, ": ", ex["text1"], " ", second, ": ", ex["text2"]),
            "targets": label, "label": label}
  return fn


def single_sentence(prefix: str, label_names):
  """`{prefix} sentence: S` -> label word (SST-2)."""
  names = tf.constant(label_names)

  @seqio.map_over_dataset
  def fn(ex):
    label = tf.where(ex["label"] >= 0, tf.gather(names, tf.maximum(ex["label"], 0)), "")
    return {"inputs": _text(prefix, " sentence: ", ex["sentence"]), "targets": label,
            "label": label}
  return fn


def _extractive_qa(ex):
  answers = ex["answers"]
  first = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(""))
  return {"inputs": _text("question: ", ex["question"], " context: ", ex["context"]),
          "targets": first, "answers": answers, "id": ex["id"],
          "paragraph": paragraph_id(ex["context"])}


@seqio.map_over_dataset
def extractive_qa(ex):
  """`question: Q context: C` -> first gold answer ("" when unanswerable), as in mT5."""
  return _extractive_qa(ex)


@seqio.map_over_dataset
def parallel_extractive_qa(ex):
  """extractive_qa for data whose question ids name one question in every language (XQuAD:
  SQuAD's ids; MLQA: one id per parallel instance): the id is also the `item`."""
  return dict(_extractive_qa(ex), item=ex["id"])


def tagging(prefix: str):
  """`{prefix}: tok1 tok2 ...` -> `TAG1 TAG2 ...`, one tag per whitespace-joined token."""

  @seqio.map_over_dataset
  def fn(ex):
    return {"inputs": _text(prefix, ": ", tf.strings.reduce_join(ex["tokens"], separator=" ")),
            "targets": tf.strings.reduce_join(ex["tags"], separator=" "),
            "tokens": ex["tokens"], "tags": ex["tags"]}
  return fn


def multiple_choice(prefix: str, context_fields=(), question_field=None):
  """`{prefix}: [field: value ...] [question: Q]` -> the right choice text.

  Keeps `choices` and `label` for rank classification.
  """

  @seqio.map_over_dataset
  def fn(ex):
    parts = [prefix, ":"]
    for field in context_fields:
      parts += [" ", field, ": ", ex[field]]
    if question_field:
      parts += [" question: ", ex[question_field]]
    label = tf.cast(ex["label"], tf.int64)
    # Unlabeled (test) examples carry -1, or in some TFDS test splits an out-of-range value.
    label = tf.where((label >= 0) & (label < tf.size(ex["choices"], out_type=tf.int64)), label, -1)
    target = tf.cond(label >= 0, lambda: tf.gather(ex["choices"], tf.maximum(label, 0)),
                     lambda: tf.constant(""))
    return {"inputs": _text(*parts), "targets": target, "choices": ex["choices"], "label": label}
  return fn


@seqio.map_over_dataset
def xcopa(ex):
  """`xcopa: premise: P question: What was the cause/effect?` -> right choice.

  COPA's `cause`/`effect` become questions; any other question (SIQA, converted to the COPA
  fields for XTREME-R's SIQA-then-COPA training) is kept as written.
  """
  question = tf.where(tf.equal(ex["question"], "cause"), "What was the cause?",
                      tf.where(tf.equal(ex["question"], "effect"), "What happened as a result?",
                               ex["question"]))
  target = tf.cond(ex["label"] >= 0, lambda: tf.gather(ex["choices"], tf.maximum(ex["label"], 0)),
                   lambda: tf.constant(""))
  return _with_item(ex, {"inputs": _text("xcopa: premise: ", ex["premise"], " question: ",
                                         question),
                         "targets": target, "choices": ex["choices"], "label": ex["label"]})


def retrieval_pair(prefix_query: str, prefix_candidate: str, query: str, candidate: str):
  """(query, candidate) text pairs for dual-encoder training: `inputs` = query text."""

  @seqio.map_over_dataset
  def fn(ex):
    return {"inputs": _text(prefix_query, ex[query]), "targets": _text(prefix_candidate, ex[candidate])}
  return fn
