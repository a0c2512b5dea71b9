"""Extractive QA scores exactly as the official scorers compute them.

XQuAD and TyDiQA-GoldP use the SQuAD v1.1 script (English normalisation for every language);
MLQA uses its own script, whose normalisation depends on the answer language. Both take the
maximum over the gold answers, count a question without a prediction as 0, and report
percentages. Quirks of the official code are kept on purpose, because the numbers must match:

- SQuAD strips ASCII punctuation only, so "दिल्ली।" keeps its danda and "eiffel-tower" becomes
  one token "eiffeltower".
- An answer that normalises to "" (e.g. "the") exact-matches an empty prediction, but scores
  F1 0, since F1 is 0 whenever no token is shared.
- MLQA's Arabic rule removes every "ال", also inside words; Chinese is split into single
  CJK characters with runs of other characters kept as whitespace tokens.
"""
import collections
import functools
import re
import string
import sys
import unicodedata

_SQUAD_PUNCTUATION = frozenset(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")


@functools.lru_cache(maxsize=None)
def mlqa_punctuation() -> frozenset:
  """MLQA's punctuation: every Unicode "P*" code point plus ASCII punctuation.

  Built like the official script (over range(sys.maxunicode)); the ASCII set adds symbols such
  as $ + < = > ^ ` |. Cached because scanning the code points takes a noticeable moment.
  """
  unicode_punctuation = (
      chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))
  return frozenset(unicode_punctuation) | _SQUAD_PUNCTUATION


# The Arabic pattern's first alternative can never match (a "^" after characters), so in effect
# every "ال" is replaced; the pattern is kept as the official script writes it.
_MLQA_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "ar": re.compile(r"\sال^|ال"),
}
_MLQA_WHITESPACE_LANGUAGES = ("en", "es", "hi", "vi", "de", "ar")
_MLQA_MIXED_SEGMENTATION_LANGUAGES = ("zh",)
MLQA_LANGUAGES = _MLQA_WHITESPACE_LANGUAGES + _MLQA_MIXED_SEGMENTATION_LANGUAGES
_CJK_CHARACTER = re.compile(r"[\u4e00-\u9fa5]")


def normalize_squad_answer(text: str) -> str:
  """Lowercase, drop ASCII punctuation, drop English articles, collapse whitespace."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _SQUAD_PUNCTUATION)
  text = _SQUAD_ARTICLES.sub(" ", text)
  return " ".join(text.split())


def _mixed_segmentation(text: str) -> list:
  """Single tokens for CJK characters and punctuation; whitespace tokens for the runs between."""
  punctuation = mlqa_punctuation()
  tokens = []
  pending = ""
  for ch in text:
    if _CJK_CHARACTER.search(ch) or ch in punctuation:
      tokens.extend(pending.split())
      pending = ""
      tokens.append(ch)
    else:
      pending += ch
  tokens.extend(pending.split())
  return tokens


def _check_mlqa_language(lang: str) -> None:
  if lang not in MLQA_LANGUAGES:
    raise ValueError(
        f"MLQA normalisation is defined for {', '.join(MLQA_LANGUAGES)}; got language {lang!r}")


def normalize_mlqa_answer(text: str, lang: str) -> str:
  """MLQA's normalisation: lowercase, Unicode punctuation, per-language articles, tokens."""
  _check_mlqa_language(lang)
  text = text.lower()
  punctuation = mlqa_punctuation()
  text = "".join(ch for ch in text if ch not in punctuation)
  if lang in _MLQA_ARTICLES:
    text = _MLQA_ARTICLES[lang].sub(" ", text)
  if lang in _MLQA_MIXED_SEGMENTATION_LANGUAGES:
    tokens = _mixed_segmentation(text)
  else:
    tokens = text.split()
  return " ".join(t for t in tokens if t.strip())


def _token_f1(prediction_tokens: list, gold_tokens: list) -> float:
  common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(gold_tokens)
  return (2 * precision * recall) / (precision + recall)


def _f1_em(targets, predictions, normalize) -> dict:
  """Sums the per-question maxima in order and scales like the official scripts."""
  targets = list(targets)
  predictions = list(predictions)
  if len(targets) != len(predictions):
    raise ValueError(
        f"{len(targets)} questions but {len(predictions)} predictions; pass None for a "
        "question without a prediction")
  if not targets:
    raise ValueError("no questions to score")
  exact_match = f1 = 0
  for answers, prediction in zip(targets, predictions):
    if prediction is None:  # unanswered: counts in the total with score 0
      continue
    if isinstance(answers, str):
      answers = [answers]
    if not answers:
      # The official scripts take max() over no answers and crash; unanswered, it scores 0.
      raise ValueError("a question with a prediction has no gold answer; the official scorer "
                       "cannot score it")
    normalized_prediction = normalize(prediction)
    normalized_answers = [normalize(a) for a in answers]
    exact_match += max(normalized_prediction == a for a in normalized_answers)
    prediction_tokens = normalized_prediction.split()
    f1 += max(_token_f1(prediction_tokens, a.split()) for a in normalized_answers)
  total = len(targets)
  return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def squad_f1_em(targets, predictions) -> dict:
  """SQuAD v1.1 F1 and exact match (0-100) over questions.

  Args:
    targets: per question, the list of gold answer texts (a bare string is one answer).
    predictions: per question, the predicted text, or None when the question was not answered
      (it scores 0 but still counts, as "Unanswered question ... will receive score 0").
  """
  return _f1_em(targets, predictions, normalize_squad_answer)


def mlqa_f1_em(targets, predictions, lang: str) -> dict:
  """MLQA F1 and exact match (0-100) with the normalisation of answer language `lang`."""
  _check_mlqa_language(lang)
  return _f1_em(targets, predictions, lambda text: normalize_mlqa_answer(text, lang))


def mlqa_metric_fn(lang: str):
  """A seqio-style `metric_fn(targets, predictions)` for MLQA answers in `lang`."""
  _check_mlqa_language(lang)

  def metric_fn(targets, predictions):
    return mlqa_f1_em(targets, predictions, lang)
  metric_fn.__name__ = f"mlqa_f1_em_{lang}"
  return metric_fn


def _json_type(value) -> str:
  return {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
          str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _official_answer(predictions, question_id: str):
  """The prediction of one question as the official `evaluate(dataset, predictions)` reads it.

  Returns None for an unanswered question. The official code tests `qa["id"] in predictions`
  and then indexes `predictions[qa["id"]]`. For the usual {id: text} object that is a key
  lookup. A prediction file whose top-level object has a "data" key is read as that key's
  value only (the official reader treats it as a SQuAD dataset): a string then answers no
  question unless an id is a substring of it, a list none unless an id is an element of it;
  where the official code would go on to index such a value, or meets any other value, it
  crashes, and this raises ValueError.
  """
  if isinstance(predictions, dict):
    if question_id not in predictions:
      return None
    answer = predictions[question_id]
    if not isinstance(answer, str):
      raise ValueError(f"the answer of question {question_id!r} is {_json_type(answer)}, not a "
                       "string")
    return answer
  if isinstance(predictions, (str, list)) and question_id not in predictions:
    return None
  raise ValueError(f"the predictions are {_json_type(predictions)}, not an object {{question id: "
                   f"answer text}}, and the official scorer cannot look up question "
                   f"{question_id!r} in it")


def squad_dataset_targets(articles, predictions):
  """Flattens SQuAD-format articles and an id->answer dict into (targets, predictions) lists.

  Question order and the "missing id scores 0" rule follow the official `evaluate(dataset,
  predictions)`; ids in `predictions` that are not questions are ignored whatever their value.
  Returns also the ids of unanswered questions, which the official script reports on stderr.
  Raises ValueError, naming the question, where the official script would crash: a question
  without a string id, an answer without a string "text", a non-string prediction.
  """
  targets, flat_predictions, unanswered = [], [], []
  if not isinstance(articles, list):
    raise ValueError(f'the dataset is {_json_type(articles)}, not a list of articles '
                     '({"data": [articles]})')
  for a, article in enumerate(articles):
    paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
    if not isinstance(paragraphs, list):
      raise ValueError(f'article {a} has no list of "paragraphs"')
    for p, paragraph in enumerate(paragraphs):
      questions = paragraph.get("qas") if isinstance(paragraph, dict) else None
      if not isinstance(questions, list):
        raise ValueError(f'article {a}, paragraph {p} has no list of "qas"')
      for qa in questions:
        question_id = qa.get("id") if isinstance(qa, dict) else None
        answers = qa.get("answers") if isinstance(qa, dict) else None
        if not isinstance(question_id, str) or not isinstance(answers, list):
          raise ValueError(f'article {a}, paragraph {p}: a question without a string "id" '
                           f'and a list of "answers" ({str(qa)[:80]})')
        texts = [answer.get("text") if isinstance(answer, dict) else None for answer in answers]
        if not all(isinstance(text, str) for text in texts):
          raise ValueError(f'question {question_id!r} has an answer without a string "text"')
        targets.append(texts)
        answer = _official_answer(predictions, question_id)
        if answer is not None and not texts:
          # Unanswered, such a question scores 0; answered, the official max() crashes.
          raise ValueError(f'question {question_id!r} has a prediction but no gold answer '
                           '("answers": []), which the official scorer cannot score')
        flat_predictions.append(answer)
        if answer is None:
          unanswered.append(question_id)
  return targets, flat_predictions, unanswered
