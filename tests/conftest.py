"""Test-session settings shared by every test module."""
import os
import sys

import gin
import pytest

# Tests run on the CPU. Pinning the platform also keeps an installed libtpu (the `tpu` extra)
# from probing for TPU hardware in every test process; `xltransfer plan` opens the TPU
# compiler explicitly when it is asked for a TPU topology.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
