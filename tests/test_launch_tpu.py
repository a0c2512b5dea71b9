"""Cloud TPU launcher: exact gcloud argv in --dry-run, quoting of the remote command, errors.

The end-to-end tests put a fake `gcloud` on PATH that runs the remote `--command` string with
bash in a per-worker folder, the way the TPU VM's login shell would, and a fake project venv
whose `xltransfer` prints the argv it received.
"""
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

from xltransfer import command_line
from xltransfer.errors import UserError
from xltransfer.planning import accelerators
from xltransfer.launch import tpu

ZONE = "us-central2-b"
# A gin override with a space, a single quote and double quotes.
TRICKY = "--gin.MODEL_DIR=\"gs://b/my run's dir\""
TRAIN = ["train", "--gin_file=gin/runs/mt5_xxl.gin", TRICKY, "--gin.TRAIN_STEPS=1000"]


@pytest.fixture(autouse=True)
def no_real_cloud(tmp_path, monkeypatch):
  """Every test runs in a temp folder, with a `gcloud` on PATH that fails if reached."""
  guard = tmp_path / "guard-bin"
  guard.mkdir()
  (guard / "gcloud").write_text("#!/bin/sh\necho 'test reached gcloud' >&2\nexit 99\n")
  (guard / "gcloud").chmod(0o755)
  monkeypatch.setenv("PATH", f"{guard}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.chdir(tmp_path)


def with_dry_run(argv):
  """Adds --dry-run to the launcher's own flags, before any `--`."""
  argv = list(argv)
  index = argv.index("--") if "--" in argv else len(argv)
  return argv[:index] + ["--dry-run"] + argv[index:]


def dry_run(capsys, *argv):
  assert tpu.main(with_dry_run(argv)) == 0
  out = capsys.readouterr().out
  return [shlex.split(line) for line in out.splitlines()]


def ssh_prefix(worker, name="mt5-xxl"):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={ZONE}",
          f"--worker={worker}"]


def remote_of(argv):
  (command,) = [a for a in argv if a.startswith("--command=")]
  return command[len("--command="):]


def steps_of(remote):
  """Splits a remote `a && b && c` string into its argv steps."""
  steps, current = [], []
  for token in shlex.split(remote):
    if token == "&&":
      steps.append(current)
      current = []
    else:
      current.append(token)
  return steps + [current]


# ----------------------------------------------------------------------------- accelerators


@pytest.mark.parametrize("name,hosts,version", [
    ("v4-8", 1, "tpu-ubuntu2204-base"), ("v4-128", 16, "tpu-ubuntu2204-base"),
    ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"), ("v5litepod-256", 64, "v2-alpha-tpuv5-lite"),
    ("v5p-128", 16, "v2-alpha-tpuv5"), ("v6e-64", 16, "v2-alpha-tpuv6e"),
    ("v3-32", 4, "tpu-ubuntu2204-base")])
def test_accelerator_hosts_and_runtime(name, hosts, version):
  accelerator = accelerators.parse_accelerator_type(name)
  assert accelerator.num_hosts == hosts
  assert accelerator.default_runtime_version == version


@pytest.mark.parametrize("name,message", [
    ("v4-12", "multiples of 8"), ("v5litepod-12", "chips"), ("v7-8", "unknown accelerator"),
    ("v4", "unknown accelerator"), ("V4-128", "unknown accelerator"),
    ("v5e-256", "'v5litepod-256'")])
def test_bad_accelerator_types(name, message):
  with pytest.raises(UserError, match=message):
    accelerators.parse_accelerator_type(name)


# ----------------------------------------------------------------------------- create / delete


def test_create_dry_run_exact_argv(capsys):
  lines = dry_run(capsys, "create", "mt5-xxl", f"--zone={ZONE}", "--accelerator-type=v4-128",
                  "--spot", "--network=my net", "--subnetwork=sub-1", "--project=my-proj")
  assert lines == [["gcloud", "compute", "tpus", "tpu-vm", "create", "mt5-xxl",
                    f"--zone={ZONE}", "--project=my-proj", "--accelerator-type=v4-128",
                    "--version=tpu-ubuntu2204-base", "--spot", "--network=my net",
                    "--subnetwork=sub-1"]]


def test_create_queued_dry_run(capsys):
  lines = dry_run(capsys, "create", "pod", "--zone", "us-east5-a", "--accelerator-type",
                  "v5p-128", "--version", "v2-alpha-tpuv5", "--queued", "--spot",
                  "--valid-until-duration=6h")
  assert lines == [["gcloud", "compute", "tpus", "queued-resources", "create", "pod",
                    "--zone=us-east5-a", "--node-id=pod", "--accelerator-type=v5p-128",
                    "--runtime-version=v2-alpha-tpuv5", "--spot", "--valid-until-duration=6h"]]


def test_create_preemptible_v5e(capsys):
  lines = dry_run(capsys, "create", "lite", f"--zone={ZONE}",
                  "--accelerator-type=v5litepod-256", "--preemptible", "--internal-ips")
  assert lines[0][-4:] == ["--accelerator-type=v5litepod-256",
                           "--version=v2-alpha-tpuv5-lite", "--preemptible", "--internal-ips"]


def test_create_queued_rejects_preemptible():
  with pytest.raises(UserError, match="--spot, not --preemptible"):
    tpu.main(["create", "pod", f"--zone={ZONE}", "--accelerator-type=v4-32", "--queued",
              "--preemptible", "--dry-run"])


def test_delete_and_status_dry_run(capsys):
  assert dry_run(capsys, "delete", "mt5-xxl", f"--zone={ZONE}") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mt5-xxl", f"--zone={ZONE}",
       "--quiet"]]
  assert dry_run(capsys, "delete", "mt5-xxl", f"--zone={ZONE}", "--queued") == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "mt5-xxl", f"--zone={ZONE}",
       "--force", "--quiet"]]
  assert dry_run(capsys, "status", "mt5-xxl", f"--zone={ZONE}", "--project=p") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "describe", "mt5-xxl", f"--zone={ZONE}",
       "--project=p"]]


# ----------------------------------------------------------------------------- setup


def test_setup_dry_run_from_local_checkout(capsys, tmp_path):
  source = tmp_path / "my project"
  source.mkdir()
  (source / "setup.py").write_text("")
  archive = tmp_path / "src archive.tar.gz"
  lines = dry_run(capsys, "setup", "mt5-xxl", f"--zone={ZONE}", f"--source-dir={source}",
                  f"--archive={archive}", "--install-python=3.11", "--internal-ip")
  tar, scp, ssh = lines
  assert tar == ["tar", "-czf", str(archive), "--exclude=.git", "--exclude=.venv",
                 "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=.pytest_cache",
                 "--exclude=launch_logs", "--exclude=demo_output", "-C", str(source), "."]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(archive),
                 "mt5-xxl:xltransfer-src.tar.gz", f"--zone={ZONE}", "--worker=all",
                 "--internal-ip"]
  assert ssh[:-1] == ssh_prefix("all") + ["--internal-ip"]
  assert steps_of(remote_of(ssh)) == [
      ["sudo", "add-apt-repository", "--yes", "ppa:deadsnakes/ppa"],
      ["sudo", "apt-get", "update", "-q"],
      ["sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
       "python3.11", "python3.11-venv"],
      ["mkdir", "-p", "xltransfer"],
      ["tar", "-xzf", "xltransfer-src.tar.gz", "-C", "xltransfer"],
      ["rm", "-f", "xltransfer-src.tar.gz"],
      ["env", "-C", "xltransfer", "python3.11", "-m", "venv", ".venv"],
      ["env", "-C", "xltransfer", ".venv/bin/python", "-m", "pip", "install", "-q",
       "--upgrade", "pip"],
      ["env", "-C", "xltransfer", ".venv/bin/python", "-m", "pip", "install", "-q", "-e",
       ".[tpu]"]]


def test_setup_dry_run_from_git(capsys):
  url = "https://example.com/lab/xltransfer.git"
  lines = dry_run(capsys, "setup", "mt5-xxl", f"--zone={ZONE}", f"--git-url={url}",
                  "--git-ref=v1.0", "--remote-dir=my dir", "--clean")
  (ssh,) = lines  # nothing to pack or copy
  assert steps_of(remote_of(ssh))[:5] == [
      ["rm", "-rf", "my dir"], ["mkdir", "-p", "my dir"],
      ["git", "-C", "my dir", "init", "--quiet"],
      ["git", "-C", "my dir", "fetch", "--quiet", url, "v1.0"],
      ["git", "-C", "my dir", "checkout", "--quiet", "--force", "--detach", "FETCH_HEAD"]]


def test_archive_command_packs_the_checkout_without_environments(tmp_path):
  source = tmp_path / "checkout"
  (source / "xltransfer").mkdir(parents=True)
  (source / "setup.py").write_text("# setup\n")
  (source / "xltransfer" / "__init__.py").write_text("")
  (source / ".venv" / "bin").mkdir(parents=True)
  (source / ".venv" / "bin" / "python").write_text("")
  (source / "xltransfer" / "__pycache__").mkdir()
  (source / "xltransfer" / "__pycache__" / "x.pyc").write_text("")
  archive = tmp_path / "out dir" / "a.tar.gz"
  archive.parent.mkdir()
  subprocess.run(tpu.archive_command(source, archive), check=True)
  with tarfile.open(archive) as packed:
    names = sorted(n.lstrip("./") for n in packed.getnames() if n not in (".", "./"))
  assert names == ["setup.py", "xltransfer", "xltransfer/__init__.py"]


# ----------------------------------------------------------------------------- run / logs / stop


def test_run_dry_run_exact_argv_per_worker(capsys):
  lines = dry_run(capsys, "run", "mt5-xxl", f"--zone={ZONE}", "--accelerator-type=v4-32",
                  "--run-name=xnli-1", "--env=XLA_FLAGS=--xla_dump_to=/tmp/my dump", "--",
                  *TRAIN)
  assert len(lines) == 4  # v4-32: 4 hosts
  expected_argv = ["env", "-C", "xltransfer", "PYTHONUNBUFFERED=1",
                   "XLA_FLAGS=--xla_dump_to=/tmp/my dump", ".venv/bin/xltransfer", *TRAIN]
  for worker, line in enumerate(lines):
    assert line[:-1] == ssh_prefix(worker)
    tokens = shlex.split(remote_of(line))
    # mkdir -p xltransfer_logs && echo $$ > xltransfer_logs/xnli-1.pid && exec ARGV
    assert tokens[:10] == ["mkdir", "-p", "xltransfer_logs", "&&", "echo", "$$", ">",
                           "xltransfer_logs/xnli-1.pid", "&&", "exec"]
    assert tokens[10:] == expected_argv


def test_remote_command_round_trips_through_shlex():
  argv = tpu.worker_argv("xltransfer", TRAIN + ["--gin.NOTE='a; rm -rf ~' $(x) `y` \\ \n"])
  remote = tpu.run_remote_command(argv, "r")
  assert shlex.split(remote)[-len(argv):] == argv
  assert shlex.split(tpu.remote_script([argv, ["echo", "&&"]])) == argv + ["&&", "echo", "&&"]


def test_run_study_detached_and_logs_and_stop(capsys):
  # One worker (a v4-8): `study run` on several is refused (test_launch_dry_run.py).
  lines = dry_run(capsys, "run", "mt5-xxl", f"--zone={ZONE}", "--num-workers=1",
                  "--run-name=study-a", "--detach", "--", "study", "run", "gin/study/my study.gin")
  (ssh,) = lines
  assert ssh[:-1] == ssh_prefix("all")
  tokens = shlex.split(remote_of(ssh))
  argv = ["env", "-C", "xltransfer", "PYTHONUNBUFFERED=1", ".venv/bin/xltransfer", "study",
          "run", "gin/study/my study.gin"]
  assert tokens == (["mkdir", "-p", "xltransfer_logs", "&&", "{", "nohup"] + argv +
                    [">", "xltransfer_logs/study-a.log", "2>&1", "<", "/dev/null", "&", "echo",
                     "$!", ">", "xltransfer_logs/study-a.pid;", "}"])
  logs = dry_run(capsys, "logs", "mt5-xxl", f"--zone={ZONE}", "--accelerator-type=v5p-16",
                 "--run-name=study-a")
  assert [line[:-1] for line in logs] == [ssh_prefix(0), ssh_prefix(1)]
  assert all(remote_of(line) == "tail -n +1 -F xltransfer_logs/study-a.log" for line in logs)
  (stop,) = dry_run(capsys, "stop", "mt5-xxl", f"--zone={ZONE}", "--run-name=study-a")
  assert remote_of(stop) == 'kill -TERM "$(cat xltransfer_logs/study-a.pid)"'


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv,message", [
    (["create", "pod", "--accelerator-type=v4-32"], "--zone is required"),
    (["create", "pod", "--zone=us-central2", "--accelerator-type=v4-32"], "not a zone name"),
    (["create", "pod", f"--zone={ZONE}", "--accelerator-type=v4-100"], "multiples of 8"),
    (["create", "pod", f"--zone={ZONE}", "--accelerator-type=tpu-128"],
     "unknown accelerator type"),
    (["create", "My_Pod", f"--zone={ZONE}", "--accelerator-type=v4-32"], "TPU name"),
    (["run", "pod", f"--zone={ZONE}", "--num-workers=2"], "after `--`"),
    (["run", "pod", f"--zone={ZONE}", "--num-workers=2", "--", "trian"],
     "unknown xltransfer command 'trian'"),
    (["run", "pod", f"--zone={ZONE}", "--", "train"], "needs --accelerator-type or"),
    (["run", "pod", f"--zone={ZONE}", "--num-workers=1", "--run-name=a/b", "--", "train"],
     "--run-name"),
    (["run", "pod", f"--zone={ZONE}", "--num-workers=1", "--env=1X=2", "--", "train"],
     "NAME=VALUE"),
    (["delete", "pod", f"--zone={ZONE}", "--", "train"], "takes no command"),
    (["setup", "pod", f"--zone={ZONE}", "--install-python=3"], "like 3.11"),
    (["setup", "pod", f"--zone={ZONE}", "--git-ref=main"], "needs --git-url"),
    (["setup", "pod", f"--zone={ZONE}", "--remote-dir=~/x"], "drop the leading ~/"),
])
def test_bad_input_is_a_user_error(argv, message):
  with pytest.raises(UserError, match=message):
    tpu.main(with_dry_run(argv))


def run_module(*argv, env=None):
  return subprocess.run([sys.executable, "-m", "xltransfer.launch.tpu", *argv],
                        capture_output=True, text=True, env=env, timeout=60)


def test_cli_errors_exit_non_zero_without_traceback():
  result = run_module("create", "pod", "--accelerator-type=v9-8", f"--zone={ZONE}", "--dry-run")
  assert result.returncode == 2
  assert "error: unknown accelerator type 'v9-8'" in result.stderr
  assert "Traceback" not in result.stderr
  # argparse's own errors (here: a flag without its value) also exit 2 with usage.
  result = run_module("create", "pod", "--accelerator-type")
  assert result.returncode == 2 and "usage:" in result.stderr


def test_entry_points_dispatch_to_the_launcher():
  repo = pathlib.Path(__file__).resolve().parents[1]
  expected = shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod",
                         f"--zone={ZONE}", "--quiet"])
  for argv in ([str(repo / "launch" / "tpu.py")], ["-m", "xltransfer", "launch", "tpu"]):
    result = subprocess.run([sys.executable, *argv, "delete", "pod", f"--zone={ZONE}",
                             "--dry-run"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr
  result = subprocess.run([sys.executable, "-m", "xltransfer", "launch", "gke"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "unknown launcher 'gke'" in result.stderr


def test_without_gcloud_on_path_fails_clearly(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no gcloud
  rc = command_line.run_command(tpu.main, "launch/tpu.py",
                         ["delete", "pod", f"--zone={ZONE}"])
  assert rc == 2
  err = capsys.readouterr().err
  assert "`gcloud` was not found on PATH" in err and "--dry-run" in err
  for argv in (["create", "pod", f"--zone={ZONE}", "--accelerator-type=v4-32"],
               ["run", "pod", f"--zone={ZONE}", "--", "train"]):  # asks gcloud for the size
    result = run_module(*argv, env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 2
    assert "`gcloud` was not found on PATH" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- end to end


FAKE_GCLOUD = """\
#!{python}
# Stands in for gcloud: records its argv; `ssh` runs --command with bash in each worker's home.
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(args) + "\\n")
if args[3] == "describe":
  print(os.environ.get("FAKE_ACCELERATOR", "v4-16"))
  sys.exit(0)
if args[3] != "ssh":
  sys.exit(0)
remote = [a for a in args if a.startswith("--command=")][0][len("--command="):]
worker = [a for a in args if a.startswith("--worker=")][0][len("--worker="):]
workers = range(int(os.environ["FAKE_WORKERS"])) if worker == "all" else [int(worker)]
status = 0
for w in workers:
  home = os.path.join(os.environ["FAKE_HOMES"], f"worker-{{w}}")
  status |= subprocess.call(["bash", "-c", remote], cwd=home,
                            env=dict(os.environ, FAKE_WORKER=str(w)))
sys.exit(status)
"""

FAKE_XLTRANSFER = """\
#!{python}
# The project's xltransfer on a fake worker: reports what it was started with.
import json, os, sys, time
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.path.basename(os.getcwd()),
                   "pid": os.getpid(), "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
                   "worker": os.environ["FAKE_WORKER"]}}))
if "--gin.SLEEP=1" in sys.argv:
  time.sleep(60)
sys.exit(3 if "--gin.FAIL_ON_WORKER=" + os.environ["FAKE_WORKER"] in sys.argv else 0)
"""


@pytest.fixture
def fake_cloud(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  homes = tmp_path / "homes"
  for worker in range(2):
    venv_bin = homes / f"worker-{worker}" / "xltransfer" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    program = venv_bin / "xltransfer"
    program.write_text(FAKE_XLTRANSFER.format(python=sys.executable))
    program.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(tmp_path / "gcloud.log"))
  monkeypatch.setenv("FAKE_HOMES", str(homes))
  monkeypatch.setenv("FAKE_WORKERS", "2")
  monkeypatch.setenv("FAKE_ACCELERATOR", "v4-16")

  def calls():
    path = tmp_path / "gcloud.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  return homes, calls


def test_run_streams_every_worker_with_exact_argv(fake_cloud, capsys):
  homes, calls = fake_cloud
  assert tpu.main(["run", "pod", f"--zone={ZONE}", "--run-name=r1", "--", *TRAIN]) == 0
  # No worker count given: the launcher asked gcloud for the slice's type (v4-16: 2 hosts).
  assert calls()[0] == ["compute", "tpus", "tpu-vm", "describe", "pod", f"--zone={ZONE}",
                        "--format=value(acceleratorType)"]
  out = capsys.readouterr().out
  for worker in (0, 1):
    log_lines = (pathlib.Path("launch_logs/pod/r1") / f"worker-{worker}.log").read_text()
    report = json.loads(log_lines)
    assert report["argv"] == TRAIN  # the tricky gin override arrived intact
    assert report["cwd"] == "xltransfer" and report["unbuffered"] == "1"
    assert report["worker"] == str(worker)
    # `exec` made the recorded pid the program's own, which is what `stop` kills.
    pid_file = homes / f"worker-{worker}" / "xltransfer_logs" / "r1.pid"
    assert int(pid_file.read_text()) == report["pid"]
    assert f"[worker {worker}] {log_lines.strip()}" in out.splitlines()


def test_run_reports_failed_workers(fake_cloud, capsys):
  with pytest.raises(UserError, match=r"1 of 2 worker\(s\) failed: worker 1 \(exit 3"):
    tpu.main(["run", "pod", f"--zone={ZONE}", "--num-workers=2", "--console=first",
              "--run-name=bad", "--", "train", "--gin.FAIL_ON_WORKER=1"])
  out = capsys.readouterr().out
  assert "[worker 0]" in out and "[worker 1]" not in out
  assert pathlib.Path("launch_logs/pod/bad/worker-1.log").read_text().strip()


def _wait_for(predicate, seconds=20.0):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.1)
  return False


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A finished child of the fake ssh's bash may linger as a zombie until reaped by init.
  stat = pathlib.Path(f"/proc/{pid}/stat")
  return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def test_detached_run_then_logs_then_stop(fake_cloud, capsys):
  homes, _ = fake_cloud
  base = ["pod", f"--zone={ZONE}", "--num-workers=2", "--run-name=bg"]
  assert tpu.main(["run", *base, "--detach", "--", "train", "--gin.SLEEP=1", TRICKY]) == 0
  logs = [homes / f"worker-{w}" / "xltransfer_logs" / "bg.log" for w in (0, 1)]
  pids = [homes / f"worker-{w}" / "xltransfer_logs" / "bg.pid" for w in (0, 1)]
  try:
    assert _wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pids + logs))
    capsys.readouterr()
    assert tpu.main(["logs", *base, "--no-follow"]) == 0
    out = capsys.readouterr().out
    for worker in (0, 1):
      line = next(l for l in out.splitlines() if l.startswith(f"[worker {worker}] {{"))
      report = json.loads(line.split("] ", 1)[1])
      assert report["argv"] == ["train", "--gin.SLEEP=1", TRICKY]
      assert report["pid"] == int(pids[worker].read_text())
    assert tpu.main(["stop", "pod", f"--zone={ZONE}", "--run-name=bg"]) == 0
    assert _wait_for(lambda: not any(_alive(int(p.read_text())) for p in pids))
  finally:
    for pid_file in pids:  # never leave the test's own sleepers behind
      if pid_file.exists() and pid_file.read_text().strip():
        pid = int(pid_file.read_text())
        if _alive(pid):
          os.kill(pid, 9)
