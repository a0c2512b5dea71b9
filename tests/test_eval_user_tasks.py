"""Evaluation chosen by what a task declares (xltransfer.tasks.catalog), not by its name: a
user's plain seqio task is evaluated by its own metric_fns through `xltransfer eval` without
touching the evaluator, and the declarations of the catalogue's own tasks."""
import json

import jax
import pytest
import seqio
import tensorflow as tf

from xltransfer import cli
from xltransfer.data import vocab
from xltransfer.errors import ConfigError
from xltransfer.evaluation import eval_tasks
from xltransfer.evaluation import evaluator
from xltransfer.evaluation.settings import EvalSettings
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.tasks import catalog

ROWS = [("the cat sat", "a cat sat", "yes"), ("it rains", "it is dry", "no"),
        ("he ran home", "he went home", "yes")]


def _features():
  return {"inputs": seqio.Feature(vocab.get_vocabulary("builtin")),
          "targets": seqio.Feature(vocab.get_vocabulary("builtin"))}


def toy_agreement(targets, predictions):
  """The user's own metric, under a name no xltransfer metric has."""
  return {"toy_agreement": 100.0 * sum(t == p for t, p in zip(targets, predictions))
                           / len(targets)}


def _parse_tsv(line):
  premise, hypothesis, label = tf.unstack(tf.strings.split(line, "\t", maxsplit=2), num=3)
  return {"inputs": tf.strings.join(["premise: ", premise, " hypothesis: ", hypothesis]),
          "targets": label}


def _register_toy_nli(path, name="my_toy_nli"):
  """What a user writes: plain seqio, no xlt_ prefix, no catalogue, a metric of its own."""
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.TextLineDataSource({"validation": path}),
      preprocessors=[lambda ds: ds.map(_parse_tsv), seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=_features(), metric_fns=[toy_agreement])


def _argv(checkpoint_path, output_dir, tasks):
  return ["eval", "--gin_file=models/mt5_tiny.gin", "--gin_file=eval/zeroshot.gin",
          f"--checkpoint={checkpoint_path}", f"--output_dir={output_dir}", f"--tasks={tasks}",
          "--split=validation", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 6}",
          "--gin.BATCH_SIZE=2"]


@pytest.mark.slow
def test_a_user_task_is_scored_by_its_own_metric_through_xltransfer_eval(tiny_checkpoint, tmp_path):
  data = tmp_path / "toy_nli.tsv"
  data.write_text("".join("\t".join(row) + "\n" for row in ROWS), encoding="utf-8")
  _register_toy_nli(str(data))
  out = tmp_path / "out"
  assert cli.main(_argv(tiny_checkpoint, str(out), "my_toy_nli")) == 0
  # Undeclared: filed under its own name, language "all".
  predictions = out / "predictions" / "my_toy_nli" / "all.jsonl"
  records = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
  assert [r["target"] for r in records] == ["yes", "no", "yes"]
  assert [r["input"] for r in records][0] == "premise: the cat sat hypothesis: a cat sat"
  metrics = json.loads((out / "metrics.json").read_text())
  expected = toy_agreement([r["target"] for r in records], [r["prediction"] for r in records])
  assert metrics["tasks"] == {"my_toy_nli": {"all": expected}}
  assert [r["example_score"] for r in records] == [
      100.0 * (r["target"] == r["prediction"]) for r in records]
  info = json.loads((out / "eval_info.json").read_text())
  assert info["tasks"] == {"my_toy_nli": ["my_toy_nli", "all"]}
  assert (out / "DONE").is_file()


def _register_choices_task(name, with_choices=True):
  examples = {"question": ["sky colour", "grass colour"], "choices": [["blue", "red"],
                                                                    ["red", "green"]],
              "label": [0, 1]}

  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(examples)

  def format_fn(ds):
    def fn(ex):
      row = {"inputs": ex["question"], "targets": tf.gather(ex["choices"], ex["label"])}
      if with_choices:
        row.update(choices=ex["choices"], label=ex["label"])
      return row
    return ds.map(fn)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
      preprocessors=[format_fn, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=_features(), metric_fns=[toy_agreement])


def test_declared_way_family_and_language_decide(tmp_path):
  """A user task declared rank_classification is ranked over its choices and filed under its
  declared family and language; declarations that cannot be honoured fail their task only."""
  _register_choices_task("my_toy_choice")
  catalog.declare_evaluation("my_toy_choice", evaluation=catalog.RANK_CLASSIFICATION,
                             family="toychoice", language="de")
  _register_choices_task("my_toy_nochoice", with_choices=False)
  catalog.declare_evaluation("my_toy_nochoice", evaluation=catalog.RANK_CLASSIFICATION)
  _register_choices_task("my_toy_retrieval")
  catalog.declare_evaluation("my_toy_retrieval", evaluation=catalog.RETRIEVAL, family="toyset",
                             language="en")
  tasks = eval_tasks.resolve_tasks("my_toy_choice,my_toy_nochoice,my_toy_retrieval")
  assert [(t.target, t.lang, t.evaluation) for t in tasks] == [
      ("toychoice", "de", "rank_classification"),
      ("my_toy_nochoice", "all", "rank_classification"), ("toyset", "en", "retrieval")]
  model = EncoderDecoderModel(get_config("tiny"))
  settings = EvalSettings(split="validation", batch_size=2,
                                    task_feature_lengths={"inputs": 16, "targets": 4})
  out = tmp_path / "out"
  outcome = evaluator.Evaluator(model, tasks, str(out), settings, show_progress=False).run(
      model.init(jax.random.PRNGKey(1)), step=1, checkpoint="test")
  records = [json.loads(line) for line in
             (out / "predictions" / "toychoice" / "de.jsonl").read_text().splitlines()]
  assert [r["target"] for r in records] == ["blue", "green"]
  assert [r["label"] for r in records] == [0, 1]
  for record, choices in zip(records, [["blue", "red"], ["red", "green"]]):
    assert record["prediction"] == choices[record["prediction_index"]]
  assert outcome.metrics == {"toychoice": {"de": toy_agreement(
      [r["target"] for r in records], [r["prediction"] for r in records])}}
  assert "carry no `choices` field" in outcome.failed["my_toy_nochoice"]["all"]
  assert "family 'toyset' has no retrieval set" in outcome.failed["toyset"]["en"]
  assert not (out / "DONE").exists()


def test_an_undeclared_task_name_is_not_parsed():
  seqio.TaskRegistry.remove("xlt_lookalike_eval_fr")
  seqio.TaskRegistry.add("xlt_lookalike_eval_fr",
                         source=seqio.FunctionDataSource(lambda split, shuffle_files: None,
                                                         splits=("validation",)),
                         preprocessors=[], output_features=_features())
  assert eval_tasks.eval_task("xlt_lookalike_eval_fr") == eval_tasks.EvalTask(
      "xlt_lookalike_eval_fr", "xlt_lookalike_eval_fr", "all", "generation")


def test_the_catalogue_declares_how_its_targets_are_evaluated():
  expected = {"xcopa": "rank_classification", "tatoeba": "retrieval", "mewslix": "retrieval",
              "lareqa": "retrieval"}
  targets = [e for e in catalog.entries("target") if "_eval_" in e.name]
  assert len(targets) > 100
  for entry in targets:
    task = eval_tasks.eval_task(entry.name)
    assert (task.target, task.lang) == (entry.family, entry.language)
    assert task.evaluation == expected.get(entry.family, "generation"), entry.name
  assert eval_tasks.eval_task("xlt_inter_hellaswag").evaluation == "rank_classification"
  assert eval_tasks.eval_task("xlt_inter_mnli").evaluation == "generation"
  assert all(e.evaluation is None for e in catalog.entries("mixture"))


def test_the_catalogue_refuses_bad_registrations_clearly():
  source = seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=("validation",))
  common = dict(kind="target", family="toy", language="en", data="-", source=source,
                preprocessors=[])
  with pytest.raises(ConfigError, match="unknown evaluation 'ranking'; valid: generation, "
                                        "rank_classification, retrieval"):
    catalog.register_task("xlt_toy_eval_en", **common, evaluation="ranking")
  with pytest.raises(ConfigError, match="unknown kind 'eval'"):
    catalog.register_task("xlt_toy_eval_en", **{**common, "kind": "eval"})
  assert "xlt_toy_eval_en" not in catalog.ENTRIES
  with pytest.raises(ConfigError, match="unknown evaluation 'decode'"):
    catalog.declare_evaluation("my_task", evaluation="decode")
  with pytest.raises(ConfigError, match="a catalogued task declares its evaluation"):
    catalog.declare_evaluation("xlt_xnli_eval_en", language="fr")
  assert "my_task" not in catalog.DECLARED
