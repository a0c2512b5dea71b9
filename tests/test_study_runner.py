"""The study runner with stage commands that are real processes (tests/test_study_fake_stage.py
stands in for `xltransfer train/eval`): order, skip on rerun, kill and resume, failures that
block only their dependents, emitted stage files, status."""
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from xltransfer.errors import ConfigError, UserError
from xltransfer.commands import study as study_command
from xltransfer.study import grid, runner
from xltransfer.study import spec as spec_lib

from study_fakes import PROGRAM, executions as _executions, run_study as _run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC = """
StudySpec.name = "small_study"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "{init}"
StudySpec.conditions = ["none", "xlt_inter_mnli", "xlt_span_lowres"]
StudySpec.english_condition = "xlt_inter_mnli"
StudySpec.targets = ["xnli", "tatoeba"]
StudySpec.languages = ["en", "de", "sw"]
StudySpec.seeds = [0]
StudySpec.intermediate_steps = 5
StudySpec.finetune_steps = 3
StudySpec.train_gin_files = ["runs/finetune.gin"]
"""
# none: finetune+eval xnli, direct tatoeba; each other condition: train, finetune, eval, direct.
NUM_STAGES = 3 + 2 * 4


@pytest.fixture
def study(tmp_path, monkeypatch):
  init = tmp_path / "init"
  init.mkdir()
  (init / "DONE").write_text("pretrained\n")
  spec_path = tmp_path / "spec.gin"
  spec_path.write_text(SPEC.format(init=init))
  log = tmp_path / "executions.log"
  monkeypatch.setenv("FAKE_STAGE_LOG", str(log))
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return {"spec": str(spec_path), "dir": str(tmp_path / "out"), "log": log,
          "emit": str(tmp_path / "emit")}


def _stages(study):
  return grid.read_study_file(study["dir"])[1]


def test_runs_every_stage_in_dependency_order_then_skips_on_rerun(study, capsys):
  assert _run(study) == 0
  stages = _stages(study)
  assert len(stages) == NUM_STAGES
  ran = _executions(study["log"])
  assert sorted(ran) == sorted(s.stage_dir for s in stages)
  position = {d: i for i, d in enumerate(ran)}
  for stage in stages:
    for dep in stage.deps:
      dep_dir = next(s.stage_dir for s in stages if s.id == dep)
      assert position[dep_dir] < position[stage.stage_dir]
  # Each stage's log holds its command and output.
  log = open(os.path.join(stages[0].stage_dir, runner.LOG)).read()
  assert "fake" in log and "exit code 0" in log

  assert _run(study) == 0
  assert len(_executions(study["log"])) == NUM_STAGES  # nothing ran again
  assert f"{NUM_STAGES} already done" in capsys.readouterr().out


def _cache_dirs_seen_by_stages(study):
  return {line.split("=", 1)[1] for stage in _stages(study)
          for line in open(os.path.join(stage.stage_dir, runner.LOG)).read().splitlines()
          if line.startswith("JAX_COMPILATION_CACHE_DIR=")}


def test_stages_share_a_compilation_cache_in_the_study_dir(study, monkeypatch):
  # Unset, as on a user's machine (the test session sets one for its own processes).
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  assert _run(study) == 0
  assert _cache_dirs_seen_by_stages(study) == {os.path.join(study["dir"], "jax_cache")}
  assert "JAX_COMPILATION_CACHE_DIR" not in os.environ  # the runner's own environment is as it was


def test_a_users_compilation_cache_setting_is_kept(study, monkeypatch):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the cache turned off
  assert _run(study) == 0
  assert _cache_dirs_seen_by_stages(study) == {""}
  env = runner.stage_environment("/s", {"JAX_COMPILATION_CACHE_DIR": "/mine"})
  assert env["JAX_COMPILATION_CACHE_DIR"] == "/mine"
  assert "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in env
  env = runner.stage_environment("/s", {"PATH": "/bin"})
  assert env == {"PATH": "/bin", "JAX_COMPILATION_CACHE_DIR": os.path.join("/s", "jax_cache"),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.mark.slow
def test_stage_commands_chain_checkpoints(study):
  assert _run(study) == 0
  by_id = {s.id: s for s in _stages(study)}
  finetune = by_id["finetune/xlt_inter_mnli/seed0/xnli"]
  checkpoint = open(os.path.join(finetune.stage_dir, "checkpoint")).read().split("|")
  assert checkpoint[0] == by_id["train/xlt_inter_mnli/seed0"].stage_dir
  assert checkpoint[1:] == ["xlt_xnli_train", "3", "0\n"]
  baseline = open(os.path.join(by_id["finetune/none/seed0/xnli"].stage_dir, "checkpoint")).read()
  assert baseline.startswith(os.path.join(os.path.dirname(study["spec"]), "init") + "|")
  metrics = json.load(open(os.path.join(by_id["direct/xlt_span_lowres/seed0/tatoeba"].stage_dir,
                                        "metrics.json")))
  assert metrics["checkpoint"] == by_id["train/xlt_span_lowres/seed0"].stage_dir


def test_stage_argv_follows_the_trainer_interface(study):
  spec = spec_lib.load_spec(study["spec"])
  stages = {s.id: s for s in grid.build_stages(spec, "/study")}
  argv = runner.stage_argv(stages["finetune/xlt_inter_mnli/seed0/xnli"])
  assert argv[:4] == [sys.executable, "-m", "xltransfer.cli", "train"]
  assert "--gin_file=models/mt5_tiny.gin" in argv and "--gin_file=runs/finetune.gin" in argv
  assert '--gin.MODEL_DIR="/study/finetune/xlt_inter_mnli/seed0/xnli"' in argv
  assert '--gin.MIXTURE_OR_TASK_NAME="xlt_xnli_train"' in argv
  assert '--gin.INITIAL_CHECKPOINT_PATH="/study/train/xlt_inter_mnli/seed0"' in argv
  assert "--gin.TRAIN_STEPS=3" in argv and "--gin.RANDOM_SEED=0" in argv
  eval_argv = runner.stage_argv(stages["eval/xlt_inter_mnli/seed0/xnli"], program=("xltransfer",))
  assert eval_argv[:2] == ["xltransfer", "eval"]
  assert '--gin.CHECKPOINT_PATH="/study/finetune/xlt_inter_mnli/seed0/xnli"' in eval_argv
  assert '--gin.EVAL_OUTPUT_DIR="/study/eval/xlt_inter_mnli/seed0/xnli"' in eval_argv
  # Languages restricted: the per-language eval tasks, comma-separated (xltransfer eval's form).
  assert ('--gin.MIXTURE_OR_TASK_NAME="xlt_xnli_eval_de,xlt_xnli_eval_en,xlt_xnli_eval_sw"'
          in eval_argv)
  # A study never scores data without gold: the eval stage fails instead (issue 18).
  assert "--gin.xltransfer.evaluation.EvalSettings.require_gold=True" in eval_argv
  assert eval_argv[2:3] == ["--gin_file=models/mt5_tiny.gin"] and len(eval_argv) == 7


@pytest.mark.slow
def test_failed_stage_blocks_its_dependents_and_the_rest_go_on(study, monkeypatch, capsys):
  monkeypatch.setenv("FAKE_STAGE_FAIL", "xlt_inter_mnli")
  assert _run(study) == 1
  out = capsys.readouterr().out
  assert "FAILED train/xlt_inter_mnli/seed0" in out
  stages = _stages(study)
  states = runner.study_states(stages)
  assert states["train/xlt_inter_mnli/seed0"] == "failed"
  for stage_id in ("finetune/xlt_inter_mnli/seed0/xnli", "eval/xlt_inter_mnli/seed0/xnli",
                   "direct/xlt_inter_mnli/seed0/tatoeba"):
    assert states[stage_id] == "blocked"
  others = [s.id for s in stages if "xlt_inter_mnli" not in s.id]
  assert others and all(states[i] == "done" for i in others)
  failed = json.load(open(os.path.join(study["dir"], "train/xlt_inter_mnli/seed0",
                                       runner.FAILED_MARKER)))
  assert failed["exit_code"] == 3
  assert "simulated failure" in open(failed["log"]).read()

  assert study_command.main(["status", study["dir"]]) == 0
  status = capsys.readouterr().out
  assert "failed      train/xlt_inter_mnli/seed0" in status and "exit code 3" in status
  assert "blocked     eval/xlt_inter_mnli/seed0/xnli" in status

  # Fixed: the rerun runs only the failed stage and the ones it blocked.
  monkeypatch.delenv("FAKE_STAGE_FAIL")
  before = len(_executions(study["log"]))
  assert _run(study) == 0
  rerun = _executions(study["log"])[before:]
  assert sorted(rerun) == sorted(s.stage_dir for s in stages if "xlt_inter_mnli" in s.id)
  assert set(runner.study_states(stages).values()) == {"done"}


def test_a_stage_that_exits_zero_without_done_counts_as_failed(study, tmp_path):
  script = tmp_path / "no_done.py"
  script.write_text("import sys\nsys.exit(0)\n")
  assert study_command.main(["run", study["spec"], "--output_dir", study["dir"],
                          "--program", f"{sys.executable} {script}"]) == 1
  states = runner.study_states(_stages(study))
  assert states["finetune/none/seed0/xnli"] == "failed"
  reason = json.load(open(os.path.join(study["dir"], "finetune/none/seed0/xnli",
                                       runner.FAILED_MARKER)))["reason"]
  assert "no DONE" in reason


@pytest.mark.slow
def test_killed_runner_resumes_without_redoing_finished_stages(study):
  env = dict(os.environ, FAKE_STAGE_SLEEP="0.4")
  argv = [sys.executable, "-m", "xltransfer.cli", "study", "run", study["spec"],
          "--output_dir", study["dir"], "--program", PROGRAM]
  child = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while len(_executions(study["log"])) < 4 and time.time() < deadline:
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)
  child.wait()
  time.sleep(0.6)  # a stage that outlived the runner would finish within this
  stages = _stages(study)
  states = runner.study_states(stages)
  done_before = {s.stage_dir for s in stages if states[s.id] == "done"}
  assert 2 <= len(done_before) < NUM_STAGES
  # The stage that was running died with the runner and is seen as interrupted.
  assert list(states.values()).count("interrupted") == 1
  assert "running" not in states.values()

  assert _run(study) == 0
  executions = collections.Counter(_executions(study["log"]))
  assert set(executions) == {s.stage_dir for s in stages}
  for stage_dir in done_before:
    assert executions[stage_dir] == 1
  assert sum(executions.values()) == NUM_STAGES + 1  # only the interrupted stage ran twice
  assert set(runner.study_states(stages).values()) == {"done"}


def test_a_second_runner_on_the_same_study_is_refused(study):
  env = dict(os.environ, FAKE_STAGE_SLEEP="2")
  argv = [sys.executable, "-m", "xltransfer.cli", "study", "run", study["spec"],
          "--output_dir", study["dir"], "--program", PROGRAM]
  child = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while not _executions(study["log"]) and time.time() < deadline:
      time.sleep(0.05)
    # Refused, naming the holder (the study dir's lock, xltransfer/run_lock.py).
    with pytest.raises(UserError, match=f"in use by `xltransfer study run` pid {child.pid} on"):
      _run(study)
  finally:
    child.kill()
    child.wait()


def test_emit_writes_stage_files_and_a_script_with_the_same_rules(study, capsys):
  assert study_command.main(["run", study["spec"], "--output_dir", study["dir"],
                          "--emit", study["emit"], "--program", PROGRAM]) == 0
  emitted = json.load(open(os.path.join(study["emit"], "stages.json")))
  ids = [s["id"] for s in emitted["stages"]]
  assert len(ids) == NUM_STAGES
  for i, stage in enumerate(emitted["stages"]):
    assert all(ids.index(d) < i for d in stage["deps"])
    gin_text = open(stage["gin_file"]).read()
    assert f'MODEL_DIR = "{stage["stage_dir"]}"' in gin_text or stage["command"] == "eval"
    assert stage["argv"][-1] == f"--gin_file={stage['gin_file']}"
  assert not os.path.exists(study["dir"])  # emitting runs nothing

  # The script runs the stages with the runner's skip rule; the fake reads bindings from
  # --gin. flags, so run the override form of the same stages through it.
  script = open(os.path.join(study["emit"], "run_stages.sh")).read()
  assert script.count("\nrun_stage ") == NUM_STAGES
  assert subprocess.run(["bash", "-n", os.path.join(study["emit"], "run_stages.sh")]).returncode == 0
  assert study_command.main(["status", study["emit"]]) == 0
  assert f"{NUM_STAGES} pending" in capsys.readouterr().out


def test_emitted_script_runs_skips_and_blocks(study, tmp_path, monkeypatch):
  spec = spec_lib.load_spec(study["spec"])
  stages = grid.build_stages(spec, study["dir"])
  runner.emit(stages, spec, study["dir"], study["emit"], program=tuple(shlex.split(PROGRAM)))
  # Point each stage's argv at the override form, which the fake stage understands.
  entries = json.load(open(os.path.join(study["emit"], "stages.json")))["stages"]
  for entry in entries:
    entry["argv"] = entry["argv_overrides"]
  script = os.path.join(study["emit"], "run_stages.sh")
  with open(script, "w") as f:
    f.write(runner._shell_script(spec, entries, stages))  # pylint: disable=protected-access
  checks_log = tmp_path / "device_checks.log"
  monkeypatch.setenv("FAKE_DEVICE_CHECK_LOG", str(checks_log))
  monkeypatch.setenv("FAKE_STAGE_DEVICES_FAIL", "the model axis (8) does not fit")
  result = subprocess.run(["bash", script], capture_output=True, text=True)
  assert result.returncode == 2, result.stdout + result.stderr
  assert "no stage was started" in result.stdout
  assert "the model axis (8) does not fit" in result.stdout
  assert not _executions(study["log"])
  configs = {grid.device_config(s) for s in stages}
  assert 1 < len(configs) < len(stages)  # train and eval stages differ; seeds etc. do not
  assert len(checks_log.read_text().splitlines()) == 1  # it stopped at the first failure
  checks_log.unlink()
  monkeypatch.delenv("FAKE_STAGE_DEVICES_FAIL")
  monkeypatch.setenv("FAKE_STAGE_FAIL", "xlt_span_lowres")
  result = subprocess.run(["bash", script], capture_output=True, text=True)
  assert result.returncode == 1
  assert "FAILED train/xlt_span_lowres/seed0" in result.stdout
  assert "eval/xlt_span_lowres/seed0/xnli: blocked" in result.stdout
  failed_log = os.path.join(study["emit"], "logs", "train__xlt_span_lowres__seed0.log")
  assert "simulated failure" in open(failed_log).read()
  states = runner.study_states(stages)
  assert {i for i, s in states.items() if s != "done"} == {
      s.id for s in stages if "xlt_span_lowres" in s.id}
  monkeypatch.delenv("FAKE_STAGE_FAIL")
  before = len(_executions(study["log"]))
  result = subprocess.run(["bash", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  assert len(_executions(study["log"])) - before == 4
  assert set(runner.study_states(stages).values()) == {"done"}
  # One check per device configuration with stages to run: all of them in the second run;
  # in this one, only those of the failed condition's stages.
  pending = {grid.device_config(s) for s in stages if "xlt_span_lowres" in s.id}
  assert len(checks_log.read_text().splitlines()) == len(configs) + len(pending)
  assert ": mesh {'data': 1, 'model': 1} over 1 cpu devices" in result.stdout
  assert "devices for stages like " in result.stdout and "xltransfer train" not in result.stdout
  checks_log.unlink()
  assert subprocess.run(["bash", script], capture_output=True, text=True).returncode == 0
  assert not checks_log.exists()  # all done: nothing to check


@pytest.mark.slow
def test_a_changed_spec_does_not_reuse_finished_stages(study):
  assert _run(study) == 0
  with pytest.raises(UserError, match="different configuration"):
    _run(study, "--gin.finetune_steps=4")
  # Adding a seed only adds stages.
  before = len(_executions(study["log"]))
  assert _run(study, "--gin.seeds=[0, 1]") == 0
  assert len(_executions(study["log"])) - before == NUM_STAGES - 1  # direct/none is seedless


def test_devices_are_checked_once_per_configuration_before_any_stage(study, tmp_path,
                                                                    monkeypatch, capsys):
  checks_log = tmp_path / "device_checks.log"
  monkeypatch.setenv("FAKE_DEVICE_CHECK_LOG", str(checks_log))
  monkeypatch.setenv("FAKE_STAGE_DEVICES_FAIL",
                     "the mesh's model axis (8) cannot be laid out on the 4x4x4 torus")
  with pytest.raises(ConfigError) as error:
    _run(study)
  assert "no stage was started" in str(error.value) and "4x4x4 torus" in str(error.value)
  assert "cannot start on the devices here" in str(error.value)
  assert not _executions(study["log"])
  assert len(checks_log.read_text().splitlines()) == 1  # stopped at the first failing config
  monkeypatch.delenv("FAKE_STAGE_DEVICES_FAIL")
  checks_log.unlink()
  assert _run(study) == 0
  out = capsys.readouterr().out
  stages = _stages(study)
  configs = {grid.device_config(s) for s in stages}
  assert 1 < len(configs) < len(stages)  # train and eval stages differ; seeds etc. do not
  assert len(checks_log.read_text().splitlines()) == len(configs)
  assert out.count("[study] devices: ") == len(configs)
  assert out.count("mesh {'data': 1, 'model': 1} over 1 cpu devices in 1 process(es)") == len(configs)
  assert len(_executions(study["log"])) == NUM_STAGES
  checks_log.unlink()
  assert _run(study) == 0  # everything done: nothing to check
  assert not checks_log.exists()


def test_skip_device_check_starts_stages_without_it(study, tmp_path, monkeypatch):
  monkeypatch.setenv("FAKE_DEVICE_CHECK_LOG", str(tmp_path / "device_checks.log"))
  monkeypatch.setenv("FAKE_STAGE_DEVICES_FAIL", "would fail")
  assert _run(study, "--skip_device_check") == 0
  assert not (tmp_path / "device_checks.log").exists()
  assert len(_executions(study["log"])) == NUM_STAGES


def test_device_configuration_follows_mesh_and_batch_bindings_only():
  base = grid.Stage(id="a", command="train", role="finetune", condition="none", seed=0,
                    target="xnli", stage_dir="/s/a", gin_files=("runs/finetune.gin",),
                    bindings=(("RANDOM_SEED", 0), ("MODEL_DIR", "/s/a")), raw_bindings=(),
                    deps=())
  other_seed = base.__class__(**{**base.__dict__, "id": "b", "bindings": (
      ("RANDOM_SEED", 1), ("MODEL_DIR", "/s/b"))})
  assert grid.device_config(base) == grid.device_config(other_seed)
  for changed in ({"bindings": base.bindings + (("BATCH_SIZE", 64),)},
                  {"raw_bindings": ("xltransfer.partitioning.create_mesh.model = 8",)},
                  {"gin_files": ("runs/finetune.gin", "meshes/tpu_v4_32.gin")},
                  {"command": "eval"}):
    assert grid.device_config(base.__class__(**{**base.__dict__, **changed})) != \
        grid.device_config(base), changed
