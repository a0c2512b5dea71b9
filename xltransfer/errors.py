"""User-facing errors.

Anything the user can fix (a bad path, a malformed data line, an unknown name) raises
`UserError` with a message that names the file, line or key. The CLI prints the message and
exits non-zero without a traceback; library callers can catch it like any exception.
"""
import re


class UserError(Exception):
  """An error caused by the user's input, with a message that says what to fix."""


class DataFormatError(UserError, ValueError):
  """A data file does not match its format; the message names file and line."""

  def __init__(self, path, line, message):
    self.path = str(path)
    self.line = line
    where = f"{self.path}:{line}" if line is not None else self.path
    super().__init__(f"{where}: {message}")


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable or does not fit the model config."""


class ConfigError(UserError):
  """A config value (gin binding, model size, language code) is invalid."""


def one_line_message(error: UserError) -> str:
  """The error's message for the command line: without the "In call to configurable ..." note
  gin appends to errors raised inside configurables (the message already names the file, key
  or path to fix)."""
  return re.sub(r"\n\s*In call to configurable '[^']*' \([^\n]*\)", "", str(error))
