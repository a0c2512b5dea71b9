"""Study specs: the shipped gin specs load and expand; mistakes name the file and the key."""
import dataclasses
import json
import os

import gin
import pytest

from xltransfer.errors import ConfigError, UserError
from xltransfer.commands import study as study_command
from xltransfer.study import checks, grid, runner
from xltransfer.study import spec as spec_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_GIN = os.path.join(REPO, "gin", "study")

MINIMAL = """
StudySpec.name = "s"
StudySpec.model_size = "tiny"
StudySpec.initial_checkpoint = "/ckpt"
StudySpec.conditions = ["none", "xlt_inter_mnli"]
StudySpec.targets = ["xnli", "lareqa", "tatoeba"]
StudySpec.seeds = [0, 1]
"""


def _write(tmp_path, text, name="spec.gin"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_the_xxl_study_has_every_condition_target_and_seed():
  spec = spec_lib.load_spec(os.path.join(STUDY_GIN, "xtreme_r_lowres_mt5_xxl.gin"))
  assert spec.model_size == "xxl"
  assert spec.initial_checkpoint == "gs://t5-data/pretrained_models/t5x/mt5_xxl/checkpoint_1000000"
  assert len(spec.targets) == 10 and spec.seeds == (0, 1, 2)
  english = [c for c in spec.conditions if c.startswith("xlt_inter_") and "all9" not in c]
  assert len(english) == 9
  assert {"none", "xlt_inter_all9", "xlt_span_lowres", "xlt_translated_lowres",
          "xlt_inter_all9_plus_translated_lowres_plus_span"} <= set(spec.conditions)
  assert spec.xtreme_data_dir and spec.user_data_dir and spec.original_data_dir
  # Every zero-shot number comes from the labelled original releases (issue 18).
  assert spec.target_source == "original" and not spec.restore_optimizer_state
  # The research question's contrast: each purely low-resource condition vs English-only.
  assert spec.primary_pairs() == [(c, "xlt_inter_all9") for c in (
      "xlt_span_lowres", "xlt_translated_lowres", "xlt_translated_lowres_plus_span")]
  assert spec.primary_languages == "low-resource" and spec.multiple_comparisons == "holm"
  stages = grid.build_stages(spec, "/s")
  roles = [s.role for s in stages]
  conditions, seeds = len(spec.conditions), len(spec.seeds)
  assert roles.count("intermediate") == (conditions - 1) * seeds
  assert roles.count("finetune") == roles.count("eval") == conditions * seeds * 9
  # XCOPA fine-tunes on Social IQa first, once per condition and seed.
  assert roles.count("prefinetune") == conditions * seeds and spec.siqa_steps > 0
  assert len(stages) == 1233  # the count the spec's header states
  assert roles.count("direct") == (conditions - 1) * seeds * 3 + 3
  spec_lib.check_gin_files(spec, "xxl")  # the gin files it names exist
  finetune = next(s for s in stages if s.role == "finetune")
  assert finetune.gin_files[:2] == ("models/mt5_xxl.gin", "runs/finetune.gin")
  assert "xltransfer.partitioning.create_mesh.model = 8" in finetune.raw_bindings


def test_the_small_variant_and_the_demo_spec_load():
  small = spec_lib.load_spec(os.path.join(STUDY_GIN, "xtreme_r_lowres_mt5_small.gin"))
  xxl = spec_lib.load_spec(os.path.join(STUDY_GIN, "xtreme_r_lowres_mt5_xxl.gin"))
  assert small.model_size == "small" and small.conditions == xxl.conditions
  assert small.targets == xxl.targets and small.train_bindings == ()
  assert "mt5_small" in small.initial_checkpoint
  demo = spec_lib.load_spec(os.path.join(STUDY_GIN, "demo_tiny.gin"))
  assert demo.model_size == "tiny" and len(demo.conditions) == 3 and 2 <= len(demo.targets) <= 3
  assert "not the scientific answer" in demo.note
  spec_lib.check_gin_files(demo, "demo")


def test_overrides_and_round_trip(tmp_path):
  path = _write(tmp_path, MINIMAL)
  spec = spec_lib.load_spec(path, ["StudySpec.seeds = [3]", "StudySpec.languages = ['de', 'sw']"])
  assert spec.seeds == (3,) and spec.languages == ("de", "sw")
  assert spec.languages_for("lareqa") == ("de",) and spec.languages_for("xnli") == ("de", "sw")
  assert spec_lib.StudySpec.from_dict(spec.to_dict()) == spec
  stages = grid.build_stages(spec, "/s")
  assert [grid.Stage.from_dict(s.to_dict()) for s in stages] == stages
  # Languages that leave a target with nothing to evaluate (yo: none of xnli, lareqa, tatoeba).
  with pytest.raises(ConfigError, match="StudySpec.languages: none of"):
    spec_lib.load_spec(path, ["StudySpec.languages = ['yo']"])


def test_grid_shapes_for_the_baseline_and_retrieval(tmp_path):
  spec = spec_lib.load_spec(_write(tmp_path, MINIMAL))
  by_id = {s.id: s for s in grid.build_stages(spec, "/s")}
  # The baseline's direct retrieval evals do not depend on the seed: once each.
  assert {i for i in by_id if i.startswith("direct/none")} == {
      "direct/none/lareqa", "direct/none/tatoeba"}
  assert by_id["direct/none/lareqa"].bindings[0] == ("CHECKPOINT_PATH", "/ckpt")
  # Tatoeba has no fine-tuning; LAReQA is fine-tuned and also evaluated directly.
  assert "finetune/none/seed0/tatoeba" not in by_id
  assert by_id["eval/xlt_inter_mnli/seed1/lareqa"].deps == ("finetune/xlt_inter_mnli/seed1/lareqa",)
  assert by_id["direct/xlt_inter_mnli/seed1/tatoeba"].deps == ("train/xlt_inter_mnli/seed1",)
  assert grid.dependents(list(by_id.values()), "train/xlt_inter_mnli/seed0") == {
      "direct/xlt_inter_mnli/seed0/lareqa", "direct/xlt_inter_mnli/seed0/tatoeba",
      "finetune/xlt_inter_mnli/seed0/xnli", "eval/xlt_inter_mnli/seed0/xnli",
      "finetune/xlt_inter_mnli/seed0/lareqa", "eval/xlt_inter_mnli/seed0/lareqa"}


@pytest.mark.parametrize("binding,message", [
    ("StudySpec.targets = ['xnli', 'pawsx']", "StudySpec.targets: unknown target 'pawsx'"),
    ("StudySpec.conditions = ['xlt_inter_mnli']", "StudySpec.baseline_condition"),
    ("StudySpec.english_condition = 'xlt_inter_all9'", "StudySpec.english_condition"),
    ("StudySpec.conditions = ['none', 'bad name']", "StudySpec.conditions"),
    ("StudySpec.seeds = [0, 0]", "StudySpec.seeds"),
    ("StudySpec.model_size = 'huge'", "StudySpec.model_size"),
    ("StudySpec.languages = ['xx']", "unknown language 'xx'"),
    ("StudySpec.train_bindings = ['NO_EQUALS']", "StudySpec.train_bindings"),
    ("StudySpec.siqa_steps = -1", "StudySpec.siqa_steps"),
    ("StudySpec.siqa_steps = 2.5", "StudySpec.siqa_steps"),
    ("StudySpec.target_source = 'download'", "StudySpec.target_source: 'download'"),
    ("StudySpec.restore_optimizer_state = 1", "StudySpec.restore_optimizer_state"),
    ("StudySpec.stepz = 3", "cannot parse"),
    ("StudySpec.primary_conditions = ['xlt_inter_mnlj']", "StudySpec.primary_conditions"),
    ("StudySpec.primary_reference = 'xlt_inter_all9'", "StudySpec.primary_reference"),
    ("StudySpec.primary_languages = 'lowres'", "StudySpec.primary_languages: 'lowres'"),
    ("StudySpec.multiple_comparisons = 'bonferroni'",
     "StudySpec.multiple_comparisons: 'bonferroni'; valid: holm bh"),
    ("StudySpec.significance_level = 0.5", "StudySpec.significance_level"),
])
def test_spec_mistakes_name_the_file_and_key(tmp_path, binding, message):
  path = _write(tmp_path, MINIMAL)
  with pytest.raises(ConfigError, match=message) as raised:
    spec_lib.load_spec(path, [binding])
  assert path in str(raised.value) or "language" in message


def test_missing_fields_and_files(tmp_path):
  path = _write(tmp_path, 'StudySpec.name = "s"\n')
  with pytest.raises(ConfigError, match=r"does not bind StudySpec fields .*model_size"):
    spec_lib.load_spec(path)
  with pytest.raises(ConfigError, match="does not exist"):
    spec_lib.load_spec(str(tmp_path / "nope.gin"))
  spec = spec_lib.load_spec(_write(tmp_path, MINIMAL + 'StudySpec.eval_gin_files = ["x/y.gin"]'))
  with pytest.raises(ConfigError, match=r"StudySpec.eval_gin_files: gin file x/y.gin not found"):
    spec_lib.check_gin_files(spec, "spec.gin")


def test_stage_gin_files_parse_as_gin(tmp_path):
  spec = spec_lib.load_spec(_write(tmp_path, MINIMAL + """
StudySpec.languages = ["de", "en"]
StudySpec.xtreme_data_dir = "/data/xtreme"
StudySpec.original_data_dir = "/data/xtreme_original"
StudySpec.target_source = "original"
StudySpec.train_bindings = ["TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 16}"]
"""))
  # What `xltransfer train` and `xltransfer eval` import before parsing: the configurables the
  # stages bind (the eval stages bind EvalSettings.require_gold and target_source, the training
  # stages train.restore_optimizer_state).
  # pylint: disable=import-outside-toplevel,unused-import
  import xltransfer.data.paths
  import xltransfer.evaluation.evaluator
  import xltransfer.train.run
  # pylint: enable=import-outside-toplevel,unused-import
  stages = grid.build_stages(spec, "/s")
  assert all(dict(s.bindings)[grid.REQUIRE_GOLD] is True for s in stages if s.command == "eval")
  assert all(dict(s.bindings)[grid.TARGET_SOURCE_BINDING] == "original"
             for s in stages if s.command == "eval")
  # Every condition's training starts a fresh optimizer (StudySpec.restore_optimizer_state).
  assert all(dict(s.bindings)[grid.RESTORE_OPTIMIZER_STATE] is False
             for s in stages if s.command == "train")
  assert all(dict(s.bindings)[grid.ORIGINAL_DATA_BINDING] == "/data/xtreme_original"
             for s in stages)
  for stage in stages[:6]:
    gin.clear_config()
    try:
      gin.parse_config(runner.stage_gin_text(stage))
      for name, value in stage.bindings:
        if "." in name:
          assert gin.query_parameter(name) == value
        else:
          parsed = gin.query_parameter(f"{name}/macro.value")
          assert (tuple(parsed) if isinstance(parsed, list) else parsed) == value
    finally:
      gin.clear_config()


def test_dry_run_prints_each_stage_command(tmp_path, capsys):
  path = _write(tmp_path, MINIMAL)
  assert study_command.main(["run", path, "--output_dir", str(tmp_path / "o"), "--dry_run",
                          "--program", "xltransfer", "--gin.seeds=[0]"]) == 0
  out = capsys.readouterr().out
  assert "# train/xlt_inter_mnli/seed0 (after nothing)" in out
  assert "xltransfer eval --gin_file=models/mt5_tiny.gin" in out
  assert not (tmp_path / "o").exists()
  # What it costs: 1 intermediate (1000 steps x 128), 2 fine-tunings (xnli, lareqa; tatoeba has
  # none), their 2 evals and 2 direct retrieval evals per model with an encoder to retrieve from.
  stages = grid.build_stages(spec_lib.load_spec(path, ["StudySpec.seeds=[0]"]), "/s")
  roles = [s.role for s in stages]
  counts = ", ".join(f"{roles.count(r)} {r}" for r in grid.ROLES if r in roles)
  assert f"# {len(stages)} stages: {counts}" in out
  steps = 1000 * (1 + roles.count("finetune"))
  assert (f"# training: {steps:,} steps in all (intermediate 1,000, finetune "
          f"{1000 * roles.count('finetune'):,}); {steps * 128:,} training examples") in out


def test_cli_errors(tmp_path):
  with pytest.raises(UserError, match="apply to `study run` only"):
    study_command.main(["status", str(tmp_path), "--gin.seeds=[0]"])
  with pytest.raises(UserError, match="study.json"):
    study_command.main(["status", str(tmp_path)])
  path = _write(tmp_path, MINIMAL)
  with pytest.raises(UserError, match="remote"):
    study_command.main(["run", path, "--output_dir", "gs://bucket/study"])
  # A near miss of a field would otherwise be a gin macro that nothing reads.
  with pytest.raises(UserError, match=r"--gin.seedz: StudySpec has no field 'seedz'; did you "
                                      r"mean seeds\?"):
    study_command.main(["run", path, "--dry_run", "--gin.seedz=[0]"])


def test_check_names_reports_unregistered_mixtures_with_suggestions(tmp_path):
  spec = spec_lib.load_spec(_write(tmp_path, MINIMAL.replace("xlt_inter_mnli", "xlt_inter_mnlj")))
  stages = grid.build_stages(spec, "/s")
  known = {"xlt_inter_mnli", "xlt_xnli_train", "xlt_xnli_zeroshot", "xlt_lareqa_train",
           "xlt_lareqa_zeroshot", "xlt_tatoeba_zeroshot"}
  with pytest.raises(ConfigError, match=r"xlt_inter_mnlj \(stage train/xlt_inter_mnlj/seed0\) "
                                        r"\(did you mean xlt_inter_mnli"):
    checks.check_names(stages, "spec.gin", known)
  known.add("xlt_inter_mnlj")
  checks.check_names(stages, "spec.gin", known)


def test_run_checks_the_labelled_data_dir_before_any_stage(tmp_path):
  spec = spec_lib.load_spec(_write(tmp_path, MINIMAL + 'StudySpec.target_source = "original"\n'))
  stages = grid.build_stages(spec, str(tmp_path / "study"))
  with pytest.raises(ConfigError, match=r"spec.gin: stage (eval|direct)/.*"
                                        r"StudySpec.original_data_dir or \$XTREME_ORIGINAL_DATA_DIR"):
    checks.check_labelled_data(stages, "spec.gin", environ={})
  with pytest.raises(ConfigError, match=r"labelled original releases in /no/such/dir, which "
                                        r"does not exist"):
    checks.check_labelled_data(stages, "spec.gin",
                                   environ={"XTREME_ORIGINAL_DATA_DIR": "/no/such/dir"})
  checks.check_labelled_data(stages, "spec.gin",
                                 environ={"XTREME_ORIGINAL_DATA_DIR": str(tmp_path)})
  # The spec's own directory wins over the environment.
  bound = spec_lib.load_spec(_write(tmp_path, MINIMAL + f"""
StudySpec.target_source = "original"
StudySpec.original_data_dir = "{tmp_path / 'missing'}"
""", name="bound.gin"))
  with pytest.raises(ConfigError, match="missing, which does not exist"):
    checks.check_labelled_data(grid.build_stages(bound, str(tmp_path / "s2")), "bound.gin",
                                   environ={"XTREME_ORIGINAL_DATA_DIR": str(tmp_path)})
  # Without target_source 'original' nothing is required.
  plain = spec_lib.load_spec(_write(tmp_path, MINIMAL, name="plain.gin"))
  checks.check_labelled_data(grid.build_stages(plain, str(tmp_path / "s3")), "plain.gin",
                                 environ={})



def test_dry_run_estimates_hours_from_stages_that_ran(tmp_path, capsys):
  path = _write(tmp_path, MINIMAL)
  out_dir = tmp_path / "o"
  spec = spec_lib.load_spec(path, ["StudySpec.seeds=[0]"])
  stages = grid.build_stages(dataclasses.replace(spec, output_dir=str(out_dir)),
                             str(out_dir))
  [intermediate] = [s for s in stages if s.role == "intermediate"]
  os.makedirs(intermediate.stage_dir)
  # 0.5 steps/s in the first record (compilation), then 4, 5 and 2 steps/s: median 0.25 s.
  with open(os.path.join(intermediate.stage_dir, grid.TRAIN_METRICS_FILE), "w") as f:
    f.writelines(json.dumps({"step": 10 * i, "steps_per_second": r}) + "\n"
                 for i, r in enumerate((0.5, 4.0, 5.0, 2.0), 1))
    f.write('{"step": 50, "steps_per')  # a torn line of a killed run
  assert study_command.main(["run", path, "--output_dir", str(out_dir), "--dry_run",
                          "--program", "xltransfer", "--gin.seeds=[0]"]) == 0
  out = capsys.readouterr().out
  # 1000 intermediate steps at 0.25 s.
  assert ("# intermediate: 0.25 s/step measured on the 1 stage(s) that ran here -> about "
          "0.1 hours for all intermediate stages on the same machine") in out
  assert "# finetune:" not in out
