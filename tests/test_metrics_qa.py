"""SQuAD and MLQA F1/EM on hand-computed cases (values as the official scripts give them)."""
import pytest

from xltransfer import metrics


def test_squad_punctuation_articles_and_whitespace():
  # "An apple, the pie" -> lower, drop "," -> drop "an"/"the" -> collapse -> "apple pie".
  assert metrics.normalize_squad_answer("An  apple, the pie!") == "apple pie"
  # Articles only as whole words: "theatre" keeps its "the".
  assert metrics.normalize_squad_answer("The theatre") == "theatre"
  # Punctuation is deleted, not replaced by a space: "Eiffel-Tower" becomes one token.
  assert metrics.normalize_squad_answer("The Eiffel-Tower!") == "eiffeltower"
  result = metrics.squad_f1_em([["eiffel tower"]], ["The Eiffel-Tower!"])
  assert result == {"exact_match": 0.0, "f1": 0.0}


def test_squad_several_gold_answers_take_the_maximum():
  # vs "Denver Broncos": P=1, R=1/2 -> F1 2/3; vs "Broncos": exact. EM and F1 are each maxima.
  result = metrics.squad_f1_em([["Denver Broncos", "Broncos"]], ["the Broncos"])
  assert result == {"exact_match": 100.0, "f1": 100.0}
  # "Denver": vs "Denver Broncos" F1 2/3, vs "Broncos" 0 -> 2/3; no exact match.
  result = metrics.squad_f1_em([["Denver Broncos", "Broncos"]], ["Denver"])
  assert result["exact_match"] == 0.0
  assert result["f1"] == pytest.approx(200 / 3)


def test_squad_partial_overlap_counts_repeated_tokens_once_each():
  # pred "a b b c" -> [b, b, c] (article "a" dropped); gold "b c d" -> common {b:1, c:1} = 2.
  # P = 2/3, R = 2/3, F1 = 2/3.
  result = metrics.squad_f1_em([["b c d"]], ["a b b c"])
  assert result["f1"] == pytest.approx(200 / 3)


def test_squad_empty_prediction_and_empty_normalised_gold():
  # An empty prediction shares no token: F1 0, and it does not equal "x".
  assert metrics.squad_f1_em([["x"]], [""]) == {"exact_match": 0.0, "f1": 0.0}
  # Gold "the" normalises to "", which an empty prediction matches exactly, yet F1 stays 0.
  assert metrics.squad_f1_em([["the"]], [""]) == {"exact_match": 100.0, "f1": 0.0}


def test_squad_unanswered_questions_count_as_zero():
  # Four questions: exact (EM 1, F1 1), hyphen case (0, 0), "" vs "the" (1, 0), unanswered.
  targets = [["Denver Broncos", "Broncos"], ["eiffel tower"], ["the"], ["x"]]
  predictions = ["the Broncos", "The Eiffel-Tower!", "", None]
  assert metrics.squad_f1_em(targets, predictions) == {"exact_match": 50.0, "f1": 25.0}


def test_squad_keeps_non_ascii_punctuation():
  # SQuAD strips ASCII punctuation only: the Devanagari danda stays on the token.
  result = metrics.squad_f1_em([["नई दिल्ली"]], ["नई दिल्ली।"])
  assert result == {"exact_match": 0.0, "f1": 50.0}


def test_squad_rejects_misaligned_or_empty_input():
  with pytest.raises(ValueError, match="2 questions but 1 predictions"):
    metrics.squad_f1_em([["a"], ["b"]], ["a"])
  with pytest.raises(ValueError, match="no gold answer"):
    metrics.squad_f1_em([[]], ["a"])
  # Unanswered, such a question scores 0 like any other (the official order of checks).
  assert metrics.squad_f1_em([[], ["x"]], [None, "x"]) == {"exact_match": 50.0, "f1": 50.0}


def test_mlqa_hindi_strips_unicode_punctuation_and_has_no_articles():
  # MLQA removes the danda (Unicode punctuation): exact match.
  assert metrics.mlqa_f1_em([["नई दिल्ली"]], ["नई दिल्ली।"], "hi") == {
      "exact_match": 100.0, "f1": 100.0}
  # No article list for Hindi: "the answer" vs "answer" -> P 1/2, R 1 -> F1 2/3.
  result = metrics.mlqa_f1_em([["answer"]], ["the answer"], "hi")
  assert result["exact_match"] == 0.0
  assert result["f1"] == pytest.approx(200 / 3)
  # The same pair in English drops "the".
  assert metrics.mlqa_f1_em([["answer"]], ["the answer"], "en")["exact_match"] == 100.0


def test_mlqa_chinese_mixed_segmentation():
  # CJK characters are single tokens; runs of other characters stay whitespace tokens, and the
  # full-width comma is punctuation.
  assert metrics.normalize_mlqa_answer("2008年北京，中国", "zh") == "2008 年 北 京 中 国"
  # "北京" vs "北京大学": 2 common characters, P = 1, R = 1/2, F1 = 2/3.
  result = metrics.mlqa_f1_em([["北京大学"]], ["北京"], "zh")
  assert result["exact_match"] == 0.0
  assert result["f1"] == pytest.approx(200 / 3)
  # Punctuation differences vanish: "北京大学。" is an exact match.
  assert metrics.mlqa_f1_em([["北京大学"]], ["北京大学。"], "zh")["exact_match"] == 100.0


def test_mlqa_article_lists_per_language():
  assert metrics.normalize_mlqa_answer("La casa de los Pérez", "es") == "casa de pérez"
  assert metrics.normalize_mlqa_answer("Der Hund und die Katze", "de") == "hund und katze"
  assert metrics.normalize_mlqa_answer("những con mèo của tôi", "vi") == "con mèo tôi"
  # Arabic: every "ال" goes, even inside a word (the official regex has no word boundary).
  assert metrics.normalize_mlqa_answer("الكتاب", "ar") == "كتاب"
  assert metrics.normalize_mlqa_answer("مالك", "ar") == "م ك"


def test_mlqa_symbols_in_ascii_punctuation_are_removed():
  # "$" and "+" are Unicode symbols (S*), yet MLQA adds string.punctuation to its set.
  assert metrics.normalize_mlqa_answer("$5+5", "en") == "55"


def test_mlqa_unanswered_and_unknown_language():
  result = metrics.mlqa_f1_em([["a b"], ["c"]], ["a b", None], "de")
  assert result == {"exact_match": 50.0, "f1": 50.0}
  with pytest.raises(ValueError, match="got language 'fr'"):
    metrics.mlqa_f1_em([["a"]], ["a"], "fr")


def test_mlqa_metric_fn_is_a_seqio_style_callable():
  metric_fn = metrics.mlqa_metric_fn("zh")
  assert metric_fn.__name__ == "mlqa_f1_em_zh"
  assert metric_fn([["北京"]], ["北京"]) == {"exact_match": 100.0, "f1": 100.0}
