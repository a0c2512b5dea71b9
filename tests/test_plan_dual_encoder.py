"""`xltransfer plan` of a dual-encoder run (runs/dual_encoder_finetune.gin) on a 2-device fake
CPU mesh: the train step compiles on (query, candidate) batches, the embedding step replaces
greedy decoding (the model has no decoder) and the report says so."""
import contextlib
import io
import json

import jax
import numpy as np
import pytest

from xltransfer.commands import plan as plan_cli
from xltransfer.model.config import get_config
from xltransfer.model.dual_encoder import DualEncoderModel
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.planning import report

DUAL = ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/dual_encoder_finetune.gin",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.BATCH_SIZE=8",
        "--topology", "cpu:2"]


def _plan(*extra):
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    status = plan_cli.main([*DUAL, *extra, "--json"])
  return status, json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def dual_plan():
  return _plan()


@pytest.mark.slow
def test_dual_encoder_run_compiles_and_fits(dual_plan):
  status, plan = dual_plan
  assert status == plan_cli.EXIT_FITS and plan["fits"], plan["verdict"]
  assert plan["target"]["num_devices"] == 2
  assert plan["config"]["model_kind"] == "dual_encoder"
  assert plan["config"]["feature_converter"] == "dual_encoder"
  assert plan["config"]["pack"] is False
  assert set(plan["steps"]) == {"train_step", "embed_step"}
  for step in plan["steps"].values():
    assert step["out_of_memory"] is None and step["peak_bytes"] > 0


def test_state_has_no_decoder_and_the_step_takes_it(dual_plan):
  plan = dual_plan[1]
  paths = [a["path"] for a in plan["state"]["largest_arrays"]]
  assert paths and not [p for p in paths if "decoder" in p]
  count = lambda model: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.abstract_params()))
  assert plan["state"]["num_parameters"] == count(DualEncoderModel(get_config("tiny")))
  assert plan["state"]["num_parameters"] < count(EncoderDecoderModel(get_config("tiny"))) / 2
  train = plan["steps"]["train_step"]
  assert train["argument_bytes"] >= sum(plan["state"]["per_device_bytes"].values())
  assert train["alias_bytes"] >= plan["state"]["per_device_bytes"]["params"]


def test_flops_count_the_encoder_on_both_sides(dual_plan):
  flops = dual_plan[1]["flops"]
  assert flops["tokens_per_step"] == 8 * (32 + 16)
  # XLA's count of the unscanned encoder is the same order as the analytic count.
  assert 0.5 < flops["compiler_flops_per_step"] / flops["model_flops_per_step"] < 5


def test_report_says_decoding_is_replaced(dual_plan):
  plan = dual_plan[1]
  assert len(plan["notes"]) == 1 and "has no decoder" in plan["notes"][0]
  text = report.format_text(plan)
  assert "dual encoder (token embedding + encoder)" in text
  assert "queries 32 / candidates 16" in text
  assert "note: the dual_encoder model has no decoder: greedy decoding is not planned" in text
  assert "embed_step:" in text and "inference_step" not in text


@pytest.mark.slow
def test_skip_inference_compiles_the_train_step_only():
  status, plan = _plan("--skip_inference")
  assert status == plan_cli.EXIT_FITS
  assert set(plan["steps"]) == {"train_step"}
  assert plan["notes"] == ["the dual_encoder model has no decoder: greedy decoding is not "
                           "planned"]
