"""The command line's one error path and its command table (xltransfer/command_line.py)."""
import importlib
import subprocess
import sys

import pytest

from xltransfer import cli
from xltransfer import command_line
from xltransfer.errors import ConfigError


def test_every_command_is_a_module_with_main():
  for name in command_line.COMMANDS:
    module = importlib.import_module(command_line.command_module(name))
    assert callable(module.main), name
    assert module.__name__ == f"xltransfer.commands.{name}"


def test_a_user_error_is_one_line_and_exit_2(capsys):
  def main(argv):
    raise ConfigError(f"bad value {argv[0]}\n  In call to configurable 'train' "
                      "(<function train at 0x1>)")

  assert command_line.run_command(main, "xltransfer x", ["7"]) == 2
  err = capsys.readouterr().err
  assert err == "xltransfer x: error: bad value 7\n"


def test_interrupt_is_130_and_other_errors_are_not_swallowed(capsys):
  def interrupted(argv):
    raise KeyboardInterrupt

  assert command_line.run_command(interrupted, "xltransfer x", []) == 130
  assert "interrupted" in capsys.readouterr().err

  def broken(argv):
    raise RuntimeError("a bug, not the user's input")

  with pytest.raises(RuntimeError):
    command_line.run_command(broken, "xltransfer x", [])


def test_exit_status_comes_from_main():
  assert command_line.run_command(lambda argv: 3, "p", []) == 3
  assert command_line.run_command(lambda argv: None, "p", []) == 0


def test_unknown_command_lists_the_table(capsys):
  assert cli.main(["trian"]) == 2
  err = capsys.readouterr().err
  assert "unknown command 'trian'" in err
  assert all(name in err for name in command_line.COMMANDS)


def test_python_dash_m_xltransfer_is_the_cli():
  result = subprocess.run([sys.executable, "-m", "xltransfer", "score",
                           "--predictions=/nonexistent", "--labels=/nonexistent"],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith("xltransfer score: error:"), result.stderr
