"""What a study costs before it runs: stages, training steps and device time per stage kind.

Device time comes from two sources, and each printed figure names its own:

  measured  the median s/step of this study's training stages that already ran here (their
            train_metrics.jsonl): wall hours on that machine.
  plan      a JSON plan that `xltransfer plan ... --output PLAN.json` wrote for a training
            config on a target machine. A plan compiles the train step but never runs it: it
            gives the model FLOPs of one step (at its batch size and sequence lengths), the
            chip's peak FLOP/s and the device count, not a step time. The step time is
            therefore an estimate, FLOPs / (peak x devices x MFU), with the MFU an assumption
            (`--mfu`, printed beside the figure), and device-hours = steps x s/step x devices.

`--plan PLAN.json` offers a plan to every training kind, `--plan KIND=PLAN.json` to one kind
(its plans then replace the general ones there); both repeat. Each stage takes, of the plans
offered to its kind, the one whose gin files cover most of the stage's (a dual-encoder
fine-tuning picks the plan made with models/dual_encoder.gin), and a line notes the gin
files of a stage that its plan lacks. A plan's FLOPs are scaled linearly to a stage's
BATCH_SIZE; its sequence lengths are taken as the stage's (printed: the study does not parse
the stages' gin files). A plan of another model than the study's, a missing or unreadable
file, or one that lacks a figure is a UserError naming the file. Eval stages are not
estimated: a plan covers training steps.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from xltransfer.errors import UserError
from xltransfer.study import grid

TRAINING_KINDS = ("intermediate", "prefinetune", "finetune")
# An assumption, printed with every estimate and replaced by --mfu: large Transformer
# training reaches about this on TPU (PaLM reports 46% on v4); small models reach less.
DEFAULT_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class Plan:
  """The figures of an `xltransfer plan` JSON that a study estimate uses."""
  path: str
  machine: str
  device: str
  num_devices: int
  peak_flops: float  # per device
  model_size: str
  model_kind: str
  batch_size: int
  lengths: Dict[str, int]
  model_flops_per_step: float
  gin_files: tuple

  def step_seconds(self, batch_size: int, mfu: float) -> float:
    """Seconds per step at `batch_size` (FLOPs linear in the batch) and the given MFU."""
    flops = self.model_flops_per_step * batch_size / self.batch_size
    return flops / (self.peak_flops * self.num_devices * mfu)

  def describe(self) -> str:
    lengths = " / ".join(f"{k} {v}" for k, v in self.lengths.items())
    return (f"plan {self.path}: {self.machine}, {self.num_devices} x {self.device} at "
            f"{self.peak_flops / 1e12:g} TFLOP/s peak; mT5 {self.model_size} "
            f"{self.model_kind}, batch {self.batch_size}, {lengths}")


def _field(data, path: str, keys: Sequence[str], kind):
  value = data
  for key in keys:
    if not isinstance(value, dict) or key not in value:
      raise UserError(f"{path}: not an `xltransfer plan` JSON: no {'.'.join(keys)} (write one "
                      "with `xltransfer plan --gin_file=... --topology=... --output PLAN.json`)")
    value = value[key]
  if kind is not str and (isinstance(value, bool) or not isinstance(value, (int, float))
                          or value <= 0):
    raise UserError(f"{path}: {'.'.join(keys)} must be a positive number, got {value!r}")
  if kind is str and not isinstance(value, str):
    raise UserError(f"{path}: {'.'.join(keys)} must be a string, got {value!r}")
  return kind(value)


def load_plan(path: str) -> Plan:
  if not os.path.isfile(path):
    raise UserError(f"plan file {path} does not exist")
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: not a JSON plan ({e})") from None
  config = data.get("config") if isinstance(data, dict) else None
  lengths = config.get("task_feature_lengths") if isinstance(config, dict) else None
  if not isinstance(lengths, dict) or not all(
      isinstance(v, int) and v > 0 for v in lengths.values()) or not lengths:
    raise UserError(f"{path}: not an `xltransfer plan` JSON: config.task_feature_lengths must "
                    f"map features to positive lengths, got {lengths!r}")
  gin_files = config.get("gin_files", [])
  return Plan(path=path,
              machine=_field(data, path, ("target", "name"), str),
              device=_field(data, path, ("target", "device"), str),
              num_devices=_field(data, path, ("target", "num_devices"), int),
              peak_flops=_field(data, path, ("target", "peak_flops"), float),
              model_size=_field(data, path, ("config", "model_size"), str),
              model_kind=_field(data, path, ("config", "model_kind"), str),
              batch_size=_field(data, path, ("config", "batch_size"), int),
              lengths=dict(lengths),
              model_flops_per_step=_field(data, path, ("flops", "model_flops_per_step"), float),
              gin_files=tuple(gin_files) if isinstance(gin_files, list) else ())


def _same_file(planned: str, staged: str) -> bool:
  """A plan records resolved paths, a stage the paths as the spec names them."""
  planned, staged = os.path.normpath(planned), os.path.normpath(staged)
  return planned == staged or planned.endswith(os.sep + staged.lstrip(os.sep))


def check_model(plan: Plan, spec) -> None:
  """The plan must be of the model the study's stages train."""
  if spec.model_gin_file:
    if plan.gin_files and not any(_same_file(f, spec.model_gin_file) for f in plan.gin_files):
      raise UserError(f"{plan.path}: planned with {', '.join(plan.gin_files)}, not the study's "
                      f"model {spec.model_gin_file} (StudySpec.model_gin_file)")
  elif plan.model_size != spec.model_size:
    raise UserError(f"{plan.path}: a plan of mT5 {plan.model_size}, but the study trains mT5 "
                    f"{spec.model_size} (StudySpec.model_size); plan it with "
                    f"--gin_file={spec.model_gin()}")


def parse_plan_flags(values: Sequence[str]) -> List[Tuple[Optional[str], str]]:
  """`--plan PATH` -> (None, PATH); `--plan KIND=PATH` -> (KIND, PATH), in the order given."""
  plans: List[Tuple[Optional[str], str]] = []
  for value in values:
    kind, sep, path = value.partition("=")
    if not sep or "/" in kind or "." in kind:  # a path (that may hold "=")
      kind, path = None, value
    elif kind not in TRAINING_KINDS:
      raise UserError(f"--plan {value}: {kind!r} is not a training stage kind; use --plan "
                      f"PLAN.json or --plan KIND=PLAN.json, KIND one of "
                      f"{', '.join(TRAINING_KINDS)}")
    if (kind, path) in plans:
      raise UserError(f"--plan {value} is given twice")
    plans.append((kind, path))
  return plans


def check_mfu(mfu: float) -> float:
  if not 0 < mfu <= 1:
    raise UserError(f"--mfu is a fraction of the chips' peak FLOP/s in (0, 1], got {mfu}")
  return mfu


def cost_lines(stages, spec=None, plan_flags: Sequence[Tuple[Optional[str], str]] = (),
               mfu: Optional[float] = None) -> List[str]:
  """The `# ...` lines a dry run prints: stages and steps by kind, then device time (`mfu`
  None: DEFAULT_MFU)."""
  if mfu is not None and not plan_flags:
    raise UserError("--mfu is the utilisation a --plan estimate assumes: add --plan PLAN.json")
  rows = grid.stage_counts(stages)
  lines = [f"# {len(stages)} stages: " + ", ".join(f"{n} {role}" for role, n, _, _ in rows)]
  trained = [(role, steps, examples) for role, _, steps, examples in rows if steps]
  if trained:
    lines.append(f"# training: {sum(s for _, s, _ in trained):,} steps in all ("
                 + ", ".join(f"{role} {steps:,}" for role, steps, _ in trained)
                 + f"); {sum(e for _, _, e in trained):,} training examples (steps x batch)")
  for role, _, steps, _ in rows:
    measured = [t for s in stages if s.role == role
                for t in [grid.measured_seconds_per_step(s)] if t is not None]
    if steps and measured:
      per_step = sorted(measured)[len(measured) // 2]
      lines.append(f"# {role}: {per_step:.3g} s/step measured on the {len(measured)} stage(s) "
                   f"that ran here -> about {per_step * steps / 3600:,.1f} hours for all "
                   f"{role} stages on the same machine")
  if plan_flags:
    lines += _plan_lines(stages, spec, plan_flags, DEFAULT_MFU if mfu is None else mfu)
  return lines


def _covered(plan: Plan, stage) -> int:
  """How many of the stage's gin files, after the model's (check_model compared it), the plan
  was made with."""
  return sum(any(_same_file(p, f) for p in plan.gin_files) for f in stage.gin_files[1:])


def _plan_lines(stages, spec, plan_flags, mfu) -> List[str]:
  check_mfu(mfu)
  offered = [(kind, load_plan(path)) for kind, path in plan_flags]
  for kind, plan in offered:
    check_model(plan, spec)
    if kind is not None and not any(s.role == kind for s in stages):
      raise UserError(f"--plan {kind}={plan.path}: the study has no {kind} stages")
  lines, total, used = [], 0.0, set()
  for kind in TRAINING_KINDS:
    of_kind = [s for s in stages if s.role == kind]
    candidates = ([p for k, p in offered if k == kind] or [p for k, p in offered if k is None])
    if not of_kind or not candidates:
      continue
    by_plan: Dict[str, list] = {}
    for stage in of_kind:
      # max keeps the first of equals: the order the plans were given breaks ties.
      chosen = max(candidates, key=lambda plan, stage=stage: _covered(plan, stage))
      by_plan.setdefault(chosen.path, []).append(stage)
    for plan in candidates:
      if plan.path in by_plan:
        used.add(plan.path)
        hours, group_lines = _group_lines(kind, plan, by_plan[plan.path], len(of_kind), mfu)
        total += hours
        lines += group_lines
  for _, plan in offered:
    if plan.path not in used:
      lines.append(f"# note: no stage took plan {plan.path} (a plan for their kind, or one "
                   "made with more of their gin files, came first)")
  if total:
    lines.append(f"# planned training: {total:,.1f} device-hours in all; eval stages are not "
                 "estimated (a plan covers training steps)")
  return lines


def _group_lines(kind, plan, group, kind_count, mfu):
  """(device-hours, lines) of the stages of one kind that took `plan`."""
  seconds, steps, batches = 0.0, 0, set()
  for stage in group:
    bound = dict(stage.bindings)
    stage_steps, batch = int(bound[grid.TRAIN_STEPS]), int(bound[grid.BATCH_SIZE])
    batches.add(batch)
    steps += stage_steps
    seconds += stage_steps * plan.step_seconds(batch, mfu)
  device_hours = seconds * plan.num_devices / 3600
  share = "" if len(group) == kind_count else f" ({len(group)} of {kind_count} stages)"
  scaled = ("" if batches == {plan.batch_size} else
            f", scaled linearly from its batch {plan.batch_size} to the stages' "
            + ", ".join(str(b) for b in sorted(batches)))
  per_step = seconds / steps if steps else 0.0
  lines = [f"# {kind}{share}: {plan.describe()}",
           f"#   {plan.model_flops_per_step:.3g} model FLOPs/step{scaled}; at an assumed "
           f"{mfu:.0%} MFU (--mfu) {per_step:.3g} s/step -> {device_hours:,.1f} device-hours "
           f"for {steps:,} steps ({plan.num_devices} devices x {seconds / 3600:,.2f} h); a "
           "FLOPs estimate, not a measurement"]
  unplanned: Dict[str, int] = {}
  for stage in group:
    for gin_file in stage.gin_files[1:]:
      if not any(_same_file(p, gin_file) for p in plan.gin_files):
        unplanned[gin_file] = unplanned.get(gin_file, 0) + 1
  if plan.gin_files and unplanned:
    lines.append("#   note: the plan was made without " + ", ".join(
        f"{name} ({n} of these {len(group)} stages load it)"
        for name, n in sorted(unplanned.items()))
                 + f"; its lengths ({', '.join(map(str, plan.lengths.values()))}) and model "
                 f"kind ({plan.model_kind}) may not be theirs")
  return device_hours, lines
