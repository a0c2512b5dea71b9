"""seqio data sources over the file readers: eager reading so that format errors surface as
DataFormatError at `get_dataset` time, naming file and line, instead of deep inside tf.data.

A loader may return its examples with the `Provenance` of what it read (`Loaded`); the source
then answers `provenance(split)` (xltransfer.data.gold.task_provenance asks it).
"""
import dataclasses
from typing import Callable, Mapping, Optional

import seqio
import tensorflow as tf

from xltransfer.data import gold

STRING = tf.TensorSpec([], tf.string)
STRINGS = tf.TensorSpec([None], tf.string)
INT = tf.TensorSpec([], tf.int64)


@dataclasses.dataclass
class Loaded:
  """What a loader read: the examples and where they came from."""
  examples: list
  provenance: gold.Provenance


class FileDataSource(seqio.FunctionDataSource):
  """A data source whose splits are loaded by Python functions returning example dicts.

  `loaders` maps split name to a zero-argument function that resolves the file path (so a
  missing data dir is reported when the data is first wanted, naming the task) and reads it,
  returning a list of examples or a `Loaded` (examples with their provenance).
  `signature` names the features each example keeps and their tf.TensorSpec.
  `alternative`, if given, is (predicate, dataset_fn[, provenance_fn]): when predicate() holds
  at dataset time, dataset_fn(split, shuffle_files, seed) supplies the same fields instead
  (e.g. from TFDS), and provenance_fn(split) says what that is.
  `describe`, if given, is describe(split) -> one line saying which source and split the
  split's scores come from under the current configuration, without reading anything
  (`xltransfer tasks list` shows it).
  """

  def __init__(self, loaders: Mapping[str, Callable[[], list]], signature: Mapping[str, tf.TensorSpec],
               alternative=None, describe: Optional[Callable[[str], str]] = None):
    self._loaders = dict(loaders)
    # (use_alternative() -> bool, dataset_fn[, provenance_fn]): the same fields elsewhere (TFDS).
    self._alternative = alternative
    self._signature = dict(signature)
    self._describe = describe
    self._counts = {}
    self._provenance = {}
    super().__init__(dataset_fn=self._dataset, splits=tuple(self._loaders))

  def load(self, split: str) -> list:
    """The split's examples as Python dicts (reads the files; errors name file and line)."""
    loaded = self._loaders[split]()
    if isinstance(loaded, Loaded):
      self._provenance[split] = loaded.provenance
      loaded = loaded.examples
    else:
      self._provenance[split] = None
    self._counts[split] = len(loaded)
    return loaded

  def provenance(self, split: str) -> Optional[gold.Provenance]:
    """What `split` is read from under the current configuration, and whether it carries
    gold; reads the split (a stripped file is only recognised by its contents). None when
    the loaders do not say."""
    if self._use_alternative():
      return self._alternative[2](split) if len(self._alternative) > 2 else None
    self.load(split)  # always re-read: the configuration may have changed since
    return self._provenance[split]

  def describe(self, split: str) -> Optional[str]:
    return self._describe(split) if self._describe is not None else None

  def _use_alternative(self):
    return self._alternative is not None and self._alternative[0]()

  def _dataset(self, split, shuffle_files=False, seed=None):
    if self._use_alternative():
      return self._alternative[1](split, shuffle_files=shuffle_files, seed=seed)
    # A split is one ordered list; seqio shuffles examples.
    examples = self.load(split)
    keys = tuple(self._signature)

    def generate():
      for example in examples:
        yield {k: example[k] for k in keys}

    return tf.data.Dataset.from_generator(generate, output_signature=self._signature)

  def num_input_examples(self, split: str):
    if self._use_alternative():
      return None  # unknown without reading the alternative source
    if split not in self._counts:
      self.load(split)
    return self._counts[split]
