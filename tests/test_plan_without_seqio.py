"""`xltransfer plan --topology local` where TensorFlow, seqio and TFDS are not installed (issue
17's GPU machine), and what it needs for that:

- the batch's features stated as plain data (`feature_converters.model_feature_lengths`),
  checked here against what seqio's converters make of a dataset, for each converter kind;
- the local device's chip found by its jax `device_kind` (fake devices stand in for GPUs);
- the whole command in a fresh interpreter whose path finder cannot see those packages.
"""
import json
import logging
import os
import subprocess
import sys

import pytest

import hidden_packages

from xltransfer.errors import ConfigError
from xltransfer.planning import machines
from xltransfer.planning import plan as plan_lib
from xltransfer.train import feature_converters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = hidden_packages.HIDDEN
LENGTHS = {"inputs": 12, "targets": 5}


# ---- the batch's features without seqio ----

@pytest.mark.slow  # TensorFlow's import, in the first case
@pytest.mark.parametrize("name,pack", [(feature_converters.ENC_DEC, True),
                                       (feature_converters.ENC_DEC, False),
                                       (feature_converters.DUAL_ENCODER, False)])
def test_plain_features_are_what_the_seqio_converter_makes(name, pack):
  tf = pytest.importorskip("tensorflow")
  examples = [{"inputs": [3, 4, 5, 1], "targets": [6, 1]},
              {"inputs": [7, 8, 1], "targets": [9, 10, 1]}]
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  converter = feature_converters.make(name, pack)
  converted = converter(dataset, LENGTHS)
  made = {k: (tuple(spec.shape), spec.dtype.name) for k, spec in converted.element_spec.items()}
  plain = feature_converters.model_feature_lengths(name, pack, LENGTHS)
  assert made == {k: ((length,), "int32") for k, length in plain.items()}
  assert plain == dict(converter.get_model_feature_lengths(LENGTHS))
  # Its examples have those shapes (not only the declared spec); packing joins both in a row.
  for example in converted.as_numpy_iterator():
    assert {k: (v.shape, v.dtype.name) for k, v in example.items()} == made


def test_plain_features_refuse_what_the_converters_refuse():
  with pytest.raises(ConfigError, match="cannot be packed"):
    feature_converters.model_feature_lengths(feature_converters.DUAL_ENCODER, True, LENGTHS)
  with pytest.raises(ConfigError, match="TASK_FEATURE_LENGTHS"):
    feature_converters.model_feature_lengths(feature_converters.ENC_DEC, True, {"inputs": 8})
  with pytest.raises(ConfigError, match="feature_converter 'seq2seq'"):
    feature_converters.model_feature_lengths("seq2seq", False, LENGTHS)


# ---- the local device's chip ----

class _FakeDevice:
  def __init__(self, device_kind, stats=None, platform="gpu"):
    self.device_kind, self.platform, self._stats = device_kind, platform, stats

  def memory_stats(self):
    if isinstance(self._stats, Exception):
      raise self._stats
    return self._stats


def _local(device, count=1):
  return plan_lib._local_target(machines.parse_machine("local"), [device] * count)  # pylint: disable=protected-access


@pytest.mark.parametrize("device_kind,chip", [("NVIDIA H100 80GB HBM3", "h100"),
                                              ("NVIDIA H200", "h200"),
                                              ("NVIDIA A100-SXM4-80GB", "a100"),
                                              ("NVIDIA A100-PCIE-40GB", "a100-40gb")])
def test_local_gpu_gets_its_chips_peak_and_the_allocators_memory(device_kind, chip):
  limit = 100 * machines.GIB + 12345
  target = _local(_FakeDevice(device_kind, {"bytes_limit": limit, "bytes_in_use": 0}), count=8)
  assert target.chip.peak_flops == machines.CHIPS[chip].peak_flops
  assert target.chip.name == machines.CHIPS[chip].name
  assert target.chip.hbm_bytes == limit
  assert target.num_devices == 8 and device_kind in target.name


def test_h100_and_h200_run_at_the_published_dense_bf16_peak():
  for device_kind in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"):
    assert _local(_FakeDevice(device_kind, {"bytes_limit": 1})).chip.peak_flops == 989e12


def test_local_gpu_without_memory_stats_gets_the_chips_memory():
  for stats in (None, {}, RuntimeError("memory_stats is not supported")):
    target = _local(_FakeDevice("NVIDIA H200", stats))
    assert target.chip.hbm_bytes == machines.CHIPS["h200"].hbm_bytes


def test_unknown_gpu_is_named_and_warned_about(caplog):
  with caplog.at_level(logging.WARNING):
    target = _local(_FakeDevice("NVIDIA H100 PCIe", {"bytes_limit": 60 * machines.GIB}))
  assert target.chip.name == "NVIDIA H100 PCIe" and target.chip.hbm_bytes == 60 * machines.GIB
  assert target.chip.peak_flops == machines.CHIPS["cpu"].peak_flops
  assert "no peak FLOP/s known for device kind 'NVIDIA H100 PCIe'" in caplog.text


def test_local_cpu_keeps_the_nominal_cpu_figures(caplog):
  with caplog.at_level(logging.WARNING):
    target = _local(_FakeDevice("cpu", {}, platform="cpu"))
  assert target.chip.peak_flops == machines.CHIPS["cpu"].peak_flops
  assert target.chip.hbm_bytes == machines.CHIPS["cpu"].hbm_bytes
  assert "no peak FLOP/s" not in caplog.text


def test_h200_is_a_gpu_target():
  target = machines.parse_machine("h200:8")
  assert target.kind == "gpu" and target.num_devices == 8
  assert target.chip.peak_flops == machines.CHIPS["h100"].peak_flops


# ---- the command, with TensorFlow, seqio and TFDS out of sight ----

_CHILD = hidden_packages.PRELUDE + r"""
import json

from xltransfer import cli

status = cli.main(["plan", *sys.argv[1:]])  # as `xltransfer plan` (benchmarks/device_check.sh)
print(json.dumps({"status": status, "refused": refused,
                  "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(HIDDEN))}))
"""


@pytest.mark.slow
def test_plan_local_runs_without_tensorflow_or_seqio(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  output = tmp_path / "plan.json"
  argv = ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--topology", "local",
          "--skip_inference", "--output", str(output)]
  proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], env=env,
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["refused"] == list(BLOCKED) and result["loaded"] == []
  assert result["status"] == 0  # EXIT_FITS
  # The one line saying why the vocabulary was not checked, in the log and in the plan.
  assert "vocabulary check skipped: seqio is not installed" in proc.stderr
  with open(output) as f:
    plan = json.load(f)
  assert any("vocabulary check skipped" in note for note in plan["notes"])
  assert plan["target"]["kind"] == "local" and plan["fits"]
  train = plan["steps"]["train_step"]
  assert train["out_of_memory"] is None and train["peak_bytes"] > 0
  # The train step's memory holds at least the parameters.
  assert 0 < plan["state"]["per_device_bytes"]["params"] <= train["peak_bytes"]
  assert "FITS" in proc.stdout


def test_a_gpu_allocators_limit_below_the_chips_hbm_is_named_in_the_plan():
  # On the device check's H200 (session 9), the allocator's bytes_limit was 112583507968 bytes:
  # jax's default 75% preallocation, the memory `plan` measured headroom against.
  target = _local(_FakeDevice("NVIDIA H200", {"bytes_limit": 112583507968}))
  (note,) = plan_lib._allocator_memory_note(target, "NVIDIA H200")  # pylint: disable=protected-access
  assert "104.85 GiB jax's allocator may use" in note and "XLA_PYTHON_CLIENT_MEM_FRACTION" in note
  assert "chip's 140 GiB" in note
  full = _local(_FakeDevice("NVIDIA H200", None))
  assert plan_lib._allocator_memory_note(full, "NVIDIA H200") == []  # pylint: disable=protected-access
  cpu = _local(_FakeDevice("cpu", {"bytes_limit": 1}, platform="cpu"))
  assert plan_lib._allocator_memory_note(cpu, "cpu") == []  # pylint: disable=protected-access
