"""Intervals of study contrasts (xltransfer/study/bootstrap.py): coverage of known differences
at the small test-set sizes of XTREME-R cells, seqeval F1 recomputation, seed variance with few
seeds, clusters of translated items, floating-point ties, multiplicity adjustment."""
import numpy as np
import pytest
from seqeval.metrics import f1_score

from xltransfer.study import bootstrap, multiplicity


def _accuracy_cell(correct, seeds=(0,)):
  return bootstrap.CellData(bootstrap.MEAN, 100.0 * np.atleast_2d(correct), tuple(seeds))


def test_ci_covers_a_known_difference_and_excludes_zero():
  rng = np.random.default_rng(1)
  n = 4000
  # Condition b is right on 60% of the examples; a fixes a further 10% of them.
  b = rng.random(n) < 0.6
  a = b | (rng.random(n) < 0.25)
  true_delta = 100.0 * (a.mean() - b.mean())
  ci = bootstrap.paired_delta_ci(_accuracy_cell(a), _accuracy_cell(b), samples=2000)
  assert ci.delta == pytest.approx(true_delta)
  assert ci.low < true_delta < ci.high
  assert ci.significant and ci.low > 0
  # Pairing makes the interval much narrower than the unpaired standard error would.
  unpaired_se = 100.0 * np.sqrt((a.var() + b.var()) / n)
  assert (ci.high - ci.low) < 2 * 1.96 * unpaired_se


def test_ci_covers_zero_when_there_is_no_difference():
  rng = np.random.default_rng(2)
  n = 3000
  base = rng.random(n) < 0.5
  # Same accuracy, different examples right: a real tie that only a paired test sees as noise.
  swap = rng.permutation(n)[:400]
  other = base.copy()
  other[swap] = ~other[swap]
  flips_up = (~base[swap]).sum()
  flips_down = base[swap].sum()
  balance = np.flatnonzero(other & ~base)[: max(0, flips_up - flips_down)]
  other[balance] = False
  assert other.mean() == pytest.approx(base.mean())
  ci = bootstrap.paired_delta_ci(_accuracy_cell(other), _accuracy_cell(base), samples=2000)
  assert ci.low < 0 < ci.high
  assert not ci.significant


@pytest.mark.parametrize("n", [15, 40])
def test_coverage_rate_at_small_test_sets(n):
  # 400 independent test sets per size: the binomial SE of the coverage is 0.011, so 0.925
  # fails an interval that covers 90% (the plain percentile bootstrap at 15 examples did).
  true_delta, hits, trials = 10.0, 0, 400
  rng = np.random.default_rng(n)
  for trial in range(trials):
    difficulty = rng.uniform(0.2, 0.7, n)  # P(right) of b; a is 10 points better everywhere
    a = rng.random(n) < difficulty + 0.1
    b = rng.random(n) < difficulty
    ci = bootstrap.paired_delta_ci(_accuracy_cell(a), _accuracy_cell(b), samples=200,
                                   seed=trial)
    hits += ci.low <= true_delta <= ci.high
  assert hits / trials >= 0.925


def _tag_sentences(rng, num_sentences, error_rate):
  tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
  gold, predicted = [], []
  for _ in range(num_sentences):
    sentence = []
    for _ in range(rng.integers(3, 9)):
      previous = sentence[-1] if sentence else "O"
      if previous.startswith(("B-", "I-")) and rng.random() < 0.5:
        sentence.append("I-" + previous[2:])
      else:
        sentence.append(tags[rng.choice([0, 0, 1, 3])])
    noisy = [rng.choice(tags) if rng.random() < error_rate else t for t in sentence]
    gold.append(sentence)
    predicted.append(noisy)
  return gold, predicted


def _f1_cell(gold, predicted):
  counts = np.array([[bootstrap.chunk_counts(g, p) for g, p in zip(gold, predicted)]],
                    dtype=np.float64)
  return bootstrap.CellData(bootstrap.F1, counts, (0,))


@pytest.mark.filterwarnings("ignore:.*seems not to be NE tag")
def test_seqeval_f1_recomputed_from_sentences_matches_seqeval():
  rng = np.random.default_rng(3)
  gold, predicted = _tag_sentences(rng, 300, 0.15)
  cell = _f1_cell(gold, predicted)
  assert cell.point() == pytest.approx(100 * f1_score(gold, predicted))
  # A resample with repeated sentences is scored like seqeval scoring the repeated list.
  weights = np.zeros((1, len(gold)))
  picks = rng.integers(0, len(gold), size=len(gold))
  np.add.at(weights, (0, picks), 1)
  resampled = cell.per_seed_metric(weights)[0, 0]
  expected = 100 * f1_score([gold[i] for i in picks], [predicted[i] for i in picks])
  assert resampled == pytest.approx(expected)
  # POS-style tags without a prefix are chunked as seqeval chunks them.
  pos_gold, pos_pred = [["NOUN", "VERB", "NOUN"]], [["NOUN", "NOUN", "NOUN"]]
  assert _f1_cell(pos_gold, pos_pred).point() == pytest.approx(100 * f1_score(pos_gold, pos_pred))


def test_seqeval_ci_covers_the_difference_between_two_taggers():
  rng = np.random.default_rng(4)
  gold, worse = _tag_sentences(rng, 600, 0.25)
  better = [[g if rng.random() < 0.6 else w for g, w in zip(gs, ws)]
            for gs, ws in zip(gold, worse)]
  a, b = _f1_cell(gold, better), _f1_cell(gold, worse)
  true_delta = 100 * (f1_score(gold, better) - f1_score(gold, worse))
  ci = bootstrap.paired_delta_ci(a, b, samples=1000)
  assert ci.delta == pytest.approx(true_delta)
  assert 0 < ci.low < true_delta < ci.high


def test_seed_resampling_widens_the_interval():
  rng = np.random.default_rng(5)
  n = 2000
  b = rng.random(n) < 0.6
  # Three seeds of a whose accuracy varies by several points from seed to seed.
  seeds = [b | (rng.random(n) < p) for p in (0.02, 0.12, 0.22)]
  a_three = bootstrap.CellData(bootstrap.MEAN, 100.0 * np.stack(seeds), (0, 1, 2))
  b_three = bootstrap.CellData(bootstrap.MEAN, 100.0 * np.stack([b, b, b]), (0, 1, 2))
  with_seeds = bootstrap.paired_delta_ci(a_three, b_three, samples=2000)
  a_one = bootstrap.CellData(bootstrap.MEAN, 100.0 * np.stack(seeds).mean(0, keepdims=True),
                             (0,))
  b_one = bootstrap.CellData(bootstrap.MEAN, 100.0 * b[None].astype(float), (0,))
  examples_only = bootstrap.paired_delta_ci(a_one, b_one, samples=2000)
  true_delta = 100 * (np.mean([s.mean() for s in seeds]) - b.mean())
  assert with_seeds.delta == pytest.approx(true_delta)
  assert with_seeds.low < true_delta < with_seeds.high
  assert (with_seeds.high - with_seeds.low) > 2 * (examples_only.high - examples_only.low)


def test_three_seeds_with_dominant_seed_variance_cover_the_recipe_delta():
  # The estimand is the training recipe's expected delta: seeds are draws of it. With 3 seeds a
  # seed bootstrap (which sees (k-1)/k of the spread and uses the normal quantile) under-covers;
  # the t interval over seed means should not.
  rng = np.random.default_rng(7)
  true_delta, hits, trials, n = 5.0, 0, 300, 300
  for trial in range(trials):
    difficulty = rng.uniform(0.2, 0.7, n)
    rows = {}
    for condition, skill in (("a", 0.15), ("b", 0.10)):
      effects = rng.uniform(-0.1, 0.1, 3)  # seed effects, much larger than test-set noise
      rows[condition] = bootstrap.CellData(bootstrap.MEAN, 100.0 * np.stack(
          [rng.random(n) < difficulty + skill + e for e in effects]), (0, 1, 2))
    ci = bootstrap.paired_delta_ci(rows["a"], rows["b"], samples=100, seed=trial)
    assert ci.seeds == {"a": 3, "b": 3} and ci.seed_variance
    hits += ci.low <= true_delta <= ci.high
  assert hits / trials >= 0.925


def test_one_trained_seed_is_said_and_a_seedless_evaluation_has_no_training_variance():
  rng = np.random.default_rng(8)
  a = _accuracy_cell(rng.random(100) < 0.6, seeds=(0,))
  b = _accuracy_cell(rng.random(100) < 0.5, seeds=(None,))
  ci = bootstrap.paired_delta_ci(a, b, samples=100)
  assert ci.seeds == {"a": 1, "b": 0}
  assert not ci.seed_variance


def test_identical_models_give_no_significance_from_float_ties():
  # Two conditions that agree on almost every example: the redraws' deltas have an atom at 0.
  # The old percentile interval ended at -7e-15 there and "excluded 0".
  rng = np.random.default_rng(9)
  f1 = rng.choice([0.0, 33.3333333, 50.0, 66.6666667, 100.0], size=(1, 120))
  ci = bootstrap.paired_delta_ci(bootstrap.CellData(bootstrap.MEAN, f1, (0,)),
                                 bootstrap.CellData(bootstrap.MEAN, f1.copy(), (0,)))
  assert (ci.delta, ci.low, ci.high, ci.p_value) == (0.0, 0.0, 0.0, 1.0)
  assert not ci.significant
  # Summed in another order the same numbers differ by float noise: still a tie.
  bs = bootstrap.PairedBootstrap(samples=200)
  bs.add("x", {"a": bootstrap.CellData(bootstrap.MEAN, f1, (0,)),
               "b": bootstrap.CellData(bootstrap.MEAN, f1[:, ::-1].copy(), (0,))})
  bs.add("y", {"a": bootstrap.CellData(bootstrap.MEAN, f1[:, ::-1].copy(), (0,)),
               "b": bootstrap.CellData(bootstrap.MEAN, f1, (0,))})
  tie = bs.interval([(1 / 3, "x", "a", "b"), (1 / 3, "y", "a", "b"), (1 / 3, "x", "b", "a")])
  assert abs(tie.delta) <= bootstrap.TOLERANCE and not tie.significant


def _translated_column(rng, n_items, langs, item_effect):
  """{lang: {condition: CellData}}: the same items in every language; a's advantage on an item
  is shared by all its translations (a condition-by-item effect)."""
  advantage = item_effect * rng.choice([-1.0, 1.0], n_items)
  difficulty = rng.uniform(0.3, 0.6, n_items)
  column = {}
  for lang in langs:
    items = [f"item{i}" for i in range(n_items)]
    a = rng.random(n_items) < difficulty + 0.05 + advantage
    b = rng.random(n_items) < difficulty
    column[lang] = {c: bootstrap.CellData(bootstrap.MEAN, 100.0 * v[None].astype(float), (0,),
                                          items=items)
                    for c, v in (("a", a), ("b", b))}
  return column


def test_translations_of_an_item_are_drawn_together():
  rng = np.random.default_rng(10)
  langs = ["ar", "de", "es", "hi", "ru", "sw", "ur", "zh"]
  column = _translated_column(rng, 200, langs, 0.25)
  clustered = bootstrap.PairedBootstrap(samples=1000)
  clustered.add_column("xnli", column)
  independent = bootstrap.PairedBootstrap(samples=1000)
  independent.add_column("xnli", {lang: {c: bootstrap.CellData(cell.kind, cell.values, cell.seeds)
                                         for c, cell in cells.items()}
                                  for lang, cells in column.items()})
  terms = [(1 / len(langs), ("xnli", lang), "a", "b") for lang in langs]
  together, apart = clustered.interval(terms), independent.interval(terms)
  assert together.units == 200 and apart.units == 1600
  assert together.delta == pytest.approx(apart.delta)
  # The shared advantage makes languages move together: a wider, honest interval (about
  # sqrt(1 + 7 * 0.0625 / 0.54) = 1.35 times wider here).
  assert together.std_error > 1.2 * apart.std_error


def test_questions_on_one_paragraph_form_one_cluster_within_their_language():
  cell = bootstrap.CellData(bootstrap.MEAN, np.zeros((1, 4)), (0,),
                            items=[None, None, None, "q0"], paragraphs=["p0", "p0", "p1", None])
  other = bootstrap.CellData(bootstrap.MEAN, np.zeros((1, 3)), (0,), items=["q0", None, None],
                             paragraphs=["p0", "p0", None])
  clusters, count = bootstrap.cluster_ids({"de": cell, "es": other})
  # de 0-1 share de's p0 (not es's p0); de 2 alone; de 3 is item q0, as es 0, which shares
  # es's p0 with es 1; es 2 alone.
  assert count == 4
  de, es = clusters["de"], clusters["es"]
  assert de[0] == de[1] and len({de[0], de[2], de[3]}) == 3
  assert de[3] == es[0] == es[1] and es[0] != de[0] and es[2] not in set(de) | {es[0]}


def test_holm_and_benjamini_hochberg_adjustments():
  p = [0.01, 0.04, 0.03, 0.005]
  # Holm: sorted p times (m - i), kept monotone: 0.02, 0.03, 0.06, 0.06 (0.04 * 1 raised).
  assert multiplicity.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # Benjamini-Hochberg: p * m / rank, kept monotone from the largest: all 0.04 here.
  assert multiplicity.adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
  assert multiplicity.adjust([0.9, 0.8], "holm") == pytest.approx([1.0, 1.0])
  with pytest.raises(ValueError, match="bonferroni"):
    multiplicity.adjust(p, "bonferroni")


def test_languages_are_redrawn_together_only_when_they_share_clusters():
  blocks = bootstrap._blocks({  # pylint: disable=protected-access
      "a": np.array([0, 1]), "b": np.array([1, 2]), "c": np.array([3]), "d": np.array([2, 2])})
  assert blocks == [["a", "b", "d"], ["c"]]
  # Untranslated languages: each its own block, each with its own n/(n-1) correction, so a
  # task mean over two 15-example languages has 2 x 14 degrees of freedom, not 29.
  rng = np.random.default_rng(11)
  column = {lang: {c: _accuracy_cell(rng.random(15) < p) for c, p in (("a", 0.6), ("b", 0.4))}
            for lang in ("de", "sw")}
  bs = bootstrap.PairedBootstrap(samples=400)
  bs.add_column("panx", column)
  mean = bs.interval([(0.5, ("panx", lang), "a", "b") for lang in ("de", "sw")])
  assert mean.units == 30 and 14 <= mean.df <= 28


def test_a_seed_missing_from_one_cell_stays_out_of_the_seed_spread():
  # Condition a has seeds 0 and 1 on cell x, and 0, 1 and 2 on cell y (seed 2's x stage
  # failed). Seed 2's aggregate would be only its y term: the spread uses seeds 0 and 1.
  def cell(rows, seeds):
    return bootstrap.CellData(bootstrap.MEAN, np.array(rows, dtype=float), seeds)
  reference = cell([[50.0] * 4], (None,))
  bs = bootstrap.PairedBootstrap(samples=50)
  bs.add("x", {"a": cell([[60.0] * 4, [62.0] * 4], (0, 1)), "b": reference})
  bs.add("y", {"a": cell([[70.0] * 4, [74.0] * 4, [0.0] * 4], (0, 1, 2)), "b": reference})
  ci = bs.interval([(0.5, "x", "a", "b"), (0.5, "y", "a", "b")])
  assert ci.seeds == {"a": 2, "b": 0}
  # Per seed the mean of the two cells: 65 and 68; their variance over 2 seeds, divided by 2.
  assert ci.std_error == pytest.approx(np.sqrt(np.var([65.0, 68.0], ddof=1) / 2))
