"""Acceptance for issue 18: `xltransfer eval` never scores XTREME-R's official files, whose test
gold is hidden, and scores labelled files exactly.

For each of the ten targets a tiny random mT5 is evaluated
  - on tests/fixtures/xtreme_official/ (the download's exact shapes, written by
    tests/fixtures/make_xtreme_official.py after google-research/xtreme's utils_preprocess.py):
    predictions and a "no gold" note naming the file, never a metric;
  - on the labelled original releases (tests/fixtures/xtreme_original/, gin target_source
    "original"): each metric equals the value computed here from the predictions file alone,
    without the evaluator's metric code (accuracy = right lines / lines, SQuAD F1/EM as the
    SQuAD v1.1 evaluation script defines them, chunk F1 with seqeval, mAP@20 by hand).
LAReQA is the exception the XTREME-R download itself makes: XQuAD-R is downloaded as released,
with its gold, so its official-shaped file is labelled and scored. UD-POS has no original-release
reader: its labelled file is the download's dev split (tests/fixtures/xtreme/udpos/dev-hi.tsv).
"""
import collections
import contextlib
import io
import json
import os
import re
import string

import jax
import numpy as np
import pytest
from seqeval import metrics as seqeval_metrics

from xltransfer.checkpoints import native
from xltransfer.data import languages
from xltransfer import cli
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
OFFICIAL = os.path.join(FIXTURES, "xtreme_official")
ORIGINAL = os.path.join(FIXTURES, "xtreme_original")
DOWNLOAD_WITH_GOLD = os.path.join(FIXTURES, "xtreme")
# One language per target, and the official file whose gold is hidden.
HIDDEN = {("xnli", "de"): "xnli/test-de.tsv", ("xcopa", "zh"): "xcopa/test-zh.jsonl",
          ("udpos", "hi"): "udpos/test-hi.tsv", ("panx", "ru"): "panx/test-ru.tsv",
          ("xquad", "de"): "xquad/xquad.de.json",
          ("mlqa", "en"): "mlqa/MLQA_V1/test/test-context-en-question-en.json",
          ("tydiqa", "en"): "tydiqa/tydiqa-goldp-v1.1-dev/tydiqa.goldp.en.dev.json",
          ("tatoeba", "de"): "tatoeba/de-en.en",
          ("mewslix", "en"): "mewslix/wikinews_mentions/test-en.jsonl"}
LAREQA = ("lareqa", "zh")
ALL_TASKS = ",".join(f"xlt_{t}_eval_{l}" for t, l in [*HIDDEN, LAREQA])
LABELLED_TASKS = ",".join(f"xlt_{t}_eval_{l}" for t, l in [*HIDDEN, LAREQA] if t != "udpos")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  config = get_config("tiny")
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, path)
  return path


def _with_lareqa_pool(root, base):
  """A data dir: base's target directories, plus LAReQA's pool of 11 XQuAD-R languages (the
  fixture has three; the others are copies of English, same question ids)."""
  os.makedirs(root)
  for name in os.listdir(base):
    if name != "lareqa":
      os.symlink(os.path.join(base, name), os.path.join(root, name))
  pool = os.path.join(root, "lareqa", "xquad-r")
  os.makedirs(pool)
  source = os.path.join(DOWNLOAD_WITH_GOLD, "lareqa", "xquad-r")
  for lang in languages.TARGET_LANGUAGES["lareqa"]:
    name = f"{lang}.json" if os.path.exists(os.path.join(source, f"{lang}.json")) else "en.json"
    with open(os.path.join(source, name), encoding="utf-8") as f, open(
        os.path.join(pool, f"{lang}.json"), "w", encoding="utf-8") as g:
      g.write(f.read())
  return str(root)


def _argv(checkpoint_path, out, tasks, *extra):
  return ["--gin_file=models/mt5_tiny.gin", f"--checkpoint={checkpoint_path}",
          f"--output_dir={out}", f"--tasks={tasks}",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 12}", "--gin.BATCH_SIZE=4",
          "--log_level=WARNING", *extra]


def _json(out, name):
  with open(os.path.join(out, name), encoding="utf-8") as f:
    return json.load(f)


def _records(out, target, lang):
  with open(os.path.join(out, "predictions", target, f"{lang}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def official(checkpoint, tmp_path_factory):
  root = tmp_path_factory.mktemp("official")
  data = _with_lareqa_pool(str(root / "data"), OFFICIAL)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XTREME_DATA_DIR", data)
    patch.delenv("XLTRANSFER_TARGET_SOURCE", raising=False)
    out = str(root / "out")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      code = cli.main(["eval", *_argv(checkpoint, out, ALL_TASKS)])
    required = str(root / "required")
    required_code = cli.main(["eval", *_argv(checkpoint, required, ALL_TASKS, "--require_gold")])
  return {"data": data, "out": out, "code": code, "printed": printed.getvalue(),
          "required": required, "required_code": required_code}


@pytest.mark.slow  # two evaluations of ten targets: about a minute
def test_official_files_give_predictions_and_a_no_gold_note_never_a_metric(official):
  out, data = official["out"], official["data"]
  assert official["code"] == 0
  metrics, info = _json(out, "metrics.json"), _json(out, "eval_info.json")
  assert metrics["failed"] == {}
  assert set(metrics["tasks"]) == {"lareqa"}
  for (target, lang), relative in HIDDEN.items():
    records = _records(out, target, lang)
    assert records, (target, lang)
    assert all(r["target"] is None and r["example_score"] is None and r["prediction"] is not None
               for r in records), (target, lang)
    reason = metrics["no_gold"][target][lang]
    assert os.path.join(data, relative) in reason, reason
    provenance = info["provenance"][target][lang]
    assert provenance["labelled"] is False and provenance["no_gold"] == reason
    assert provenance["source"] == "XTREME-R download"
    assert (f"{target:8s} {lang:4s} no gold, no metric; predictions only in "
            f"{out}/predictions/{target}/{lang}.jsonl: {reason}") in official["printed"]
  # XQuAD-R is downloaded with its gold: LAReQA is scored.
  assert set(metrics["tasks"]["lareqa"]) == {"zh"} and "lareqa" not in metrics["no_gold"]
  assert info["provenance"]["lareqa"]["zh"]["labelled"] is True
  assert os.path.isfile(os.path.join(out, "DONE"))


@pytest.mark.slow  # two evaluations of ten targets: about a minute
def test_official_files_with_require_gold_fail_every_hidden_target(official):
  out = official["required"]
  assert official["required_code"] == 1
  metrics = _json(out, "metrics.json")
  assert {(t, l) for t, by in metrics["failed"].items() for l in by} == set(HIDDEN)
  for (target, lang), relative in HIDDEN.items():
    error = metrics["failed"][target][lang]
    assert "no gold to score" in error and relative in error
    assert not os.path.exists(os.path.join(out, "predictions", target, f"{lang}.jsonl"))
  assert set(metrics["tasks"]) == {"lareqa"}
  assert not os.path.exists(os.path.join(out, "DONE"))


# ---- labelled: the metrics computed here from the predictions files ----

def _accuracy(pairs):
  pairs = list(pairs)
  return 100.0 * sum(a == b for a, b in pairs) / len(pairs)


def _normalize_answer(text):
  """SQuAD v1.1's normalisation: lower case, no punctuation, no articles, single spaces."""
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _f1(prediction, gold):
  predicted, expected = _normalize_answer(prediction).split(), _normalize_answer(gold).split()
  common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(predicted), common / len(expected)
  return 2 * precision * recall / (precision + recall)


def _squad(records):
  f1 = [max(_f1(r["prediction"], g) for g in r["target"]) for r in records]
  em = [max(float(_normalize_answer(r["prediction"]) == _normalize_answer(g))
            for g in r["target"]) for r in records]
  return {"f1": 100.0 * np.mean(f1), "exact_match": 100.0 * np.mean(em)}


def _map20(records):
  total = []
  for r in records:
    hits, ap = 0, 0.0
    for rank, candidate in enumerate(r["prediction"][:20], start=1):
      if candidate in r["target"]:
        hits += 1
        ap += hits / rank
    total.append(ap / min(len(r["target"]), 20))
  return {"map@20": 100.0 * np.mean(total)}


def _by_hand(target, records):
  if target in ("xnli", "xcopa"):
    return {"accuracy": _accuracy((r["prediction"], r["target"]) for r in records)}
  if target == "tatoeba":
    return {"accuracy": _accuracy((r["prediction"], r["target"]) for r in records),
            "accuracy_en_to_xx": _accuracy((r["prediction_en_to_xx"], r["target"])
                                           for r in records)}
  if target in ("panx", "udpos"):
    return {"f1": 100.0 * seqeval_metrics.f1_score([r["target"] for r in records],
                                                   [r["prediction"] for r in records])}
  if target in ("xquad", "mlqa", "tydiqa"):
    return _squad(records)
  return _map20(records)


@pytest.fixture(scope="module")
def labelled(checkpoint, tmp_path_factory):
  root = tmp_path_factory.mktemp("labelled")
  data = _with_lareqa_pool(str(root / "data"), DOWNLOAD_WITH_GOLD)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XTREME_DATA_DIR", data)
    patch.setenv("XLTRANSFER_TARGET_SOURCE", "original")
    patch.setenv("XTREME_ORIGINAL_DATA_DIR", ORIGINAL)
    out = str(root / "out")
    code = cli.main(["eval", *_argv(checkpoint, out, LABELLED_TASKS)])
    patch.setenv("XLTRANSFER_TARGET_SOURCE", "files")
    udpos = str(root / "udpos")
    udpos_code = cli.main(["eval", *_argv(checkpoint, udpos, "xlt_udpos_eval_hi",
                                      "--split=validation")])
  return {"out": out, "code": code, "udpos": udpos, "udpos_code": udpos_code}


@pytest.mark.slow  # two evaluations of ten targets: about a minute
def test_labelled_files_metric_equals_the_value_computed_from_the_predictions(labelled):
  assert labelled["code"] == 0 and labelled["udpos_code"] == 0
  checked = {}
  for out in (labelled["out"], labelled["udpos"]):
    metrics, info = _json(out, "metrics.json"), _json(out, "eval_info.json")
    assert metrics["no_gold"] == {} and metrics["failed"] == {}
    for target, by_lang in metrics["tasks"].items():
      for lang, values in by_lang.items():
        expected = _by_hand(target, _records(out, target, lang))
        for name, value in expected.items():
          assert values[name] == pytest.approx(value), (target, lang, name)
        provenance = info["provenance"][target][lang]
        assert provenance["labelled"] is True and provenance["no_gold"] is None
        checked[target] = (provenance["source"], provenance["split"], expected)
  assert set(checked) == {t for t, _ in [*HIDDEN, LAREQA]}
  # The numbers come from the original releases (UD-POS: the download's dev split).
  assert checked["xnli"][:2] == ("XNLI 1.0 release", "test")
  assert checked["udpos"][:2] == ("XTREME-R download", "dev")
  assert all(source != "XTREME-R download" for t, (source, _, _) in checked.items()
             if t not in ("udpos", "lareqa"))
  # Not every number is 0: the comparison checks something.
  assert any(v > 0 for _, _, values in checked.values() for v in values.values())
