"""SLURM launcher: exact sbatch argv, the batch script, and jax.distributed from SLURM's env.

The end-to-end test runs the generated script with bash, with fake `scontrol` and `srun` on
PATH; the fake srun starts one task per rank with the variables real srun sets, and each task
reports its argv and what `distributed_env()` found.
"""
import json
import os
import shlex
import subprocess
import sys

import pytest

from xltransfer import command_line
from xltransfer.errors import UserError
from xltransfer.launch import slurm
from xltransfer.launch import slurm_env

TRICKY = "--gin.MODEL_DIR=\"gs://b/my run's dir\""
TRAIN = ["train", "--gin_file=gin/runs/mt5_xxl_gpu.gin", TRICKY]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
  """Every test runs in a temp folder, with an `sbatch` on PATH that fails if reached."""
  guard = tmp_path / "guard-bin"
  guard.mkdir()
  (guard / "sbatch").write_text("#!/bin/sh\necho 'test reached sbatch' >&2\nexit 99\n")
  (guard / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{guard}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.chdir(tmp_path)


def dry_run_output(capsys, *flags, command=TRAIN):
  assert slurm.main(["submit", *flags, "--dry-run", "--", *command]) == 0
  return capsys.readouterr().out


def srun_line(script):
  (line,) = [l for l in script.splitlines() if l.startswith("srun ")]
  return shlex.split(line)


# ----------------------------------------------------------------------------- dry run


def test_submit_dry_run_prints_script_and_exact_sbatch_argv(capsys, tmp_path):
  out = dry_run_output(capsys, "--nodes=2", "--partition=gpu", "--time=24:00:00",
                       "--account=my lab", "--job-name=xnli run", "--workdir=/proj/x l",
                       "--venv=/proj/x l/.venv", "--sbatch-arg=--exclusive",
                       "--env=XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true")
  lines = out.splitlines()
  script_path = "launch_logs/slurm/xnli run.sbatch"
  assert lines[0] == f"# ----- {script_path} -----"
  assert lines[-2] == "# ----- submit -----"
  assert shlex.split(lines[-1]) == [
      "sbatch", "--job-name=xnli run", "--nodes=2", "--ntasks-per-node=1",
      "--gpus-per-node=8", "--partition=gpu", "--time=24:00:00", "--account=my lab",
      "--output=launch_logs/slurm/%x-%j.out", "--exclusive", script_path]
  script = "\n".join(lines[1:-2])
  assert srun_line(script) == ["srun", "--nodes=2", "--ntasks-per-node=1",
                               "--kill-on-bad-exit=1", "xltransfer", *TRAIN]
  assert "cd '/proj/x l'" in script.splitlines()
  assert "source '/proj/x l/.venv/bin/activate'" in script.splitlines()
  assert not (tmp_path / "launch_logs").exists()  # a dry run writes nothing
  subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash


def test_one_process_per_gpu_and_gres(capsys):
  out = dry_run_output(capsys, "--nodes=4", "--gpus-per-node=4", "--processes-per-node=4",
                       "--gres=gpu:a100:4", "--cpus-per-task=12", "--mem=0", "--qos=high",
                       "--constraint=a100", "--output=logs/%j.txt", "--script-path=job.sh",
                       command=["train", "--gin_file=gin/runs/low resource.gin"])
  lines = out.splitlines()
  assert shlex.split(lines[-1]) == [
      "sbatch", "--job-name=xltransfer-train", "--nodes=4", "--ntasks-per-node=4",
      "--gres=gpu:a100:4", "--qos=high", "--constraint=a100", "--cpus-per-task=12", "--mem=0",
      "--output=logs/%j.txt", "job.sh"]
  assert srun_line(out) == ["srun", "--nodes=4", "--ntasks-per-node=4", "--kill-on-bad-exit=1",
                            "--gpus-per-task=1", "xltransfer", "train",
                            "--gin_file=gin/runs/low resource.gin"]


def test_script_action_prints_the_script(capsys):
  assert slurm.main(["script", "--nodes=1", "--workdir=/w", "--", "eval", TRICKY]) == 0
  out = capsys.readouterr().out
  assert out.startswith("#!/bin/bash\n")
  assert srun_line(out)[-3:] == ["xltransfer", "eval", TRICKY]


@pytest.mark.parametrize("argv,message", [
    (["--nodes=0"], "--nodes=0"),
    (["--time=tomorrow"], "--time='tomorrow'"),
    (["--gpus-per-node=8", "--processes-per-node=3"], "--processes-per-node=3"),
    (["--env=NOVALUE"], "NAME=VALUE"),
    (["--cpus-per-task=0"], "--cpus-per-task"),
])
def test_bad_resources_are_user_errors(argv, message):
  with pytest.raises(UserError, match=message):
    slurm.main(["submit", *argv, "--dry-run", "--", "train"])


def test_missing_or_unknown_command_is_a_user_error():
  with pytest.raises(UserError, match="after `--`"):
    slurm.main(["submit", "--dry-run"])
  with pytest.raises(UserError, match="unknown xltransfer command 'fit'"):
    slurm.main(["submit", "--dry-run", "--", "fit"])


def test_entry_point_script(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, os.path.join(repo, "launch", "slurm.py"), "script",
                           "--workdir=/w", "--", "train", TRICKY], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert srun_line(result.stdout)[-2:] == ["train", TRICKY]


def test_without_sbatch_fails_clearly(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATH", str(tmp_path))
  assert command_line.run_command(slurm.main, "launch/slurm.py", ["submit", "--", "train"]) == 2
  assert "`sbatch` was not found on PATH" in capsys.readouterr().err
  result = subprocess.run([sys.executable, "-m", "xltransfer.launch.slurm", "submit",
                           "--time=soon", "--", "train"], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "--time='soon'" in result.stderr


# ----------------------------------------------------------------------------- submit


def test_submit_writes_script_and_runs_sbatch(tmp_path, monkeypatch, capsys):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      "open('sbatch-argv.json', 'w').write(json.dumps(sys.argv[1:]))\n"
      "print('Submitted batch job 4242')\n")
  (bin_dir / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  assert slurm.main(["submit", "--nodes=2", "--job-name=j1", "--", *TRAIN]) == 0
  assert "Submitted batch job 4242" in capsys.readouterr().out
  argv = json.loads((tmp_path / "sbatch-argv.json").read_text())
  assert argv[-1] == "launch_logs/slurm/j1.sbatch"
  script = (tmp_path / "launch_logs/slurm/j1.sbatch").read_text()
  assert srun_line(script)[-len(TRAIN):] == TRAIN
  assert (tmp_path / "launch_logs/slurm").is_dir()  # the --output folder exists for sbatch


# ----------------------------------------------------------------------------- in the job


FAKE_SCONTROL = """#!/bin/sh
# `scontrol show hostnames LIST` for the one list this test uses.
[ "$1 $2 $3" = "show hostnames gpu-a[01-02]" ] || exit 1
echo gpu-a01
echo gpu-a02
"""

FAKE_SRUN = """#!{python}
# Starts one task per rank with the variables srun sets, after srun's own options.
import os, subprocess, sys
args = sys.argv[1:]
options = {{a.split("=")[0]: a.split("=", 1)[1] for a in args if a.startswith("--")
            and "=" in a and args.index(a) < next(i for i, x in enumerate(args) if not
                                                  x.startswith("--"))}}
command = args[next(i for i, x in enumerate(args) if not x.startswith("--")):]
tasks = int(options["--nodes"]) * int(options["--ntasks-per-node"])
status = 0
for rank in range(tasks):
  env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS=str(tasks),
             SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"])
  status |= subprocess.call(command, env=env)
sys.exit(status)
"""

FAKE_XLTRANSFER = """#!{python}
import json, os, sys
from xltransfer.launch.slurm_env import distributed_env
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                   "env": distributed_env().initialize_kwargs()}}))
"""


def test_script_runs_the_command_on_every_task_with_distributed_env(tmp_path):
  bin_dir = tmp_path / "bin"
  venv_bin = tmp_path / "work dir" / ".venv" / "bin"
  bin_dir.mkdir()
  venv_bin.mkdir(parents=True)
  for path, text in ((bin_dir / "scontrol", FAKE_SCONTROL),
                     (bin_dir / "srun", FAKE_SRUN.format(python=sys.executable)),
                     (venv_bin / "xltransfer", FAKE_XLTRANSFER.format(python=sys.executable))):
    path.write_text(text)
    path.chmod(0o755)
  (venv_bin / "activate").write_text(f'export PATH={shlex.quote(str(venv_bin))}:"$PATH"\n')
  job = slurm.Job(xltransfer_args=tuple(TRAIN), nodes=2, workdir=str(tmp_path / "work dir"),
                  venv=str(tmp_path / "work dir" / ".venv"))
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             SLURM_JOB_ID="1234567", SLURM_JOB_NODELIST="gpu-a[01-02]", SLURM_JOB_NUM_NODES="2")
  result = subprocess.run(["bash", "-c", slurm.batch_script(job)], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  reports = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
  assert [r["env"] for r in reports] == [
      {"coordinator_address": "gpu-a01:24567", "num_processes": 2, "process_id": rank}
      for rank in (0, 1)]
  assert all(r["argv"] == TRAIN and r["cwd"] == str(tmp_path / "work dir") for r in reports)


# ----------------------------------------------------------------------------- distributed_env


@pytest.mark.parametrize("hostlist,hosts", [
    ("node1", ["node1"]),
    ("gpu[01-03,7]", ["gpu01", "gpu02", "gpu03", "gpu7"]),
    ("a[8-10],b1", ["a8", "a9", "a10", "b1"]),
    ("n[098-100]", ["n098", "n099", "n100"]),
    ("rack[1-2]-gpu[1,3]", ["rack1-gpu1", "rack1-gpu3", "rack2-gpu1", "rack2-gpu3"]),
    ("x-1,y[2]", ["x-1", "y2"]),
])
def test_expand_hostlist(hostlist, hosts):
  assert slurm_env.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["gpu[01-", "gpu]1", "gpu[3-1]", "gpu[a-b]", ""])
def test_bad_hostlists(hostlist):
  with pytest.raises(UserError, match="node list"):
    slurm_env.expand_hostlist(hostlist)


def test_distributed_env_from_job_variables():
  environ = {"SLURM_JOB_ID": "98765", "SLURM_PROCID": "3", "SLURM_NTASKS": "4",
             "SLURM_JOB_NODELIST": "dgx[07-08]"}
  assert slurm_env.distributed_env(environ) == slurm_env.DistributedEnv("dgx07:28765", 4, 3)
  # srun's step variables describe the step and win over the allocation's.
  environ.update(SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1", SLURM_STEP_NODELIST="dgx08")
  assert slurm_env.distributed_env(environ) == slurm_env.DistributedEnv("dgx08:28765", 2, 1)
  environ.update(XLTRANSFER_COORDINATOR_PORT="7777")
  assert slurm_env.distributed_env(environ).coordinator_address == "dgx08:7777"
  environ.update(XLTRANSFER_COORDINATOR_ADDRESS="10.0.0.5:1234")
  assert slurm_env.distributed_env(environ).initialize_kwargs() == {
      "coordinator_address": "10.0.0.5:1234", "num_processes": 2, "process_id": 1}
  assert slurm.distributed_env is slurm_env.distributed_env


def test_distributed_env_outside_slurm_and_single_task():
  assert slurm_env.distributed_env({"HOME": "/root"}) is None
  assert slurm_env.initialize_jax_distributed({"HOME": "/root"}) is None
  single = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
            "SLURM_JOB_NODELIST": "n1"}
  assert slurm_env.distributed_env(single).num_processes == 1
  assert slurm_env.initialize_jax_distributed(single) is None  # one task needs no peers


@pytest.mark.parametrize("environ,message", [
    ({"SLURM_JOB_ID": "1", "SLURM_PROCID": "4", "SLURM_NTASKS": "4",
      "SLURM_JOB_NODELIST": "n1"}, "outside 0..3"),
    ({"SLURM_JOB_ID": "1", "SLURM_PROCID": "x", "SLURM_NTASKS": "4",
      "SLURM_JOB_NODELIST": "n1"}, "SLURM_PROCID='x'"),
    ({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0"}, "start the command with srun"),
    ({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "SLURM_JOB_NODELIST"),
])
def test_distributed_env_errors(environ, message):
  with pytest.raises(UserError, match=message):
    slurm_env.distributed_env(environ)
