#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on the device machine, in three calls made back to back while it
# stays warm: what travels is capped at 64 MiB a call, and the wheels (about 70 MB, SimpleITK alone 53 MB)
# and the real CT (81 MB) are more than that together.
#
#   here, once:  bash benchmarks/gpu_check.sh pack          -> .gpu/call1 .gpu/call2 .gpu/call3 (.gitignore lists .gpu/)
#   device:      run(command="bash benchmarks/gpu_check.sh 1", carry=[".gpu/call1"], timeout_s=120)
#                run(command="bash benchmarks/gpu_check.sh 2", carry=[".gpu/call2"], timeout_s=120)
#                run(command="bash benchmarks/gpu_check.sh 3", carry=[".gpu/call3"], timeout_s=600)
#                -> $OUT/*.json, to commit as benchmarks/results/gpu_check/*_cuda.json
#   dry run:     OUT=/tmp/x bash benchmarks/gpu_check.sh dry-run   (CPU, tiny; tests/test_gpu_check.py)
#
# Each call unpacks its wheels into /tmp/gpu_check/site and its images into /tmp/gpu_check/real_ct, which
# survive between calls on a warm machine; call 3 checks the imports first and stops at once if they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?usage: gpu_check.sh pack|1|2|3|dry-run}
ROOT=/tmp/gpu_check
PY=${PYTHON:-python3}  # the test passes its interpreter (the venv), the device has its own python3
REAL_CT=${PANCREAS_REAL_CT_DIR:-../shared/data/real_ct}
WHEELS="nnunetv2==2.8.1 simpleitk==2.5.7 nibabel==5.4.2 blosc2==4.14.1 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
dynamic_network_architectures==0.4.4 ndindex==1.10.1 numexpr==2.14.2 connected-components-3d==4.1.1 yacs==0.1.8 graphviz==0.21 future==1.0.0"
BUDGET=$((58 * 1024 * 1024))  # bytes per call, the working tree (under 1 MB) and some headroom left

pack() {  # the wheels for the device's Python 3.12, then the real CT, in calls of at most $BUDGET bytes
  [ -d "$REAL_CT/train" ] || { echo "gpu_check pack: no real CT in $REAL_CT (set PANCREAS_REAL_CT_DIR)" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp/whl" $WHEELS
  "$PY" -m pip wheel -q --no-deps -w "$tmp/whl" acvl_utils==0.2.6  # published as source only; pure Python
  rm -rf .gpu && mkdir -p .gpu/call1/whl .gpu/call2/whl .gpu/call3
  mv "$tmp"/whl/simpleitk-*.whl .gpu/call1/whl/ && mv "$tmp"/whl/*.whl .gpu/call2/whl/
  local call=1 used
  used=$(du -sb .gpu/call1 | cut -f1)
  while IFS= read -r file; do  # images and masks, in order, into the current call, the next when it is full
    local size; size=$(stat -c %s "$REAL_CT/$file")
    while [ $((used + size)) -gt $BUDGET ]; do
      [ $call -lt 3 ] || { echo "gpu_check pack: the real CT does not fit in 3 calls" >&2; exit 1; }
      call=$((call + 1)); used=$(du -sb .gpu/call$call | cut -f1)
    done
    mkdir -p ".gpu/call$call/data/$(dirname "$file")" && cp "$REAL_CT/$file" ".gpu/call$call/data/$file"
    used=$((used + size))
  done < <(cd "$REAL_CT" && find . -name '*.nii.gz' | sed 's|^\./||' | sort)
  rm -rf "$tmp"
  du -sh .gpu/call*
}

unpack() {
  local call=.gpu/call$1
  [ -d "$call" ] || { echo "gpu_check: $call is missing: run 'bash benchmarks/gpu_check.sh pack' here and carry it" >&2; exit 2; }
  mkdir -p "$ROOT/site" "$ROOT/real_ct"
  if compgen -G "$call/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$ROOT/site" "$call"/whl/*.whl
  fi
  if [ -d "$call/data" ]; then cp -r "$call/data/." "$ROOT/real_ct/"; fi
  echo "call $1: $(ls "$ROOT/site" | wc -l) entries in $ROOT/site, $(find "$ROOT/real_ct" -name '*.nii.gz' | wc -l) images and masks"
}

case $STAGE in
  pack) pack ;;
  1|2) unpack "$STAGE" ;;
  3)
    unpack 3
    export PYTHONPATH="$ROOT/site:$PWD/lib" PYTHONUNBUFFERED=1
    python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import nnunetv2, SimpleITK, nibabel, blosc2, psutil, gpu_check, train_speed, inference_speed
import pancreas_multitask.profiles, pancreas_multitask.experiment_planning.prepare, pancreas_multitask.training.train, pancreas_multitask.inference.predictor, pancreas_multitask.evaluation.metrics" \
      || { echo "gpu_check: the carried packages do not import (did the machine go cold between calls? start again at call 1)" >&2; exit 3; }
    python3 benchmarks/gpu_check.py --device cuda --real-ct "$ROOT/real_ct" --out "${OUT:-benchmarks/results/gpu_check}" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
    ;;
  dry-run)
    export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    "$PY" benchmarks/gpu_check.py --dry-run --device cpu --real-ct "$REAL_CT" --out "${OUT:?set OUT to the folder for the JSON}"
    ;;
  *) echo "usage: gpu_check.sh pack|1|2|3|dry-run" >&2; exit 64 ;;
esac
