#!/usr/bin/env bash
# GPU throughput check for a compress run: pairs/s of the teacher (fp32, fp16) and the best student (fp16)
# on the CUDA execution provider, with IO binding. CI never runs this.
#
# Two stages, so the GPU machine needs nothing from the network:
#
#   1. here (CPU machine, the project's .venv):
#        bash bench/gpu_check.sh prepare [RUN_DIR] [BUNDLE_DIR]
#      RUN_DIR defaults to var/compress/fast; BUNDLE_DIR to var/gpu-bundle. Copies the teacher's fp32
#      graph, writes fp16 graphs of the teacher and of the best gated fp32 student (fastest that passed
#      the accuracy gate), plus bundle.json.
#   2. on the GPU machine (python3 with numpy and onnxruntime-gpu installed; no torch, no rankstream):
#        bash bench/gpu_check.sh run [BUNDLE_DIR]
#      Kept short: per model, 20 warm-up batches, then 200 timed batches of 32 pairs
#      at 64 tokens (the serving max length; per-batch padding reaches it on long histories), random
#      token ids (speed depends on shapes only). Prints one JSON object and writes BUNDLE_DIR/gpu_result.json.
set -euo pipefail
cd "$(dirname "$0")/.."

stage="${1:-}"
case "$stage" in
prepare)
    run_dir="${2:-var/compress/fast}"
    bundle="${3:-var/gpu-bundle}"
    py=".venv/bin/python"
    [ -x "$py" ] || { echo "gpu_check prepare: $py not found; run deploy/setup.sh first" >&2; exit 2; }
    "$py" - "$run_dir" "$bundle" <<'EOF'
import json, shutil, sys
from pathlib import Path

import onnx
from onnxruntime.transformers.onnx_model import OnnxModel

run_dir, bundle = Path(sys.argv[1]), Path(sys.argv[2])
run = json.loads((run_dir / "run.json").read_text())
variants = run["variants"]
students = [
    (v["speed"]["pairs_per_s"], k)
    for k, v in variants.items()
    if v["role"] == "student" and k.endswith("-fp32") and v["gate"]["passed"]
]
if not students:
    students = [(v["speed"]["pairs_per_s"], k) for k, v in variants.items() if v["role"] == "student" and k.endswith("-fp32")]
    print("gpu_check: no student passed the gate; using the fastest fp32 student", file=sys.stderr)
best = max(students)[1]
bundle.mkdir(parents=True, exist_ok=True)


def fp16(src: Path, dst: Path) -> None:
    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)  # int64 ids in, fp32 logits out
    model.save_model_to_file(str(dst))


teacher = Path(variants["teacher-fp32"]["artifact"]) / "model.onnx"
shutil.copyfile(teacher, bundle / "teacher_fp32.onnx")
fp16(teacher, bundle / "teacher_fp16.onnx")
fp16(Path(variants[best]["artifact"]) / "model.onnx", bundle / "student_fp16.onnx")
meta = {
    "run_id": run["run_id"],
    "preset": run["preset"]["name"],
    "student": best,
    "models": {"teacher_fp32": "teacher_fp32.onnx", "teacher_fp16": "teacher_fp16.onnx", "student_fp16": "student_fp16.onnx"},
    "vocab_size": 30522,
    "max_length": run["preset"]["max_length"],
}
(bundle / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
print(f"bundle written to {bundle} (student: {best}); copy it to the GPU machine and run: bash bench/gpu_check.sh run {bundle}")
EOF
    ;;
run)
    bundle="${2:-var/gpu-bundle}"
    python="${PYTHON:-python3}"
    timeout 290 "$python" - "$bundle" <<'EOF'
import json, sys, time
from pathlib import Path

import numpy as np
import onnxruntime as ort

bundle = Path(sys.argv[1])
meta = json.loads((bundle / "bundle.json").read_text())
import os

# GPU_CHECK_DRY_RUN=1 exercises this script on the CPU provider (fp32 only: CPU has no fp16 Attention kernel).
DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
PROVIDER, DEVICE = ("CPUExecutionProvider", "cpu") if DRY else ("CUDAExecutionProvider", "cuda")
if DRY:
    meta["models"] = {"teacher_fp32": meta["models"]["teacher_fp32"]}
elif "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"gpu_check: no CUDAExecutionProvider in this onnxruntime ({ort.get_available_providers()}); install onnxruntime-gpu")
BATCH, SEQ, WARMUP, TIMED = 32, meta["max_length"], 20, (10 if DRY else 200)
rng = np.random.default_rng(0)
ids = rng.integers(1000, meta["vocab_size"], size=(BATCH, SEQ), dtype=np.int64)
ids[:, 0] = 101  # [CLS]
feeds = {
    "input_ids": ids,
    "attention_mask": np.ones((BATCH, SEQ), dtype=np.int64),
    "token_type_ids": np.concatenate([np.zeros((BATCH, SEQ // 2)), np.ones((BATCH, SEQ - SEQ // 2))], axis=1).astype(np.int64),
}
result = {"device": None, "batch": BATCH, "seq": SEQ, "timed_batches": TIMED, "student": meta["student"], "models": {}}
for name, file in meta["models"].items():
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(bundle / file), sess_options=opts, providers=list(dict.fromkeys([PROVIDER, "CPUExecutionProvider"])))
    if sess.get_providers()[0] != PROVIDER:
        print(f"gpu_check: {name} fell back to {sess.get_providers()}", file=sys.stderr)
    binding = sess.io_binding()
    for k, v in feeds.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, DEVICE, 0))
    binding.bind_output("logits", DEVICE, 0)
    for _ in range(WARMUP):
        sess.run_with_iobinding(binding)
    lat = []
    for _ in range(TIMED):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)  # synchronous: returns when the GPU work is done
        lat.append(time.perf_counter() - t0)
    out = binding.copy_outputs_to_cpu()[0]
    ms = np.array(lat) * 1000
    result["models"][name] = {
        "providers": sess.get_providers(),
        "pairs_per_s": round(BATCH * TIMED / sum(lat), 1),
        "p50_batch_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_batch_ms": round(float(np.percentile(ms, 99)), 3),
        "finite_outputs": bool(np.isfinite(out).all()),
    }
    result["device"] = ort.get_device()
t = result["models"]["teacher_fp32"]["pairs_per_s"]
for m in result["models"].values():
    m["speedup_vs_teacher_fp32"] = round(m["pairs_per_s"] / t, 2)
(bundle / "gpu_result.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
    ;;
*)
    echo "usage: bash bench/gpu_check.sh prepare [RUN_DIR] [BUNDLE_DIR]   (CPU machine)" >&2
    echo "       bash bench/gpu_check.sh run [BUNDLE_DIR]                 (GPU machine)" >&2
    exit 2
    ;;
esac
