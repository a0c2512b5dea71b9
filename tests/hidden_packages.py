"""Python source that makes TensorFlow, tfds and seqio absent in a child interpreter, as on
issue 17's GPU machine: the path finder stops seeing them, so they neither import nor
`find_spec` (orbax's etils asks `importlib.util.find_spec('tensorflow')` before it uses
tf.io.gfile, so raising on import would break checkpoints the machine could write).

Child scripts start with PRELUDE; it leaves `refused`, the hidden packages that failed to
import (all of them, when the hiding works)."""

HIDDEN = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "seqio")

PRELUDE = f'''
import importlib.machinery, sys

HIDDEN = {HIDDEN!r}


class _WithoutHidden(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if fullname.split(".")[0] in HIDDEN:
      return None
    return super().find_spec(fullname, path, target)


sys.meta_path[:] = [_WithoutHidden if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
refused = []
for name in HIDDEN:
  try:
    __import__(name)
  except ImportError:
    refused.append(name)
'''
