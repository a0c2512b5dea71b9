#!/usr/bin/env bash
# Issue 17's device check, one script: mT5-base, -large and -XL train steps and greedy decoding,
# xltransfer (JAX) against HF PyTorch on the GPU present (benchmarks/gpu_step.py), and
# `xltransfer plan --topology local` for the same configs.
#
# It runs in the repository root (the device tool's copy of the working tree) and writes to
# $OUT: device_check.log (all output), gpu_step_SIZE.json per size, plan_SIZE.json per size
# where `plan` ran. Each step has its own time limit (under 8 minutes in all); a step that fails
# or runs out of time is logged and the rest still run (gpu_step.py rewrites its JSON after
# every part, so a stopped step keeps what it measured). Exit status 0: every step succeeded.
#
# The GPU image has jax, flax, optax, orbax-checkpoint, torch and transformers but not
# gin-config, which xltransfer's core imports; it travels as a wheel. Before the call, here:
#   python -m pip download --no-deps --only-binary=:all: -d .device_wheels gin-config==0.5.0
# (.device_wheels/ is git-ignored). The call (device tool `run`):
#   carry [".device_wheels"], timeout_s 480, command: bash benchmarks/device_check.sh
# To rerun only some sizes (e.g. one that ran out of time): DEVICE_CHECK_SIZES="xl" bash ...
# Variants of the first size, xltransfer's train step only, each MICROBATCHES:REMAT (about 60 s
# each for XL), into $OUT/variant_MICROBATCHES_REMAT/:
#   DEVICE_CHECK_SIZES="xl" DEVICE_CHECK_VARIANTS="1:minimal 2:minimal 1:full" DEVICE_CHECK_PLAN=0
# (The first GPU run, 2026-11-30, measured 1:full at 23.9% MFU against 19.6% for the config's
# 4:full; "minimal" then compiled to "full" in bf16, fixed since, so it is still unmeasured.)
# DEVICE_CHECK_PROFILE=MICROBATCHES:REMAT adds a profile of the first size's step (about 90 s
# for XL; its figures go to the log only). The device tool brings back 8 files at most: the
# log, gpu_step_xl.json, one JSON per variant and the profile's 3 files (calls, trace, module)
# make 8 with three variants:
#   DEVICE_CHECK_SIZES="xl" DEVICE_CHECK_VARIANTS="1:minimal 2:minimal 1:full" \
#   DEVICE_CHECK_PLAN=0 DEVICE_CHECK_PROFILE="1:minimal" bash benchmarks/device_check.sh
# The project itself is not installed: PYTHONPATH points at this checkout (gin files are read
# from its gin/ folder).
#
# On a CPU, tiny shapes end to end (gpu_step --tiny, and `plan` for the tiny config;
# DEVICE_CHECK_PLAN=0 skips it):
#   DEVICE_CHECK_TINY=1 OUT=/tmp/device_out PYTHON=.venv/bin/python bash benchmarks/device_check.sh
set -u
OUT=${OUT:?set OUT to the folder for the figures}
PYTHON=${PYTHON:-python3}
TINY=${DEVICE_CHECK_TINY:-0}
RUN_PLAN=${DEVICE_CHECK_PLAN:-1}
WHEELS=${DEVICE_CHECK_WHEELS:-.device_wheels}  # gin-config
SITE=${DEVICE_CHECK_SITE:-/tmp/xltransfer_device_site}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
tee_pid=$!
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
status=0
began=$SECONDS

step() {  # NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs its exit status
  local name=$1 limit=$2
  shift 2
  echo "[device_check] $name (limit ${limit} s)"
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local note=""
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note=" (TIME LIMIT)"; fi
  echo "[device_check] $name: exit $rc after $((SECONDS - start)) s$note"
  if [ "$rc" != 0 ]; then status=1; fi
}

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl \
    || { echo "device_check: installing $WHEELS failed"; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "device_check: no wheels in $WHEELS (see this script's header); using what is installed"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$TINY" = 1 ]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # no probing for accelerators (libtpu) on a CPU
  SIZES=(tiny); MODE=(--tiny); declare -A LIMIT=([tiny]=300)
  PLAN_LIMIT=300
else
  # On one H200 (2026-11-30) the sizes took 77, 100 and 107 s and each plan 29-32 s (XLA:GPU
  # compiles slower than XLA:CPU); the limits below sum to 470 s, under 8 minutes.
  declare -A LIMIT=([base]=85 [large]=115 [xl]=135)
  read -r -a SIZES <<< "${DEVICE_CHECK_SIZES:-base large xl}"
  MODE=(--decode_steps 1)
  for size in "${SIZES[@]}"; do
    if [ -z "${LIMIT[$size]:-}" ]; then
      echo "device_check: DEVICE_CHECK_SIZES: unknown size $size (base, large, xl)"
      exit 2
    fi
  done
  PLAN_LIMIT=45
fi

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
fi
"$PYTHON" - <<'EOF' || { echo "device_check: the engine's packages do not import"; exit 2; }
import importlib.util, jax, flax, optax, gin, orbax.checkpoint
print(f"python {__import__('platform').python_version()}, jax {jax.__version__}, flax "
      f"{flax.__version__}, optax {optax.__version__}, gin {gin.__file__}")
print("devices:", jax.devices())
print("absent:", [m for m in ("tensorflow", "seqio", "tensorflow_datasets", "torch", "transformers")
                  if importlib.util.find_spec(m) is None])
EOF


for size in "${SIZES[@]}"; do
  # One process per size: a device's peak memory statistic cannot be reset.
  step "gpu_step $size" "${LIMIT[$size]}" \
      "$PYTHON" benchmarks/gpu_step.py --sizes "$size" "${MODE[@]}" --out "$OUT"
done

read -r -a VARIANTS <<< "${DEVICE_CHECK_VARIANTS:-}"
for variant in "${VARIANTS[@]}"; do
  microbatches=${variant%%:*} remat=${variant#*:}
  dir="$OUT/variant_${microbatches}_${remat}"
  mkdir -p "$dir"
  step "gpu_step ${SIZES[0]} $microbatches microbatches, $remat remat" 90 \
      "$PYTHON" benchmarks/gpu_step.py --sizes "${SIZES[0]}" "${MODE[@]}" \
      --num_microbatches "$microbatches" --remat "$remat" --steps 3 --warmup 1 \
      --skip cost_check,xltransfer_decode,hf,xla_cpu_estimate --out "$dir"
done

# A profile of the first size's train step at MICROBATCHES:REMAT (two traced steps) into
# $OUT/profile/SIZE/: the trace and the compiled module, gzipped; the GPU image cannot read the
# trace (no TensorFlow), so summarise it afterwards here: python benchmarks/xla_profile.py DIR.
if [ -n "${DEVICE_CHECK_PROFILE:-}" ]; then
  microbatches=${DEVICE_CHECK_PROFILE%%:*} remat=${DEVICE_CHECK_PROFILE#*:}
  step "gpu_step ${SIZES[0]} profile ($microbatches microbatches, $remat remat)" 120 \
      "$PYTHON" benchmarks/gpu_step.py --sizes "${SIZES[0]}" "${MODE[@]}" \
      --num_microbatches "$microbatches" --remat "$remat" --steps 2 --warmup 1 \
      --skip cost_check,xltransfer_decode,hf,xla_cpu_estimate --profile "$OUT/profile"
fi

if [ "$RUN_PLAN" != 1 ]; then
  echo "[device_check] xltransfer plan: SKIPPED (DEVICE_CHECK_PLAN=$RUN_PLAN)"
else
  # Without seqio (the GPU image), plan skips the vocabulary check, saying so: no seqio task.
  for size in "${SIZES[@]}"; do
    mapfile -t FLAGS < <("$PYTHON" benchmarks/gpu_step.py --sizes "$size" "${MODE[@]}" --plan_flags)
    step "xltransfer plan $size" "$PLAN_LIMIT" "$PYTHON" -m xltransfer plan "${FLAGS[@]}" \
        --topology local --skip_inference --output "$OUT/plan_$size.json"
  done
fi

echo "[device_check] summary (device check took $((SECONDS - began)) s)"
"$PYTHON" benchmarks/gpu_step.py --report "$OUT" || status=1
echo "[device_check] exit $status"
exec 1>&- 2>&-
wait "$tee_pid" 2> /dev/null  # the log complete before the folder is collected
exit $status
