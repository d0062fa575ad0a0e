"""What the encoder key says, read from whatever a hash in Redis holds: never an exception, widths only
where they are positive integers, and the versions a catalog write must carry in a fixed order."""

from hypothesis import given
from hypothesis import strategies as st

from rankstream.stream.catalogstore import Encoders, _encoders

text = st.text(max_size=12)


@given(st.dictionaries(st.one_of(text, st.builds(lambda s: "dim:" + s, text)), text, max_size=8))
def test_any_hash_reads_as_encoders(raw: dict[str, str]) -> None:
    got = _encoders(raw)
    assert got.active == (raw.get("active") or None) and got.next == (raw.get("next") or None)
    assert got.versions == [v for v in (got.active, got.next) if v]
    for version, dim in got.dims:
        assert int(raw["dim:" + version]) == dim
    readable = {k[4:] for k, v in raw.items() if k.startswith("dim:") and _is_positive_int(v)}
    assert {v for v, _ in got.dims} == readable


def _is_positive_int(value: str) -> bool:
    try:
        return int(value) > 0
    except ValueError:
        return False


def test_a_worked_example() -> None:
    got = _encoders(
        {"active": "a", "next": "b", "dim:a": "384", "dim:b": " 32 ", "dim:c": "wide", "dim:d": "-3", "other": "x"}
    )
    assert got == Encoders("a", "b", (("a", 384), ("b", 32)))
    assert got.versions == ["a", "b"] and got.dim("b") == 32 and got.dim("c") is None
    assert _encoders({}).versions == [] and _encoders({"next": "b"}).versions == ["b"]
