"""Readers for the file formats of the XTREME-R download layout and the user-supplied files.

Each reader takes a path and returns a list of plain-Python example dicts. A malformed line
(bad JSON, missing field, unknown label, tag/token count mismatch) raises DataFormatError with
the file and line; JSON documents (SQuAD format) name the JSON location of a bad record.
"""
import json
import re

from xltransfer.errors import DataFormatError

NLI_LABELS = ("entailment", "neutral", "contradiction")
# XNLI's translated files spell one label differently.
NLI_LABEL_ALIASES = {"contradictory": "contradiction"}
UPOS_TAGS = frozenset(
    "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
NER_TAG = re.compile(r"^(O|[BI]-(PER|ORG|LOC))$")


def _open(path):
  return open(path, encoding="utf-8", newline="")


def _tsv_rows(path):
  """(line number, columns) of the non-empty lines of a TSV file, quotes taken literally."""
  with _open(path) as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if line:
        yield number, line.split("\t")


def read_nli_tsv(path, labels=NLI_LABELS):
  """`premise\\thypothesis\\tlabel` lines; a test file may leave out the label column."""
  examples = []
  for number, cols in _tsv_rows(path):
    if len(cols) not in (2, 3):
      raise DataFormatError(path, number, f"expected 2 or 3 tab-separated fields, got {len(cols)}")
    label = cols[2].strip() if len(cols) == 3 else ""
    label = NLI_LABEL_ALIASES.get(label, label)
    if label and label not in labels:
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: {', '.join(labels)}")
    examples.append({"premise": cols[0], "hypothesis": cols[1], "label": label})
  return examples


def read_pair_tsv(path, labels=("0", "1")):
  """`text1\\ttext2\\tlabel` lines (QQP in the English schema: label 1 = duplicate)."""
  examples = []
  for number, cols in _tsv_rows(path):
    if len(cols) != 3:
      raise DataFormatError(path, number, f"expected 3 tab-separated fields, got {len(cols)}")
    if cols[2] not in labels:
      raise DataFormatError(path, number, f"unknown label {cols[2]!r}; valid: {', '.join(labels)}")
    examples.append({"text1": cols[0], "text2": cols[1], "label": int(cols[2])})
  return examples


def read_sentence_tsv(path, labels=("0", "1")):
  """`sentence\\tlabel` lines (SST-2 in the English schema: label 1 = positive)."""
  examples = []
  for number, cols in _tsv_rows(path):
    if len(cols) != 2:
      raise DataFormatError(path, number, f"expected 2 tab-separated fields, got {len(cols)}")
    if cols[1] not in labels:
      raise DataFormatError(path, number, f"unknown label {cols[1]!r}; valid: {', '.join(labels)}")
    examples.append({"sentence": cols[0], "label": int(cols[1])})
  return examples


def read_tagged_tsv(path, valid_tag=None):
  """CoNLL-style `token\\ttag` lines, a blank line between sentences; tags optional (test).

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
  return examples


def read_udpos(path):
  return read_tagged_tsv(path, valid_tag=lambda t: t in UPOS_TAGS)


def read_panx(path):
  return read_tagged_tsv(path, valid_tag=lambda t: bool(NER_TAG.match(t)))


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
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFormatError(path, e.lineno, f"bad JSON: {e.msg} at column {e.colno}") from None


def read_squad_json(path):
  """SQuAD-format JSON (SQuAD, XQuAD, MLQA, TyDiQA-GoldP): one example per question.

  `answers` lists every gold answer text; an unanswerable question (SQuAD v2.0
  `is_impossible`) has none.
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
        examples.append({"id": str(qa["id"]), "title": article.get("title", ""),
                         "context": paragraph["context"], "question": qa["question"],
                         "answers": answers})
  return examples


def read_xcopa(path):
  """XCOPA/COPA JSONL: premise, choice1, choice2, question (cause|effect), label (0|1)."""
  examples = []
  for number, r in read_jsonl(path, required=("premise", "choice1", "choice2", "question")):
    if r["question"] not in ("cause", "effect"):
      raise DataFormatError(path, number, f"unknown question {r['question']!r}; valid: cause, effect")
    label = r.get("label", -1)
    if label not in (0, 1, -1):
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: 0, 1")
    examples.append({"premise": r["premise"], "question": r["question"],
                     "choices": [r["choice1"], r["choice2"]], "label": label})
  return examples


SIQA_ANSWERS = ("A", "B", "C")


def read_siqa(path):
  """Social IQa JSONL as XTREME-R downloads it (socialIQa_v1.4_{trn,dev,tst}.jsonl: context,
  question, answerA..answerC, correct = A|B|C), in the XCOPA fields: premise, question,
  choices (three), label (-1 without `correct`)."""
  examples = []
  required = ("context", "question", "answerA", "answerB", "answerC")
  for number, r in read_jsonl(path, required=required):
    correct = r.get("correct")
    if correct is not None and correct not in SIQA_ANSWERS:
      raise DataFormatError(path, number, f"unknown answer {correct!r}; valid: A, B, C")
    examples.append({"premise": r["context"], "question": r["question"],
                     "choices": [r[f"answer{a}"] for a in SIQA_ANSWERS],
                     "label": SIQA_ANSWERS.index(correct) if correct is not None else -1})
  return examples


def read_commonsenseqa(path):
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
    examples.append({"id": r["id"], "question": question["stem"],
                     "choices": [c["text"] for c in question["choices"]],
                     "label": keys.index(answer) if answer is not None else -1})
  return examples


def read_cosmosqa(path):
  """Cosmos QA JSONL in the English schema: context, question, answer0..answer3, label."""
  examples = []
  required = ("context", "question", "answer0", "answer1", "answer2", "answer3")
  for number, r in read_jsonl(path, required=required):
    label = int(r.get("label", -1))
    if label not in (-1, 0, 1, 2, 3):
      raise DataFormatError(path, number, f"unknown label {label!r}; valid: 0, 1, 2, 3")
    examples.append({"context": r["context"], "question": r["question"],
                     "choices": [r[f"answer{i}"] for i in range(4)], "label": label})
  return examples


def read_hellaswag(path):
  """HellaSwag JSONL in the official schema: ctx, endings (4), label."""
  examples = []
  for number, r in read_jsonl(path, required=("ctx", "endings")):
    label = int(r.get("label", -1))
    if label not in range(-1, len(r["endings"])):
      raise DataFormatError(path, number, f"unknown label {label!r}")
    examples.append({"context": r["ctx"], "choices": list(r["endings"]), "label": label})
  return examples


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
