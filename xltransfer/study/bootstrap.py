"""Intervals and tests for differences between study conditions.

Estimand. A contrast is Δ = Σ_c w_c (m_A,c − m_B,c) over cells c = (column, language), where
m_X,c is condition X's expected metric on that cell: over test examples from the cell's
population and over training seeds. A task's average over languages, a language group, the
XTREME-R targets mean and a difference of differences are all such weighted sums.

Point estimate: each seed's metric on the full test set from its per-example statistics
(collect.py checks that these give the metric files' numbers), averaged over seeds.

Its variance has two independent parts.
  * Test-set sampling: a paired cluster bootstrap. Every replicate redraws the test set of each
    column, the same draw for every condition and seed (paired). The unit drawn is a cluster:
    translations of one item in every language of the target (records' "item") and the
    questions on one paragraph ("paragraph") are drawn together, as they are not independent;
    other examples are their own cluster. The cell metric is recomputed on each replicate: the
    weighted mean of per-example scores, or micro F1 from the resampled sentences' chunk counts
    (seqeval F1 is not a mean over sentences). Languages of a column that share clusters
    (translations) form one block; the others are blocks of their own, and columns are
    separate test sets: blocks are drawn independently. A block's part is the variance of
    the contrast's replicates times n/(n−1) for its n clusters (the bootstrap's plug-in
    variance of a mean is biased low by (n−1)/n, which matters for the 15-40 example cells
    of small test sets), with n − 1 degrees of freedom.
  * Training seeds: the contrast evaluated on each seed of a condition; their sample variance
    over the k seeds, divided by k, with k − 1 degrees of freedom. Conditions are trained
    independently. Resampling 2-3 seeds, as a bootstrap over seeds would, shows only
    (k−1)/k of that variance and hides how little k seeds say; the t quantile with few degrees
    of freedom does not. A condition with one trained seed contributes nothing (its seed
    variance cannot be estimated: the interval is about that model, and `Interval` says so);
    a seedless evaluation (the initial checkpoint evaluated directly) has no training variance.
The interval is Δ ± t_ν·SE with ν from Welch-Satterthwaite over the parts, the test two-sided
with the same t. Δ and SE within TOLERANCE of zero count as zero, so a floating-point tie
never makes a difference significant.
"""
import dataclasses
import math
import warnings
import zlib
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import sparse, stats
from scipy.sparse import csgraph
from seqeval.metrics.sequence_labeling import get_entities

MEAN = "mean"
F1 = "f1"
# Metrics are on a 0-100 scale: differences and standard errors below this are float noise.
TOLERANCE = 1e-9


@dataclasses.dataclass
class CellData:
  """One condition's per-example statistics for one (column, language).

  values: [seeds, examples] scores (MEAN) or [seeds, examples, 3] chunk counts (F1: correct,
  predicted, gold). seeds: the seed label of each row (None for a seedless evaluation).
  items / paragraphs: per example, the id shared by its translations in the target's other
  languages and the id of its QA paragraph, None where the data has none.
  """
  kind: str
  values: np.ndarray
  seeds: tuple
  items: Optional[Sequence] = None
  paragraphs: Optional[Sequence] = None

  @property
  def num_examples(self) -> int:
    return self.values.shape[1]

  def per_seed_metric(self, weights: np.ndarray) -> np.ndarray:
    """[replicates, seeds] metric under example weights [replicates, examples]."""
    if self.kind == MEAN:
      total = weights.sum(axis=1, keepdims=True)
      with np.errstate(divide="ignore", invalid="ignore"):
        return weights @ self.values.T / total
    sums = np.stack([weights @ self.values[..., k].T for k in range(3)], axis=-1)
    return f1_from_counts(sums)

  def seed_points(self) -> np.ndarray:
    """[seeds] metric of each seed on the full data."""
    return self.per_seed_metric(np.ones((1, self.num_examples)))[0]

  def point(self) -> float:
    """The metric on the full data, averaged over seeds."""
    return float(self.seed_points().mean())


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
  """Micro F1 (0-100) from [..., 3] (correct, predicted, gold) counts; 0 when undefined."""
  correct, predicted, gold = counts[..., 0], counts[..., 1], counts[..., 2]
  denominator = predicted + gold
  with np.errstate(divide="ignore", invalid="ignore"):
    f1 = np.where(denominator > 0, 200.0 * correct / np.maximum(denominator, 1e-12), 0.0)
  return f1


def _as_tags(value) -> list:
  if isinstance(value, str):
    return value.split()
  return [str(tag) for tag in value]


def chunk_counts(target, prediction) -> tuple:
  """(correct, predicted, gold) seqeval chunks of one sentence, as seqeval's default mode
  counts them; summing over sentences and taking 2c/(p+g) gives seqeval's micro F1."""
  with warnings.catch_warnings():
    # seqeval warns for POS tags (no B-/I- prefix) but chunks them as the official scorer does.
    warnings.simplefilter("ignore", UserWarning)
    gold = set(get_entities(_as_tags(target)))
    predicted = set(get_entities(_as_tags(prediction)))
  return len(gold & predicted), len(predicted), len(gold)


def cluster_ids(cells_by_lang: Dict[str, CellData]) -> tuple:
  """({lang: [examples] cluster index}, number of clusters) of one column's test set.

  Examples are linked when they share an item id (any language) or a paragraph id (within
  their language); a cluster is a connected group of linked examples.
  """
  langs = sorted(cells_by_lang)
  keys, rows, columns, offsets, total = {}, [], [], {}, 0
  for lang in langs:
    cell = cells_by_lang[lang]
    offsets[lang] = total
    for field, scope in ((cell.items, None), (cell.paragraphs, lang)):
      for i, value in enumerate(field if field is not None else ()):
        if value is not None:
          rows.append(total + i)
          columns.append(keys.setdefault((scope, str(value)), len(keys)))
    total += cell.num_examples
  # Examples and ids are the two sides of a bipartite graph: clusters are its components.
  graph = sparse.coo_matrix((np.ones(len(rows)), (rows, np.array(columns, dtype=int) + total)),
                            shape=(total + len(keys),) * 2)
  _, component = csgraph.connected_components(graph, directed=False)
  _, cluster = np.unique(component[:total], return_inverse=True)
  return ({lang: cluster[offsets[lang]:offsets[lang] + cells_by_lang[lang].num_examples]
           for lang in langs}, int(cluster.max()) + 1 if total else 0)


def _blocks(clusters: Dict[str, np.ndarray]) -> list:
  """Groups of languages linked by shared clusters (translations), each a sorted list."""
  owner, groups = {}, []
  for lang in sorted(clusters, key=str):
    linked = {owner[c] for c in np.unique(clusters[lang]).tolist() if c in owner}
    merged = {lang}.union(*(groups[g] for g in linked))
    for g in linked:
      groups[g] = set()
    groups.append(merged)
    for member in merged:
      for c in np.unique(clusters[member]).tolist():
        owner[c] = len(groups) - 1
  return sorted((sorted(g, key=str) for g in groups if g), key=lambda g: str(g[0]))


@dataclasses.dataclass(frozen=True)
class Interval:
  """A contrast's estimate, interval and two-sided test.

  seeds: {condition: seeds its numbers average; 0 for a seedless evaluation}.
  seed_variance: False when a condition has one trained seed, whose training variance the
  interval then cannot include. units: independent test units (clusters) it rests on.
  """
  delta: float
  low: float
  high: float
  std_error: float
  df: float
  p_value: float
  samples: int
  confidence: float
  seeds: dict
  seed_variance: bool
  units: int

  @property
  def significant(self) -> bool:
    """The two-sided test rejects Δ = 0 at 1 − confidence."""
    return self.p_value < 1.0 - self.confidence

  def to_dict(self) -> dict:
    return {"delta": self.delta, "ci_low": self.low, "ci_high": self.high,
            "std_error": self.std_error, "df": _finite_or_none(self.df),
            "p_value": self.p_value, "significant": self.significant,
            "bootstrap_samples": self.samples, "confidence": self.confidence,
            "seeds": dict(self.seeds), "seed_variance": self.seed_variance,
            "units": self.units}


def _finite_or_none(value: float):
  return value if math.isfinite(value) else None


@dataclasses.dataclass
class _Replicates:
  """What one condition's cell keeps after `add_column`: a few numbers per replicate."""
  block: tuple  # (column, block): cells of one block share their redraws
  replicates: np.ndarray  # [samples] seed-averaged metric under each test-set redraw
  seed_points: dict  # {seed: metric on the full data}
  clusters: np.ndarray  # the cell's distinct cluster indices within its column


class PairedBootstrap:
  """Shared test-set redraws for every comparison of one study (common random numbers)."""

  def __init__(self, samples: int = 1000, seed: int = 0, confidence: float = 0.95):
    if samples < 10:
      raise ValueError("use at least 10 bootstrap samples")
    self.samples = samples
    self.seed = seed
    self.confidence = confidence
    self._cells = {}
    # {column: (examples, clusters)}: what each column's redraws treat as independent.
    self.units = {}

  def _cluster_counts(self, column, num_clusters: int) -> np.ndarray:
    """How often each cluster is drawn in each replicate: [samples, clusters]."""
    rng = np.random.default_rng([self.seed, zlib.crc32(repr(("clusters", column)).encode())])
    drawn = rng.integers(0, num_clusters, size=(self.samples, num_clusters))
    offsets = np.arange(self.samples)[:, None] * num_clusters
    counts = np.bincount((drawn + offsets).ravel(), minlength=self.samples * num_clusters)
    return counts.reshape(self.samples, num_clusters).astype(np.float64)

  def add_column(self, column, cells_by_lang: Dict[str, Dict[str, CellData]]) -> None:
    """Replicates of every condition's cell of one column: {lang: {condition: CellData}},
    each language's cells over the same examples in the same order. Only a few numbers per
    cell stay in memory, so callers can drop the per-example data afterwards."""
    cells_by_lang = {lang: cells for lang, cells in cells_by_lang.items() if cells}
    if not cells_by_lang:
      return
    for lang, cells in cells_by_lang.items():
      sizes = {cell.num_examples for cell in cells.values()}
      if len(sizes) != 1:
        raise ValueError(f"{column}/{lang}: conditions have different example counts {sizes}")
    clusters, num_clusters = cluster_ids(
        {lang: next(iter(cells.values())) for lang, cells in cells_by_lang.items()})
    self.units[column] = (sum(next(iter(cells.values())).num_examples
                              for cells in cells_by_lang.values()), num_clusters)
    # Languages that share no cluster are independent blocks, drawn separately: a column of
    # 40 untranslated test sets never needs one [samples, all clusters] matrix, and each
    # block's variance gets its own small-sample correction.
    for block, langs in enumerate(_blocks(clusters)):
      ids = np.unique(np.concatenate([clusters[lang] for lang in langs]))
      counts = self._cluster_counts((column, block), len(ids))
      for lang in langs:
        weights = counts[:, np.searchsorted(ids, clusters[lang])]
        for condition, cell in cells_by_lang[lang].items():
          seed_points = cell.seed_points()
          per_seed = cell.per_seed_metric(weights)
          # A redraw without any of this cell's clusters says nothing about it: its point.
          per_seed = np.where(np.isfinite(per_seed), per_seed, seed_points[None, :])
          self._cells[((column, lang), condition)] = _Replicates(
              (column, block), per_seed.mean(axis=1),
              dict(zip(cell.seeds, seed_points.tolist())), np.unique(clusters[lang]))

  def add(self, cell_key, cells: Dict[str, CellData]) -> None:
    """One cell on its own: `cell_key` is its column, with one language."""
    self.add_column(cell_key, {None: cells})
    for condition in cells:
      self._cells[(cell_key, condition)] = self._cells.pop(((cell_key, None), condition))

  def has(self, cell_key, condition) -> bool:
    return (cell_key, condition) in self._cells

  def interval(self, terms) -> Interval:
    """Interval of Σ_i w_i (metric_a_i − metric_b_i) over terms (w, cell_key, cond_a, cond_b),
    every cell added first."""
    by_block, clusters = {}, {}
    seed_sums = {}  # {condition: {seed: Σ ± w·metric}} to measure the seed spread
    delta = 0.0
    for weight, cell_key, condition_a, condition_b in terms:
      for sign, condition in ((1.0, condition_a), (-1.0, condition_b)):
        cell = self._cells[(cell_key, condition)]
        signed = sign * weight
        block_replicates = by_block.setdefault(cell.block, np.zeros(self.samples))
        block_replicates += signed * cell.replicates
        clusters.setdefault(cell.block, set()).update(cell.clusters.tolist())
        delta += signed * float(np.mean(list(cell.seed_points.values())))
        # Only seeds every cell of the condition has enter its spread: a seed missing from
        # one cell would otherwise enter with part of the contrast.
        if condition not in seed_sums:
          seed_sums[condition] = {s: signed * v for s, v in cell.seed_points.items()}
        else:
          seed_sums[condition] = {s: total + signed * cell.seed_points[s]
                                  for s, total in seed_sums[condition].items()
                                  if s in cell.seed_points}
    parts = []  # (variance, degrees of freedom)
    for block, replicates in by_block.items():
      n = len(clusters[block])
      if n > 1:
        parts.append((float(np.var(replicates)) * n / (n - 1), n - 1))
    seeds_used, seed_variance = {}, True
    for condition, per_seed in seed_sums.items():
      trained = [s for s in per_seed if s is not None]
      seeds_used[condition] = len(trained)
      if len(trained) >= 2:
        values = np.array([per_seed[s] for s in trained])
        parts.append((float(np.var(values, ddof=1)) / len(trained), len(trained) - 1))
      elif len(trained) == 1:
        seed_variance = False
    return self._interval(delta, parts, seeds_used, seed_variance,
                          sum(len(c) for c in clusters.values()))

  def _interval(self, delta, parts, seeds, seed_variance, units) -> Interval:
    variance = sum(v for v, _ in parts)
    std_error = math.sqrt(variance)
    if abs(delta) <= TOLERANCE:
      delta = 0.0
    if std_error <= TOLERANCE:
      p_value = 1.0 if delta == 0.0 else 0.0
      return Interval(delta, delta, delta, 0.0, math.inf, p_value, self.samples,
                      self.confidence, seeds, seed_variance, units)
    # Welch-Satterthwaite degrees of freedom of the summed variance parts.
    df = variance ** 2 / sum(v ** 2 / d for v, d in parts if v > 0)
    quantile = float(stats.t.ppf(0.5 + self.confidence / 2, df))
    p_value = float(2 * stats.t.sf(abs(delta) / std_error, df))
    return Interval(delta, delta - quantile * std_error, delta + quantile * std_error,
                    std_error, df, p_value, self.samples, self.confidence, seeds,
                    seed_variance, units)


def paired_delta_ci(a: CellData, b: CellData, samples: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> Interval:
  """Interval of metric(a) − metric(b) for one cell of two conditions."""
  bootstrap = PairedBootstrap(samples, seed, confidence)
  bootstrap.add("cell", {"a": a, "b": b})
  return bootstrap.interval([(1.0, "cell", "a", "b")])
