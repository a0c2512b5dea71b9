"""`xltransfer demo`: the bundled sample data parses through every task the demo study uses, the
spec keeps the comparison the quickstart promises, the initial checkpoint is created once, and
the driver runs the study, prints the report and the caveat, and resumes. The real stages are
too slow for the suite: the driver is checked here with the study tests' fake stage program.
"""
import json
import os
import sys

import pytest

from xltransfer import cli
from xltransfer.commands import demo
from xltransfer.errors import UserError
from xltransfer.study import grid, runner
from xltransfer.study import spec as spec_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_STAGE = os.path.join(REPO, "tests", "test_study_fake_stage.py")
LENGTHS = {"inputs": 128, "targets": 64}


@pytest.fixture(scope="module")
def spec():
  return spec_lib.load_spec(demo.spec_path())


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
  """A fresh copy of the sample data, as the demo makes it, set as the XTREME-R data dir."""
  import xltransfer.tasks  # pylint: disable=import-outside-toplevel,unused-import
  from xltransfer.data import paths, vocab  # pylint: disable=import-outside-toplevel
  directory = str(tmp_path_factory.mktemp("demo") / "sample_xtreme")
  demo.copy_sample_data(directory)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(paths.XTREME_ENV_VAR, directory)
    vocab.use_task_vocabulary("builtin")
    yield directory


def test_help_and_bad_arguments(capsys):
  assert cli.main(["demo", "--help"]) == 0
  assert "not the scientific answer" in capsys.readouterr().out
  with pytest.raises(UserError, match="unexpected arguments"):
    demo.main(["--steps=3"])


def test_spec_compares_baseline_english_and_low_resource(spec):
  assert spec.conditions[0] == spec.baseline_condition == spec_lib.BASELINE
  assert spec.english_condition in spec.conditions
  assert "xlt_span_sample_sw" in spec.conditions
  assert 2 <= len(spec.targets) <= 3
  assert set(spec.languages) == {"en", "de", "sw"}
  # Each stage is a process with ~20 s of start-up: more stages break the 10-minute budget.
  assert len(grid.build_stages(spec)) <= 12


def test_sample_data_is_small_and_complete():
  total = sum(os.path.getsize(os.path.join(root, name))
              for root, _, names in os.walk(demo.SAMPLE_DATA) for name in names)
  assert total < 1_000_000
  for path in ("xnli/train-en.tsv", "panx/train-en.tsv", "squad/train-v1.1.json",
               "tatoeba/sw-en.sw", "tatoeba/sw-en.en"):
    assert os.path.isfile(os.path.join(demo.SAMPLE_DATA, path)), path


def _demo_task_names(spec):
  """Every task the demo's stages read, plus PAN-X (bundled for `--gin.targets=...`)."""
  names = set()
  for stage in grid.build_stages(spec):
    for name in dict(stage.bindings)[grid.MIXTURE].split(","):
      names.add(name)
  names |= {"xlt_panx_train"} | {f"xlt_panx_eval_{lang}" for lang in spec.languages}
  return sorted(names)


@pytest.mark.slow
def test_sample_data_parses_through_every_demo_task(spec, sample_dir):
  import seqio  # pylint: disable=import-outside-toplevel
  names = _demo_task_names(spec)
  assert {"xlt_xnli_train", "xlt_xnli_eval_sw", "xlt_tatoeba_eval_de", "xlt_xquad_train",
          "xlt_span_sample_sw"} <= set(names)
  for name in names:
    # The split each stage reads: training data, or the test split of gin/eval/zeroshot.gin.
    split = "train" if name.endswith("_train") or name.startswith("xlt_span_") else "test"
    ds = seqio.get_dataset(name, LENGTHS, seqio.EncDecFeatureConverter(pack=False),
                           dataset_split=split, shuffle=False, num_epochs=1)
    assert sum(1 for _ in ds.as_numpy_iterator()) > 0, (name, split)


def test_zero_shot_eval_sets_are_parallel(sample_dir):
  from xltransfer.data import readers, retrieval  # pylint: disable=import-outside-toplevel
  def rows(pattern):
    return {lang: readers.read_nli_tsv(os.path.join(sample_dir, "xnli", pattern.format(lang)))
            for lang in ("en", "de", "sw")}
  for split in ("dev-{}.tsv", "test-{}.tsv"):
    per_lang = rows(split)
    assert [r["label"] for r in per_lang["de"]] == [r["label"] for r in per_lang["en"]]
    assert [r["label"] for r in per_lang["sw"]] == [r["label"] for r in per_lang["en"]]
  for lang in ("de", "sw"):
    rs = retrieval.load_tatoeba(sample_dir, lang)
    assert len(rs.queries) == len(set(rs.candidates)) >= 50


def test_squad_answers_sit_at_their_offsets():
  with open(os.path.join(demo.SAMPLE_DATA, "squad", "train-v1.1.json"), encoding="utf-8") as f:
    data = json.load(f)["data"]
  count = 0
  for article in data:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        for answer in qa["answers"]:
          start = answer["answer_start"]
          assert paragraph["context"][start:start + len(answer["text"])] == answer["text"]
        count += 1
  assert count >= 24


def test_demo_runs_the_study_prints_the_report_and_resumes(tmp_path, monkeypatch, capsys):
  """The driver end to end with fake stages: data copied fresh, report and caveat printed,
  and a rerun skips every finished stage."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "unused_cache"))
  monkeypatch.setattr(runner, "DEFAULT_PROGRAM", (sys.executable, FAKE_STAGE))
  # The fake stage wants a finished run as its initial checkpoint; the real one is tested above.
  init = tmp_path / "demo_output" / "tiny_init"
  (init / "params").mkdir(parents=True)
  (init / "config.json").write_text("{}")
  (init / "DONE").write_text("")
  stale = tmp_path / "demo_output" / "sample_xtreme" / "stale.tsv"
  stale.parent.mkdir(parents=True)
  stale.write_text("left from an older run\n")

  assert demo.main([]) == 0
  out = capsys.readouterr().out
  assert not stale.exists()
  assert os.path.isfile(tmp_path / "demo_output" / "sample_xtreme" / "xnli" / "train-en.tsv")
  assert "## XTREME-R score per condition" in out
  assert "English SQuAD v1.1" in out and "Swahili span corruption" in out
  assert "plot:" in out and ".png" in out
  assert out.count("NOT the scientific answer") == 2

  assert demo.main([]) == 0
  rerun = capsys.readouterr().out
  assert "0 ran" in rerun and "done already, skipped" in rerun
  assert "## XTREME-R score per condition" in rerun


def test_demo_forwards_spec_overrides(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  calls = []
  monkeypatch.setattr(demo, "ensure_initial_checkpoint", lambda path, size: False)
  monkeypatch.setattr(demo.study_command, "main", lambda argv: calls.append(argv) or 0)
  override = '--gin.targets=["xnli", "panx", "tatoeba"]'
  assert demo.main([override]) == 0
  assert calls == [["run", demo.SPEC, "--report", override]]
  capsys.readouterr()


# Last in the file: it starts jax in this process, and the runner forks its stage processes.
@pytest.mark.slow
def test_initial_checkpoint_created_once(tmp_path):
  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  from xltransfer.model.config import get_config  # pylint: disable=import-outside-toplevel
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / "tiny_init")
  assert demo.ensure_initial_checkpoint(path, "tiny")
  assert native.is_native_checkpoint(path)
  params, config = native.load_params(path)
  assert config == get_config("tiny")
  expected = EncoderDecoderModel(config).abstract_params()
  shapes = lambda tree: {k: v.shape for k, v in _flat(tree).items()}  # pylint: disable=unnecessary-lambda-assignment
  assert shapes(params) == shapes(expected)
  assert not demo.ensure_initial_checkpoint(path, "tiny")
  (tmp_path / "not_a_checkpoint").mkdir()
  with pytest.raises(UserError, match="not an xltransfer checkpoint"):
    demo.ensure_initial_checkpoint(str(tmp_path / "not_a_checkpoint"), "tiny")


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out
