"""The accuracy gate: a model is publishable only when it keeps the quality of the one it is judged against
(the teacher for a compressed variant, the active model for a recompressed one)."""

from dataclasses import dataclass
from typing import Literal

from rankstream.stream.errors import ConfigError


@dataclass(frozen=True)
class GateResult:
    passed: bool
    ndcg: float
    reference_ndcg: float
    floor: float
    tolerance: float
    reason: str


def accuracy_gate(
    ndcg: float,
    reference_ndcg: float,
    *,
    tolerance: float,
    kind: Literal["relative", "absolute"] = "relative",
    reference: str = "the teacher's",
) -> GateResult:
    """Pass when `ndcg` (NDCG@10) is at least the floor set by `reference_ndcg` and `tolerance`.

    Args:
        tolerance: relative: a fraction of the reference in [0, 1), floor = (1 - tolerance) x reference.
            absolute: NDCG points, floor = reference - tolerance (negative demands a gain).
        reference: how the reason names the reference model.

    Raises:
        ConfigError: a relative tolerance outside [0, 1).
    """
    if kind == "relative":
        if not 0.0 <= tolerance < 1.0:
            raise ConfigError(f"tolerance is a fraction of the reference NDCG@10 in [0, 1), got {tolerance}")
        floor = (1.0 - tolerance) * reference_ndcg
    else:
        floor = reference_ndcg - tolerance
    passed = ndcg >= floor  # NaN fails
    if kind == "relative":
        verdict = "within" if passed else "outside"
        reason = (
            f"NDCG@10 {ndcg:.4f} is {verdict} {tolerance:.0%} of {reference} {reference_ndcg:.4f} (floor {floor:.4f})"
        )
    else:
        reason = (
            f"new NDCG@10 {ndcg:.4f} {'>=' if passed else '<'} floor {floor:.4f} "
            f"({reference} {reference_ndcg:.4f} - tolerance {tolerance:g})"
        )
    return GateResult(passed, ndcg, reference_ndcg, floor, tolerance, reason)
