"""mAP@20 (Mewsli-X, LAReQA) and BUCC F1 with a dev-tuned threshold, computed by hand."""
import pytest

from xltransfer import metrics


def test_map_fewer_than_k_predictions():
  # Gold at rank 2 of a 2-item ranking: AP = 1/2.
  assert metrics.map_at_k([{"a"}], [["x", "a"]]) == {"map@20": 50.0}


def test_map_missing_predictions_score_zero():
  # Second query has no ranking at all (None or []): mean of 1 and 0.
  assert metrics.map_at_k([{"a"}, {"b"}], [["a"], None]) == {"map@20": 50.0}
  assert metrics.map_at_k([{"a"}, {"b"}], [["a"], []]) == {"map@20": 50.0}


def test_map_gold_outside_the_top_k():
  distractors = [f"d{i}" for i in range(20)]
  assert metrics.map_at_k([{"a"}], [distractors + ["a"]]) == {"map@20": 0.0}
  # At rank 20 exactly it still counts: 1/20.
  assert metrics.map_at_k([{"a"}], [distractors[:19] + ["a"]]) == {"map@20": 5.0}
  # A smaller k cuts earlier and names the key after it.
  assert metrics.map_at_k([{"a"}], [["x", "y", "a"]], k=2) == {"map@2": 0.0}


def test_map_several_gold_ids_and_repeats():
  # LAReQA: gold {a, b}; hits at ranks 1 and 3 -> (1/1 + 2/3) / 2.
  result = metrics.map_at_k([{"a", "b"}], [["a", "x", "b"]])
  assert result["map@20"] == pytest.approx(100 * (1 + 2 / 3) / 2)
  # A repeated id counts once, at its first rank: (1/1 + 2/3) / 2 again.
  result = metrics.map_at_k([{"a", "b"}], [["a", "a", "b"]])
  assert result["map@20"] == pytest.approx(100 * (1 + 2 / 3) / 2)
  # Only one of two gold ids retrieved, at rank 1: 1 / 2.
  assert metrics.map_at_k([{"a", "b"}], [["a"]]) == {"map@20": 50.0}


def test_map_divides_by_at_most_k():
  gold = {f"g{i}" for i in range(3)}
  # k=2, both top-2 are gold: (1/1 + 2/2) / min(3, 2) = 1.
  assert metrics.map_at_k([gold], [["g0", "g1", "x"]], k=2) == {"map@2": 100.0}


def test_mewslix_reads_the_first_stripped_gold_and_ignores_extra_ids():
  gold = {"m1": [" Q1 "], "m2": ["Q2"], "m3": ["Q3"]}
  predictions = {"m1": ["Q1"], "m2": ["Q7", "Q2"], "other": ["Q3"]}
  # m1: 1, m2: 1/2, m3 missing: 0 -> mean 1/2.
  assert metrics.mewslix_map_at_k(gold, predictions) == {"map@20": 50.0}


def test_mewslix_compares_candidates_with_equality_like_the_official_code():
  gold = {"m1": ["Q1"], "m2": ["Q2"]}
  # A list candidate is a miss, not an error; a string ranking is read as its characters.
  assert metrics.mewslix_map_at_k(gold, {"m1": [["Q1"], "Q1"], "m2": "xQ"}) == {"map@20": 25.0}
  assert metrics.mewslix_map_at_k({"m1": ["Q"]}, {"m1": "xQ"}) == {"map@20": 50.0}


@pytest.mark.parametrize("ranking", [None, 3, {"Q1": 1}])
def test_mewslix_ranking_that_is_not_a_list_is_an_error(ranking):
  with pytest.raises(ValueError, match="the ranking of 'm1' is .*, not a list of ids"):
    metrics.mewslix_map_at_k({"m1": ["Q1"]}, {"m1": ranking})


def test_lareqa_gold_and_rankings_must_be_lists():
  assert metrics.lareqa_map_at_k({"q": ["a", "b"]}, {"q": [["a"], "b"]}) == {"map@20": 25.0}
  with pytest.raises(ValueError, match="the gold of 'q' is an object"):
    metrics.lareqa_map_at_k({"q": {"a": 1}}, {})
  with pytest.raises(ValueError, match="the ranking of 'q' is a string"):
    metrics.lareqa_map_at_k({"q": ["a"]}, {"q": "a"})


def test_map_rejects_empty_gold():
  with pytest.raises(ValueError, match="no gold id"):
    metrics.map_at_k([set()], [["a"]])


def test_bucc_f1_on_pair_sets():
  gold = ["s1\tt1", "s2\tt2", "s3\tt3", "s4\tt4"]
  predicted = [("s1", "t1"), ("s2", "t2"), ("s3", "t9")]
  # correct 2: P = 2/3, R = 1/2, F1 = 2PR/(P+R) = 4/7.
  result = metrics.bucc_f1(gold, predicted)
  assert result["precision"] == pytest.approx(200 / 3)
  assert result["recall"] == pytest.approx(50.0)
  assert result["f1"] == pytest.approx(400 / 7)
  assert metrics.bucc_f1(gold, [("x", "y")]) == {"f1": 0, "precision": 0, "recall": 0}


def test_bucc_threshold_is_tuned_on_dev():
  dev = {("a", "1"): 0.9, ("b", "2"): 0.8, ("c", "9"): 0.7, ("d", "4"): 0.6, ("e", "8"): 0.1}
  dev_gold = {("a", "1"), ("b", "2"), ("d", "4")}
  # Best first: F1 after each = 1/2, 4/5, 2/3, 6/7 (best), 3/4. The best is at 0.6, so the
  # threshold is halfway to the next score: (0.6 + 0.1) / 2.
  threshold = metrics.bucc_optimal_threshold(dev, dev_gold)
  assert threshold == pytest.approx(0.35)
  assert metrics.bucc_extract(dev, threshold) == [("a", "1"), ("b", "2"), ("c", "9"), ("d", "4")]
  test = {("p", "1"): 0.5, ("q", "2"): 0.3, ("r", "3"): 0.4}
  result = metrics.bucc_tuned_f1(dev, dev_gold, test, {("p", "1"), ("q", "2")})
  # Extracted at >= 0.35: p-1 (correct) and r-3: P = 1/2, R = 1/2.
  assert result["f1"] == pytest.approx(50.0)
  assert result["threshold"] == pytest.approx(0.35)


def test_bucc_threshold_when_the_best_is_the_last_candidate():
  # Every candidate is gold: F1 keeps improving to the end; all must be extracted.
  dev = {("a", "1"): 0.9, ("b", "2"): 0.4}
  threshold = metrics.bucc_optimal_threshold(dev, {("a", "1"), ("b", "2")})
  assert metrics.bucc_extract(dev, threshold) == [("a", "1"), ("b", "2")]
