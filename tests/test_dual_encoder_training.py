"""Dual-encoder fine-tuning through the trainer: query/candidate input, the gin run config,
loss falling on a Mewsli-X fixture, the checkpoint scored by the retrieval evaluator, the
study's glue, and bad settings as ConfigErrors."""
import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest

import xltransfer.tasks  # noqa: F401  pylint: disable=unused-import  (registers the xlt_ tasks)
from xltransfer import cli
from xltransfer.checkpoints import native
from xltransfer.data import languages, retrieval, vocab
from xltransfer.errors import ConfigError
from xltransfer.commands import eval as eval_command
from xltransfer.evaluation import inference
from xltransfer.model.config import get_config
from xltransfer.model.dual_encoder import CANDIDATE_FEATURE, QUERY_FEATURE, DualEncoderModel
from xltransfer.partitioning import create_partitioner
from xltransfer.study import grid
from xltransfer.study import spec as spec_lib
from xltransfer.checkpoints import loading
from xltransfer.train import input as input_lib

TESTS = os.path.dirname(os.path.abspath(__file__))
# 16 Wikipedia (mention, entity) training pairs, 4 dev pairs, 20 candidate entities and 3
# WikiNews articles with 6 mentions, in the Mewsli-X download format.
FIXTURES = os.path.join(TESTS, "fixtures", "dual_encoder")
XTREME = os.path.join(TESTS, "fixtures", "xtreme")
STUDY_GIN = os.path.join(os.path.dirname(TESTS), "gin", "study")
LENGTHS = {"inputs": 48, "targets": 32}
STEPS = 30


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture
def builtin_vocab():
  vocab.use_task_vocabulary("builtin")
  yield vocab.get_vocabulary("builtin")
  vocab.use_task_vocabulary(None)


def test_bad_settings_are_config_errors():
  def config(**changes):
    fields = dict(mixture_or_task_name="xlt_mewslix_train", task_feature_lengths=LENGTHS,
                  batch_size=4, pack=False, feature_converter="dual_encoder")
    return input_lib.DatasetConfig(**dict(fields, **changes))

  with pytest.raises(ConfigError, match=r"'inputs' \(query tokens\) and 'targets' \(candidate"):
    config(task_feature_lengths={"inputs": 48})
  with pytest.raises(ConfigError, match="exactly the keys"):
    config(task_feature_lengths={"queries": 48, "candidates": 32})
  with pytest.raises(ConfigError, match=r"TASK_FEATURE_LENGTHS\['targets'\] must be a positive"):
    config(task_feature_lengths={"inputs": 48, "targets": 0})
  with pytest.raises(ConfigError, match="cannot be packed: set DatasetConfig.pack = False"):
    config(pack=True)
  with pytest.raises(ConfigError, match="feature_converter 'dual'"):
    config(feature_converter="dual")


def test_retrieval_training_tasks_give_unpacked_query_candidate_pairs(monkeypatch, builtin_vocab):
  monkeypatch.setenv("XTREME_DATA_DIR", XTREME)
  for task, query_prefix, candidate_prefix in (("xlt_lareqa_train", "question: ", "answer: "),
                                                ("xlt_mewslix_train", "mention: ", "entity: ")):
    config = input_lib.DatasetConfig(task, LENGTHS, batch_size=2, shuffle=False, pack=False,
                                     feature_converter="dual_encoder")
    batch = next(input_lib.host_dataset(config, 0, 1, 2).as_numpy_iterator())
    assert set(batch) == {QUERY_FEATURE, CANDIDATE_FEATURE}, task
    assert batch[QUERY_FEATURE].shape == (2, 48) and batch[CANDIDATE_FEATURE].shape == (2, 32)
    query = builtin_vocab.decode(batch[QUERY_FEATURE][0].tolist())
    candidate = builtin_vocab.decode(batch[CANDIDATE_FEATURE][0].tolist())
    assert query.startswith(query_prefix) and candidate.startswith(candidate_prefix), task
    # The prefixes are the evaluator's: one source of truth in xltransfer.data.retrieval.
    assert retrieval.PREFIXES[task.split("_")[1]] == (query_prefix, candidate_prefix)
    # One EOS per row: a row is one pair, not a pack of several.
    for row in (*batch[QUERY_FEATURE], *batch[CANDIDATE_FEATURE]):
      assert row.tolist().count(1) == 1, task


def _train_argv(model_dir):
  return ["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/dual_encoder_finetune.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='xlt_mewslix_train'",
          "--gin.INITIAL_CHECKPOINT_PATH=None", f"--gin.TRAIN_STEPS={STEPS}",
          "--gin.BATCH_SIZE=8", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
          "--gin.DROPOUT_RATE=0.0", "--gin.LEARNING_RATE=0.01", f"--gin.EVAL_PERIOD={STEPS}",
          "--gin.xltransfer.train.train.eval_steps=1",
          "--gin.xltransfer.train.train.log_period=1",
          # Two microbatches of 4 pairs: the trainer weighs them by pairs, not tokens.
          "--gin.xltransfer.train.train.num_microbatches=2",
          f"--gin.xltransfer.train.CheckpointManager.period={STEPS}"]


def _eval_argv(checkpoint, output_dir, *model_files):
  return [*(f"--gin_file={f}" for f in model_files), "--gin_file=eval/zeroshot.gin",
          f"--checkpoint={checkpoint}", f"--output_dir={output_dir}",
          "--tasks=xlt_mewslix_eval_en", "--split=validation", "--gin.BATCH_SIZE=8",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XTREME_DATA_DIR", FIXTURES)
    root = tmp_path_factory.mktemp("dual_encoder")
    model_dir = root / "run"
    assert cli.main(_train_argv(model_dir)) == 0
    gin.clear_config()
    yield root, model_dir
    gin.clear_config()


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_loss_falls_and_validation_counts_pairs(trained):
  _, model_dir = trained
  records = _read_jsonl(model_dir / "train_metrics.jsonl")
  steps = [r for r in records if "loss" in r]
  assert len(steps) == STEPS
  # The trainer's token counts are pair counts for the dual encoder.
  assert all(r["tokens_per_second"] == pytest.approx(r["examples_per_second"]) for r in steps)
  assert all(r["loss_per_token"] == pytest.approx(r["loss"], rel=1e-4) for r in steps)
  first, last = np.mean([r["loss"] for r in steps[:5]]), np.mean([r["loss"] for r in steps[-5:]])
  assert last < 0.5 * first, (first, last)
  evals = [r for r in records if "eval/loss" in r]
  # 4 dev pairs in a batch of 8: the 4 zero rows are neither pairs nor negatives.
  assert len(evals) == 1 and evals[0]["eval/num_examples"] == 4
  assert 0.0 <= evals[0]["eval/accuracy"] <= 1.0 and np.isfinite(evals[0]["eval/loss"])
  assert (model_dir / "DONE").exists()
  operative = (model_dir / "operative_config.gin").read_text()
  assert "MODEL = @xltransfer.model.dual_encoder_model()" in operative
  assert "feature_converter = 'dual_encoder'" in operative


@pytest.fixture(scope="module")
def trained_params(trained):
  """(model, the run's final parameters as numpy arrays), read as the evaluator reads them."""
  model = DualEncoderModel(get_config("tiny"))
  shardings = create_partitioner().shardings(model.param_logical_axes())
  params, _ = loading.load_initial_params(str(trained[1]), model, shardings)
  return model, jax.tree.map(np.asarray, params)


def test_checkpoint_holds_no_decoder_and_the_encoder_moved(trained, trained_params):
  model, params = trained_params
  initial = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.PRNGKey(0)))
  assert jax.tree.structure(params) == jax.tree.structure(initial)
  assert set(params) == {"token_embedder", "encoder"}
  # Neither the saved parameters nor the optimizer state carry a decoder.
  step_dir = trained[1] / f"checkpoint_{STEPS}"
  for item in ("params", "opt_state"):
    names = native.stored_shapes(str(step_dir / item))
    assert any("encoder/" in n for n in names), item
    assert not [n for n in names if "decoder" in n], item
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(initial["encoder"]),
                                                   jax.tree.leaves(params["encoder"])))
  assert moved > 1e-3


def _metrics(output_dir, target="mewslix"):
  with open(os.path.join(output_dir, "metrics.json")) as f:
    return json.load(f)["tasks"][target]["en"]["map@20"]


@pytest.mark.slow
def test_retrieval_evaluator_scores_the_trained_encoder(trained, trained_params, monkeypatch,
                                                       builtin_vocab, capsys):
  root, model_dir = trained
  monkeypatch.setenv("XTREME_DATA_DIR", FIXTURES)
  plain, glued = str(root / "eval_plain"), str(root / "eval_glued")
  # The dual-encoder glue after the model file, as the study's eval stages load it.
  assert cli.main(["eval", *_eval_argv(model_dir, glued, "models/mt5_tiny.gin",
                                   "models/dual_encoder.gin")]) == 0
  assert 0.0 <= _metrics(glued) <= 100.0
  # The plain (seq2seq) model file cannot hold the encoder-only checkpoint: it says which
  # file to add.
  capsys.readouterr()
  assert cli.main(["eval", *_eval_argv(model_dir, plain, "models/mt5_tiny.gin")]) == 2
  assert "load it with models/dual_encoder.gin" in capsys.readouterr().err
  records = _read_jsonl(os.path.join(glued, "predictions", "mewslix", "en.jsonl"))
  assert len(records) == 6
  # The evaluator ranked with the trained encoder and the training prefixes: the same best
  # candidate as the trained dual encoder's own embeddings give.
  model, params = trained_params
  rs = retrieval.load_mewslix(FIXTURES, "en", "dev")

  def embed(prefix, texts):
    tokens = inference.encode_with_eos(builtin_vocab, [prefix + t for t in texts],
                                       LENGTHS["inputs"])
    return np.asarray(model.embed(params, tokens))

  query_prefix, candidate_prefix = retrieval.PREFIXES["mewslix"]
  scores = embed(query_prefix, rs.queries) @ embed(candidate_prefix, rs.candidates).T
  best = [rs.candidate_ids[j] for j in np.argmax(scores, axis=1)]
  assert [r["prediction"][0] for r in records] == best


def test_lareqa_evaluates_the_dual_encoder_checkpoint(trained, monkeypatch, builtin_vocab,
                                                     tmp_path):
  root, model_dir = trained
  # LAReQA's candidate pool is all 11 languages: the fixture's en.json stands in for those
  # it lacks.
  pool = tmp_path / "lareqa" / "xquad-r"
  pool.mkdir(parents=True)
  source = os.path.join(XTREME, "lareqa", "xquad-r")
  for lang in languages.TARGET_LANGUAGES["lareqa"]:
    name = f"{lang}.json" if os.path.exists(os.path.join(source, f"{lang}.json")) else "en.json"
    shutil.copy(os.path.join(source, name), pool / f"{lang}.json")
  monkeypatch.setenv("XTREME_DATA_DIR", str(tmp_path))
  output_dir = str(root / "eval_lareqa")
  argv = ["--gin_file=models/mt5_tiny.gin", "--gin_file=models/dual_encoder.gin",
          "--gin_file=eval/zeroshot.gin", f"--checkpoint={model_dir}",
          f"--output_dir={output_dir}", "--tasks=xlt_lareqa_eval_en", "--split=test",
          "--gin.BATCH_SIZE=8", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"]
  assert cli.main(["eval", *argv]) == 0
  assert 0.0 <= _metrics(output_dir, "lareqa") <= 100.0
  records = _read_jsonl(os.path.join(output_dir, "predictions", "lareqa", "en.jsonl"))
  assert records and all(r["prediction"] for r in records)


def test_the_study_fine_tunes_mewslix_and_lareqa_as_dual_encoders():
  from xltransfer import gin_utils  # pylint: disable=import-outside-toplevel
  from xltransfer.commands import train as train_command  # pylint: disable=import-outside-toplevel
  spec = spec_lib.load_spec(os.path.join(STUDY_GIN, "xtreme_r_lowres_mt5_xxl.gin"))
  spec_lib.check_gin_files(spec, "xxl")
  stages = grid.build_stages(spec, "/s")
  by_id = {s.id: s for s in stages}
  for target in ("mewslix", "lareqa"):
    finetune = by_id[f"finetune/none/seed0/{target}"]
    assert finetune.gin_files == ("models/mt5_xxl.gin", "runs/finetune.gin",
                                  "models/dual_encoder.gin")
    assert by_id[f"eval/none/seed0/{target}"].gin_files[-1] == "models/dual_encoder.gin"
  assert by_id["finetune/none/seed0/xnli"].gin_files[-1] == "runs/finetune.gin"
  # The fine-tuning stage's files parse into a dual encoder on unpacked pairs...
  gin_utils.import_modules(*train_command._registration_modules())  # pylint: disable=protected-access
  finetune = by_id["finetune/none/seed0/mewslix"]
  gin_utils.parse_config(finetune.gin_files, [f"{k} = {v!r}" for k, v in finetune.bindings], [])
  assert gin.query_parameter("%MODEL").selector == "xltransfer.model.dual_encoder_model"
  assert gin.query_parameter("train/xltransfer.train.DatasetConfig.pack") is False
  assert gin.query_parameter("xltransfer.train.DatasetConfig.feature_converter") == "dual_encoder"
  # ...and so do its eval stage's (the glue defines no macro that eval would leave unused).
  gin.clear_config()
  evaluation = by_id["eval/none/seed0/mewslix"]
  gin_utils.parse_config(list(evaluation.gin_files) + [eval_command.DEFAULT_GIN_FILE],
                       [f"{k} = {v!r}" for k, v in evaluation.bindings], [])
  assert gin.query_parameter("%MODEL").selector == "xltransfer.model.dual_encoder_model"
