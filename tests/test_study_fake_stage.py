"""A stand-in for `xltransfer train|eval` in the study tests: parses the same flags and writes
the files a real stage writes (docs/interfaces.md), so the runner and report see real outputs.

Environment: FAKE_STAGE_LOG (append one line per execution), FAKE_STAGE_FAIL (colon-separated
mixture names whose stages exit 3), FAKE_STAGE_SLEEP (seconds before finishing),
FAKE_STAGE_NO_GOLD (colon-separated TARGET/LANG whose data has no gold: with the stage's
`EvalSettings.require_gold` binding that language fails as `xltransfer eval` fails it: listed
under "failed" in metrics.json, no DONE, exit 1; without it, predictions only and a "no_gold"
entry), FAKE_STAGE_DEVICES_FAIL (`--check_devices` fails with this message),
FAKE_DEVICE_CHECK_LOG (append one line per `--check_devices`). Eval stages write
eval_info.json with each language's provenance (source "fake release", split "test").
"""
import ast
import hashlib
import json
import os
import sys
import time

LANGUAGES = ("en", "de", "sw")


def parse(argv):
  command, bindings, gin_files = argv[0], {}, []
  for arg in argv[1:]:
    if arg == "--check_devices":
      bindings[arg] = True
    elif arg.startswith("--gin_file="):
      gin_files.append(arg.split("=", 1)[1])
    elif arg.startswith("--gin."):
      name, value = arg[len("--gin."):].split("=", 1)
      bindings[name] = ast.literal_eval(value)
    else:
      raise SystemExit(f"unexpected argument {arg}")
  return command, bindings, gin_files


def quality(checkpoint: str) -> float:
  """A deterministic number in [0, 1) per checkpoint, so conditions differ: from the path below
  the study's stage directories (the same in every run; a hash of the whole path, which holds
  pytest's temporary directory, let two conditions tie by chance in some runs)."""
  stage_path = checkpoint.split(f"{os.sep}study{os.sep}", 1)[-1]
  return int(hashlib.sha256(stage_path.encode()).hexdigest()[:8], 16) / 2 ** 32


def eval_languages(names):
  """(target, languages) of `xlt_T_zeroshot` or comma-separated `xlt_T_eval_LANG` names."""
  names = names.split(",")
  target = names[0].split("_")[1]
  if names[0].endswith("_zeroshot"):
    return target, LANGUAGES
  return target, [name.rsplit("_", 1)[1] for name in names]


REQUIRE_GOLD = "xltransfer.evaluation.EvalSettings.require_gold"
SOURCE = "fake release"


def data_file(target, lang):
  return f"/data/{target}/test-{lang}.tsv"


def write_eval(out, checkpoint, target, languages, require_gold=False):
  """Writes the eval outputs; returns False when a language failed (no DONE then)."""
  tasks, q = {target: {}}, quality(checkpoint)
  no_gold, failed, provenance = {}, {}, {}
  unlabelled = os.environ.get("FAKE_STAGE_NO_GOLD", "").split(":")
  for lang in languages:
    if f"{target}/{lang}" in unlabelled:
      why = f"{data_file(target, lang)}: every label is empty (the official test file)"
      if require_gold:
        failed.setdefault(target, {})[lang] = (
            f"xlt_{target}_eval_{lang}: no gold to score, so no metric (require_gold): {why}")
        continue
      no_gold.setdefault(target, {})[lang] = why
    why_not = no_gold.get(target, {}).get(lang)
    provenance.setdefault(target, {})[lang] = {
        "source": SOURCE, "location": data_file(target, lang), "split": "test",
        "labelled": why_not is None, "no_gold": why_not}
    records = []
    for i in range(40):
      correct = (i * 7 + int(q * 100)) % 10 < 5 + int(q * 4)
      records.append({"id": f"{lang}-{i}", "input": f"x{i}", "target": "a",
                      "prediction": "a" if correct else "b",
                      "example_score": 100.0 if correct else 0.0})
    os.makedirs(os.path.join(out, "predictions", target), exist_ok=True)
    with open(os.path.join(out, "predictions", target, f"{lang}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    metric = "map@20" if target in ("tatoeba", "mewslix", "lareqa") else "accuracy"
    if lang not in no_gold.get(target, {}):
      tasks[target][lang] = {metric: sum(r["example_score"] for r in records) / len(records)}
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"checkpoint": checkpoint, "step": 0, "tasks": tasks, "no_gold": no_gold,
               "failed": failed}, f)
  with open(os.path.join(out, "eval_info.json"), "w") as f:
    json.dump({"checkpoint": checkpoint, "step": 0,
               "splits": {t: {l: "test" for l in by} for t, by in provenance.items()},
               "provenance": provenance, "no_gold": no_gold, "failed": failed}, f)
  return not failed


def check_devices(command, gin_files):
  """`--check_devices` as the real command answers it: one line, exit 0; or, with
  FAKE_STAGE_DEVICES_FAIL, that message as the real command's error line, exit 2."""
  if os.environ.get("FAKE_DEVICE_CHECK_LOG"):
    with open(os.environ["FAKE_DEVICE_CHECK_LOG"], "a") as f:
      f.write(f"{command} {' '.join(gin_files)}\n")
  failure = os.environ.get("FAKE_STAGE_DEVICES_FAIL")
  if failure:
    print(f"xltransfer {command}: error: {failure}", file=sys.stderr)
    return 2
  print(f"xltransfer {command} --check_devices: mesh {{'data': 1, 'model': 1}} over 1 cpu "
        "devices in 1 process(es)")
  return 0


def main(argv):
  command, bindings, gin_files = parse(argv)
  if bindings.get("--check_devices"):
    return check_devices(command, gin_files)
  out = bindings.get("MODEL_DIR") or bindings["EVAL_OUTPUT_DIR"]
  mixture = bindings["MIXTURE_OR_TASK_NAME"]
  if os.environ.get("FAKE_STAGE_LOG"):
    with open(os.environ["FAKE_STAGE_LOG"], "a") as f:
      f.write(f"{command} {out}\n")
  print(f"fake {command} for {out}", flush=True)
  print(f"JAX_COMPILATION_CACHE_DIR={os.environ.get('JAX_COMPILATION_CACHE_DIR')}", flush=True)
  time.sleep(float(os.environ.get("FAKE_STAGE_SLEEP", "0")))
  if mixture in os.environ.get("FAKE_STAGE_FAIL", "").split(":"):
    print("simulated failure", file=sys.stderr)
    return 3
  os.makedirs(out, exist_ok=True)
  if command == "train":
    init = bindings["INITIAL_CHECKPOINT_PATH"]
    if init.startswith("/") and not os.path.exists(os.path.join(init, "DONE")):
      raise SystemExit(f"initial checkpoint {init} is not a finished run")
    with open(os.path.join(out, "checkpoint"), "w") as f:
      f.write(f"{init}|{mixture}|{bindings['TRAIN_STEPS']}|{bindings['RANDOM_SEED']}\n")
  elif not write_eval(out, bindings["CHECKPOINT_PATH"], *eval_languages(mixture),
                      require_gold=bindings.get(REQUIRE_GOLD, False)):
    print("a task failed: see metrics.json", file=sys.stderr)
    return 1
  with open(os.path.join(out, "DONE"), "w") as f:
    f.write("done\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))


def test_fake_eval_writes_the_documented_outputs(tmp_path):
  out = tmp_path / "eval"
  assert main(["eval", f"--gin.CHECKPOINT_PATH=\"{tmp_path}/ckpt\"",
               f"--gin.EVAL_OUTPUT_DIR=\"{out}\"",
               "--gin.MIXTURE_OR_TASK_NAME=\"xlt_xnli_eval_en,xlt_xnli_eval_sw\""]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics) == {"checkpoint", "step", "tasks", "no_gold", "failed"}
  assert set(metrics["tasks"]["xnli"]) == {"en", "sw"}
  records = [json.loads(l) for l in (out / "predictions/xnli/sw.jsonl").read_text().splitlines()]
  assert {"id", "input", "target", "prediction", "example_score"} <= set(records[0])
  mean = sum(r["example_score"] for r in records) / len(records)
  assert metrics["tasks"]["xnli"]["sw"]["accuracy"] == mean
  assert (out / "DONE").exists()
