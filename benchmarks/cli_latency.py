"""How long the `xltransfer` command takes to answer `--help` and to report a config error.

Each case runs as a fresh process (the installed `xltransfer` script beside this Python, else
`python -m xltransfer`) from an empty temporary directory, like a user's first command: the
top-level help, every command's `--help` (command_line.COMMANDS), and for train, eval, plan
and study a missing gin file, a mistyped macro and an unknown task name. Each case checks its
exit status and a piece of its message (so a fast crash does not pass for a fast error) and
that stderr holds nothing but xltransfer's own lines (no library log lines, by default).

    python benchmarks/cli_latency.py               # the table; exit 1 if a case is over 3 s
    python benchmarks/cli_latency.py --report_only # the table; exit 0 whatever the times
    python benchmarks/cli_latency.py --repeat 3 --budget_s 3 --json out.json

The wall time of a case is the median of --repeat runs. Reference rows (not judged) show what
the interpreter and the libraries cost on their own here: `python -c pass`, `import jax`,
`import tensorflow`, `import seqio`.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from xltransfer import command_line
from xltransfer import library_logs

# (name, argv after `xltransfer`, expected exit status, text the output must contain)
MODEL = "--gin_file=models/mt5_small.gin"
# Relative paths land in the case's temporary working directory.
TRAIN_BASE = [MODEL, "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='model'",
              "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.TRAIN_STEPS=3"]
EVAL_BASE = [MODEL, "--checkpoint=.", "--output_dir=eval"]
STUDY_SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin",
                          "study", "demo_tiny.gin")
NOT_FOUND = "not found"


def error_cases():
  return [
      ("train: missing gin file", ["train", "--gin_file=nope.gin"], 2, NOT_FOUND),
      ("train: mistyped macro", ["train", *TRAIN_BASE[:-1], "--gin.TRAIN_STEP=3",
                                 "--gin.MIXTURE_OR_TASK_NAME='xlt_xnli_train'"], 2,
       "TRAIN_STEP is set but used by nothing"),
      ("train: unknown task name", ["train", *TRAIN_BASE,
                                    "--gin.MIXTURE_OR_TASK_NAME='xlt_xnli_trian'"], 2,
       "xlt_xnli_trian"),
      ("eval: missing gin file", ["eval", "--gin_file=nope.gin"], 2, NOT_FOUND),
      ("eval: mistyped macro", ["eval", *EVAL_BASE, "--tasks=xlt_xnli_zeroshot",
                                "--gin.SPLITT='test'"], 2, "SPLITT"),
      ("eval: unknown task name", ["eval", *EVAL_BASE, "--tasks=xlt_xnli_zeroshoot"], 2,
       "xlt_xnli_zeroshoot"),
      ("plan: missing gin file", ["plan", "--gin_file=nope.gin"], 2, NOT_FOUND),
      ("plan: mistyped macro", ["plan", *TRAIN_BASE, "--gin.BATCH_SIZ=8"], 2, "BATCH_SIZ"),
      ("study: missing spec", ["study", "run", "nope.gin", "--dry_run"], 2, "does not exist"),
      ("study: unknown task name", ["study", "run", STUDY_SPEC, "--dry_run", "--check_names",
                                    "--gin.conditions=['none','xlt_xquad_train',"
                                    "'xlt_span_sample_swx']"], 2, "xlt_span_sample_swx"),
  ]


def help_cases():
  cases = [("xltransfer --help", ["--help"], 0, "usage: xltransfer")]
  for name in command_line.COMMANDS:
    cases.append((f"xltransfer {name} --help", [name, "--help"], 0, f"xltransfer {name}"))
  return cases


def program():
  script = os.path.join(os.path.dirname(sys.executable), "xltransfer")
  return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "xltransfer"]


def _foreign_stderr_lines(stderr: str):
  """Lines of stderr that are not xltransfer's: library log lines the quiet mode should drop."""
  return [line for line in stderr.splitlines() if library_logs.is_noise(line.encode())]


def run_case(argv, cwd, env, repeat):
  times, proc = [], None
  for _ in range(repeat):
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    times.append(time.perf_counter() - start)
  return statistics.median(times), proc


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--budget_s", type=float, default=3.0,
                      help="a case over this many seconds fails (default 3)")
  parser.add_argument("--repeat", type=int, default=1, help="runs per case (median)")
  parser.add_argument("--report_only", action="store_true",
                      help="print the table and exit 0 even if a case is over budget")
  parser.add_argument("--only", default=None,
                      help="run only the cases whose name contains this text")
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  args = parser.parse_args(argv)

  env = dict(os.environ)
  env.pop(library_logs.VERBOSE_ENV, None)
  cwd = tempfile.mkdtemp(prefix="xlt_cli_latency_")
  rows, failures = [], []
  try:
    references = [("python -c pass", "pass"), ("python: import jax", "import jax"),
                  ("python: import tensorflow", "import tensorflow"),
                  ("python: import seqio", "import seqio")]
    for name, code in references:
      if args.only and args.only not in name:
        continue
      seconds, _ = run_case([sys.executable, "-c", code], cwd, env, args.repeat)
      rows.append({"case": name, "seconds": seconds, "judged": False})
    for name, case_argv, status, expected in help_cases() + error_cases():
      if args.only and args.only not in name:
        continue
      seconds, proc = run_case(program() + case_argv, cwd, env, args.repeat)
      output = proc.stdout + proc.stderr
      problems = []
      if proc.returncode != status:
        problems.append(f"exit {proc.returncode}, expected {status}")
      if expected not in output:
        problems.append(f"output lacks {expected!r}")
      foreign = _foreign_stderr_lines(proc.stderr)
      if foreign:
        problems.append(f"{len(foreign)} library log line(s) on stderr, e.g. {foreign[0][:80]!r}")
      fast = seconds < args.budget_s
      rows.append({"case": name, "seconds": seconds, "judged": True, "fast": fast,
                   "exit": proc.returncode, "problems": problems,
                   "stderr": proc.stderr.strip().splitlines()[-1:] if proc.stderr else []})
      if problems:
        failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {proc.stderr[-500:]}")
  finally:
    shutil.rmtree(cwd, ignore_errors=True)

  width = max(len(row["case"]) for row in rows)
  print(f"{'case'.ljust(width)}  seconds  < {args.budget_s:g} s")
  for row in rows:
    verdict = ("(reference)" if not row["judged"]
               else ("yes" if row["fast"] else "NO") + ("" if not row["problems"] else
                                                        "  CHECK FAILED"))
    print(f"{row['case'].ljust(width)}  {row['seconds']:7.2f}  {verdict}")
  judged = [row for row in rows if row["judged"]]
  slow = [row["case"] for row in judged if not row["fast"]]
  print(f"\n{len(judged) - len(slow)} of {len(judged)} cases under {args.budget_s:g} s "
        f"(median of {args.repeat} run(s) each, {os.cpu_count()} CPUs)")
  for failure in failures:
    print(f"check failed: {failure}", file=sys.stderr)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"budget_s": args.budget_s, "repeat": args.repeat, "rows": rows}, f, indent=1)
  if failures:
    return 2
  if slow and not args.report_only:
    print(f"over {args.budget_s:g} s: {', '.join(slow)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
