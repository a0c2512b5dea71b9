"""The engine core runs where TensorFlow, seqio and TFDS are not installed (the GPU machine of
issue 17 has jax, flax, optax and orbax but none of those; benchmarks/device_check.sh carries
gin-config as a wheel).

A fresh interpreter whose path finder cannot see those packages imports the model,
partitioning, optimizer, schedules, trainer and orbax checkpointing, trains two steps of the
tiny model with the GPU configs' settings (scan, full remat, microbatches, bf16 activations),
and saves and restores the state through `CheckpointManager`.
"""
import ast
import json
import os
import subprocess
import sys

import pytest

import hidden_packages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = hidden_packages.HIDDEN
# What issue 17's GPU machine has of setup.py's requirements, and what device_check.sh carries.
GPU_IMAGE = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "sentencepiece",
             "msgpack", "numpy"}
CARRIED_WHEELS = {"gin-config"}

_CHILD = hidden_packages.PRELUDE + r"""
import importlib.metadata, json

import jax
import numpy as np

from xltransfer.model import factory  # the gin-configurable constructors
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.partitioning import create_partitioner
from xltransfer.train.checkpointing import CheckpointManager
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.trainer import Trainer

config = get_config("tiny", dtype="bfloat16", scan_layers=True, remat_policy="full")
model = EncoderDecoderModel(config)
optimizer = Adafactor().create(learning_rate_schedule("constant", 1e-3), model.abstract_params(),
                               model.param_logical_axes())
trainer = Trainer(model, optimizer, create_partitioner(), num_microbatches=2)
state = trainer.init_state(0)
rng = np.random.default_rng(0)
losses = []
for _ in range(2):
  targets = rng.integers(2, config.vocab_size, (4, 16), dtype=np.int32)
  batch = {"encoder_input_tokens": rng.integers(2, config.vocab_size, (4, 32), dtype=np.int32),
           "decoder_target_tokens": targets,
           "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0)))}
  state, metrics = trainer.train_step(state, jax.device_put(batch))
  losses.append(float(metrics["loss"]))

manager = CheckpointManager(sys.argv[1], period=1, async_save=False)
manager.save(state, input_position=8, identity={}, force=True)
restored, position = manager.restore(2, trainer.abstract_state, trainer.state_shardings)
manager.close()
same = all(np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)))

# Distributions of the modules imported (namespace packages such as `google` map to several).
imported = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
owners = importlib.metadata.packages_distributions()
distributions = sorted({d for m in imported for d in owners.get(m, ())})
print(json.dumps({"refused": refused, "losses": losses, "step": int(state.step),
                  "restored_step": int(restored.step), "input_position": position,
                  "restored_equal": same, "modules": sorted(imported),
                  "distributions": distributions}))
"""


def _setup_requirements():
  """Distribution names of setup.py's CORE list."""
  with open(os.path.join(REPO, "setup.py")) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CORE" for t in node.targets):
      names = set()
      for requirement in ast.literal_eval(node.value):
        name = requirement
        for stop in "<>=!~[; ":
          name = name.split(stop)[0]
        names.add(name.lower())
      return names
  raise AssertionError("setup.py has no CORE list")


@pytest.mark.slow
def test_engine_core_trains_and_checkpoints_without_tensorflow_or_seqio(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, "-c", _CHILD,
                         str(tmp_path / "checkpoints")],
                        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  # The hook really refused them (so nothing below could have used them).
  assert result["refused"] == list(BLOCKED)
  assert not set(BLOCKED) & set(result["modules"])
  assert len(result["losses"]) == 2 and all(0 < loss < 1e6 for loss in result["losses"])
  assert result["step"] == 2 and result["restored_step"] == 2
  assert result["input_position"] == 8 and result["restored_equal"]
  # Of xltransfer's own requirements, the core needs only what the GPU machine has, plus the
  # wheels device_check.sh carries.
  needed = _setup_requirements() & {d.lower() for d in result["distributions"]}
  assert needed - GPU_IMAGE - CARRIED_WHEELS == set(), needed
  assert "gin-config" in needed  # the reason device_check.sh carries it
  assert "clu" not in needed and "tensorboard" not in needed


def test_device_check_carries_the_wheels_the_core_needs():
  with open(os.path.join(REPO, "benchmarks", "device_check.sh")) as f:
    script = f.read()
  for name in CARRIED_WHEELS:
    assert name in script, f"benchmarks/device_check.sh does not name the {name} wheel"
