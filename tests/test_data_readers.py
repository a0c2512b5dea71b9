"""Readers of the XTREME-R download layout: real-format fixtures and precise errors."""
import os
import shutil

import pytest

from xltransfer.data import languages, paths, readers, retrieval
from xltransfer.errors import ConfigError, DataFormatError, UserError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
XTREME = os.path.join(FIXTURES, "xtreme")
INTERMEDIATE = os.path.join(FIXTURES, "intermediate")


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_nli_reads_labels_aliases_and_unlabeled_test_files():
  train = readers.read_nli_tsv(os.path.join(XTREME, "xnli", "train-en.tsv"))
  assert [ex["label"] for ex in train] == [
      "neutral", "entailment", "entailment", "contradiction", "contradiction"]
  test = readers.read_nli_tsv(os.path.join(XTREME, "xnli", "test-ar.tsv"))
  assert test[0]["label"] == "" and test[0]["premise"].startswith("وقال")


def test_nli_quoted_files_undo_csv_quoting_and_report_bad_quoting(tmp_path):
  """XTREME-R writes its xnli/ files with csv.writer (xnli_preprocess): CRLF, `"` quoting."""
  path = _write(tmp_path, "q.tsv", '"He said ""hi"""\tHe spoke.\tentailment\r\nA\tB\tneutral\r\n')
  rows = readers.read_nli_tsv(path, quoted=True)
  assert [r["premise"] for r in rows] == ['He said "hi"', "A"]
  assert readers.read_nli_tsv(path)[0]["premise"] == '"He said ""hi"""'  # user files: literal
  bad = _write(tmp_path, "bad.tsv", 'a\tb\tneutral\n"unclosed\tb\tneutral\n')
  with pytest.raises(DataFormatError, match="expected 2 or 3|bad quoting"):
    readers.read_nli_tsv(bad, quoted=True)


def test_original_release_readers_name_bad_lines(tmp_path):
  xnli = _write(tmp_path, "xnli.test.tsv", "language\tgold_label\tsentence1\tsentence2\n"
                "en\tmaybe\ta\tb\n")
  with pytest.raises(DataFormatError, match=r"xnli\.test\.tsv:2: unknown label 'maybe'"):
    readers.read_xnli_release(xnli, "en")
  no_header = _write(tmp_path, "x.tsv", "language\tlabel\ta\tb\n")
  with pytest.raises(DataFormatError, match="header lacks column 'gold_label'"):
    readers.read_xnli_release(no_header, "en")
  good = _write(tmp_path, "g.tsv", "language\tgold_label\tsentence1\tsentence2\nen\tneutral\ta\tb\n")
  with pytest.raises(DataFormatError, match="no rows for language 'de'; it has en"):
    readers.read_xnli_release(good, "de")
  panx = _write(tmp_path, "test", "en:Paris\tB-CITY\n")
  with pytest.raises(DataFormatError, match="test:1: unknown tag 'B-CITY'"):
    readers.read_panx_release(panx)
  tydi = _write(tmp_path, "t.json", '{"data": [{"paragraphs": [{"context": "c", "qas": '
                '[{"id": "english-1-0", "question": "q", "answers": []}]}]}]}')
  with pytest.raises(DataFormatError, match="no question id starts with 'korean-'"):
    readers.read_tydiqa_release(tydi, "ko")


def test_tagged_files_split_sentences_on_blank_lines():
  dev = readers.read_udpos(os.path.join(XTREME, "udpos", "dev-hi.tsv"))
  assert [len(ex["tokens"]) for ex in dev] == [4, 3]
  assert all(len(ex["tokens"]) == len(ex["tags"]) for ex in dev)
  test = readers.read_panx(os.path.join(XTREME, "panx", "test-ar.tsv"))
  assert [ex["tags"] for ex in test] == [[], []]


def test_squad_keeps_every_answer_and_unanswerable_questions():
  train = readers.read_squad_json(os.path.join(XTREME, "squad", "train-v1.1.json"))
  assert train[1]["answers"] == [
      "Levi's Stadium", "Levi's Stadium in Santa Clara, California", "Santa Clara"]
  v2 = readers.read_squad_json(
      os.path.join(INTERMEDIATE, "translated", "squad_v2", "train-sw.json"))
  assert v2[1]["answers"] == []


def test_siqa_reads_three_choices_in_the_xcopa_fields():
  train = readers.read_siqa(os.path.join(XTREME, "siqa", "socialIQa_v1.4_trn.jsonl"))
  assert [ex["label"] for ex in train] == [0, 1, 2]
  assert train[0]["premise"].startswith("Robin forgot")
  assert train[0]["question"] == "How would Robin feel afterwards?"
  assert train[2]["choices"] == ["to sleep early", "to avoid the show",
                                 "to have the painting ready in time"]


@pytest.mark.parametrize("reader,name,text,line,message", [
    (readers.read_nli_tsv, "x.tsv", "a\tb\tentailment\nc\td\tmaybe\n", 2, "unknown label 'maybe'"),
    (readers.read_nli_tsv, "x.tsv", "a\tb\tneutral\nonly one field\n", 2, "expected 2 or 3"),
    (readers.read_udpos, "x.tsv", "The\tDET\ndog\n", 2, "tag/token count mismatch"),
    (readers.read_udpos, "x.tsv", "The\tDET\n\ndog\tANIMAL\n", 3, "unknown tag 'ANIMAL'"),
    (readers.read_panx, "x.tsv", "Paris\tB-LOC\n\nBerlin\tB-CITY\n", 3, "unknown tag"),
    (readers.read_xcopa, "x.jsonl",
     '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}\n{"premise": \n',
     2, "bad JSON"),
    (readers.read_xcopa, "x.jsonl", '{"premise": "p", "choice1": "a", "question": "cause"}\n', 1,
     "missing field 'choice2'"),
    (readers.read_xcopa, "x.jsonl",
     '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}\n', 1,
     "unknown label 2"),
    (readers.read_commonsenseqa, "x.jsonl",
     '{"id": "1", "answerKey": "F", "question": {"stem": "q", "choices": [{"label": "A", "text": "a"}]}}\n',
     1, "unknown answerKey 'F'"),
    (readers.read_squad_json, "x.json", '{"data": [\n  {"title": "t",,}\n]}', 2, "bad JSON"),
    (readers.read_siqa, "x.jsonl",
     '{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", '
     '"correct": "A"}\n{"context": "c", "question": "q", "answerA": "a", "answerB": "b", '
     '"answerC": "c", "correct": "D"}\n', 2, "unknown answer 'D'"),
    (readers.read_siqa, "x.jsonl", '{"context": "c", "question": "q", "answerA": "a"}\n', 1,
     "missing field 'answerB'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, reader, name, text, line, message):
  path = _write(tmp_path, name, text)
  with pytest.raises(DataFormatError, match=message) as error:
    reader(path)
  assert error.value.path == path and error.value.line == line
  assert str(error.value).startswith(f"{path}:{line}: ")


def test_squad_missing_field_names_the_record(tmp_path):
  path = _write(tmp_path, "x.json", '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}')
  with pytest.raises(DataFormatError, match=r"data\[0\].paragraphs\[0\].qas\[0\]: missing field 'question'"):
    readers.read_squad_json(path)


def test_missing_data_dir_names_the_path_and_the_task(tmp_path, monkeypatch):
  monkeypatch.delenv(paths.XTREME_ENV_VAR, raising=False)
  with pytest.raises(UserError, match=r"task xlt_xnli_train needs a data directory.*XTREME_DATA_DIR"):
    paths.xtreme_path("xlt_xnli_train", "xnli", "train-en.tsv")
  monkeypatch.setenv(paths.XTREME_ENV_VAR, str(tmp_path))
  with pytest.raises(UserError, match=f"task xlt_xnli_train needs the directory {tmp_path}/xnli"):
    paths.xtreme_path("xlt_xnli_train", "xnli", "train-en.tsv")


def test_unknown_language_names_the_valid_codes():
  with pytest.raises(ConfigError, match=r"unknown language 'xx' for tatoeba; valid codes: af ar"):
    retrieval.load_tatoeba(XTREME, "xx")
  with pytest.raises(ConfigError, match="valid codes: de en es ja pl"):
    languages.check_language("ht", ["en", "de", "es", "ja", "pl"], "mewslix")


def test_tatoeba_pairs_sentences_with_their_translations():
  rs = retrieval.load_tatoeba(XTREME, "ru")
  assert rs.queries == ["Я голоден.", "Где вокзал?", "Спокойной ночи."]
  assert rs.candidates == ["I am hungry.", "Where is the station?", "Good night."]
  assert rs.gold == [{0}, {1}, {2}] and rs.provenance.labelled


def test_tatoeba_unaligned_files_name_both(tmp_path):
  (tmp_path / "tatoeba").mkdir()
  _write(tmp_path, "tatoeba/de-en.de", "a\nb\n")
  _write(tmp_path, "tatoeba/de-en.en", "a\n")
  with pytest.raises(DataFormatError, match="has 2 lines but its aligned file .*de-en.en has 1"):
    retrieval.load_tatoeba(str(tmp_path), "de")


def test_mewslix_queries_mark_the_mention_and_point_at_candidates():
  rs = retrieval.load_mewslix(XTREME, "en", "dev")
  # XTREME-R's baseline (third_party/utils_mewslix.py): the mention, then its sentence with
  # the mention in `{ }`; candidates are descriptions without their titles.
  assert rs.queries[0] == "Denver Broncos: Fans of the { Denver Broncos } celebrated in Santa Clara."
  assert rs.gold == [{"Q1"}, {"Q3"}]
  assert rs.candidate_ids == ["Q1", "Q2", "Q3"]
  assert rs.candidates[1] == "東京都は日本の首都である。"


def test_mewslix_spans_may_be_objects_or_pairs(tmp_path):
  """The release writes {"start", "end"} objects; [start, end] pairs are read the same."""
  line = ('{"context": {"language": "en", "text": "Go Paris.", "sentence_spans": %s}, '
          '"mentions": [{"example_id": "1", "entity_id": "Q90", '
          '"mention_span": {"text": "Paris", "start": 3, "end": 8}}]}\n')
  objects = _write(tmp_path, "a.jsonl", line % '[{"start": 0, "end": 9}]')
  pairs = _write(tmp_path, "b.jsonl", line % "[[0, 9]]")
  assert (retrieval.read_mewslix_mentions(objects) == retrieval.read_mewslix_mentions(pairs)
          != [])


def test_lareqa_gold_is_the_answer_sentence_in_every_language(tmp_path):
  shutil.copytree(os.path.join(XTREME, "lareqa"), tmp_path / "lareqa")
  for lang in languages.TARGET_LANGUAGES["lareqa"]:
    target = tmp_path / "lareqa" / "xquad-r" / f"{lang}.json"
    if not target.exists():
      shutil.copy(tmp_path / "lareqa" / "xquad-r" / "en.json", target)
  rs = retrieval.load_lareqa(str(tmp_path), "ar")
  assert rs.queries == ["ما الفريق الذي فاز؟"]
  assert "ar/0/0/1" in rs.gold[0] and "zh/0/0/1" in rs.gold[0] and "en/0/0/1" in rs.gold[0]
  assert len(rs.gold[0]) == 11
  assert rs.candidates[rs.candidate_ids.index("ar/0/0/1")].startswith("هزم فريق دنفر")
