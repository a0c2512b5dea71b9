"""XCOPA in the study: Social IQa fine-tuning, then COPA from its checkpoint, then zero-shot
eval (XTREME-R's baseline). The grid, the runner with tests/test_study_fake_stage.py standing
in for `xltransfer train/eval`, the up-front data check, and once with the real trainer."""
import json
import os

import pytest

from xltransfer.errors import ConfigError
from xltransfer.commands import study as study_command
from xltransfer.study import checks, grid, runner
from xltransfer.study import spec as spec_lib

from study_fakes import executions as _executions, run_study as _run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC = """
StudySpec.name = "xcopa_study"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "{init}"
StudySpec.conditions = ["none", "xlt_inter_mnli"]
StudySpec.targets = ["xnli", "xcopa", "tatoeba"]
StudySpec.languages = ["en", "sw"]
StudySpec.seeds = [0]
StudySpec.intermediate_steps = 5
StudySpec.finetune_steps = 3
StudySpec.finetune_steps_per_target = {{"xcopa": 2}}
StudySpec.finetune_batch_size = 4
StudySpec.siqa_steps = 7
StudySpec.train_gin_files = ["runs/finetune.gin"]
StudySpec.target_gin_files = {{"xcopa": ["meshes/cpu.gin"]}}
StudySpec.xtreme_data_dir = "{data}"
"""
SIQA_LINE = {"context": "Kai lent his notes to Jordan.", "question": "What will Jordan do?",
             "answerA": "study the notes", "answerB": "burn them", "answerC": "sleep",
             "correct": "A"}


def _write_siqa(data_dir):
  path = os.path.join(data_dir, *grid.SIQA_TRAIN_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(json.dumps(SIQA_LINE) + "\n")
  return path


@pytest.fixture
def study(tmp_path, monkeypatch):
  init = tmp_path / "init"
  init.mkdir()
  (init / "DONE").write_text("pretrained\n")
  data = tmp_path / "xtreme"
  siqa = _write_siqa(str(data))
  spec_path = tmp_path / "spec.gin"
  spec_path.write_text(SPEC.format(init=init, data=data))
  log = tmp_path / "executions.log"
  monkeypatch.setenv("FAKE_STAGE_LOG", str(log))
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.delenv(grid.XTREME_DATA_ENV_VAR, raising=False)
  return {"spec": str(spec_path), "dir": str(tmp_path / "out"), "log": log, "init": str(init),
          "siqa": siqa, "tmp": tmp_path}


def _stages(study, *bindings):
  return grid.build_stages(spec_lib.load_spec(study["spec"], list(bindings)), study["dir"])


def _checkpoint_file(stage):
  """What the fake trainer recorded: INITIAL_CHECKPOINT_PATH, mixture, TRAIN_STEPS, seed."""
  with open(os.path.join(stage.stage_dir, "checkpoint")) as f:
    return f.read().strip().split("|")


def test_xcopa_fine_tunes_on_siqa_then_copa_from_the_siqa_checkpoint(study):
  by_id = {s.id: s for s in _stages(study)}
  for condition, start, start_deps in [
      ("none", study["init"], ()),
      ("xlt_inter_mnli", by_id["train/xlt_inter_mnli/seed0"].stage_dir,
       ("train/xlt_inter_mnli/seed0",))]:
    siqa = by_id[f"prefinetune/{condition}/seed0/xcopa"]
    copa = by_id[f"finetune/{condition}/seed0/xcopa"]
    evaluation = by_id[f"eval/{condition}/seed0/xcopa"]
    assert (siqa.role, siqa.command, siqa.target) == ("prefinetune", "train", "xcopa")
    siqa_bindings, copa_bindings = dict(siqa.bindings), dict(copa.bindings)
    assert siqa_bindings[grid.MIXTURE] == "xlt_xcopa_siqa_train"
    assert siqa_bindings[grid.INITIAL_CHECKPOINT] == start and siqa.deps == start_deps
    assert siqa_bindings[grid.TRAIN_STEPS] == 7 and siqa_bindings[grid.BATCH_SIZE] == 4
    assert copa_bindings[grid.MIXTURE] == "xlt_xcopa_train"
    assert copa_bindings[grid.INITIAL_CHECKPOINT] == siqa.stage_dir
    assert copa.deps == (siqa.id,) and copa_bindings[grid.TRAIN_STEPS] == 2
    # Both runs are XCOPA's fine-tuning: same gin files (the target's too), same seed.
    assert siqa.gin_files == copa.gin_files and siqa.gin_files[-1] == "meshes/cpu.gin"
    assert siqa_bindings[grid.RANDOM_SEED] == copa_bindings[grid.RANDOM_SEED] == 0
    assert dict(evaluation.bindings)[grid.CHECKPOINT_PATH] == copa.stage_dir
    assert evaluation.deps == (copa.id,)
  ids = list(by_id)
  assert ids.index("prefinetune/none/seed0/xcopa") < ids.index("finetune/none/seed0/xcopa")
  assert grid.dependents(list(by_id.values()), "prefinetune/none/seed0/xcopa") == {
      "finetune/none/seed0/xcopa", "eval/none/seed0/xcopa"}
  # The stage list round-trips through study.json.
  assert [grid.Stage.from_dict(s.to_dict()) for s in by_id.values()] == list(by_id.values())


def test_other_targets_are_unchanged_and_siqa_steps_0_is_copa_alone(study):
  with_siqa = _stages(study)
  copa_only = _stages(study, "StudySpec.siqa_steps = 0")
  assert [s for s in with_siqa if s.target != "xcopa"] == [
      s for s in copa_only if s.target != "xcopa"]
  assert [s.id for s in with_siqa if s.role == "prefinetune"] == [
      "prefinetune/none/seed0/xcopa", "prefinetune/xlt_inter_mnli/seed0/xcopa"]
  assert not [s for s in copa_only if s.role == "prefinetune"]
  by_id = {s.id: s for s in copa_only}
  copa = by_id["finetune/xlt_inter_mnli/seed0/xcopa"]
  assert dict(copa.bindings)[grid.INITIAL_CHECKPOINT] == by_id[
      "train/xlt_inter_mnli/seed0"].stage_dir
  assert copa.deps == ("train/xlt_inter_mnli/seed0",)
  # Without XCOPA among the targets there is no SIQA stage at all.
  no_xcopa = _stages(study, "StudySpec.targets = ['xnli', 'tatoeba']")
  assert no_xcopa == [s for s in copa_only if s.target != "xcopa"]


@pytest.mark.slow
def test_the_runner_chains_siqa_copa_and_eval_then_a_rerun_skips_them(study, capsys):
  assert _run(study) == 0
  stages = _stages(study)
  by_id = {s.id: s for s in stages}
  ran = _executions(study["log"])
  assert sorted(ran) == sorted(s.stage_dir for s in stages)
  for condition in ("none", "xlt_inter_mnli"):
    siqa = by_id[f"prefinetune/{condition}/seed0/xcopa"]
    copa = by_id[f"finetune/{condition}/seed0/xcopa"]
    evaluation = by_id[f"eval/{condition}/seed0/xcopa"]
    assert (ran.index(siqa.stage_dir) < ran.index(copa.stage_dir)
            < ran.index(evaluation.stage_dir))
    start = (study["init"] if condition == "none"
             else by_id["train/xlt_inter_mnli/seed0"].stage_dir)
    assert _checkpoint_file(siqa) == [start, "xlt_xcopa_siqa_train", "7", "0"]
    assert _checkpoint_file(copa) == [siqa.stage_dir, "xlt_xcopa_train", "2", "0"]
    with open(os.path.join(evaluation.stage_dir, "metrics.json")) as f:
      metrics = json.load(f)
    assert metrics["checkpoint"] == copa.stage_dir
    assert set(metrics["tasks"]["xcopa"]) == {"sw"}  # XCOPA has no English eval
  assert _checkpoint_file(by_id["finetune/none/seed0/xnli"])[:2] == [study["init"],
                                                                    "xlt_xnli_train"]
  capsys.readouterr()

  assert _run(study) == 0
  assert len(_executions(study["log"])) == len(stages)  # nothing ran again
  assert f"{len(stages)} already done" in capsys.readouterr().out
  assert study_command.main(["status", study["dir"]]) == 0
  status = capsys.readouterr().out
  assert "done        prefinetune/none/seed0/xcopa" in status


@pytest.mark.slow
def test_a_failed_copa_stage_reruns_without_redoing_siqa(study, monkeypatch):
  monkeypatch.setenv("FAKE_STAGE_FAIL", "xlt_xcopa_train")
  assert _run(study) == 1
  stages = _stages(study)
  states = runner.study_states(stages)
  for condition in ("none", "xlt_inter_mnli"):
    assert states[f"prefinetune/{condition}/seed0/xcopa"] == "done"
    assert states[f"finetune/{condition}/seed0/xcopa"] == "failed"
    assert states[f"eval/{condition}/seed0/xcopa"] == "blocked"
  monkeypatch.delenv("FAKE_STAGE_FAIL")
  before = len(_executions(study["log"]))
  assert _run(study) == 0
  rerun = _executions(study["log"])[before:]
  assert sorted(rerun) == sorted(
      s.stage_dir for s in stages if s.target == "xcopa" and s.role in ("finetune", "eval"))
  assert set(runner.study_states(stages).values()) == {"done"}


def test_a_missing_siqa_file_is_named_before_any_stage_runs(study):
  os.remove(study["siqa"])
  with pytest.raises(ConfigError) as raised:
    _run(study)
  message = str(raised.value)
  assert study["siqa"] in message and "prefinetune/none/seed0/xcopa" in message
  assert study["spec"] in message and "siqa_steps = 0" in message
  assert not _executions(study["log"])
  # Listing or emitting the stages needs no data; COPA alone does not read SIQA.
  assert _run(study, "--dry_run") == 0
  assert _run(study, "--emit", str(study["tmp"] / "emit")) == 0
  assert not _executions(study["log"])
  assert _run(study, "--gin.siqa_steps=0") == 0


def test_the_data_dir_comes_from_the_environment_when_the_spec_has_none(study, monkeypatch):
  bindings = ["StudySpec.xtreme_data_dir = None"]
  stages = _stages(study, *bindings)
  where = study["spec"]
  with pytest.raises(ConfigError, match=r"no XTREME-R data directory is set.*XTREME_DATA_DIR"):
    checks.check_data(stages, where, environ={})
  empty = str(study["tmp"] / "empty")
  with pytest.raises(ConfigError) as raised:
    checks.check_data(stages, where, environ={grid.XTREME_DATA_ENV_VAR: empty})
  assert os.path.join(empty, "siqa", "socialIQa_v1.4_trn.jsonl") in str(raised.value)
  checks.check_data(stages, where, environ={
      grid.XTREME_DATA_ENV_VAR: os.path.dirname(os.path.dirname(study["siqa"]))})
  # A train binding of xtreme_data_dir.path wins over the spec's field, as in the stage.
  rebound = _stages(study, f"StudySpec.train_bindings = ['xtreme_data_dir.path = \"{empty}\"']")
  with pytest.raises(ConfigError, match="does not exist"):
    checks.check_data(rebound, where, environ={})


@pytest.mark.slow
def test_a_finished_siqa_stage_needs_its_data_no_more(study):
  assert _run(study) == 0
  os.remove(study["siqa"])
  assert _run(study) == 0


def test_dry_run_and_emit_list_the_siqa_stage(study, capsys):
  assert _run(study, "--dry_run") == 0
  out = capsys.readouterr().out
  assert "# prefinetune/none/seed0/xcopa (after nothing)" in out
  assert ("# prefinetune/xlt_inter_mnli/seed0/xcopa (after train/xlt_inter_mnli/seed0)"
          in out)
  assert "# finetune/none/seed0/xcopa (after prefinetune/none/seed0/xcopa)" in out
  assert '--gin.MIXTURE_OR_TASK_NAME="xlt_xcopa_siqa_train"' in out
  emit = str(study["tmp"] / "emit")
  assert _run(study, "--emit", emit) == 0
  with open(os.path.join(emit, "stages.json")) as f:
    entries = {e["id"]: e for e in json.load(f)["stages"]}
  siqa = entries["prefinetune/none/seed0/xcopa"]
  assert entries["finetune/none/seed0/xcopa"]["deps"] == [siqa["id"]]
  with open(os.path.join(emit, "run_stages.sh")) as f:
    script = f.read()
  # The script waits for the SIQA stage's DONE before COPA.
  copa_line = next(line for line in script.splitlines()
                   if line.startswith("run_stage finetune/none/seed0/xcopa "))
  assert f" {siqa['stage_dir']} -- " in copa_line


def test_the_study_names_what_the_siqa_task_reads():
  from xltransfer.tasks import targets  # pylint: disable=import-outside-toplevel
  assert grid.SIQA_MIXTURE == targets.SIQA_TASK
  assert grid.SIQA_TRAIN_FILE == targets.SIQA_FILES["train"]


@pytest.mark.slow
def test_siqa_then_copa_with_the_real_trainer_and_evaluator(tmp_path):
  """The baseline's XCOPA cell through real `xltransfer train` / `xltransfer eval` processes on
  the test fixtures (Social IQa, COPA, XCOPA zh) from a tiny random checkpoint."""
  import jax  # pylint: disable=import-outside-toplevel

  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  from xltransfer.model.config import get_config  # pylint: disable=import-outside-toplevel
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel

  init = tmp_path / "init"
  config = get_config("tiny")
  native.save_params(EncoderDecoderModel(config).init(jax.random.PRNGKey(0)), config, str(init))
  spec_path = tmp_path / "spec.gin"
  spec_path.write_text(f"""
StudySpec.name = "xcopa_real"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "{init}"
StudySpec.conditions = ["none"]
StudySpec.targets = ["xcopa"]
StudySpec.languages = ["zh"]
StudySpec.eval_split = "validation"
StudySpec.siqa_steps = 2
StudySpec.finetune_steps = 2
StudySpec.finetune_batch_size = 2
StudySpec.train_gin_files = ["runs/finetune.gin"]
StudySpec.xtreme_data_dir = "{os.path.join(REPO, 'tests', 'fixtures', 'xtreme')}"
StudySpec.train_bindings = ["TASK_FEATURE_LENGTHS = {{'inputs': 64, 'targets': 16}}",
                            "xltransfer.train.train.eval_dataset = None"]
StudySpec.eval_bindings = ["TASK_FEATURE_LENGTHS = {{'inputs': 64, 'targets': 16}}"]
""")
  study_dir = str(tmp_path / "study")
  argv = ["run", str(spec_path), "--output_dir", study_dir]
  assert study_command.main(argv) == 0
  _, stages, _ = grid.read_study_file(study_dir)
  by_id = {s.id: s for s in stages}
  assert list(by_id) == ["prefinetune/none/seed0/xcopa", "finetune/none/seed0/xcopa",
                         "eval/none/seed0/xcopa"]
  siqa, copa, evaluation = by_id.values()

  def operative(stage):
    with open(os.path.join(stage.stage_dir, "operative_config.gin")) as f:
      return f.read()

  assert "'xlt_xcopa_siqa_train'" in operative(siqa) and str(init) in operative(siqa)
  # COPA loaded the SIQA run's checkpoint as its initial params.
  assert "'xlt_xcopa_train'" in operative(copa)
  assert f"'{siqa.stage_dir}'" in operative(copa)
  with open(os.path.join(copa.stage_dir, runner.LOG)) as f:
    assert "starting from INITIAL_CHECKPOINT_PATH" in f.read()
  with open(os.path.join(evaluation.stage_dir, "metrics.json")) as f:
    metrics = json.load(f)
  assert 0 <= metrics["tasks"]["xcopa"]["zh"]["accuracy"] <= 100
  # A rerun finds every stage done and runs none.
  logs = {s.id: os.path.getmtime(os.path.join(s.stage_dir, runner.LOG)) for s in stages}
  assert study_command.main(argv) == 0
  assert logs == {s.id: os.path.getmtime(os.path.join(s.stage_dir, runner.LOG)) for s in stages}
