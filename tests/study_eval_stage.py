"""A study stage program for tests: `eval` stages run the real `xltransfer eval`; `train` stages
stand in for training by copying the initial checkpoint (a native params checkpoint) into
MODEL_DIR and writing DONE, as a finished training run leaves its checkpoint there.

    python tests/study_eval_stage.py train|eval --gin_file=... --gin.NAME=VALUE ...
"""
import ast
import os
import shutil
import sys


def main(argv):
  if argv[0] != "train":
    os.execv(sys.executable, [sys.executable, "-m", "xltransfer.cli", *argv])
  bindings = {}
  for arg in argv[1:]:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      try:
        bindings[name] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        bindings[name] = value
  model_dir, init = bindings["MODEL_DIR"], bindings["INITIAL_CHECKPOINT_PATH"]
  os.makedirs(model_dir, exist_ok=True)
  for name in os.listdir(init):
    if name in ("DONE", "stage.log", "STUDY_RUNNING", "STUDY_FAILED"):
      continue
    source, target = os.path.join(init, name), os.path.join(model_dir, name)
    if os.path.isdir(source):
      shutil.copytree(source, target, dirs_exist_ok=True)
    else:
      shutil.copy(source, target)
  with open(os.path.join(model_dir, "DONE"), "w") as f:
    f.write("copied the initial checkpoint\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
