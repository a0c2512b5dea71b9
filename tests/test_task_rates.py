"""Mixing rates from what the user controls: gin counts, counts of the user's files (cached on
disk), TFDS metadata, published sizes; temperatures for tasks and for corpora."""
import json
import os

import gin
import pytest
import seqio

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def registry(monkeypatch, tmp_path):
  import xltransfer.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from xltransfer.tasks import rates  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("XLTRANSFER_DATA_DIR", os.path.join(FIXTURES, "intermediate"))
  monkeypatch.setenv(rates.CACHE_ENV_VAR, str(tmp_path / "cache"))
  gin.clear_config()  # the tests bind parameters: start unlocked, whatever ran before
  yield rates
  gin.clear_config()


def test_text_corpora_count_documents_once_and_again_when_a_file_changes(registry, tmp_path):
  rates = registry
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("first document\n\nsecond document\n   \nthird\n", encoding="utf-8")
  assert rates.count_documents(str(corpus)) == 3  # blank lines are no documents
  with open(tmp_path / "cache" / rates.CACHE_FILE, encoding="utf-8") as f:
    cache = json.load(f)
  assert cache[str(corpus)][2] == 3
  # Same size and modification time: the cached count is used, the file is not read again.
  cache[str(corpus)][2] = 1000
  with open(tmp_path / "cache" / rates.CACHE_FILE, "w", encoding="utf-8") as f:
    json.dump(cache, f)
  assert rates.count_documents(str(corpus)) == 1000
  corpus.write_text("only one now\n", encoding="utf-8")
  assert rates.count_documents(str(corpus)) == 1


def test_a_cache_that_cannot_be_written_leaves_no_partial_file(registry, tmp_path, monkeypatch):
  """A full disk mid-write (or a read-only home) costs a recount next time: the count is still
  returned, and neither a half-written cache nor its temporary file is left behind."""
  rates = registry
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("one\ntwo\n", encoding="utf-8")

  def disk_full(cache, f):
    f.write("{\"partial")
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(rates.json, "dump", disk_full)
  assert rates.count_documents(str(corpus)) == 2
  assert os.listdir(tmp_path / "cache") == []


def test_counts_come_from_gin_then_the_data_then_published_sizes(registry):
  from xltransfer.tasks import mixtures  # pylint: disable=g-import-not-at-top
  def count(name):
    return mixtures.example_count(seqio.get_mixture_or_task(name))
  # The Georgian corpus: two files, five non-empty lines among blank ones.
  assert count("xlt_span_text_ka") == 5
  assert count("xlt_inter_mnli_sw") == 2  # lines of translated/mnli/train-sw.tsv
  assert count("xlt_inter_mnli") == 392702  # TFDS not prepared here: the published size
  assert count("xlt_span_mc4_ka") == 100_000  # nothing tells: gin default_examples.value
  gin.bind_parameter("example_counts.counts", {"xlt_span_text_ka": 40, "xlt_inter_mnli": 9})
  gin.bind_parameter("default_examples.value", 7)
  assert count("xlt_span_text_ka") == 40 and count("xlt_inter_mnli") == 9
  assert count("xlt_span_mc4_ka") == 7


def test_prepared_tfds_datasets_count_from_their_metadata(registry, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Split:
    def __init__(self, n):
      self.num_examples = n

  class Builder:
    def __init__(self, name):
      if name == "snli":
        raise FileNotFoundError(name)  # one part not prepared: the whole count is unknown
      self.info = type("Info", (), {"splits": {"train": Split(10), "sw": Split(1234)}})

  monkeypatch.setattr(tfds, "builder", Builder)
  rates = registry
  assert rates.tfds_counter(("c4/multilingual", "sw"))() == 1234
  assert rates.tfds_counter(("glue/mnli", "train"), ("anli/r1", "train"))() == 20
  assert rates.tfds_counter(("glue/mnli", "train"), ("snli", "train"))() is None
  from xltransfer.tasks import mixtures  # pylint: disable=g-import-not-at-top
  assert mixtures.example_count(seqio.get_mixture_or_task("xlt_span_mc4_sw")) == 1234
  # ANLI+ sums its five parts; SNLI is missing, so the published size stands in.
  anli = mixtures.example_count(seqio.get_mixture_or_task("xlt_inter_anli_plus"))
  assert anli == rates.PUBLISHED_SIZES["anli_plus"]


def test_corpus_rates_follow_counts_and_corpus_temperature(registry, monkeypatch):
  from xltransfer.tasks import mixtures  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(mixtures, "LOW", ("sw", "ka"))
  gin.bind_parameter("span_source.value", "text")
  gin.bind_parameter("example_counts.counts", {"xlt_span_text_sw": 8000})
  gin.bind_parameter("corpus_temperature.value", 3.0)
  solo = seqio.get_mixture_or_task("xlt_span_lowres")
  rates = {t.name: solo.get_rate(t) for t in solo.tasks}
  assert rates["xlt_span_text_sw"] / rates["xlt_span_text_ka"] == pytest.approx((8000 / 5) ** (1 / 3))
  # Combined with supervised tasks, the corpora keep their ratio and span_fraction overall.
  gin.bind_parameter("all_nine_tasks.names", ["mnli", "commonsenseqa"])
  gin.bind_parameter("span_fraction.value", 0.2)
  gin.bind_parameter("mixing_temperature.value", 1.0)
  gin.bind_parameter("maximum_examples.value", 100_000)
  combined = seqio.get_mixture_or_task("xlt_inter_all9_plus_span_lowres")
  rates = {t.name: combined.get_rate(t) for t in combined.tasks}
  assert rates["xlt_inter_mnli"] == pytest.approx(100_000)  # clipped
  assert rates["xlt_inter_commonsenseqa"] == pytest.approx(2)  # lines of the fixture file
  span = rates["xlt_span_text_sw"] + rates["xlt_span_text_ka"]
  assert span / sum(rates.values()) == pytest.approx(0.2)
  assert rates["xlt_span_text_sw"] / rates["xlt_span_text_ka"] == pytest.approx((8000 / 5) ** (1 / 3))
  # A changed count re-rates the mixture at its next use.
  gin.bind_parameter("example_counts.counts", {"xlt_span_text_sw": 5})
  rates = {t.name: combined.get_rate(t) for t in combined.tasks}
  assert rates["xlt_span_text_sw"] == pytest.approx(rates["xlt_span_text_ka"])
