"""Test-session settings shared by every test module."""
import os

import gin
import pytest

# Tests run on the CPU. Pinning the platform also keeps an installed libtpu (the `tpu` extra)
# from probing for TPU hardware in every test process; `xltransfer plan` opens the TPU
# compiler explicitly when it is asked for a TPU topology.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def clean_gin():
  """An empty gin config before and after the test (modules that parse gin opt in with
  `pytestmark = pytest.mark.usefixtures("clean_gin")`)."""
  gin.clear_config()
  yield
  gin.clear_config()
