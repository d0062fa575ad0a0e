"""What a hot swap does off the hot path: the old version's release, and the new one's warm-up."""

import gc
import weakref
from pathlib import Path

import pytest

from rankstream.stream.follow import release_memory, warm_up
from rankstream.stream.ranker import Ranker

TITLES = [f"lunch bag design {i}" for i in range(50)]


def test_a_dropped_ranker_frees_its_session_without_a_collection(signal_int8_artifact: Path) -> None:
    """The swap releases the old version without `gc.collect()` (a full collection stalls the event loop):
    that is only sound while a ranker holds no reference cycle."""
    ranker = Ranker.load(signal_int8_artifact, threads=1)
    warm_up(ranker, TITLES, top=10)
    freed = weakref.ref(ranker)
    session = weakref.ref(ranker._session)
    gc.disable()
    try:
        del ranker
        assert freed() is None and session() is None
    finally:
        gc.enable()
    release_memory()  # and returning pages to the OS neither raises nor needs the collector


class _Counting:
    """A session wrapper that records the batch size of every run."""

    def __init__(self, session: object) -> None:
        self._session = session
        self.batches: list[int] = []

    def run(self, output, feed):  # type: ignore[no-untyped-def]
        self.batches.append(len(next(iter(feed.values()))))
        return self._session.run(output, feed)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)


@pytest.mark.parametrize("top", [0, 10])
def test_warm_up_runs_at_the_shapes_the_scorer_serves(signal_int8_artifact: Path, top: int) -> None:
    ranker = Ranker.load(signal_int8_artifact, threads=1)
    assert ranker.linear is not None
    counting = _Counting(ranker._session)
    ranker._session = counting  # type: ignore[assignment]
    warm_up(ranker, TITLES, lists=3, per_list=50, top=top)
    assert counting.batches == [top or 50] * 3


def test_warm_up_of_a_model_without_a_linear_part_scores_every_candidate(int8_artifact: Path) -> None:
    ranker = Ranker.load(int8_artifact, threads=1)
    assert ranker.linear is None
    counting = _Counting(ranker._session)
    ranker._session = counting  # type: ignore[assignment]
    warm_up(ranker, TITLES, lists=2, per_list=50, top=10)
    assert counting.batches == [50, 50]
