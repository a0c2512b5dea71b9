"""Eval examples and prediction records say which examples are not independent: `item` (the
same string for the translations of one test item in every language) and, for QA, `paragraph`
(the context a question is about); docs/interfaces.md, "Evaluation outputs".

Fixtures: tests/fixtures/xtreme_official/ (the XTREME-R download's shapes, from
tests/fixtures/make_xtreme_official.py), tests/fixtures/xtreme_original/ (the original
releases' layouts), tests/fixtures/xtreme/ (download-shaped labelled files).
"""
import json
import os
import shutil

import jax
import pytest
import seqio
import tensorflow_datasets as tfds

from xltransfer.data import paths, readers, retrieval, vocab
from xltransfer.evaluation import evaluator
from xltransfer.evaluation.settings import EvalSettings
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
OFFICIAL = os.path.join(FIXTURES, "xtreme_official")
ORIGINAL = os.path.join(FIXTURES, "xtreme_original")
DOWNLOAD_SHAPED = os.path.join(FIXTURES, "xtreme")

pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module", autouse=True)
def registered():
  import xltransfer.tasks  # pylint: disable=g-import-not-at-top,unused-import
  vocab.use_task_vocabulary("builtin")
  yield
  vocab.use_task_vocabulary(None)


def _source(monkeypatch, source, xtreme=OFFICIAL, original=ORIGINAL):
  monkeypatch.setenv(paths.XTREME_ENV_VAR, xtreme)
  monkeypatch.setenv(paths.ORIGINAL_ENV_VAR, original)
  monkeypatch.setenv(paths.TARGET_SOURCE_ENV_VAR, source)


def _examples(name, split):
  """The task's examples after its preprocessors (what the evaluator gets), as text fields."""
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split,
                                                   shuffle=False)
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


# -- XNLI ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["test", "validation"])
def test_xnli_download_files_line_k_is_one_item_in_every_language(monkeypatch, split):
  # The download's xnli/{split}-{lang}.tsv keep XNLI 1.0's row order and drop its pairID: line k
  # of every language is one pair. (The fixture's test files: line 1 is the contradiction
  # "I haven't spoken to him again" in ar, de and en; line 2 "I was so upset" in ar and en.)
  _source(monkeypatch, "files")
  by_lang = {l: _examples(f"xlt_xnli_eval_{l}", split) for l in ("ar", "de", "en")}
  for examples in by_lang.values():
    assert [ex["item"] for ex in examples] == [str(k) for k in range(len(examples))]
  if split == "test":
    assert by_lang["ar"][0]["item"] == by_lang["de"][0]["item"] == by_lang["en"][0]["item"]
    assert "nie wieder mit ihm gesprochen" in by_lang["de"][0]["inputs_pretokenized"]
    assert "haven't spoken to him again" in by_lang["en"][0]["inputs_pretokenized"]
    assert by_lang["ar"][1]["item"] == by_lang["en"][1]["item"] != by_lang["en"][0]["item"]
    assert "I was so upset" in by_lang["en"][1]["inputs_pretokenized"]


def test_xnli_release_items_are_pair_ids_not_positions(monkeypatch, tmp_path):
  # XNLI 1.0's xnli.test.tsv gives a pair's translations one pairID. The fixture numbers its
  # rows apart, so a copy gives its de/en translations of the ar pairs the ar pairIDs (the
  # texts say which: 14 and 15 translate 11, 16 translates 12) and lists en's rows reversed.
  root = tmp_path / "original"
  shutil.copytree(ORIGINAL, root)
  path = root / "XNLI-1.0" / "xnli.test.tsv"
  header, *rows = path.read_text(encoding="utf-8").splitlines()
  columns = header.split("\t")
  pair = columns.index("pairID")
  same = {"14": "11", "15": "11", "16": "12"}
  rows = [r.split("\t") for r in rows]
  for r in rows:
    r[pair] = same.get(r[pair], r[pair])
  rows = ([r for r in rows if r[0] != "en"] + [r for r in rows if r[0] == "en"][::-1])
  path.write_text("\n".join([header] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
  _source(monkeypatch, "original", original=str(root))
  item = {l: {ex["item"]: ex["inputs_pretokenized"] for ex in _examples(f"xlt_xnli_eval_{l}",
                                                                          "test")}
          for l in ("ar", "de", "en")}
  assert set(item["ar"]) == {"11", "12", "13"} and set(item["de"]) == {"11"}
  assert set(item["en"]) == {"11", "12"}
  assert "haven't spoken to him again" in item["en"]["11"]
  assert "I was so upset" in item["en"]["12"]


def test_xnli_release_without_pair_ids_gives_no_item(tmp_path):
  path = tmp_path / "xnli.test.tsv"
  path.write_text("language\tgold_label\tsentence1\tsentence2\n"
                  "de\tneutral\tEr kam.\tEr ging.\n", encoding="utf-8")
  assert readers.read_xnli_release(str(path), "de") == [
      {"premise": "Er kam.", "hypothesis": "Er ging.", "label": "neutral", "item": ""}]


def test_xnli_tfds_items_follow_the_record_not_the_language(monkeypatch):
  # TFDS xnli holds one pair in every language per example, without a pairID.
  _source(monkeypatch, "tfds")
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=4):
    ar = [ex["item"] for ex in _examples("xlt_xnli_eval_ar", "test")]
    de = [ex["item"] for ex in _examples("xlt_xnli_eval_de", "test")]
  assert ar == de and len(set(ar)) == 4 and all(i.isdigit() for i in ar)


# -- XCOPA ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["files", "original"])
def test_xcopa_items_are_the_release_idx(monkeypatch, source):
  # cambridgeltl/xcopa numbers the COPA item each language translates (`idx`); the download's
  # xcopa_preprocess keeps it. Fixture: validation idx 1 is "the man opened the tap" in th and
  # zh. (Its test files are not translations of one another: only the idx is checked there.)
  _source(monkeypatch, source)
  th = {ex["item"]: ex["inputs_pretokenized"] for ex in _examples("xlt_xcopa_eval_th",
                                                                   "validation")}
  zh = {ex["item"]: ex["inputs_pretokenized"] for ex in _examples("xlt_xcopa_eval_zh",
                                                                   "validation")}
  assert set(th) == {"1"} and set(zh) == {"1", "2"}
  assert "ก๊อกน้ำ" in th["1"] and "水龙头" in zh["1"]  # the tap
  assert [ex["item"] for ex in _examples("xlt_xcopa_eval_zh", "test")] == ["1", "2", "3", "4"]


def test_xcopa_line_without_idx_has_no_item(tmp_path):
  path = tmp_path / "test.jsonl"
  path.write_text(json.dumps({"premise": "p", "choice1": "a", "choice2": "b",
                              "question": "cause", "label": 1}) + "\n", encoding="utf-8")
  assert readers.read_xcopa(str(path))[0]["item"] == ""


# -- QA: item = question id (XQuAD, MLQA), paragraph = the context ------------------------------

@pytest.mark.parametrize("source", ["files", "original"])
def test_xquad_items_are_the_shared_question_ids(monkeypatch, source):
  # XQuAD keeps SQuAD's question ids in every language.
  _source(monkeypatch, source)
  en = _examples("xlt_xquad_eval_en", "test")
  de = _examples("xlt_xquad_eval_de", "test")
  assert [ex["item"] for ex in en] == [ex["item"] for ex in de] == [ex["id"] for ex in en]
  assert len({ex["item"] for ex in en}) == 2


@pytest.mark.parametrize("source", ["files", "original"])
def test_questions_on_one_context_share_a_paragraph(monkeypatch, source):
  # Both fixture questions ask about one Super Bowl 50 paragraph; the download's
  # remove_qa_test_annotations writes each as its own article, the release keeps them together.
  _source(monkeypatch, source)
  for lang in ("en", "de"):
    examples = _examples(f"xlt_xquad_eval_{lang}", "test")
    assert len(examples) == 2 and examples[0]["paragraph"] == examples[1]["paragraph"]
  assert (_examples("xlt_xquad_eval_en", "test")[0]["paragraph"]
          != _examples("xlt_xquad_eval_de", "test")[0]["paragraph"])


@pytest.mark.parametrize("source", ["files", "original"])
def test_questions_on_different_contexts_differ_and_tydiqa_has_no_item(monkeypatch, source):
  # The fixture's two Korean TyDi QA questions ask about different passages. TyDi QA's
  # languages are written apart, not translated: no item.
  _source(monkeypatch, source)
  examples = _examples("xlt_tydiqa_eval_ko", "validation")
  assert len(examples) == 2 and examples[0]["paragraph"] != examples[1]["paragraph"]
  assert all("item" not in ex for ex in examples)


@pytest.mark.parametrize("source", ["files", "original"])
def test_mlqa_items_are_question_ids(monkeypatch, source):
  _source(monkeypatch, source)
  for split in ("validation", "test"):
    for ex in _examples("xlt_mlqa_eval_de", split):
      assert ex["item"] == ex["id"] and ex["paragraph"]


def test_tfds_qa_items_and_paragraphs(monkeypatch):
  _source(monkeypatch, "tfds")
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=3):
    xquad = _examples("xlt_xquad_eval_de", "test")
    tydiqa = _examples("xlt_tydiqa_eval_ko", "validation")
  assert all(ex["item"] == ex["id"] and ex["paragraph"].isdigit() for ex in xquad)
  assert all("item" not in ex and ex["paragraph"].isdigit() for ex in tydiqa)


def test_tagging_examples_have_no_item(monkeypatch):
  # UD and WikiANN sentences are not translations of one another.
  _source(monkeypatch, "original")
  for name in ("xlt_panx_eval_ar", "xlt_udpos_eval_es"):
    examples = _examples(name, "test")
    assert examples and all("item" not in ex and "paragraph" not in ex for ex in examples)


# -- LAReQA --------------------------------------------------------------------------------------

def _lareqa_pool(tmp_path):
  """XQuAD-R for all 11 languages: the fixture's three, copies of English for the others."""
  from xltransfer.data import languages  # pylint: disable=g-import-not-at-top
  pool = tmp_path / "lareqa" / "xquad-r"
  pool.mkdir(parents=True)
  source = os.path.join(DOWNLOAD_SHAPED, "lareqa", "xquad-r")
  for lang in languages.TARGET_LANGUAGES["lareqa"]:
    name = f"{lang}.json" if os.path.exists(os.path.join(source, f"{lang}.json")) else "en.json"
    shutil.copy(os.path.join(source, name), pool / f"{lang}.json")
  return str(tmp_path)


def test_lareqa_queries_carry_question_items_and_paragraphs(tmp_path):
  data_dir = _lareqa_pool(tmp_path)
  en = retrieval.load_lareqa(data_dir, "en")
  zh = retrieval.load_lareqa(data_dir, "zh")
  assert en.query_items == zh.query_items == en.query_ids
  assert en.query_paragraphs == zh.query_paragraphs == ["0/0"] * len(en.queries)


def test_other_retrieval_sets_carry_no_items(monkeypatch):
  _source(monkeypatch, "original")
  assert retrieval.load_tatoeba(None, "de").query_items is None
  assert retrieval.load_mewslix(None, "en", "test").query_items is None


# -- The evaluator writes them -----------------------------------------------------------------

@pytest.mark.slow
def test_prediction_records_carry_item_and_paragraph(tmp_path, monkeypatch):
  _source(monkeypatch, "files", xtreme=DOWNLOAD_SHAPED)
  model = EncoderDecoderModel(get_config("tiny"))
  settings = EvalSettings(split="validation", batch_size=4, max_examples=2,
                                    task_feature_lengths={"inputs": 32, "targets": 6})
  out = str(tmp_path / "out")
  tasks = ["xlt_xnli_eval_ar", "xlt_xnli_eval_zh", "xlt_xcopa_eval_zh", "xlt_xquad_eval_zh",
           "xlt_panx_eval_ru"]
  evaluator.evaluate_params(model, model.init(jax.random.PRNGKey(3)), tasks, out,
                            settings=settings, show_progress=False)

  def records(target, lang):
    with open(os.path.join(out, "predictions", target, f"{lang}.jsonl"), encoding="utf-8") as f:
      return [json.loads(line) for line in f]
  ar, zh = records("xnli", "ar"), records("xnli", "zh")
  # fixtures/xtreme/xnli/dev-{ar,zh}.tsv: line 1 of both is "And he said, Mama, I'm home." /
  # "He called his mom as soon as the school bus dropped him off."
  assert [r["item"] for r in ar] == [r["item"] for r in zh] == ["0", "1"]
  assert [r["item"] for r in records("xcopa", "zh")] == ["1", "2"]
  xquad = records("xquad", "zh")
  assert xquad and all(r["item"] == r["id"] and r["paragraph"].isdigit() for r in xquad)
  assert all("item" not in r and "paragraph" not in r for r in records("panx", "ru"))
