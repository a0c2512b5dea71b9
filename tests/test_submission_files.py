"""A full zero-shot run's `xltransfer eval --submission_dir` against XTREME-R's official file list.

The official scorer, evaluate.py in github.com/google-research/xtreme (read at commit
838c13b69daafb9328785d16caae2711e4012123), opens `{task}/test-{lang}.{suffix}` for every language
of its XTREME_R_TASK2LANGS and stops at the first missing one, so a submission must hold every
one of those files; OFFICIAL_TASK2LANGS below is that table, copied. The run reads fixture files
generated here in the official download layout (DESIGN.md "Sources"; the shapes the repository's
scripts/download_data.sh and utils_preprocess.py write, test gold removed as they remove it).
"""
import json
import os

import jax
import pytest

from xltransfer.checkpoints import native
from xltransfer.data import languages
from xltransfer.errors import UserError
from xltransfer import cli
from xltransfer.evaluation import outputs, submission
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel

# evaluate.py's XTREME_R_TASK2LANGS, in its order ("lareqa" is listed there with no languages:
# the scorer has no LAReQA reader).
OFFICIAL_TASK2LANGS = {
    "xnli": "ar,bg,de,el,en,es,fr,hi,ru,sw,th,tr,ur,vi,zh",
    "panx": "ar,he,vi,id,jv,ms,tl,eu,ml,ta,te,af,nl,en,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,"
            "ka,ko,th,sw,yo,my,zh,kk,tr,et,fi,hu,qu,pl,uk,az,lt,pa,gu,ro",
    "udpos": "af,ar,bg,de,el,en,es,et,eu,fa,fi,fr,he,hi,hu,id,it,ja,kk,ko,mr,nl,pt,ru,ta,te,th,"
             "tl,tr,ur,vi,yo,zh,lt,pl,uk,wo,ro",
    "tatoeba": "ar,he,vi,id,jv,tl,eu,ml,ta,te,af,nl,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,"
               "ka,ko,th,sw,zh,kk,tr,et,fi,hu,az,lt,pl,uk,ro",
    "xcopa": "et,ht,id,it,qu,sw,ta,th,tr,vi,zh",
    "lareqa": "",
    "mewslix": "ar,de,en,es,fa,ja,pl,ro,ta,tr,uk",
    "xquad": "en,es,de,el,ru,tr,ar,vi,th,zh,hi,ro",
    "mlqa": "en,es,de,ar,hi,vi,zh",
    "tydiqa": "en,ar,bn,fi,id,ko,ru,sw,te",
}
# evaluate.py's get_suffix: json for QA and Mewsli-X, jsonl for XCOPA, else tsv; LAReQA, which
# it cannot read, is json here ({question id: [ranked candidate ids]}, like Mewsli-X).
SUFFIX = {"xquad": "json", "mlqa": "json", "tydiqa": "json", "mewslix": "json", "xcopa": "jsonl",
          "lareqa": "json"}
# XQuAD-R's languages (github.com/google-research-datasets/lareqa), LAReQA's test set.
LAREQA_LANGUAGES = "ar,de,el,en,es,hi,ru,th,tr,vi,zh"


def _official(task):
  return tuple(OFFICIAL_TASK2LANGS[task].split(",")) if OFFICIAL_TASK2LANGS[task] else ()


def test_submission_table_is_evaluate_py_table():
  assert [spec.name for spec in submission.XTREME_R_TASKS] == list(OFFICIAL_TASK2LANGS)
  for spec in submission.XTREME_R_TASKS:
    expected = LAREQA_LANGUAGES.split(",") if spec.name == "lareqa" else _official(spec.name)
    assert spec.languages == tuple(expected), spec.name
    assert spec.suffix == SUFFIX.get(spec.name, "tsv")


def test_every_official_language_has_an_eval_task():
  # An official language without an eval task can never get its submission file (Tatoeba
  # once had `ms` where XTREME-R has `az`).
  for task in OFFICIAL_TASK2LANGS:
    expected = LAREQA_LANGUAGES.split(",") if task == "lareqa" else _official(task)
    assert sorted(languages.TARGET_LANGUAGES[task]) == sorted(expected), task
  assert "az" in languages.TARGET_LANGUAGES["tatoeba"]
  assert "ms" not in languages.TARGET_LANGUAGES["tatoeba"]


def test_tydiqa_submits_its_dev_split_and_every_other_task_its_test_split():
  assert submission.submission_split("tydiqa") == "validation"
  for spec in submission.XTREME_R_TASKS:
    if spec.name != "tydiqa":
      assert submission.submission_split(spec.name) == "test"


# ---- tsv files: one prediction per line ----


def test_tsv_predictions_never_hold_a_raw_line_break(tmp_path):
  predictions = ["entail\nment", "neu\r\ntral", "contra\rdiction", "plain"]
  path = submission.write_submission_file(str(tmp_path), "xnli", "de", predictions)
  with open(path, "rb") as f:
    raw = f.read()
  assert raw == b"entail ment\nneu tral\ncontra diction\nplain\n"
  # Text mode ends lines at \r too (as the official reader opens the file): still four.
  assert submission.read_lines(path) == ["entail ment", "neu tral", "contra diction", "plain"]
  tags = submission.write_submission_file(str(tmp_path), "panx", "de", [["B-\rPER", "O"], ["O"]])
  assert submission.read_tags(tags) == [["B- PER", "O"], ["O"]]


def test_blank_tag_is_an_error(tmp_path):
  with pytest.raises(UserError, match="panx/de: sentence 1 has a blank tag '\\\\n'"):
    submission.write_submission_file(str(tmp_path), "panx", "de", [["O"], ["O", "\n"]])


# ---- a full zero-shot run ----


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _squad(lang, answer=None):
  """A SQuAD v1.1 file; answer=None: the emptied answers of the official test download."""
  context = f"Paris is the capital of France ({lang})."
  answers = ([{"answer_start": 0, "text": answer}] if answer
             else [{"answer_start": 0, "text": ""}])
  return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{
      "context": context, "qas": [{"id": f"{lang}-q1", "question": "What is the capital?",
                                   "answers": answers}]}]}]})


def _xquad_r(lang):
  """An XQuAD-R file (lareqa/xquad-r/{lang}.json): SQuAD plus sentences and their breaks."""
  sentences = ["Paris is the capital.", "It is in France."]
  context = " ".join(sentences)
  return json.dumps({"data": [{"title": "t", "paragraphs": [{
      "context": context, "sentences": sentences, "sentence_breaks": [[0, 21], [22, 38]],
      "qas": [{"id": "q1", "question": f"Capital? ({lang})",
               "answers": [{"answer_start": 0, "text": "Paris"}]}]}]}]})


def _official_download(root):
  """Every official language's eval file, test gold removed as the download script does."""
  for lang in _official("xnli"):
    _write(f"{root}/xnli/test-{lang}.tsv", f"A man sleeps ({lang}).\tSomeone sleeps.\n")
  for task in ("panx", "udpos"):
    for lang in _official(task):
      _write(f"{root}/{task}/test-{lang}.tsv", "Obama\nvisited\nParis\n\n")
  for lang in _official("xcopa"):
    _write(f"{root}/xcopa/test-{lang}.jsonl", json.dumps(
        {"premise": f"The tap was opened ({lang}).", "choice1": "Water flowed.",
         "choice2": "It snowed.", "question": "effect", "idx": 1, "label": 0}) + "\n")
  # XQuAD `ro` comes from the original XQuAD release; the XTREME-R download leaves it out.
  for lang in _official("xquad"):
    _write(f"{root}/xquad/xquad.{lang}.json", _squad(lang))
  for lang in _official("mlqa"):
    _write(f"{root}/mlqa/MLQA_V1/test/test-context-{lang}-question-{lang}.json", _squad(lang))
  for lang in _official("tydiqa"):
    _write(f"{root}/tydiqa/tydiqa-goldp-v1.1-dev/tydiqa.goldp.{lang}.dev.json", _squad(lang))
  for lang in _official("tatoeba"):
    _write(f"{root}/tatoeba/{lang}-en.{lang}", f"Hello ({lang}).\nThank you ({lang}).\n")
    _write(f"{root}/tatoeba/{lang}-en.en", "Hello.\nThank you.\n")  # sorted, as downloaded
  entities = [{"entity_id": f"Q{i}", "title": title, "description": f"{title} is a city.",
               "description_url": "", "description_language": "en", "sentence_spans": []}
              for i, title in enumerate(("Paris", "Rome", "Tokyo"), start=1)]
  _write(f"{root}/mewslix/candidate_set_entities.jsonl",
         "".join(json.dumps(e) + "\n" for e in entities))
  for lang in _official("mewslix"):
    text = f"Paris hosted a summit ({lang})."
    _write(f"{root}/mewslix/wikinews_mentions/test-{lang}.jsonl", json.dumps({
        "context": {"document_id": f"{lang}-1", "language": lang, "text": text,
                    "sentence_spans": [[0, len(text)]]},
        "mentions": [{"example_id": f"{lang}-m1", "entity_id": "",
                      "mention_span": {"text": "Paris", "start": 0, "end": 5}}]}) + "\n")
  for lang in LAREQA_LANGUAGES.split(","):
    _write(f"{root}/lareqa/xquad-r/{lang}.json", _xquad_r(lang))


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory):
  root = tmp_path_factory.mktemp("full_run")
  config = get_config("tiny")
  checkpoint = str(root / "tiny")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, checkpoint)
  _official_download(str(root / "xtreme"))
  output_dir, submission_dir = str(root / "out"), str(root / "submission")
  mixtures = ",".join(f"xlt_{task}_zeroshot" for task in OFFICIAL_TASK2LANGS)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XTREME_DATA_DIR", str(root / "xtreme"))
    patch.delenv("XLTRANSFER_TARGET_SOURCE", raising=False)
    code = cli.main(["eval", *[
        "--gin_file=models/mt5_tiny.gin", "--gin_file=eval/zeroshot.gin",
        f"--checkpoint={checkpoint}", f"--output_dir={output_dir}", f"--tasks={mixtures}",
        f"--submission_dir={submission_dir}",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}", "--gin.BATCH_SIZE=2",
        "--gin_bindings=xltransfer.evaluation.EvalSettings.max_examples = 1"]])
  assert code == 0
  return output_dir, submission_dir


def _files(directory):
  return {os.path.relpath(os.path.join(parent, name), directory)
          for parent, _, names in os.walk(directory) for name in names}


@pytest.mark.slow  # ~200 eval tasks, one example each: about a minute
def test_full_run_writes_exactly_the_official_files(run):
  _, submission_dir = run
  expected = {f"{spec.name}/test-{lang}.{spec.suffix}"
              for spec in submission.XTREME_R_TASKS for lang in spec.languages}
  assert _files(submission_dir) == expected
  # Per task against the copied evaluate.py table (LAReQA: XQuAD-R's languages).
  for task, langs in OFFICIAL_TASK2LANGS.items():
    langs = LAREQA_LANGUAGES if task == "lareqa" else langs
    suffix = SUFFIX.get(task, "tsv")
    written = {f for f in _files(submission_dir) if f.startswith(f"{task}/")}
    assert written == {f"{task}/test-{lang}.{suffix}" for lang in langs.split(",")}, task
  assert "tatoeba/test-az.tsv" in expected and "tatoeba/test-ms.tsv" not in expected
  assert "xquad/test-ro.json" in expected


@pytest.mark.slow  # ~200 eval tasks, one example each: about a minute
def test_tydiqa_files_hold_the_dev_predictions(run):
  output_dir, submission_dir = run
  with open(os.path.join(output_dir, outputs.INFO_FILE)) as f:
    assert set(json.load(f)["splits"]["tydiqa"].values()) == {"validation"}
  for lang in _official("tydiqa"):
    records = outputs.read_records(outputs.predictions_path(output_dir, "tydiqa", lang))
    with open(os.path.join(submission_dir, "tydiqa", f"test-{lang}.json")) as f:
      assert json.load(f) == {r["id"]: r["prediction"] for r in records} == {
          f"{lang}-q1": records[0]["prediction"]}


@pytest.mark.slow  # ~200 eval tasks, one example each: about a minute
def test_full_run_files_read_back_one_prediction_per_record(run):
  # Read the way the official scorer reads them: as many lines (sentences, ids) as records.
  output_dir, submission_dir = run
  for spec in submission.XTREME_R_TASKS:
    for lang in spec.languages:
      records = outputs.read_records(outputs.predictions_path(output_dir, spec.name, lang))
      assert len(records) == 1
      read = submission.read_submission_file(
          submission.submission_path(submission_dir, spec.name, lang), spec)
      if spec.reader == "json":
        assert list(read) == [records[0]["id"]], (spec.name, lang)
      elif spec.reader == "tags":
        assert read == [records[0]["prediction"]] and len(read[0]) == 3, (spec.name, lang)
      elif spec.reader == "xcopa":
        assert read == [records[0]["prediction_index"]], (spec.name, lang)
      else:
        assert read == [str(records[0]["prediction"]).strip()], (spec.name, lang)


def test_write_submission_takes_each_task_from_its_scored_split(tmp_path, caplog):
  # An eval directory with TyDiQA from dev, XNLI from test and from dev, and a non-XTREME-R task.
  output_dir = tmp_path / "out"
  splits = {"tydiqa": {"ko": "validation"}, "xnli": {"de": "test", "fr": "validation"},
            "xlt_copy": {"all": "test"}}
  records = {("tydiqa", "ko"): [{"id": "k1", "prediction": "서울"}],
             ("xnli", "de"): [{"id": "0", "prediction": "neutral"}],
             ("xnli", "fr"): [{"id": "0", "prediction": "neutral"}],
             ("xlt_copy", "all"): [{"id": "0", "prediction": "x"}]}
  _write(str(output_dir / outputs.INFO_FILE), json.dumps({"splits": splits}))
  for (target, lang), rows in records.items():
    _write(outputs.predictions_path(str(output_dir), target, lang),
           "".join(json.dumps(r) + "\n" for r in rows))
  submission_dir = tmp_path / "submission"
  with caplog.at_level("INFO"):
    written = submission.write_submission_dir(str(output_dir), str(submission_dir))
  assert sorted(os.path.relpath(p, submission_dir) for p in written) == [
      "tydiqa/test-ko.json", "xnli/test-de.tsv"]
  with open(submission_dir / "tydiqa" / "test-ko.json", encoding="utf-8") as f:
    assert json.load(f) == {"k1": "서울"}
  assert "xnli/fr left out (validation split)" in caplog.text
  assert "xlt_copy/all left out (test split)" in caplog.text
  # Incomplete tasks are named with the languages the official scorer will miss.
  assert "tydiqa lacks en ar bn fi id ru sw te" in caplog.text
  assert "xnli lacks ar bg el en es fr hi" in caplog.text
