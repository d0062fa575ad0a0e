"""`bench swap` reads its replicas' latency from the lists they write to Redis."""

import json

from rankstream.bench.lists import ListSample, ListWatch, sample_of, split_by_windows


def _doc(offset: int, written: float, event_ms: int, version: str = "v1") -> dict[str, object]:
    return {"partition": 0, "offset": offset, "generated_at": written, "event_ts": event_ms, "model_version": version}


def test_a_list_gives_its_latency_and_its_writer() -> None:
    assert sample_of(_doc(3, 100.25, 100_000, "v2")) == ListSample(100.25, 250.0, "v2")


def test_samples_split_by_swap_windows() -> None:
    samples = [ListSample(t, float(t), "v") for t in (1.0, 5.0, 10.5, 20.0)]
    steady, inside = split_by_windows(samples, [(4.0, 6.0), (10.0, 11.0)])
    assert (steady, inside) == ([1.0, 20.0], [5.0, 10.5])


class _Redis:
    def __init__(self, docs: dict[str, dict[str, object]]) -> None:
        self.docs = docs

    async def mget(self, keys: list[str]) -> list[str | None]:
        return [json.dumps(self.docs[k]) if k in self.docs else None for k in keys]


async def test_watch_keeps_one_sample_per_write_seen() -> None:
    redis = _Redis({"rec:{a}": _doc(1, 10.0, 9_900)})
    watch = ListWatch(redis, ["a", "b"])  # type: ignore[arg-type]
    await watch.poll()
    await watch.poll()  # the same list again
    redis.docs["rec:{a}"] = _doc(2, 11.0, 10_950, "v2")
    await watch.poll()
    assert [(s.latency_ms, s.version) for s in watch.samples] == [(100.0, "v1"), (50.0, "v2")]
