"""Retrieval scores: mAP@k for Mewsli-X and LAReQA, and BUCC bitext-mining F1 (XTREME v1).

mAP@k follows XTREME-R's LAReQA code (`average_precision_at_k`): walking the top k of the
ranking, each gold id seen for the first time adds (hits so far / rank); the sum is divided
by min(number of gold ids, k). With one gold id per query this is the reciprocal rank of the
gold within the top k, which is how XTREME-R scores Mewsli-X (`mean_reciprocal_rank` over
top-20 predictions, reported as "map@20"). So:

- fewer than k predictions: only those are read;
- a query without predictions (an id missing from the prediction file) scores 0;
- a gold id ranked below k scores 0; repeated ids count once, at their first rank.

BUCC: the official F1 compares sets of "source-id<TAB>target-id" pairs; the threshold on the
candidates' margin scores is the one that maximises F1 on dev gold pairs (LASER/XTREME's
`bucc_optimize`), and pairs scoring at least the threshold are extracted.
"""


def _unique(items) -> list:
  """Items in order without repeats, compared with == (ids may be unhashable JSON lists)."""
  out, seen = [], set()
  for item in items:
    try:
      if item in seen:
        continue
      seen.add(item)
    except TypeError:  # unhashable: fall back to ==
      if item in out:
        continue
    out.append(item)
  return out


def average_precision_at_k(gold_ids, ranked_ids, k=20) -> float:
  """AP@k in [0, 1] for one query; `gold_ids` must not be empty.

  Ids are compared with ==, like the official code, so any JSON value may stand in a ranking
  (a list never equals a string id and simply scores nothing).
  """
  gold = _unique(gold_ids)
  if not gold:
    raise ValueError("a query has no gold id; average precision is undefined")
  top = list(ranked_ids)[:k] if k else list(ranked_ids)
  hits = 0.0
  score = 0.0
  found = []  # gold ids already hit: a repeated id counts once, at its first rank
  for rank, candidate in enumerate(top, start=1):
    if candidate in gold and candidate not in found:
      found.append(candidate)
      hits += 1.0
      score += hits / rank
  divisor = min(len(gold), k) if k else len(gold)
  return score / divisor


def map_at_k(gold_ids, ranked_ids, k=20) -> dict:
  """Mean AP@k over queries, on a 0-100 scale, as {"map@{k}": value}.

  Args:
    gold_ids: per query, the set (or list) of correct candidate ids.
    ranked_ids: per query, the candidate ids best first; [] or None when the query has no
      prediction (it scores 0).
    k: cut-off; XTREME-R uses 20.
  """
  gold_ids = list(gold_ids)
  ranked_ids = list(ranked_ids)
  if len(gold_ids) != len(ranked_ids):
    raise ValueError(f"{len(gold_ids)} queries with gold ids but {len(ranked_ids)} rankings")
  scores = [average_precision_at_k(gold, ranked or [], k)
            for gold, ranked in zip(gold_ids, ranked_ids)]
  # Mewsli-X's scorer reports 0 for an empty set of queries.
  mean = sum(scores) / len(scores) if scores else 0.0
  return {f"map@{k}": mean * 100}


def _json_type(value) -> str:
  return {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
          str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _ranking(predictions: dict, example_id, k, strings_as_sequences: bool) -> list:
  """The top k of an example's ranking; a missing id has none. Non-list rankings raise."""
  ranked = predictions.get(example_id, [])
  if isinstance(ranked, str) and strings_as_sequences:
    return list(ranked)[:k]  # The official code slices a string: its characters are the ids.
  if not isinstance(ranked, list):
    raise ValueError(f"the ranking of {example_id!r} is {_json_type(ranked)}, not a list of ids")
  return ranked[:k]


def mewslix_map_at_k(gold: dict, predictions: dict, k=20) -> dict:
  """Scores Mewsli-X submission dicts exactly as XTREME-R's `utils_mewslix.evaluate`.

  That is the mean reciprocal rank of the gold id within the top k: a prediction counts when
  it equals (==) the gold string, so a candidate that is itself a list is simply a miss.

  Args:
    gold: example id -> list whose first element is the gold entity id (only that element is
      read, stripped of whitespace).
    predictions: example id -> ranked entity ids. Missing ids score 0; extra ids are ignored.
      A ranking that is null, a number or an object crashes the official code; here it raises
      ValueError naming the id. A string ranking is sliced into characters, as officially.
  """
  reciprocal_ranks = []
  for example_id, labels in gold.items():
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
      raise ValueError(f"the gold of {example_id!r} is {_json_type(labels)}; expected a list "
                       "whose first element is the gold entity id")
    target = labels[0].strip()
    top = _ranking(predictions, example_id, k, strings_as_sequences=True)
    rank = next((r for r, p in enumerate(top, start=1) if p == target), None)
    reciprocal_ranks.append(1.0 / rank if rank else 0.0)
  mean = sum(reciprocal_ranks) / len(reciprocal_ranks) if reciprocal_ranks else 0.0
  return {f"map@{k}": mean * 100}


def lareqa_map_at_k(gold: dict, predictions: dict, k=20) -> dict:
  """Scores LAReQA dicts (question id -> gold candidate ids / ranked candidate ids).

  AP@k as XTREME-R's `utils_lareqa.average_precision_at_k`, which divides by min(number of
  gold ids, k). XTREME-R ships no file scorer for LAReQA, so the file shapes are strict: gold
  must be a non-empty list and a ranking a list (a missing id scores 0).
  """
  gold_lists, rankings = [], []
  for question_id, labels in gold.items():
    if not isinstance(labels, list) or not labels:
      raise ValueError(f"the gold of {question_id!r} is {_json_type(labels)}; expected a "
                       "non-empty list of candidate ids")
    gold_lists.append(labels)
    rankings.append(_ranking(predictions, question_id, k, strings_as_sequences=False))
  return map_at_k(gold_lists, rankings, k)


def _pair(item) -> tuple:
  """A pair from a ("src", "trg") tuple or a "src<TAB>trg" line, as the official reader."""
  if isinstance(item, str):
    return tuple(item.split("\t"))
  return tuple(item)


def bucc_f1(gold_pairs, predicted_pairs) -> dict:
  """BUCC F1, precision and recall (0-100) of predicted against gold sentence-id pairs."""
  gold = {_pair(p) for p in gold_pairs}
  predicted = {_pair(p) for p in predicted_pairs}
  correct = len(gold & predicted)
  if correct > 0:
    precision = correct / len(predicted)
    recall = correct / len(gold)
    f1 = 2 * precision * recall / (precision + recall)
  else:
    precision = recall = f1 = 0
  return {"f1": f1 * 100, "precision": precision * 100, "recall": recall * 100}


def bucc_optimal_threshold(candidate_scores: dict, gold_pairs) -> float:
  """The score threshold that maximises F1 of extracted pairs against dev gold pairs.

  Candidates are taken best first (ties keep the dict's order); whenever F1 improves the
  threshold moves to halfway between this candidate's score and the next one's. When the best
  F1 is reached at the last candidate (where the official code would index past the end), the
  threshold is that candidate's score, which extracts the same pairs.

  Args:
    candidate_scores: (source id, target id) -> margin score.
    gold_pairs: gold (source id, target id) pairs, or "src<TAB>trg" lines.
  """
  gold = {_pair(p) for p in gold_pairs}
  items = sorted(candidate_scores.items(), key=lambda item: -item[1])
  extracted = correct = 0
  threshold = 0
  best_f1 = 0
  for index, (pair, score) in enumerate(items):
    extracted += 1
    if _pair(pair) in gold:
      correct += 1
    if correct > 0:
      precision = correct / extracted
      recall = correct / len(gold)
      f1 = 2 * precision * recall / (precision + recall)
      if f1 > best_f1:
        best_f1 = f1
        if index + 1 < len(items):
          threshold = (score + items[index + 1][1]) / 2
        else:
          threshold = score
  return threshold


def bucc_extract(candidate_scores: dict, threshold: float) -> list:
  """The candidate pairs whose score is at least `threshold`, in the dict's order."""
  return [tuple(pair) for pair, score in candidate_scores.items() if score >= threshold]


def bucc_tuned_f1(dev_scores: dict, dev_gold, test_scores: dict, test_gold) -> dict:
  """Tunes the threshold on dev, extracts test pairs with it, and scores them."""
  threshold = bucc_optimal_threshold(dev_scores, dev_gold)
  result = bucc_f1(test_gold, bucc_extract(test_scores, threshold))
  result["threshold"] = threshold
  return result
