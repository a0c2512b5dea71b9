"""The evaluator end to end on a tiny model: files in the documented format, metrics that
follow from the predictions files, resumption, the in-memory entry point and bad input."""
import glob
import json
import os

import jax
import numpy as np
import pytest
from seqeval import metrics as seqeval_metrics

from xltransfer.checkpoints import native
from xltransfer.errors import ConfigError
from xltransfer.data import vocab
from xltransfer import cli
from xltransfer.evaluation import evaluator
from xltransfer.evaluation.settings import EvalSettings
from xltransfer import metrics as metrics_lib
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel

from first_word_task import register_first_word_task

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "xtreme")
TASKS = ("xlt_xnli_eval_zh", "xlt_xcopa_eval_zh", "xlt_panx_eval_ru", "xlt_xquad_eval_zh",
         "xlt_tatoeba_eval_de", "xlt_mewslix_eval_en")
EXPECTED_FILES = {("xnli", "zh"), ("xcopa", "zh"), ("panx", "ru"), ("xquad", "zh"),
                  ("tatoeba", "de"), ("mewslix", "en")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  config = get_config("tiny")
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(0))
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  native.save_params(params, config, path)
  return path


def _argv(checkpoint_path, output_dir, tasks=",".join(TASKS), extra=()):
  return ["--gin_file=models/mt5_tiny.gin", "--gin_file=eval/zeroshot.gin",
          f"--checkpoint={checkpoint_path}", f"--output_dir={output_dir}", f"--tasks={tasks}",
          "--split=validation", "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 12}",
          "--gin.BATCH_SIZE=4", *extra]


@pytest.fixture(scope="module")
def evaluated(checkpoint, tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XTREME_DATA_DIR", FIXTURES)
    root = tmp_path_factory.mktemp("eval")
    output_dir, submission_dir = str(root / "out"), str(root / "submission")
    assert cli.main(["eval", *_argv(checkpoint, output_dir,
                                extra=[f"--submission_dir={submission_dir}"])]) == 0
    yield output_dir, submission_dir, patch


def _records(output_dir, target, lang):
  with open(os.path.join(output_dir, "predictions", target, f"{lang}.jsonl")) as f:
    return [json.loads(line) for line in f]


def _metrics(output_dir):
  with open(os.path.join(output_dir, "metrics.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_writes_the_documented_files(evaluated, checkpoint):
  output_dir, _, _ = evaluated
  files = {(os.path.basename(os.path.dirname(p)), os.path.basename(p)[:-len(".jsonl")])
           for p in glob.glob(os.path.join(output_dir, "predictions", "*", "*.jsonl"))}
  assert files == EXPECTED_FILES
  for target, lang in EXPECTED_FILES:
    for record in _records(output_dir, target, lang):
      assert {"id", "input", "target", "prediction", "example_score"} <= set(record)
      assert 0.0 <= record["example_score"] <= 100.0
  summary = _metrics(output_dir)
  assert set(summary) == {"checkpoint", "step", "tasks", "no_gold", "failed", "truncated"}
  # At 48 input tokens XQuAD's contexts are cut; the counts are the records' own flags.
  assert summary["truncated"]["xquad"]["zh"]["inputs_truncated"] > 0
  # Retrieval counts its queries: Mewsli-X mentions with their context exceed 48 tokens.
  assert summary["truncated"]["mewslix"]["en"]["inputs_truncated"] > 0
  for target, by_lang in summary["truncated"].items():
    for lang, counts in by_lang.items():
      records = _records(output_dir, target, lang)
      assert counts == {"examples": len(records),
                        "inputs_truncated": sum("input_truncated" in r for r in records),
                        "decode_limit_reached": sum("decode_limit_reached" in r for r in records)}
  assert summary["no_gold"] == {} and summary["failed"] == {}
  assert summary["checkpoint"] == checkpoint and summary["step"] == 0
  assert {(t, l) for t, by_lang in summary["tasks"].items() for l in by_lang} == EXPECTED_FILES
  for by_lang in summary["tasks"].values():
    for values in by_lang.values():
      assert all(0.0 <= v <= 100.0 for v in values.values())
  assert os.path.isfile(os.path.join(output_dir, "DONE"))
  assert glob.glob(os.path.join(output_dir, "tensorboard", "events.out.tfevents.*"))
  with open(os.path.join(output_dir, "eval_info.json")) as f:
    splits = json.load(f)["splits"]
  assert splits["xnli"]["zh"] == "validation" and splits["xquad"]["zh"] == "test"


def test_metrics_follow_from_the_prediction_files(evaluated):
  output_dir, _, _ = evaluated
  scores = _metrics(output_dir)["tasks"]
  for target, lang in (("xnli", "zh"), ("xcopa", "zh"), ("tatoeba", "de")):
    records = _records(output_dir, target, lang)
    correct = [r["prediction"] == r["target"] for r in records]
    assert scores[target][lang]["accuracy"] == pytest.approx(100.0 * np.mean(correct))
    assert [r["example_score"] for r in records] == [100.0 * c for c in correct]
  for r in _records(output_dir, "xcopa", "zh"):
    assert r["label"] in (0, 1) and r["prediction_index"] in (0, 1)
  tatoeba = _records(output_dir, "tatoeba", "de")
  back = [r["prediction_en_to_xx"] == r["target"] for r in tatoeba]
  assert scores["tatoeba"]["de"]["accuracy_en_to_xx"] == pytest.approx(100.0 * np.mean(back))
  panx = _records(output_dir, "panx", "ru")
  assert all(len(r["prediction"]) == len(r["target"]) for r in panx)
  expected_f1 = 100.0 * seqeval_metrics.f1_score([r["target"] for r in panx],
                                                 [r["prediction"] for r in panx])
  assert scores["panx"]["ru"]["f1"] == pytest.approx(expected_f1)
  mewslix = _records(output_dir, "mewslix", "en")
  reciprocal = [next((1.0 / (i + 1) for i, e in enumerate(r["prediction"][:20])
                      if e in r["target"]), 0.0) for r in mewslix]
  assert scores["mewslix"]["en"]["map@20"] == pytest.approx(100.0 * np.mean(reciprocal))
  xquad = _records(output_dir, "xquad", "zh")
  assert all(isinstance(r["target"], list) and isinstance(r["prediction"], str) for r in xquad)
  assert scores["xquad"]["zh"] == pytest.approx(metrics_lib.squad_f1_em(
      [r["target"] for r in xquad], [r["prediction"] for r in xquad]))


def test_submission_layout_for_test_splits(evaluated):
  output_dir, submission_dir, _ = evaluated
  with open(os.path.join(submission_dir, "xquad", "test-zh.json")) as f:
    answers = json.load(f)
  assert answers == {r["id"]: r["prediction"] for r in _records(output_dir, "xquad", "zh")}
  with open(os.path.join(submission_dir, "tatoeba", "test-de.tsv")) as f:
    assert [int(line) for line in f] == [r["prediction"]
                                         for r in _records(output_dir, "tatoeba", "de")]
  # Tasks read from their validation split have no place in a test submission.
  assert not os.path.exists(os.path.join(submission_dir, "xnli"))


def test_resumes_from_complete_prediction_files(evaluated, checkpoint, capsys):
  output_dir, _, _ = evaluated
  # Edit two finished files so that recomputing them would give other metrics, and delete
  # a third, which must be recomputed identically.
  for target, lang in (("xnli", "zh"), ("panx", "ru")):
    records = _records(output_dir, target, lang)
    path = os.path.join(output_dir, "predictions", target, f"{lang}.jsonl")
    with open(path, "w") as f:
      for r in records:
        f.write(json.dumps(dict(r, prediction=r["target"])) + "\n")
  tatoeba_path = os.path.join(output_dir, "predictions", "tatoeba", "de.jsonl")
  with open(tatoeba_path) as f:
    tatoeba_before = f.read()
  os.remove(tatoeba_path)
  os.remove(os.path.join(output_dir, "DONE"))
  assert cli.main(["eval", *_argv(checkpoint, output_dir)]) == 0
  # The command lists the tasks the 48-token inputs cut, with the counts metrics.json has.
  counts = _metrics(output_dir)["truncated"]["xquad"]["zh"]
  assert (f"xquad    zh   cut at the lengths: {counts['inputs_truncated']} of "
          f"{counts['examples']} inputs") in capsys.readouterr().out
  scores = _metrics(output_dir)["tasks"]
  assert scores["xnli"]["zh"]["accuracy"] == 100.0
  assert scores["panx"]["ru"]["f1"] == 100.0
  with open(tatoeba_path) as f:
    assert f.read() == tatoeba_before
  assert os.path.isfile(os.path.join(output_dir, "DONE"))


def test_unknown_task_is_exit_2_naming_it(checkpoint, tmp_path, capsys):
  assert cli.main(["eval", *_argv(checkpoint, str(tmp_path), tasks="xlt_xnli_eval_zz")]) == 2
  err = capsys.readouterr().err
  # Reported from the remembered names, before TensorFlow loads (registered_names.py).
  assert ("task or mixture 'xlt_xnli_eval_zz' is not a registered seqio task or mixture; did "
          "you mean xlt_xnli_eval_" in err and "Traceback" not in err)


def test_missing_checkpoint_is_exit_2(tmp_path, capsys):
  missing = str(tmp_path / "no_such_checkpoint")
  assert cli.main(["eval", *_argv(missing, str(tmp_path / "out"), tasks="xlt_xnli_eval_zh")]) == 2
  assert (f"error: CHECKPOINT_PATH (--checkpoint) {missing}: no such file or directory"
          in capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "out" / "DONE")


def test_missing_gin_file_is_exit_2(capsys):
  assert cli.main(["eval", *["--checkpoint=/x", "--output_dir=/y"]]) == 2
  assert "--gin_file" in capsys.readouterr().err


def _register_copy_task(path):
  """A task whose target is the input's first word: `xlt_copytest_eval_en`."""
  register_first_word_task(path, "copytest")


@pytest.mark.slow
def test_in_memory_parameters_with_a_task_registered_here(tmp_path):
  data = tmp_path / "copy.txt"
  data.write_text("hello world\nguten tag\nbonjour\n", encoding="utf-8")
  _register_copy_task(str(data))
  model = EncoderDecoderModel(get_config("tiny"))
  params = model.init(jax.random.PRNGKey(1))
  settings = EvalSettings(split="validation", batch_size=2,
                                    task_feature_lengths={"inputs": 16, "targets": 6})
  out = str(tmp_path / "step_7")
  results = evaluator.evaluate_params(model, params, "xlt_copytest_eval_en", out, step=7,
                                      settings=settings, show_progress=False)
  records = _records(out, "copytest", "en")
  assert [r["target"] for r in records] == ["hello", "guten", "bonjour"]
  expected = 100.0 * np.mean([r["prediction"] == r["target"] for r in records])
  assert results == {"copytest": {"en": {"accuracy": pytest.approx(expected)}}}
  assert _metrics(out)["step"] == 7
  # Greedy decoding through the evaluator is the model's own greedy decoding.
  tokens = vocab.get_vocabulary("builtin").encode("hello world") + [1]
  decoded = model.greedy_decode(params, np.asarray([tokens + [0] * (16 - len(tokens))],
                                                   np.int32), 6)
  assert records[0]["prediction"] == vocab.get_vocabulary("builtin").decode(
      [int(t) for t in np.asarray(decoded)[0]])


def test_lareqa_map_over_the_eleven_language_pool(tmp_path, monkeypatch, request):
  # LAReQA's pool holds the answer sentences of all 11 languages; the fixture has three, so
  # the others are stood in for by copies of the English file (same question ids).
  from xltransfer.data import languages
  pool = tmp_path / "lareqa" / "xquad-r"
  pool.mkdir(parents=True)
  source = os.path.join(FIXTURES, "lareqa", "xquad-r")
  for lang in languages.TARGET_LANGUAGES["lareqa"]:
    name = f"{lang}.json" if os.path.exists(os.path.join(source, f"{lang}.json")) else "en.json"
    with open(os.path.join(source, name), encoding="utf-8") as f:
      (pool / f"{lang}.json").write_text(f.read(), encoding="utf-8")
  monkeypatch.setenv("XTREME_DATA_DIR", str(tmp_path))
  monkeypatch.setenv("XLTRANSFER_VOCAB", "builtin")
  vocab.use_task_vocabulary(None)  # Resolve the tasks' vocabulary again, from the environment.
  request.addfinalizer(lambda: vocab.use_task_vocabulary(None))
  model = EncoderDecoderModel(get_config("tiny"))
  settings = EvalSettings(batch_size=4, task_feature_lengths={"inputs": 32,
                                                                        "targets": 4})
  out = str(tmp_path / "out")
  results = evaluator.evaluate_params(model, model.init(jax.random.PRNGKey(2)),
                                      "xlt_lareqa_eval_zh", out, settings=settings,
                                      show_progress=False)
  records = _records(out, "lareqa", "zh")
  assert records and all(len(r["target"]) == 11 for r in records)

  def average_precision(gold, ranked):
    hits, total = 0, 0.0
    for rank, candidate in enumerate(ranked[:20], start=1):
      if candidate in gold:
        hits += 1
        total += hits / rank
    return total / min(len(gold), 20)

  expected = 100.0 * np.mean([average_precision(set(r["target"]), r["prediction"])
                              for r in records])
  assert results["lareqa"]["zh"]["map@20"] == pytest.approx(expected)
  assert all(len(r["prediction"]) == 20 for r in records)


def test_periodic_evaluator_for_the_trainer(tmp_path):
  data = tmp_path / "copy.txt"
  data.write_text("hello world\nbonjour\n", encoding="utf-8")
  _register_copy_task(str(data))
  model = EncoderDecoderModel(get_config("tiny"))
  settings = EvalSettings(split="validation", batch_size=2,
                                    task_feature_lengths={"inputs": 16, "targets": 6})
  periodic = evaluator.PeriodicEvaluator("xlt_copytest_eval_en", str(tmp_path), settings)
  scalars = periodic(step=20, params=model.init(jax.random.PRNGKey(1)), model=model)
  step_dir = tmp_path / "zeroshot" / "step_20"
  assert (step_dir / "DONE").is_file()
  expected = _metrics(str(step_dir))["tasks"]["copytest"]["en"]["accuracy"]
  assert scalars == {"zeroshot/copytest/en/accuracy": expected,
                     "zeroshot/copytest/avg_metric": expected}
  with pytest.raises(ConfigError, match="unknown task or mixture"):
    evaluator.PeriodicEvaluator("xlt_no_such_task", str(tmp_path), settings)
