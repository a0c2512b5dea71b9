"""`xltransfer tasks lengths`: token lengths of a task's examples, uncut, against the lengths a
run would cut at (seqio's append_eos_after_trim cuts silently), for choosing
TASK_FEATURE_LENGTHS before a run."""
import io
import json

import numpy as np
import pytest

from xltransfer import cli
from xltransfer.commands import tasks as tasks_command
from xltransfer.data import vocab
from xltransfer.errors import UserError

from first_word_task import register_first_word_task

LINES = ["short one", "a much longer line with many more words than sixteen tokens can hold",
         "tiny", "another line of a middling length"]


@pytest.fixture()
def task(tmp_path):
  path = tmp_path / "lines.txt"
  path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
  return register_first_word_task(str(path), "lengthtest")


def _expected(texts, limit):
  counts = [len(vocab.get_vocabulary("builtin").encode(t)) + 1 for t in texts]  # with EOS
  return counts, sum(c > limit for c in counts)


def test_figures_are_the_uncut_token_counts(task):
  out = io.StringIO()
  assert tasks_command.main(["lengths", task, "--split", "validation",
                             "--lengths", "inputs=16,targets=4", "--json"], out=out) == 0
  figures = json.loads(out.getvalue())["tasks"][task]
  counts, over = _expected(LINES, 16)
  assert figures["inputs"] == {
      "examples": 4, "mean": round(float(np.mean(counts)), 1),
      "p50": int(np.percentile(counts, 50)), "p95": int(np.percentile(counts, 95)),
      "p99": int(np.percentile(counts, 99)), "max": max(counts), "limit": 16, "over": over}
  assert over >= 1 and max(counts) > 16  # the long line is counted uncut
  target_counts, target_over = _expected([line.split(" ")[0] for line in LINES], 4)
  assert figures["targets"]["max"] == max(target_counts)
  assert figures["targets"]["over"] == target_over


def test_text_output_and_the_example_cap(task):
  out = io.StringIO()
  assert tasks_command.main(["lengths", task, "--split", "validation", "-n", "2",
                             "--lengths", "inputs=16"], out=out) == 0
  text = out.getvalue()
  counts, over = _expected(LINES[:2], 16)
  assert f"task {task}, split validation: 2 examples" in text
  assert f"over 16: {over} ({100.0 * over / 2:.1f}%)" in text
  # A feature without a limit gets its figures and no "over".
  [targets_line] = [line for line in text.splitlines() if line.strip().startswith("targets")]
  assert "over" not in targets_line


@pytest.mark.parametrize("flag, said", [
    ("inputs=abc", "cannot read 'inputs=abc'"),
    ("inputs", "cannot read 'inputs'"),
    ("inputs=0", "cannot read 'inputs=0'"),
])
def test_an_unreadable_lengths_flag_is_exit_2_naming_it(flag, said, capsys):
  assert cli.main(["tasks", "lengths", "xlt_xnli_train", "--lengths", flag]) == 2
  assert said in capsys.readouterr().err


def test_a_feature_the_task_lacks_is_named(task):
  with pytest.raises(UserError, match="--lengths names question, which xlt_lengthtest_eval_en "
                                      "does not have; its features: inputs, targets"):
    tasks_command.main(["lengths", task, "--split", "validation", "--lengths", "question=8"],
                       out=io.StringIO())


def test_a_split_the_task_lacks_is_named(task):
  with pytest.raises(UserError, match="has no split 'train'; splits: validation"):
    tasks_command.main(["lengths", task], out=io.StringIO())


def test_a_non_positive_example_cap_is_exit_2(capsys):
  assert cli.main(["tasks", "lengths", "xlt_xnli_train", "-n", "0"]) == 2
  assert "-n 0: read at least 1 example" in capsys.readouterr().err
