"""Registrations: every task yields examples through seqio.get_dataset from real-format
fixtures (TFDS-backed ones under tfds.testing.mock_data), official language sets, mixtures,
and the `xltransfer tasks` CLI."""
import io
import json
import os
import re
import shutil
import zlib

import gin
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from xltransfer.data import paths, sources, vocab

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LENGTHS = {"inputs": 256, "targets": 64}

# The XTREME-R table of DESIGN.md, verbatim.
DESIGN_LANGUAGES = {
    "xnli": "ar bg de el en es fr hi ru sw th tr ur vi zh",
    "xcopa": "et ht id it qu sw ta th tr vi zh",
    "udpos": "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th "
             "tl tr ur vi yo zh lt pl uk wo ro",
    "xquad": "en es de el ru tr ar vi th zh hi ro",
    "mlqa": "en es de ar hi vi zh",
    "tydiqa": "en ar bn fi id ko ru sw te",
    "mewslix": "ar de en es fa ja pl ro ta tr uk",
    "lareqa": "ar de el en es hi ru th tr vi zh",
}
FIFTY = ("af ar az bg bn de el en es et eu fa fi fr gu he hi ht hu id it ja jv ka kk ko lt ml mr "
         "ms my nl pa pl pt qu ro ru sw ta te th tl tr uk ur vi wo yo zh").split()


def _fill_missing_languages(root):
  """Gives every language a file: where no fixture was hand-written for a language, a copy of
  one of the same family and split (same format) stands in, so every task can be built."""
  def fill(directory, pattern, names):
    files = {m.group(1): f for f in os.listdir(directory) if (m := re.fullmatch(pattern, f))}
    template = os.path.join(directory, sorted(files.values())[0])
    for name in names:
      target = os.path.join(directory, name)
      if not os.path.exists(target):
        shutil.copy(template, target)
  return fill


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  import xltransfer.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from xltransfer.data import languages  # pylint: disable=g-import-not-at-top
  from xltransfer.tasks import translated  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("data")
  xtreme, user = root / "xtreme", root / "user"
  shutil.copytree(os.path.join(FIXTURES, "xtreme"), xtreme)
  shutil.copytree(os.path.join(FIXTURES, "intermediate"), user)
  fill = _fill_missing_languages(root)
  langs = languages.TARGET_LANGUAGES
  for family in ("xnli", "udpos", "panx", "xcopa"):
    ext = "jsonl" if family == "xcopa" else "tsv"
    for split in ("val" if family == "xcopa" else "dev", "test"):
      fill(xtreme / family, rf"{split}-(\w+)\.{ext}",
           [f"{split}-{l}.{ext}" for l in langs[family]])
  fill(xtreme / "xquad", r"xquad\.(\w+)\.json", [f"xquad.{l}.json" for l in langs["xquad"]])
  for split in ("dev", "test"):
    fill(xtreme / "mlqa" / "MLQA_V1" / split, rf"{split}-context-(\w+)-question-\w+\.json",
         [f"{split}-context-{l}-question-{l}.json" for l in langs["mlqa"]])
  fill(xtreme / "tydiqa" / "tydiqa-goldp-v1.1-dev", r"tydiqa\.goldp\.(\w+)\.dev\.json",
       [f"tydiqa.goldp.{l}.dev.json" for l in langs["tydiqa"]])
  for l in langs["tatoeba"]:
    for suffix in (l, "en"):
      target = xtreme / "tatoeba" / f"{l}-en.{suffix}"
      if not target.exists():
        shutil.copy(xtreme / "tatoeba" / f"de-en.{'de' if suffix == l else 'en'}", target)
  for split in ("dev", "test"):
    fill(xtreme / "mewslix" / "wikinews_mentions", rf"{split}-(\w+)\.jsonl",
         [f"{split}-{l}.jsonl" for l in langs["mewslix"]])
  fill(xtreme / "lareqa" / "xquad-r", r"(\w+)\.json", [f"{l}.json" for l in langs["lareqa"]])
  for name, (ext, _, _) in translated.SCHEMAS.items():
    for split in ("train", "dev"):
      fill(user / "translated" / name, rf"{split}-(\w+)\.{ext}",
           [f"{split}-{l}.{ext}" for l in translated.DEFAULT_LANGUAGES])
  for lang in translated.DEFAULT_LANGUAGES:
    if not (user / "text" / lang).exists():
      (user / "text" / lang).mkdir(parents=True)
      shutil.copy(user / "text" / "sw" / "news.txt", user / "text" / lang / "news.txt")
  from xltransfer.tasks import rates  # pylint: disable=g-import-not-at-top
  saved = {k: os.environ.get(k)
           for k in (paths.XTREME_ENV_VAR, paths.USER_DATA_ENV_VAR, rates.CACHE_ENV_VAR)}
  os.environ[paths.XTREME_ENV_VAR] = str(xtreme)
  os.environ[paths.USER_DATA_ENV_VAR] = str(user)
  os.environ[rates.CACHE_ENV_VAR] = str(root / "cache")  # counted corpus sizes
  vocab.use_task_vocabulary("builtin")
  yield xtreme, user
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def _file_backed(entry):
  return not entry.data.startswith("tfds:") and entry.kind != "mixture"


def test_every_file_backed_task_reads_every_split(data_dirs):
  """Every split of every file-backed task reads its fixture files (the pipeline itself runs
  for every task in the chunked test below)."""
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  checked = 0
  for entry in catalog.entries():
    if not _file_backed(entry):
      continue
    task = seqio.get_mixture_or_task(entry.name)
    for split in entry.splits:
      if isinstance(task.source, sources.FileDataSource):
        assert task.source.load(split), (entry.name, split)
      else:  # text-file corpora
        assert next(iter(task.source.get_dataset(split=split, shuffle=False)), None) is not None
      checked += 1
  assert checked > 450


# Every registered task and mixture goes through seqio.get_dataset; CI runs pytest -n 2, so
# the ~550 names are spread over chunks that the workers share. A name's chunk is a hash of
# the name alone, so that every worker splits the same way whatever else it registered.
CHUNKS = 8
# One element is all the test needs: tf.data's graph rewrites cost more than they save here.
NO_REWRITES = tf.data.Options()
NO_REWRITES.experimental_optimization.apply_default_optimizations = False
NO_REWRITES.autotune.enabled = False


def _names_to_pull(chunk):
  """The chunk's registered names, with whether each also goes through the encoder-decoder
  feature converter: the first of each (kind, family, training or not) does. The converter is
  the same code for all (it only sees `inputs`/`targets` tokens) and more than doubles the
  cost of a task."""
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  seen, out = set(), []
  for name in sorted(catalog.ENTRIES):
    entry = catalog.ENTRIES[name]
    key = (entry.kind, entry.family, name.endswith("_train"))
    if zlib.crc32(name.encode()) % CHUNKS == chunk:
      out.append((name, key not in seen))
      seen.add(key)
  return out


def _split_to_pull(name):
  """Training splits for what trains (tasks and mixtures), the test split where there is one
  (the unlabeled files are the odd ones) for what only evaluates."""
  mixture_or_task = seqio.get_mixture_or_task(name)
  tasks = mixture_or_task.tasks if isinstance(mixture_or_task, seqio.Mixture) else [mixture_or_task]
  splits = {s for t in tasks for s in t.splits}
  return "train" if "train" in splits else sorted(splits)[-1 if "test" in splits else 0]


def _assert_eos_terminated(tokens, limit, what):
  """Text, then EOS (1) after trimming to limit, then (for converted features) padding."""
  length = int((tokens != 0).sum())
  shortest = 2 if what[-1] == "inputs" else 1  # inputs are never EOS alone
  assert shortest <= length <= limit, (what, tokens)
  assert tokens[length - 1] == 1 and not tokens[length:].any(), (what, tokens)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_task_and_mixture_yields_through_get_dataset(data_dirs, chunk, monkeypatch):
  from xltransfer.tasks import mixtures  # pylint: disable=g-import-not-at-top
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  assert len(catalog.ENTRIES) > 540
  names = _names_to_pull(chunk)
  assert len(names) > 40
  # The study mixtures keep their structure (English + translated + span-corruption groups,
  # TFDS- and file-backed members) at a fraction of their ~130 members, each of which is
  # pulled on its own here anyway: two English tasks, two languages per set, text corpora.
  monkeypatch.setattr(mixtures, "LOW", ("sw", "ka"))
  monkeypatch.setattr(mixtures, "HIGH", ("de", "zh"))
  with gin.unlock_config():
    gin.bind_parameter("all_nine_tasks.names", ["mnli", "commonsenseqa"])
    gin.bind_parameter("span_source.value", "text")
  try:
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=2):
      for name, convert in names:
        split = _split_to_pull(name)
        converter = (seqio.EncDecFeatureConverter(pack=False) if convert
                     else seqio.PassThroughFeatureConverter())
        ds = seqio.get_dataset(name, task_feature_lengths=LENGTHS, dataset_split=split,
                               shuffle=False, feature_converter=converter)
        ex = next(iter(ds.with_options(NO_REWRITES).as_numpy_iterator()), None)
        assert ex is not None, (name, split)
        if convert:
          inputs, targets = ex["encoder_input_tokens"], ex["decoder_target_tokens"]
          assert inputs.shape == (LENGTHS["inputs"],) and targets.shape == (LENGTHS["targets"],)
        else:
          inputs, targets = ex["inputs"], ex["targets"]
        _assert_eos_terminated(inputs, LENGTHS["inputs"], (name, split, "inputs"))
        _assert_eos_terminated(targets, LENGTHS["targets"], (name, split, "targets"))
  finally:
    gin.clear_config()


def _tfds_alternatives():
  """(task name, split) of every target task that can read TFDS instead of the files (the
  English training tasks too). TyDiQA's training split keeps only English ids, which random
  mock ids never are: test_tydiqa_tfds_training_keeps_english checks that filter."""
  from xltransfer.data import retrieval  # pylint: disable=g-import-not-at-top
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  out = []
  for entry in catalog.entries("target"):
    task = seqio.get_mixture_or_task(entry.name)
    alternative = getattr(task.source, "_alternative", None)
    if alternative is not None or (entry.family == "tatoeba" and
                                   entry.language in retrieval.TFDS_TATOEBA_LANGUAGES):
      out += [(entry.name, split) for split in entry.splits
              if (entry.name, split) != ("xlt_tydiqa_train", "train")]
  return out


@pytest.mark.parametrize("half", range(2))
@pytest.mark.slow
def test_eval_tasks_read_tfds_offline_when_gin_says_so(data_dirs, half):
  """With gin target_source.value = "tfds", every target task that TFDS has reads TFDS
  (mocked): every split of every language, as field dicts the shared preprocessors take."""
  alternatives = _tfds_alternatives()
  families = {n.split("_")[1] for n, _ in alternatives}
  assert families == {"xnli", "xcopa", "panx", "udpos", "xquad", "mlqa", "tydiqa", "tatoeba"}
  trains = {n for n, _ in alternatives if n.endswith("_train")}
  assert trains == {f"xlt_{f}_train" for f in families - {"tatoeba"}}
  assert len({n for n, _ in alternatives}) == 15 + 48 + 33 + 11 + 7 + 9 + 36 + len(trains)
  with gin.unlock_config():
    gin.bind_parameter("target_source.value", "tfds")
  try:
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=2):
      for name, split in alternatives[half::2]:
        source = seqio.get_mixture_or_task(name).source
        ex = next(iter(source.get_dataset(split=split, shuffle=False).as_numpy_iterator()))
        if "tags" in ex:  # class ids became tag names
          assert len(ex["tags"]) and all(not t.isdigit() for t in ex["tags"]), name
        if "label" in ex and "choices" not in ex:  # NLI class ids became label words
          assert ex["label"] in (b"entailment", b"neutral", b"contradiction"), name
        if "choices" in ex:  # COPA's two choices
          assert len(ex["choices"]) == 2 and ex["label"] in (0, 1), name
  finally:
    gin.clear_config()


def test_eval_tasks_from_tfds_run_the_whole_pipeline(data_dirs):
  """One task per TFDS reader through seqio.get_dataset and the feature converter."""
  with gin.unlock_config():
    gin.bind_parameter("target_source.value", "tfds")
  try:
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=2):
      for name, split in [("xlt_xnli_eval_sw", "validation"), ("xlt_panx_eval_ka", "test"),
                          ("xlt_udpos_eval_hi", "validation"), ("xlt_mlqa_eval_de", "test"),
                          ("xlt_xquad_eval_en", "test"), ("xlt_tydiqa_eval_bn", "validation"),
                          ("xlt_tatoeba_eval_jv", "test"), ("xlt_xnli_train", "train"),
                          ("xlt_xcopa_train", "train")]:
        ds = seqio.get_dataset(name, task_feature_lengths=LENGTHS, dataset_split=split,
                               shuffle=False,
                               feature_converter=seqio.EncDecFeatureConverter(pack=False))
        ex = next(iter(ds.as_numpy_iterator()), None)
        assert ex is not None and ex["encoder_input_tokens"][0] != 0, name
  finally:
    gin.clear_config()


def test_tydiqa_tfds_training_keeps_english():
  from xltransfer.tasks import tfds_targets  # pylint: disable=g-import-not-at-top
  ids = ["english-123", "arabic-4", "english--9", "swahili-english-1"]
  kept = tf.data.Dataset.from_tensor_slices({"id": ids}).filter(tfds_targets.english_tydiqa)
  assert [ex["id"] for ex in kept.as_numpy_iterator()] == [b"english-123", b"english--9"]


def test_tatoeba_reads_tfds_where_it_has_the_language(data_dirs):
  from xltransfer.data import retrieval  # pylint: disable=g-import-not-at-top
  with gin.unlock_config():
    gin.bind_parameter("target_source.value", "tfds")
  try:
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=3):
      rs = retrieval.load_tatoeba(None, "ka")
      assert len(rs.queries) == len(rs.candidates) == 3 and rs.gold == [{0}, {1}, {2}]
      assert not any(q.endswith("\n") for q in rs.queries + rs.candidates)
    # XTREME-R's additions are not in TFDS: their files are read.
    rs = retrieval.load_tatoeba(None, "uk")
    assert rs.queries[0] == "Ich habe Hunger."
  finally:
    gin.clear_config()


def test_formats_follow_mt5_and_keep_evaluation_fields(data_dirs):
  def first(name, split):
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split,
                                                     shuffle=False)
    return next(iter(ds.as_numpy_iterator()))
  xnli = first("xlt_xnli_train", "train")
  assert xnli["inputs_pretokenized"].decode().startswith("xnli: premise: Conceptually")
  assert b" hypothesis: Product" in xnli["inputs_pretokenized"]
  assert xnli["targets_pretokenized"] == b"neutral"
  qa = first("xlt_tydiqa_eval_ko", "validation")
  assert qa["inputs_pretokenized"].decode().startswith("question: 누가 이겼나? context: 슈퍼볼")
  assert qa["targets_pretokenized"].decode() == "덴버 브롱코스"
  assert [a.decode() for a in qa["answers"]] == ["덴버 브롱코스", "덴버"]
  copa = first("xlt_xcopa_eval_zh", "validation")
  assert [c.decode() for c in copa["choices"]] == ["马桶里灌满了水。", "水从龙头里流出来了。"]
  assert copa["label"] == 1 and copa["targets_pretokenized"].decode() == "水从龙头里流出来了。"
  # XTREME-R's first XCOPA stage: SIQA in the same format, its question kept as written.
  siqa = first("xlt_xcopa_siqa_train", "train")
  assert siqa["inputs_pretokenized"].decode() == (
      "xcopa: premise: Robin forgot her umbrella and walked home through the storm. "
      "question: How would Robin feel afterwards?")
  assert len(siqa["choices"]) == 3 and siqa["targets_pretokenized"] == b"soaked and cold"
  cause = first("xlt_xcopa_train", "train")
  assert cause["inputs_pretokenized"].decode().endswith("question: What was the cause?")
  pos = first("xlt_udpos_eval_hi", "validation")
  assert len(pos["targets_pretokenized"].split()) == len(pos["tokens"]) == 4
  csqa = first("xlt_inter_commonsenseqa", "test")
  assert len(csqa["choices"]) == 5 and csqa["label"] == -1
  span = first("xlt_span_sample_th", "train")
  assert span["targets"][0] == 1023  # sentinel 0 first


def test_postprocessors_give_metrics_aligned_values():
  from xltransfer.tasks import metrics  # pylint: disable=g-import-not-at-top
  tokens = {"tokens": [b"a", b"b", b"c"], "tags": [b"B-PER", b"O", b"O"]}
  assert metrics.tag_sequence("B-PER O", example=tokens) == ["B-PER", "O", "O"]
  assert metrics.tag_sequence("O O O O", example=tokens) == ["O", "O", "O"]
  assert metrics.tag_sequence(None, example=tokens, is_target=True) == ["B-PER", "O", "O"]
  assert metrics.qa_answers(None, example={"answers": []}, is_target=True) == [""]
  assert metrics.qa_answers(b"Denver", example={}) == "Denver"


def test_list_json_has_the_intermediate_tasks_and_official_languages(data_dirs):
  from xltransfer.commands import tasks as cli  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  assert cli.main(["list", "--json"], out=out) == 0
  entries = json.loads(out.getvalue())
  inter = {e["family"] for e in entries if e["kind"] == "intermediate"}
  assert inter == {"anli_plus", "mnli", "qqp", "sst2", "squad_v2", "ccg", "commonsenseqa",
                   "cosmosqa", "hellaswag", "squad_v1"}
  evals = {}
  for e in entries:
    if e["kind"] == "target" and "_eval_" in e["name"]:
      evals.setdefault(e["family"], set()).add(e["language"])
  expected = {k: set(v.split()) for k, v in DESIGN_LANGUAGES.items()}
  expected["panx"] = set(FIFTY) - {"ht", "wo"}
  assert len(expected["panx"]) == 48
  assert set(evals) == set(expected) | {"tatoeba"}
  for family, langs in expected.items():
    assert evals[family] == langs, family
  assert len(evals["tatoeba"]) == 41 and "en" not in evals["tatoeba"]
  assert evals["tatoeba"] <= set(FIFTY)
  trains = {e["family"] for e in entries if e["name"].endswith("_train") and e["kind"] == "target"}
  assert trains == set(expected)  # every target but Tatoeba has English training data
  mixtures = {e["name"] for e in entries if e["kind"] == "mixture"}
  assert {f"xlt_{f}_zeroshot" for f in evals} <= mixtures
  # How each eval task is evaluated is listed from the catalogue.
  ways = {e["family"]: e["evaluation"] for e in entries
          if e["kind"] == "target" and "_eval_" in e["name"]}
  assert ways["xnli"] == "generation" and ways["xcopa"] == "rank_classification"
  assert {ways[f] for f in ("tatoeba", "mewslix", "lareqa")} == {"retrieval"}


def test_study_mixture_follows_gin_and_temperature(data_dirs):
  try:
    mixture = seqio.get_mixture_or_task("xlt_inter_all9_plus_span_lowres")
    names = {t.name for t in mixture.tasks}
    assert "xlt_inter_ccg" in names and "xlt_span_mc4_sw" in names
    gin.bind_parameter("all_nine_tasks.names", ["mnli", "sst2"])
    gin.bind_parameter("span_source.value", "text")
    gin.bind_parameter("span_fraction.value", 0.25)
    gin.bind_parameter("mixing_temperature.value", 2.0)
    mixture = seqio.get_mixture_or_task("xlt_inter_all9_plus_span_lowres")
    names = {t.name for t in mixture.tasks}
    assert "xlt_inter_ccg" not in names and "xlt_inter_sst2" in names
    assert "xlt_span_text_sw" in names and "xlt_span_mc4_sw" not in names
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates["xlt_inter_mnli"] == pytest.approx(392702 ** 0.5)
    span = sum(r for n, r in rates.items() if "span" in n)
    assert span / sum(rates.values()) == pytest.approx(0.25)
  finally:
    gin.clear_config()
  solo = seqio.get_mixture_or_task("xlt_span_lowres")
  # mC4 not prepared here: every corpus counts as default_examples, so the rates are equal.
  assert len({solo.get_rate(t) for t in solo.tasks}) == 1


def test_cli_show_prints_raw_and_decoded_examples(data_dirs):
  from xltransfer.commands import tasks as cli  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  assert cli.main(["show", "xlt_panx_eval_ru", "--split", "validation", "-n", "1"], out=out) == 0
  text = out.getvalue()
  assert "raw examples:" in text and "tags: ['B-PER', 'O', 'O', 'B-LOC']" in text
  assert "decoded: 'panx: Владимир поехал в Москву'" in text
  from xltransfer.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="has no split 'train'; splits: test"):
    cli.main(["show", "xlt_xquad_eval_ar"], out=io.StringIO())


def test_bad_line_surfaces_at_get_dataset_naming_file_and_line(data_dirs, tmp_path):
  from xltransfer.errors import DataFormatError  # pylint: disable=g-import-not-at-top
  xtreme, _ = data_dirs
  bad = xtreme / "xnli" / "dev-sw.tsv"
  saved = bad.read_text(encoding="utf-8")
  bad.write_text(saved + "premise\thypothesis\tunsure\n", encoding="utf-8")
  try:
    with pytest.raises(DataFormatError, match=rf"{bad}:3: unknown label 'unsure'"):
      seqio.get_dataset("xlt_xnli_eval_sw", task_feature_lengths=LENGTHS,
                        dataset_split="validation", shuffle=False,
                        feature_converter=seqio.EncDecFeatureConverter(pack=False))
  finally:
    bad.write_text(saved, encoding="utf-8")


def test_xcopa_reads_the_val_files_xtreme_r_writes_and_dev_files_too(data_dirs):
  from xltransfer.errors import UserError  # pylint: disable=g-import-not-at-top
  xtreme, _ = data_dirs
  source = seqio.get_mixture_or_task("xlt_xcopa_eval_zh").source
  val, dev = xtreme / "xcopa" / "val-zh.jsonl", xtreme / "xcopa" / "dev-zh.jsonl"
  assert len(source.load("validation")) == 2
  val.rename(dev)
  try:
    assert len(source.load("validation")) == 2
    dev.rename(xtreme / "xcopa" / "elsewhere")
    with pytest.raises(UserError, match=f"xlt_xcopa_eval_zh needs the file {val},"):
      source.load("validation")
  finally:
    for moved in (dev, xtreme / "xcopa" / "elsewhere"):
      if moved.exists():
        moved.rename(val)


def test_metric_wrappers_reach_the_evaluation_metrics():
  from xltransfer.tasks import metrics  # pylint: disable=g-import-not-at-top
  assert metrics.accuracy(["neutral", "entailment"], ["neutral", "neutral"])["accuracy"] == 50.0
  assert metrics.squad([["Denver Broncos", "Broncos"]], ["the Broncos"])["exact_match"] == 100.0
  assert metrics.mlqa("zh")([["丹佛野马队"]], ["丹佛野马队"])["f1"] == 100.0
  assert metrics.seqeval([["B-PER", "O"]], [["B-PER", "O"]])["f1"] == 100.0
  assert metrics.seqeval_accuracy([["N", "N/N"]], [["N", "N"]])["accuracy"] == 50.0


def test_docs_example_registers_a_task_that_runs(data_dirs):
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  with open(os.path.join(os.path.dirname(__file__), "..", "docs", "tasks.md"), encoding="utf-8") as f:
    code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
  try:
    exec(compile(code, "docs/tasks.md", "exec"), {})  # pylint: disable=exec-used
    assert catalog.ENTRIES["toy_nli"].kind == "intermediate"
    assert seqio.get_mixture_or_task("toy_nli").metric_fns  # the example has a metric
  finally:
    catalog.ENTRIES.pop("toy_nli", None)
    seqio.TaskRegistry.remove("toy_nli")


def test_eval_task_names_check_family_and_language():
  from xltransfer.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from xltransfer.tasks import targets  # pylint: disable=g-import-not-at-top
  assert targets.eval_task("xnli", "sw") == "xlt_xnli_eval_sw"
  with pytest.raises(ConfigError, match="unknown language 'ja' for xnli; valid codes: ar bg de"):
    targets.eval_task("xnli", "ja")
  with pytest.raises(ConfigError, match="valid: xnli xcopa udpos panx"):
    targets.eval_task("xnli2", "en")


def test_udpos_languages_without_dev_data_have_only_a_test_split():
  """UD 2.5 has only test treebanks for kk, th, tl and yo (TFDS xtreme_pos builds no dev split
  for them either): their eval tasks offer `test` alone, so nothing asks for a missing file."""
  import xltransfer.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from xltransfer.tasks import catalog  # pylint: disable=g-import-not-at-top
  for lang in ("kk", "th", "tl", "yo"):
    task = seqio.get_mixture_or_task(f"xlt_udpos_eval_{lang}")
    assert tuple(task.splits) == ("test",), lang
    assert f"dev-{lang}" not in catalog.ENTRIES[task.name].data
  assert set(seqio.get_mixture_or_task("xlt_udpos_eval_de").splits) == {"validation", "test"}
