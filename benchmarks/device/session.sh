#!/usr/bin/env bash
# One GPU session's checks of the performance issue, in priority order, each under its own
# time limit so that a slow step cannot cost the ones after it. On the device tool:
#   run(command="bash benchmarks/device/session.sh", timeout_s=540,
#       carry=["data/devray.tar.xz", "data/devphotos"])
# after `bash benchmarks/device/bundle.sh` here. Everything lands in $OUT/res.tgz and
# $OUT/run.log; see benchmarks/device/README.md. ROWS, PRECISION, BATCH and DEVICE
# override the defaults (DEVICE=cpu ROWS=256 SKIP_BUNDLE=1 smoke-tests it without a GPU);
# STEPS=name,name runs only those steps (a rerun of the ones a cut-short call missed).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
ROWS=${ROWS:-40000}
PRECISION=${PRECISION:-bf16}
BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
res=$(mktemp -d)
log=$OUT/run.log
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1
start=$SECONDS

say() { echo "[$((SECONDS - start))s] $*" | tee -a "$log"; }
pack() { tar -czf "$OUT/res.tgz" -C "$res" . 2>/dev/null; }
# step NAME SECONDS CMD...: runs CMD with its output in $res/NAME.log, then packs results,
# so that whatever finished comes back even if the call is cut short.
step() {
  local name=$1 limit=$2
  shift 2
  [[ -n ${STEPS:-} && ",$STEPS," != *",$name,"* ]] && return
  say "$name: start (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" >"$res/$name.log" 2>&1
  say "$name: exit $? $(tail -n 1 "$res/$name.log" | cut -c1-300)"
  pack
}

if [[ -z ${SKIP_BUNDLE:-} ]]; then
  tar -xJf data/devray.tar.xz -C /tmp || exit 1
  export PYTHONPATH=/tmp/devsite
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$res/install.log" 2>&1 \
    || { cat "$res/install.log"; exit 1; }
fi
say "setup done; $("$PY" -c 'import ray, torch; print("ray", ray.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
nproc | tee -a "$log"
# Session 18's stage profiles spent seconds per worker compiling torch's .py files: does
# this image ship (or let Python write) bytecode caches?
pyc_state() {
  "$PY" -c 'import os, sys, torch._dynamo as d; c = os.path.join(os.path.dirname(d.__file__), "__pycache__"); print("dont_write_bytecode", sys.dont_write_bytecode, "pycache_prefix", sys.pycache_prefix, "torch._dynamo .pyc files", len(os.listdir(c)) if os.path.isdir(c) else 0)'
}
pyc_state | tee -a "$log"
# COMPILE_PYC=1: write the bytecode a pip install would have (every mode benefits alike:
# the loop imports torch once, infer-run in each worker process).
if [[ -n ${COMPILE_PYC:-} ]]; then
  site=$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  say "compileall $site/{torch,torchvision,sympy}"
  "$PY" -m compileall -q -j 0 "$site/torch" "$site/torchvision" "$site/sympy" >/dev/null 2>&1
  say "compileall: exit $?"
  pyc_state | tee -a "$log"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$log"

# Start-up: infer-run's task workers each import torch (the loop's workers fork from a
# parent that has), so time that once on a cold page cache and then 15 at once.
import_torch=(-c 'import time; t = time.perf_counter(); import torch, torchvision; print(f"torch+torchvision import {time.perf_counter() - t:.2f} s")')
step import_cold 60 "$PY" "${import_torch[@]}"

data=$(dirname "$res")/imagenet-$ROWS
# datagen's photos from the carried copy when the device's packages lack them.
photos_path=${PYTHONPATH:-}
[[ -d data/devphotos ]] && photos_path=$PWD/data/devphotos${PYTHONPATH:+:$PYTHONPATH}
step datagen 150 env PYTHONPATH="$photos_path" "$PY" -m framework.cli datagen "$data" \
  --rows "$ROWS" --format parquet --overwrite

compare() {  # compare NAME LIMIT ARGS...: benchmarks.compare on the dataset, JSON in $res
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$PY" -m benchmarks.compare --data "$data" --model resnet50 \
    --batch-size "$BATCH" --device "$DEVICE" --precision "$PRECISION" \
    --timeout "$((limit - 15))" --json "$res/$name.json" "$@"
}
# 1. The plain loop against infer-run as built (16 MB parquet read tasks), with Ray's
# timeline of infer-run's tasks: where the start-up goes.
# With every stage worker profiled (INFER_PROFILE_STAGES): where the model actor's time goes;
# and with Ray Data's allocator logging its budgets (what held the read tasks back).
INFER_PROFILE_STAGES=$res/prof RAY_DATA_DEBUG_RESOURCE_MANAGER=1 compare loop_vs_infer 170 \
  --only loop,infer-run --set run.timeline="$res/timeline-infer-run.json"
step ray_data_log 20 cp -r /tmp/ray/session_latest/logs/ray-data "$res/ray-data-loop_vs_infer"
step profile_summary 60 "$PY" benchmarks/device/profile_summary.py "$res/prof" 30
step import_15_at_once 60 bash -c 'for _ in $(seq 15); do "$@" & done; wait' _ "$PY" "${import_torch[@]}"
# 2. The GPU path's tests, with the GPU-only ones that CI (no GPU) always skips.
step gpu_tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu_path.py -k "gpu_decode or gpu_auto or gpu_staged"
# 2a. --plan reads this machine's GPU type as Ray will (a model asking for it is placeable).
step plan_gpu_type 60 "$PY" -m framework.cli specs/resnet50_imagenet.yaml --plan \
  vars.input="$data" models.0.weights=random models.0.resources.num_gpus=1 \
  models.0.resources.accelerator_type="${GPU_TYPE:-H100}"
# 2b. Two model actors sharing the GPU: does a second one add what the first leaves idle?
compare actors_2 120 --only infer-run --set models.0.resources.num_gpus=0.5 \
  --set models.0.resources.actors=2
# 3. The model stage alone and decode_on_device's parts, without Ray.
step gpu_path_check 100 "$PY" benchmarks/gpu_path_check.py --device "$DEVICE" --skip-compile \
  --seconds 2 --out "$res/gpu_path_check.json" \
  --photos data/devphotos/skimage/data data/devphotos/matplotlib/mpl-data/sample_data
# 4. nvjpeg decoding in 4 actors sharing the GPU (torchvision holds one lock per process).
compare decode_on_device_4 120 --only infer-run --decode-on-device \
  --set models.0.resources.num_gpus=0.25 --set models.0.resources.actors=4
# 5. Ray Data's own 128 MiB read tasks, to see what the smaller ones bought.
compare block_128mb 120 --only infer-run --set run.block_mb=128
say "all done"
pack
