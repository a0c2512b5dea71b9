"""`xltransfer score` on the fixture submission in tests/fixtures/score and on broken copies.

The fixture has xnli, xcopa, udpos, xquad, mlqa, tydiqa and mewslix with every language; all
predictions are right except the ones noted per test, so expected values are by hand.
"""
import json
import os
import shutil

import pytest

from xltransfer import cli
from xltransfer.evaluation import submission

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "score")


def _score(capsys, predictions, labels, *extra):
  code = cli.main(["score", "--predictions", str(predictions), "--labels", str(labels), *extra])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(name="scored")
def _scored(capsys):
  code, out, err = _score(capsys, f"{FIXTURE}/predictions", f"{FIXTURE}/labels", "--json")
  assert code == 0
  return json.loads(out), err


@pytest.fixture(name="copy")
def _copy(tmp_path):
  shutil.copytree(FIXTURE, tmp_path / "score")
  return tmp_path / "score"


def test_json_has_avg_metric_and_per_language_metrics(scored):
  result, _ = scored
  # Only tasks with a folder on both sides; "tatoeba" (labels only) and "notes" are ignored.
  assert list(result) == ["xnli", "udpos", "xcopa", "mewslix", "xquad", "mlqa", "tydiqa"]
  # xnli: ar gets 2 of 4 -> (14 * 100 + 50) / 15.
  assert result["xnli"]["accuracy"]["ar"] == 50.0
  assert result["xnli"]["avg_metric"] == pytest.approx(1450 / 15)
  # xcopa: qu gets 1 of 4.
  assert result["xcopa"]["avg_metric"] == pytest.approx((10 * 100 + 25) / 11)
  # udpos ja: 6 of 7 POS chunks right.
  assert result["udpos"]["f1"]["ja"] == pytest.approx(600 / 7)
  assert result["udpos"]["avg_metric"] == pytest.approx((37 * 100 + 600 / 7) / 38)


def test_qa_missing_id_scores_zero(scored):
  result, err = scored
  xquad = result["xquad"]
  # de: q1 "Denver" (EM 0, F1 2/3), q2 unanswered (0) -> EM 0, F1 100/3.
  assert xquad["exact_match"]["de"] == 0.0
  assert xquad["f1"]["de"] == pytest.approx(100 / 3)
  assert xquad["avg_exact_match"] == pytest.approx(1100 / 12)
  assert xquad["avg_f1"] == pytest.approx((1100 + 100 / 3) / 12)
  assert xquad["avg_metric"] == pytest.approx((1100 / 12 + (1100 + 100 / 3) / 12) / 2)
  assert "xquad/de: 1 unanswered question(s) scored 0" in err


def test_mlqa_and_tydiqa_normalisation(scored):
  result, _ = scored
  # zh "北京" vs "北京大学": EM 0, F1 2/3; hi's danda is punctuation for MLQA.
  assert result["mlqa"]["f1"]["zh"] == pytest.approx(200 / 3)
  assert result["mlqa"]["exact_match"]["hi"] == 100.0
  assert result["mlqa"]["avg_metric"] == pytest.approx((600 / 7 + (600 + 200 / 3) / 7) / 2)
  # TyDiQA uses SQuAD normalisation: bn's danda stays and the answer scores 0.
  assert result["tydiqa"]["f1"]["bn"] == 0.0
  assert result["tydiqa"]["avg_metric"] == pytest.approx(800 / 9)


def test_mewslix_missing_id_and_gold_below_top_20(scored):
  result, err = scored
  # m1 at rank 1 and m2 at rank 2 -> 75; ja lacks m2 -> 50; uk has m2 at rank 21 -> 50.
  assert result["mewslix"]["map@20"]["en"] == 75.0
  assert result["mewslix"]["map@20"]["ja"] == 50.0
  assert result["mewslix"]["map@20"]["uk"] == 50.0
  assert result["mewslix"]["avg_metric"] == pytest.approx(775 / 11)
  assert "mewslix/ja: 1 id(s) without predictions scored 0" in err


def test_text_report_has_tables_categories_and_no_overall(capsys):
  code, out, _ = _score(capsys, f"{FIXTURE}/predictions", f"{FIXTURE}/labels")
  assert code == 0
  assert "====== xnli ======" in out
  assert "avg_metric: 96.67" in out
  classification = (1450 / 15 + 1025 / 11) / 2
  assert f"classification{classification:>18.2f}" in out
  assert "overall: not reported, tasks not scored: panx, tatoeba, lareqa" in out
  # The language x task table: de's xquad is (0 + 100/3) / 2.
  table = out.split("====== per language")[1]
  de_row = next(line for line in table.splitlines() if line.startswith("de "))
  assert de_row.split() == ["de", "100.00", "100.00", "-", "75.00", "16.67", "100.00", "-"]


def test_missing_language_file_is_an_error(capsys, copy):
  os.remove(copy / "predictions" / "xnli" / "test-sw.tsv")
  code, out, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert out == ""
  assert "xnli/test-sw.tsv is not available" in err
  assert "Traceback" not in err


def test_missing_label_file_is_an_error(capsys, copy):
  os.remove(copy / "labels" / "mlqa" / "test-vi.json")
  code, _, err = _score(capsys, copy / "predictions", copy / "labels", "--json")
  assert code == 2
  assert "mlqa/test-vi.json is not available" in err


def test_different_number_of_lines_is_an_error(capsys, copy):
  with open(copy / "predictions" / "xnli" / "test-de.tsv", "a", encoding="utf-8") as f:
    f.write("neutral\n")
  code, _, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert "test-de.tsv has 5 lines but" in err
  assert "has 4" in err


def test_different_number_of_sentences_is_an_error(capsys, copy):
  path = copy / "predictions" / "udpos" / "test-fi.tsv"
  path.write_text("PRON\nVERB\nDET\nNOUN\nPUNCT\n\n", encoding="utf-8")
  code, _, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert "test-fi.tsv has 1 sentences but" in err


def test_different_number_of_tags_in_a_sentence_is_an_error(capsys, copy):
  path = copy / "predictions" / "udpos" / "test-fi.tsv"
  path.write_text("PRON\nVERB\nDET\nNOUN\n\nPROPN\nVERB\n\n", encoding="utf-8")
  code, _, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert "sentence 0 has 5 target tags but 4 predicted" in err


def test_invalid_json_is_an_error_naming_the_file(capsys, copy):
  (copy / "predictions" / "mewslix" / "test-de.json").write_text("{not json", encoding="utf-8")
  code, _, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert "mewslix/test-de.json:1: not valid JSON" in err


def test_wrong_qa_prediction_shape_is_an_error(capsys, copy):
  (copy / "predictions" / "tydiqa" / "test-sw.json").write_text('{"t1": 7}', encoding="utf-8")
  code, _, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert "tydiqa/test-sw.json" in err
  assert "the answer of question 't1' is a number, not a string" in err


def test_missing_directory_is_an_error(capsys, tmp_path):
  code, _, err = _score(capsys, tmp_path / "nope", f"{FIXTURE}/labels")
  assert code == 2
  assert "nope is not a directory" in err


def test_no_common_task_scores_nothing(capsys, tmp_path):
  # Like the official scorer: folders that are not tasks of the benchmark are ignored.
  (tmp_path / "pawsx").mkdir()
  code, out, _ = _score(capsys, tmp_path, f"{FIXTURE}/labels", "--json")
  assert code == 0
  assert json.loads(out) == {}
  code, out, err = _score(capsys, tmp_path, f"{FIXTURE}/labels")
  assert code == 0
  assert out == ""
  assert "nothing scored" in err


def test_help_says_which_bad_inputs_are_errors_and_which_score_zero(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["score", "--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  assert "missing language file   ERROR (exit 2)" in text
  assert "different line count    ERROR (exit 2)" in text
  assert "missing id              SCORE 0" in text
  assert "official crash          ERROR (exit 2)" in text
  assert "retrieval (tatoeba, mewslix)" in text
  assert "lareqa                  NOT scored by evaluate.py" in text
  assert "evaluate.py itself never prints an XTREME-R overall" in text


def test_written_submission_files_score_like_the_fixture(capsys, tmp_path):
  """Files written by write_submission_file read back as the scorer expects."""
  predictions, labels = tmp_path / "predictions", tmp_path / "labels"
  spec = submission.task_format("udpos")
  for lang in spec.languages:
    submission.write_submission_file(str(labels), "udpos", lang, [["NOUN", "VERB"], ["X"]])
    predicted = [["NOUN", "NOUN"], ["X"]] if lang == "en" else [["NOUN", "VERB"], ["X"]]
    submission.write_submission_file(str(predictions), "udpos", lang, predicted)
  spec = submission.task_format("xcopa")
  for lang in spec.languages:
    submission.write_submission_file(str(labels), "xcopa", lang, [0, 1])
    submission.write_submission_file(str(predictions), "xcopa", lang, [0, 0 if lang == "ht" else 1])
  for lang in submission.task_format("lareqa").languages:
    submission.write_submission_file(str(labels), "lareqa", lang, {"q1": ["c1", "c2"]})
    submission.write_submission_file(str(predictions), "lareqa", lang, {"q1": ["c2", "c0", "c1"]})
  code, out, _ = _score(capsys, predictions, labels, "--json")
  assert code == 0
  result = json.loads(out)
  # udpos en: gold chunks OUN(0) ERB(1); "X" has seqeval type "_" like the "O" between
  # sentences, so it makes no chunk. The prediction merges NOUN NOUN into OUN(0-1): no match.
  assert result["udpos"]["f1"]["de"] == 100.0
  assert result["udpos"]["f1"]["en"] == 0.0
  assert result["xcopa"]["accuracy"]["ht"] == 50.0
  # LAReQA: gold {c1, c2} at ranks 1 and 3 -> (1 + 2/3) / 2.
  assert result["lareqa"]["map@20"]["el"] == pytest.approx(100 * (1 + 2 / 3) / 2)


# Odd inputs: each behaves as evaluate.py (github.com/google-research/xtreme, run on copies of
# this fixture) does, or, where evaluate.py crashes, is an error naming the file and the id.


def _edit_json(path, edit):
  with open(path, encoding="utf-8") as f:
    value = json.load(f)
  edit(value)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


def _first_question(dataset):
  return dataset["data"][0]["paragraphs"][0]["qas"][0]


def test_qa_question_without_answers_and_prediction_scores_zero(capsys, copy):
  # evaluate.py counts an unanswered question as 0 before it looks at the answers.
  _edit_json(copy / "labels" / "xquad" / "test-en.json",
             lambda d: _first_question(d).update(answers=[]))
  _edit_json(copy / "predictions" / "xquad" / "test-en.json", lambda p: p.pop("q1"))
  code, out, err = _score(capsys, copy / "predictions", copy / "labels", "--json")
  assert code == 0
  # q1 scores 0, q2 "Eiffel Tower!" matches "the Eiffel Tower" exactly.
  assert json.loads(out)["xquad"]["f1"]["en"] == 50.0
  assert "xquad/en: 1 unanswered question(s) scored 0, e.g. q1" in err


def test_qa_question_without_answers_but_with_a_prediction_is_an_error(capsys, copy):
  # evaluate.py takes max() over no answers and crashes (ValueError).
  _edit_json(copy / "labels" / "xquad" / "test-en.json",
             lambda d: _first_question(d).update(answers=[]))
  code, out, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2 and out == ""
  assert "xquad/test-en.json" in err
  assert "question 'q1' has a prediction but no gold answer" in err
  assert "Traceback" not in err


def test_qa_extra_id_with_null_is_ignored(capsys, copy):
  _edit_json(copy / "predictions" / "xquad" / "test-en.json", lambda p: p.update(zzz=None))
  code, out, _ = _score(capsys, copy / "predictions", copy / "labels", "--json")
  assert code == 0
  assert json.loads(out)["xquad"]["f1"]["en"] == 100.0


def test_qa_null_answer_of_a_question_is_an_error(capsys, copy):
  _edit_json(copy / "predictions" / "mlqa" / "test-de.json", lambda p: p.update(m1=None))
  code, _, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2
  assert "mlqa/test-de.json" in err
  assert "the answer of question 'm1' is null, not a string" in err


def test_qa_id_named_data_scores_the_language_zero(capsys, copy):
  # The official reader returns the "data" value of any JSON object that has one, so the
  # predictions become the string "Denver" and no question id is found in it.
  _edit_json(copy / "predictions" / "xquad" / "test-en.json", lambda p: p.update(data="x"))
  code, out, err = _score(capsys, copy / "predictions", copy / "labels", "--json")
  assert code == 0
  xquad = json.loads(out)["xquad"]
  assert xquad["f1"]["en"] == 0.0 and xquad["exact_match"]["en"] == 0.0
  assert xquad["f1"]["es"] == 100.0
  assert 'xquad/en: ' in err and 'a top-level "data" key replaces the whole file' in err
  assert "xquad/en: 2 unanswered question(s) scored 0" in err


def test_mewslix_null_ranking_is_an_error(capsys, copy):
  # evaluate.py slices the ranking: TypeError 'NoneType' object is not subscriptable.
  _edit_json(copy / "predictions" / "mewslix" / "test-en.json", lambda p: p.update(m1=None))
  code, out, err = _score(capsys, copy / "predictions", copy / "labels")
  assert code == 2 and out == ""
  assert "mewslix/test-en.json" in err
  assert "the ranking of 'm1' is null, not a list of ids" in err
  assert "the official scorer crashes here" in err


def test_mewslix_candidate_that_is_a_list_is_a_miss(capsys, copy):
  # evaluate.py compares candidates with ==: a list never equals the gold id.
  _edit_json(copy / "predictions" / "mewslix" / "test-en.json",
             lambda p: p.update(m1=[["Q1"], "Q1", "Q5"]))
  code, out, _ = _score(capsys, copy / "predictions", copy / "labels", "--json")
  assert code == 0
  # m1 now at rank 2 (1/2), m2 at rank 2 (1/2).
  assert json.loads(out)["mewslix"]["map@20"]["en"] == 50.0


def _full_submission(root):
  """Labels and predictions for every XTREME-R task and language, with known task scores.

  Per language: xnli 100, xcopa 50, udpos 100, panx 0, xquad 100, mlqa 100, tydiqa 0,
  tatoeba 50, mewslix 50 (gold at rank 2), lareqa (1 + 2/3) / 2 (gold ids at ranks 1 and 3).
  """
  labels, predictions = root / "labels", root / "predictions"
  qa_labels = {"data": [{"paragraphs": [{"context": "c", "qas": [
      {"id": "q1", "question": "q", "answers": [{"answer_start": 0, "text": "Paris"}]}]}]}]}
  files = {
      "xnli": (["entailment", "neutral"], ["entailment", "neutral"]),
      "xcopa": ([0, 1], [0, 0]),
      "udpos": ([["NOUN", "VERB"]], [["NOUN", "VERB"]]),
      "panx": ([["B-PER", "O"]], [["B-LOC", "O"]]),
      "xquad": (qa_labels, {"q1": "Paris"}),
      "mlqa": (qa_labels, {"q1": "Paris"}),
      "tydiqa": (qa_labels, {"q1": "Rome"}),
      "tatoeba": ([0, 1], [0, 0]),
      "mewslix": ({"e1": ["Q1"]}, {"e1": ["Q2", "Q1"]}),
      "lareqa": ({"q1": ["a", "b"]}, {"q1": ["a", "x", "b"]}),
  }
  for spec in submission.XTREME_R_TASKS:
    gold, predicted = files[spec.name]
    for lang in spec.languages:
      submission.write_submission_file(str(labels), spec.name, lang, gold)
      submission.write_submission_file(str(predictions), spec.name, lang, predicted)
  return predictions, labels


def test_full_submission_categories_are_the_official_ones_and_lareqa_is_extra(capsys,
                                                                               tmp_path):
  predictions, labels = _full_submission(tmp_path)
  code, out, _ = _score(capsys, predictions, labels)
  assert code == 0
  categories = out.split("====== categories (as evaluate.py) ======\n")[1].split("\n\n")[0]
  lines = categories.splitlines()
  # evaluate.py's groups; retrieval is tatoeba + mewslix only.
  assert lines[:5] == [f"{'classification':<24}{75.0:>8.2f}",
                       f"{'structured prediction':<24}{50.0:>8.2f}",
                       f"{'question answering':<24}{200 / 3:>8.2f}",
                       f"{'retrieval':<24}{50.0:>8.2f}",
                       f"{'multiple choice':<24}{50.0:>8.2f}"]
  lareqa = 100 * (1 + 2 / 3) / 2
  assert lines[5] == f"{'lareqa (in no category)':<24}{lareqa:>8.2f}   not scored by evaluate.py"
  overall = (100 + 50 + 100 + 0 + 100 + 100 + 0 + 50 + 50 + lareqa) / 10
  assert lines[6].startswith(f"{'overall (10 tasks)':<24}{overall:>8.2f}   mean avg_metric incl. "
                             "lareqa; evaluate.py prints no XTREME-R overall")
  assert len(lines) == 7


def test_without_lareqa_there_is_no_overall_as_in_evaluate_py(capsys, tmp_path):
  predictions, labels = _full_submission(tmp_path)
  shutil.rmtree(predictions / "lareqa")
  code, out, _ = _score(capsys, predictions, labels)
  assert code == 0
  assert f"{'retrieval':<24}{50.0:>8.2f}" in out
  assert "overall: not reported, tasks not scored: lareqa" in out
  assert "in no category" not in out
