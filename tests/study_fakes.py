"""What the study tests share: running `xltransfer study run` with the fake stage program
(tests/test_study_fake_stage.py), which logs each stage it executes instead of training."""
import os
import shlex
import sys

from xltransfer.commands import study as study_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "test_study_fake_stage.py")
PROGRAM = f"{shlex.quote(sys.executable)} {shlex.quote(FAKE)}"


def executions(log):
  """The stages the fake program ran, in order (one line each in FAKE_STAGE_LOG)."""
  if not log.exists():
    return []
  return [line.split(" ", 1)[1].strip() for line in log.read_text().splitlines()]


def run_study(study, *extra):
  """`xltransfer study run SPEC --output_dir DIR --program FAKE ...`: its exit code."""
  return study_command.main(["run", study["spec"], "--output_dir", study["dir"],
                          "--program", PROGRAM, *extra])
