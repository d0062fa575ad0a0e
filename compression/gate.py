"""The accuracy gate: a compressed variant is publishable only when it keeps the teacher's quality."""

from dataclasses import dataclass


@dataclass(frozen=True)
class GateResult:
    passed: bool
    ndcg: float
    teacher_ndcg: float
    floor: float
    reason: str


def accuracy_gate(ndcg: float, teacher_ndcg: float, *, tolerance: float) -> GateResult:
    """Pass when `ndcg` >= (1 - tolerance) x `teacher_ndcg` (valid-split NDCG@10; tolerance relative)."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance is a fraction of the teacher's NDCG@10 in [0, 1), got {tolerance}")
    floor = (1.0 - tolerance) * teacher_ndcg
    passed = ndcg >= floor  # NaN fails
    verdict = "within" if passed else "outside"
    reason = f"NDCG@10 {ndcg:.4f} is {verdict} {tolerance:.0%} of the teacher's {teacher_ndcg:.4f} (floor {floor:.4f})"
    return GateResult(passed, ndcg, teacher_ndcg, floor, reason)
