"""Evaluation by generation: decode each example's inputs (greedy, or beam search with
`EvalSettings.beam_size` > 1), post-process with the seqio task's `postprocess_fn` and score
with its `metric_fns`. The default way of evaluating, and the way of any seqio task (a user's
own included) that declares no other."""
from xltransfer.evaluation import examples as examples_lib


def _decode(context, task, seqio_task, examples, inputs, no_gold):
  del examples, no_gold
  settings = context.settings
  vocabulary = seqio_task.output_features["targets"].vocabulary
  tokens = context.runner.decode(inputs, settings.decode_length, settings.beam_size,
                                 settings.alpha, description=task.name)
  outputs = [vocabulary.decode([int(t) for t in row]) for row in tokens]
  # A row without EOS stopped at the decode length: its prediction may be cut short (a long
  # sentence's tags), which the metric would count as errors.
  return outputs, [{} if vocabulary.eos_id in row else {"decode_limit_reached": True}
                   for row in tokens]


def predict(context, task, split):
  """(provenance, no_gold, records) of a generation task."""
  return examples_lib.predict_seqio_task(context, task, split, _decode)


WAY = examples_lib.Way(predict=predict, metrics=examples_lib.metrics_of_seqio_task)
