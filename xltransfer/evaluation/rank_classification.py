"""Evaluation by rank classification (multiple choice: XCOPA, SIQA, HellaSwag, ...): every one
of an example's `choices` is scored as the target, the most likely one is the prediction; the
seqio task's `metric_fns` score it. Records carry `prediction_index` and the gold `label`."""
from xltransfer.errors import ConfigError
from xltransfer.evaluation import examples as examples_lib
from xltransfer.evaluation import inference as inference_lib


def _rank(context, task, seqio_task, examples, inputs, no_gold):
  if "choices" not in examples[0]:
    raise ConfigError(f"task {task.name} is declared to be evaluated by rank classification, "
                      "but its examples carry no `choices` field (declare it 'generation', or "
                      "keep `choices` in its preprocessors)")
  vocabulary = seqio_task.output_features["targets"].vocabulary
  length = context.settings.task_feature_lengths["targets"]
  choices = [[examples_lib.text(c) for c in ex["choices"]] for ex in examples]
  best, _ = context.runner.rank_classify(
      inputs, [inference_lib.encode_with_eos(vocabulary, c, length) for c in choices],
      description=task.name)
  outputs = [c[i] for c, i in zip(choices, best)]
  extras = [{"prediction_index": int(i),
             "label": int(ex["label"]) if no_gold is None and "label" in ex else None}
            for i, ex in zip(best, examples)]
  return outputs, extras


def predict(context, task, split):
  """(provenance, no_gold, records) of a rank-classification task."""
  return examples_lib.predict_seqio_task(context, task, split, _rank)


WAY = examples_lib.Way(predict=predict, metrics=examples_lib.metrics_of_seqio_task)
