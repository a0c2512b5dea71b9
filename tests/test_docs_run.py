"""Docs that run: every gin file and `xltransfer ...` command the docs and --help texts name.

Collected from README.md, launch/README.md, docs/*.md (fenced code blocks, one command per
line after joining `\\` continuations, and inline `code` spans) and from the --help text of
every command and sub-command. Each gin path must resolve as the trainer resolves it
(xltransfer/gin_utils.py); each command must parse with its command's own argument parser
(the launchers run a real --dry-run, with recording fakes of gcloud/sbatch/tar first on
PATH); each --gin.NAME=VALUE must parse as gin parses a binding. Nothing is trained, nothing
touches the network.

A line with placeholders (`SPEC`, `[--json]` style options are not placeholders, `...`,
`a|b` alternatives, `--gin.FIELD=VALUE`) is a synopsis: its command, action and flags must
exist. `SIZE` and `{stage}` in gin paths stand for every value listed in PLACEHOLDERS.
"""
import argparse
import contextlib
import glob
import io
import os
import pathlib
import re
import shlex

import gin
import pytest

from xltransfer import cli
from xltransfer import command_line
from xltransfer import gin_utils
from xltransfer.errors import UserError
from xltransfer.commands import launch as launch_main
from xltransfer.launch import slurm
from xltransfer.launch import tpu

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", "launch/README.md", "tasks/README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(str(REPO / "docs" / "*.md")))
# Placeholders the docs use inside gin paths, and what each stands for.
PLACEHOLDERS = {
    # docs/scale.md "Smaller sizes": the pretrained sizes, which have partitioning files.
    "SIZE": ("small", "base", "large", "xl", "xxl"),
    "{stage}": ("intermediate", "finetune"),
}
GIN_DIRS = ("models", "runs", "scale", "study", "meshes", "eval", "t5x")
_GIN_PATH = re.compile(r"(?<![\w/.~-])((?:gin/)?(?:%s)/[\w{},.*-]+\.gin)\b" % "|".join(GIN_DIRS))
_GIN_FILE_FLAG = re.compile(r"--(?:gin_file|mesh_file)[= ]([\w./{},*-]+\.gin)\b")
_PLACEHOLDER_TOKEN = re.compile(r"^\[?[A-Z][A-Z0-9_]*(\.\.\.)?\]?$")
HELP_LINE = "help"  # a --help line that starts like a command: checked, but not strictly
LAUNCHERS = {"launch/tpu.py": tpu, "xltransfer.launch.tpu": tpu,
             "launch/slurm.py": slurm, "xltransfer.launch.slurm": slurm}


# ----------------------------------------------------------------------------- collecting


def _logical_lines(text):
  return text.replace("\\\n", " ").splitlines()


def _doc_units(path):
  """(where, text, is_code_line) for each fenced-block line and inline code span."""
  text = (REPO / path).read_text()
  units = []
  for match in re.finditer(r"```[^\n]*\n(.*?)```", text, re.S):
    first = text[:match.start()].count("\n") + 2
    for offset, line in enumerate(_logical_lines(match.group(1))):
      units.append((f"{path}:{first + offset}", line, True))
  prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
  for match in re.finditer(r"`([^`\n]+)`", prose):
    units.append((f"{path}:{prose[:match.start()].count(chr(10)) + 1}", match.group(1), False))
  return units


class _Parsed(BaseException):
  """Raised right after a command's top-level argparse call: the command never runs."""

  def __init__(self, parser, result):
    super().__init__("parsed")
    self.parser, self.result = parser, result


@contextlib.contextmanager
def stop_at_parse(parse=True):
  """Lets a command's main() parse its flags (argparse errors exit 2), then stops it."""
  originals = {name: getattr(argparse.ArgumentParser, name)
               for name in ("parse_args", "parse_known_args")}
  depth = [0]

  def wrap(name):
    def patched(self, *args, **kwargs):
      if depth[0] == 0 and not parse:
        raise _Parsed(self, None)
      depth[0] += 1
      try:
        result = originals[name](self, *args, **kwargs)
      finally:
        depth[0] -= 1
      if depth[0] == 0:
        raise _Parsed(self, result)
      return result
    return patched

  for name in originals:
    setattr(argparse.ArgumentParser, name, wrap(name))
  try:
    yield
  finally:
    for name, original in originals.items():
      setattr(argparse.ArgumentParser, name, original)


def _parsers(parser, prefix):
  yield prefix, parser
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for name, sub in action.choices.items():
        yield from _parsers(sub, f"{prefix} {name}")


def top_parser(command):
  """The argparse parser of `xltransfer COMMAND` (None for a command without argparse)."""
  if command == "demo":
    return None
  argv = [command, "tpu"] if command == "launch" else [command]
  with stop_at_parse(parse=False):
    try:
      cli.main(argv)
    except _Parsed as parsed:
      return parsed.parser
  raise AssertionError(f"xltransfer {command} ran without parsing its flags")


def help_texts():
  """(where, text) for `xltransfer --help` and every command's and sub-command's --help."""
  texts = [("xltransfer --help", cli._usage()),  # pylint: disable=protected-access
           ("xltransfer launch --help", launch_main._usage())]  # pylint: disable=protected-access
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    cli.main(["demo", "--help"])
  texts.append(("xltransfer demo --help", out.getvalue()))
  roots = [(f"xltransfer {c}", top_parser(c)) for c in command_line.COMMANDS if c not in ("demo",
                                                                                  "launch")]
  roots += [("xltransfer launch tpu", tpu.build_parser()),
            ("xltransfer launch slurm", slurm.build_parser())]
  for prefix, root in roots:
    texts += [(f"{name} --help", parser.format_help()) for name, parser in _parsers(root, prefix)]
  return texts


# Command modules register gin configurables when first imported, which gin refuses while a
# config parsed (and locked) by an earlier test in this process is still in place.
pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def helps():
  gin.clear_config()
  return help_texts()


# ----------------------------------------------------------------------------- gin paths


def _expand(path):
  """Every concrete path a documented pattern stands for (braces, placeholders, globs)."""
  paths = [path]
  for placeholder, values in PLACEHOLDERS.items():
    paths = [p.replace(placeholder, v) if placeholder in p else p for p in paths for v in values]
  expanded = []
  for p in dict.fromkeys(paths):
    brace = re.search(r"\{([^{}]*,[^{}]*)\}", p)
    while brace:
      p = [p[:brace.start()] + choice + p[brace.end():] for choice in brace.group(1).split(",")]
      expanded += [q for q in p[1:]]
      p = p[0]
      brace = re.search(r"\{([^{}]*,[^{}]*)\}", p)
    expanded.append(p)
  final = []
  for p in dict.fromkeys(expanded):
    if re.search(r"\{[^{}]*,", p):
      final += _expand(p)
    else:
      final.append(p)
  return final


def gin_problem(path):
  """None if `path` resolves as the trainer resolves --gin_file; else what is wrong."""
  if re.search(r"[{}]|[A-Z]{2,}", path):
    return f"{path}: unknown placeholder (add it to PLACEHOLDERS in this test)"
  search = gin_utils.search_paths()
  if "*" in path:
    pattern = path[4:] if path.startswith("gin/") else path
    return None if glob.glob(os.path.join(gin_utils.config_dir(), pattern)) else \
        f"{path}: matches no file"
  try:
    gin_utils.resolve(path, search)
  except UserError as e:
    return str(e)
  return None


def gin_paths_in(text):
  found = [m.group(1) for m in _GIN_PATH.finditer(text)]
  found += [m.group(1) for m in _GIN_FILE_FLAG.finditer(text)]
  return [p.rstrip(".,;:)]") for p in dict.fromkeys(found)]


# ----------------------------------------------------------------------------- commands


def commands_in(text, code_line):
  """(kind, tokens) for each xltransfer or launcher command in one logical line."""
  stripped = text.strip()
  if not code_line and not re.match(r"(python (-m )?\S*launch|xltransfer )", stripped):
    return []
  try:
    tokens = shlex.split(stripped, comments=True)
  except ValueError:
    return []  # prose with an apostrophe, not a command
  # A code line that starts with `xltransfer` is a command, whatever follows (a typo in the
  # command name must fail); elsewhere in a line the word counts before a command's name only.
  # A help line can be wrapped prose that happens to start with the word.
  strict = code_line is True and tokens[:1] == ["xltransfer"]
  return _commands_in_tokens(tokens, strict)


def _commands_in_tokens(tokens, strict=False):
  found = []
  for i, token in enumerate(tokens):
    if token == "python" and i + 1 < len(tokens):
      script = tokens[i + 2] if tokens[i + 1] == "-m" and i + 2 < len(tokens) else tokens[i + 1]
      if script in LAUNCHERS:
        start = i + (3 if tokens[i + 1] == "-m" else 2)
        found.append(("launcher", [script] + tokens[start:]))
        return found
    if token == "xltransfer" or token.endswith("/bin/xltransfer"):
      if (strict and i == 0) or tokens[i + 1:i + 2] and tokens[i + 1] in command_line.COMMANDS:
        found.append(("xltransfer", tokens[i + 1:]))
        return found
    if token.startswith("--command="):
      found += _commands_in_tokens(shlex.split(token[len("--command="):]))
    if token == "--" and i + 1 < len(tokens) and tokens[i + 1] in command_line.COMMANDS and \
        tokens[0] == "...":
      found.append(("xltransfer", tokens[i + 1:]))
      return found
  return found


def _is_synopsis(tokens):
  # `xltransfer convert` alone names the command (in prose), it is no command line.
  return len(tokens) == 1 or any(t == "..." or "|" in t or _PLACEHOLDER_TOKEN.match(t) or
             re.match(r"^\[?--gin\.[A-Z]+=[A-Z]+", t) or re.search(r"=[A-Z_]+\]?$", t)
             for t in tokens)


def _sized(tokens):
  """Concrete argvs: `[--json]` opened, a SIZE placeholder replaced by each of its values."""
  tokens = [t.strip("[]") for t in tokens if t not in ("[", "]")]
  joined = "\x00".join(tokens)
  variants = [joined]
  for placeholder, values in PLACEHOLDERS.items():
    variants = [v.replace(placeholder, value) if placeholder in v else v
                for v in variants for value in values]
  return [v.split("\x00") for v in dict.fromkeys(variants)]


def check_binding(binding):
  parser = gin.config_parser.ConfigParser(binding, gin.config.ParserDelegate(skip_unknown=True))
  try:
    list(parser)
  except SyntaxError as e:
    return (gin_utils._unparsable_binding(e, [binding])  # pylint: disable=protected-access
            or f"binding `{binding}`: {e}")
  return None


def check_synopsis(tokens):
  command = tokens[0] if tokens else ""
  if command in ("...", "COMMAND"):
    return None
  if command not in command_line.COMMANDS:
    return f"unknown command {command!r}"
  if command == "demo":
    parsers = []
  elif command == "launch":
    launchers = tokens[1].split("|") if len(tokens) > 1 else []
    if any(l not in launch_main.LAUNCHERS for l in launchers):
      return f"unknown launcher in {tokens[1]!r}"
    parsers = [{"tpu": tpu, "slurm": slurm}[l].build_parser() for l in launchers]
    tokens = tokens[1:]
  else:
    parsers = [top_parser(command)]
  options, actions = {"-h", "--help"}, set()
  for root in parsers:
    for name, parser in _parsers(root, ""):
      actions.update(name.split())
      for action in parser._actions:  # pylint: disable=protected-access
        options.update(action.option_strings)
  if actions and len(tokens) > 1 and not tokens[1].startswith("-"):
    for action in re.split(r"[|/]", tokens[1]):
      if action not in actions and not _PLACEHOLDER_TOKEN.match(action):
        return f"unknown action {action!r} of `xltransfer {command}`"
  for token in tokens[1:]:
    flag = token.strip("[]").split("=", 1)[0]
    if flag.startswith("--") and flag not in options and not flag.startswith("--gin."):
      return f"unknown option {flag}"
  return None


def check_xltransfer(tokens, where):
  """Problems with one `xltransfer ...` command (tokens after the program name)."""
  if not tokens:
    return [f"{where}: `xltransfer` without a command"]
  if _is_synopsis(tokens):
    problem = check_synopsis(tokens)
    return [f"{where}: `xltransfer {shlex.join(tokens)}`: {problem}"] if problem else []
  problems = []
  for argv in _sized(tokens):
    shown = f"{where}: `xltransfer {shlex.join(argv)}`"
    problems += [f"{shown}: {p}" for p in map(gin_problem, gin_files(argv)) if p]
    rest, bindings = gin_utils.split_gin_flags(argv[1:])
    bindings += [v for flag, v in zip(rest, rest[1:]) if flag == "--gin_bindings"]
    bindings += [a.split("=", 1)[1] for a in rest if a.startswith("--gin_bindings=")]
    problems += [f"{shown}: {p}" for p in map(check_binding, bindings) if p]
    problem = parse_problem(argv)
    if problem:
      problems.append(f"{shown}: {problem}")
  return problems


def gin_files(argv):
  from xltransfer.launch import commands  # pylint: disable=import-outside-toplevel
  return commands.gin_files_in_command(argv)


def parse_problem(argv):
  """Parses `xltransfer ARGV` with the command's own parser and stops before it runs."""
  command = argv[0]
  if command not in command_line.COMMANDS:
    return f"unknown command {command!r}"
  if command == "launch":
    if len(argv) < 2 or argv[1] not in launch_main.LAUNCHERS:
      return "launch needs tpu or slurm"
    return launcher_problem(launch_main.LAUNCHERS[argv[1]][0], argv[2:])
  if command == "demo":
    from xltransfer.commands import study as study_command  # pylint: disable=import-outside-toplevel
    rest, _ = study_command.split_gin_flags(argv[1:])
    return f"unexpected arguments {rest}" if rest else None
  if command == "plan":
    from xltransfer.commands import plan  # pylint: disable=import-outside-toplevel
    err = io.StringIO()
    try:
      with contextlib.redirect_stderr(err):
        plan._parse_args(argv[1:])  # pylint: disable=protected-access
    except SystemExit as e:  # 0: --help
      return f"exit {e.code}: {err.getvalue().strip()}" if e.code else None
    except UserError as e:
      return str(e)
    return None
  err = io.StringIO()
  with stop_at_parse(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = cli.main(argv)
    except _Parsed:
      return None
    except SystemExit as e:  # 0: --help
      return f"exit {e.code}: {err.getvalue().strip()}" if e.code else None
  return f"returned {code} without parsing: {err.getvalue().strip()}"


def launcher_problem(module_name, argv):
  """Runs the launcher with --dry-run in front (before the action); its output must be clean."""
  module = {"xltransfer.launch.tpu": tpu, "xltransfer.launch.slurm": slurm}.get(module_name,
                                                                               module_name)
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = module.main(["--dry-run"] + list(argv))
  except SystemExit as e:
    return f"exit {e.code}: {err.getvalue().strip()}"
  except UserError as e:
    return f"error: {e}"
  if code != 0 or "warning" in err.getvalue():
    return f"exit {code}: {err.getvalue().strip()}"
  return None


def check_launcher(tokens, where):
  module = LAUNCHERS[tokens[0]]
  argv = tokens[1:]
  shown = f"{where}: `{shlex.join(tokens)}`"
  if "..." in argv:
    return []  # an elided example; its parts are checked where they are written out
  problems = []
  problem = launcher_problem(module, argv)
  if problem:
    problems.append(f"{shown}: {problem}")
  if "--" in argv:
    problems += check_xltransfer(argv[argv.index("--") + 1:], where)
  return problems


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(autouse=True)
def _no_external_programs(tmp_path, monkeypatch):
  """Recording fakes first on PATH: nothing here may call gcloud, sbatch or tar."""
  record = tmp_path / "called.txt"
  for name in ("gcloud", "sbatch", "tar"):
    fake = tmp_path / name
    fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{record}"\n')
    fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.chdir(REPO)  # the docs' commands run from the checkout
  yield
  assert not record.exists(), record.read_text()


def _all_units(helps):
  units = [unit for doc in DOCS for unit in _doc_units(doc)]
  for where, text in helps:
    units += [(where, line, HELP_LINE if line.strip().startswith(("xltransfer ", "python "))
               else False)
              for line in _logical_lines(text)]
  return units


def test_every_documented_gin_file_exists(helps):
  problems, count = [], 0
  for where, text, _ in _all_units(helps):
    for pattern in gin_paths_in(text):
      for path in _expand(pattern):
        count += 1
        problem = gin_problem(path)
        if problem:
          problems.append(f"{where}: {problem}")
  assert count > 60  # the collector found the docs' paths (a broken regex finds none)
  assert not problems, "\n".join(dict.fromkeys(problems))


def test_every_documented_command_parses(helps):
  problems, count = [], 0
  for where, text, code_line in _all_units(helps):
    for kind, tokens in commands_in(text, code_line):
      count += 1
      if kind == "launcher":
        problems += check_launcher(tokens, where)
      else:
        problems += check_xltransfer(tokens, where)
  assert count > 40
  assert not problems, "\n".join(dict.fromkeys(problems))


def test_help_texts_cover_every_command(helps):
  names = {where.split(" --help")[0] for where, _ in helps}
  for command in command_line.COMMANDS:
    assert f"xltransfer {command}" in names
  assert {"xltransfer study run", "xltransfer tasks show", "xltransfer launch tpu run",
          "xltransfer launch slurm submit"} <= names


@pytest.mark.parametrize("tokens, fragment", [
    (["train", "--gin_file=runs/no_such.gin"], "no_such.gin: not found"),
    (["train", "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR=/shared/x"],
     "binding `MODEL_DIR = /shared/x`"),
    (["train", "--gin_flie=runs/finetune.gin"], "unrecognized arguments"),
    (["eval", "--no_such_flag"], "unrecognized arguments"),
    (["plan", "--gin_file=runs/finetune.gin", "--topology", "v9:1x1"], "v9"),
    (["study", "run", "gin/study/low_resource.gin"], "low_resource.gin: not found"),
    (["studdy", "run"], "unknown command"),
    (["tasks", "shw", "MIXTURE"], "unknown action 'shw'"),
    (["launch", "tpu", "run", "n", "--zone=us-central2-b", "--num-workers=1", "--",
      "train", "--gin_file=gin/runs/mt5_xxl_gpu.gin"], "not in this checkout"),
    (["demo", "--report"], "unexpected arguments"),
])
def test_the_checks_catch_wrong_commands(tokens, fragment):
  problems = check_xltransfer(tokens, "here")
  assert problems and fragment in " ".join(problems), problems


def test_collector_reads_continuations_remote_commands_and_placeholders():
  assert commands_in("xltransfer studdy run x", True) == [("xltransfer", ["studdy", "run", "x"])]
  assert commands_in("HF import, xltransfer params format", True) == []
  text = ("python launch/tpu.py run x --zone=us-central2-b --num-workers=1 -- "
          "train --gin_file=gin/runs/finetune.gin")
  assert commands_in(text, True)[0][0] == "launcher"
  remote = ("gcloud compute tpus tpu-vm ssh x --worker=0 '--command=exec env -C xltransfer "
            ".venv/bin/xltransfer train --gin_file=runs/finetune.gin'")
  assert commands_in(remote, True) == [("xltransfer", ["train", "--gin_file=runs/finetune.gin"])]
  assert sorted(_expand("gin/meshes/partitioning_{small,xxl}.gin")) == [
      "gin/meshes/partitioning_small.gin", "gin/meshes/partitioning_xxl.gin"]
  assert len(_expand("gin/scale/mt5_xxl_{stage}_{v4-128,8xh100}.gin")) == 4
  assert gin_problem("gin/models/mt5_FOO.gin").endswith("add it to PLACEHOLDERS in this test)")
  assert gin_paths_in("see `gin/runs/x.gin`, runs/y.gin and --gin_file=meshes/cpu.gin") == [
      "gin/runs/x.gin", "runs/y.gin", "meshes/cpu.gin"]
