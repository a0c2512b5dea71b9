"""`xltransfer plan` end to end: the tiny model compiled for a real TPU topology (libtpu's
compiler, no TPU needed) and for an 8-device fake CPU mesh, and a config that cannot fit.

Each plan runs the real command, which compiles in a worker process set up for its target.
Short sequences keep each compile to seconds.
"""
import contextlib
import io
import json
import pathlib

import pytest

from xltransfer.commands import plan as plan_cli
from xltransfer.errors import UserError

TINY = ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]
TWO_D = ["--gin.xltransfer.partitioning.logical_axis_rules.preset='2d'"]


def _plan(capsys, *args):
  status = plan_cli.main([*TINY, *args, "--json"])
  out = capsys.readouterr().out
  return status, (json.loads(out) if out.strip() else None)


def _params_per_device_matches_total_over_shards(plan):
  state = plan["state"]
  total, per_device = state["total_bytes"]["params"], state["per_device_bytes"]["params"]
  expected = total / plan["target"]["num_devices"]
  assert abs(per_device - expected) <= 0.05 * expected, (per_device, expected)


@pytest.fixture(scope="module")
def cpu_plan():
  # Module scope (one compile for several tests), so stdout is captured by hand.
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    status = plan_cli.main([*TINY, *TWO_D, "--topology", "cpu:8", "--gin.BATCH_SIZE=16",
                            "--gin.xltransfer.partitioning.create_mesh.model=4", "--json"])
  return status, json.loads(buffer.getvalue())


@pytest.mark.slow
def test_fake_cpu_mesh_plan_fits(cpu_plan):
  status, plan = cpu_plan
  assert status == plan_cli.EXIT_FITS and plan["fits"]
  assert plan["target"]["num_devices"] == 8
  assert plan["config"]["mesh"] == {"data": 2, "model": 4}
  assert set(plan["steps"]) == {"train_step", "inference_step"}


def test_fake_cpu_mesh_shards_params_over_all_devices(cpu_plan):
  _params_per_device_matches_total_over_shards(cpu_plan[1])


def test_fake_cpu_mesh_reports_memory_flops_and_shardings(cpu_plan):
  plan = cpu_plan[1]
  train = plan["steps"]["train_step"]
  state_per_device = sum(plan["state"]["per_device_bytes"].values())
  # The compiled step takes the sharded state (plus the batch) and donates it.
  assert train["argument_bytes"] >= state_per_device
  assert train["alias_bytes"] >= plan["state"]["per_device_bytes"]["params"]
  assert train["peak_bytes"] >= train["argument_bytes"]
  assert train["compiler_flops"] > 0
  # XLA's count of an unscanned model is the same order as the analytic model FLOPs.
  flops = plan["flops"]
  assert 0.5 < flops["compiler_flops_per_step"] / flops["model_flops_per_step"] < 5
  assert flops["ceiling_tokens_per_second"] > 0
  largest = plan["state"]["largest_arrays"][0]
  assert largest["path"] in (".params['decoder']['logits_dense']['kernel']",
                             ".params['token_embedder']['embedding']")
  assert sorted(largest["mesh_axes"]) == ["data", "model"]


def test_plan_of_a_model_whose_gin_file_does_not_import_the_vocabulary_module(
    capsys, tmp_path, monkeypatch):
  # The released sizes' gin files (models/mt5_{small,...,xxl}.gin) do not import
  # xltransfer.data.vocab, which registers a gin configurable; the vocabulary check imported it
  # after the parse had locked gin, and every such plan ended in a RuntimeError. The fake-device
  # target compiles in a fresh worker process, where nothing has imported it yet.
  tiny = pathlib.Path(__file__).resolve().parents[1] / "gin" / "models" / "mt5_tiny.gin"
  lines = [line for line in open(tiny, encoding="utf-8")
           if "xltransfer.data.vocab" not in line]
  assert len(lines) == len(open(tiny, encoding="utf-8").readlines()) - 2
  (tmp_path / "model.gin").write_text("".join(lines), encoding="utf-8")
  monkeypatch.setenv("XLTRANSFER_VOCAB", "builtin")  # What the removed binding chose.
  status = plan_cli.main([f"--gin_file={tmp_path / 'model.gin'}", *TINY[1:], "--topology",
                          "cpu:2", "--skip_inference", "--json"])
  captured = capsys.readouterr()
  assert status == plan_cli.EXIT_FITS, captured.err[-2000:]
  assert json.loads(captured.out)["fits"]


@pytest.mark.slow
def test_real_tpu_topology_plan(capsys):
  status, plan = _plan(capsys, *TWO_D, "--topology", "v5e:2x2", "--gin.BATCH_SIZE=8",
                       "--gin.xltransfer.partitioning.create_mesh.model=2", "--skip_inference")
  assert status == plan_cli.EXIT_FITS, plan
  assert plan["target"]["device_kind"] == "TPU v5 lite"
  assert plan["target"]["compiler"] == "libtpu (XLA:TPU)"
  assert plan["steps"]["train_step"]["peak_bytes"] > 0
  _params_per_device_matches_total_over_shards(plan)


@pytest.mark.slow
def test_config_that_cannot_fit_on_tpu_is_reported(capsys):
  # 2^20 rows: the logits alone need far more than a v5e chip's 16 GiB.
  status, plan = _plan(capsys, "--topology", "v5e:2x2", "--gin.BATCH_SIZE=1048576",
                       "--skip_inference")
  assert status == plan_cli.EXIT_DOES_NOT_FIT
  assert not plan["fits"] and plan["verdict"].startswith("DOES NOT FIT")
  assert "RESOURCE_EXHAUSTED" in plan["steps"]["train_step"]["out_of_memory"]


@pytest.mark.slow
def test_peak_above_device_memory_does_not_fit_text_report(capsys):
  status = plan_cli.main([*TINY, "--topology", "cpu:2", "--hbm_gib=0.001", "--skip_inference"])
  out = capsys.readouterr().out
  assert status == plan_cli.EXIT_DOES_NOT_FIT
  for needle in ("train_step", "arguments", "temporaries", "peak", "headroom",
                 "FLOPs per train step", "ceiling at 100% MFU", "largest arrays",
                 "verdict: DOES NOT FIT: train_step: peak"):
    assert needle in out


@pytest.mark.slow
def test_mesh_that_does_not_divide_the_devices_is_a_config_error(capsys):
  status = plan_cli.main([*TINY, "--topology", "cpu:2", "--skip_inference",
                          "--gin.xltransfer.partitioning.create_mesh.model=3"])
  assert status == plan_cli.EXIT_CONFIG_ERROR


def test_unknown_topology_is_a_user_error():
  with pytest.raises(UserError, match="known: v4, v5e"):
    plan_cli.main([*TINY, "--topology", "v9:2x2"])


@pytest.mark.slow
def test_mesh_that_does_not_fit_the_tpu_torus_names_the_gin_key(capfd):
  # 8-way model parallelism on a 4x4 torus: 8 is not a product of its axis sizes.
  status = plan_cli.main([*TINY, "--topology", "v5e:4x4", "--skip_inference",
                          "--gin.xltransfer.partitioning.create_mesh.model=8"])
  err = capfd.readouterr().err
  assert status == plan_cli.EXIT_CONFIG_ERROR
  assert "mesh (data 2, model 8) cannot be laid out on the 4x4 TPU torus of these 16" in err
  assert "change xltransfer.partitioning.create_mesh.model (now 8)" in err
