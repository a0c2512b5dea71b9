"""The study spec: a gin file that binds `StudySpec`, the one description of a study.

A spec names the model, the initial checkpoint, the intermediate conditions (seqio mixture or
task names, plus "none" for the baseline), the XTREME-R targets, seeds, steps and batch sizes
per stage, languages, data dirs and the gin files that the train/eval stages load. Everything
else (the stage grid, commands, report) is derived from it.

    StudySpec.name = "lowres_demo"
    StudySpec.conditions = ["none", "xlt_inter_mnli"]
    StudySpec.targets = ["xnli"]
    ...

`load_spec(path, bindings)` parses the file (plus `--gin.StudySpec.X=...` style bindings) and
returns a validated, frozen `StudySpec`; `StudySpec.to_dict`/`from_dict` round-trip it through
the study directory's `study.json`, so `study status/report DIR` need no spec file.
"""
import dataclasses
import os
import re
from typing import Optional

import gin

from xltransfer import gin_utils
from xltransfer.data import languages as language_sets
from xltransfer.data.paths import TARGET_SOURCES
from xltransfer.errors import ConfigError

BASELINE = "none"
TARGETS = tuple(language_sets.TARGET_LANGUAGES)
# Targets scored from encoder representations; they are also evaluated straight from the
# intermediate checkpoint, as the XTREME-R paper does.
RETRIEVAL_TARGETS = ("tatoeba", "mewslix", "lareqa")
# Targets without English training data: evaluated only from the intermediate checkpoint.
EVAL_ONLY_TARGETS = ("tatoeba",)
# XTREME-R's XCOPA baseline fine-tunes on Social IQa first, then on COPA from that checkpoint.
SIQA_TARGET = "xcopa"
MODEL_SIZES = ("tiny", "small", "base", "large", "xl", "xxl")
# The report's language groups (xltransfer.data.languages says how they were chosen).
LANGUAGE_GROUPS = {"low-resource": language_sets.LOW_RESOURCE_LANGUAGES,
                   "high-resource": language_sets.HIGH_RESOURCE_LANGUAGES}
MULTIPLE_COMPARISON_METHODS = ("holm", "bh")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@gin.configurable("StudySpec")
@dataclasses.dataclass(frozen=True)
class StudySpec:
  """Everything that defines one study; gin binds it as `StudySpec.FIELD = value`."""
  name: str
  model_size: str
  initial_checkpoint: str
  conditions: tuple
  targets: tuple = TARGETS
  seeds: tuple = (0,)
  # Where the stage directories, study.json and the report go.
  output_dir: str = ""
  # The conditions the report compares every other condition against.
  baseline_condition: str = BASELINE
  english_condition: Optional[str] = None
  # The research question's contrast, reported first and tested as a family of its own: each
  # of primary_conditions (empty: every condition but the baseline and the reference) against
  # primary_reference (None: english_condition) on the primary_languages group of target
  # languages, and the difference of differences (that group's delta minus the other group's).
  primary_conditions: tuple = ()
  primary_reference: Optional[str] = None
  primary_languages: str = "low-resource"
  # Multiplicity control within each family of tests: "holm" (family-wise error rate) or
  # "bh" (Benjamini-Hochberg false discovery rate), at significance_level.
  multiple_comparisons: str = "holm"
  significance_level: float = 0.05
  # A sentence shown at the top of the report (e.g. that a demo is not the scientific answer).
  note: str = ""
  # Display names for conditions in tables and plots (default: the mixture name).
  condition_labels: dict = dataclasses.field(default_factory=dict)
  intermediate_steps: int = 1000
  intermediate_batch_size: int = 128
  finetune_steps: int = 1000
  finetune_batch_size: int = 128
  # Per-target overrides of finetune_steps (e.g. fewer steps for small training sets).
  finetune_steps_per_target: dict = dataclasses.field(default_factory=dict)
  # XCOPA's first fine-tuning stage, on Social IQa (batch finetune_batch_size); COPA then
  # fine-tunes from its checkpoint. 0 leaves it out: COPA alone, not the XTREME-R recipe.
  siqa_steps: int = 1000
  # Evaluation languages; empty means every official language of each target.
  languages: tuple = ()
  # Passed to every eval stage as SPLIT when set ("test" or "validation"; gin/eval/zeroshot.gin
  # reads test, and validation for tasks without a test split).
  eval_split: Optional[str] = None
  # Data directories, passed to every stage as `xtreme_data_dir.path` / `user_data_dir.path`
  # / `original_data_dir.path` (the labelled original releases, docs/tasks.md).
  xtreme_data_dir: Optional[str] = None
  user_data_dir: Optional[str] = None
  original_data_dir: Optional[str] = None
  # Where eval stages read XTREME-R eval data, passed as `target_source.value`: "original"
  # (labelled releases), "tfds", or "files" (the XTREME-R download, whose test gold is hidden:
  # its eval stages fail, as a study never scores data without gold). None: the stages'
  # default ($XLTRANSFER_TARGET_SOURCE, else "files").
  target_source: Optional[str] = None
  # Restore the Adafactor state and step of a T5X initial checkpoint (T5X's fine-tuning
  # default). Off in a study: the baseline fine-tunes from the released checkpoint while the
  # other conditions fine-tune from their own intermediate checkpoints (parameters only), so
  # restoring the state in the baseline alone would make the optimizer differ by condition.
  restore_optimizer_state: bool = False
  # The model's gin file, first in every stage; default models/mt5_{model_size}.gin.
  model_gin_file: Optional[str] = None
  # Gin files (paths as given, else under the repository's gin/): train_gin_files go to every
  # training stage (run recipe, mesh), then
  # intermediate_ or finetune_gin_files; eval_gin_files to every eval stage;
  # target_gin_files[TARGET] to that target's fine-tuning and eval stages (e.g. dual encoder).
  train_gin_files: tuple = ()
  intermediate_gin_files: tuple = ()
  finetune_gin_files: tuple = ()
  eval_gin_files: tuple = ()
  target_gin_files: dict = dataclasses.field(default_factory=dict)
  # Extra `NAME=VALUE` gin bindings for every training / eval stage.
  train_bindings: tuple = ()
  eval_bindings: tuple = ()
  # How a stage's checkpoint is named for the next stage: {model_dir} and {steps} expand.
  checkpoint_template: str = "{model_dir}"
  # The user's modules registering tasks or mixtures the conditions name (module names, or
  # .py paths): `study run` imports them to check the names, and every stage gets them as
  # `--module` (also `study run --module`).
  task_modules: tuple = ()

  def __post_init__(self):
    # gin hands over lists; freeze them so a spec is hashable and compares by value.
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, list):
        object.__setattr__(self, field.name, tuple(value))
      elif isinstance(value, dict):
        object.__setattr__(self, field.name, {
            k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})

  def label(self, condition: str) -> str:
    if condition in self.condition_labels:
      return self.condition_labels[condition]
    return "baseline (none)" if condition == BASELINE else condition

  def primary_pairs(self) -> list:
    """(condition, reference) of every primary contrast; empty without a reference."""
    reference = self.primary_reference or self.english_condition
    if reference is None:
      return []
    conditions = self.primary_conditions or [
        c for c in self.conditions if c not in (self.baseline_condition, reference)]
    return [(c, reference) for c in conditions if c != reference]

  def model_gin(self) -> str:
    return self.model_gin_file or f"models/mt5_{self.model_size}.gin"

  def languages_for(self, target: str) -> tuple:
    """The target's official languages, restricted to `languages` when that is set."""
    official = language_sets.TARGET_LANGUAGES[target]
    if not self.languages:
      return official
    return tuple(lang for lang in official if lang in self.languages)

  def steps_for(self, target: str) -> int:
    return int(self.finetune_steps_per_target.get(target, self.finetune_steps))

  def has_finetuning(self, target: str) -> bool:
    return target not in EVAL_ONLY_TARGETS

  def has_siqa_stage(self, target: str) -> bool:
    return target == SIQA_TARGET and int(self.siqa_steps) > 0

  def study_dir(self) -> str:
    """output_dir made absolute (remote URLs such as gs://... stay as they are)."""
    if "://" in self.output_dir:
      return self.output_dir
    return os.path.abspath(self.output_dir or os.path.join("studies", self.name))

  def to_dict(self) -> dict:
    return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, data: dict, where: str = "study.json") -> "StudySpec":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ConfigError(f"{where}: unknown StudySpec fields {unknown}")
    try:
      spec = cls(**data)
    except TypeError as e:
      raise ConfigError(f"{where}: incomplete StudySpec: {str(e).splitlines()[0]}") from None
    validate(spec, where)
    return spec


def _plain(value):
  if isinstance(value, tuple):
    return [_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value


def validate(spec: StudySpec, where: str) -> None:
  """Raises ConfigError naming the spec file and the key for anything the grid cannot use."""
  def fail(key, message):
    raise ConfigError(f"{where}: StudySpec.{key}: {message}")

  if not _SAFE_NAME.match(spec.name):
    fail("name", f"{spec.name!r} must be letters, digits, '_', '.', '+' or '-'")
  if not spec.conditions:
    fail("conditions", "list at least one condition (mixture name or 'none')")
  for condition in spec.conditions:
    if not isinstance(condition, str) or not _SAFE_NAME.match(condition):
      fail("conditions", f"{condition!r} is not a seqio mixture/task name or 'none'")
  if len(set(spec.conditions)) != len(spec.conditions):
    fail("conditions", "a condition is listed twice")
  if spec.baseline_condition not in spec.conditions:
    fail("baseline_condition", f"{spec.baseline_condition!r} is not one of the conditions")
  if spec.english_condition is not None and spec.english_condition not in spec.conditions:
    fail("english_condition", f"{spec.english_condition!r} is not one of the conditions")
  for condition in spec.primary_conditions:
    if condition not in spec.conditions:
      fail("primary_conditions", f"{condition!r} is not one of the conditions")
  if spec.primary_reference is not None and spec.primary_reference not in spec.conditions:
    fail("primary_reference", f"{spec.primary_reference!r} is not one of the conditions")
  if spec.primary_languages not in LANGUAGE_GROUPS:
    fail("primary_languages", f"{spec.primary_languages!r}; valid: {' '.join(LANGUAGE_GROUPS)}")
  if spec.multiple_comparisons not in MULTIPLE_COMPARISON_METHODS:
    fail("multiple_comparisons", f"{spec.multiple_comparisons!r}; valid: "
                                 f"{' '.join(MULTIPLE_COMPARISON_METHODS)}")
  if (isinstance(spec.significance_level, bool)
      or not isinstance(spec.significance_level, (int, float))
      or not 0 < spec.significance_level < 0.5):
    fail("significance_level", f"{spec.significance_level!r} must be a number in (0, 0.5)")
  if not spec.targets:
    fail("targets", f"list at least one of {' '.join(TARGETS)}")
  for target in spec.targets:
    if target not in TARGETS:
      fail("targets", f"unknown target {target!r}; valid: {' '.join(TARGETS)}")
  for target in list(spec.target_gin_files) + list(spec.finetune_steps_per_target):
    if target not in TARGETS:
      fail("target_gin_files/finetune_steps_per_target",
           f"unknown target {target!r}; valid: {' '.join(TARGETS)}")
  if spec.target_source is not None and spec.target_source not in TARGET_SOURCES:
    fail("target_source", f"{spec.target_source!r}; valid: {' '.join(TARGET_SOURCES)}")
  if not isinstance(spec.restore_optimizer_state, bool):
    fail("restore_optimizer_state", f"{spec.restore_optimizer_state!r} is not True or False")
  if not spec.seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                               for s in spec.seeds):
    fail("seeds", "list one or more integer seeds")
  if len(set(spec.seeds)) != len(spec.seeds):
    fail("seeds", "a seed is listed twice")
  for lang in spec.languages:
    language_sets.check_language(lang, language_sets.XTREME_R_LANGUAGES,
                                 f"{where}: StudySpec.languages")
  for target in spec.targets:
    if not spec.languages_for(target):
      fail("languages", f"none of {list(spec.languages)} is an official {target} language "
                        f"({' '.join(language_sets.TARGET_LANGUAGES[target])})")
  for key in ("intermediate_steps", "intermediate_batch_size", "finetune_steps",
              "finetune_batch_size"):
    if int(getattr(spec, key)) <= 0:
      fail(key, "must be a positive integer")
  if (not isinstance(spec.siqa_steps, int) or isinstance(spec.siqa_steps, bool)
      or spec.siqa_steps < 0):
    fail("siqa_steps", f"{spec.siqa_steps!r} must be a positive integer, or 0 to fine-tune "
                       "XCOPA on COPA alone")
  for key in ("train_bindings", "eval_bindings"):
    for binding in getattr(spec, key):
      if "=" not in binding:
        fail(key, f"{binding!r} is not of the form NAME=VALUE")
  if spec.model_size not in MODEL_SIZES and not spec.model_gin_file:
    fail("model_size", f"{spec.model_size!r} is not one of {' '.join(MODEL_SIZES)}; set "
                       "StudySpec.model_gin_file for another model")
  if "{model_dir}" not in spec.checkpoint_template:
    fail("checkpoint_template", "must contain {model_dir}")


def gin_files(spec: StudySpec) -> list:
  """(field, path) of every gin file the stages load."""
  files = [("model_gin_file", spec.model_gin())]
  for key in ("train_gin_files", "intermediate_gin_files", "finetune_gin_files",
              "eval_gin_files"):
    files += [(key, path) for path in getattr(spec, key)]
  for target, paths in spec.target_gin_files.items():
    files += [(f"target_gin_files[{target!r}]", path) for path in paths]
  return files


def check_gin_files(spec: StudySpec, where: str) -> None:
  """Every gin file exists as given or among the bundled configs (as the trainer finds it)."""
  for key, path in gin_files(spec):
    if not gin_utils.exists(path):
      raise ConfigError(f"{where}: StudySpec.{key}: gin file {path} not found (looked in the "
                        f"current directory and {gin_utils.config_dir()})")


def load_spec(path: str, bindings=()) -> StudySpec:
  """Parses a spec gin file plus extra bindings ("StudySpec.seeds=[0]") into a StudySpec."""
  if not os.path.isfile(path):
    raise ConfigError(f"study spec {path} does not exist")
  gin.clear_config()
  # Specs may `include` a sibling spec and override a few fields (the mt5_small variant).
  gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
  try:
    with gin_utils.quiet_include_probes():
      gin.parse_config_files_and_bindings([path], list(bindings), finalize_config=False)
    spec = StudySpec()
  except TypeError as e:
    missing = re.search(r"arguments: \[(.*?)\]", str(e))
    keys = missing.group(1) if missing else str(e).splitlines()[0]
    raise ConfigError(f"{path}: the spec does not bind StudySpec fields {keys}") from None
  except (ValueError, SyntaxError, IOError) as e:
    message = " ".join(str(e).split())
    raise ConfigError(f"{path}: cannot parse the study spec: {message}") from None
  finally:
    gin.clear_config()
  validate(spec, path)
  # Stages may run from another directory (or rerun from one): make local paths absolute.
  return dataclasses.replace(spec, task_modules=module_paths(spec.task_modules), **{
      key: _absolute(getattr(spec, key))
      for key in ("initial_checkpoint", "xtreme_data_dir", "user_data_dir",
                  "original_data_dir")})


def module_paths(modules) -> tuple:
  """Task modules as stages elsewhere can import them: `.py` paths made absolute."""
  return tuple(_absolute(m) if m.endswith(".py") or os.sep in m else m for m in modules)


def _absolute(path):
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))
