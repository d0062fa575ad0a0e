"""The GPU stage of `bash bench/gpu_check.sh run`: pairs/s of a bundle's graphs on the CUDA execution provider
with IO binding. Runs where rankstream is not installed (python with numpy and onnxruntime-gpu only), so it
imports neither rankstream nor torch:

    python bench/gpu_run.py BUNDLE_DIR

Per model: warm-up batches, then timed batches of 32 pairs at the serving max length, random token ids
(speed depends on shapes only). Prints one JSON object and writes BUNDLE_DIR/gpu_result.json.
GPU_CHECK_DRY_RUN=1 runs it on the CPU provider (fp32 teacher only: the CPU has no fp16 Attention kernel).
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BUNDLE_FILE = "bundle.json"
RESULT_FILE = "gpu_result.json"
BATCH, WARMUP, TIMED, DRY_TIMED = 32, 20, 200, 10


@dataclass(frozen=True)
class Bundle:
    """What `python -m rankstream.bench.gpu_bundle` wrote: the graphs to time and how to feed them."""

    run_id: str
    preset: str
    student: str
    models: dict[str, str]  # name -> ONNX file in the bundle folder
    vocab_size: int
    max_length: int

    def save(self, folder: Path) -> None:
        (Path(folder) / BUNDLE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Bundle":
        return cls(**json.loads((Path(folder) / BUNDLE_FILE).read_text()))


def _feeds(bundle: Bundle) -> dict[str, np.ndarray]:
    seq = bundle.max_length
    ids = np.random.default_rng(0).integers(1000, bundle.vocab_size, size=(BATCH, seq), dtype=np.int64)
    ids[:, 0] = 101  # [CLS]
    types = np.concatenate([np.zeros((BATCH, seq // 2)), np.ones((BATCH, seq - seq // 2))], axis=1)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((BATCH, seq), dtype=np.int64),
        "token_type_ids": types.astype(np.int64),
    }


def time_model(path: Path, feeds: dict[str, np.ndarray], provider: str, device: str, timed: int) -> dict[str, Any]:
    """Warm up, then time `timed` synchronous runs of the graph at `path` with inputs bound on `device`."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    if sess.get_providers()[0] != provider:
        print(f"gpu_check: {path.name} fell back to {sess.get_providers()}", file=sys.stderr)
    binding = sess.io_binding()
    for inp in sess.get_inputs():
        # A model with a signal head reads one row of serve-time signals per pair; their values do not
        # change the work done, so random rows of the graph's width stand in for them.
        value = feeds.get(inp.name)
        if value is None and inp.name == "signals":
            value = np.random.default_rng(1).normal(size=(BATCH, int(inp.shape[1]))).astype(np.float32)
        if value is None:
            raise SystemExit(f"gpu_check: {path.name} wants input {inp.name!r}, which this check cannot feed")
        binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    binding.bind_output("logits", device, 0)
    for _ in range(WARMUP):
        sess.run_with_iobinding(binding)
    lat = []
    for _ in range(timed):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)  # synchronous: returns when the GPU work is done
        lat.append(time.perf_counter() - t0)
    out = binding.copy_outputs_to_cpu()[0]
    ms = np.array(lat) * 1000
    return {
        "providers": sess.get_providers(),
        "pairs_per_s": round(BATCH * timed / sum(lat), 1),
        "p50_batch_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_batch_ms": round(float(np.percentile(ms, 99)), 3),
        "finite_outputs": bool(np.isfinite(out).all()),
    }


def main(folder: Path) -> int:
    bundle = Bundle.load(folder)
    dry = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
    provider, device = ("CPUExecutionProvider", "cpu") if dry else ("CUDAExecutionProvider", "cuda")
    models = {"teacher_fp32": bundle.models["teacher_fp32"]} if dry else bundle.models
    if not dry and provider not in ort.get_available_providers():
        print(
            f"gpu_check: no {provider} in this onnxruntime ({ort.get_available_providers()}); install onnxruntime-gpu"
        )
        return 2
    timed = DRY_TIMED if dry else TIMED
    feeds = _feeds(bundle)
    result: dict[str, Any] = {
        "device": ort.get_device(),
        "batch": BATCH,
        "seq": bundle.max_length,
        "timed_batches": timed,
        "student": bundle.student,
        "models": {name: time_model(folder / file, feeds, provider, device, timed) for name, file in models.items()},
    }
    t = result["models"]["teacher_fp32"]["pairs_per_s"]
    for m in result["models"].values():
        m["speedup_vs_teacher_fp32"] = round(m["pairs_per_s"] / t, 2)
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python bench/gpu_run.py BUNDLE_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
