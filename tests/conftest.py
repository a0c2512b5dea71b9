"""Test-session settings shared by every test module."""
import os
import sys
import tempfile

import gin
import pytest

# Tests run on the CPU. Pinning the platform also keeps an installed libtpu (the `tpu` extra)
# from probing for TPU hardware in every test process; `xltransfer plan` opens the TPU
# compiler explicitly when it is asked for a TPU topology.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests compile the same tiny-model programs, in the test workers and in the `xltransfer`
# subprocesses they start: jax's persistent compilation cache (keyed by the program, the jax
# version and the flags) lets them share the compiled code.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"xltransfer_test_jax_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The registered task names (xltransfer/registered_names.py) are remembered here, not in the
# user's ~/.cache; the first test process that imports xltransfer.tasks writes them.
os.environ.setdefault("XLTRANSFER_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"xltransfer_test_cache_{os.getuid()}"))

# The trainer tests' seqio task (`xlt_test_copy`) is registered by the module
# tests/fixtures/train/train_fixture_tasks.py, which test modules import and which
# tests/fixtures/train/tiny_test.gin names with `import train_fixture_tasks`: its directory is
# importable in every test process (subprocesses get it through train_cli_helpers' PYTHONPATH).
TRAIN_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")
if TRAIN_FIXTURES not in sys.path:
  sys.path.insert(0, TRAIN_FIXTURES)


@pytest.fixture
def clean_gin():
  """An empty gin config before and after the test (modules that parse gin opt in with
  `pytestmark = pytest.mark.usefixtures("clean_gin")`)."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A randomly initialised tiny mT5 saved as an xltransfer params checkpoint (`xltransfer
  convert` format), for tests that evaluate a checkpoint."""
  # pylint: disable=import-outside-toplevel
  import jax
  from xltransfer.checkpoints import native
  from xltransfer.model.config import get_config
  from xltransfer.model.models import EncoderDecoderModel
  config = get_config("tiny")
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, path)
  return path

