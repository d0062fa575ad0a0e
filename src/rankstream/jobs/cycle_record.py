"""The record of one recompression cycle (`cycle.json` in the cycle's folder): `CycleRecord` is its one owner,
and says in a line or a paragraph what the cycle did."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rankstream.compression.gate import GateResult

CYCLE_FILE = "cycle.json"


@dataclass
class CycleRecord:
    """What a cycle learnt from, what it built, how the gate judged it, and whether it was published."""

    version: str
    window: dict[str, str]  # source, start, end
    counts: dict[str, int]
    warm_start: str
    teacher: str
    reference: str  # the version the gate compared against (the active one, if any)
    new: dict[str, float]
    active: dict[str, float]
    baselines: dict[str, dict[str, float]]
    gate: GateResult
    artifact: Path
    method_chain: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    published: bool = False
    activated: bool = False
    canary: bool = False  # published into a canary (the replicas promote or roll it back)

    def save(self, folder: Path) -> None:
        (Path(folder) / CYCLE_FILE).write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "CycleRecord":
        data: dict[str, Any] = json.loads((Path(folder) / CYCLE_FILE).read_text())
        return cls(**(data | {"gate": GateResult(**data["gate"]), "artifact": Path(data["artifact"])}))

    @property
    def verdict(self) -> str:
        if not self.published:
            return "REFUSED by the gate, nothing published"
        if self.canary:
            return "published into a canary (the replicas promote or roll it back on live figures)"
        return "published and activated" if self.activated else "published, not activated (the registry is pinned)"

    def summary(self) -> str:
        """One line per cycle, for the log."""
        return (
            f"{self.version}: {self.verdict}; NDCG@10 new {self.new['ndcg@10']:.4f} vs {self.reference} "
            f"{self.active['ndcg@10']:.4f} on {self.counts['held_out_lists']} held-out lists; "
            f"{self.seconds.get('total', 0):.0f}s"
        )

    def format(self) -> str:
        """What a person reads after one cycle."""
        c, w, s = self.counts, self.window, self.seconds
        cov = self.baselines["covisit"]["ndcg@10"]
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in s.items() if k != "total")
        return "\n".join(
            [
                f"recompress {self.version}: {self.verdict}",
                f"  window    {w['source']}  {w['start']} .. {w['end']}: {c['window_events']:,} events, "
                f"{c['instances']:,} baskets usable",
                f"  training  {c['train_instances']:,} older baskets -> {c['train_lists']:,} lists, "
                f"{c['distil_lists']:,} distilled ({c['distil_pairs']:,} pairs, {c['distil_steps']} steps); "
                f"warm start {self.warm_start}; teacher {self.teacher}",
                f"  held out  newest {c['held_out_instances']:,} baskets, {c['held_out_lists']:,} rankable lists",
                f"  NDCG@10   new {self.new['ndcg@10']:.4f} | {self.reference} {self.active['ndcg@10']:.4f} "
                f"| co-visitation order {cov:.4f}",
                f"  gate      {'pass' if self.gate.passed else 'FAIL'}: {self.gate.reason}",
                f"  artifact  {self.artifact}",
                f"  time      {s.get('total', 0):.0f}s ({steps})",
            ]
        )
