"""The CPU stage of `bash bench/gpu_check.sh prepare`: a bundle the GPU machine can time without the network.

    python -m rankstream.bench.gpu_bundle RUN_DIR BUNDLE_DIR

Copies the compress run's fp32 teacher graph and writes fp16 graphs of the teacher and of the fastest fp32
student that passed the accuracy gate (the fastest fp32 student when none did), plus bundle.json.
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

import onnx
from onnxruntime.transformers.onnx_model import OnnxModel

from rankstream.bench.gpu_run import Bundle
from rankstream.jobs.runs import CompressRunRecord
from rankstream.stream.artifact import load_manifest
from rankstream.stream.errors import JobError, RankstreamError

log = logging.getLogger(__name__)


def fp16(src: Path, dst: Path) -> None:
    """An fp16 copy of an ONNX graph that still takes int64 ids and returns fp32 logits."""
    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))


def pick_student(record: CompressRunRecord) -> str:
    """The fastest fp32 student that passed the gate, else the fastest fp32 student."""
    students = {k: v for k, v in record.variants.items() if v.role == "student" and k.endswith("-fp32")}
    if not students:
        raise JobError("the compress run has no fp32 student; let `rankstream compress` finish")
    passed = {k: v for k, v in students.items() if v.gate.passed}
    if not passed:
        log.warning("no student passed the gate; using the fastest fp32 student")
    pool = passed or students
    return max(pool, key=lambda k: (pool[k].pairs_per_s, k))


def write_bundle(run_dir: Path, bundle_dir: Path) -> Bundle:
    """Write the bundle for the compress run in `run_dir` into `bundle_dir`."""
    record = CompressRunRecord.load(run_dir)
    if "teacher-fp32" not in record.variants:
        raise JobError(f"{run_dir}: the run has no exported teacher-fp32 yet; let `rankstream compress` finish")
    student = pick_student(record)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    teacher = record.variants["teacher-fp32"].artifact
    shutil.copyfile(teacher / "model.onnx", bundle_dir / "teacher_fp32.onnx")
    fp16(teacher / "model.onnx", bundle_dir / "teacher_fp16.onnx")
    fp16(record.variants[student].artifact / "model.onnx", bundle_dir / "student_fp16.onnx")
    bundle = Bundle(
        run_id=record.run_id,
        preset=record.preset_name,
        student=student,
        models={n: f"{n}.onnx" for n in ("teacher_fp32", "teacher_fp16", "student_fp16")},
        vocab_size=30522,
        max_length=load_manifest(teacher).input_spec.max_length,
    )
    bundle.save(bundle_dir)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rankstream.bench.gpu_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a compress run folder (var/compress/fast)")
    parser.add_argument("bundle_dir", type=Path, help="where the bundle goes (var/gpu-bundle)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        bundle = write_bundle(args.run_dir, args.bundle_dir)
    except RankstreamError as exc:
        print(f"gpu_check prepare: {exc}", file=sys.stderr)
        return 2
    print(
        f"bundle written to {args.bundle_dir} (student: {bundle.student}); copy it to the GPU machine and run: "
        f"bash bench/gpu_check.sh run {args.bundle_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
