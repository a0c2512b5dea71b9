"""Which tasks an evaluation runs, and how each is evaluated: read from the task catalogue.

Each seqio task named (or each non-`_train` task of a named mixture) becomes an `EvalTask`:
its way of evaluating, and the family and language its outputs are filed under
(predictions/{target}/{lang}.jsonl, metrics.json's {target: {lang: ...}}), all as the catalogue
says (`xltransfer.tasks.catalog.evaluation_of`): the `xlt_` tasks declare them when they are
registered, a user's task through `catalog.declare_evaluation`. A task that declares nothing
(one registered with seqio.TaskRegistry.add alone) is evaluated by generation and scored by its
own metric_fns, filed under its own name with language DEFAULT_LANGUAGE ("all":
predictions/{task name}/all.jsonl).
"""
import dataclasses
import difflib
from typing import List, Sequence, Union

import seqio

# Imported here, not when first used: it registers gin configurables, which gin refuses once
# the config is parsed; importing xltransfer.tasks registers the xlt_ tasks.
import xltransfer.tasks  # pylint: disable=unused-import
from xltransfer.errors import ConfigError
from xltransfer.tasks import catalog

# The language of a task that declares none: its predictions are predictions/{task}/all.jsonl.
DEFAULT_LANGUAGE = "all"


@dataclasses.dataclass(frozen=True)
class EvalTask:
  name: str    # the seqio task
  target: str  # the declared family (XTREME-R task key: xnli, ...), else the task name
  lang: str    # the declared language, else DEFAULT_LANGUAGE
  evaluation: str = catalog.GENERATION  # one of catalog.EVALUATIONS


def eval_task(task_name: str) -> EvalTask:
  """The EvalTask of one registered seqio task, as the catalogue declares it."""
  declared = catalog.evaluation_of(task_name)
  if declared is None:
    return EvalTask(task_name, task_name, DEFAULT_LANGUAGE, catalog.GENERATION)
  return EvalTask(task_name, declared.family or task_name, declared.language or DEFAULT_LANGUAGE,
                  declared.evaluation)


def _split_names(mixture_or_task_names: Union[str, Sequence[str]]) -> List[str]:
  if isinstance(mixture_or_task_names, str):
    mixture_or_task_names = mixture_or_task_names.split(",")
  return [n.strip() for n in mixture_or_task_names if n.strip()]


def resolve_tasks(mixture_or_task_names: Union[str, Sequence[str]]) -> List[EvalTask]:
  """Eval tasks of the given task and mixture names (comma-separated or a list).

  Mixtures contribute their tasks except the `_train` ones. Unknown names raise ConfigError,
  and so do two tasks that would write the same predictions file.
  """
  names = _split_names(mixture_or_task_names)
  if not names:
    raise ConfigError("no task or mixture to evaluate (MIXTURE_OR_TASK_NAME is empty)")
  task_names: List[str] = []
  for name in names:
    if name in seqio.MixtureRegistry.names():
      task_names += [t.name for t in seqio.get_mixture_or_task(name).tasks
                     if not t.name.endswith("_train")]
    elif name in seqio.TaskRegistry.names():
      task_names.append(name)
    else:
      known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
      close = difflib.get_close_matches(name, known, n=5)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"unknown task or mixture {name!r}{hint} (`xltransfer tasks list` shows "
                        "the registered ones)")
  tasks, seen = [], {}
  for name in dict.fromkeys(task_names):
    task = eval_task(name)
    key = (task.target, task.lang)
    if key in seen:
      raise ConfigError(f"tasks {seen[key]} and {name} both write "
                        f"predictions/{task.target}/{task.lang}.jsonl; evaluate them separately")
    seen[key] = name
    tasks.append(task)
  return tasks


def pick_split(task: seqio.Task, preferred: str) -> str:
  splits = tuple(task.splits)
  if preferred in splits:
    return preferred
  if "validation" in splits:
    return "validation"
  if not splits:
    raise ConfigError(f"task {task.name} has no splits")
  return splits[0]
