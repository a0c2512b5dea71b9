"""seqio metric and postprocess functions that adapt task outputs to
`xltransfer.metrics` (imported lazily so the registrations import without it).

Postprocessors receive seqio's `example` (NumPy values, bytes for strings) and turn the decoded
prediction or the target into what the official metric expects.
"""

# seqeval needs a tag for every token; a prediction that runs short is padded with this.
PAD_TAG = "O"


def _metrics():
  from xltransfer import metrics  # pylint: disable=g-import-not-at-top
  return metrics


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def accuracy(targets, predictions):
  return _metrics().accuracy(targets, predictions)


def squad(targets, predictions):
  return _metrics().squad_f1_em(targets, predictions)


def mlqa(lang):
  def metric(targets, predictions):
    return _metrics().mlqa_f1_em(targets, predictions, lang)
  metric.__name__ = f"mlqa_f1_em_{lang}"
  return metric


def seqeval(targets, predictions):
  return _metrics().seqeval_f1(targets, predictions)


def qa_answers(output, example=None, is_target=False):
  """Targets become every gold answer ([""] when unanswerable); predictions stay text."""
  if is_target:
    answers = [_text(a) for a in example["answers"]]
    return answers or [""]
  return _text(output)


def split_tags(prediction: str, num_tokens: int) -> list:
  """One tag per input token from a whitespace-separated tag prediction.

  Extra tags are dropped and missing ones become "O", so seqeval always sees aligned lists.
  """
  tags = prediction.split()[:num_tokens]
  return tags + [PAD_TAG] * (num_tokens - len(tags))


def tag_sequence(output, example=None, is_target=False):
  if is_target:
    return [_text(t) for t in example["tags"]]
  return split_tags(_text(output), len(example["tokens"]))


def text(output, example=None, is_target=False):
  del example, is_target
  return _text(output)


def seqeval_accuracy(targets, predictions):
  """Per-token accuracy over aligned tag lists (CCG supertagging's usual score)."""
  pairs = [(t, p) for ts, ps in zip(targets, predictions) for t, p in zip(ts, ps)]
  return {"accuracy": 100.0 * sum(t == p for t, p in pairs) / max(1, len(pairs))}
