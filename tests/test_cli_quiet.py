"""A quiet, fast `xltransfer`: library start-up logs are dropped by default (library_logs.py),
and a config error comes before tensorflow and seqio are imported (issue 15, item 4)."""
import os
import subprocess
import sys
import textwrap

import gin
import pytest

from xltransfer import cli
from xltransfer import gin_utils
from xltransfer import library_logs
from xltransfer.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Verbatim start-up lines of TensorFlow 2.21, jaxlib's CUDA probe and libtpu 0.0.42 on a CPU
# machine (see library_logs.py).
NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796036060.530343   30493 port.cc:153] oneDNN custom operations are on. You "
    b"may see slightly different numerical results.\n"
    b"I0000 00:00:1796036060.531428   30493 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n"
    b"I0000 00:00:1796036098.364066   31025 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n"
    b"E0000 00:00:1796036063.966263   30493 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
    b"Failed to find host bounds for accelerator type: WARNING: could not determine TPU "
    b"accelerator type, please set env var `TPU_ACCELERATOR_TYPE` manually\n"
    b"WARNING: Logging before InitGoogle() is written to STDERR\n"
    b"E0000 00:00:1796036102.983195   31044 common_lib.cc:554] INVALID_ARGUMENT: Error: "
    b"unexpected worker hostname 'WARNING: could not determine TPU worker hostnames or IP "
    b"addresses' from env var TPU_WORKER_HOSTNAMES.\n"
    b"=== Source Location Trace: ===\n"
    b"learning/45eac/tfrc/runtime/libtpu_init_utils.cc:327\n"
)
# What must get through: xltransfer's message, a traceback, a real C++ error, a fatal line.
KEPT = (
    b"xltransfer train: error: macro %TRAIN_STEP is used at a.gin:3 but never defined\n"
    b"Traceback (most recent call last):\n"
    b"  File \"x.py\", line 1, in <module>\n"
    b"ValueError: boom\n"
    b"E0000 00:00:1796036063.966263   30493 pjrt_client.cc:10] RESOURCE_EXHAUSTED: out of "
    b"memory allocating 4096 bytes\n"
    b"F0000 00:00:1796036063.966263   30493 check.cc:1] Check failed: x == y\n"
)


def _env(**changes):
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", library_logs.VERBOSE_ENV)}
  env.update(changes)
  return env


def test_filter_drops_library_noise_and_keeps_the_rest():
  noise_filter = library_logs.NoiseFilter()
  assert noise_filter.feed(NOISE + KEPT) + noise_filter.flush() == KEPT
  # Fed in small pieces, as a pipe may deliver it.
  noise_filter = library_logs.NoiseFilter()
  data = NOISE + KEPT
  out = b"".join(noise_filter.feed(data[i:i + 7]) for i in range(0, len(data), 7))
  assert out + noise_filter.flush() == KEPT


def test_filter_follows_the_users_cpp_log_level():
  info = NOISE.splitlines(keepends=True)[1]
  assert library_logs.cpp_min_log_level({"TF_CPP_MIN_LOG_LEVEL": "0"}) == 0
  assert library_logs.cpp_min_log_level({}) == 2
  assert library_logs.NoiseFilter(min_level=0).feed(info) == info
  assert library_logs.NoiseFilter().feed(info) == b""


def test_filter_passes_progress_bars_at_once():
  noise_filter = library_logs.NoiseFilter()
  bar = b"\rtraining:  40%|####      | 4/10 [00:01<00:02, 3.1it/s]"
  assert noise_filter.feed(bar) == bar
  # A source-location-like line outside a trace is not dropped.
  assert noise_filter.feed(b"\nsrc/main.cc:12\n") == b"\nsrc/main.cc:12\n"


_WRITES_TO_FD2 = textwrap.dedent("""
    import os, sys
    from xltransfer import library_logs
    library_logs.quiet()
    noise, kept = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
    os.write(2, noise)
    os.write(2, kept)
    print("to stdout")
    if sys.argv[3] == "crash":
      os._exit(3)  # no atexit: the forked filter still passes on what was written
""")


@pytest.mark.parametrize("ending", ["exit", "crash"])
def test_quiet_process_stderr_has_only_its_own_lines(ending):
  proc = subprocess.run([sys.executable, "-c", _WRITES_TO_FD2, NOISE.hex(), KEPT.hex(), ending],
                        env=_env(), capture_output=True, cwd=REPO, check=False, timeout=60)
  assert proc.stderr == KEPT
  assert proc.stdout == b"to stdout\n"
  assert proc.returncode == (3 if ending == "crash" else 0)


def test_verbose_env_keeps_library_lines():
  proc = subprocess.run([sys.executable, "-c", _WRITES_TO_FD2, NOISE.hex(), KEPT.hex(), "exit"],
                        env=_env(**{library_logs.VERBOSE_ENV: "1"}), capture_output=True,
                        cwd=REPO, check=False, timeout=60)
  assert proc.stderr == NOISE + KEPT


def test_quiet_keeps_the_users_log_levels(monkeypatch):
  environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
  monkeypatch.setattr(library_logs, "_start_filter", lambda: None)
  assert library_logs.quiet(environ)
  assert environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
  assert environ["TPU_MIN_LOG_LEVEL"] == "2"
  assert not library_logs.quiet({library_logs.VERBOSE_ENV: "1"})


def test_verbose_flag_is_documented_and_stripped(capsys):
  assert cli.main(["-v", "--help"]) == 0
  out = capsys.readouterr().out
  assert "usage: xltransfer [-v] COMMAND" in out and library_logs.VERBOSE_ENV in out
  assert cli.main(["--verbose", "nosuchcommand"]) == 2
  assert "unknown command 'nosuchcommand'" in capsys.readouterr().err


# ---- fast config errors: nothing heavy is imported to parse a config ----

REGISTRATION_MODULES = (
    "xltransfer.partitioning", "xltransfer.model.factory", "xltransfer.train.run",
    "xltransfer.train.evaluate", "xltransfer.evaluation.evaluator", "xltransfer.planning.plan",
    "xltransfer.planning.run_config", "xltransfer.commands.train", "xltransfer.commands.eval",
    "xltransfer.commands.plan", "xltransfer.commands.study")


def test_registration_modules_do_not_import_tensorflow_or_seqio():
  code = ("import importlib, sys\n"
          f"for name in {REGISTRATION_MODULES!r}: importlib.import_module(name)\n"
          "print(sorted(m for m in ('tensorflow', 'seqio', 'tensorflow_datasets', "
          "'xltransfer.tasks') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                        text=True, cwd=REPO, check=True, timeout=120)
  assert proc.stdout.strip() == "[]", proc.stderr


def _xltransfer(*argv, **env):
  return subprocess.run([sys.executable, "-m", "xltransfer", *argv], env=_env(**env),
                        capture_output=True, text=True, cwd=REPO, check=False, timeout=300)


def test_mistyped_macro_is_one_line_without_tensorflow(tmp_path):
  proc = _xltransfer("train", "--gin_file=models/mt5_small.gin", "--gin_file=runs/finetune.gin",
                     f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEP=3",
                     "--gin.MIXTURE_OR_TASK_NAME='xlt_xnli_train'")
  assert proc.returncode == 2
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("xltransfer train: error: required macro "
                                                 "TRAIN_STEPS is not set"), proc.stderr
  assert not os.path.exists(tmp_path / "config.gin")


@pytest.mark.slow
def test_unknown_task_after_the_libraries_load_is_one_line_unless_verbose(tmp_path):
  # This error comes after TensorFlow (the task registry) and jax (the MODEL_DIR lock) have
  # loaded and logged (an empty names cache: registered_names.py cannot answer it before);
  # JAX_PLATFORMS unset lets an installed libtpu probe for a TPU too.
  argv = ("train", "--gin_file=models/mt5_small.gin", "--gin_file=runs/finetune.gin",
          f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=3",
          "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.MIXTURE_OR_TASK_NAME='xlt_xnli_trian'")
  env = {"JAX_PLATFORMS": "", "XLTRANSFER_CACHE_DIR": str(tmp_path / "cache")}
  quiet = _xltransfer(*argv, **env)
  assert quiet.returncode == 2
  lines = quiet.stderr.splitlines()
  assert lines[-1].startswith("xltransfer train: error: MIXTURE_OR_TASK_NAME 'xlt_xnli_trian' "
                              "is not a registered seqio task"), quiet.stderr
  # Before it only the command's own log lines ("... INFO locked MODEL_DIR ..."): the
  # `--log_level` format, no library's.
  assert all(" INFO " in line or " WARNING " in line for line in lines[:-1]), quiet.stderr
  assert not any(library_logs.is_noise(line.encode()) for line in lines)
  (tmp_path / "cache" / "task_names.json").unlink()  # the quiet run remembered the names
  verbose = _xltransfer("-v", *argv, **env)
  assert verbose.returncode == 2
  assert verbose.stderr.splitlines()[-1] == lines[-1]
  # TensorFlow's start-up lines (absl's pre-init warning at least) are back.
  assert any(library_logs.is_noise(line.encode()) for line in verbose.stderr.splitlines())


# ---- deferred registration modules (gin_utils.defer_modules) ----

@pytest.fixture
def deferred_module(tmp_path, monkeypatch, clean_gin):  # pylint: disable=unused-argument
  name = f"xlt_test_deferred_{tmp_path.name.replace('-', '_')}"  # gin keeps registrations
  (tmp_path / f"{name}.py").write_text(
      f"import gin\n\n@gin.configurable(module={name!r})\ndef deferred_knob(value=1):\n"
      "  return value\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  yield name
  sys.modules.pop(name, None)
  gin_utils.defer_modules([])


def _gin_file(tmp_path, text):
  path = tmp_path / "config.gin"
  path.write_text(text)
  return str(path)


def test_deferred_module_is_imported_after_a_parse_that_does_not_need_it(tmp_path,
                                                                         deferred_module):
  gin_utils.defer_modules([deferred_module])
  gin_utils.parse_config([_gin_file(tmp_path, "# binds nothing\n")], [], [])
  assert deferred_module not in sys.modules
  gin_utils.import_modules([], [deferred_module])  # on the locked config
  assert sys.modules[deferred_module].deferred_knob() == 1


def test_deferred_module_is_imported_when_the_config_binds_its_configurable(tmp_path,
                                                                            deferred_module):
  gin_utils.defer_modules([deferred_module])
  gin_utils.parse_config([_gin_file(tmp_path, f"{deferred_module}.deferred_knob.value = 7\n")],
                         [], [])
  assert sys.modules[deferred_module].deferred_knob() == 7


def test_unknown_configurable_still_fails_after_the_deferred_import(tmp_path, deferred_module):
  gin_utils.defer_modules([deferred_module])
  with pytest.raises(ConfigError, match="No configurable matching '.*deferred_knbo'"):
    gin_utils.parse_config([_gin_file(tmp_path, f"{deferred_module}.deferred_knbo.value = 7\n")],
                           [], [])
  assert deferred_module in sys.modules
  assert not gin.config_is_locked()
