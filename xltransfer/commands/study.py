"""`xltransfer study`: run an intermediate-task study, inspect its stages, write its report.

  xltransfer study run SPEC [--gin.FIELD=VALUE ...] [--output_dir DIR] [--emit DIR] [--report]
  xltransfer study status DIR [--json]
  xltransfer study report DIR [--out OUT] [--bootstrap_samples N] [--no_plots]

SPEC is a gin file binding StudySpec (gin/study/*.gin). `--gin.seeds=[0]` and
`--gin.StudySpec.seeds=[0]` both override a field; `--gin.MACRO=...` sets a spec macro. `run` executes every stage in dependency
order as an `xltransfer train`/`eval` subprocess, logging to STAGE_DIR/stage.log; rerunning
skips stages whose DONE exists, retries failed or interrupted ones, and a failed stage blocks
only the stages that need its output. Before any stage runs, `run` checks that the Social IQa
file of XCOPA's first fine-tuning stage (SIQA, then COPA) exists and, once per distinct mesh
configuration, that the stages' mesh fits the devices here (`train/eval --check_devices` in a
child process; `--skip_device_check` skips it). `--emit DIR` writes the
stages instead (stages.json, one gin file per stage, run_stages.sh) for a pod launcher. DIR
for status/report is the study's output directory (or an --emit directory for status).
`--dry_run` ends with what the study costs: stages, training steps and, per training stage
kind, hours from its stages that already ran here and, with `--plan [KIND=]PLAN.json` (from
`xltransfer plan --output`), device-hours estimated from the plan's FLOPs at an assumed
`--mfu` (xltransfer/study/cost.py).
"""
import argparse
import dataclasses
import difflib
import json
import os
import shlex
import sys

from xltransfer import gin_utils
from xltransfer.errors import UserError
from xltransfer.study import checks, cost, grid, report, runner
from xltransfer.study import spec as spec_lib


_SPEC_FIELDS = {f.name for f in dataclasses.fields(spec_lib.StudySpec)}


def _qualify(name: str) -> str:
  """A StudySpec field's name as its binding; a near miss of one (`seedz`) is an error rather
  than a gin macro that nothing reads; anything else (a macro, a configurable) as given."""
  if name in _SPEC_FIELDS:
    return f"StudySpec.{name}"
  close = difflib.get_close_matches(name, sorted(_SPEC_FIELDS), n=3) if "." not in name else []
  if close:
    raise UserError(f"--gin.{name}: StudySpec has no field {name!r}; did you mean "
                    f"{', '.join(close)}?")
  return name


def split_gin_flags(argv):
  """`--gin.NAME=VALUE` flags as bindings (a StudySpec field's name is qualified); the rest."""
  return gin_utils.split_gin_flags(argv, qualify=_qualify)


def _parser():
  parser = argparse.ArgumentParser(prog="xltransfer study", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run (or --emit) the stages of a study spec")
  run.add_argument("spec", help="gin file binding StudySpec")
  run.add_argument("--output_dir", help="study directory (default: the spec's output_dir)")
  gin_utils.add_module_flag(run)
  run.add_argument("--emit", metavar="DIR",
                   help="write stages.json, per-stage gin files and run_stages.sh to DIR "
                        "instead of running")
  run.add_argument("--program", default=None,
                   help="command that runs `train`/`eval` stages (default: this Python's "
                        "xltransfer CLI; `xltransfer` in emitted files)")
  run.add_argument("--report", action="store_true", help="write the report after running")
  run.add_argument("--dry_run", action="store_true", help="print the stage commands only")
  run.add_argument("--plan", action="append", default=[], metavar="[KIND=]PLAN.json",
                   help="with --dry_run: estimate device-hours per training stage kind from "
                        "an `xltransfer plan --output` JSON (KIND: intermediate, prefinetune "
                        "or finetune; without it, every training kind)")
  run.add_argument("--mfu", type=float, default=None,
                   help=f"with --plan: the assumed model FLOPs utilisation (default "
                        f"{cost.DEFAULT_MFU})")
  run.add_argument("--skip_device_check", action="store_true",
                   help="start stages without first checking (once per distinct mesh config, "
                        "with `train/eval --check_devices`) that their mesh fits the devices")
  run.add_argument("--check_names", action="store_true",
                   help="first check that every condition and target mixture is registered "
                        "(imports xltransfer.tasks, which loads tensorflow)")
  status = commands.add_parser("status", help="print each stage's state")
  status.add_argument("dir")
  status.add_argument("--json", action="store_true")
  rep = commands.add_parser("report", help="write report.md/.csv/.json and plots")
  rep.add_argument("dir")
  rep.add_argument("--out", help="report directory (default DIR/report)")
  rep.add_argument("--bootstrap_samples", type=int, default=1000)
  rep.add_argument("--bootstrap_seed", type=int, default=0)
  rep.add_argument("--no_plots", action="store_true")
  return parser


def _run(args, bindings) -> int:
  spec = spec_lib.load_spec(args.spec, bindings)
  if args.output_dir:
    spec = dataclasses.replace(spec, output_dir=args.output_dir)
  if args.module:
    spec = dataclasses.replace(spec, task_modules=tuple(spec.task_modules)
                               + spec_lib.module_paths(args.module))
  gin_utils.import_user_modules(spec.task_modules)
  spec_lib.check_gin_files(spec, args.spec)
  study_dir = spec.study_dir()
  stages = grid.build_stages(spec, study_dir)
  program = tuple(shlex.split(args.program)) if args.program else None
  if (args.plan or args.mfu is not None) and not args.dry_run:
    raise UserError("--plan and --mfu estimate device time for --dry_run; add --dry_run")
  if args.check_names:
    checks.check_names(stages, args.spec)
  if args.emit:
    info = runner.emit(stages, spec, study_dir, os.path.abspath(args.emit),
                       program or runner.EMIT_PROGRAM)
    print(f"wrote {info['stages']} stages: {info['stages_json']}, {info['script']}, "
          f"gin files in {info['gin_dir']}")
    return 0
  if args.dry_run:
    cost_lines = cost.cost_lines(stages, spec, cost.parse_plan_flags(args.plan), args.mfu)
    for stage in stages:
      print(f"# {stage.id} (after {', '.join(stage.deps) or 'nothing'})")
      print(shlex.join(runner.stage_argv(stage, program or runner.DEFAULT_PROGRAM)))
    print("\n".join(cost_lines))
    return 0
  if "://" in study_dir:
    raise UserError(f"StudySpec.output_dir {study_dir} is remote: `study run` keeps stage "
                    "state in local directories; use --emit DIR to launch the stages elsewhere")
  checks.check_compatible(study_dir, stages)
  checks.check_data(stages, args.spec)
  checks.check_labelled_data(stages, args.spec)
  if not args.skip_device_check:
    checks.check_devices(stages, program or runner.DEFAULT_PROGRAM)
  grid.write_study_file(os.path.join(study_dir, grid.STUDY_FILE), spec, stages, study_dir)
  print(f"[study] {spec.name}: {len(stages)} stages in {study_dir}")
  summary = runner.run_stages(stages, study_dir, program or runner.DEFAULT_PROGRAM)
  if summary.failed or summary.blocked:
    print(f"[study] see `xltransfer study status {study_dir}`; rerun to retry the failed "
          "stages")
  if args.report:
    _print_report(report.write_report(study_dir))
  return 0 if summary.ok else 1


def _status(args) -> int:
  spec, stages, study_dir = grid.read_study_file(args.dir)
  states = runner.study_states(stages)
  if args.json:
    print(json.dumps({"study": spec.name, "study_dir": study_dir, "stages": [
        {"id": s.id, "state": states[s.id], "stage_dir": s.stage_dir} for s in stages]},
                     indent=1))
    return 0
  print(f"study {spec.name} in {study_dir}")
  width = max(len(s.id) for s in stages)
  for stage in stages:
    state = states[stage.id]
    line = f"  {state:<11} {stage.id.ljust(width)}"
    if state == "failed":
      info = runner.read_json(os.path.join(stage.stage_dir, runner.FAILED_MARKER))
      line += f"  {info.get('reason', '')}; log {os.path.join(stage.stage_dir, runner.LOG)}"
    elif state == "interrupted":
      line += f"  (runner stopped; rerun resumes it) log {os.path.join(stage.stage_dir, runner.LOG)}"
    elif state == "blocked":
      line += f"  (needs {', '.join(stage.deps)})"
    print(line.rstrip())
  counts = {s: list(states.values()).count(s) for s in runner.STATES}
  print("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
  return 0


def _print_report(paths) -> None:
  with open(paths["markdown"]) as f:
    text = f.read()
  # The score table and the deltas against the baseline: the study's answer at a glance.
  head = text.split("## Deltas against", 2)
  print(head[0] + ("## Deltas against" + head[1] if len(head) > 1 else ""))
  print(f"report: {paths['markdown']}\n        {paths['csv']}\n        {paths['json']}")
  for plot in paths["plots"]:
    print(f"plot:   {plot}")


def _report(args) -> int:
  if not os.path.isdir(args.dir):
    raise UserError(f"study directory {args.dir} does not exist")
  paths = report.write_report(args.dir, args.out, samples=args.bootstrap_samples,
                              seed=args.bootstrap_seed, plot=not args.no_plots)
  _print_report(paths)
  return 0


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, bindings = split_gin_flags(argv)
  args = _parser().parse_args(rest)
  if bindings and args.command != "run":
    raise UserError("--gin. overrides apply to `study run` only")
  if args.command == "run":
    return _run(args, bindings)
  if args.command == "status":
    return _status(args)
  return _report(args)
