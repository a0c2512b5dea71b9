"""`study run --dry_run --plan`: device-hours per training stage kind from `xltransfer plan`
JSON, at a stated MFU; a wrong plan is an error naming its file."""
import json

import pytest

from xltransfer.commands import plan as plan_command
from xltransfer.commands import study as study_command
from xltransfer.errors import UserError
from xltransfer.study import cost

# `plan` parses (and locks) the gin config in this process.
pytestmark = pytest.mark.usefixtures("clean_gin")

# One seed: 1 intermediate stage (1000 steps x 128) and 4 fine-tunings (baseline and mnli x
# xnli, lareqa; tatoeba has none), 1000 steps x 128 each.
SPEC = """
StudySpec.name = "s"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "/ckpt"
StudySpec.conditions = ["none", "xlt_inter_mnli"]
StudySpec.targets = ["xnli", "lareqa", "tatoeba"]
StudySpec.seeds = [0]
"""


def _plan(**changes):
  """The keys of an `xltransfer plan --json` result that the estimate reads."""
  plan = {
      "target": {"name": "v4:2x2x1", "kind": "tpu", "device": "TPU v4", "num_devices": 4,
                 "peak_flops": 275e12},
      "config": {"gin_files": ["/repo/xltransfer/gin/models/mt5_tiny.gin",
                               "/repo/xltransfer/gin/runs/finetune.gin"],
                 "model_size": "tiny", "model_kind": "seq2seq", "batch_size": 64,
                 "task_feature_lengths": {"inputs": 1024, "targets": 256}},
      "flops": {"model_flops_per_step": 1.1e15},
  }
  for key, value in changes.items():
    section, name = key.split("__")
    plan[section][name] = value
  return plan


def _write(tmp_path, name, content):
  path = tmp_path / name
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def _dry_run(tmp_path, capsys, *flags, spec=SPEC):
  spec_path = _write(tmp_path, "spec.gin", spec)
  assert study_command.main(["run", spec_path, "--output_dir", str(tmp_path / "o"),
                             "--dry_run", "--program", "xltransfer", *flags]) == 0
  return [line for line in capsys.readouterr().out.splitlines()
          if line.startswith("# ") and "(after " not in line]


def test_plan_gives_device_hours_per_training_kind(tmp_path, capsys):
  plan = _write(tmp_path, "v4.json", _plan())
  lines = _dry_run(tmp_path, capsys, "--plan", plan)
  # 1.1e15 FLOPs at batch 64 -> 2.2e15 at the stages' 128; 4 x 275 TFLOP/s x 40% = 4.4e14
  # FLOP/s -> 5 s/step. Intermediate: 1000 steps = 5000 s x 4 devices = 5.6 device-hours.
  assert lines[2] == (f"# intermediate: plan {plan}: v4:2x2x1, 4 x TPU v4 at 275 TFLOP/s "
                      "peak; mT5 tiny seq2seq, batch 64, inputs 1024 / targets 256")
  assert lines[3] == ("#   1.1e+15 model FLOPs/step, scaled linearly from its batch 64 to the "
                      "stages' 128; at an assumed 40% MFU (--mfu) 5 s/step -> 5.6 "
                      "device-hours for 1,000 steps (4 devices x 1.39 h); a FLOPs estimate, "
                      "not a measurement")
  assert lines[4].startswith("# finetune: plan ")
  assert "5 s/step -> 22.2 device-hours for 4,000 steps (4 devices x 5.56 h)" in lines[5]
  assert lines[6] == ("# planned training: 27.8 device-hours in all; eval stages are not "
                      "estimated (a plan covers training steps)")
  assert len(lines) == 7  # no note: the plan loads the gin files the stages load


def test_mfu_flag_and_a_plan_per_kind(tmp_path, capsys):
  every = _write(tmp_path, "every.json", _plan())
  finetune = _write(tmp_path, "ft.json", _plan(target__num_devices=8, config__batch_size=128))
  lines = _dry_run(tmp_path, capsys, "--plan", every, "--plan", f"finetune={finetune}",
                   "--mfu", "0.5")
  text = "\n".join(lines)
  # intermediate from every.json: 2.2e15 / (4 x 275e12 x 0.5) = 4 s/step -> 4.4 device-hours.
  assert "50% MFU (--mfu) 4 s/step -> 4.4 device-hours for 1,000 steps" in text
  # finetune from ft.json, same batch: 1.1e15 / (8 x 275e12 x 0.5) = 1 s/step; 4000 steps.
  assert f"# finetune: plan {finetune}: v4:2x2x1, 8 x TPU v4" in text
  assert "1.1e+15 model FLOPs/step; at an assumed 50% MFU (--mfu) 1 s/step -> 8.9 device-hours" \
      " for 4,000 steps (8 devices x 1.11 h)" in text
  assert "# planned training: 13.3 device-hours in all" in text


def test_a_plan_without_the_stages_gin_files_says_so(tmp_path, capsys):
  plan = _write(tmp_path, "p.json", _plan(config__gin_files=["/r/gin/models/mt5_tiny.gin"]))
  spec = SPEC + 'StudySpec.intermediate_gin_files = ["runs/finetune.gin"]\n'
  lines = _dry_run(tmp_path, capsys, "--plan", f"intermediate={plan}", spec=spec)
  assert ("#   note: the plan was made without runs/finetune.gin (1 of these 1 stages load "
          "it); its lengths (1024, 256) and model kind (seq2seq) may not be theirs") in lines
  assert not any(line.startswith("# finetune: plan") for line in lines)


def test_each_stage_takes_the_plan_made_with_its_gin_files(tmp_path, capsys):
  # LAReQA fine-tunes as a dual encoder: its stages take the plan made with that gin file.
  seq2seq = _write(tmp_path, "seq2seq.json", _plan())
  dual = _write(tmp_path, "dual.json", _plan(
      config__gin_files=["/r/gin/models/mt5_tiny.gin", "/r/gin/models/dual_encoder.gin"],
      config__model_kind="dual_encoder", flops__model_flops_per_step=0.55e15))
  unused = _write(tmp_path, "unused.json", _plan())
  spec = SPEC + 'StudySpec.target_gin_files = {"lareqa": ["models/dual_encoder.gin"]}\n'
  lines = _dry_run(tmp_path, capsys, "--plan", seq2seq, "--plan", dual, "--plan", unused,
                   spec=spec)
  assert f"# intermediate: plan {seq2seq}: v4:2x2x1" in lines[2]
  assert lines[4].startswith(f"# finetune (2 of 4 stages): plan {seq2seq}: ")
  assert "5 s/step -> 11.1 device-hours for 2,000 steps" in lines[5]
  assert lines[6].startswith(f"# finetune (2 of 4 stages): plan {dual}: ")
  assert "mT5 tiny dual_encoder" in lines[6]
  assert "2.5 s/step -> 5.6 device-hours for 2,000 steps" in lines[7]
  assert lines[8] == (f"# note: no stage took plan {unused} (a plan for their kind, or one made "
                      "with more of their gin files, came first)")
  assert lines[9].startswith("# planned training: 22.2 device-hours in all")


def test_without_a_plan_the_dry_run_prints_no_device_hours(tmp_path, capsys):
  lines = _dry_run(tmp_path, capsys)
  assert len(lines) == 2 and lines[0].startswith("# 13 stages: ")
  assert "device-hours" not in "\n".join(lines)


@pytest.mark.parametrize("content, message", [
    (None, r"plan file .*missing.json does not exist"),
    ("{not json", r"bad.json: not a JSON plan \(Expecting property name"),
    ([1, 2], r"bad.json: not an `xltransfer plan` JSON: config.task_feature_lengths"),
    ({"config": [1]}, r"bad.json: not an `xltransfer plan` JSON: config.task_feature_lengths"),
    (_plan(flops__model_flops_per_step=0),
     r"bad.json: flops.model_flops_per_step must be a positive number, got 0"),
    ({k: v for k, v in _plan().items() if k != "flops"},
     r"bad.json: not an `xltransfer plan` JSON: no flops.model_flops_per_step"),
    (_plan(config__model_size="xxl"),
     r"bad.json: a plan of mT5 xxl, but the study trains mT5 tiny \(StudySpec.model_size\); "
     r"plan it with --gin_file=models/mt5_tiny.gin"),
])
def test_a_wrong_plan_names_its_file(tmp_path, capsys, content, message):
  path = str(tmp_path / "missing.json") if content is None else _write(tmp_path, "bad.json",
                                                                        content)
  with pytest.raises(UserError, match=message):
    _dry_run(tmp_path, capsys, "--plan", path)
  assert "# train/" not in capsys.readouterr().out  # the error comes before any stage


def test_a_custom_model_gin_must_be_the_plans(tmp_path, capsys):
  plan = _write(tmp_path, "p.json", _plan())
  spec = SPEC + 'StudySpec.model_gin_file = "models/mt5_small.gin"\n'
  with pytest.raises(UserError, match=r"p.json: planned with .*mt5_tiny.gin.*, not the study's "
                                      r"model models/mt5_small.gin \(StudySpec.model_gin_file\)"):
    _dry_run(tmp_path, capsys, "--plan", plan, spec=spec)


@pytest.mark.parametrize("flags, message", [
    (["--plan", "eval=p.json"], r"'eval' is not a training stage kind"),
    (["--plan", "p.json", "--plan", "p.json"], r"--plan .*p.json is given twice"),
    (["--plan", "prefinetune=p.json"], r"prefinetune=.*p.json: the study has no prefinetune"),
    (["--plan", "p.json", "--mfu", "1.5"], r"--mfu is a fraction .* got 1.5"),
    (["--plan", "p.json", "--mfu", "0"], r"--mfu is a fraction .* got 0.0"),
    (["--mfu", "0.5"], r"--mfu is the utilisation a --plan estimate assumes"),
])
def test_bad_plan_flags(tmp_path, capsys, flags, message):
  _write(tmp_path, "p.json", _plan())
  flags = [f.replace("p.json", str(tmp_path / "p.json")) for f in flags]
  with pytest.raises(UserError, match=message):
    _dry_run(tmp_path, capsys, *flags)


def test_plan_without_dry_run_is_refused(tmp_path):
  spec_path = _write(tmp_path, "spec.gin", SPEC)
  with pytest.raises(UserError, match="--plan and --mfu estimate device time for --dry_run"):
    study_command.main(["run", spec_path, "--output_dir", str(tmp_path / "o"),
                        "--plan", _write(tmp_path, "p.json", _plan())])
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_plan_the_planner_wrote(tmp_path, capsys):
  path = str(tmp_path / "plan.json")
  assert plan_command.main(["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
                            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
                            "--gin.BATCH_SIZE=128", "--skip_inference", "--output", path]) == 0
  capsys.readouterr()
  with open(path) as f:
    written = json.load(f)
  plan = cost.load_plan(path)
  seconds = plan.step_seconds(128, cost.DEFAULT_MFU)
  assert seconds == pytest.approx(written["flops"]["model_flops_per_step"] / (
      written["target"]["peak_flops"] * written["target"]["num_devices"] * cost.DEFAULT_MFU))
  lines = _dry_run(tmp_path, capsys, "--plan", path)
  hours = 1000 * seconds * plan.num_devices / 3600
  assert any(f"{seconds:.3g} s/step -> {hours:,.1f} device-hours for 1,000 steps" in line
             for line in lines), lines
  assert not any("note:" in line for line in lines)  # it resolved the stages' gin files
