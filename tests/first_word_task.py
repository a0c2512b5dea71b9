"""A seqio eval task registered by a test: each line of a text file is an input, its first word
the target (builtin vocabulary, seqio's tokenize + append_eos_after_trim, accuracy)."""
import seqio
import tensorflow as tf

from xltransfer import metrics as metrics_lib
from xltransfer.data import vocab
from xltransfer.tasks import catalog


def register_first_word_task(path: str, family: str, language: str = "en") -> str:
  """Registers `xlt_{family}_eval_{language}` over the lines of `path`; returns its name."""
  name = f"xlt_{family}_eval_{language}"

  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    lines = tf.data.TextLineDataset(path)
    return lines.map(lambda line: {"inputs": line,
                                   "targets": tf.strings.split(line, " ")[0]})
  features = {"inputs": seqio.Feature(vocab.get_vocabulary("builtin")),
              "targets": seqio.Feature(vocab.get_vocabulary("builtin"))}
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[metrics_lib.accuracy])
  catalog.declare_evaluation(name, family=family, language=language)
  return name
