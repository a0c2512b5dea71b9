"""`study report` on eval outputs written here in the documented format (docs/interfaces.md):
the numbers in report.md, report.csv and report.json are the metric files' numbers."""
import csv
import json
import os
import zlib

import numpy as np
import pytest
from seqeval.metrics import f1_score

from xltransfer.errors import UserError
from xltransfer.commands import study as study_command
from xltransfer.study import collect, grid, report
from xltransfer.study import spec as spec_lib

CONDITIONS = ("none", "xlt_inter_all9", "xlt_span_lowres")
# How often each condition is right, per language group: the low-resource condition is
# clearly better on Swahili, the English one a little better elsewhere.
SKILL = {"none": {"sw": 0.40, "other": 0.60},
         "xlt_inter_all9": {"sw": 0.42, "other": 0.66},
         "xlt_span_lowres": {"sw": 0.75, "other": 0.61}}
TAGS = ("O", "B-PER", "I-PER", "B-LOC")
# The data release each target's numbers come from, as eval_info.json records it.
SOURCES = {"xnli": "XNLI 1.0 release", "panx": "XTREME-R download", "xquad": "XQuAD release",
           "tatoeba": "tfds tatoeba", "mewslix": "Mewsli-X release"}


def _provenance(target, lang, no_gold=None):
  return {"source": SOURCES[target], "location": f"/data/{target}/test-{lang}", "split": "test",
          "labelled": no_gold is None, "no_gold": no_gold}


def _spec(tmp_path):
  return spec_lib.StudySpec.from_dict({
      **spec_lib.StudySpec(
          name="report_study", model_size="tiny", initial_checkpoint="/ckpt",
          conditions=list(CONDITIONS), english_condition="xlt_inter_all9",
          targets=["xnli", "panx", "xquad", "tatoeba", "mewslix"],
          languages=["en", "de", "sw"], seeds=[0, 1],
          output_dir=str(tmp_path / "study")).to_dict()})


def _rng(*key):
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _records(target, lang, condition, seed, salt="", n=60):
  """Examples with outcomes driven by the condition's skill; same ids for every condition."""
  skill = SKILL[condition]["sw" if lang == "sw" else "other"] + 0.02 * seed
  difficulty = _rng(target, lang, salt).random(n)  # shared by the conditions: what pairing uses
  noise = _rng(target, lang, salt, condition, seed)
  records = []
  for i in range(n):
    right = difficulty[i] < skill or noise.random() < 0.05
    record = {"id": f"{target}-{lang}-{i}", "input": f"example {i}"}
    if target == "panx":
      gold = [TAGS[(i + k) % 4] for k in range(5)]
      predicted = list(gold) if right else ["O"] * 5
      record.update(target=gold, prediction=predicted)
      record["example_score"] = 100.0 * np.mean([g == p for g, p in zip(gold, predicted)])
    elif target == "xquad":
      partial = 50.0 if noise.random() < 0.3 else 100.0
      record.update(target=["the answer"], prediction="the answer" if right else "no",
                    example_score=partial if right else 0.0,
                    exact_match=100.0 if right and partial == 100.0 else 0.0)
    else:
      record.update(target="a", prediction="a" if right else "b",
                    example_score=100.0 if right else 0.0)
    records.append(record)
  return records


def _metrics(target, records):
  if target == "panx":
    return {"f1": 100 * f1_score([r["target"] for r in records],
                                 [r["prediction"] for r in records]),
            "precision": 0.0, "recall": 0.0}
  mean = float(np.mean([r["example_score"] for r in records]))
  if target == "xquad":
    return {"f1": mean, "exact_match": float(np.mean([r["exact_match"] for r in records]))}
  if target in ("mewslix", "lareqa"):
    return {"map@20": mean}
  return {"accuracy": mean}


def _write_eval_info(stage, langs, no_gold=()):
  """eval_info.json as `xltransfer eval` writes it: split and provenance per language."""
  provenance = {lang: _provenance(stage.target, lang,
                                  "every label is empty" if lang in no_gold else None)
                for lang in langs}
  with open(os.path.join(stage.stage_dir, "eval_info.json"), "w") as f:
    json.dump({"splits": {stage.target: {lang: "test" for lang in langs}},
               "provenance": {stage.target: provenance}}, f)


def _write_study(tmp_path, skip=()):
  spec = _spec(tmp_path)
  study_dir = spec.study_dir()
  stages = grid.build_stages(spec, study_dir)
  grid.write_study_file(os.path.join(study_dir, grid.STUDY_FILE), spec, stages, study_dir)
  files = {}
  for stage in stages:
    if stage.command != "eval" or stage.id in skip:
      continue
    tasks = {}
    for lang in spec.languages_for(stage.target):
      seed = stage.seed or 0
      # Direct evaluation scores another model: other examples' outcomes.
      condition_records = _records(stage.target, lang, stage.condition, seed, stage.role)
      path = os.path.join(stage.stage_dir, "predictions", stage.target, f"{lang}.jsonl")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in condition_records)
      tasks[lang] = _metrics(stage.target, condition_records)
    with open(os.path.join(stage.stage_dir, "metrics.json"), "w") as f:
      json.dump({"checkpoint": "/x", "step": 3, "tasks": {stage.target: tasks}}, f)
    _write_eval_info(stage, tasks)
    open(os.path.join(stage.stage_dir, "DONE"), "w").close()
    files[stage.id] = tasks
  return spec, stages, study_dir, files


def _expected_per_language(spec, stages, files):
  """{column: {condition: {lang: {metric: mean over seeds}}}} straight from the files."""
  runs = {}
  for stage in stages:
    if stage.id in files:
      column = stage.target if stage.role == "eval" or stage.target == "tatoeba" else (
          f"{stage.target} (direct)")
      runs.setdefault((column, stage.condition), []).append(files[stage.id])
  expected = {}
  for (column, condition), per_seed in runs.items():
    expected.setdefault(column, {})[condition] = {
        lang: {m: float(np.mean([s[lang][m] for s in per_seed])) for m in per_seed[0][lang]}
        for lang in per_seed[0]}
  return expected


def _task_score(target, per_language):
  values = [(m["f1"] + m["exact_match"]) / 2 if target == "xquad" else
            m.get("accuracy", m.get("f1", m.get("map@20"))) for m in per_language.values()]
  return float(np.mean(values))


def _markdown_table(markdown, heading):
  """{row label: {column header: cell}} of the table under `heading`."""
  lines = markdown.split(heading + "\n", 1)[1].strip().splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  table = {}
  for line in lines[2:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    table[cells[0]] = dict(zip(header, cells))
  return table


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("report")
  spec, stages, study_dir, files = _write_study(tmp_path)
  assert study_command.main(["report", study_dir, "--bootstrap_samples", "300"]) == 0
  out = os.path.join(study_dir, "report")
  with open(os.path.join(out, "report.json")) as f:
    data = json.load(f)
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  with open(os.path.join(out, "report.csv")) as f:
    rows = list(csv.DictReader(f))
  return {"spec": spec, "stages": stages, "files": files, "json": data, "md": markdown,
          "csv": rows, "out": out, "expected": _expected_per_language(spec, stages, files)}


def test_json_numbers_are_the_metric_files_numbers(written):
  data, expected, spec = written["json"], written["expected"], written["spec"]
  assert set(data["per_language"]) == set(expected)
  assert set(expected) == {"xnli", "panx", "xquad", "tatoeba", "mewslix", "mewslix (direct)"}
  for column, by_condition in expected.items():
    for condition, langs in by_condition.items():
      for lang, metrics in langs.items():
        for metric, value in metrics.items():
          assert data["per_language"][column][condition][lang][metric] == pytest.approx(value)
  for condition in CONDITIONS:
    scores = {t: _task_score(t, expected[t][condition]) for t in spec.targets}
    for target, value in scores.items():
      assert data["conditions"][condition]["task_scores"][target] == pytest.approx(value)
    assert data["conditions"][condition]["targets_mean"] == pytest.approx(
        np.mean(list(scores.values())))
    assert data["conditions"][condition]["xtreme_r_overall"] is None  # not all ten targets
    # Only the retrieval category (evaluate.py's: tatoeba, mewslix) has all of its tasks here.
    assert data["conditions"][condition]["categories"] == pytest.approx(
        {"retrieval": (scores["tatoeba"] + scores["mewslix"]) / 2})
    low = [_lang_score(t, expected[t][condition]["sw"]) for t in spec.targets
           if "sw" in expected[t][condition]]
    assert data["conditions"][condition]["groups"]["low-resource"]["mean"] == pytest.approx(
        np.mean(low))
    high = [_lang_score(t, expected[t][condition]["de"]) for t in spec.targets
            if "de" in expected[t][condition]]
    assert data["conditions"][condition]["groups"]["high-resource"]["mean"] == pytest.approx(
        np.mean(high))
  assert data["missing_stages"] == []


def _lang_score(target, metrics):
  if target == "xquad":
    return (metrics["f1"] + metrics["exact_match"]) / 2
  return metrics.get("accuracy", metrics.get("f1", metrics.get("map@20")))


def test_deltas_and_their_intervals(written):
  data, expected, spec = written["json"], written["expected"], written["spec"]
  comparisons = data["comparisons"]

  def find(**keys):
    [match] = [c for c in comparisons if all(c[k] == v for k, v in keys.items())]
    return match

  for reference, condition in (("none", "xlt_inter_all9"), ("none", "xlt_span_lowres"),
                               ("xlt_inter_all9", "xlt_span_lowres")):
    for target in spec.targets:
      d = find(reference=reference, condition=condition, scope="task", column=target)
      assert d["delta"] == pytest.approx(_task_score(target, expected[target][condition])
                                         - _task_score(target, expected[target][reference]))
      assert d["ci_low"] <= d["delta"] <= d["ci_high"]
      assert d["significant"] == (d["ci_low"] > 0 or d["ci_high"] < 0)
  # Baseline vs English-only is not repeated in the English-only section.
  assert not [c for c in comparisons if c["reference"] == "xlt_inter_all9"
              and c["condition"] == "none"]
  # The low-resource condition is far better on Swahili: significant on the group.
  sw = find(reference="none", condition="xlt_span_lowres", scope="group", group="low-resource")
  assert sw["delta"] > 10 and sw["significant"]
  xnli_sw = find(reference="none", condition="xlt_span_lowres", scope="language",
                 column="xnli", language="sw")
  assert xnli_sw["delta"] == pytest.approx(expected["xnli"]["xlt_span_lowres"]["sw"]["accuracy"]
                                           - expected["xnli"]["none"]["sw"]["accuracy"])


def test_csv_numbers_are_the_metric_files_numbers(written):
  rows, expected = written["csv"], written["expected"]
  values = {(r["condition"], r["column"], r["language"], r["metric"]): float(r["value"])
            for r in rows if r["kind"] == "value" and r["language"]}
  checked = 0
  for column, by_condition in expected.items():
    for condition, langs in by_condition.items():
      for lang, metrics in langs.items():
        for metric, value in metrics.items():
          assert values[(condition, column, lang, metric)] == pytest.approx(value)
          checked += 1
  assert checked > 50
  deltas = [r for r in rows if r["kind"] == "delta" and r["metric"] == "task"]
  by_json = {(c["reference"], c["condition"], c["column"]): c["delta"]
             for c in written["json"]["comparisons"] if c["scope"] == "task"}
  assert len(deltas) == len(by_json)
  for r in deltas:
    assert float(r["value"]) == pytest.approx(by_json[(r["reference"], r["condition"],
                                                       r["column"])])


def test_markdown_numbers_are_the_metric_files_numbers(written):
  markdown, expected, data = written["md"], written["expected"], written["json"]
  labels = {c: v["label"] for c, v in data["conditions"].items()}
  for column, by_condition in expected.items():
    target = column.split(" ")[0]
    metrics = ("f1", "exact_match") if target == "xquad" else (
        {"panx": "f1", "mewslix": "map@20"}.get(target, "accuracy"),)
    for metric in metrics:
      table = _markdown_table(markdown, f"### {column}: {metric}")
      for condition, langs in by_condition.items():
        for lang, values in langs.items():
          assert table[labels[condition]][lang] == f"{values[metric]:.2f}"
  scores = _markdown_table(markdown, "## XTREME-R score per condition")
  for condition in CONDITIONS:
    row = scores[labels[condition]]
    assert row["targets mean"] == f"{data['conditions'][condition]['targets_mean']:.2f}"
    assert row["xnli"] == f"{data['conditions'][condition]['task_scores']['xnli']:.2f}"
    assert row["seeds"] == "2"
  deltas = _markdown_table(markdown, f"## Deltas against {labels['none']}")
  d = next(c for c in data["comparisons"] if c["reference"] == "none"
           and c["condition"] == "xlt_span_lowres" and c["scope"] == "task"
           and c["column"] == "panx")
  assert deltas[labels["xlt_span_lowres"]]["panx"].startswith(f"{d['delta']:+.2f} [")
  assert "## Exploratory contrasts significant after adjustment" in markdown
  assert markdown.index("## Primary contrast") < markdown.index("## XTREME-R score per condition")


def test_plots_exist(written):
  out = written["out"]
  for name in ("heatmap_deltas.png", "lowres_xnli.png", "lowres_panx.png",
               "lowres_tatoeba.png"):
    path = os.path.join(out, name)
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # mewslix and xquad have no low-resource language among en/de/sw.
  assert not os.path.exists(os.path.join(out, "lowres_mewslix.png"))
  assert sorted(written["json"]["plots"]) == sorted(
      os.path.join(out, f) for f in os.listdir(out) if f.endswith(".png"))


def test_report_lists_missing_stages_and_reports_the_rest(tmp_path):
  missing = "eval/xlt_span_lowres/seed1/xnli"
  _, _, study_dir, _ = _write_study(tmp_path, skip=(missing,))
  paths = report.write_report(study_dir, samples=50, plot=False)
  data = json.load(open(paths["json"]))
  assert data["missing_stages"] == [missing]
  assert "Incomplete" in open(paths["markdown"]).read()
  # The seed that exists still gives the condition a score.
  assert data["conditions"]["xlt_span_lowres"]["task_scores"]["xnli"] is not None


def test_report_names_the_source_and_split_of_every_number(written):
  data, markdown, expected = written["json"], written["md"], written["expected"]
  for column, by_condition in expected.items():
    target = column.split(" ")[0]
    for lang in {l for langs in by_condition.values() for l in langs}:
      assert data["sources"][column][lang] == [
          {"source": SOURCES[target], "split": "test", "location": f"/data/{target}/test-{lang}"}]
  table = markdown.split("## Where the numbers come from", 1)[1]
  assert "| xnli | XNLI 1.0 release, test split | de en sw |" in table
  assert "| mewslix (direct) | Mewsli-X release, test split | de en |" in table
  # Under each per-language table, the line that says where its numbers come from.
  xnli = markdown.split("### xnli: accuracy", 1)[1].split("###", 1)[0]
  assert "Source: XNLI 1.0 release, test split (de en sw)" in xnli
  assert "Warning" not in markdown
  rows = [r for r in written["csv"] if r["kind"] == "value" and r["language"]]
  assert rows and all(r["source"] == SOURCES[r["column"].split(" ")[0]] and r["split"] == "test"
                      for r in rows)


def _fail_stage_without_gold(stage, spec):
  """What `xltransfer eval` with require_gold leaves when sw has no gold: the other languages'
  metrics, the failure naming the file, no DONE; and the runner's STUDY_FAILED."""
  os.remove(os.path.join(stage.stage_dir, "DONE"))
  with open(os.path.join(stage.stage_dir, "metrics.json")) as f:
    data = json.load(f)
  del data["tasks"][stage.target]["sw"]
  data["failed"] = {stage.target: {"sw": f"xlt_{stage.target}_eval_sw: no gold to score, so no "
                                         f"metric (require_gold): /data/xnli/test-sw.tsv: every "
                                         "label is empty"}}
  with open(os.path.join(stage.stage_dir, "metrics.json"), "w") as f:
    json.dump(data, f)
  with open(os.path.join(stage.stage_dir, "STUDY_FAILED"), "w") as f:
    json.dump({"exit_code": 1, "reason": "exit code 1", "log": "stage.log"}, f)


def test_a_stage_without_gold_is_a_missing_cell_not_zero(tmp_path):
  spec, stages, study_dir, _ = _write_study(tmp_path)
  failed = [s for s in stages if s.id in ("eval/xlt_span_lowres/seed0/xnli",
                                          "eval/xlt_span_lowres/seed1/xnli")]
  for stage in failed:
    _fail_stage_without_gold(stage, spec)
  paths = report.write_report(study_dir, samples=50, plot=False)
  data = json.load(open(paths["json"]))
  markdown = open(paths["markdown"]).read()
  assert data["missing_stages"] == [s.id for s in failed]
  assert "xnli" not in data["conditions"]["xlt_span_lowres"]["task_scores"]
  assert data["conditions"]["xlt_span_lowres"]["targets_mean"] is None
  assert "xlt_span_lowres" not in data["per_language"]["xnli"]
  label = data["conditions"]["xlt_span_lowres"]["label"]
  scores = _markdown_table(markdown, "## XTREME-R score per condition")
  assert scores[label]["xnli"] == "–" and scores[label]["targets mean"] == "–"
  per_language = _markdown_table(markdown, "### xnli: accuracy")
  assert per_language[label] == {"condition": label, "de": "–", "en": "–", "sw": "–"}
  for stage in failed:
    [note] = data["stage_notes"][stage.id]
    assert "xnli/sw failed" in note and "/data/xnli/test-sw.tsv" in note
    assert f"- `{stage.id}`: xnli/sw failed: " in markdown
  # The other conditions keep their numbers.
  assert scores[data["conditions"]["none"]["label"]]["xnli"] != "–"


def test_a_number_from_data_without_gold_is_not_reported(tmp_path):
  spec, stages, study_dir, _ = _write_study(tmp_path)
  [stage] = [s for s in stages if s.id == "eval/none/seed0/panx"]
  # An older or foreign evaluator scored sw although its provenance says there is no gold.
  _write_eval_info(stage, ("en", "de", "sw"), no_gold=("sw",))
  data = report.build_report(study_dir, samples=50)
  [note] = data["stage_notes"][stage.id]
  assert "panx/sw" in note and "no gold" in note and "not reported" in note
  # Seed 1 still has sw; the seed mean needs every seed, so sw is left out for "none".
  assert "sw" not in data["per_language"]["panx"]["none"]
  assert set(data["per_language"]["panx"]["none"]) == {"en", "de"}


def test_numbers_from_different_sources_across_runs_are_flagged(tmp_path):
  spec, stages, study_dir, _ = _write_study(tmp_path)
  [stage] = [s for s in stages if s.id == "eval/xlt_span_lowres/seed1/xnli"]
  info_path = os.path.join(stage.stage_dir, "eval_info.json")
  info = json.load(open(info_path))
  info["provenance"]["xnli"]["sw"]["source"] = "XTREME-R download"
  info["provenance"]["xnli"]["sw"]["split"] = "dev"
  with open(info_path, "w") as f:
    json.dump(info, f)
  os.remove(os.path.join(stages[0].stage_dir, "eval_info.json"))  # direct/none/tatoeba
  paths = report.write_report(study_dir, samples=50, plot=False)
  data = json.load(open(paths["json"]))
  markdown = open(paths["markdown"]).read()
  assert [e["source"] for e in data["sources"]["xnli"]["sw"]] == [
      "XNLI 1.0 release", "XTREME-R download"]
  assert ("**Warning**: xnli/sw numbers come from different data across runs (XNLI 1.0 release, "
          "test split; XTREME-R download, dev split): they are not comparable.") in markdown
  # A stage that recorded no provenance: its numbers say so. (Seed-less: its one run.)
  assert stages[0].id == "direct/none/tatoeba"
  assert {e["source"] for l in ("de", "sw")
          for e in data["sources"]["tatoeba"][l]} == {None, "tfds tatoeba"}
  assert "| tatoeba | source not recorded |" in markdown


def test_report_of_a_directory_without_a_study_says_so(tmp_path):
  with pytest.raises(UserError, match="study.json"):
    study_command.main(["report", str(tmp_path)])


def test_without_prediction_files_deltas_have_no_interval(tmp_path):
  spec, stages, study_dir, _ = _write_study(tmp_path)
  import shutil  # pylint: disable=import-outside-toplevel
  for stage in stages:
    if stage.id == "eval/xlt_span_lowres/seed1/xnli":
      shutil.rmtree(os.path.join(stage.stage_dir, "predictions"))
  paths = report.write_report(study_dir, samples=50, plot=False)
  data = json.load(open(paths["json"]))
  xnli = [c for c in data["comparisons"] if c["condition"] == "xlt_span_lowres"
          and c["column"] == "xnli" and c["scope"] in ("task", "language")]
  assert xnli and all(c["ci_low"] is None and c["significant"] is None for c in xnli)
  panx = [c for c in data["comparisons"] if c["condition"] == "xlt_span_lowres"
          and c["column"] == "panx" and c["scope"] == "task"]
  assert all(c["ci_low"] is not None for c in panx)
  deltas = _markdown_table(open(paths["markdown"]).read(), "## Deltas against baseline (none)")
  task = next(c for c in xnli if c["scope"] == "task")
  assert deltas["xlt_span_lowres"]["xnli"] == f"{task['delta']:+.2f}"


def _qa_study(tmp_path, with_exact_match):
  """An mlqa-only study whose records are in the evaluator's form (every gold answer)."""
  from xltransfer import metrics as official  # pylint: disable=import-outside-toplevel
  spec = spec_lib.StudySpec(name="qa", model_size="tiny", initial_checkpoint="/ckpt",
                            conditions=["none", "xlt_inter_all9"], targets=["mlqa"],
                            languages=["de", "zh"], output_dir=str(tmp_path / "qa"))
  stages = grid.build_stages(spec, spec.study_dir())
  grid.write_study_file(os.path.join(spec.study_dir(), grid.STUDY_FILE), spec, stages,
                        spec.study_dir())
  answers = {"de": (["die Stadt Berlin", "Berlin"], ["Berlin", "in der Stadt", "Berlin!"]),
             "zh": (["北京市", "北京"], ["北京", "上海市", "北京市"])}
  files = {}
  for stage in [s for s in stages if s.command == "eval"]:
    tasks = {}
    for lang, (golds, predictions) in answers.items():
      shift = 0 if stage.condition == "none" else 1
      records = []
      for i in range(12):
        prediction = predictions[(i + shift) % len(predictions)]
        record = {"id": f"{lang}{i}", "input": "q", "target": golds, "prediction": prediction,
                  "example_score": official.mlqa_f1_em([golds], [prediction], lang)["f1"]}
        if with_exact_match:
          record["exact_match"] = official.mlqa_f1_em([golds], [prediction], lang)["exact_match"]
        records.append(record)
      path = os.path.join(stage.stage_dir, "predictions", "mlqa", f"{lang}.jsonl")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
      tasks[lang] = official.mlqa_f1_em([r["target"] for r in records],
                                        [r["prediction"] for r in records], lang)
    with open(os.path.join(stage.stage_dir, "metrics.json"), "w") as f:
      json.dump({"checkpoint": "/x", "step": 1, "tasks": {"mlqa": tasks}}, f)
    open(os.path.join(stage.stage_dir, "DONE"), "w").close()
    files[stage.condition] = tasks
  return spec, stages, files


@pytest.mark.parametrize("with_exact_match", [False, True])
def test_qa_examples_average_f1_and_exact_match_like_the_metric(tmp_path, with_exact_match):
  spec, stages, files = _qa_study(tmp_path, with_exact_match)
  results, missing = collect.load_results(spec, stages)
  assert not missing
  store = collect.ExampleStore(results)
  for lang in ("de", "zh"):
    cells = store.cells(spec.conditions, "mlqa", lang)
    for condition, cell in cells.items():
      metrics = files[condition][lang]
      assert 0 < metrics["exact_match"] < metrics["f1"]  # F1 and EM differ here
      assert cell.point() == pytest.approx((metrics["f1"] + metrics["exact_match"]) / 2)


def test_unlabeled_examples_give_no_interval(tmp_path):
  spec, stages, _ = _qa_study(tmp_path, with_exact_match=True)
  for stage in stages:
    if stage.id == "eval/none/seed0/mlqa":
      path = os.path.join(stage.stage_dir, "predictions", "mlqa", "de.jsonl")
      records = [json.loads(l) for l in open(path)]
      with open(path, "w") as f:
        f.writelines(json.dumps({**r, "example_score": None}) + "\n" for r in records)
  data = report.build_report(spec.study_dir(), samples=50)
  by_lang = {c["language"]: c for c in data["comparisons"] if c["scope"] == "language"}
  assert by_lang["de"]["ci_low"] is None and by_lang["zh"]["ci_low"] is not None


def _drop_language(stage, lang):
  """A stage that evaluated one language fewer (its metrics and predictions)."""
  path = os.path.join(stage.stage_dir, "metrics.json")
  data = json.load(open(path))
  del data["tasks"][stage.target][lang]
  with open(path, "w") as f:
    json.dump(data, f)
  os.remove(os.path.join(stage.stage_dir, "predictions", stage.target, f"{lang}.jsonl"))


def test_deltas_compare_the_same_languages_and_say_which_are_missing(tmp_path):
  spec, stages, study_dir, files = _write_study(tmp_path)
  # The baseline lacks Swahili, the hard language, on XNLI (both seeds).
  for stage in stages:
    if stage.id in ("eval/none/seed0/xnli", "eval/none/seed1/xnli"):
      _drop_language(stage, "sw")
  paths = report.write_report(study_dir, samples=100, plot=False)
  data = json.load(open(paths["json"]))
  expected = _expected_per_language(spec, stages, {k: v for k, v in files.items()})
  [task] = [c for c in data["comparisons"] if c["reference"] == "none"
            and c["condition"] == "xlt_inter_all9" and c["scope"] == "task"
            and c["column"] == "xnli"]
  # Over de and en only, for both sides; not xlt_inter_all9's three languages vs none's two.
  shared = {l: expected["xnli"][c] for c in ("xlt_inter_all9", "none") for l in ("de", "en")}
  assert shared
  over_shared = np.mean([expected["xnli"]["xlt_inter_all9"][l]["accuracy"]
                         - expected["xnli"]["none"][l]["accuracy"] for l in ("de", "en")])
  assert task["delta"] == pytest.approx(over_shared)
  assert task["ci_low"] <= task["delta"] <= task["ci_high"]
  assert task["incomplete"] == ["xnli/sw (no none)"]
  [mean] = [c for c in data["comparisons"] if c["reference"] == "none"
            and c["condition"] == "xlt_inter_all9" and c["scope"] == "targets_mean"]
  assert "xnli/sw (no none)" in mean["incomplete"]
  markdown = open(paths["markdown"]).read()
  assert "## Incomplete contrasts" in markdown
  assert "xlt_inter_all9 vs baseline (none) on xnli: xnli/sw (no none)" in markdown


def test_a_metric_file_that_disagrees_with_its_predictions_is_an_error(tmp_path):
  _, stages, study_dir, _ = _write_study(tmp_path)
  [stage] = [s for s in stages if s.id == "eval/xlt_inter_all9/seed0/xnli"]
  path = os.path.join(stage.stage_dir, "metrics.json")
  data = json.load(open(path))
  data["tasks"]["xnli"]["de"]["accuracy"] += 1.0  # e.g. the metrics of an earlier eval
  with open(path, "w") as f:
    json.dump(data, f)
  predictions = os.path.join(stage.stage_dir, "predictions", "xnli", "de.jsonl")
  with pytest.raises(UserError, match="metrics.json says") as raised:
    report.build_report(study_dir, samples=50)
  assert predictions in str(raised.value) and path in str(raised.value)
  from xltransfer import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(["study", "report", study_dir, "--bootstrap_samples", "50"]) == 2
  assert not os.path.exists(os.path.join(study_dir, "report", "report.md"))


def test_primary_contrast_families_and_duplicates(written):
  data = written["json"]
  comparisons = data["comparisons"]
  assert data["primary"] == {"pairs": [["xlt_span_lowres", "xlt_inter_all9"]],
                             "languages": "low-resource"}
  primary = [c for c in comparisons if c["family"] == "primary"]
  assert sorted(c["scope"] for c in primary) == ["difference_of_differences", "primary"]
  assert all((c["condition"], c["reference"]) == ("xlt_span_lowres", "xlt_inter_all9")
             for c in primary)
  [did] = [c for c in primary if c["scope"] == "difference_of_differences"]
  # Only targets with languages of both groups (sw; de) enter: xquad and mewslix have no sw.
  assert did["tasks"] == ["xnli", "panx", "tatoeba"]
  per_task = {(c["column"], c["group"]): c["delta"] for c in comparisons
              if c["condition"] == "xlt_span_lowres" and c["reference"] == "xlt_inter_all9"
              and c["scope"] == "group_task"}
  # The difference of differences: per task the low-resource delta minus the high-resource
  # one, averaged over those tasks (the high-resource group mean also averages xquad and
  # mewslix, which would mix the task mix into the gap).
  assert did["delta"] == pytest.approx(np.mean(
      [per_task[(t, "low-resource")] - per_task[(t, "high-resource")] for t in did["tasks"]]))
  # Holm within each family: adjusted p-values at least the raw ones, flags from them.
  for c in comparisons:
    if c["family"] is not None:
      assert c["p_adjusted"] >= c["p_value"] - 1e-15
      assert c["significant_adjusted"] == (c["p_adjusted"] < 0.05)
  # No category of one task (multiple choice is XCOPA alone), no "overall" twin of the mean.
  assert not [c for c in comparisons if c["scope"] in ("overall",)]
  assert not [c for c in comparisons if c["scope"] == "category" and c["column"] == "multi_choice"]
  # A repeated test (tatoeba's group_task on sw = its language sw) is counted once.
  twins = [c for c in comparisons if c["duplicate_of"]]
  assert twins and all(c["family"] in ("primary", "secondary") for c in twins)
  keys = [(c["condition"], c["reference"], c["scope"], c["column"], c["language"], c["group"])
          for c in comparisons if c["family"] == "secondary" and not c["duplicate_of"]]
  assert len(keys) == len(set(keys))
  markdown = written["md"]
  assert markdown.index("## Primary contrast") < markdown.index("## Methods") < markdown.index(
      "## XTREME-R score per condition")
  assert "Holm's step-down procedure" in markdown and "2 seed(s) each" in markdown


def test_the_majority_class_floor_is_shown_and_said(written, tmp_path):
  data, markdown = written["json"], written["md"]
  # Every xnli gold label in the fixture is "a": always predicting it scores 100.
  assert data["majority_class"] == {"xnli": {"de": 100.0, "en": 100.0, "sw": 100.0}}
  assert "**xnli: no condition beats the majority class on any language**" in markdown
  table = _markdown_table(markdown, "### xnli: accuracy")
  assert table["majority class"] == {"condition": "majority class", "de": "100.00",
                                     "en": "100.00", "sw": "100.00"}
  path = tmp_path / "predictions" / "xnli" / "de.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text("".join(json.dumps({"id": str(i), "target": label, "prediction": "x",
                                      "example_score": 0.0}) + "\n"
                          for i, label in enumerate(["entailment"] * 3 + ["neutral"] * 2)))
  result = collect.EvalResult("s", "c", 0, "xnli", "xnli", {}, str(tmp_path))
  assert collect.majority_class([result], "xnli", "de") == pytest.approx(60.0)
  assert collect.majority_class([result], "xnli", "sw") is None
  label = {c: v["label"] for c, v in data["conditions"].items()}
  lines = report._majority_lines(  # pylint: disable=protected-access
      {"majority_class": {"xnli": {"de": 60.0}},
       "per_language": {"xnli": {"none": {"de": {"accuracy": 61.0}}}}}, label)
  assert lines[0] == ("xnli: above the majority class (the accuracy of always predicting the "
                      "most frequent label): baseline (none) (de).")


def test_plots_with_nothing_to_show_are_not_drawn_and_the_report_says_why(tmp_path):
  from xltransfer.study import plots  # pylint: disable=import-outside-toplevel
  zero = {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "significant_adjusted": False}
  fake = {"study": "s", "baseline_condition": "none", "columns": ["xnli"],
          "references": [["none", ["a"]]], "conditions": {"none": {"label": "none"},
                                                          "a": {"label": "a"}},
          "language_groups": {"low-resource": ["sw"], "high-resource": ["de"]},
          "per_language": {"xnli": {"a": {"sw": {}}, "none": {"sw": {}}}},
          "multiple_comparisons": {"method": "holm"},
          "comparisons": [{**zero, "reference": "none", "condition": "a", "scope": s,
                           "column": "xnli", "language": l}
                          for s, l in (("task", None), ("language", "sw"))]}
  (tmp_path / "lowres_xnli.png").write_bytes(b"old")  # an earlier report's plot
  written, omitted = plots.write_plots(fake, str(tmp_path))
  assert written == []
  assert set(omitted) == {"heatmap_deltas.png", "lowres_xnli.png"}
  assert all("every delta and interval is 0" in why for why in omitted.values())
  assert not (tmp_path / "lowres_xnli.png").exists()


def test_the_report_says_what_the_bootstrap_treats_as_independent(tmp_path):
  _, stages, study_dir, _ = _write_study(tmp_path)
  # XNLI's examples are translations: the same item ids in en, de and sw (3 x 60 examples).
  for stage in stages:
    if stage.target != "xnli" or stage.command != "eval":
      continue
    for lang in ("en", "de", "sw"):
      path = os.path.join(stage.stage_dir, "predictions", "xnli", f"{lang}.jsonl")
      records = [json.loads(line) for line in open(path)]
      with open(path, "w") as f:
        f.writelines(json.dumps({**r, "item": r["id"].rsplit("-", 1)[1]}) + "\n"
                     for r in records)
  paths = report.write_report(study_dir, samples=50, plot=False)
  data = json.load(open(paths["json"]))
  assert data["resampling_units"]["xnli"] == {"examples": 180, "clusters": 60}
  assert data["resampling_units"]["panx"] == {"examples": 180, "clusters": 180}
  [task] = [c for c in data["comparisons"] if c["scope"] == "task" and c["column"] == "xnli"
            and c["reference"] == "none" and c["condition"] == "xlt_inter_all9"]
  assert task["units"] == 60
  assert "xnli 180 → 60; panx 180 → 180" in open(paths["markdown"]).read()


def test_contrasts_on_fewer_units_than_were_checked_are_named(tmp_path):
  _, stages, study_dir, _ = _write_study(tmp_path)
  for stage in stages:  # xnli/sw keeps 10 examples in every stage
    if stage.target == "xnli" and stage.command == "eval":
      path = os.path.join(stage.stage_dir, "predictions", "xnli", "sw.jsonl")
      records = [json.loads(line) for line in open(path)][:10]
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
      metrics_path = os.path.join(stage.stage_dir, "metrics.json")
      metrics = json.load(open(metrics_path))
      metrics["tasks"]["xnli"]["sw"] = _metrics("xnli", records)
      with open(metrics_path, "w") as f:
        json.dump(metrics, f)
  markdown = open(report.write_report(study_dir, samples=50, plot=False)["markdown"]).read()
  warning = markdown.split("**Small samples**: ", 1)[1].split("\n", 1)[0]
  assert "fewer than 15 independent test units" in warning
  # xnli/sw is the one low-resource xnli language: that contrast is listed once, as the
  # group's (the language-level test duplicates it).
  assert warning.startswith("3 contrast(s)")
  assert "xlt_inter_all9 vs baseline (none) on xnli (low-resource) (10)" in warning
  assert "on xnli/de" not in warning and "on xnli/sw" not in warning


def _say_truncated(stage, lang, counts):
  path = os.path.join(stage.stage_dir, "metrics.json")
  data = json.load(open(path))
  data["truncated"] = {stage.target: {lang: counts}}
  with open(path, "w") as f:
    json.dump(data, f)


def test_inputs_and_predictions_cut_at_the_lengths_are_reported(tmp_path):
  _, stages, study_dir, _ = _write_study(tmp_path)
  xquad = [s for s in stages if s.command == "eval" and s.target == "xquad"]
  # Every stage reads the same de data at the same lengths: 7 of its 60 inputs cut in each;
  # the predictions differ by model (3 and 2 at the decode length in two of the stages).
  for i, stage in enumerate(xquad):
    _say_truncated(stage, "de", {"examples": 60, "inputs_truncated": 7,
                                 "decode_limit_reached": {0: 3, 1: 2}.get(i, 0)})
  paths = report.write_report(study_dir, samples=50, plot=False)
  data = json.load(open(paths["json"]))
  assert data["truncated"] == {"xquad": {"de": {"examples": 60, "inputs_truncated": 7,
                                                "decode_limit_reached": 5,
                                                "stages": len(xquad)}}}
  markdown = open(paths["markdown"]).read()
  assert "mT5's own XTREME fine-tuning used 1024 input tokens" in markdown
  section = markdown.split("## Cut at the configured lengths\n", 1)[1].split("\n## ", 1)[0]
  rows = [line for line in section.splitlines() if line.startswith("| xquad")]
  predictions = 60 * len(xquad)
  assert rows == ["| xquad | de | 7 of 60 (11.7%) | "
                  f"5 of {predictions} ({100 * 5 / predictions:.1f}%, {len(xquad)} stages) |"]


def test_no_length_section_when_nothing_was_cut(written):
  assert written["json"]["truncated"] == {}
  assert "## Cut at the configured lengths" not in written["md"]


def test_a_malformed_truncation_entry_names_the_file(tmp_path):
  _, stages, study_dir, _ = _write_study(tmp_path)
  [stage] = [s for s in stages if s.id == "eval/none/seed0/xquad"]
  _say_truncated(stage, "de", {"examples": 60, "inputs_truncated": "7"})
  with pytest.raises(UserError, match=r"metrics.json.*\"truncated\" xquad/de should be"):
    report.build_report(study_dir, samples=50)
