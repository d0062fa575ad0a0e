"""The import rules of docs/architecture.md, read from the source: a broken rule fails here, not in a
scorer image that suddenly needs torch."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPLICATION = ("rankstream.cli", "rankstream.data", "rankstream.evaluation", "rankstream.jobs", "rankstream.ops")


def imports(folder: str) -> dict[str, set[str]]:
    """Every module each file of `folder` imports, at any depth (lazy imports inside functions too)."""
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        out[str(path.relative_to(ROOT))] = names
    return out


def offenders(folder: str, banned: tuple[str, ...]) -> list[str]:
    return [
        f"{file}: {name}"
        for file, names in imports(folder).items()
        for name in sorted(names)
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]


def test_stream_never_imports_torch_compression_or_the_application() -> None:
    banned = ("torch", "transformers", "rankstream.compression", "rankstream.bench", *APPLICATION)
    assert offenders("stream", banned) == []


def test_compression_never_imports_kafka_or_redis_clients() -> None:
    assert offenders("compression", ("aiokafka", "kafka", "redis")) == []


@pytest.mark.parametrize("folder", ["stream", "compression"])
def test_the_check_sees_imports(folder: str) -> None:
    # Guards the guard: the walk must find the imports each folder really has.
    found = set().union(*imports(folder).values())
    assert "rankstream.stream.errors" in found or "rankstream.stream.artifact" in found
