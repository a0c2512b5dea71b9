"""benchmarks/gpu_step.py (issue 17's GPU benchmark): its --tiny run on this CPU, with
TensorFlow, seqio and TFDS hidden as on the GPU machine, and the pieces it is built from."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import hidden_packages

from xltransfer.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")
_SPEC = importlib.util.spec_from_file_location("gpu_step", os.path.join(BENCHMARKS, "gpu_step.py"))
gpu_step = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_step)
_PROFILE_SPEC = importlib.util.spec_from_file_location(
    "xla_profile", os.path.join(BENCHMARKS, "xla_profile.py"))
xla_profile = importlib.util.module_from_spec(_PROFILE_SPEC)
_PROFILE_SPEC.loader.exec_module(xla_profile)

# A sitecustomize that hides TensorFlow, tfds and seqio from the benchmark's interpreter.
_HIDE = hidden_packages.PRELUDE


def _positive(value):
  return value is not None and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_run_writes_every_figure_without_tensorflow(tmp_path):
  hide = tmp_path / "hide"
  hide.mkdir()
  (hide / "sitecustomize.py").write_text(_HIDE)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join(filter(None, [str(hide), REPO,
                                                      os.environ.get("PYTHONPATH")])))
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu_step.py"), "--tiny",
                         "--out", str(out)], env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(out / "gpu_step_tiny.json") as f:
    result = json.load(f)
  meta = result["meta"]
  assert {"tensorflow", "seqio", "tensorflow_datasets"} <= set(meta["blocked_or_missing"])
  assert meta["platform"] == "cpu" and meta["num_devices"] >= 1
  assert _positive(meta["peak_bf16_flops_per_device"])
  assert meta["settings"]["num_microbatches"] == 2 and meta["tiny"]

  record = result["sizes"]["tiny"]
  assert record["errors"] == {}
  ours = record["xltransfer"]
  tokens = meta["shapes"]["batch"] * (meta["shapes"]["inputs"] + meta["shapes"]["targets"])
  assert ours["tokens_per_step"] == tokens
  for key in ("step_seconds", "tokens_per_second", "mfu", "model_flops_per_step",
              "compiled_cost_flops_per_step", "compile_seconds"):
    assert _positive(ours[key]), key
  assert ours["tokens_per_second"] == pytest.approx(tokens / ours["step_seconds"])
  assert ours["mfu"] == pytest.approx(ours["model_flops_per_step"] / (
      ours["step_seconds"] * meta["peak_bf16_flops_per_device"] * meta["num_devices"]))
  assert ours["finite"] and len(ours["losses"]) == meta["steps"] + meta["warmup"]
  assert ours["config"]["scan_layers"] and ours["config"]["dtype"] == "bfloat16"
  # Scanned layers and microbatches: XLA's count of the compiled step is far below the model's.
  assert ours["compiled_cost_flops_per_step"] < ours["model_flops_per_step"]
  predicted = ours["plan_predicted"]
  assert _positive(predicted["peak_bytes"]) and predicted["alias_bytes"] > 0  # state donated
  # On a CPU the "XLA:CPU estimate" compiles the same program with the same compiler.
  assert record["xla_cpu_estimate"]["peak_bytes"] == predicted["peak_bytes"]
  # The unrolled cost analysis agrees with planning/flops.py's count (elementwise work aside).
  check = record["cost_check"]
  assert _positive(check["cost_over_model"]) and 0.9 < check["cost_over_model"] < 1.3

  theirs = record["hf"]
  for key in ("step_seconds", "tokens_per_second", "mfu"):
    assert _positive(theirs[key]), key
  assert theirs["finite"] and theirs["gradient_checkpointing"]
  for side in ("xltransfer_decode", "hf_decode"):
    assert _positive(record[side]["tokens_per_second"]) and record[side]["every_row_full"]
  assert _positive(record["summary"]["train_tokens_per_second_ratio"])
  assert _positive(record["summary"]["decode_tokens_per_second_ratio"])
  assert "tokens/s" in proc.stdout and "MFU" in proc.stdout


def _gin(path, text):
  path.write_text(text)
  return str(path)


def test_scale_settings_come_from_the_gin_files(tmp_path):
  node = _gin(tmp_path / "node.gin", "include 'x.gin'\n"
              "xltransfer.model.mt5_config.overrides = "
              "{'scan_layers': True, 'remat_policy': 'full'}\n"
              "xltransfer.train.train.num_microbatches = 4\n")
  base = _gin(tmp_path / "base.gin", "TASK_FEATURE_LENGTHS = {'inputs': 1024, 'targets': 128}\n")
  settings = gpu_step.scale_settings(node, base)
  assert (settings["scan_layers"], settings["remat_policy"], settings["num_microbatches"],
          settings["inputs"], settings["targets"]) == (True, "full", 4, 1024, 128)
  # The repository's own files parse.
  assert gpu_step.scale_settings()["remat_policy"] in ("none", "minimal", "full")


@pytest.mark.parametrize("node_text, base_text, message", [
    ("xltransfer.train.train.num_microbatches = 4\n",
     "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}\n", "mt5_config.overrides"),
    ("xltransfer.model.mt5_config.overrides = {'scan_layers': True}\n"
     "xltransfer.train.train.num_microbatches = 4\n",
     "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}\n", "remat_policy"),
    ("xltransfer.model.mt5_config.overrides = {'remat_policy': 'full'}\n"
     "xltransfer.train.train.num_microbatches = %MICRO\n",
     "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}\n", "not a Python literal"),
    ("xltransfer.model.mt5_config.overrides = {'remat_policy': 'full'}\n"
     "xltransfer.train.train.num_microbatches = 4\n",
     "TASK_FEATURE_LENGTHS = {'inputs': 8}\n", "TASK_FEATURE_LENGTHS"),
])
def test_scale_settings_errors_name_the_file_and_key(tmp_path, node_text, base_text, message):
  node = _gin(tmp_path / "node.gin", node_text)
  base = _gin(tmp_path / "base.gin", base_text)
  with pytest.raises(ConfigError, match=message) as error:
    gpu_step.scale_settings(node, base)
  assert str(tmp_path) in str(error.value)


def test_batch_must_split_into_the_microbatches():
  with pytest.raises(ConfigError, match="--batch 3 is not a multiple of the 2 microbatches"):
    gpu_step.main(["--tiny", "--batch", "3", "--plan_flags"])


def test_unknown_part_to_skip_is_refused(capsys):
  with pytest.raises(SystemExit):
    gpu_step.main(["--tiny", "--skip", "xltransfer,warp_drive"])
  assert "warp_drive" in capsys.readouterr().err


def test_peak_flops_by_device_kind():
  assert gpu_step.peak_bf16_flops("NVIDIA H200")[0] == 989e12
  assert gpu_step.peak_bf16_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
  assert gpu_step.peak_bf16_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
  assert gpu_step.peak_bf16_flops("cpu")[0] > 0
  peak, why = gpu_step.peak_bf16_flops("Some Future GPU")
  assert peak is None and "--peak_flops" in why
  # As the planner: an H100 PCIe (756 TFLOP/s) is not taken for the SXM part.
  assert gpu_step.peak_bf16_flops("NVIDIA H100 PCIe")[0] is None


def test_synthetic_batch_is_packed_without_padding():
  batch = gpu_step.synthetic_packed_batch(0, batch=3, inputs=16, targets=8, vocab_size=100,
                                          segments=4)
  assert set(batch) == set(gpu_step.packed_model_features(16, 8))
  for name, length in gpu_step.packed_model_features(16, 8).items():
    assert batch[name].shape == (3, length) and batch[name].dtype == np.int32, name
  assert np.all(batch["encoder_input_tokens"] > 0) and np.all(batch["decoder_target_tokens"] > 0)
  segments, positions = batch["decoder_segment_ids"][0], batch["decoder_positions"][0]
  assert list(segments) == [1, 1, 2, 2, 3, 3, 4, 4] and list(positions) == [0, 1] * 4
  assert list(batch["encoder_segment_ids"][0]) == [s for s in (1, 2, 3, 4) for _ in range(4)]
  targets, inputs = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
  starts = positions == 0
  assert np.all(inputs[:, starts] == 0)
  assert np.array_equal(inputs[:, 1:][:, ~starts[1:]], targets[:, :-1][:, ~starts[1:]])
  ends = np.append(starts[1:], True)
  assert np.all(targets[:, ends] == gpu_step.EOS_ID)


@pytest.mark.slow
def test_packed_features_are_seqios():
  import seqio  # pylint: disable=import-outside-toplevel
  lengths = seqio.EncDecFeatureConverter(pack=True).get_model_feature_lengths(
      {"inputs": 32, "targets": 16})
  assert dict(lengths) == gpu_step.packed_model_features(32, 16)


def test_predicted_peak_is_plans_formula():
  memory = types.SimpleNamespace(argument_size_in_bytes=100, output_size_in_bytes=90,
                                 alias_size_in_bytes=80, temp_size_in_bytes=50,
                                 generated_code_size_in_bytes=5)
  assert gpu_step.predicted_peak_bytes(memory)["peak_bytes"] == 100 + 90 - 80 + 50 + 5
  memory.peak_memory_in_bytes = 1000
  assert gpu_step.predicted_peak_bytes(memory)["peak_bytes"] == 1000
  assert gpu_step.predicted_peak_bytes(None)["peak_bytes"] is None


def test_plan_flags_compile_the_same_config(capsys):
  assert gpu_step.main(["--sizes", "xl", "--batch", "8", "--inputs", "64", "--targets", "16",
                        "--num_microbatches", "2", "--remat", "minimal", "--plan_flags"]) == 0
  flags = capsys.readouterr().out.split("\n")
  assert "--gin_file=models/mt5_xl.gin" in flags and "--gin.BATCH_SIZE=8" in flags
  assert "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}" in flags
  assert "--gin.xltransfer.train.train.num_microbatches=2" in flags
  overrides = [f for f in flags if f.startswith("--gin.xltransfer.model.mt5_config.overrides=")]
  assert "'remat_policy': 'minimal'" in overrides[0] and "'dtype': 'bfloat16'" in overrides[0]
  assert os.path.isfile(os.path.join(REPO, "gin", "models", "mt5_xl.gin"))


@pytest.mark.slow
def test_device_check_script_runs_end_to_end_with_tiny_shapes(tmp_path):
  # The one prepared script a GPU session runs, in its CPU mode: every step, a variant of the
  # remat/microbatch sweep, and the summary; a bash slip would otherwise show first on the GPU,
  # in the few minutes a session has there.
  out = tmp_path / "out"
  # No wheels and no PYTHONPATH, as in a clean clone (the script then uses what is installed).
  (tmp_path / "no_wheels").mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(DEVICE_CHECK_TINY="1", DEVICE_CHECK_PLAN="0", OUT=str(out),
             DEVICE_CHECK_VARIANTS="1:minimal", DEVICE_CHECK_PROFILE="2:full",
             PYTHON=sys.executable,
             DEVICE_CHECK_WHEELS=str(tmp_path / "no_wheels"),
             DEVICE_CHECK_SITE=str(tmp_path / "site"))
  proc = subprocess.run(["bash", os.path.join(BENCHMARKS, "device_check.sh")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  log = (out / "device_check.log").read_text()
  assert "[device_check] exit 0" in log and "no wheels in" in log
  for path in (out / "gpu_step_tiny.json", out / "variant_1_minimal" / "gpu_step_tiny.json"):
    figures = json.loads(path.read_text())["sizes"]["tiny"]
    assert figures["errors"] == {} and figures["xltransfer"]["finite"], path
  variant = json.loads((out / "variant_1_minimal" / "gpu_step_tiny.json").read_text())
  assert variant["sizes"]["tiny"]["xltransfer"]["config"]["remat_policy"] == "minimal"
  assert variant["sizes"]["tiny"]["xltransfer"]["config"]["num_microbatches"] == 1
  # The profile comes back flat enough for the device tool (two folders down at most), and
  # reads back here into categories that hold the step's instructions.
  profile = out / "profile" / "tiny"
  assert sorted(p.name for p in profile.iterdir()) == [
      "calls", "step.hlo.txt.gz", "summary.json", "trace.xplane.pb.gz"]
  # Nothing else: the device tool brings back 8 files at most (the GPU writes no summary).
  assert sorted(p.name for p in (out / "profile").iterdir()) == ["tiny"]
  summary = json.loads((profile / "summary.json").read_text())
  assert summary["calls"] == 2 and _positive(summary["traced_seconds_per_call"])
  assert {"attention", "output layer + loss", "optimizer"} <= set(summary["categories"])
  assert all(_positive(v) for v in summary["categories"].values())
  assert all(row["category"] == xla_profile.category(row["op_name"]) for row in summary["top"])


def test_profile_names_each_instruction_by_its_op_or_its_fusions_root():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def loss(w, x):
    with jax.named_scope("Transformer.decode/decoder/logits_dense"):
      logits = jnp.dot(x, w)
    return jnp.sum(jnp.exp(logits - 1.0) * 2.0)
  text = jax.jit(jax.grad(loss)).lower(jnp.ones((4, 8)), jnp.ones((2, 4))).compile().as_text()
  known = xla_profile.instruction_metadata(text)
  fusions = {name: op for name, (_, op) in known.items() if "fusion" in name}
  assert fusions and all(fusions.values()), fusions  # each fusion named, if only by its root
  assert any("logits_dense" in op for _, op in known.values())
  assert xla_profile.category("jit(_step)/transpose(jvp(Transformer))/Transformer.decode/decoder/"
                              "logits_dense/dot_general") == "output layer + loss"
  assert xla_profile.category("jit(_step)/jvp()/reduce_sum") == "output layer + loss"
  assert xla_profile.category("jit(_step)/jvp(Transformer)/Transformer.encode/encoder/layers_0/"
                              "attention/dot_general") == "attention"
  assert xla_profile.category("jit(_step)/jvp(Transformer)/Transformer.encode/encoder/layers_0/"
                              "mlp/wi_0/dot_general") == "other matmuls"
  assert xla_profile.category("jit(_step)/rsqrt") == "optimizer"
  assert xla_profile.category("jit(_step)/jvp(Transformer)/Transformer.encode/encoder/"
                              "layers_0/pre_attention_layer_norm/mul") == "other"


def test_profile_reads_gpu_kernels_by_their_hlo_op_stat(tmp_path):
  """A GPU trace as XLA's GPU profiler writes it (XPlane, tsl/profiler/protobuf/xplane.proto):
  kernels on a /device:GPU:N plane named by the kernel, their instruction in the `hlo_op` stat,
  inline or interned; the host's launch events, with the same instruction names, do not count.
  No GPU trace can be recorded here, so the structure is built from the proto's definition."""
  import gzip  # pylint: disable=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  space = xplane_pb2.XSpace()
  gpu = space.planes.add(name="/device:GPU:0")
  gpu.event_metadata[1].name = "sm90_xmma_gemm_bf16"
  gpu.event_metadata[2].name = "loop_add_fusion_kernel"
  gpu.stat_metadata[10].name = "hlo_op"
  gpu.stat_metadata[11].name = "dot.7"  # an interned string value
  stream = gpu.lines.add(name="Stream #1", timestamp_ns=1000)
  for start, length, kernel, inline in ((0, 300, 1, None), (400, 300, 1, None),
                                        (800, 100, 2, "add.3")):
    event = stream.events.add(metadata_id=kernel, offset_ps=start * 1000,
                              duration_ps=length * 1000)
    stat = event.stats.add(metadata_id=10)
    if inline:
      stat.str_value = inline
    else:
      stat.ref_value = 11
  host = space.planes.add(name="/host:CPU")
  host.event_metadata[1].name = "dot.7"
  host.lines.add(name="launch", timestamp_ns=0).events.add(metadata_id=1, offset_ps=0,
                                                            duration_ps=10 ** 9)
  hlo = ('ENTRY %main {\n'
         '  %dot.7 = f32[4,4]{1,0} dot(%a, %b), metadata={op_name="jit(_step)/jvp(Transformer)/'
         'Transformer.decode/decoder/logits_dense/dot_general"}\n'
         '  ROOT %add.3 = f32[4,4]{1,0} add(%dot.7, %c), metadata={op_name="jit(_step)/add"}\n}\n')
  with gzip.open(tmp_path / xla_profile.TRACE, "wb") as f:
    f.write(space.SerializeToString())
  with gzip.open(tmp_path / xla_profile.HLO, "wt") as f:
    f.write(hlo)
  (tmp_path / "calls").write_text("2\n")
  summary = xla_profile.summarise(str(tmp_path))
  assert summary["categories"] == pytest.approx(
      {"output layer + loss": 600e-9 / 2, "optimizer": 100e-9 / 2})
  assert [row["instruction"] for row in summary["top"]] == ["dot.7", "add.3"]
  assert summary["traced_seconds_per_call"] == pytest.approx(900e-9 / 2)
