"""Readers for the file formats of the XTREME-R download layout, the original releases of its
eval sets, and the user-supplied files.

Each reader takes a path and returns a list of plain-Python example dicts. A malformed line
(bad JSON, missing field, unknown label, tag/token count mismatch, bytes that are not UTF-8)
raises DataFormatError with the file and line; JSON documents (SQuAD format) name the JSON
location of a bad record.

Training files (`training=True`, which the training tasks' loaders pass) must carry every
example's gold: a line without its label or tags, or a QA question without answers, raises
DataFormatError naming file and line instead of training on an empty target; an empty
training file is named too. Eval files may lack gold (see below).

The XTREME-R download hides the test gold (google-research/xtreme utils_preprocess.py). The
`*_no_gold` functions recognise such a file from its examples and return (examples with the
placeholder gold blanked, a reason naming the file), or (examples, None) when they carry gold;
readers never raise on them, because the leaderboard submission is made from their predictions.
"""
import csv
import functools
import json
import logging
import os
import re

from xltransfer.errors import DataFormatError

NLI_LABELS = ("entailment", "neutral", "contradiction")
# XNLI's translated files spell one label differently.
NLI_LABEL_ALIASES = {"contradictory": "contradiction"}
UPOS_TAGS = frozenset(
    "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
NER_TAG = re.compile(r"^(O|[BI]-(PER|ORG|LOC))$")


class _Utf8File:
  """A data file opened as UTF-8 text (newline="" so csv and CRLF files read as written).

  Python reports a bad byte at a position within its decoding buffer, naming neither file nor
  line; iterating or reading this file raises DataFormatError with both instead.
  """

  def __init__(self, path):
    self._path = path
    self._file = open(path, encoding="utf-8", newline="")  # pylint: disable=consider-using-with

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._file.close()

  def __iter__(self):
    try:
      yield from self._file
    except UnicodeDecodeError:
      raise _decoding_error(self._path) from None

  def read(self):
    try:
      return self._file.read()
    except UnicodeDecodeError:
      raise _decoding_error(self._path) from None


def _decoding_error(path) -> DataFormatError:
  """Where the first byte that is not UTF-8 lies: line and (1-based, in bytes) column."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    line_start = data.rfind(b"\n", 0, e.start) + 1
    return DataFormatError(path, data.count(b"\n", 0, e.start) + 1,
                           f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column "
                           f"{e.start - line_start + 1}: {e.reason}); save the file as UTF-8")
  return DataFormatError(path, None, "not valid UTF-8")  # changed while being read


def _open(path):
  return _Utf8File(path)


def _require_examples(examples, path, training):
  """A training file without examples is an error (the run would have nothing to train on)."""
  if training and not examples:
    raise DataFormatError(path, None, "the file holds no examples (it is empty); a training "
                          "file needs at least one")
  return examples


def _missing_gold(path, line, what):
  return DataFormatError(path, line, f"{what}; every example of a training file needs its gold "
                         "(only eval files may leave it out)")


def _tsv_rows(path):
  """(line number, columns) of the non-empty lines of a TSV file, quotes taken literally."""
  with _open(path) as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if line:
        yield number, line.split("\t")


def _csv_tsv_rows(path):
  """(line number, columns) of a TSV file written by Python's csv.writer (XTREME-R's XNLI
  files: `"` quoting where a field holds a quote, CRLF line ends)."""
  with _open(path) as f:
    rows = csv.reader(f, delimiter="\t")
    try:
      for cols in rows:
        if cols and any(cols):
          yield rows.line_num, cols
    except csv.Error as e:
      raise DataFormatError(path, rows.line_num, f"bad quoting: {e}") from None


def read_nli_tsv(path, labels=NLI_LABELS, quoted=False, training=False, line_items=False):
  """`premise\\thypothesis\\tlabel` lines; a test file may leave out the label column, a
  training file may not. `quoted`: the file was written by csv.writer (XTREME-R's xnli/
  files), so `"` quotes. `line_items`: each example's `item` is its 0-based index in the file
  (XTREME-R's XNLI files are line-aligned across languages: tasks/targets.py says why)."""
  examples = []
  for number, cols in (_csv_tsv_rows(path) if quoted else _tsv_rows(path)):
    if len(cols) not in (2, 3):
      raise DataFormatError(path, number, f"expected 2 or 3 tab-separated fields, got {len(cols)}")
    label = cols[2].strip() if len(cols) == 3 else ""
    label = NLI_LABEL_ALIASES.get(label, label)
    if label and label not in labels:
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: {', '.join(labels)}")
    if training and not label:
      raise _missing_gold(path, number, "no label (the third tab-separated field)")
    example = {"premise": cols[0], "hypothesis": cols[1], "label": label}
    if line_items:
      example["item"] = str(len(examples))
    examples.append(example)
  return _require_examples(examples, path, training)


def read_pair_tsv(path, labels=("0", "1"), training=False):
  """`text1\\ttext2\\tlabel` lines (QQP in the English schema: label 1 = duplicate); the label
  is always required."""
  examples = []
  for number, cols in _tsv_rows(path):
    if len(cols) != 3:
      raise DataFormatError(path, number, f"expected 3 tab-separated fields, got {len(cols)}")
    if cols[2] not in labels:
      raise DataFormatError(path, number, f"unknown label {cols[2]!r}; valid: {', '.join(labels)}")
    examples.append({"text1": cols[0], "text2": cols[1], "label": int(cols[2])})
  return _require_examples(examples, path, training)


def read_sentence_tsv(path, labels=("0", "1"), training=False):
  """`sentence\\tlabel` lines (SST-2 in the English schema: label 1 = positive); the label is
  always required."""
  examples = []
  for number, cols in _tsv_rows(path):
    if len(cols) != 2:
      raise DataFormatError(path, number, f"expected 2 tab-separated fields, got {len(cols)}")
    if cols[1] not in labels:
      raise DataFormatError(path, number, f"unknown label {cols[1]!r}; valid: {', '.join(labels)}")
    examples.append({"sentence": cols[0], "label": int(cols[1])})
  return _require_examples(examples, path, training)


def read_tagged_tsv(path, valid_tag=None, training=False):
  """CoNLL-style `token\\ttag` lines, a blank line between sentences; tags optional (test),
  required in a training file.

  Every line of a sentence must have the same number of columns, so that a tag is never
  silently shifted onto the wrong token.
  """
  examples = []
  tokens, tags, first_line, has_tags = [], [], None, None

  def flush():
    if tokens:
      examples.append({"tokens": list(tokens), "tags": list(tags) if has_tags else []})

  with _open(path) as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        flush()
        tokens, tags, first_line, has_tags = [], [], None, None
        continue
      cols = line.split("\t")
      if len(cols) > 2 or not cols[0]:
        raise DataFormatError(path, number, f"expected `token<TAB>tag` or `token`, got {line!r}")
      line_has_tag = len(cols) == 2 and cols[1] != ""
      if training and not line_has_tag:
        raise _missing_gold(path, number, f"token {cols[0]!r} has no tag")
      if has_tags is None:
        has_tags, first_line = line_has_tag, number
      elif line_has_tag != has_tags:
        raise DataFormatError(
            path, number, "tag/token count mismatch: this line "
            f"{'has' if line_has_tag else 'lacks'} a tag but the sentence starting at line "
            f"{first_line} {'does not' if line_has_tag else 'does'}")
      if line_has_tag:
        if valid_tag is not None and not valid_tag(cols[1]):
          raise DataFormatError(path, number, f"unknown tag {cols[1]!r}")
        tags.append(cols[1])
      tokens.append(cols[0])
  flush()
  return _require_examples(examples, path, training)


def read_udpos(path, training=False):
  return read_tagged_tsv(path, valid_tag=lambda t: t in UPOS_TAGS, training=training)


def read_panx(path, training=False):
  return read_tagged_tsv(path, valid_tag=lambda t: bool(NER_TAG.match(t)), training=training)


def read_jsonl(path, required=()):
  """(line number, record) of each line; bad JSON or a missing field names file and line."""
  records = []
  with _open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(path, number, f"bad JSON: {e.msg} at column {e.colno}") from None
      if not isinstance(record, dict):
        raise DataFormatError(path, number, "expected a JSON object")
      missing = [k for k in required if k not in record]
      if missing:
        raise DataFormatError(path, number, f"missing field {missing[0]!r}")
      records.append((number, record))
  return records


def read_json(path):
  with _open(path) as f:
    text = f.read()
  if not text.strip():
    raise DataFormatError(path, None, "the file is empty (expected a JSON document)")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFormatError(path, e.lineno, f"bad JSON: {e.msg} at column {e.colno}") from None


def read_squad_json(path, training=False):
  """SQuAD-format JSON (SQuAD, XQuAD, MLQA, TyDiQA-GoldP): one example per question.

  `answers` lists every gold answer text; an unanswerable question (SQuAD v2.0
  `is_impossible`) has none. In a training file every other question needs a non-empty answer.
  """
  document = read_json(path)
  if not isinstance(document, dict) or "data" not in document:
    raise DataFormatError(path, 1, "missing field 'data' (expected SQuAD-format JSON)")
  examples = []
  for i, article in enumerate(document["data"]):
    for j, paragraph in enumerate(article.get("paragraphs", ())):
      where = f"data[{i}].paragraphs[{j}]"
      if "context" not in paragraph or "qas" not in paragraph:
        raise DataFormatError(path, None, f"{where}: missing field 'context' or 'qas'")
      for k, qa in enumerate(paragraph["qas"]):
        for key in ("id", "question"):
          if key not in qa:
            raise DataFormatError(path, None, f"{where}.qas[{k}]: missing field {key!r}")
        answers = [] if qa.get("is_impossible") else [a["text"] for a in qa.get("answers", ())]
        if training and not qa.get("is_impossible") and not any(a.strip() for a in answers):
          raise _missing_gold(path, None, f"{where}.qas[{k}] (id {qa['id']!r}): no answer and "
                              "not marked is_impossible")
        examples.append({"id": str(qa["id"]), "title": article.get("title", ""),
                         "context": paragraph["context"], "question": qa["question"],
                         "answers": answers})
  return _require_examples(examples, path, training)


def read_xcopa(path, training=False):
  """XCOPA/COPA JSONL: premise, choice1, choice2, question (cause|effect), label (0|1; -1
  when absent, which only an eval file may be)."""
  examples = []
  for number, r in read_jsonl(path, required=("premise", "choice1", "choice2", "question")):
    if r["question"] not in ("cause", "effect"):
      raise DataFormatError(path, number, f"unknown question {r['question']!r}; valid: cause, effect")
    label = r.get("label", -1)
    if label not in (0, 1, -1):
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: 0, 1")
    if training and label == -1:
      raise _missing_gold(path, number, "missing field 'label'")
    # `idx` numbers the COPA item that every XCOPA language translates (cambridgeltl/xcopa;
    # xcopa_preprocess keeps it in the download): the example's cross-language `item`.
    examples.append({"premise": r["premise"], "question": r["question"],
                     "choices": [r["choice1"], r["choice2"]], "label": label,
                     "item": str(r["idx"]) if "idx" in r else ""})
  return _require_examples(examples, path, training)


SIQA_ANSWERS = ("A", "B", "C")


def read_siqa(path, training=False):
  """Social IQa JSONL as XTREME-R downloads it (socialIQa_v1.4_{trn,dev,tst}.jsonl: context,
  question, answerA..answerC, correct = A|B|C), in the XCOPA fields: premise, question,
  choices (three), label (-1 without `correct`)."""
  examples = []
  required = ("context", "question", "answerA", "answerB", "answerC")
  for number, r in read_jsonl(path, required=required):
    correct = r.get("correct")
    if correct is not None and correct not in SIQA_ANSWERS:
      raise DataFormatError(path, number, f"unknown answer {correct!r}; valid: A, B, C")
    if training and correct is None:
      raise _missing_gold(path, number, "missing field 'correct'")
    examples.append({"premise": r["context"], "question": r["question"],
                     "choices": [r[f"answer{a}"] for a in SIQA_ANSWERS],
                     "label": SIQA_ANSWERS.index(correct) if correct is not None else -1})
  return _require_examples(examples, path, training)


def read_commonsenseqa(path, training=False):
  """Official CommonsenseQA JSONL: question.stem, question.choices[{label,text}], answerKey."""
  examples = []
  for number, r in read_jsonl(path, required=("id", "question")):
    question = r["question"]
    if not isinstance(question, dict) or "stem" not in question or "choices" not in question:
      raise DataFormatError(path, number, "missing field 'question.stem' or 'question.choices'")
    keys = [c.get("label") for c in question["choices"]]
    answer = r.get("answerKey")
    if answer is not None and answer not in keys:
      raise DataFormatError(path, number, f"unknown answerKey {answer!r}; valid: {', '.join(keys)}")
    if training and answer is None:
      raise _missing_gold(path, number, "missing field 'answerKey'")
    examples.append({"id": r["id"], "question": question["stem"],
                     "choices": [c["text"] for c in question["choices"]],
                     "label": keys.index(answer) if answer is not None else -1})
  return _require_examples(examples, path, training)


def read_cosmosqa(path, training=False):
  """Cosmos QA JSONL in the English schema: context, question, answer0..answer3, label."""
  examples = []
  required = ("context", "question", "answer0", "answer1", "answer2", "answer3")
  for number, r in read_jsonl(path, required=required):
    label = int(r.get("label", -1))
    if label not in (-1, 0, 1, 2, 3):
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: 0, 1, 2, 3")
    if training and label == -1:
      raise _missing_gold(path, number, "missing field 'label'")
    examples.append({"context": r["context"], "question": r["question"],
                     "choices": [r[f"answer{i}"] for i in range(4)], "label": label})
  return _require_examples(examples, path, training)


def read_hellaswag(path, training=False):
  """HellaSwag JSONL in the official schema: ctx, endings (4), label."""
  examples = []
  for number, r in read_jsonl(path, required=("ctx", "endings")):
    label = int(r.get("label", -1))
    if label not in range(-1, len(r["endings"])):
      raise DataFormatError(path, number, f"unknown label {label!r}")
    if training and label == -1:
      raise _missing_gold(path, number, "missing field 'label'")
    examples.append({"context": r["ctx"], "choices": list(r["endings"]), "label": label})
  return _require_examples(examples, path, training)


def read_lines(path):
  """Non-empty lines of a text file (aligned sentences, or one document per line)."""
  with _open(path) as f:
    return [line.rstrip("\r\n") for line in f if line.strip()]


def read_aligned_lines(path_a, path_b):
  """Line-aligned files (Tatoeba); unequal line counts name both files."""
  with _open(path_a) as f:
    a = [line.rstrip("\r\n") for line in f]
  with _open(path_b) as f:
    b = [line.rstrip("\r\n") for line in f]
  if len(a) != len(b):
    raise DataFormatError(path_a, min(len(a), len(b)) + 1,
                          f"has {len(a)} lines but its aligned file {path_b} has {len(b)}")
  return list(zip(a, b))


# -- Gold checks: the XTREME-R download's stripped files ----------------------------------------

HIDDEN = "the XTREME-R download hides this gold (google-research/xtreme utils_preprocess.py, {})"


def nli_no_gold(examples, path):
  if examples and all(ex["label"] == "" for ex in examples):
    return examples, f"{path} has no label column; " + HIDDEN.format("xnli_preprocess")
  return examples, None


def tags_no_gold(examples, path):
  if examples and all(not ex["tags"] for ex in examples):
    return examples, (f"{path} has tokens without tags; "
                      + HIDDEN.format("udpos_preprocess / panx_preprocess"))
  return examples, None


def qa_no_gold(examples, path):
  """Every answer empty: remove_qa_test_annotations wrote `{"answer_start": 0, "text": ""}`."""
  if examples and all(not any(a.strip() for a in ex["answers"]) for ex in examples):
    blank = [dict(ex, answers=[]) for ex in examples]
    return blank, (f"{path}: every answer is empty; "
                   + HIDDEN.format("remove_qa_test_annotations"))
  return examples, None


def copa_no_gold(examples, path):
  """Every label 0 (xcopa_preprocess sets it so) or missing: the labels become -1."""
  if examples and (all(ex["label"] == 0 for ex in examples)
                   or all(ex["label"] == -1 for ex in examples)):
    blank = [dict(ex, label=-1) for ex in examples]
    if examples[0]["label"] == -1:
      return blank, f"{path}: no example has a label"
    return blank, (f"{path}: every label is 0, as in the XTREME-R download's test files, which "
                   "carry no gold; " + HIDDEN.format("xcopa_preprocess"))
  return examples, None


def no_gold_check(examples, path):
  """For files that always carry gold (training data, the download's dev files of XNLI etc.)."""
  return examples, None


# -- Original releases --------------------------------------------------------------------------

def _cached_by_mtime(fn):
  """Caches a whole-file parse per (path, modification time): one file serves many languages."""
  cached = functools.lru_cache(maxsize=4)(lambda path, mtime: fn(path))
  return functools.wraps(fn)(lambda path: cached(path, os.path.getmtime(path)))


@_cached_by_mtime
def _xnli_release_by_language(path):
  """XNLI 1.0's xnli.{dev,test}.tsv (a header row; columns language, gold_label, ...,
  sentence1, sentence2, ..., pairID, ...; quotes literal) -> {language: [examples]}. The
  translations of one pair share its pairID: the examples' `item` ("" without that column)."""
  by_language = {}
  header = None
  for number, cols in _tsv_rows(path):
    if header is None:
      header = {name: i for i, name in enumerate(cols)}
      missing = [c for c in ("language", "gold_label", "sentence1", "sentence2") if c not in header]
      if missing:
        raise DataFormatError(path, number, f"header lacks column {missing[0]!r} (expected the "
                              "XNLI 1.0 release's xnli.dev.tsv / xnli.test.tsv)")
      continue
    if len(cols) < len(header):
      raise DataFormatError(path, number, f"expected {len(header)} tab-separated fields, got "
                            f"{len(cols)}")
    label = cols[header["gold_label"]].strip()
    label = NLI_LABEL_ALIASES.get(label, label)
    if label not in NLI_LABELS:
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: {', '.join(NLI_LABELS)}")
    # As xnli_preprocess: fields stripped, the XNLI 1.0 gold label, contradictory renamed.
    by_language.setdefault(cols[header["language"]].strip(), []).append(
        {"premise": cols[header["sentence1"]].strip(),
         "hypothesis": cols[header["sentence2"]].strip(), "label": label,
         "item": cols[header["pairID"]].strip() if "pairID" in header else ""})
  return by_language


def read_xnli_release(path, lang):
  """The `lang` rows of an XNLI 1.0 file (all 15 languages in one file)."""
  by_language = _xnli_release_by_language(path)
  if lang not in by_language:
    raise DataFormatError(path, None, f"no rows for language {lang!r}; it has "
                          f"{' '.join(sorted(by_language))}")
  return list(by_language[lang])


def read_panx_release(path):
  """WikiANN (Rahimi et al. 2019 split, as XTREME-R's AmazonPhotos.zip holds it: {lang}.tar.gz
  with `dev`, `test`, `train`): `lang:token\\ttag` lines, a blank line between sentences.

  Mirrors panx_preprocess: a two-column line keeps the token after the first `:`; a line
  without one is dropped (as there); other lines end a sentence.
  """
  examples, tokens, tags = [], [], []
  with _open(path) as f:
    for number, line in enumerate(f, start=1):
      cols = line.strip().split("\t")
      if len(cols) == 2:
        colon = cols[0].find(":")
        if colon == -1:
          continue
        if not NER_TAG.match(cols[1].strip()):
          raise DataFormatError(path, number, f"unknown tag {cols[1].strip()!r}")
        tokens.append(cols[0][colon + 1:].strip())
        tags.append(cols[1].strip())
      elif tokens:
        examples.append({"tokens": tokens, "tags": tags})
        tokens, tags = [], []
  if tokens:
    examples.append({"tokens": tokens, "tags": tags})
  return examples


# TyDi QA names languages in its ids ("arabic-...") and per-language dev file names.
TYDIQA_LANGUAGE_NAMES = {"ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish",
                         "id": "indonesian", "ko": "korean", "ru": "russian", "sw": "swahili",
                         "te": "telugu"}


@_cached_by_mtime
def _squad_cached(path):
  return read_squad_json(path)


def read_tydiqa_release(path, lang):
  """TyDi QA GoldP v1.1 dev: the one-file release (tydiqa-goldp-v1.1-dev.json, every language,
  ids prefixed `{language name}-`) filtered to `lang`, or a per-language file of the
  tydiqa-goldp-v1.1-dev.tgz release (tydiqa-goldp-dev-{language name}.json) as it is."""
  examples = _squad_cached(path)
  if os.path.basename(path).startswith("tydiqa-goldp-dev-"):
    return list(examples)
  prefix = TYDIQA_LANGUAGE_NAMES[lang] + "-"
  kept = [ex for ex in examples if ex["id"].startswith(prefix)]
  if not kept:
    raise DataFormatError(path, None, f"no question id starts with {prefix!r} (expected the "
                          "TyDi QA GoldP v1.1 dev release with language-prefixed ids)")
  return kept


# -- Universal Dependencies, as XTREME-R converts it ---------------------------------------------

# conllu_to_conll.py's part-of-speech precedence for choosing a multiword token's head among
# equally high words (google-research/xtreme third_party/ud-conversion-tools).
UD_POS_PRECEDENCE = {
    "default": "VERB NOUN PROPN PRON ADJ NUM ADV INTJ AUX ADP DET PART CCONJ SCONJ X PUNCT".split(),
    "es": "VERB AUX PRON ADP DET".split(),
    "fr": "VERB AUX PRON NOUN ADJ ADV ADP DET PART SCONJ CONJ".split(),
    "it": "VERB AUX ADV PRON ADP DET INTJ".split(),
}


class _UnrankedHead(Exception):
  """conllu_to_conll.py fails on the file: a multiword token's candidate head has a part of
  speech outside its precedence list."""


def _conllu_sentences(path):
  """(line of the sentence's first word, words, multiword tokens) per sentence of a CoNLL-U
  file; words: {id: (form, upos, parent ids: the head and the enhanced-dependency heads)}."""
  sentences, words, multi, first = [], {}, {}, None
  with _open(path) as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line:
        if words or multi:
          sentences.append((first, words, multi))
        words, multi, first = {}, {}, None
        continue
      if line.startswith("#"):
        continue
      cols = line.split("\t")
      if len(cols) != 10:
        raise DataFormatError(path, number, f"expected 10 tab-separated CoNLL-U fields, got {len(cols)}")
      first = first or number
      if "." in cols[0]:
        continue  # an empty node: not a word
      if "-" in cols[0]:
        start, end = (int(i) for i in cols[0].split("-"))
        multi[start] = (end, cols[1])
        continue
      try:
        parents = [] if cols[6] == "_" else [int(cols[6])]
        if cols[8] != "_":
          parents += [int(p.split(":")[0]) for p in cols[8].split("|")
                      if p.split(":")[0].isdigit()]
        words[int(cols[0])] = (cols[1], cols[3], parents)
      except ValueError:
        raise DataFormatError(path, number, f"bad word id or head in {line!r}") from None
  if words or multi:
    sentences.append((first, words, multi))
  return sentences


def _ancestor_count(words, node):
  """How many nodes reach `node` over head and enhanced-dependency edges (node 0, the root,
  included): networkx.ancestors, which conllu_to_conll.py ranks heads by."""
  seen, todo = set(), list(words[node][2])
  while todo:
    parent = todo.pop()
    if parent in seen or parent == node:
      continue
    seen.add(parent)
    if parent in words:
      todo.extend(words[parent][2])
  return len(seen)


def _fuse(words, multi, precedence):
  """Tokens and tags after conllu_to_conll.py --replace_subtokens_with_fused_forms: each
  multiword token becomes one token, its form, with the tag of its span's head (the single
  highest word of the span, else the best-ranked part of speech among the highest)."""
  drop, form_of = set(), {}
  for start, (end, form) in sorted(multi.items()):
    span = [i for i in range(start, end + 1) if i in words]
    if not span:
      continue
    depth = [_ancestor_count(words, i) for i in span]
    highest = [i for i, d in zip(span, depth) if d == min(depth)]
    head = highest[0]
    if len(highest) > 1:
      if any(words[i][1] not in precedence for i in highest):
        raise _UnrankedHead()
      head = min(highest, key=lambda i: precedence.index(words[i][1]))  # the first best
    form_of[head] = form
    drop.update(i for i in span if i != head)
  ids = [i for i in sorted(words) if i not in drop]
  return [form_of.get(i, words[i][0]) for i in ids], [words[i][1] for i in ids]


def read_ud_treebanks(paths_in_order, lang):
  """UD-POS examples from CoNLL-U files, as XTREME-R's download builds `{split}-{lang}.tsv`:
  conllu_to_conll.py (multiword tokens replaced by their fused form), then udpos_preprocess
  (FORM and UPOS; sentences whose forms are all or all but one `_` dropped; spaces and U+200C
  removed from forms). A file the conversion fails on is skipped, as it is missing there."""
  precedence = UD_POS_PRECEDENCE.get(lang, UD_POS_PRECEDENCE["default"])
  examples = []
  for path in paths_in_order:
    try:
      converted = [_fuse(words, multi, precedence) for _, words, multi in _conllu_sentences(path)]
    except _UnrankedHead:
      logging.warning("%s: skipped, as XTREME-R's conllu_to_conll.py fails on it (a multiword "
                      "token's head candidates have a part of speech outside its precedence "
                      "list)", path)
      continue
    for tokens, tags in converted:
      empty = sum(t == "_" for t in tokens)
      if empty == 0 or empty < len(tokens) - 1:
        examples.append({"tokens": ["".join(t.replace("\u200c", "").split(" ")) for t in tokens],
                         "tags": list(tags)})
  return examples
