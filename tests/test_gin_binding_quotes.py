"""An unquoted gin string on the command line: the error names the binding and the quoted form.

gin (gin-config 0.5, config_parser.py) parses a binding's value as a Python literal, a
configurable reference or a macro; `/shared/runs/x` is none of these and gin's own message is
"Unable to parse value. (line 1)" with no name.
"""
import gin
import pytest

from xltransfer.errors import ConfigError
from xltransfer import gin_utils


@gin.configurable("binding_quotes_sink")
def _sink(model_dir=None):
  return model_dir


@pytest.fixture
def macro_file(tmp_path):
  path = tmp_path / "dirs.gin"
  path.write_text("MODEL_DIR = None\nbinding_quotes_sink.model_dir = %MODEL_DIR\n")
  gin.clear_config()
  yield str(path)
  gin.clear_config()


@pytest.mark.parametrize("value", ["/shared/runs/xnli-en", "gs://bucket/runs/x", "my-run"])
def test_unquoted_string_names_the_binding_and_the_quoted_form(macro_file, value):
  _, bindings = gin_utils.split_gin_flags([f"--gin.MODEL_DIR={value}"])
  with pytest.raises(ConfigError) as caught:
    gin_utils.parse_config([macro_file], bindings, [])
  message = str(caught.value)
  assert f"binding `MODEL_DIR = {value}`" in message
  assert f"""--gin.MODEL_DIR="'{value}'\"""" in message
  assert f"MODEL_DIR = '{value}'" in message
  assert "\n" not in message


def test_the_suggested_form_parses(macro_file):
  # The shell turns --gin.MODEL_DIR="'/shared/runs/x'" into this argument.
  _, bindings = gin_utils.split_gin_flags(["--gin.MODEL_DIR='/shared/runs/x'"])
  gin_utils.parse_config([macro_file], bindings, [])
  assert gin.query_parameter("MODEL_DIR/macro.value") == "/shared/runs/x"


def test_value_with_shell_characters_is_shell_quoted(macro_file):
  _, bindings = gin_utils.split_gin_flags(["--gin.MODEL_DIR=$HOME/x"])
  with pytest.raises(ConfigError, match=r"""e\.g\. '--gin\.MODEL_DIR='"'"'\$HOME/x'"'"''"""):
    gin_utils.parse_config([macro_file], bindings, [])


def test_errors_in_gin_files_keep_gins_file_and_line(tmp_path, macro_file):
  bad = tmp_path / "bad.gin"
  bad.write_text("MODEL_DIR = /shared/x\n")
  with pytest.raises(ConfigError, match="bad.gin") as caught:
    gin_utils.parse_config([str(bad)], [], [])
  assert "binding `" not in str(caught.value)
