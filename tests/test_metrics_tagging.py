"""seqeval chunk F1 as the official scorer's call computes it, on hand-counted chunks."""
import pytest

from xltransfer import metrics


def test_iob2_ner_with_a_boundary_error():
  # Gold chunks: PER(0-1), LOC(3). Predicted: PER(0), LOC(3) -> tp 1 of 2 and 2.
  targets = [["B-PER", "I-PER", "O", "B-LOC"]]
  predictions = [["B-PER", "O", "O", "B-LOC"]]
  assert metrics.seqeval_f1(targets, predictions) == {
      "f1": 50.0, "precision": 50.0, "recall": 50.0}


def test_i_without_b_starts_a_chunk():
  # conlleval reading: "I-PER" after "O" opens a chunk, so both sides have PER(0-1).
  assert metrics.seqeval_f1([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])["f1"] == 100.0
  # "I-PER" after "B-LOC" closes LOC and opens PER: LOC(0), PER(1) on both sides.
  assert metrics.seqeval_f1([["B-LOC", "I-PER"]], [["B-LOC", "B-PER"]])["f1"] == 100.0
  # But "I-LOC" after "B-LOC" continues it: predicted LOC(0-1) != gold LOC(0), LOC(1).
  result = metrics.seqeval_f1([["B-LOC", "B-LOC"]], [["B-LOC", "I-LOC"]])
  assert result == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_chunks_do_not_cross_sentences():
  # The second sentence's leading I-PER starts a new chunk: gold PER(0-1), PER(3).
  targets = [["B-PER", "I-PER"], ["I-PER", "O"]]
  predictions = [["B-PER", "I-PER"], ["B-PER", "O"]]
  assert metrics.seqeval_f1(targets, predictions)["f1"] == 100.0


def test_pos_tags_without_prefix():
  # "NOUN" reads as tag "N" with type "OUN": each change of tag closes a chunk.
  # Gold chunks OUN(0) ERB(1) ET(2) OUN(3); predicted ... DJ(3): tp 3 of 4 and 4.
  targets = [["NOUN", "VERB", "DET", "NOUN"]]
  predictions = [["NOUN", "VERB", "DET", "ADJ"]]
  assert metrics.seqeval_f1(targets, predictions) == {
      "f1": 75.0, "precision": 75.0, "recall": 75.0}


def test_pos_runs_of_one_tag_merge_into_one_chunk():
  # Gold OUN(0-1), ERB(2); predicted OUN(0-2): no chunk matches although 2 of 3 tags do.
  result = metrics.seqeval_f1([["NOUN", "NOUN", "VERB"]], [["NOUN", "NOUN", "NOUN"]])
  assert result == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_pos_cconj_and_sconj_share_a_type():
  # CCONJ -> type "CONJ"; SCONJ -> tag "S" (single), type "CONJ": the same chunk.
  assert metrics.seqeval_f1([["CCONJ"]], [["SCONJ"]])["f1"] == 100.0


def test_no_chunks_and_empty_predictions_score_zero():
  # Nothing but "O": precision and recall are 0/0, which seqeval (and so the scorer) makes 0.
  assert metrics.seqeval_f1([["O", "O"]], [["O", "O"]]) == {
      "f1": 0.0, "precision": 0.0, "recall": 0.0}
  # An all-"O" prediction against real chunks: recall 0, precision 0/0 -> 0.
  assert metrics.seqeval_f1([["B-ORG", "O"]], [["O", "O"]])["f1"] == 0.0


def test_misaligned_sentences_are_rejected():
  with pytest.raises(ValueError, match="sentence 0 has 2 target tags but 1 predicted"):
    metrics.seqeval_f1([["O", "O"]], [["O"]])
  with pytest.raises(ValueError, match="1 target sentences but 2 predicted"):
    metrics.seqeval_f1([["O"]], [["O"], ["O"]])
