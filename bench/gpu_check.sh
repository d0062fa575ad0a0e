#!/usr/bin/env bash
# GPU throughput check for a compress run: pairs/s of the teacher (fp32, fp16) and the best student (fp16)
# on the CUDA execution provider, with IO binding. CI never runs this.
#
# Two stages, so the GPU machine needs nothing from the network:
#
#   1. here (CPU machine, the project's .venv):
#        bash bench/gpu_check.sh prepare [RUN_DIR] [BUNDLE_DIR]
#      RUN_DIR defaults to var/compress/fast; BUNDLE_DIR to var/gpu-bundle. rankstream.bench.gpu_bundle
#      reads the run's record, copies the teacher's fp32 graph, writes fp16 graphs of the teacher and of
#      the best gated fp32 student (fastest that passed the accuracy gate), plus bundle.json.
#   2. on the GPU machine (python3 with numpy and onnxruntime-gpu installed; no torch, no rankstream):
#        bash bench/gpu_check.sh run [BUNDLE_DIR]
#      bench/gpu_run.py times each graph (warm-up, then timed batches at the serving max length, random
#      token ids: speed depends on shapes only). Prints one JSON object and writes BUNDLE_DIR/gpu_result.json.
set -euo pipefail
cd "$(dirname "$0")/.."

stage="${1:-}"
case "$stage" in
prepare)
    run_dir="${2:-var/compress/fast}"
    bundle="${3:-var/gpu-bundle}"
    py=".venv/bin/python"
    [ -x "$py" ] || { echo "gpu_check prepare: $py not found; run deploy/setup.sh first" >&2; exit 2; }
    "$py" -m rankstream.bench.gpu_bundle "$run_dir" "$bundle"
    ;;
run)
    bundle="${2:-var/gpu-bundle}"
    python="${PYTHON:-python3}"
    timeout 290 "$python" bench/gpu_run.py "$bundle"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh prepare [RUN_DIR] [BUNDLE_DIR]   (CPU machine)" >&2
    echo "       bash bench/gpu_check.sh run [BUNDLE_DIR]                 (GPU machine)" >&2
    exit 2
    ;;
esac
