"""Builders shared by the compression and recompression tests (unit and integration): small data sets,
compress-run records, stand-in artifacts. Test modules import these, never each other."""

import random
from dataclasses import dataclass
from pathlib import Path

from rankstream.compression.gate import GateResult
from rankstream.data.prepare import prepare
from rankstream.data.split import Split
from rankstream.jobs.runs import CompressRunRecord, VariantRecord
from rankstream.stream.artifact import InputSpec, Reference, write_manifest
from rankstream.stream.features import PAIR_FORMAT

# A small catalog and the instance shape the data module builds, for model tests without data files.
CATALOG = {f"i{n}": f"Item {n} title" for n in range(20)}


@dataclass(frozen=True)
class Inst:
    """A training/evaluation instance, as the data module builds them."""

    history: tuple[str, ...]
    candidates: tuple[str, ...]
    positives: frozenset[str]


def byo_data(folder: Path) -> Path:
    """Six weeks of baskets from 40 users over 30 items with co-bought pairs, in the BYO format."""
    rng = random.Random(0)
    folder.mkdir()
    lines = ["user_id,item_id,ts,event"]
    for user in range(40):
        for day in sorted(rng.sample(range(1, 42), 6)):
            a = rng.randrange(15)
            for item in {2 * a, 2 * a + 1, rng.randrange(30)}:
                stamp = f"2024-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d}T10:00:00Z"
                lines.append(f"u{user},i{item},{stamp},purchase")
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "catalog.csv").write_text(
        "item_id,title\n" + "".join(f"i{n},Item {n} colour {n % 7}\n" for n in range(30))
    )
    return folder


def tiny_prepared(root: Path) -> Path:
    """`byo_data`, prepared with a time split."""
    data = root / "data"
    prepare(byo_data(root / "src"), data, Split("2024-01-22", "2024-02-01"))
    return data


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread over `n_layers`, always the first and the last (6, 4 -> 0, 2, 3, 5)."""
    if not 1 <= keep <= n_layers:
        raise ValueError(f"keep must be in 1..{n_layers}, got {keep}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def variant(
    artifact: Path, hf_dir: Path, *, role: str = "student", passed: bool = True, speed: float = 0.0
) -> VariantRecord:
    """A variant's record with only what recompression and the bench pick by: role, gate and speed."""
    gate = GateResult(passed, 0.0, 0.0, 0.0, 0.02, "test")
    return VariantRecord(artifact=artifact, hf_dir=hf_dir, role=role, gate=gate, speed={"pairs_per_s": speed})


def write_run(root: Path, variants: dict[str, VariantRecord]) -> Path:
    """A compress run's record holding `variants`, in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    CompressRunRecord("tiny", "test teacher", {}, "test", variants=variants).save(root)
    return root


def stand_in_artifact(folder: Path, version: str, chain: list[str]) -> Path:
    """A verified artifact whose files are placeholders: enough for code that reads manifests only."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"placeholder")
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(
        folder,
        version=version,
        parent=None,
        method_chain=chain,
        metrics={},
        input_spec=InputSpec(pair_format=PAIR_FORMAT),
        reference=Reference(pairs=(), scores=()),
    )
    return folder


def tiny_compress_run(root: Path) -> Path:
    """What recompression reads from a compress run: a tiny teacher (fp32) and a tiny INT8 student, exported
    at the tiny preset's tokens per pair."""
    from rankstream.compression.export import export_onnx
    from rankstream.compression.tiny import tiny_bert
    from rankstream.jobs.presets import compress_preset

    tokens = compress_preset("tiny").max_length

    work, artifacts = root / "work", root / "artifacts"
    teacher = tiny_bert(work / "teacher", seed=0, num_layers=4)
    student = tiny_bert(work / "l2", seed=1, num_layers=2)
    chain = ["finetune:tiny-random-bert", "drop-layers:0,3", "distil:listwise-kl"]
    t_art = export_onnx(
        teacher, artifacts / "teacher-fp32", version="c-tiny-teacher-fp32", quantize="none", max_length=tokens
    )
    s_art = export_onnx(
        student,
        artifacts / "student-l2-int8",
        version="c-tiny-student-l2-int8",
        parent="c-tiny-teacher-fp32",
        method_chain=chain,
        max_length=tokens,
    )
    return write_run(
        root,
        {
            "teacher-fp32": variant(t_art, teacher, role="teacher"),
            "student-l2-int8": variant(s_art, student, speed=100.0),
        },
    )


def tiny_signal_compress_run(root: Path, signal_bert_dir: Path) -> Path:
    """A compress run whose teacher and student read serve-time signals (as every real preset's do)."""
    from rankstream.compression.distil import drop_layers
    from rankstream.compression.export import export_onnx

    work, artifacts = root / "work", root / "artifacts"
    student = drop_layers(signal_bert_dir, work / "l1", [0])
    t_art = export_onnx(signal_bert_dir, artifacts / "teacher-fp32", version="c-sig-teacher-fp32", quantize="none")
    s_art = export_onnx(
        student, artifacts / "student-l1-int8", version="c-sig-student-l1-int8", parent="c-sig-teacher-fp32"
    )
    return write_run(
        root,
        {
            "teacher-fp32": variant(t_art, signal_bert_dir, role="teacher"),
            "student-l1-int8": variant(s_art, student),
        },
    )
