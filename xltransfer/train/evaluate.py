"""`xltransfer train --run_mode=eval`: teacher-forced loss and accuracy of a checkpoint.

The same numbers the trainer reports every EVAL_PERIOD, for a checkpoint on its own (ours,
T5X or HF, as INITIAL_CHECKPOINT_PATH accepts). Decoding-based metrics belong to
`xltransfer eval`.
"""
import json
import logging
import os
from typing import Any, Dict, Optional

import gin

from xltransfer.partitioning import create_partitioner
from xltransfer.checkpoints import loading
from xltransfer.train import input as input_lib
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.trainer import Trainer


@gin.configurable(module="xltransfer.train")
def evaluate(checkpoint_path: str = gin.REQUIRED, model=gin.REQUIRED,
             dataset: input_lib.DatasetConfig = gin.REQUIRED, output_dir: Optional[str] = None,
             eval_steps: Optional[int] = None, partitioner=None) -> Dict[str, Any]:
  """Evaluates `checkpoint_path` on `dataset`; writes `eval_metrics.json` into output_dir."""
  input_lib._require_registered(dataset.mixture_or_task_name)  # pylint: disable=protected-access
  partitioner = partitioner if partitioner is not None else create_partitioner()
  # The optimizer only shapes the (unused) train state; parameters are all that is loaded.
  optimizer = Adafactor().create(learning_rate_schedule(), model.abstract_params(),
                                 model.param_logical_axes())
  trainer = Trainer(model, optimizer, partitioner)
  params, kind = loading.load_initial_params(checkpoint_path, model,
                                                   trainer.state_shardings.params)
  logging.info("evaluating %s on %s split %r", kind, dataset.mixture_or_task_name, dataset.split)
  batches = input_lib.eval_host_batches(dataset, partitioner, eval_steps)
  metrics = trainer.evaluate(params, batches, dataset.batch_size)
  logging.info("eval: %s", " | ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval_metrics.json"), "w") as f:
      json.dump({"checkpoint": checkpoint_path, "task": dataset.mixture_or_task_name,
                 "split": dataset.split, **metrics}, f, indent=2)
  return {"status": "completed", "metrics": metrics}
