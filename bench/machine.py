"""The CPU a benchmark phase had: the whole machine's time over the phase, from /proc/stat (Linux), and this
process's own.

On two shared cores a phase's figures move with what else ran and with what the hypervisor gave other
guests (steal): the same code has drained the same backlog at 1,263 and at 3,511 events/s. A phase that
carries its CPU use can be told from a slower code. Elsewhere than Linux the machine's part is None.
"""

import os
import time
from pathlib import Path

from rankstream.bench.results import CpuUse

PROC_STAT = Path("/proc/stat")
# /proc/stat's first line: "cpu  user nice system idle iowait irq softirq steal guest guest_nice" in clock
# ticks; guest time is already inside user and nice, so the first eight fields are the whole.
_FIELDS = 8
_BUSY = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq
_STEAL = 7


def parse_stat(text: str) -> tuple[int, ...] | None:
    """The first eight counters of the aggregate `cpu` line of a /proc/stat text; None when there is no
    such line or its counters are not non-negative integers (older kernels have fewer fields)."""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "cpu":
            continue
        fields = parts[1 : 1 + _FIELDS]
        if len(fields) < _FIELDS or not all(f.isascii() and f.isdigit() for f in fields):
            return None
        return tuple(int(f) for f in fields)
    return None


def cpu_use(
    before: tuple[int, ...] | None,
    after: tuple[int, ...] | None,
    process_s: float,
    wall_s: float,
    cores: int,
) -> CpuUse:
    """Shares of the cores' time between two samples: busy and stolen (None without both samples, or when
    the counters did not move forward), and this process's `process_s` of CPU over `wall_s`."""
    busy = steal = None
    if before is not None and after is not None:
        delta = [a - b for a, b in zip(after, before, strict=True)]
        total = sum(delta)
        if total > 0 and min(delta) >= 0:
            busy = round(sum(delta[i] for i in _BUSY) / total, 3)
            steal = round(delta[_STEAL] / total, 3)
    own = round(process_s / (wall_s * cores), 3) if wall_s > 0 and cores > 0 else None
    return CpuUse(cores=cores, busy=busy, steal=steal, this_process=own)


def _read() -> tuple[int, ...] | None:
    try:
        return parse_stat(PROC_STAT.read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


class CpuMeter:
    """Started at construction; `stop` gives the CPU use since then."""

    def __init__(self) -> None:
        self._stat = _read()
        self._process = time.process_time()
        self._wall = time.monotonic()

    def stop(self) -> CpuUse:
        return cpu_use(
            self._stat,
            _read(),
            time.process_time() - self._process,
            time.monotonic() - self._wall,
            os.cpu_count() or 1,
        )
