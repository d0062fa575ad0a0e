"""Running recompression on a schedule (`rankstream recompress --every`), politely beside the scorers: a
lower CPU priority and one thread, set before any worker thread exists."""

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import torch

from rankstream.stream.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
THREADS = 1  # torch and ONNX Runtime threads of a recompression job: one core, whatever the machine has


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `30m`, `6h`, `1h30m`, `2d`, `90s`."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ConfigError(f"--every {text!r}: write a duration like 30m, 6h, 1h30m or 1d")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--every {text!r} must be longer than zero")
    return seconds


def be_polite(threads: int) -> None:
    """Lower this process's claim on the CPU before any worker thread exists.

    Scorers run at nice 0; at nice 10 the kernel weighs this job far below a scorer when both want a core,
    so a busy scorer keeps its share and recompression runs on what is left. One torch thread (and one ONNX
    Runtime thread per session) bounds the job to a single core even on an idle machine. Threads inherit
    the nice value of the thread that creates them, so this runs first.
    """
    os.nice(10)
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


async def run_every(
    interval_s: float, cycle: Callable[[], Awaitable[T]], *, cycles: int | None = None
) -> list[T | None]:
    """Run `cycle` every `interval_s` (start to start); a failed cycle is logged and the schedule goes on.

    Forever unless `cycles` is given; returns each cycle's result (None for a failed one).
    """
    results: list[T | None] = []
    n = 0
    while cycles is None or n < cycles:
        n += 1
        started = time.monotonic()
        log.info("recompress cycle %d starting", n)
        try:
            result: T | None = await cycle()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - any failure ends this cycle only; the next one starts on time
            log.exception("recompress cycle %d failed", n)
            result = None
        results.append(result)
        if cycles is not None and n >= cycles:
            break
        # Start to start; a cycle longer than the interval skips the slots it overran.
        wait = interval_s - (time.monotonic() - started) % interval_s
        log.info("recompress cycle %d done; next in %.0fs", n, wait)
        await asyncio.sleep(wait)
    return results


def run_scheduled(every: str | None, cycle: Callable[[], Awaitable[T]]) -> T | None:
    """One cycle (its result), or with `every` a cycle per interval until the process is stopped (None).

    Lowers this process's CPU priority first (`be_polite`).
    """
    interval = parse_duration(every) if every else None
    be_polite(THREADS)
    if interval is None:
        return asyncio.run(cycle())
    asyncio.run(run_every(interval, cycle))
    return None
