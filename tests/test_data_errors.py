"""Bad training data is named, never trained on (issue 13, rows 2, 7 and 8).

Row 2: a training example without its gold (an XNLI line without its label, a tagged token
without its tag, a QA question without answers, a multiple-choice line without its label) is a
DataFormatError naming file and line, where it used to train on an empty target; eval files
may still lack gold (the XTREME-R download's test files do: tests/test_gold_sources.py).
Row 7: an empty training file is named. Row 8: a byte that is not UTF-8 names file, line and
column. The files are small ones in the formats of the XTREME-R download
(google-research/xtreme utils_preprocess.py writes them; tests/fixtures/xtreme/ holds samples).
"""
import json
import os
import shutil

import pytest
import seqio

from xltransfer.data import paths, readers, retrieval
from xltransfer.errors import DataFormatError, UserError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
XTREME = os.path.join(FIXTURES, "xtreme")

pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module", autouse=True)
def registered():
  import xltransfer.tasks  # pylint: disable=g-import-not-at-top,unused-import


def _write(tmp_path, name, text, encoding="utf-8"):
  path = tmp_path / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
  return str(path)


def _jsonl(*records):
  return "".join(json.dumps(r) + "\n" for r in records)


COPA = {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause"}
SIQA = {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}
CSQA = {"id": "1", "question": {"stem": "q", "choices": [{"label": "A", "text": "a"},
                                                         {"label": "B", "text": "b"}]}}
COSMOS = {"context": "c", "question": "q", "answer0": "a", "answer1": "b", "answer2": "c",
          "answer3": "d"}
HELLASWAG = {"ctx": "c", "endings": ["a", "b", "c", "d"]}

# reader, file name, a file whose line `line` lacks its gold, what the message says
MISSING_GOLD = [
    (readers.read_nli_tsv, "train-en.tsv", "A\tB\tentailment\nC\tD\n", 2, "no label"),
    (lambda p, **kw: readers.read_nli_tsv(p, quoted=True, **kw), "train-en.tsv",
     "A\tB\tentailment\r\nC\tD\t\r\n", 2, "no label"),
    (readers.read_tagged_tsv, "train.tsv", "a\tX\nb\tY\n\nc\n", 4, "token 'c' has no tag"),
    (readers.read_udpos, "train-en.tsv", "The\tDET\n\ndog\t\n", 3, "token 'dog' has no tag"),
    (readers.read_panx, "train-en.tsv", "Paris\tB-LOC\n\nRome\n", 3, "token 'Rome' has no tag"),
    (readers.read_xcopa, "train-en.jsonl", _jsonl(dict(COPA, label=1), COPA), 2,
     "missing field 'label'"),
    (readers.read_siqa, "socialIQa_v1.4_trn.jsonl", _jsonl(SIQA), 1, "missing field 'correct'"),
    (readers.read_commonsenseqa, "train_rand_split.jsonl",
     _jsonl(dict(CSQA, answerKey="A"), CSQA), 2, "missing field 'answerKey'"),
    (readers.read_cosmosqa, "train-en.jsonl", _jsonl(COSMOS), 1, "missing field 'label'"),
    (readers.read_hellaswag, "train-en.jsonl", _jsonl(HELLASWAG), 1, "missing field 'label'"),
]


@pytest.mark.parametrize("reader,name,text,line,message", MISSING_GOLD)
def test_a_training_line_without_its_gold_names_file_and_line(tmp_path, reader, name, text,
                                                              line, message):
  path = _write(tmp_path, name, text)
  with pytest.raises(DataFormatError, match="needs its gold") as raised:
    reader(path, training=True)
  assert str(raised.value).startswith(f"{path}:{line}: {message}")
  # The same file read as eval data is fine: its unlabelled examples are marked, not refused.
  assert reader(path)


def test_unlabelled_eval_lines_stay_readable_and_are_marked_no_gold(tmp_path):
  path = _write(tmp_path, "test-ar.tsv", "A\tB\nC\tD\n")
  examples, why = readers.nli_no_gold(readers.read_nli_tsv(path, quoted=True), path)
  assert [ex["label"] for ex in examples] == ["", ""] and "no label column" in why


def _squad(*qas):
  return json.dumps({"data": [{"title": "t", "paragraphs": [
      {"context": "Paris is in France.", "qas": list(qas)}]}]})


def test_a_training_question_without_answers_names_its_record(tmp_path):
  answered = {"id": "a", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}
  path = _write(tmp_path, "train-v1.1.json", _squad(
      answered, {"id": "b", "question": "What?", "answers": []}))
  with pytest.raises(DataFormatError) as raised:
    readers.read_squad_json(path, training=True)
  assert str(raised.value).startswith(
      f"{path}: data[0].paragraphs[0].qas[1] (id 'b'): no answer and not marked is_impossible")
  # An empty answer text, as remove_qa_test_annotations writes it, is no answer either.
  blank = _write(tmp_path, "blank.json", _squad(
      {"id": "c", "question": "Who?", "answers": [{"text": "", "answer_start": 0}]}))
  with pytest.raises(DataFormatError, match=r"qas\[0\] \(id 'c'\): no answer"):
    readers.read_squad_json(blank, training=True)
  # SQuAD v2.0's unanswerable questions are gold too.
  v2 = _write(tmp_path, "train-v2.0.json", _squad(
      answered, {"id": "d", "question": "Why?", "answers": [], "is_impossible": True}))
  assert [ex["answers"] for ex in readers.read_squad_json(v2, training=True)] == [["France"], []]
  assert len(readers.read_squad_json(path)) == 2  # eval: read, the gold check decides


def test_mewslix_training_pair_without_its_entity_names_the_line(tmp_path):
  context = {"language": "en", "text": "Paris is big.", "sentence_spans": [[0, 13]]}
  good = {"contextual_mention": {"context": context,
                                 "mention": {"mention_span": {"start": 0, "end": 5}}},
          "entity": {"entity_id": "Q90", "description": "Capital of France.",
                     "sentence_spans": [[0, 18]]}}
  bad = json.loads(json.dumps(good))
  bad["entity"]["entity_id"] = ""
  path = _write(tmp_path, "wikipedia_pairs-train.jsonl", _jsonl(good, bad))
  with pytest.raises(DataFormatError, match=r":2: the entity has an empty entity_id"):
    retrieval.read_mewslix_pairs(path, training=True)
  assert len(retrieval.read_mewslix_pairs(path)) == 2


@pytest.mark.parametrize("reader,name", [
    (readers.read_nli_tsv, "train-en.tsv"), (readers.read_udpos, "train-en.tsv"),
    (readers.read_xcopa, "train-en.jsonl"), (readers.read_siqa, "socialIQa_v1.4_trn.jsonl"),
    (readers.read_squad_json, "train-v1.1.json"), (readers.read_pair_tsv, "train-en.tsv"),
    (retrieval.read_mewslix_pairs, "wikipedia_pairs-train.jsonl")])
def test_an_empty_training_file_is_named(tmp_path, reader, name):
  path = _write(tmp_path, name, "")
  with pytest.raises(DataFormatError) as raised:
    reader(path, training=True)
  assert str(raised.value).startswith(f"{path}: ") and "empty" in str(raised.value)


# -- Through the registered tasks: the training loaders pass `training` -------------------------

@pytest.fixture
def xtreme_copy(tmp_path, monkeypatch):
  """A copy of the download-layout fixtures that a test may damage."""
  root = tmp_path / "xtreme"
  shutil.copytree(XTREME, root)
  monkeypatch.setenv(paths.XTREME_ENV_VAR, str(root))
  monkeypatch.delenv(paths.TARGET_SOURCE_ENV_VAR, raising=False)
  return root


def _append_unlabelled_line(path):
  with open(path, "ab") as f:
    f.write(b"A premise.\tA hypothesis.\r\n")
  with open(path, "rb") as f:
    return f.read().count(b"\n")


def test_xnli_training_line_without_label_fails_the_train_task_not_the_eval_task(xtreme_copy):
  train = str(xtreme_copy / "xnli" / "train-en.tsv")
  line = _append_unlabelled_line(train)
  task = seqio.get_mixture_or_task("xlt_xnli_train")
  with pytest.raises(DataFormatError) as raised:
    task.source.load("train")
  assert str(raised.value).startswith(f"{train}:{line}: no label")
  # The official test file of the same family has no label column at all: no gold, no error.
  test_file = str(xtreme_copy / "xnli" / "test-ar.tsv")
  eval_task = seqio.get_mixture_or_task("xlt_xnli_eval_ar")
  assert eval_task.source.load("test")
  assert "no label column" in eval_task.source.provenance("test").no_gold
  assert test_file in eval_task.source.provenance("test").no_gold


def test_empty_training_file_is_named_when_the_trainer_reads_it(xtreme_copy):
  from xltransfer.partitioning import create_partitioner  # pylint: disable=g-import-not-at-top
  from xltransfer.train import input as input_lib  # pylint: disable=g-import-not-at-top
  train = xtreme_copy / "xnli" / "train-en.tsv"
  train.write_bytes(b"")
  config = input_lib.DatasetConfig("xlt_xnli_train", {"inputs": 32, "targets": 8},
                                   batch_size=2, seed=0)
  with pytest.raises(DataFormatError) as raised:
    input_lib.TrainInput(config, create_partitioner())
  assert str(raised.value).startswith(f"{train}: the file holds no examples")


def test_a_task_that_yields_nothing_names_the_task_instead_of_stop_iteration(tmp_path):
  import train_fixture_tasks  # pylint: disable=g-import-not-at-top
  from xltransfer.partitioning import create_partitioner  # pylint: disable=g-import-not-at-top
  from xltransfer.train import input as input_lib  # pylint: disable=g-import-not-at-top
  empty = _write(tmp_path, "empty_train.tsv", "")
  parse = train_fixture_tasks._parse_tsv  # pylint: disable=protected-access
  seqio.TaskRegistry.remove("xlt_test_empty")
  seqio.TaskRegistry.add(
      "xlt_test_empty", source=seqio.TextLineDataSource({"train": empty}),
      preprocessors=[lambda ds: ds.map(parse), *train_fixture_tasks.PREPROCESSORS],
      output_features=train_fixture_tasks.OUTPUT_FEATURES)
  try:
    config = input_lib.DatasetConfig("xlt_test_empty", {"inputs": 16, "targets": 16},
                                     batch_size=2, seed=0)
    train_input = input_lib.TrainInput(config, create_partitioner())
    with pytest.raises(UserError, match="MIXTURE_OR_TASK_NAME 'xlt_test_empty' split 'train' "
                                        "gave no training batch: its data is empty"):
      next(train_input)
  finally:
    seqio.TaskRegistry.remove("xlt_test_empty")


def test_intermediate_test_files_may_lack_gold_but_train_files_may_not(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.USER_DATA_ENV_VAR, str(tmp_path))
  no_answer = _jsonl(CSQA)
  _write(tmp_path, "commonsenseqa/train_rand_split.jsonl", no_answer)
  _write(tmp_path, "commonsenseqa/test_rand_split_no_answers.jsonl", no_answer)
  task = seqio.get_mixture_or_task("xlt_inter_commonsenseqa")
  assert [ex["label"] for ex in task.source.load("test")] == [-1]
  with pytest.raises(DataFormatError, match=r"train_rand_split.jsonl:1: missing field "
                                            "'answerKey'"):
    task.source.load("train")


# -- Row 8: bytes that are not UTF-8 ------------------------------------------------------------

LATIN1 = "premi\u00e8re\tB\tneutral\n".encode("latin-1")  # 0xe9 -> 0xe8 here: a lone byte


@pytest.mark.parametrize("reader,name,text,line,column", [
    (readers.read_nli_tsv, "a.tsv", b"A\tB\tneutral\n" + LATIN1, 2, 6),
    (lambda p: readers.read_nli_tsv(p, quoted=True), "q.tsv", b"A\tB\tneutral\r\n" + LATIN1, 2, 6),
    (readers.read_udpos, "u.tsv", b"The\tDET\n\ncaf\xe9\tNOUN\n", 3, 4),
    (readers.read_xcopa, "x.jsonl", _jsonl(dict(COPA, label=0)).encode() + b'{"premise": "\xe9"}\n',
     2, 14),
    (readers.read_squad_json, "s.json", b'{"data": [\n{"title": "\xe9t\xe9"}]}', 2, 12),
    (readers.read_lines, "l.txt", b"ok\n\xff\n", 2, 1),
])
def test_a_byte_that_is_not_utf8_names_file_line_and_column(tmp_path, reader, name, text, line,
                                                            column):
  path = _write(tmp_path, name, text)
  with pytest.raises(DataFormatError) as raised:
    reader(path)
  byte = text.split(b"\n")[line - 1][column - 1]
  assert str(raised.value).startswith(
      f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x} at column {column}")


def test_a_bad_byte_deep_in_a_large_file_names_its_line(tmp_path):
  # Python's own message gives a position inside its 8 KiB decoding buffer, not in the file.
  lines = [f"premise {i}\thypothesis {i}\tneutral\n".encode() for i in range(2000)]
  lines[1500] = b"caf\xe9\tB\tneutral\n"
  path = _write(tmp_path, "train-en.tsv", b"".join(lines))
  with pytest.raises(DataFormatError, match=r":1501: not valid UTF-8 \(byte 0xe9 at column 4"):
    readers.read_nli_tsv(path, training=True)
