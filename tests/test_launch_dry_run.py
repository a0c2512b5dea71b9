"""Launchers never surprise: no dry run calls gcloud, sbatch or tar, in any spelling or position.

Recording fakes of `gcloud`, `sbatch` and `tar` stand first on PATH and append their argv to
a file; a dry run must leave that file absent. The positive controls (the same launchers
without a dry run) show the fakes do record, so the absence means something.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from xltransfer import cli
from xltransfer.errors import UserError
from xltransfer.launch import commands
from xltransfer.launch import slurm
from xltransfer.launch import tpu

REPO = pathlib.Path(__file__).resolve().parents[1]
ZONE = "us-central2-b"
SPELLINGS = ("--dry-run", "--dry_run")
TRAIN = ["train", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
         "--gin.MODEL_DIR='gs://b/run'"]


@pytest.fixture
def fakes(tmp_path, monkeypatch):
  """Fake gcloud/sbatch/tar first on PATH; returns the file their argv goes to."""
  bin_dir = tmp_path / "fake_bin"
  bin_dir.mkdir()
  record = tmp_path / "called.txt"
  for name in ("gcloud", "sbatch", "tar"):
    script = bin_dir / name
    # sbatch's real answer, so that a positive control's submit succeeds.
    reply = 'echo "Submitted batch job 42"' if name == "sbatch" else "true"
    script.write_text(f'#!/bin/sh\nprintf "%s " "{name}" "$@" >> "{record}"\n'
                      f'echo >> "{record}"\n{reply}\n')
    script.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)  # launch_logs/ and sbatch scripts land here, not in the repo
  return record


def _tpu_run(flag, position):
  """`tpu run` argv with the launcher's dry-run flag at `position` (all before `--`)."""
  head = ["run", "mt5-xxl", f"--zone={ZONE}", "--accelerator-type=v4-16", "--run-name=r"]
  if position == "before_action":
    return [flag] + head + ["--"] + TRAIN
  if position == "after_name":
    return head[:2] + [flag] + head[2:] + ["--"] + TRAIN
  return head + [flag, "--"] + TRAIN


def _slurm_submit(flag, position):
  head = ["submit", "--nodes=2", "--partition=gpu"]
  if position == "before_action":
    return [flag] + head + ["--"] + TRAIN
  if position == "after_action":
    return head[:1] + [flag] + head[1:] + ["--"] + TRAIN
  return head + [flag, "--"] + TRAIN


POSITIONS_TPU = ("before_action", "after_name", "before_double_dash")
POSITIONS_SLURM = ("before_action", "after_action", "before_double_dash")


@pytest.mark.parametrize("flag", SPELLINGS)
@pytest.mark.parametrize("position", POSITIONS_TPU)
def test_tpu_run_dry_run_calls_nothing(fakes, capsys, flag, position):
  assert tpu.main(_tpu_run(flag, position)) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and all(line.startswith("gcloud compute tpus tpu-vm ssh")
                                 for line in lines)
  assert not fakes.exists()


@pytest.mark.parametrize("flag", SPELLINGS)
@pytest.mark.parametrize("position", POSITIONS_TPU)
def test_tpu_run_dry_run_through_xltransfer_launch(fakes, capsys, flag, position):
  assert cli.main(["launch", "tpu"] + _tpu_run(flag, position)) == 0
  assert "tpu-vm ssh" in capsys.readouterr().out
  assert not fakes.exists()


@pytest.mark.parametrize("flag", SPELLINGS)
@pytest.mark.parametrize("argv", [
    ["setup", "mt5-xxl", f"--zone={ZONE}", "--install-python=3.11"],
    ["create", "mt5-xxl", f"--zone={ZONE}", "--accelerator-type=v4-16"],
    ["logs", "mt5-xxl", f"--zone={ZONE}", "--num-workers=2", "--run-name=r"],
    ["stop", "mt5-xxl", f"--zone={ZONE}", "--run-name=r"],
    ["status", "mt5-xxl", f"--zone={ZONE}"],
    ["delete", "mt5-xxl", f"--zone={ZONE}"],
], ids=lambda a: a[0] if isinstance(a, list) else a)
def test_every_tpu_action_dry_run_calls_nothing(fakes, capsys, flag, argv):
  assert tpu.main([flag] + argv) == 0  # before the action
  assert tpu.main(argv + [flag]) == 0  # after everything
  assert capsys.readouterr().out
  assert not fakes.exists()


@pytest.mark.parametrize("flag", SPELLINGS)
@pytest.mark.parametrize("position", POSITIONS_SLURM)
def test_slurm_submit_dry_run_calls_nothing(fakes, capsys, flag, position):
  assert slurm.main(_slurm_submit(flag, position)) == 0
  out = capsys.readouterr().out
  assert "srun --nodes=2" in out and out.rstrip().splitlines()[-1].startswith("sbatch ")
  assert not fakes.exists()
  assert not pathlib.Path("launch_logs").exists()  # a dry run writes no script either


@pytest.mark.parametrize("flag", SPELLINGS)
def test_slurm_script_accepts_dry_run_and_calls_nothing(fakes, capsys, flag):
  assert slurm.main([flag, "script", "--", *TRAIN]) == 0
  assert capsys.readouterr().out.startswith("#!/bin/bash")
  assert not fakes.exists()


@pytest.mark.parametrize("flag", SPELLINGS + ("--dry", "--dryrun", "--dry-run=1"))
def test_dry_run_after_double_dash_is_refused_when_the_launcher_would_run(fakes, capsys, flag):
  with pytest.raises(UserError, match=r"comes after `--`.*`xltransfer train`.*for real.*"
                     r"before `--`"):
    tpu.main(["run", "mt5-xxl", f"--zone={ZONE}", "--accelerator-type=v4-16", "--",
              *TRAIN, flag])
  with pytest.raises(UserError, match=r"comes after `--`.*submit the job for real"):
    slurm.main(["submit", "--nodes=2", "--", *TRAIN, flag])
  assert not fakes.exists()


@pytest.mark.parametrize("flag", SPELLINGS)
def test_dry_run_on_both_sides_dry_runs_and_says_whose_flag(fakes, capsys, flag):
  assert tpu.main(["run", "mt5-xxl", f"--zone={ZONE}", "--num-workers=1", flag, "--",
                   "study", "run", "gin/study/demo_tiny.gin", flag]) == 0
  captured = capsys.readouterr()
  assert f"note: {flag} after `--` is passed to `xltransfer study` itself" in captured.err
  assert "study run gin/study/demo_tiny.gin" in captured.out
  assert slurm.main(["submit", flag, "--", *TRAIN, flag]) == 0
  assert "is passed to `xltransfer train` itself" in capsys.readouterr().err
  assert not fakes.exists()


def _run_program(argv, cwd):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=120, check=False)


def test_entry_point_programs_dry_run_and_refuse_without_calling(fakes):
  cwd = fakes.parent / "work"
  for flag in SPELLINGS:
    result = _run_program([str(REPO / "launch" / "tpu.py"), flag, "run", "mt5-xxl",
                           f"--zone={ZONE}", "--num-workers=1", "--", *TRAIN], cwd)
    assert result.returncode == 0, result.stderr
    assert "tpu-vm ssh" in result.stdout
    result = _run_program([str(REPO / "launch" / "slurm.py"), "submit", "--", *TRAIN, flag],
                          cwd)
    assert result.returncode == 2
    assert result.stderr.startswith("launch/slurm.py: error: ") and "nothing was run" in \
        result.stderr
  assert not fakes.exists()


def test_without_dry_run_the_fakes_record(fakes, capsys):
  """Positive control: the same launchers, run for real, reach the fakes."""
  assert tpu.main(["delete", "mt5-xxl", f"--zone={ZONE}"]) == 0
  assert slurm.main(["submit", "--nodes=2", "--", *TRAIN]) == 0
  recorded = fakes.read_text().splitlines()
  assert recorded[0].split() == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mt5-xxl",
                                 f"--zone={ZONE}", "--quiet"]
  assert recorded[1].startswith("sbatch --job-name=xltransfer-train --nodes=2")


def _fake_checkout(root: pathlib.Path) -> pathlib.Path:
  (root / "xltransfer").mkdir(parents=True)
  (root / "xltransfer" / "__init__.py").write_text("")
  (root / "setup.py").write_text("")
  return root


def _packed_dir(lines):
  (tar,) = [line for line in lines if line.startswith("tar ")]
  return tar.split(" -C ")[1].rsplit(" ", 1)[0]


def test_setup_packs_the_checkout_the_command_runs_from(fakes, capsys, tmp_path, monkeypatch):
  checkout = _fake_checkout(tmp_path / "my_clone")
  (checkout / "gin" / "runs").mkdir(parents=True)
  monkeypatch.chdir(checkout / "gin" / "runs")  # anywhere inside the checkout
  assert tpu.main(["setup", "mt5-xxl", f"--zone={ZONE}", "--dry-run"]) == 0
  captured = capsys.readouterr()
  assert _packed_dir(captured.out.splitlines()) == str(checkout.resolve())
  assert f"packing {checkout.resolve()}" in captured.err
  assert not fakes.exists()


def test_setup_outside_a_checkout_packs_the_installed_packages(fakes, capsys, tmp_path,
                                                               monkeypatch):
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  monkeypatch.chdir(outside)
  assert tpu.main(["setup", "mt5-xxl", f"--zone={ZONE}", "--dry-run"]) == 0
  assert _packed_dir(capsys.readouterr().out.splitlines()) == str(REPO)
  # A folder with a setup.py of some other project is not an xltransfer checkout.
  (outside / "setup.py").write_text("")
  assert tpu.source_checkout(outside) == REPO


def test_missing_gin_file_is_warned_in_the_dry_run(fakes, capsys):
  assert tpu.main(["run", "mt5-xxl", f"--zone={ZONE}", "--num-workers=1", "--dry-run", "--",
                   "train", "--gin_file=gin/runs/no_such_run.gin",
                   "--gin_file", "models/mt5_tiny.gin", "--gin_file=gs://b/remote.gin"]) == 0
  err = capsys.readouterr().err
  assert "warning: gin file gin/runs/no_such_run.gin is not in this checkout" in err
  assert "mt5_tiny" not in err and "gs://" not in err
  assert commands.gin_files_in_command(
      ["study", "run", "gin/study/x.gin", "--mesh_file", "meshes/cpu.gin"]) == [
          "gin/study/x.gin", "meshes/cpu.gin"]


def test_study_run_on_several_hosts_is_refused_and_says_how(fakes, capsys):
  """`study run` keeps its stage state on the host it runs on (and only process 0 of a
  multi-host stage writes DONE): on every worker of a slice the copies would diverge after the
  first stage. The launchers refuse it there, before running anything, and name the way."""
  study = ["study", "run", "gin/study/xtreme_r_lowres_mt5_xxl.gin"]
  for run in (lambda: tpu.main(["run", "mt5-xxl", f"--zone={ZONE}", "--num-workers=32", "--",
                                *study]),
              lambda: tpu.main(["--dry-run", "run", "mt5-xxl", f"--zone={ZONE}",
                                "--accelerator-type=v4-256", "--", *study]),
              lambda: slurm.main(["submit", "--nodes=2", "--", *study]),
              lambda: slurm.main(["submit", "--nodes=1", "--processes-per-node=8", "--",
                                  *study])):
    with pytest.raises(UserError, match=r"drives a study from one host.*nothing was started.*"
                       r"study run gin/study/xtreme_r_lowres_mt5_xxl.gin --emit DIR.*"
                       r"run_stages.sh on every host"):
      run()
  assert not fakes.exists()
  # One host runs it as it is; emitting the stages is fine anywhere.
  assert tpu.main(["--dry-run", "run", "mt5-xxl", f"--zone={ZONE}", "--num-workers=1", "--",
                   *study]) == 0
  assert tpu.main(["--dry-run", "run", "mt5-xxl", f"--zone={ZONE}", "--num-workers=4", "--",
                   *study, "--emit", "/tmp/stages"]) == 0
  assert slurm.main(["submit", "--dry-run", "--nodes=1", "--", *study]) == 0
  capsys.readouterr()
