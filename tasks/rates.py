"""Mixing rates: training-example counts with a temperature, from what the user controls.

A task's count is, in order:
  1. gin `example_counts.counts` (a dict of task name -> count): the user's word wins;
  2. counted from the data itself: file-backed tasks count their examples when the file is
     read; plain-text corpora count their documents (non-empty lines), cached on disk by
     path, size and modification time (gin `count_cache_dir.path`, $XLTRANSFER_CACHE_DIR, else
     ~/.cache/xltransfer); TFDS tasks read `num_examples` from the prepared dataset's metadata;
  3. the published training-set size of a known dataset (`PUBLISHED_SIZES`);
  4. gin `default_examples.value` (default 100,000) for anything else.
Counts are clipped at gin `maximum_examples.value` (if set), then the rate is
`count ** (1 / T)`: T = gin `mixing_temperature.value` (default 1: proportional to size) for
supervised tasks, gin `corpus_temperature.value` (default 1 / 0.3, mT5's language sampling)
between the span-corruption corpora of a mixture.
"""
import glob
import json
import os
import threading

import gin
import tensorflow_datasets as tfds

from xltransfer.errors import UserError

CACHE_ENV_VAR = "XLTRANSFER_CACHE_DIR"
CACHE_FILE = "example_counts.json"

# Training-set sizes of the published datasets, by family (xlt_inter_{family} and its
# translations), used when a TFDS dataset is not prepared here and so has no metadata.
PUBLISHED_SIZES = {
    "anli_plus": 162865 + 45460 + 100459 + 392702 + 550152, "mnli": 392702, "qqp": 363846,
    "sst2": 67349, "squad_v2": 130319, "squad_v1": 87599, "hellaswag": 39905,
    "cosmosqa": 25262, "commonsenseqa": 9741, "ccg": 39604,
}

# task name -> zero-argument function returning its training-example count or None, for
# sources that seqio cannot count (text corpora, TFDS behind a FunctionDataSource).
_COUNTERS = {}
_LOCK = threading.Lock()


@gin.configurable
def example_counts(counts=None) -> dict:
  """User-set training-example counts by task name (gin: `example_counts.counts`)."""
  return dict(counts or {})


@gin.configurable
def default_examples(value=100_000) -> float:
  """Count of a task whose size nothing else tells (gin: `default_examples.value`)."""
  return value


@gin.configurable
def maximum_examples(value=None):
  """Counts are clipped here before the temperature (gin: `maximum_examples.value`)."""
  return value


@gin.configurable
def mixing_temperature(value=1.0) -> float:
  """Temperature between supervised tasks (gin: `mixing_temperature.value`)."""
  return value


@gin.configurable
def corpus_temperature(value=1.0 / 0.3) -> float:
  """Temperature between span-corruption corpora (gin: `corpus_temperature.value`)."""
  return value


@gin.configurable
def count_cache_dir(path=None) -> str:
  """Where counted corpus sizes are cached: gin, $XLTRANSFER_CACHE_DIR, ~/.cache/xltransfer."""
  return path or os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "xltransfer")


def register_counter(task_name: str, counter) -> None:
  """Tells how to count task_name's training examples (counter() -> int or None)."""
  _COUNTERS[task_name] = counter


def tfds_counter(*names_and_splits):
  """A counter summing `num_examples` of prepared TFDS (name, split)s; None if any is absent."""
  def count():
    total = 0
    for name, split in names_and_splits:
      try:
        total += tfds.builder(name).info.splits[split].num_examples
      except Exception:  # pylint: disable=broad-except
        return None  # Not prepared here (no metadata): fall back to the published size.
    return total or None
  return count


def text_counter(pattern_fn):
  """A counter of the documents (non-empty lines) in the files that pattern_fn() matches."""
  def count():
    try:
      files = sorted(glob.glob(pattern_fn()))
    except UserError:
      return None  # No data dir set: reading the corpus will say so, naming the task.
    return sum(count_documents(f) for f in files) if files else None
  return count


def count_documents(path: str) -> int:
  """Non-empty lines of path (as the text corpora read them), cached on disk by path, size and
  modification time so that large corpora are counted once."""
  path = os.path.abspath(path)
  stat = os.stat(path)
  key = [stat.st_size, stat.st_mtime_ns]
  with _LOCK:
    cache = _read_cache()
    hit = cache.get(path)
    if hit and hit[:2] == key:
      return hit[2]
  with open(path, "rb") as f:
    lines = sum(1 for line in f if line.strip())
  with _LOCK:
    cache = _read_cache()
    cache[path] = key + [lines]
    _write_cache(cache)
  return lines


def _cache_path():
  return os.path.join(count_cache_dir(), CACHE_FILE)


def _read_cache() -> dict:
  try:
    with open(_cache_path(), encoding="utf-8") as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except (OSError, ValueError):
    return {}  # No cache yet, or a damaged one: count again.


def _write_cache(cache: dict) -> None:
  path = _cache_path()
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(cache, f)
    os.replace(tmp, path)  # Atomic: concurrent processes never read half a file.
  except OSError:
    # A read-only home or a full disk only costs a recount next time; leave no partial file.
    try:
      os.remove(tmp)
    except OSError:
      pass


def _counted(task):
  """Counted from the data (None when it cannot be): not memoized, so that changed files and
  newly prepared TFDS datasets count at the next use (each count is cheap or cached)."""
  if task.name in _COUNTERS:
    return _COUNTERS[task.name]()
  try:
    return task.source.num_input_examples("train")
  except Exception:  # pylint: disable=broad-except
    return None  # e.g. the file is not here; the published size may still be known.


def example_count(task, family=None) -> float:
  """Training examples of a seqio task (see the module docstring for the order)."""
  overrides = example_counts()
  if task.name in overrides:
    return float(overrides[task.name])
  count = _counted(task)
  if count is None and family in PUBLISHED_SIZES:
    count = PUBLISHED_SIZES[family]
  return float(count if count is not None else default_examples())


def rate(count: float, temperature: float) -> float:
  if maximum_examples():
    count = min(count, float(maximum_examples()))
  return count ** (1.0 / temperature)
