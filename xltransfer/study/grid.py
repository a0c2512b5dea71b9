"""Expands a StudySpec into stages and their dependency graph.

Per seed and condition:
  train/COND/seedS                  intermediate training from the initial checkpoint
  prefinetune/COND/seedS/xcopa      XCOPA only: Social IQa fine-tuning from that checkpoint
                                    (XTREME-R's baseline; StudySpec.siqa_steps, 0 = none)
  finetune/COND/seedS/TARGET        English fine-tuning from that checkpoint (per target;
                                    XCOPA's COPA run starts from the prefinetune checkpoint)
  eval/COND/seedS/TARGET            zero-shot eval of the fine-tuned model on every language
  direct/COND/seedS/TARGET          retrieval targets only: eval of the intermediate checkpoint
The baseline ("none") has no intermediate stage: it fine-tunes from the initial checkpoint,
and its direct retrieval evals do not depend on the seed (`direct/none/TARGET`, run once).

A stage's directory is STUDY_DIR/ID; training stages use it as MODEL_DIR, eval stages as the
eval output directory. Stages carry gin files and (macro, value) bindings, so the same stage
renders as command-line overrides or as a per-stage gin file (see runner.py).
"""
import ast
import dataclasses
import json
import os
from typing import Optional

from xltransfer.errors import UserError
from xltransfer.study import spec as spec_lib

# Gin macros the stages bind. Only macros a stage's gin files use may be bound: the trainer
# rejects a macro that nothing uses. Train: the T5X names of docs/interfaces.md plus
# RANDOM_SEED (gin/runs/finetune.gin). Eval (gin/eval/zeroshot.gin, which `xltransfer eval`
# adds itself): CHECKPOINT_PATH, EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME, and SPLIT when the
# spec sets eval_split; and EvalSettings.require_gold: a study never scores data without gold,
# so an eval stage whose data has none fails, naming the file, and its cells stay empty.
MODEL_DIR = "MODEL_DIR"
MIXTURE = "MIXTURE_OR_TASK_NAME"
INITIAL_CHECKPOINT = "INITIAL_CHECKPOINT_PATH"
TRAIN_STEPS = "TRAIN_STEPS"
BATCH_SIZE = "BATCH_SIZE"
RANDOM_SEED = "RANDOM_SEED"
CHECKPOINT_PATH = "CHECKPOINT_PATH"
EVAL_OUTPUT_DIR = "EVAL_OUTPUT_DIR"
SPLIT = "SPLIT"
REQUIRE_GOLD = "xltransfer.evaluation.EvalSettings.require_gold"
TARGET_SOURCE_BINDING = "target_source.value"
ORIGINAL_DATA_BINDING = "original_data_dir.path"
# Training stages always bind it (StudySpec.restore_optimizer_state says why it is off).
RESTORE_OPTIMIZER_STATE = "xltransfer.train.train.restore_optimizer_state"

ROLES = ("intermediate", "prefinetune", "finetune", "eval", "direct")
STUDY_FILE = "study.json"

# What the prefinetune stage trains on, and the file that task reads under the XTREME-R data
# dir (tasks/targets.py, SIQA_FILES["train"]): `study run` checks it up front.
SIQA_MIXTURE = "xlt_xcopa_siqa_train"
SIQA_TRAIN_FILE = ("siqa", "socialIQa_v1.4_trn.jsonl")
XTREME_DATA_BINDING = "xtreme_data_dir.path"
XTREME_DATA_ENV_VAR = "XTREME_DATA_DIR"


def train_mixture(target: str) -> str:
  return f"xlt_{target}_train"


def eval_tasks(spec, target: str) -> str:
  """What an eval stage evaluates: the target's zero-shot mixture (every official language),
  or, when the spec restricts languages, its per-language eval tasks, comma-separated."""
  if not spec.languages:
    return f"xlt_{target}_zeroshot"
  return ",".join(f"xlt_{target}_eval_{lang}" for lang in spec.languages_for(target))


@dataclasses.dataclass(frozen=True)
class Stage:
  """One `xltransfer train` or `xltransfer eval` invocation."""
  id: str
  command: str  # "train" or "eval": the xltransfer subcommand
  role: str  # one of ROLES
  condition: str
  seed: Optional[int]
  target: Optional[str]
  stage_dir: str
  gin_files: tuple
  bindings: tuple  # ((macro or configurable.param, python value), ...)
  raw_bindings: tuple  # ("NAME=VALUE", ...) from the spec, passed through verbatim
  deps: tuple  # ids of the stages whose outputs this one reads
  modules: tuple = ()  # the user's task modules the command imports (--module)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["bindings"] = [[k, v] for k, v in self.bindings]
    for key in ("gin_files", "raw_bindings", "deps", "modules"):
      d[key] = list(d[key])
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "Stage":
    d = dict(d)
    d["bindings"] = tuple((k, _freeze(v)) for k, v in d["bindings"])
    d.setdefault("modules", ())  # study files written before stages had modules
    for key in ("gin_files", "raw_bindings", "deps", "modules"):
      d[key] = tuple(d[key])
    return cls(**d)


def _freeze(value):
  return tuple(value) if isinstance(value, list) else value


def _common_bindings(spec) -> list:
  bindings = []
  if spec.xtreme_data_dir:
    bindings.append((XTREME_DATA_BINDING, spec.xtreme_data_dir))
  if spec.user_data_dir:
    bindings.append(("user_data_dir.path", spec.user_data_dir))
  if spec.original_data_dir:
    bindings.append((ORIGINAL_DATA_BINDING, spec.original_data_dir))
  return bindings


def checkpoint_of(spec, stage_dir: str, steps: int) -> str:
  return spec.checkpoint_template.format(model_dir=stage_dir, steps=steps)


def build_stages(spec: spec_lib.StudySpec, study_dir: Optional[str] = None) -> list:
  """All stages of the study, each after the stages it depends on."""
  study_dir = study_dir or spec.study_dir()
  stages = []

  def path(stage_id):
    return os.path.join(study_dir, *stage_id.split("/"))

  def train_stage(stage_id, role, condition, seed, target, mixture, init, steps, batch,
                  gin_files, deps):
    stage_dir = path(stage_id)
    bindings = [(MODEL_DIR, stage_dir), (MIXTURE, mixture), (INITIAL_CHECKPOINT, init),
                (TRAIN_STEPS, int(steps)), (BATCH_SIZE, int(batch)), (RANDOM_SEED, int(seed)),
                (RESTORE_OPTIMIZER_STATE, bool(spec.restore_optimizer_state))]
    stages.append(Stage(
        stage_id, "train", role, condition, seed, target, stage_dir,
        (spec.model_gin(),) + tuple(spec.train_gin_files) + tuple(gin_files),
        tuple(bindings + _common_bindings(spec)), tuple(spec.train_bindings), tuple(deps),
        tuple(spec.task_modules)))
    return checkpoint_of(spec, stage_dir, steps)

  def eval_stage(stage_id, role, condition, seed, target, checkpoint, deps):
    stage_dir = path(stage_id)
    bindings = [(CHECKPOINT_PATH, checkpoint), (EVAL_OUTPUT_DIR, stage_dir),
                (MIXTURE, eval_tasks(spec, target)), (REQUIRE_GOLD, True)]
    if spec.target_source:
      bindings.append((TARGET_SOURCE_BINDING, spec.target_source))
    if spec.eval_split:
      bindings.append((SPLIT, spec.eval_split))
    stages.append(Stage(
        stage_id, "eval", role, condition, seed, target, stage_dir,
        (spec.model_gin(),) + tuple(spec.eval_gin_files)
        + tuple(spec.target_gin_files.get(target, ())),
        tuple(bindings + _common_bindings(spec)), tuple(spec.eval_bindings), tuple(deps),
        tuple(spec.task_modules)))

  retrieval = [t for t in spec.targets if t in spec_lib.RETRIEVAL_TARGETS]
  if spec.baseline_condition == spec_lib.BASELINE:
    # The initial checkpoint's representations do not depend on a seed: evaluate them once.
    for target in retrieval:
      eval_stage(f"direct/{spec_lib.BASELINE}/{target}", "direct", spec_lib.BASELINE, None,
                 target, spec.initial_checkpoint, ())

  for seed in spec.seeds:
    for condition in spec.conditions:
      if condition == spec_lib.BASELINE:
        start, start_deps = spec.initial_checkpoint, ()
      else:
        train_id = f"train/{condition}/seed{seed}"
        start = train_stage(train_id, "intermediate", condition, seed, None, condition,
                            spec.initial_checkpoint, spec.intermediate_steps,
                            spec.intermediate_batch_size, spec.intermediate_gin_files, ())
        start_deps = (train_id,)
        for target in retrieval:
          eval_stage(f"direct/{condition}/seed{seed}/{target}", "direct", condition, seed,
                     target, start, start_deps)
      for target in spec.targets:
        if not spec.has_finetuning(target):
          continue
        finetune_gin = (tuple(spec.finetune_gin_files)
                        + tuple(spec.target_gin_files.get(target, ())))
        init, init_deps = start, start_deps
        if spec.has_siqa_stage(target):
          siqa_id = f"prefinetune/{condition}/seed{seed}/{target}"
          init = train_stage(siqa_id, "prefinetune", condition, seed, target, SIQA_MIXTURE,
                             start, spec.siqa_steps, spec.finetune_batch_size, finetune_gin,
                             start_deps)
          init_deps = (siqa_id,)
        finetune_id = f"finetune/{condition}/seed{seed}/{target}"
        checkpoint = train_stage(
            finetune_id, "finetune", condition, seed, target, train_mixture(target), init,
            spec.steps_for(target), spec.finetune_batch_size, finetune_gin, init_deps)
        eval_stage(f"eval/{condition}/seed{seed}/{target}", "eval", condition, seed, target,
                   checkpoint, (finetune_id,))
  return stages


def xtreme_data_dir(stage, environ=None):
  """The XTREME-R data dir a training stage reads: the last `xtreme_data_dir.path` binding
  (the spec's, then its train_bindings), else $XTREME_DATA_DIR in the runner's environment
  (the stages inherit it). "" when none is set; None when a binding is not a plain string
  (a macro), which only gin can resolve."""
  environ = os.environ if environ is None else environ
  value = dict(stage.bindings).get(XTREME_DATA_BINDING)
  for binding in stage.raw_bindings:
    name, raw = binding.split("=", 1)
    if name.strip() == XTREME_DATA_BINDING:
      try:
        value = ast.literal_eval(raw.strip())
      except (ValueError, SyntaxError):
        return None
      if value is not None and not isinstance(value, str):
        return None
  return value or environ.get(XTREME_DATA_ENV_VAR, "")


# Binding names that change what a stage asks of the devices (its mesh, or how the batch
# splits over it). Stages that differ only in other bindings (seeds, tasks, directories) share
# one device check.
_DEVICE_BINDING_MARKERS = ("create_mesh", "partition", "logical_axis_rules", "BATCH_SIZE")


def device_config(stage) -> tuple:
  """What decides whether a stage's start-up fits the devices: its command, gin files, task
  modules and the bindings that touch the mesh or the batch size."""
  def touches_devices(name):
    return any(marker in name for marker in _DEVICE_BINDING_MARKERS)
  bindings = tuple((k, repr(v)) for k, v in stage.bindings if touches_devices(k))
  raw = tuple(b for b in stage.raw_bindings if touches_devices(b.split("=", 1)[0]))
  return (stage.command, stage.gin_files, stage.modules, bindings, raw)


def dependents(stages, stage_id: str) -> set:
  """Ids of every stage that needs stage_id's output, directly or through others."""
  found, frontier = set(), {stage_id}
  while frontier:
    frontier = {s.id for s in stages if set(s.deps) & frontier} - found
    found |= frontier
  return found


def unknown_mixtures(stages, known) -> dict:
  """{mixture or task name: first stage id} for names the stages use that are not in known."""
  unknown = {}
  for stage in stages:
    for name in dict(stage.bindings)[MIXTURE].split(","):
      if name not in known:
        unknown.setdefault(name, stage.id)
  return unknown


def write_study_file(path: str, spec, stages, study_dir: str) -> None:
  """study.json: the resolved spec and stage list that `study status/report` read."""
  data = {"spec": spec.to_dict(), "study_dir": study_dir,
          "stages": [s.to_dict() for s in stages]}
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1)
  os.replace(tmp, path)


def read_study_file(directory: str):
  """(spec, stages, study_dir) from DIR/study.json, written by `study run` or `--emit`."""
  path = os.path.join(directory, STUDY_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: pass a directory that `xltransfer study run` "
                    "wrote (the spec's output_dir) or that `--emit` wrote")
  try:
    with open(path) as f:
      data = json.load(f)
    spec = spec_lib.StudySpec.from_dict(data["spec"], path)
    stages = [Stage.from_dict(s) for s in data["stages"]]
    return spec, stages, data["study_dir"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"{path}: not a study file ({e})") from None


def stage_counts(stages) -> list:
  """[(role, stages, training steps, training examples)] in ROLES order: what a study costs
  before any device time is known (steps as the stages bind TRAIN_STEPS, examples as steps
  times BATCH_SIZE)."""
  rows = []
  for role in ROLES:
    of_role = [s for s in stages if s.role == role]
    if not of_role:
      continue
    steps = examples = 0
    for stage in of_role:
      bound = dict(stage.bindings)
      steps += int(bound.get(TRAIN_STEPS, 0))
      examples += int(bound.get(TRAIN_STEPS, 0)) * int(bound.get(BATCH_SIZE, 0))
    rows.append((role, len(of_role), steps, examples))
  return rows


TRAIN_METRICS_FILE = "train_metrics.jsonl"  # written by xltransfer/train/summaries.py


def measured_seconds_per_step(stage) -> Optional[float]:
  """Median seconds per step over the records of a training stage that has run (its
  train_metrics.jsonl, whose steps_per_second excludes compilation after the first record),
  None when it has not."""
  path = os.path.join(stage.stage_dir, TRAIN_METRICS_FILE)
  if stage.command != "train" or not os.path.isfile(path):
    return None
  rates = []
  with open(path) as f:
    for line in f:
      try:
        rate = json.loads(line).get("steps_per_second")
      except (ValueError, AttributeError):
        continue  # a torn last line of a killed run
      if isinstance(rate, (int, float)) and rate > 0:
        rates.append(1.0 / rate)
  if len(rates) > 1:
    rates = rates[1:]  # the first record's steps include compilation
  return sorted(rates)[len(rates) // 2] if rates else None

